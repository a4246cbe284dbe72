//! Opening the connection a command names, and printing its URL safely.

use dashi::Connection;

pub(crate) fn connect(url: &str) -> Result<Connection, String> {
    dashi::connect(url).map_err(|e| format!("cannot connect to {}: {e}", redact(url)))
}

/// The URL as it may be printed (password hidden).
pub(crate) fn redact(url: &str) -> String {
    match dashi::spi::ConnectUrl::parse(url) {
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_printed_without_passwords() {
        assert_eq!(redact("redis://u:secret@h"), "redis://u:***@h");
        assert_eq!(redact("::"), "<unparsable URL>");
        let e = connect("nope://u:secret@h").unwrap_err();
        assert!(e.contains("nope://u:***@h") && !e.contains("secret"), "{e}");
    }
}
