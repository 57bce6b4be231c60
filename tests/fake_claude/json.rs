//! A JSON value that keeps its keys in insertion order.
//!
//! serde_json's `Map` is a `BTreeMap` in this workspace (no `preserve_order` feature), which
//! would sort `"type"` into the middle of every line. The real CLI's key order is part of what
//! the fake imitates (`type` first on old versions, the 2.1.330 order on request), so every
//! line the fake prints is built from this type instead.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// An ordered JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

/// Builds a [`J::Obj`] from `"key" => value` pairs; values go through `J::from`.
macro_rules! obj {
    ($($k:expr => $v:expr),* $(,)?) => {
        $crate::json::J::Obj(vec![$(($k.to_string(), $crate::json::J::from($v))),*])
    };
}

impl J {
    /// Compact one-line JSON text.
    pub fn to_line(&self) -> String {
        // Serialising this type cannot fail: keys are strings and floats are finite or null.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Replaces the value of `key`, or appends it when absent.
    pub fn set(&mut self, key: &str, value: impl Into<J>) {
        if let J::Obj(fields) = self {
            let value = value.into();
            match fields.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value,
                None => fields.push((key.to_string(), value)),
            }
        }
    }

    /// Keeps only the keys in `order`, in that order (keys absent from `self` are skipped).
    pub fn select(&self, order: &[&str]) -> J {
        J::Obj(
            order
                .iter()
                .filter_map(|k| self.get(k).map(|v| (k.to_string(), v.clone())))
                .collect(),
        )
    }

    /// The same object without `keys`.
    pub fn without(self, keys: &[&str]) -> J {
        match self {
            J::Obj(fields) => J::Obj(
                fields
                    .into_iter()
                    .filter(|(k, _)| !keys.contains(&k.as_str()))
                    .collect(),
            ),
            other => other,
        }
    }

    /// Moves `key` to the front, keeping the relative order of the others.
    pub fn key_first(self, key: &str) -> J {
        match self {
            J::Obj(mut fields) => {
                if let Some(pos) = fields.iter().position(|(k, _)| k == key) {
                    let field = fields.remove(pos);
                    fields.insert(0, field);
                }
                J::Obj(fields)
            }
            other => other,
        }
    }
}

impl Serialize for J {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            J::Null => s.serialize_unit(),
            J::Bool(b) => s.serialize_bool(*b),
            J::Int(i) => s.serialize_i64(*i),
            // JavaScript prints whole numbers without a fraction (`"total_cost_usd":0`), and a
            // parser that only accepts `0.0` for a float field is a bug the fake should expose.
            J::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => s.serialize_i64(*f as i64),
            J::Float(f) => s.serialize_f64(*f),
            J::Str(text) => s.serialize_str(text),
            J::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            J::Obj(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl From<&str> for J {
    fn from(v: &str) -> J {
        J::Str(v.to_string())
    }
}
impl From<String> for J {
    fn from(v: String) -> J {
        J::Str(v)
    }
}
impl From<&String> for J {
    fn from(v: &String) -> J {
        J::Str(v.clone())
    }
}
impl From<bool> for J {
    fn from(v: bool) -> J {
        J::Bool(v)
    }
}
impl From<i64> for J {
    fn from(v: i64) -> J {
        J::Int(v)
    }
}
impl From<i32> for J {
    fn from(v: i32) -> J {
        J::Int(i64::from(v))
    }
}
impl From<u32> for J {
    fn from(v: u32) -> J {
        J::Int(i64::from(v))
    }
}
impl From<u64> for J {
    fn from(v: u64) -> J {
        J::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<usize> for J {
    fn from(v: usize) -> J {
        J::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for J {
    fn from(v: f64) -> J {
        if v.is_finite() {
            J::Float(v)
        } else {
            J::Null
        }
    }
}
impl From<Vec<J>> for J {
    fn from(v: Vec<J>) -> J {
        J::Arr(v)
    }
}
impl From<Vec<String>> for J {
    fn from(v: Vec<String>) -> J {
        J::Arr(v.into_iter().map(J::Str).collect())
    }
}
impl<T: Into<J>> From<Option<T>> for J {
    fn from(v: Option<T>) -> J {
        v.map_or(J::Null, Into::into)
    }
}
impl From<&serde_json::Value> for J {
    fn from(v: &serde_json::Value) -> J {
        use serde_json::Value;
        match v {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => J::Int(i),
                None => J::from(n.as_f64().unwrap_or(0.0)),
            },
            Value::String(s) => J::Str(s.clone()),
            Value::Array(items) => J::Arr(items.iter().map(J::from).collect()),
            Value::Object(map) => {
                J::Obj(map.iter().map(|(k, v)| (k.clone(), J::from(v))).collect())
            }
        }
    }
}
