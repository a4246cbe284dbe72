//! Opening the connection a command names, and printing its URL safely.

use dashi::Connection;

pub(crate) fn connect(url: &str) -> Result<Connection, String> {
    dashi::connect(url).map_err(|e| format!("cannot connect to {}: {e}", redact(url)))
}

/// Opens an existing store only (stat, consume, purge): a `local://`
/// directory that holds no store is an error, and nothing is created there.
pub(crate) fn connect_existing(url: &str) -> Result<Connection, String> {
    let Ok(list) = dashi::spi::split_failover(url) else {
        return connect(url);
    };
    let existing: Vec<String> = list
        .into_iter()
        .map(|u| match u.strip_prefix("local://") {
            Some(rest) if !rest.contains("create=") => {
                let sep = if rest.contains('?') { '&' } else { '?' };
                format!("{u}{sep}create=false")
            }
            _ => u.to_owned(),
        })
        .collect();
    dashi::connect(&existing.join(";"))
        .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))
}

/// The URL (or failover list) as it may be printed: every password hidden.
pub(crate) fn redact(url: &str) -> String {
    let one = |u: &str| match dashi::spi::ConnectUrl::parse(u) {
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".to_owned(),
    };
    match dashi::spi::split_failover(url) {
        Ok(list) if list.len() > 1 => list.into_iter().map(one).collect::<Vec<_>>().join(";"),
        _ => one(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_printed_without_passwords() {
        assert_eq!(redact("redis://u:secret@h"), "redis://u:***@h");
        assert_eq!(redact("::"), "<unparsable URL>");
        assert_eq!(
            redact("memory://a;redis://u:secret@h"),
            "memory://a;redis://u:***@h"
        );
        let e = connect("nope://u:secret@h").unwrap_err();
        assert!(e.contains("nope://u:***@h") && !e.contains("secret"), "{e}");
    }
}
