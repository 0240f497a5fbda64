//! The one rule for local paths: a path the daemon builds from an id (an attachment,
//! its `.age.part`, a file opened in the runtime directory, a call's media socket) is
//! built only from a [`LocalId`], and a `LocalId` exists only for a UUID the daemon made
//! ([`LocalId::new`]) or a string that is exactly a UUID's canonical form
//! ([`LocalId::parse`]). Whatever a peer sends (a file message's id, a call id, a name)
//! is a string; it reaches the file system only through `parse`, so `/home/victim`,
//! `../../x`, a NUL or a 10 KiB id can never become part of a path. A file name from a
//! peer becomes a path component only through [`safe_name`].

use std::fmt;
use std::path::{Path, PathBuf};

/// A UUID in its canonical form (36 lowercase hex digits and hyphens): the only id a
/// local path is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalId(uuid::Uuid);

impl LocalId {
    /// A fresh id (UUIDv7: time-ordered, random).
    #[allow(clippy::new_without_default, reason = "each call makes a different id")]
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// `s` if it is exactly a UUID's canonical hyphenated lowercase form; anything else
    /// (other UUID spellings included, so two strings never name one file) is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != uuid::fmt::Hyphenated::LENGTH {
            return None;
        }
        let u = uuid::Uuid::try_parse(s).ok()?;
        let mut buf = uuid::Uuid::encode_buffer();
        (&*u.hyphenated().encode_lower(&mut buf) == s).then_some(Self(u))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// `dir/<id><suffix>`: the id is 36 characters of `0-9 a-f -`, so the result is
    /// always a direct child of `dir`. `suffix` is one of the daemon's own constants.
    pub fn child(&self, dir: &Path, suffix: &'static str) -> PathBuf {
        dir.join(format!("{self}{suffix}"))
    }
}

impl fmt::Display for LocalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// The longest file name [`safe_name`] returns, in bytes: under the usual 255-byte
/// limit (the plaintext's temporary file beside it has a short random name of its own,
/// see `files::PlainFile`).
pub const MAX_NAME: usize = 200;

/// A file name from a peer (or a client), made safe to use as the last component of a
/// path: no `/` or `\`, no NUL or other control characters, no leading dot (so neither
/// `.`, `..` nor a hidden dotfile), at most [`MAX_NAME`] bytes (cut at a character
/// boundary), never empty.
pub fn safe_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(MAX_NAME));
    for c in name.chars() {
        let c = if c == '/' || c == '\\' || c.is_control() { '_' } else { c };
        let c = if c == '.' && out.is_empty() { '_' } else { c };
        if out.len() + c.len_utf8() > MAX_NAME {
            break;
        }
        out.push(c);
    }
    if out.trim().is_empty() { "file".to_owned() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_uuids_are_ids() {
        let id = LocalId::new();
        let s = id.to_string();
        assert_eq!(LocalId::parse(&s), Some(id));
        assert_eq!(s.len(), 36);
        for bad in [
            "",
            "/home/victim",
            "../../x",
            "..",
            "a\0b",
            "x/../../../../etc/passwd",
            &s.to_uppercase(),
            &format!("{{{s}}}"),
            &format!("urn:uuid:{s}"),
            &s.replace('-', ""),
            &format!("{s}/"),
            &format!("/{}", &s[1..]),
            &format!("{}\0", &s[..35]),
            &"a".repeat(10_000),
        ] {
            assert_eq!(LocalId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_child_path_stays_in_its_directory() {
        let dir = Path::new("/data/attachments");
        let id = LocalId::parse("0190a5c4-1234-7abc-8def-0123456789ab").unwrap();
        let p = id.child(dir, ".age.part");
        assert_eq!(p, Path::new("/data/attachments/0190a5c4-1234-7abc-8def-0123456789ab.age.part"));
        assert_eq!(p.parent(), Some(dir));
    }

    #[test]
    fn names_from_peers_are_made_safe() {
        assert_eq!(safe_name("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(safe_name(".."), "_.");
        assert_eq!(safe_name("."), "_");
        assert_eq!(safe_name(".bashrc"), "_bashrc");
        assert_eq!(safe_name("/home/victim"), "_home_victim");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("   "), "file");
        assert_eq!(safe_name("a\nb"), "a_b");
        assert_eq!(safe_name("a\0b"), "a_b");
        assert_eq!(safe_name("a\\b"), "a_b");
        assert_eq!(safe_name("report.pdf"), "report.pdf");
        assert_eq!(safe_name(&"é".repeat(200)).len(), MAX_NAME);
        assert!(safe_name(&"x".repeat(100_000)).len() <= MAX_NAME);
        for name in ["..", "../x", "/", "\0", ".", "a/../../b", "\u{0}..", ". ."] {
            let safe = safe_name(name);
            let p = Path::new("/dir").join(&safe);
            assert_eq!(p.parent(), Some(Path::new("/dir")), "{name:?}");
            assert!(!safe.starts_with('.') && !safe.contains('/') && !safe.contains('\0'));
        }
    }
}
