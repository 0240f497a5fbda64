//! The one rule for user ids, applied to every id a request names.

/// Lowercases and checks a user id: 3 to 32 of `a-z 0-9 . _ -`, starting with a letter.
pub fn normalize_user_id(raw: &str) -> Option<String> {
    let id = raw.to_ascii_lowercase();
    let ok_len = (3..=32).contains(&id.len());
    let first_letter = id.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    (ok_len && first_letter && ok_chars).then_some(id)
}
