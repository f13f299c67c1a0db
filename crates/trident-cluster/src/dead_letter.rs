//! Dead letters that always fit: the reason, the source coordinates, the id, and the original key
//! and value — each cut to a bound, with headers saying what was cut — so a dead letter is never
//! itself too large for the producer (a megabyte record or id is dead-lettered as a few KiB).
//!
//! Headers: `trident.reason`, `trident.source.topic`, `trident.source.partition`,
//! `trident.source.offset`, `trident.error` (`{"id": …, "error": …}`), `trident.value.bytes`
//! (the original value's length) and, when something was cut, `trident.truncated` (`value`,
//! `key` or `key,value`).

use trident_core::types::error_json;
use trident_core::DocId;

/// Longest key kept, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest reason, and longest id in the `trident.error` header, in characters' bytes.
const MAX_TEXT_BYTES: usize = 1024;

/// Where the record came from.
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// A dead letter ready to produce.
#[derive(Debug, PartialEq)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl DeadLetter {
    /// Bytes on the wire, roughly (key, value, header names and values).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Build the dead letter of a record. `max_value` bounds the copy of the original value.
pub fn build(
    src: &Source<'_>,
    id: &DocId,
    reason: &str,
    key: Option<&[u8]>,
    value: &[u8],
    max_value: usize,
) -> DeadLetter {
    let mut cut = Vec::new();
    let key = key.map(|k| {
        if k.len() > MAX_KEY_BYTES {
            cut.push("key");
        }
        k[..k.len().min(MAX_KEY_BYTES)].to_vec()
    });
    if value.len() > max_value {
        cut.push("value");
    }
    let short_id = match id {
        DocId::Str(s) if s.len() > MAX_TEXT_BYTES => {
            DocId::Str(format!("{}…", cut_str(s, MAX_TEXT_BYTES)))
        }
        other => other.clone(),
    };
    let reason = cut_str(reason, MAX_TEXT_BYTES);
    let mut headers = vec![
        ("trident.reason", reason.to_string()),
        ("trident.source.topic", src.topic.to_string()),
        ("trident.source.partition", src.partition.to_string()),
        ("trident.source.offset", src.offset.to_string()),
        ("trident.error", error_json(&short_id, reason)),
        ("trident.value.bytes", value.len().to_string()),
    ];
    if !cut.is_empty() {
        headers.push(("trident.truncated", cut.join(",")));
    }
    DeadLetter { key, value: value[..value.len().min(max_value)].to_vec(), headers }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Source<'static> = Source { topic: "in", partition: 3, offset: 77 };

    fn header<'a>(d: &'a DeadLetter, name: &str) -> Option<&'a str> {
        d.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn small_records_are_kept_whole() {
        let d = build(&SRC, &DocId::from("a"), "bad", Some(b"a"), b"{oops", 1000);
        assert_eq!((d.key.as_deref(), d.value.as_slice()), (Some(&b"a"[..]), &b"{oops"[..]));
        assert_eq!(header(&d, "trident.reason"), Some("bad"));
        assert_eq!(header(&d, "trident.source.offset"), Some("77"));
        assert_eq!(header(&d, "trident.truncated"), None);
        assert_eq!(header(&d, "trident.value.bytes"), Some("5"));
    }

    #[test]
    fn huge_ids_keys_and_values_are_cut_and_said_so() {
        let big_id = "é".repeat(300_000); // 600 KB
        let value = vec![b'x'; 1_100_000];
        let d = build(
            &SRC,
            &DocId::Str(big_id.clone()),
            &"r".repeat(5000),
            Some(big_id.as_bytes()),
            &value,
            65536,
        );
        assert!(d.size() < 80_000, "{} bytes", d.size());
        assert_eq!(d.value.len(), 65536);
        assert_eq!(d.key.as_ref().unwrap().len(), MAX_KEY_BYTES);
        assert_eq!(header(&d, "trident.truncated"), Some("key,value"));
        assert_eq!(header(&d, "trident.value.bytes"), Some("1100000"));
        let err: serde_json::Value =
            serde_json::from_str(header(&d, "trident.error").unwrap()).unwrap();
        assert!(err["id"].as_str().unwrap().len() <= MAX_TEXT_BYTES + 3);
        assert_eq!(header(&d, "trident.reason").unwrap().len(), MAX_TEXT_BYTES);
    }

    #[test]
    fn cuts_end_on_character_boundaries() {
        assert_eq!(cut_str("aé", 2), "a");
        assert_eq!(cut_str("abc", 9), "abc");
    }
}
