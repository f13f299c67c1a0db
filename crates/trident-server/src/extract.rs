//! Reading a JSON request body under a size limit, with errors that name the field at fault
//! (`inputs[2]: invalid type: integer `5`, expected a string`).

use axum::body::Body;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Kind};

/// Reads at most `limit` bytes of `body` (413 past it) and parses them as `T`: malformed JSON is a
/// 400, a well-formed body with a wrong field a 422 naming the field.
pub async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    parse_json(&read_bytes(body, limit).await?)
}

/// The whole body, or 413 once it passes `limit` bytes.
pub async fn read_bytes(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(Kind::BadRequest, format!("cannot read request body: {e}"))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::new(
                Kind::PayloadTooLarge,
                format!(
                    "request body is larger than the limit of {limit} bytes (--max-body-bytes)"
                ),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Parses a JSON body; see `read_json`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            Kind::BadRequest,
            "request body is empty: expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_data() {
                let field = if path == "." { "body".to_string() } else { path };
                Err(ApiError::field(field, inner))
            } else {
                Err(ApiError::new(
                    Kind::BadRequest,
                    format!("request body is not valid JSON: {inner}"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        inputs: Vec<String>,
        max_length: Option<usize>,
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse_json::<Req>(br#"{"inputs": ["a", 5]}"#).unwrap_err();
        assert_eq!(e.kind, Kind::Validation);
        assert_eq!(e.field.as_deref(), Some("inputs[1]"));
        let e = parse_json::<Req>(br#"{"inputs": [], "max_length": "long"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("max_length"));
        let e = parse_json::<Req>(br#"{"inputs": [], "dense_vecs": true}"#).unwrap_err();
        assert!(e.message.contains("dense_vecs"), "{}", e.message);
        let e = parse_json::<Req>(br#"{"max_length": 3}"#).unwrap_err();
        assert!(e.message.contains("missing field `inputs`"), "{}", e.message);
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        assert_eq!(parse_json::<Req>(br#"{"inputs": ["#).unwrap_err().kind, Kind::BadRequest);
        assert_eq!(parse_json::<Req>(b"  ").unwrap_err().kind, Kind::BadRequest);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_413() {
        let body = Body::from(vec![b' '; 100]);
        assert_eq!(read_json::<Req>(body, 99).await.unwrap_err().kind, Kind::PayloadTooLarge);
        let ok = read_json::<Req>(Body::from(r#"{"inputs": ["x"]}"#), 99).await.unwrap();
        assert_eq!(ok.inputs, ["x"]);
    }
}
