//! Positional parameters the way twisterd's json_spirit reads them: a wrong count answers the method's
//! usage text (-1), a wrong type answers "value is type X, expected Y" (-1).

use crate::error::RpcError;
use serde_json::{Map, Value};

pub struct Params<'a> {
    values: &'a [Value],
    usage: &'static str,
}

/// json_spirit's names for JSON types, as they appear in twisterd's error messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "real",
        Value::String(_) => "str",
        Value::Array(_) => "array",
        Value::Object(_) => "obj",
    }
}

fn expected(v: &Value, want: &str) -> RpcError {
    RpcError::misc(format!("value is type {}, expected {}", type_name(v), want))
}

impl<'a> Params<'a> {
    /// Checks the count against `min..=max` before anything is read, as twisterd does.
    pub fn new(
        values: &'a [Value],
        min: usize,
        max: usize,
        usage: &'static str,
    ) -> Result<Self, RpcError> {
        if values.len() < min || values.len() > max {
            return Err(RpcError::misc(usage));
        }
        Ok(Params { values, usage })
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn has(&self, i: usize) -> bool {
        i < self.values.len()
    }

    fn at(&self, i: usize) -> Result<&'a Value, RpcError> {
        self.values.get(i).ok_or_else(|| RpcError::misc(self.usage))
    }

    pub fn str(&self, i: usize) -> Result<&'a str, RpcError> {
        let v = self.at(i)?;
        v.as_str().ok_or_else(|| expected(v, "str"))
    }

    pub fn int(&self, i: usize) -> Result<i64, RpcError> {
        let v = self.at(i)?;
        v.as_i64().ok_or_else(|| expected(v, "int"))
    }

    pub fn bool(&self, i: usize) -> Result<bool, RpcError> {
        let v = self.at(i)?;
        v.as_bool().ok_or_else(|| expected(v, "bool"))
    }

    pub fn array(&self, i: usize) -> Result<&'a Vec<Value>, RpcError> {
        let v = self.at(i)?;
        v.as_array().ok_or_else(|| expected(v, "array"))
    }

    pub fn value(&self, i: usize) -> Result<&'a Value, RpcError> {
        self.at(i)
    }

    pub fn opt_int(&self, i: usize, default: i64) -> Result<i64, RpcError> {
        if self.has(i) {
            self.int(i)
        } else {
            Ok(default)
        }
    }

    pub fn opt_bool(&self, i: usize, default: bool) -> Result<bool, RpcError> {
        if self.has(i) {
            self.bool(i)
        } else {
            Ok(default)
        }
    }

    /// A list of user names: every element must be a string.
    pub fn str_list(&self, i: usize) -> Result<Vec<&'a str>, RpcError> {
        self.array(i)?
            .iter()
            .map(|v| v.as_str().ok_or_else(|| expected(v, "str")))
            .collect()
    }
}

/// `{"username", "since_id", "max_id"}` filters of getposts / getdirectmsgs. Elements that are not
/// objects or lack `username` are skipped, as twisterd does.
pub struct UserWindow {
    pub username: String,
    pub since_id: Option<i64>,
    pub max_id: Option<i64>,
}

pub fn user_windows(list: &[Value]) -> Result<Vec<UserWindow>, RpcError> {
    let mut out = Vec::new();
    for item in list {
        let Some(obj) = item.as_object() else {
            return Err(expected(item, "obj"));
        };
        let Some(name) = obj.get("username") else {
            continue;
        };
        let username = name
            .as_str()
            .ok_or_else(|| expected(name, "str"))?
            .to_string();
        out.push(UserWindow {
            username,
            since_id: opt_field_int(obj, "since_id")?,
            max_id: opt_field_int(obj, "max_id")?,
        });
    }
    Ok(out)
}

fn opt_field_int(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, RpcError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| expected(v, "int")),
    }
}

impl UserWindow {
    pub fn contains(&self, id: i64) -> bool {
        self.since_id.is_none_or(|s| id > s) && self.max_id.is_none_or(|m| id <= m)
    }
}
