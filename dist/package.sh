#!/usr/bin/env bash
# Builds the Debian package target/debian/letstalk_<version>-1_<arch>.deb from this
# checkout: the binaries, man pages and completions generated from the programs' clap
# definitions (`letstalk-dist assets`), then cargo-deb (`cargo install cargo-deb`).
#
#   dist/package.sh              the release package (small, size-optimised, fat LTO)
#   LETSTALK_DEB_PROFILE=dev dist/package.sh
#                                the same package from the debug binaries that
#                                `cargo nextest run --workspace` already built (nothing is
#                                compiled: what .ci/run checks, sparing CI a release build)
#
# The package is reproducible: the same source and binaries give the same bytes
# (SOURCE_DATE_EPOCH is the last commit's time unless set; the commit is baked into
# `--version`).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${LETSTALK_DEB_PROFILE:-release}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
export LETSTALK_GIT_COMMIT="${LETSTALK_GIT_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
if [ "$profile" = release ]; then
    # Paths inside the binaries must not depend on where the checkout or cargo's home is.
    export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$PWD=/build/letstalk --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
fi
if [ "$profile" = dev ]; then
    dir=target/debug
    for bin in letstalkd letstalk letstalk-relay letstalk-tui letstalk-notify letstalk-dist; do
        [ -x "$dir/$bin" ] || { echo "package: $dir/$bin is missing: run the tests first" >&2; exit 1; }
    done
else
    cargo build --profile "$profile" --locked -p letstalkd -p letstalk-cli -p letstalk-relay -p letstalk-tui -p letstalk-notify -p letstalk-dist
    dir=target/$profile
fi
rm -rf target/dist
"$dir/letstalk-dist" assets target/dist >/dev/null
# Generated files get the source's time, so the archive does not carry today's date.
find target/dist -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
cargo deb -p letstalk-dist --no-build --locked --profile "$profile" --strip --output target/debian/ "$@"
