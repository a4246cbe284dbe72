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
        ch.queue_declare(&decl)
            .map_err(|e| format!("declaring queue {q:?}: {e}"))?;
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
