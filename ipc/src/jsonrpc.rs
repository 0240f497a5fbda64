//! JSON-RPC 2.0 on top of lines: decoding one line into requests (or the error to answer
//! with), typed params with the offending field named, and encoding of responses and
//! notifications.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::RpcError;

/// One request from a line. `id` is `None` for a notification (no response is sent).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub method: String,
    /// Always an object or an array; an absent `params` becomes `{}`.
    pub params: Value,
}

/// One element of a line: a request to run, or an invalid one to answer at once.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request(Request),
    Invalid { id: Value, error: RpcError },
}

/// What one line holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Single(Message),
    Batch(Vec<Message>),
    /// Not JSON at all, or an empty batch: answer with this error and `id: null`.
    Reject(RpcError),
}

/// Decodes one line (without its newline).
pub fn decode_line(bytes: &[u8]) -> Line {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return Line::Reject(RpcError::parse_error(format!("parse error: {e}"))),
    };
    match value {
        Value::Array(items) if items.is_empty() => {
            Line::Reject(RpcError::invalid_request("empty batch"))
        }
        Value::Array(items) => Line::Batch(items.into_iter().map(decode_message).collect()),
        other => Line::Single(decode_message(other)),
    }
}

fn decode_message(value: Value) -> Message {
    let Value::Object(mut obj) = value else {
        return invalid(Value::Null, "a request must be a JSON object");
    };
    // The id is echoed even when the rest is invalid, so the client can match the error.
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => return invalid(Value::Null, "id must be a string, a number or null"),
    };
    let echo = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(echo, "jsonrpc must be \"2.0\"");
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return invalid(echo, "method must be a string");
    };
    let params = match obj.remove("params") {
        None => Value::Object(Map::new()),
        Some(p @ (Value::Object(_) | Value::Array(_))) => p,
        Some(_) => return invalid(echo, "params must be an object or an array"),
    };
    Message::Request(Request { id, method, params })
}

fn invalid(id: Value, message: &str) -> Message {
    Message::Invalid { id, error: RpcError::invalid_request(message) }
}

/// Decodes params into `T`, answering `-32602` with `data.field` naming the field that is
/// missing or of the wrong type.
pub fn parse_params<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    if !params.is_object() {
        return Err(RpcError::invalid_params("", "params must be an object"));
    }
    serde_path_to_error::deserialize(params).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let message = e.inner().to_string();
        // serde reports a missing field at its parent; name the field itself.
        if let Some(name) =
            message.strip_prefix("missing field `").and_then(|r| r.split('`').next())
        {
            path = if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
        }
        RpcError::invalid_params(&path, format!("invalid params: {path}: {message}"))
    })
}

/// A success response.
pub fn response_ok(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response.
pub fn response_err(id: Value, error: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// A notification (method `event` for events).
pub fn notification(method: &str, params: impl Serialize) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// The fuzz target's body: decoding any bytes as a line never panics, and whatever a line
/// decodes to can be answered.
pub fn fuzz_decode(data: &[u8]) {
    let mut framer = crate::framing::LineFramer::new(crate::MAX_LINE);
    let mut frames = Vec::new();
    framer.push(data, &mut frames);
    framer.push(b"\n", &mut frames);
    for frame in frames {
        if let crate::framing::Frame::Line(line) = frame {
            match decode_line(&line) {
                Line::Single(Message::Request(r)) => {
                    let _ = parse_params::<crate::types::SubscribeParams>(r.params);
                }
                Line::Batch(items) => {
                    for m in items {
                        if let Message::Request(r) = m {
                            let _ = parse_params::<crate::types::SettingsPatch>(r.params);
                        }
                    }
                }
                Line::Single(Message::Invalid { .. }) | Line::Reject(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use serde::Deserialize;

    fn single(s: &str) -> Message {
        match decode_line(s.as_bytes()) {
            Line::Single(m) => m,
            other => panic!("not single: {other:?}"),
        }
    }

    #[test]
    fn good_request_and_notification() {
        let m = single(r#"{"jsonrpc":"2.0","id":7,"method":"a.b","params":{"x":1}}"#);
        assert_eq!(
            m,
            Message::Request(Request {
                id: Some(json!(7)),
                method: "a.b".into(),
                params: json!({"x": 1})
            })
        );
        let Message::Request(n) = single(r#"{"jsonrpc":"2.0","method":"a.b"}"#) else { panic!() };
        assert_eq!(n.id, None);
        assert_eq!(n.params, json!({}));
    }

    #[test]
    fn invalid_requests_keep_their_id() {
        for (line, id) in [
            (r#"{"jsonrpc":"1.0","id":"x","method":"a"}"#, json!("x")),
            (r#"{"jsonrpc":"2.0","id":3,"method":5}"#, json!(3)),
            (r#"{"jsonrpc":"2.0","id":3,"method":"a","params":"no"}"#, json!(3)),
            (r#"{"jsonrpc":"2.0","id":{},"method":"a"}"#, Value::Null),
            ("42", Value::Null),
        ] {
            match single(line) {
                Message::Invalid { id: got, error } => {
                    assert_eq!(got, id, "{line}");
                    assert_eq!(error.code, code::INVALID_REQUEST);
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn parse_errors_and_empty_batch() {
        assert!(matches!(decode_line(b"{nope"), Line::Reject(e) if e.code == code::PARSE_ERROR));
        assert!(matches!(decode_line(b"[]"), Line::Reject(e) if e.code == code::INVALID_REQUEST));
        assert!(
            matches!(decode_line(b"[1, {\"jsonrpc\":\"2.0\",\"method\":\"m\"}]"), Line::Batch(v) if v.len() == 2)
        );
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "fields exist to be decoded")]
    struct P {
        name: String,
        inner: Inner,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "fields exist to be decoded")]
    struct Inner {
        n: u32,
    }

    #[test]
    fn params_errors_name_the_field() {
        let e = parse_params::<P>(json!({"inner": {"n": 1}})).unwrap_err();
        assert_eq!((e.code, e.field()), (code::INVALID_PARAMS, Some("name")));
        let e = parse_params::<P>(json!({"name": 3, "inner": {"n": 1}})).unwrap_err();
        assert_eq!(e.field(), Some("name"));
        let e = parse_params::<P>(json!({"name": "a", "inner": {"n": "x"}})).unwrap_err();
        assert_eq!(e.field(), Some("inner.n"));
        let e = parse_params::<P>(json!({"name": "a", "inner": {}})).unwrap_err();
        assert_eq!(e.field(), Some("inner.n"));
        let e = parse_params::<P>(json!([1])).unwrap_err();
        assert_eq!(e.field(), Some(""));
        assert!(parse_params::<P>(json!({"name": "a", "inner": {"n": 1}, "extra": true})).is_ok());
    }
}
