//! The QMP wire format: one JSON object per line in each direction.
//!
//! [`decode_line`] is the only place that interprets bytes from QEMU. It is
//! deliberately shape-based rather than schema-based: a message is classified
//! by which top-level key it carries (`QMP`, `return`, `error`, `event`), and
//! every other key or value is carried through untouched, so a newer QEMU's
//! events, fields or enum values can never make decoding fail.

use serde_json::{Map, Value};

/// Longest line accepted from QEMU, in bytes (without the line ending).
///
/// The largest reply machina asks for (`query-pci` of a big guest) is tens of
/// KiB; 1 MiB leaves ample room while bounding memory against a hostile peer.
pub const MAX_LINE: usize = 1 << 20;

/// The QEMU version announced in the greeting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QemuVersion {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Micro version.
    pub micro: u64,
    /// Distribution package string, e.g. `Debian 1:7.2+dfsg-7+deb12u7`.
    pub package: String,
}

/// The greeting QEMU sends when a client connects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Greeting {
    /// The QEMU version.
    pub qemu: QemuVersion,
    /// Capabilities QEMU offers (e.g. `oob`).
    pub capabilities: Vec<String>,
}

/// An asynchronous event from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name, e.g. `STOP`, `RESUME`, `SHUTDOWN`.
    pub name: String,
    /// The event's `data` member, if any, as received.
    pub data: Option<Value>,
    /// The event's timestamp as (seconds, microseconds), if present and
    /// well-formed.
    pub timestamp: Option<(u64, u64)>,
}

/// One decoded line from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting (`{"QMP": …}`).
    Greeting(Greeting),
    /// A successful reply (`{"return": …, "id": …}`).
    Return {
        /// The `id` the client sent, if QEMU echoed one.
        id: Option<Value>,
        /// The `return` member.
        value: Value,
    },
    /// A failed command (`{"error": {"class", "desc"}, "id": …}`).
    Error {
        /// The `id` the client sent, if QEMU echoed one.
        id: Option<Value>,
        /// The error class, e.g. `GenericError`.
        class: String,
        /// The human-readable description.
        desc: String,
    },
    /// An asynchronous event.
    Event(Event),
    /// A JSON object with none of the known keys; callers ignore it.
    Unknown,
}

/// Why a line could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The line is not valid JSON (or not UTF-8).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// The line is JSON but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A known key holds a value of the wrong type.
    #[error("malformed {0} message")]
    Malformed(&'static str),
    /// The line is longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
}

/// Decodes one line (without or with its `\n`/`\r\n` ending).
///
/// Never panics; everything it does not understand is either
/// [`Message::Unknown`] or a [`DecodeError`].
pub fn decode_line(line: &[u8]) -> Result<Message, DecodeError> {
    if line.len() > MAX_LINE + 2 {
        return Err(DecodeError::TooLong);
    }
    // serde_json bounds nesting depth (128), so a deep line cannot exhaust
    // the stack.
    let value: Value =
        serde_json::from_slice(line).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::NotObject);
    };
    if let Some(event) = obj.remove("event") {
        let Value::String(name) = event else {
            return Err(DecodeError::Malformed("event"));
        };
        let timestamp = obj.remove("timestamp").and_then(|t| {
            Some((
                t.get("seconds")?.as_u64()?,
                t.get("microseconds")?.as_u64()?,
            ))
        });
        return Ok(Message::Event(Event {
            name,
            data: obj.remove("data"),
            timestamp,
        }));
    }
    if let Some(value) = obj.remove("return") {
        return Ok(Message::Return {
            id: obj.remove("id"),
            value,
        });
    }
    if let Some(error) = obj.remove("error") {
        let Value::Object(error) = error else {
            return Err(DecodeError::Malformed("error"));
        };
        let field = |k: &str| error.get(k).and_then(Value::as_str).map(str::to_owned);
        let (class, desc) = match (field("class"), field("desc")) {
            (Some(c), Some(d)) => (c, d),
            (Some(c), None) => (c, "no description".to_owned()),
            (None, Some(d)) => ("UnknownError".to_owned(), d),
            (None, None) => (
                "UnknownError".to_owned(),
                "unspecified QMP error".to_owned(),
            ),
        };
        return Ok(Message::Error {
            id: obj.remove("id"),
            class,
            desc,
        });
    }
    if let Some(qmp) = obj.remove("QMP") {
        return decode_greeting(qmp).map(Message::Greeting);
    }
    Ok(Message::Unknown)
}

fn decode_greeting(qmp: Value) -> Result<Greeting, DecodeError> {
    let Value::Object(qmp) = qmp else {
        return Err(DecodeError::Malformed("greeting"));
    };
    let empty = Map::new();
    let version = qmp
        .get("version")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let qemu = version
        .get("qemu")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let num = |k: &str| qemu.get(k).and_then(Value::as_u64).unwrap_or(0);
    let capabilities = qmp
        .get("capabilities")
        .and_then(Value::as_array)
        .map(|caps| {
            caps.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(Greeting {
        qemu: QemuVersion {
            major: num("major"),
            minor: num("minor"),
            micro: num("micro"),
            package: version
                .get("package")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        },
        capabilities,
    })
}

/// Encodes a command as one compact line, ending in `\n`.
///
/// QEMU 7.2 reads QMP input one byte per system call (about 4 µs a byte), so
/// the request is kept as short as the protocol allows: no spaces,
/// `arguments` only when given, an `id` (a number) only when given.
/// Example: `{"execute":"query-status"}`.
pub fn encode_command(command: &str, arguments: Option<&Value>, id: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + command.len());
    out.extend_from_slice(b"{\"execute\":");
    // Serialising a &str or a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, command);
    if let Some(args) = arguments {
        out.extend_from_slice(b",\"arguments\":");
        let _ = serde_json::to_writer(&mut out, args);
    }
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.extend_from_slice(b"}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn greeting_from_qemu_7_2() {
        let line = br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}"#;
        let Message::Greeting(g) = decode_line(line).unwrap() else {
            panic!("not a greeting")
        };
        assert_eq!(
            g.qemu,
            QemuVersion {
                major: 7,
                minor: 2,
                micro: 0,
                package: "Debian 1:7.2+dfsg-7".into()
            }
        );
        assert_eq!(g.capabilities, vec!["oob".to_owned()]);
    }

    #[test]
    fn tricky_lines() {
        // Unknown event with unknown fields and a future timestamp layout.
        let m = decode_line(br#"{"event":"FUTURE_THING","data":{"x":[1,{"y":null}]},"timestamp":{"seconds":"soon"},"new":1}"#).unwrap();
        assert_eq!(
            m,
            Message::Event(Event {
                name: "FUTURE_THING".into(),
                data: Some(json!({"x":[1,{"y":null}]})),
                timestamp: None
            })
        );
        // CRLF endings as QEMU sends them, and a timestamp.
        let m = decode_line(
            b"{\"timestamp\": {\"seconds\": 5, \"microseconds\": 7}, \"event\": \"STOP\"}\r\n",
        )
        .unwrap();
        assert_eq!(
            m,
            Message::Event(Event {
                name: "STOP".into(),
                data: None,
                timestamp: Some((5, 7))
            })
        );
        // A null return is still a return.
        assert_eq!(
            decode_line(br#"{"return":null,"id":1}"#).unwrap(),
            Message::Return {
                id: Some(json!(1)),
                value: Value::Null
            }
        );
        // Error without desc, error that is not an object.
        assert_eq!(
            decode_line(br#"{"error":{"class":"GenericError"},"id":"x"}"#).unwrap(),
            Message::Error {
                id: Some(json!("x")),
                class: "GenericError".into(),
                desc: "no description".into()
            }
        );
        assert_eq!(
            decode_line(br#"{"error":"boom"}"#),
            Err(DecodeError::Malformed("error"))
        );
        assert_eq!(
            decode_line(br#"{"event":42}"#),
            Err(DecodeError::Malformed("event"))
        );
        // Greeting with nonsense inside still decodes, with defaults.
        assert!(matches!(
            decode_line(br#"{"QMP":{"version":7,"capabilities":[1,"oob"]}}"#),
            Ok(Message::Greeting(Greeting { ref capabilities, .. })) if capabilities == &["oob"]
        ));
        assert_eq!(
            decode_line(br#"{"QMP":[]}"#),
            Err(DecodeError::Malformed("greeting"))
        );
        // Non-objects, invalid UTF-8, truncated JSON, empty, deep nesting.
        assert_eq!(decode_line(b"[1,2]"), Err(DecodeError::NotObject));
        assert_eq!(decode_line(b"\"str\""), Err(DecodeError::NotObject));
        assert!(matches!(
            decode_line(b"{\"event\":\"\xff\"}"),
            Err(DecodeError::NotJson(_))
        ));
        assert!(matches!(
            decode_line(b"{\"return\":"),
            Err(DecodeError::NotJson(_))
        ));
        assert!(matches!(decode_line(b""), Err(DecodeError::NotJson(_))));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            decode_line(deep.as_bytes()),
            Err(DecodeError::NotJson(_))
        ));
        // Two objects on one line is garbage, not a partial success.
        assert!(matches!(
            decode_line(br#"{"return":{}}{"return":{}}"#),
            Err(DecodeError::NotJson(_))
        ));
        // Unknown shapes are ignored, not errors.
        assert_eq!(decode_line(br#"{"hello":1}"#).unwrap(), Message::Unknown);
        // Over-long input is refused before parsing.
        assert_eq!(
            decode_line(&vec![b' '; MAX_LINE + 3]),
            Err(DecodeError::TooLong)
        );
    }

    #[test]
    fn requests_are_compact() {
        assert_eq!(
            encode_command("query-status", None, None),
            b"{\"execute\":\"query-status\"}\n"
        );
        assert_eq!(
            encode_command("query-status", None, Some(3)),
            b"{\"execute\":\"query-status\",\"id\":3}\n"
        );
        assert_eq!(
            encode_command("x\"y", Some(&json!({"a":[1]})), Some(12)),
            b"{\"execute\":\"x\\\"y\",\"arguments\":{\"a\":[1]},\"id\":12}\n"
        );
    }
}
