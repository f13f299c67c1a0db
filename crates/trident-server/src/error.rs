//! API errors: one type for every failure a handler can report, rendered as a JSON body with the
//! matching HTTP status. Native endpoints answer `{"error": {"message", "type", "field"?}}`; the
//! OpenAI-compatible endpoint uses OpenAI's shape (`param` instead of `field`) so its clients
//! parse our errors.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Error kinds, each with its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 400: the request is well-formed JSON but asks for something we do not do, or is not JSON.
    BadRequest,
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 404: unknown route or absent document.
    NotFound,
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 413: body larger than the limit.
    PayloadTooLarge,
    /// 422: a field has the wrong type or an out-of-range value.
    Validation,
    /// 429: too many requests in flight.
    Overloaded,
    /// 500: the encoder or a backend failed.
    Internal,
    /// 503: the model is still loading, or a dependency (Redis) is not configured or down.
    Unavailable,
    /// 503: the request was not answered in time (as Go's `http.TimeoutHandler` answers).
    Timeout,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::Unavailable | Kind::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::BadRequest => "invalid_request_error",
            Kind::Unauthorized => "authentication_error",
            Kind::NotFound => "not_found_error",
            Kind::RequestTimeout => "request_timeout",
            Kind::PayloadTooLarge => "payload_too_large",
            Kind::Validation => "validation_error",
            Kind::Overloaded => "overloaded",
            Kind::Internal => "internal_error",
            Kind::Unavailable => "unavailable",
            Kind::Timeout => "timeout",
        }
    }
}

/// A failed request: what went wrong, and which field of the request is at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: Kind,
    pub message: String,
    /// Path of the offending field in the request body (`inputs[3]`), when there is one.
    pub field: Option<String>,
    /// Seconds after which a retry may succeed (sent as `Retry-After`).
    pub retry_after: Option<u64>,
    /// Render in OpenAI's error shape.
    pub openai: bool,
}

impl ApiError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into(), field: None, retry_after: None, openai: false }
    }

    /// A 422 naming the field at fault; the message is prefixed with the field.
    pub fn field(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let field = field.into();
        let message = format!("{field}: {message}");
        ApiError { field: Some(field), ..ApiError::new(Kind::Validation, message) }
    }

    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    pub fn openai(mut self) -> Self {
        self.openai = true;
        self
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(Kind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(Kind::Internal, message)
    }
}

#[derive(Serialize)]
struct Native<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

#[derive(Serialize)]
struct OpenAi<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<u16>,
}

impl ApiError {
    /// The JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        let kind = self.kind.name();
        let field = self.field.as_deref();
        let inner = if self.openai {
            serde_json::to_value(OpenAi {
                message: &self.message,
                kind,
                param: field,
                code: Some(self.kind.status().as_u16()),
            })
        } else {
            serde_json::to_value(Native { message: &self.message, kind, field })
        };
        serde_json::json!({ "error": inner.expect("error serialises") })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.kind.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.kind == Kind::RequestTimeout {
            // The rest of the body may still be on its way: this connection cannot carry another
            // request.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.kind == Kind::Unauthorized {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_name_the_field_in_both_shapes() {
        let e = ApiError::field("inputs[2]", "expected a string");
        assert_eq!(e.kind.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let b = e.body();
        assert_eq!(b["error"]["field"], "inputs[2]");
        assert_eq!(b["error"]["message"], "inputs[2]: expected a string");
        let o = ApiError::field("dimensions", "not supported")
            .with_kind(Kind::BadRequest)
            .openai()
            .body();
        assert_eq!(o["error"]["param"], "dimensions");
        assert_eq!(o["error"]["code"], 400);
        assert_eq!(o["error"]["type"], "invalid_request_error");
    }
}
