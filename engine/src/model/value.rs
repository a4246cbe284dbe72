//! Header values: the JSON-like table AMQP and Kombu carry in `headers` and in
//! binding arguments.

use std::collections::BTreeMap;

/// A header table, ordered by key.
pub type Headers = BTreeMap<String, Value>;

/// One header value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// No value (JSON null, AMQP void).
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// UTF-8 text.
    Str(String),
    /// Raw bytes.
    Bytes(bytes::Bytes),
    /// A list.
    List(Vec<Value>),
    /// A nested table.
    Table(Headers),
}

impl Value {
    /// The text, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bytes::Bytes> for Value {
    fn from(v: bytes::Bytes) -> Self {
        Value::Bytes(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_and_accessors() {
        assert_eq!(Value::from("a").as_str(), Some("a"));
        assert_eq!(Value::from(String::from("b")).as_str(), Some("b"));
        assert_eq!(Value::from(7i64).as_i64(), Some(7));
        assert_eq!(Value::from(7i32), Value::Int(7));
        assert_eq!(Value::from(7u32), Value::Int(7));
        assert_eq!(Value::from(true), Value::Bool(true));
        assert_eq!(Value::from(1.5), Value::Float(1.5));
        assert_eq!(
            Value::from(bytes::Bytes::from_static(b"x")),
            Value::Bytes(bytes::Bytes::from_static(b"x"))
        );
        assert_eq!(Value::Null.as_str(), None);
        assert_eq!(Value::Null.as_i64(), None);
    }
}
