//! Input rules of the IPC spec, checked once at the boundary: user IDs, emails,
//! passwords, nicknames and avatar images. Each returns the `-32602` / `too_large` error
//! the spec asks for, naming the field.

use std::path::Path;

use letstalk_ipc::{ErrorKind, RpcError};

/// The longest avatar accepted.
pub const MAX_AVATAR: u64 = 1 << 20;
/// The shortest password accepted.
pub const MIN_PASSWORD: usize = 8;
/// Passwords longer than this are refused: Argon2 would happily hash megabytes.
pub const MAX_PASSWORD: usize = 1024;
/// Nicknames are short display names.
pub const MAX_NICKNAME: usize = 64;

/// The user of a one-to-one conversation id `user:<id>`, when `<id>` is a user id as we
/// write it (a conversation id from elsewhere must not name one user two ways).
pub fn conversation_user(conversation: &str) -> Option<&str> {
    let user = conversation.strip_prefix("user:")?;
    user_id("to", user).is_ok_and(|id| id == user).then_some(user)
}

/// A user ID: 3 to 32 of `a-z 0-9 . _ -`, starting with a letter; lowercased first.
pub fn user_id(field: &str, raw: &str) -> Result<String, RpcError> {
    let id = raw.trim().to_lowercase();
    let ok = (3..=32).contains(&id.chars().count())
        && id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(id)
    } else {
        Err(RpcError::invalid_params(
            field,
            format!(
                "{field} must be 3 to 32 characters of a-z, 0-9, '.', '_', '-', starting with a letter"
            ),
        ))
    }
}

/// An email address that looks like one: `local@domain.tld`, no spaces, at most 254
/// characters.
pub fn email(field: &str, raw: &str) -> Result<String, RpcError> {
    let e = raw.trim();
    let looks_right = e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        });
    if looks_right {
        Ok(e.to_owned())
    } else {
        Err(RpcError::invalid_params(field, format!("{field} does not look like an email address")))
    }
}

/// A password of at least [`MIN_PASSWORD`] characters.
pub fn password(field: &str, raw: &str) -> Result<(), RpcError> {
    let n = raw.chars().count();
    if n < MIN_PASSWORD {
        return Err(RpcError::invalid_params(
            field,
            format!("{field} must be at least {MIN_PASSWORD} characters"),
        ));
    }
    if raw.len() > MAX_PASSWORD {
        return Err(RpcError::new(
            ErrorKind::TooLarge,
            format!("{field} is longer than {MAX_PASSWORD} bytes"),
        ));
    }
    Ok(())
}

/// A nickname: 1 to 64 characters, no control characters.
pub fn nickname(field: &str, raw: &str) -> Result<String, RpcError> {
    let n = raw.trim();
    if n.is_empty() || n.chars().count() > MAX_NICKNAME || n.chars().any(char::is_control) {
        return Err(RpcError::invalid_params(
            field,
            format!("{field} must be 1 to {MAX_NICKNAME} characters without control characters"),
        ));
    }
    Ok(n.to_owned())
}

/// An avatar image read from `path`: PNG, JPEG or WebP (by content), at most 1 MiB.
pub fn avatar(field: &str, path: &str) -> Result<(Vec<u8>, &'static str), RpcError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(RpcError::invalid_params(field, format!("{field} must be an absolute path")));
    }
    let meta = std::fs::metadata(p).map_err(|e| {
        RpcError::invalid_params(field, format!("{field}: cannot read {path}: {e}"))
    })?;
    if meta.len() > MAX_AVATAR {
        return Err(RpcError::new(ErrorKind::TooLarge, format!("{field} is larger than 1 MiB")));
    }
    let bytes = std::fs::read(p).map_err(|e| {
        RpcError::invalid_params(field, format!("{field}: cannot read {path}: {e}"))
    })?;
    if bytes.len() as u64 > MAX_AVATAR {
        return Err(RpcError::new(ErrorKind::TooLarge, format!("{field} is larger than 1 MiB")));
    }
    let mime = image_type(&bytes).ok_or_else(|| {
        RpcError::invalid_params(field, format!("{field} must be a PNG, JPEG or WebP image"))
    })?;
    Ok((bytes, mime))
}

/// The MIME type of a PNG, JPEG or WebP image, by its magic bytes.
pub fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert_eq!(user_id("u", " Alice.B_1-x ").unwrap(), "alice.b_1-x");
        for bad in ["ab", "1abc", "_abc", "a".repeat(33).as_str(), "al ice", "alicé", "al@ce", ""]
        {
            assert_eq!(user_id("user_id", bad).unwrap_err().field(), Some("user_id"), "{bad}");
        }
        assert!(user_id("u", &"a".repeat(32)).is_ok());
    }

    #[test]
    fn emails() {
        assert!(email("e", "a@b.co").is_ok());
        for bad in ["", "a", "a@b", "@b.co", "a@.co", "a@b.", "a b@c.de", "a@b@c.de", "a@b..c"] {
            assert!(email("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_and_images() {
        assert!(password("p", "12345678").is_ok());
        assert_eq!(password("password", "1234567").unwrap_err().field(), Some("password"));
        assert_eq!(password("p", &"x".repeat(2000)).unwrap_err().kind(), Some(ErrorKind::TooLarge));
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(image_type(b"RIFF1234WEBPVP8 "), Some("image/webp"));
        assert_eq!(image_type(b"GIF89a"), None);
    }
}
