//! Headers-exchange matching: binding arguments against message headers.

use crate::error::Error;
use crate::model::value::{Headers, Value};

/// A headers binding: `x-match` mode and the header pairs to compare.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeadersMatch {
    any: bool,
    pairs: Vec<(String, Value)>,
}

impl HeadersMatch {
    /// Reads binding arguments; `x-match` is `all` (default) or `any`, other
    /// `x-` keys are ignored; a `Null` value matches on presence alone.
    pub(crate) fn from_arguments(args: &Headers) -> Result<Self, Error> {
        let any = match args.get("x-match") {
            None => false,
            Some(Value::Str(s)) if s == "all" => false,
            Some(Value::Str(s)) if s == "any" => true,
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "x-match must be \"all\" or \"any\", got {other:?}"
                )))
            }
        };
        let pairs = args
            .iter()
            .filter(|(k, _)| !k.starts_with("x-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(HeadersMatch { any, pairs })
    }

    pub(crate) fn matches(&self, headers: &Headers) -> bool {
        let one = |(k, v): &(String, Value)| match headers.get(k) {
            None => false,
            Some(h) => matches!(v, Value::Null) || h == v,
        };
        if self.any {
            self.pairs.iter().any(one)
        } else {
            self.pairs.iter().all(one)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, Value)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn all_and_any() {
        let all = HeadersMatch::from_arguments(&h(&[("a", 1.into()), ("b", "x".into())])).unwrap();
        let any = HeadersMatch::from_arguments(&h(&[
            ("x-match", "any".into()),
            ("a", 1.into()),
            ("b", "x".into()),
        ]))
        .unwrap();
        let both = h(&[("a", 1.into()), ("b", "x".into()), ("c", true.into())]);
        let one = h(&[("a", 1.into())]);
        let wrong = h(&[("a", 2.into())]);
        assert!(all.matches(&both));
        assert!(!all.matches(&one));
        assert!(any.matches(&one));
        assert!(!any.matches(&wrong));
        assert!(!any.matches(&Headers::new()));
    }

    #[test]
    fn null_means_present_and_bad_x_match() {
        let m = HeadersMatch::from_arguments(&h(&[("k", Value::Null)])).unwrap();
        assert!(m.matches(&h(&[("k", 5.into())])));
        assert!(!m.matches(&h(&[("j", 5.into())])));
        assert!(matches!(
            HeadersMatch::from_arguments(&h(&[("x-match", "some".into())])),
            Err(Error::InvalidArgument(_))
        ));
    }
}
