//! Key shapes (PROTOCOL.md section 4): how keys are made, recognised and
//! shown masked.

pub const KEY_LEN: usize = 24;

/// A new random key of `[A-Za-z0-9]`, from the OS's CSPRNG.
pub fn new_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..KEY_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// True for a string of the key alphabet and length.
pub fn is_key_shaped(s: &str) -> bool {
    (20..=25).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A key shown to a person: first and last two characters only.
pub fn mask_key(key: &str) -> String {
    if key.len() <= 6 {
        return "*".repeat(key.len());
    }
    format!(
        "{}{}{}",
        &key[..2],
        "*".repeat(key.len() - 4),
        &key[key.len() - 2..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let k = new_key();
        assert!(is_key_shaped(&k));
        assert_ne!(k, new_key());
        assert_eq!(mask_key("abcdefghijklmnopqrst"), "ab****************st");
    }
}
