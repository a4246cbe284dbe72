//! Entry points for the fuzz targets in `fuzz/` (feature `test-hooks`): each
//! takes arbitrary bytes and checks, with assertions, what must hold for any
//! input. Not part of the API; the unit tests run them on seeds so they keep
//! working between fuzzing runs.

use crate::routing::topic::{validate_pattern, TopicTrie};
use crate::url::ConnectUrl;

/// Topic routing against a reference: `data` is binding patterns and, on
/// its last line, a routing key. Every pattern is validated or refused
/// without a panic, and the trie of the valid ones matches the key exactly
/// when a plain recursive matcher of AMQP's rules says it does.
pub fn topic_routing(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    let key = lines.pop().unwrap_or("");
    let mut trie = TopicTrie::default();
    let mut valid = Vec::new();
    for (i, p) in lines.iter().enumerate() {
        if validate_pattern(p).is_ok() {
            trie.insert(p, i);
            valid.push((i, *p));
        }
    }
    let mut got = Vec::new();
    trie.matches(key, &mut got);
    got.sort_unstable();
    got.dedup();
    let split = |s: &str| -> Vec<String> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('.').map(str::to_owned).collect()
        }
    };
    let k = split(key);
    let mut want: Vec<usize> = valid
        .iter()
        .filter(|(_, p)| reference(&split(p), &k))
        .map(|(i, _)| *i)
        .collect();
    want.sort_unstable();
    assert_eq!(got, want, "patterns {lines:?}, key {key:?}");
}

/// AMQP topic matching, the obvious way: `*` is one word, `#` zero or more.
fn reference(p: &[String], k: &[String]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((w, rest)) if w == "#" => (0..=k.len()).any(|n| reference(rest, &k[n..])),
        Some((w, rest)) => match k.split_first() {
            None => false,
            Some((kw, krest)) => (w == "*" || w == kw) && reference(rest, krest),
        },
    }
}

/// Any text parses to a URL or an error, never a panic; a parsed URL's
/// connection options are read or refused without a panic; and a password
/// never shows in the URL's `Display` or `Debug`, nor in any error about it.
pub fn connect_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for one in crate::url::split_failover(text).unwrap_or_default() {
        let Ok(mut url) = ConnectUrl::parse(one) else {
            continue;
        };
        let shown = format!("{url} {url:?}");
        let secret = url.password.clone().filter(|p| {
            // Only a password that cannot appear in the output for another
            // reason (as part of the host, a user name, an option) is checked.
            p.len() >= 4
                && !format!("{}{:?}{}{:?}", url.host, url.user, url.path, url.options)
                    .contains(p.as_str())
        });
        if let Some(p) = &secret {
            assert!(!shown.contains(p.as_str()), "password shown: {shown}");
        }
        let errors = [
            url.reject_unknown_options().err().map(|e| e.to_string()),
            url.take_connection_config().err().map(|e| e.to_string()),
        ];
        if let Some(p) = &secret {
            for e in errors.iter().flatten() {
                assert!(!e.contains(p.as_str()), "password in an error: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_entry_points_hold_on_seeds() {
        for seed in [
            &b"a.*.c\n#\na.#\n*.b.#\n#.#\nx*\n\na.b.c"[..],
            b"#\n",
            b"*\n*.*\n\n",
            b"a.#.b\na.b",
            b"\xff",
            b"",
        ] {
            topic_routing(seed);
        }
        for seed in [
            &b"redis://user:hunter22@host:6379/0?visibility_timeout=30&prefetch_count=9"[..],
            b"memory://x?max_body_size=-1",
            b"local:///tmp/x?fsync=always;redis://:s3cretpw@h?bad%zz=1",
            b"redis://:pass%2Fword@h?timeout=abc",
            b"::",
            b"\xff",
        ] {
            connect_url(seed);
        }
    }

    #[test]
    fn the_reference_matcher_follows_amqp() {
        let s = |v: &str| -> Vec<String> {
            if v.is_empty() {
                Vec::new()
            } else {
                v.split('.').map(str::to_owned).collect()
            }
        };
        assert!(reference(&s("a.#"), &s("a")));
        assert!(reference(&s("#"), &s("")));
        assert!(!reference(&s("*"), &s("")));
        assert!(reference(&s("*.b.#"), &s("x.b.c.d")));
        assert!(!reference(&s("a.*"), &s("a.b.c")));
    }
}
