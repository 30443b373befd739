//! One error type for every route, rendered as an OpenAI-style body with
//! the matching HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequestError",
            Self::NotFound(_) => "NotFoundError",
            Self::PayloadTooLarge(_) => "BadRequestError",
            Self::Unauthorized(_) => "AuthenticationError",
            Self::Overloaded(_) => "ServiceUnavailableError",
            Self::Internal(_) => "InternalServerError",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({"error": {
            "message": self.to_string(),
            "type": self.kind(),
            "param": null,
            "code": status.as_u16(),
        }});
        (status, Json(body)).into_response()
    }
}

/// A body the server would not read (too large, or cut off).
impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge(format!(
                "the request body exceeds {} bytes",
                crate::MAX_BODY_BYTES
            ))
        } else {
            Self::BadRequest(format!("could not read the request body: {r}"))
        }
    }
}
