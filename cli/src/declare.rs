//! Declaring what a command's flags name: the exchange, the queue and the
//! binding, and the headers given as `--header K=V`.

use dashi::{Channel, Exchange, Headers, Queue, Value};

use crate::args::{Kind, Topology};

/// Declares the exchange, the queue and the binding that the flags name.
/// Existing entities with other arguments are an error (from the transport).
pub(crate) fn declare(
    ch: &Channel,
    topo: &Topology,
    queue: Option<&str>,
    default_key: &str,
    binding_args: Headers,
) -> Result<(), String> {
    declare_with(ch, topo, queue, false, default_key, binding_args)
}

/// What a consumer needs: an existing queue is used as it is (AMQP's
/// passive declare), and only a `--max-priority` given explicitly is
/// checked against it, as one line naming both values; a missing queue is
/// declared from the flags. The exchange and binding are declared as named.
pub(crate) fn declare_for_consume(
    ch: &Channel,
    conn: &dashi::Connection,
    topo: &Topology,
    queue: &str,
) -> Result<(), String> {
    let existing = match conn.stats().queue(queue) {
        Ok(s) => Some(s.depth_by_lane.len().saturating_sub(1)),
        Err(dashi::Error::UnknownQueue(_)) => None,
        Err(e) => return Err(format!("reading queue {queue:?}: {e}")),
    };
    if let (Some(have), Some(want)) = (existing, topo.max_priority) {
        if have != usize::from(want) {
            return Err(format!(
                "queue {queue:?} has max_priority {have}, not {want}"
            ));
        }
    }
    declare_with(
        ch,
        topo,
        Some(queue),
        existing.is_some(),
        queue,
        Headers::new(),
    )
}

fn declare_with(
    ch: &Channel,
    topo: &Topology,
    queue: Option<&str>,
    queue_exists: bool,
    default_key: &str,
    binding_args: Headers,
) -> Result<(), String> {
    let exchange = topo.exchange.as_deref().unwrap_or("");
    if !exchange.is_empty() {
        ch.exchange_declare(&Exchange::new(exchange, topo.kind.into()))
            .map_err(|e| format!("declaring exchange {exchange:?}: {e}"))?;
    }
    if let Some(q) = queue {
        let mut decl = Queue::new(q);
        if let Some(p) = topo.max_priority {
            decl = decl.with_max_priority(p);
        }
        if !queue_exists {
            ch.queue_declare(&decl)
                .map_err(|e| format!("declaring queue {q:?}: {e}"))?;
        }
        if !exchange.is_empty() {
            let key = match topo.kind {
                Kind::Fanout | Kind::Headers => topo.binding_key.clone().unwrap_or_default(),
                Kind::Direct | Kind::Topic => topo
                    .binding_key
                    .clone()
                    .unwrap_or_else(|| default_key.to_owned()),
            };
            ch.queue_bind(q, exchange, &key, binding_args)
                .map_err(|e| format!("binding queue {q:?} to exchange {exchange:?}: {e}"))?;
        }
    }
    Ok(())
}

/// Parses `K=V` header flags (values are strings).
pub(crate) fn parse_headers(flags: &[String]) -> Result<Headers, String> {
    flags
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), Value::from(v))),
            _ => Err(format!("--header {kv:?} is not K=V")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_flags() {
        let h = parse_headers(&["a=1".into(), "b=x=y".into()]).unwrap();
        assert_eq!(h["a"], Value::from("1"));
        assert_eq!(h["b"], Value::from("x=y"));
        assert!(parse_headers(&["=v".into()]).is_err());
        assert!(parse_headers(&["novalue".into()]).is_err());
    }
}
