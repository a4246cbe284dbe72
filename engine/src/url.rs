//! Connection URLs: `scheme://[user[:password]@]host[:port][/path][?k=v&...]`,
//! several separated by `;` for failover. Passwords are percent-decoded and never
//! printed (`Display` redacts them).
//!
//! # Invariants
//! - A password never appears in any `Display` or `Debug` output or error.

use std::fmt;
use std::time::Duration;

use crate::error::UrlError;
use crate::session::connection::ConnectionConfig;

/// A parsed connection URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectUrl {
    /// Scheme, lower-case (`memory`, `local`, `redis`).
    pub scheme: String,
    /// User name, percent-decoded.
    pub user: Option<String>,
    /// Password, percent-decoded. Never printed.
    pub password: Option<String>,
    /// Host (or instance name for `memory://`), percent-decoded.
    pub host: String,
    /// Port.
    pub port: Option<u16>,
    /// Path after the authority, including the leading `/` (empty if none).
    pub path: String,
    /// Query options in order, percent-decoded.
    pub options: Vec<(String, String)>,
}

impl fmt::Debug for ConnectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectUrl({self})")
    }
}

impl fmt::Display for ConnectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:***@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (None, None) => {}
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(&self.path)?;
        for (i, (k, v)) in self.options.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// Splits a failover list (`url1;url2`) into its URLs.
pub fn split_failover(urls: &str) -> Result<Vec<&str>, UrlError> {
    let parts: Vec<&str> = urls.split(';').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(UrlError::Empty);
    }
    Ok(parts)
}

/// Decodes `%XX` escapes (the `percent-encoding` crate), strictly: a `%` not
/// followed by two hex digits is an error (that crate would pass it through),
/// and the result must be UTF-8.
pub fn percent_decode(s: &str) -> Result<String, UrlError> {
    let b = s.as_bytes();
    let well_formed = b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(UrlError::Malformed {
            reason: "a '%' is not followed by two hex digits".into(),
        });
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| UrlError::Malformed {
            reason: "percent-decoded text is not UTF-8".into(),
        })
}

impl ConnectUrl {
    /// Parses one URL (not a failover list).
    pub fn parse(url: &str) -> Result<ConnectUrl, UrlError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(UrlError::Empty);
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(UrlError::MissingScheme {
                url: redact_raw(url),
            });
        };
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        {
            return Err(UrlError::Malformed {
                reason: format!("invalid scheme {scheme:?}"),
            });
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if rest.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(UrlError::Malformed {
                reason: "fragments ('#') are not allowed".into(),
            });
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| percent_decode(u)).transpose()?,
                    Some(percent_decode(p)?),
                ),
                None => (Some(percent_decode(ui)?), None),
            },
        };
        let (host, port) = if hostport.starts_with('[') {
            let end = hostport.find(']').ok_or_else(|| UrlError::Malformed {
                reason: "unterminated IPv6 address".into(),
            })?;
            let host = &hostport[..=end];
            let port = match &hostport[end + 1..] {
                "" => None,
                p => Some(parse_port(p.strip_prefix(':').ok_or_else(|| {
                    UrlError::Malformed {
                        reason: "junk after IPv6 address".into(),
                    }
                })?)?),
            };
            (host.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h)?, Some(parse_port(p)?)),
                None => (percent_decode(hostport)?, None),
            }
        };
        let mut options = Vec::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| UrlError::Malformed {
                    reason: format!("option {pair:?} has no '=value'"),
                })?;
                if k.is_empty() {
                    return Err(UrlError::Malformed {
                        reason: "an option has an empty name".into(),
                    });
                }
                let (k, v) = (percent_decode(k)?, percent_decode(v)?);
                // `?fsync=always&fsync=never` ran as never, silently: a
                // URL built from two sources says which it means.
                if let Some((_, first)) = options.iter().find(|(n, _)| *n == k) {
                    return Err(UrlError::Malformed {
                        reason: format!("option {k:?} is given twice ({first:?} and {v:?})"),
                    });
                }
                options.push((k, v));
            }
        }
        Ok(ConnectUrl {
            scheme: scheme.to_ascii_lowercase(),
            user,
            password,
            host,
            port,
            path: percent_decode(path)?,
            options,
        })
    }

    /// Removes and returns option `name` (a URL names each at most once).
    pub fn take_option(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        self.options.retain(|(k, v)| {
            if k == name {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Errors on the first option nobody took.
    pub fn reject_unknown_options(&self) -> Result<(), UrlError> {
        match self.options.first() {
            Some((k, _)) => Err(UrlError::UnknownOption {
                scheme: self.scheme.clone(),
                name: k.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Takes the options every transport understands: `max_body_size`,
    /// `prefetch_count`, `prefetch_bytes` (sizes accept K, M, G suffixes,
    /// powers of 1024), `visibility_timeout` and `busy_poll` (seconds,
    /// fractions allowed), `confirm_window` and `confirm_window_bytes` (the
    /// default window of pipelined publishes per channel).
    pub fn take_connection_config(&mut self) -> Result<ConnectionConfig, UrlError> {
        let mut c = ConnectionConfig::default();
        if let Some(v) = self.take_option("max_body_size") {
            c.max_body_size = parse_size("max_body_size", &v)? as usize;
        }
        if let Some(v) = self.take_option("prefetch_count") {
            let n = parse_size("prefetch_count", &v)?;
            c.prefetch_count = u32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("prefetch_count", &v, "an integer from 1 to 4294967295"))?;
        }
        if let Some(v) = self.take_option("prefetch_bytes") {
            c.prefetch_bytes = parse_size("prefetch_bytes", &v)?;
        }
        if let Some(v) = self.take_option("visibility_timeout") {
            c.lease = Some(parse_seconds("visibility_timeout", &v)?);
        }
        if let Some(v) = self.take_option("busy_poll") {
            c.busy_poll = parse_seconds("busy_poll", &v)?;
        }
        for (name, field) in [
            ("confirm_window", &mut c.confirm_window),
            ("confirm_window_bytes", &mut c.confirm_window_bytes),
        ] {
            if let Some(v) = self.take_option(name) {
                *field = parse_size(name, &v)
                    .ok()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(name, &v, "a size of at least 1"))?;
            }
        }
        Ok(c)
    }
}

fn redact_raw(url: &str) -> String {
    match (url.find('@'), url.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!("{}:***{}", &url[..colon], &url[at..]),
        _ => url.to_owned(),
    }
}

fn parse_port(p: &str) -> Result<u16, UrlError> {
    p.parse::<u16>().map_err(|_| UrlError::Malformed {
        reason: format!("invalid port {p:?}"),
    })
}

fn invalid(name: &str, value: &str, expected: &str) -> UrlError {
    UrlError::InvalidOption {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: format!("expected {expected}"),
    }
}

/// Parses a positive size: digits with an optional `K`, `M`, `G` (or `KiB`,
/// `MiB`, `GiB`) suffix.
pub fn parse_size(name: &str, v: &str) -> Result<u64, UrlError> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let mult: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => {
            return Err(invalid(
                name,
                v,
                "a positive integer with optional K/M/G suffix",
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid(name, v, "a positive integer with optional K/M/G suffix"))
}

/// Parses positive seconds, fractions allowed.
pub fn parse_seconds(name: &str, v: &str) -> Result<Duration, UrlError> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e12)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| invalid(name, v, "a positive number of seconds below 10^12"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url_and_redacts() {
        let u = ConnectUrl::parse("redis://user:p%40ss@host:6380/2?a=1&b=x%20y").unwrap();
        assert_eq!(u.scheme, "redis");
        assert_eq!(u.user.as_deref(), Some("user"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.host, "host");
        assert_eq!(u.port, Some(6380));
        assert_eq!(u.path, "/2");
        assert_eq!(
            u.options,
            vec![("a".into(), "1".into()), ("b".into(), "x y".into())]
        );
        let shown = u.to_string();
        assert!(!shown.contains("p@ss") && shown.contains("***"), "{shown}");
        assert!(!format!("{u:?}").contains("p@ss"));
        let anon = ConnectUrl::parse("redis://:secret@h").unwrap();
        assert_eq!(anon.user, None);
        assert!(!anon.to_string().contains("secret"));
    }

    #[test]
    fn ipv6_and_paths() {
        let u = ConnectUrl::parse("redis://[::1]:7000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", Some(7000)));
        let l = ConnectUrl::parse("local:///tmp/x?fsync=always").unwrap();
        assert_eq!((l.host.as_str(), l.path.as_str()), ("", "/tmp/x"));
        let m = ConnectUrl::parse("memory://").unwrap();
        assert_eq!((m.scheme.as_str(), m.host.as_str()), ("memory", ""));
    }

    #[test]
    fn malformed() {
        assert_eq!(ConnectUrl::parse(""), Err(UrlError::Empty));
        assert!(matches!(
            ConnectUrl::parse("nothing"),
            Err(UrlError::MissingScheme { .. })
        ));
        let e = ConnectUrl::parse("x:pw@host").unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
        for bad in [
            "://x",
            "re dis://x",
            "redis://h:notaport",
            "redis://h:70000",
            "redis://h?novalue",
            "redis://h?=v",
            "redis://h#frag",
            "redis://%zz",
            "redis://h%4",
            "redis://h%",
            "redis://h%ff%fe",
            "redis://[::1",
            "redis://[::1]x",
            "local:///d?fsync=always&fsync=never",
            "redis://h?db=1&%64b=2",
        ] {
            assert!(
                matches!(ConnectUrl::parse(bad), Err(UrlError::Malformed { .. })),
                "{bad}"
            );
        }
        let twice = ConnectUrl::parse("local:///d?segment_size=64K&segment_size=1M").unwrap_err();
        assert!(
            twice
                .to_string()
                .contains(r#""segment_size" is given twice ("64K" and "1M")"#),
            "{twice}"
        );
        assert_eq!(split_failover("a://;b://").unwrap(), vec!["a://", "b://"]);
        assert_eq!(split_failover("a://;"), Err(UrlError::Empty));
    }

    #[test]
    fn options() {
        let mut u = ConnectUrl::parse(
            "memory://?max_body_size=1M&prefetch_count=5&prefetch_bytes=2k&visibility_timeout=0.5&busy_poll=0.002&zzz=1",
        )
        .unwrap();
        let c = u.take_connection_config().unwrap();
        assert_eq!(c.max_body_size, 1 << 20);
        assert_eq!(c.prefetch_count, 5);
        assert_eq!(c.prefetch_bytes, 2048);
        assert_eq!(c.lease, Some(Duration::from_millis(500)));
        assert_eq!(c.busy_poll, Duration::from_millis(2));
        let mut w =
            ConnectUrl::parse("memory://?confirm_window=16&confirm_window_bytes=1M").unwrap();
        let c = w.take_connection_config().unwrap();
        assert_eq!((c.confirm_window, c.confirm_window_bytes), (16, 1 << 20));
        assert_eq!(
            u.reject_unknown_options(),
            Err(UrlError::UnknownOption {
                scheme: "memory".into(),
                name: "zzz".into()
            })
        );
        for bad in [
            "max_body_size=0",
            "max_body_size=1T",
            "max_body_size=-1",
            "prefetch_count=99999999999",
            "visibility_timeout=abc",
            "visibility_timeout=-1",
            "visibility_timeout=inf",
            "visibility_timeout=1000000000000",
            "busy_poll=x",
            "confirm_window=0",
            "confirm_window=18446744073709551616",
            "confirm_window_bytes=0",
            "confirm_window_bytes=abc",
            "busy_poll=-0.1",
        ] {
            let mut u = ConnectUrl::parse(&format!("memory://?{bad}")).unwrap();
            assert!(
                matches!(
                    u.take_connection_config(),
                    Err(UrlError::InvalidOption { .. })
                ),
                "{bad}"
            );
        }
        // A refusal says the bound, not only "positive".
        let mut u = ConnectUrl::parse("memory://?visibility_timeout=99999999999999").unwrap();
        let e = u.take_connection_config().unwrap_err().to_string();
        assert!(e.contains("below 10^12"), "{e}");
    }
}
