//! Input records: one JSON Lines line or one Kafka value, decoded and validated.
//!
//! - A value whose first non-blank byte is `{` must be a JSON object with a string `"text"`;
//!   `"id"` (string or number) is optional and falls back to the source's id (line number, Kafka
//!   key or topic/partition/offset); optional `"modes": ["dense","sparse","colbert"]` and
//!   `"max_length": N` override the command's defaults for that record.
//! - Any other value is the text itself, with the fallback id.
//! - Bad records (invalid UTF-8, oversize, malformed JSON objects, an id over [`MAX_ID_BYTES`])
//!   yield the reason. An empty text is valid here (the reference embeds it); a node rejects it
//!   (see [`is_blank`]).
//! - An id is a string or a number; a number is keyed by its decimal text, so `7` and `"7"` name
//!   one document (Kafka keys and Redis keys are strings) and the newest of them wins.

use trident_core::{DocId, Modes};

/// Longest id accepted, in bytes: ids become Kafka keys and Redis keys and travel in every
/// output and dead letter, so a megabyte id would make each of those oversize.
pub const MAX_ID_BYTES: usize = 512;

/// Whether a text is empty or blank: a stream's record like that is a producer's mistake (or a
/// delete meant as a tombstone), so `trident node` dead-letters it instead of embedding nothing.
pub fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// A valid input document.
#[derive(Clone, Debug, PartialEq)]
pub struct InputDoc {
    pub id: DocId,
    pub text: String,
    pub modes: Option<Modes>,
    pub max_length: Option<usize>,
}

/// A bad record: the id if one could be read, and why it was rejected.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRecord {
    pub id: DocId,
    pub reason: String,
}

/// Decode one record. `max_bytes` bounds the raw size (the whole line or value).
pub fn decode_record(
    bytes: &[u8],
    fallback_id: DocId,
    max_bytes: usize,
) -> Result<InputDoc, BadRecord> {
    let bad = |id: DocId, reason: String| Err(BadRecord { id, reason });
    if bytes.len() > max_bytes {
        return bad(
            fallback_id,
            format!("record exceeds the limit of {max_bytes} bytes (max_record_bytes)"),
        );
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return bad(fallback_id, format!("invalid UTF-8 at byte {}", e.valid_up_to())),
    };
    if !text.trim_start().starts_with('{') {
        if fallback_id.as_key().len() > MAX_ID_BYTES {
            let len = fallback_id.as_key().len();
            return bad(
                fallback_id,
                format!("key is {len} bytes, over the id limit of {MAX_ID_BYTES}"),
            );
        }
        return Ok(InputDoc {
            id: fallback_id,
            text: text.to_string(),
            modes: None,
            max_length: None,
        });
    }
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return bad(fallback_id, format!("starts with '{{' but is not valid JSON: {e}")),
    };
    let serde_json::Value::Object(mut obj) = value else {
        return bad(fallback_id, "starts with '{' but is not a JSON object".into());
    };
    let id = match obj.remove("id") {
        None => fallback_id,
        Some(serde_json::Value::String(s)) => DocId::Str(s),
        Some(serde_json::Value::Number(n)) => DocId::Num(n),
        Some(other) => {
            return bad(
                fallback_id,
                format!("\"id\" must be a string or a number, not {}", kind(&other)),
            )
        }
    };
    let text = match obj.remove("text") {
        Some(serde_json::Value::String(s)) => s,
        None => return bad(id, "missing \"text\" (expected a string)".into()),
        Some(other) => return bad(id, format!("\"text\" must be a string, not {}", kind(&other))),
    };
    if id.as_key().len() > MAX_ID_BYTES {
        let len = id.as_key().len();
        return bad(id, format!("id is {len} bytes, over the limit of {MAX_ID_BYTES}"));
    }
    let modes = match obj.remove("modes") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(items)) => {
            let mut m = Modes::NONE;
            for item in &items {
                match item.as_str() {
                    Some("dense") => m.dense = true,
                    Some("sparse") => m.sparse = true,
                    Some("colbert") => m.colbert = true,
                    _ => return bad(id, format!("\"modes\" entries must be \"dense\", \"sparse\" or \"colbert\", got {item}")),
                }
            }
            if !m.any() {
                return bad(id, "\"modes\" is empty".into());
            }
            Some(m)
        }
        Some(other) => return bad(id, format!("\"modes\" must be an array, not {}", kind(&other))),
    };
    let max_length = match obj.remove("max_length") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64().filter(|&n| n >= 2) {
            Some(n) => Some(n as usize),
            None => return bad(id, format!("\"max_length\" must be an integer >= 2, got {v}")),
        },
    };
    Ok(InputDoc { id, text, modes, max_length })
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &[u8]) -> Result<InputDoc, BadRecord> {
        decode_record(s, DocId::from(9u64), 64)
    }

    #[test]
    fn plain_text_and_objects() {
        let d = dec(b"hello world").unwrap();
        assert_eq!((d.id, d.text.as_str()), (DocId::from(9u64), "hello world"));
        let d = dec(br#"{"id":"a","text":"x","modes":["dense"],"max_length":16}"#).unwrap();
        assert_eq!(d.id, DocId::from("a"));
        assert_eq!(d.modes, Some(Modes::from_flags(true, false, false)));
        assert_eq!(d.max_length, Some(16));
        assert_eq!(dec(br#"{"text":"x"}"#).unwrap().id, DocId::from(9u64));
        assert_eq!(dec(br#"{"id":3,"text":""}"#).unwrap().id, DocId::from(3u64));
    }

    #[test]
    fn bad_records_say_why() {
        let reason = |s: &[u8]| dec(s).unwrap_err().reason;
        assert!(reason(b"\xff\xfe").contains("invalid UTF-8"));
        assert!(reason(&[b'a'; 65]).contains("exceeds the limit"));
        assert!(reason(b"{not json").contains("not valid JSON"));
        assert!(reason(br#"{"id":1,"text":5}"#).contains("\"text\" must be a string"));
        assert!(reason(br#"{"id":1}"#).contains("missing \"text\""));
        assert!(reason(br#"{"id":true,"text":"x"}"#).contains("\"id\""));
        assert!(reason(br#"{"text":"x","modes":["dens"]}"#).contains("modes"));
        assert_eq!(dec(br#"{"id":"k","text":null}"#).unwrap_err().id, DocId::from("k"));
        assert!(is_blank(" \n") && !is_blank(" x"));
        let long_id = format!(r#"{{"id":"{}","text":"x"}}"#, "i".repeat(MAX_ID_BYTES + 1));
        let r = decode_record(long_id.as_bytes(), DocId::from(9u64), 1 << 20).unwrap_err();
        assert!(r.reason.contains("over the limit of 512"), "{}", r.reason);
        let r = decode_record(b"text", DocId::Str("k".repeat(600)), 1 << 20).unwrap_err();
        assert!(r.reason.contains("key is 600 bytes"), "{}", r.reason);
    }
}
