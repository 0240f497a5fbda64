//! Sets `LETSTALK_GIT_COMMIT` for `--version` (the shared script in `build/version.rs`).
include!("../build/version.rs");
