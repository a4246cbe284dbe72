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
    let k = split(key);
    let mut want: Vec<usize> = valid
        .iter()
        .filter(|(_, p)| reference(&split(p), &k))
        .map(|(i, _)| *i)
        .collect();
    want.sort_unstable();
    assert_eq!(got, want, "patterns {lines:?}, key {key:?}");
}

/// The words of a key or pattern (none for the empty one, as in RabbitMQ).
fn split(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').map(str::to_owned).collect()
    }
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
/// connection options are read or refused without a panic; and nothing
/// shown depends on the password: the URL's `Display` and `Debug` and every
/// error about it read the same with another password in its place.
pub fn connect_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for one in crate::url::split_failover(text).unwrap_or_default() {
        let Ok(url) = ConnectUrl::parse(one) else {
            continue;
        };
        let mut other = url.clone();
        other.password = Some(match &url.password {
            Some(p) => format!("{p}-another"),
            None => "another".to_owned(),
        });
        let (a, b) = (shown(url), shown(other));
        if a.0 {
            assert_eq!(a.1, b.1, "what is shown depends on the password");
        }
    }
}

/// Whether the URL has a password, and everything it shows: `Display`,
/// `Debug`, and the errors of reading its options.
fn shown(mut url: ConnectUrl) -> (bool, String) {
    let mut out = format!("{url} {url:?}");
    if let Err(e) = url.reject_unknown_options() {
        out.push_str(&e.to_string());
    }
    if let Err(e) = url.take_connection_config() {
        out.push_str(&e.to_string());
    }
    (url.password.is_some(), out)
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
            // Found by the fuzzer: passwords whose characters the user name
            // shows next to them (false alarms of a first version that
            // searched the output for the password).
            b" 8://yy\x01\0\0\0\0\0\0+\x03\x0ey\0\x0e\0\0\0\x0e\0\0\x02\x0e :+\x03\x0ey\0\x0e@",
            b" 8://\0\0@\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0:\0\0\0\0:@;@\0\0\0\0\0\0",
            b"::",
            b"\xff",
        ] {
            connect_url(seed);
        }
    }

    #[test]
    fn the_reference_matcher_follows_amqp() {
        let s = split;
        assert!(reference(&s("a.#"), &s("a")));
        assert!(reference(&s("#"), &s("")));
        assert!(!reference(&s("*"), &s("")));
        assert!(reference(&s("*.b.#"), &s("x.b.c.d")));
        assert!(!reference(&s("a.*"), &s("a.b.c")));
    }
}
