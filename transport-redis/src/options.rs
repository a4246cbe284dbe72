//! `redis://` URLs and their options.
//!
//! `redis://[[user]:password@]host[:port][/db][?options]` and
//! `redis+socket:///path/redis.sock?db=N`; several joined by `;` are a
//! failover list walked on every reconnect. Options named as kombu's
//! transport options where kombu has them.
//!
//! # Invariants
//! - A password is never printed: `Debug` of every type here redacts it,
//!   and errors name options, never credentials.

use std::time::Duration;

use dashi_engine::spi::{parse_seconds, parse_size, split_failover, ConnectUrl};
use dashi_engine::{ConnectionConfig, UrlError};

use crate::link::{Addr, Login};
use crate::wire::Keys;

/// How far a publish confirm waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmLevel {
    /// At the Redis reply (kombu's level).
    Server,
    /// After `WAIT n`: `n` replicas have the write.
    Replicated(u32),
}

/// One server of the failover list.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Server {
    pub(crate) addr: Addr,
    pub(crate) login: Login,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.login.db)
    }
}

/// Everything a `redis://` URL says.
#[derive(Debug, Clone)]
pub(crate) struct RedisOptions {
    pub(crate) servers: Vec<Server>,
    pub(crate) keys: Keys,
    /// kombu's `visibility_timeout`: an unacked entry older than this is
    /// restored by any participant's scan.
    pub(crate) visibility_timeout: Duration,
    /// kombu's `unacked_mutex_expire`.
    pub(crate) unacked_mutex_expire: Duration,
    /// How often idle links are checked (`PING`).
    pub(crate) health_check_interval: Duration,
    /// Longest wait for any reply (dashi's `timeout`).
    pub(crate) timeout: Duration,
    pub(crate) confirm: ConfirmLevel,
    /// Most messages one pop script takes (dashi's `batch`).
    pub(crate) batch: usize,
    /// How often queues with waiting consumers are looked at when no
    /// notification came (dashi's `poll_interval`).
    pub(crate) poll_interval: Duration,
    /// kombu's `fanout_prefix` / `fanout_patterns` (kept for the pub/sub
    /// fanout layout).
    pub(crate) fanout_prefix: Option<String>,
    pub(crate) fanout_patterns: bool,
    pub(crate) config: ConnectionConfig,
}

fn invalid(name: &str, value: &str, reason: &str) -> UrlError {
    UrlError::InvalidOption {
        name: name.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn flag(name: &str, v: &str) -> Result<bool, UrlError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, v, "expected true or false")),
    }
}

/// Parses a whole `redis://` URL list (`;`-separated). Options are those
/// of the first URL; the others contribute their servers.
pub(crate) fn parse(urls: &str) -> Result<RedisOptions, UrlError> {
    let parts = split_failover(urls)?;
    let mut servers = Vec::with_capacity(parts.len());
    let mut first: Option<ConnectUrl> = None;
    for part in parts {
        let mut url = ConnectUrl::parse(part)?;
        let server = server_of(&mut url)?;
        servers.push(server);
        if first.is_none() {
            first = Some(url);
        }
    }
    let mut url = first.ok_or(UrlError::Empty)?;
    let mut o = RedisOptions {
        servers,
        keys: Keys::default(),
        visibility_timeout: Duration::from_secs(3600),
        unacked_mutex_expire: Duration::from_secs(300),
        health_check_interval: Duration::from_secs(25),
        timeout: Duration::from_secs(10),
        confirm: ConfirmLevel::Server,
        batch: 256,
        poll_interval: Duration::from_secs(1),
        fanout_prefix: Some("/{db}.".into()),
        fanout_patterns: true,
        config: ConnectionConfig::default(),
    };
    // kombu's visibility timeout is Redis-wide crash recovery here, not
    // the engine's per-delivery lease: taken before the common options.
    let vt = url.take_option("visibility_timeout");
    if let Some(v) = &vt {
        o.visibility_timeout = parse_seconds("visibility_timeout", v)?;
    }
    o.config = url.take_connection_config()?;
    if vt.is_some() {
        // Given explicitly, it is also every delivery's lease, as on the
        // other transports: a delivery held past it comes back (marked
        // redelivered) unless its lease is extended.
        o.config.lease = Some(o.visibility_timeout);
    }
    if let Some(v) = url.take_option("sep") {
        if v.is_empty() {
            return Err(invalid("sep", &v, "the separator cannot be empty"));
        }
        o.keys.sep = v;
    }
    if let Some(v) = url.take_option("priority_steps") {
        o.keys.steps = parse_steps(&v)?;
    }
    if let Some(v) = url.take_option("global_keyprefix") {
        o.keys.prefix = v;
    }
    for (name, field) in [
        ("unacked_key", &mut o.keys.unacked),
        ("unacked_index_key", &mut o.keys.unacked_index),
        ("unacked_mutex_key", &mut o.keys.unacked_mutex),
    ] {
        if let Some(v) = url.take_option(name) {
            if v.is_empty() {
                return Err(invalid(name, &v, "a key name cannot be empty"));
            }
            *field = v;
        }
    }
    if let Some(v) = url.take_option("unacked_mutex_expire") {
        o.unacked_mutex_expire = parse_seconds("unacked_mutex_expire", &v)?;
        if o.unacked_mutex_expire < Duration::from_millis(1) {
            return Err(invalid(
                "unacked_mutex_expire",
                &v,
                "at least 0.001 seconds",
            ));
        }
    }
    if let Some(v) = url.take_option("health_check_interval") {
        o.health_check_interval = parse_seconds("health_check_interval", &v)?;
    }
    if let Some(v) = url.take_option("timeout") {
        o.timeout = parse_seconds("timeout", &v)?;
        if o.timeout < Duration::from_millis(1) || o.timeout > Duration::from_secs(3600) {
            return Err(invalid("timeout", &v, "from 0.001 to 3600 seconds"));
        }
    }
    if let Some(v) = url.take_option("poll_interval") {
        o.poll_interval = parse_seconds("poll_interval", &v)?;
        if o.poll_interval < Duration::from_millis(1) {
            return Err(invalid("poll_interval", &v, "at least 0.001 seconds"));
        }
    }
    if let Some(v) = url.take_option("batch") {
        let n = parse_size("batch", &v)?;
        if !(1..=4096).contains(&n) {
            return Err(invalid("batch", &v, "from 1 to 4096 messages"));
        }
        o.batch = n as usize;
    }
    if let Some(v) = url.take_option("confirm") {
        o.confirm = parse_confirm(&v)?;
    }
    if let Some(v) = url.take_option("fanout_prefix") {
        o.fanout_prefix = match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some("/{db}.".into()),
            "false" | "0" | "no" | "" => None,
            _ if v.starts_with('/') && v.ends_with('.') => Some(v),
            _ => {
                return Err(invalid(
                    "fanout_prefix",
                    &v,
                    "true, false, or a prefix that starts with '/' and ends with '.'",
                ))
            }
        };
    }
    if let Some(v) = url.take_option("fanout_patterns") {
        o.fanout_patterns = flag("fanout_patterns", &v)?;
    }
    url.reject_unknown_options()?;
    Ok(o)
}

fn parse_steps(v: &str) -> Result<Vec<u8>, UrlError> {
    let inner = v.trim().trim_start_matches('[').trim_end_matches(']');
    let steps: Option<Vec<u8>> = inner
        .split(',')
        .map(|s| s.trim().parse::<u8>().ok().filter(|n| *n <= 9))
        .collect();
    match steps {
        Some(s) if !s.is_empty() && s.windows(2).all(|w| w[0] < w[1]) => Ok(s),
        _ => Err(invalid(
            "priority_steps",
            v,
            "ascending distinct integers from 0 to 9, comma-separated (e.g. 0,3,6,9)",
        )),
    }
}

fn parse_confirm(v: &str) -> Result<ConfirmLevel, UrlError> {
    if v == "server" {
        return Ok(ConfirmLevel::Server);
    }
    if let Some(n) = v.strip_prefix("replicated:") {
        if let Some(n) = n.parse::<u32>().ok().filter(|n| (1..=64).contains(n)) {
            return Ok(ConfirmLevel::Replicated(n));
        }
    }
    Err(invalid(
        "confirm",
        v,
        "server, or replicated:N with N from 1 to 64 replicas",
    ))
}

/// The server one URL names (its scheme, authority and database); its
/// options stay in `url`.
fn server_of(url: &mut ConnectUrl) -> Result<Server, UrlError> {
    let (addr, db) = match url.scheme.as_str() {
        "redis" => {
            if url.host.is_empty() {
                return Err(UrlError::Malformed {
                    reason: "redis:// needs a host: redis://host[:port][/db]".into(),
                });
            }
            let host = url.host.trim_start_matches('[').trim_end_matches(']');
            let db = match url.path.trim_start_matches('/') {
                "" => 0,
                d => parse_db(d)?,
            };
            (Addr::Tcp(host.to_owned(), url.port.unwrap_or(6379)), db)
        }
        "redis+socket" | "unix" => {
            if !url.host.is_empty() || !url.path.starts_with('/') {
                return Err(UrlError::Malformed {
                    reason: "redis+socket:// needs an absolute socket path: \
                             redis+socket:///path/redis.sock?db=N"
                        .into(),
                });
            }
            let db = match url.take_option("db") {
                Some(d) => parse_db(&d)?,
                None => 0,
            };
            (Addr::Unix(url.path.clone()), db)
        }
        "rediss" => {
            return Err(UrlError::Malformed {
                reason: "rediss:// (TLS) is not supported yet; use redis:// over a \
                         trusted network or a TLS tunnel"
                    .into(),
            })
        }
        other => {
            return Err(UrlError::UnknownScheme {
                scheme: other.to_owned(),
                supported: "redis, redis+socket".into(),
            })
        }
    };
    Ok(Server {
        addr,
        login: Login {
            user: url.user.clone(),
            password: url.password.clone(),
            db,
            name: "dashi".into(),
        },
    })
}

fn parse_db(d: &str) -> Result<u32, UrlError> {
    d.parse::<u32>()
        .ok()
        .filter(|n| *n < 1 << 20)
        .ok_or_else(|| UrlError::Malformed {
            reason: format!("invalid database number {d:?} (expected an integer, e.g. /0)"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kombu_options_and_servers() {
        let o = parse(
            "redis://u:p%40ss@h1:7000/3?sep=:&priority_steps=0,1,2,3,4,5,6,7,8,9&global_keyprefix=pfx:\
             &visibility_timeout=2.5&unacked_key=ua&confirm=replicated:1&batch=8;redis://h2",
        )
        .unwrap();
        assert_eq!(o.servers.len(), 2);
        assert_eq!(o.servers[0].addr, Addr::Tcp("h1".into(), 7000));
        assert_eq!(o.servers[0].login.db, 3);
        assert_eq!(o.servers[0].login.password.as_deref(), Some("p@ss"));
        assert_eq!(o.servers[1].addr, Addr::Tcp("h2".into(), 6379));
        assert_eq!(o.keys.sep, ":");
        assert_eq!(o.keys.steps, (0..=9).collect::<Vec<u8>>());
        assert_eq!(o.keys.prefix, "pfx:");
        assert_eq!(o.keys.unacked(), "pfx:ua");
        assert_eq!(o.visibility_timeout, Duration::from_millis(2500));
        assert_eq!(o.config.lease, Some(Duration::from_millis(2500)));
        assert_eq!(parse("redis://h").unwrap().config.lease, None);
        assert_eq!(o.confirm, ConfirmLevel::Replicated(1));
        assert_eq!(o.batch, 8);
        let shown = format!("{o:?}");
        assert!(!shown.contains("p@ss"), "{shown}");
        let s = parse("redis+socket:///tmp/r.sock?db=2").unwrap();
        assert_eq!(s.servers[0].addr, Addr::Unix("/tmp/r.sock".into()));
        assert_eq!(s.servers[0].login.db, 2);
    }

    #[test]
    fn bad_options_are_one_line_errors() {
        for (url, says) in [
            ("redis://h?priority_steps=3,0", "priority_steps"),
            ("redis://h?priority_steps=0,10", "priority_steps"),
            ("redis://h?sep=", "sep"),
            ("redis://h?batch=0", "batch"),
            ("redis://h?batch=99999", "batch"),
            ("redis://h?confirm=replicated:0", "confirm"),
            ("redis://h?confirm=always", "confirm"),
            ("redis://h?timeout=0", "timeout"),
            ("redis://h?visibility_timeout=-1", "visibility_timeout"),
            ("redis://h?fanout_prefix=x", "fanout_prefix"),
            ("redis://h?nope=1", "nope"),
            ("redis://h/x", "database"),
            ("redis:///0", "needs a host"),
            ("rediss://h", "not supported yet"),
            ("redis+socket://h/x.sock", "absolute socket path"),
        ] {
            let e = parse(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
