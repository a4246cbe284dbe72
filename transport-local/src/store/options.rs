//! What a `local://` URL says: the durability mode, the segment size, the
//! per-queue disk budget, and the connection options every transport takes.

use std::path::Path;
use std::sync::Arc;

use dashi_engine::spi::{parse_size, ConnectUrl};
use dashi_engine::{Connection, Error, UrlError};

use super::LocalTransport;

/// When a publish is confirmed durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fsync {
    /// Confirmed once in the shared mapping: survives a process crash, not a
    /// power loss (the OS writes pages back when it likes).
    Never,
    /// Confirmed after an `fdatasync` (issued on a runtime core's io_uring)
    /// that covers the record: survives a power loss. One `fdatasync` serves
    /// every publish that arrived while the previous one ran (group commit).
    Always,
    /// `fdatasync` of written segments every interval, on a runtime core;
    /// publishes confirm at once (a power loss loses at most one interval).
    Interval(std::time::Duration),
}

/// Options of a `local://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOptions {
    /// Durability of a confirmed publish.
    pub fsync: Fsync,
    /// Size of each segment file.
    pub segment_size: u64,
    /// Most ready bytes per queue (its disk budget), if limited.
    pub max_queue_bytes: Option<u64>,
    /// Make the store if the directory holds none (`create=false`: opening
    /// a directory that is not a store is an error and creates nothing).
    pub create: bool,
    /// Behave as if io_uring were not permitted (tests of the fallback).
    #[doc(hidden)]
    pub simulate_no_io_uring: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            fsync: Fsync::Never,
            segment_size: 64 << 20,
            max_queue_bytes: None,
            create: true,
            simulate_no_io_uring: false,
        }
    }
}

fn parse_fsync(v: &str) -> Result<Fsync, UrlError> {
    let invalid = |reason: &str| UrlError::InvalidOption {
        name: "fsync".into(),
        value: v.into(),
        reason: reason.into(),
    };
    match v {
        "never" => Ok(Fsync::Never),
        "always" => Ok(Fsync::Always),
        v => match v.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) if (1..=3_600_000).contains(&ms) => {
                Ok(Fsync::Interval(std::time::Duration::from_millis(ms)))
            }
            Some(_) => Err(invalid("interval:<ms> needs 1 to 3600000 milliseconds")),
            None => Err(invalid("expected never, always or interval:<ms>")),
        },
    }
}

/// Opens a `local:///abs/dir?options` URL.
pub fn open(mut url: ConnectUrl) -> Result<Connection, Error> {
    if url.scheme != "local" {
        return Err(UrlError::UnknownScheme {
            scheme: url.scheme,
            supported: "local".into(),
        }
        .into());
    }
    if !url.host.is_empty() || url.path.is_empty() || !url.path.starts_with('/') {
        return Err(UrlError::Malformed {
            reason: format!(
                "local:// needs an absolute directory: local:///abs/path (got host {:?}, path {:?}); \
                 relative paths are not accepted",
                url.host, url.path
            ),
        }
        .into());
    }
    let config = url.take_connection_config()?;
    let mut opts = LocalOptions::default();
    if let Some(v) = url.take_option("fsync") {
        opts.fsync = parse_fsync(&v)?;
    }
    if let Some(v) = url.take_option("segment_size") {
        let n = parse_size("segment_size", &v)?;
        if !(64 << 10..=1 << 35).contains(&n) || n % 4096 != 0 {
            return Err(UrlError::InvalidOption {
                name: "segment_size".into(),
                value: v,
                reason: "expected a multiple of 4096 from 64K to 32G".into(),
            }
            .into());
        }
        opts.segment_size = n;
    }
    if let Some(v) = url.take_option("max_queue_bytes") {
        opts.max_queue_bytes = Some(parse_size("max_queue_bytes", &v)?);
    }
    if let Some(v) = url.take_option("create") {
        opts.create = match v.as_str() {
            "true" | "yes" | "1" => true,
            "false" | "no" | "0" => false,
            _ => {
                return Err(UrlError::InvalidOption {
                    name: "create".into(),
                    value: v,
                    reason: "expected true or false".into(),
                }
                .into())
            }
        };
    }
    url.reject_unknown_options()?;
    let t = LocalTransport::open(Path::new(&url.path), opts)?;
    Ok(Connection::with_transport(Arc::new(t), config))
}
