//! The router's error type: the server's own errors for bad input, the
//! engines' errors passed on as they were, and gateway errors (502/503)
//! for what only a proxy can get wrong. Each variant names its
//! `strata:router_errors_total` kind, so counting cannot drift from the
//! answer given.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::metrics::{ErrorKind, Hop};
use crate::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The client's request, refused before any engine saw it; rendered
    /// exactly as `strata serve` renders it.
    #[error(transparent)]
    Client(#[from] ApiError),
    /// An engine's error answer, passed to the client with the engine's
    /// status and body (the engine knows best why it refused).
    #[error("{hop:?} engine answered {status}")]
    Upstream { hop: Hop, status: StatusCode, body: Value },
    /// An engine answered 2xx with something that is not an OpenAI body.
    #[error("the {} engine gave an unreadable answer: {message}", hop.as_str())]
    BadAnswer { hop: Hop, message: String },
    /// The prefill answer carries no `kv_transfer_params`: the engine is
    /// not a P/D prefill engine (no connector), so no decode can follow.
    #[error("the prefill engine {0} returned no kv_transfer_params (is it running with a P/D connector?)")]
    NoKvTransferParams(String),
    /// An engine could not be reached, or its connection broke.
    #[error("the {} engine {url} is unreachable: {message}", hop.as_str())]
    Unreachable { hop: Hop, url: String, message: String },
    /// No engine of a role could answer (`/v1/models`).
    #[error("{0}")]
    Unavailable(String),
}

impl RouterError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Client(ApiError::Unauthorized(_)) => ErrorKind::Unauthorized,
            Self::Client(_) => ErrorKind::BadRequest,
            Self::Upstream { hop: Hop::Prefill, .. }
            | Self::BadAnswer { hop: Hop::Prefill, .. } => ErrorKind::PrefillError,
            Self::Upstream { hop: Hop::Decode, .. } | Self::BadAnswer { hop: Hop::Decode, .. } => {
                ErrorKind::DecodeError
            }
            Self::NoKvTransferParams(_) => ErrorKind::NoKvTransferParams,
            Self::Unreachable { .. } | Self::Unavailable(_) => ErrorKind::UpstreamUnreachable,
        }
    }

    /// An engine's error answer. A body that is not JSON (a proxy's or a
    /// framework's plain-text page) is wrapped in an OpenAI error body with
    /// the same status, so clients always parse the same shape.
    pub fn upstream(hop: Hop, status: StatusCode, body: &[u8]) -> Self {
        let body = serde_json::from_slice::<Value>(body)
            .ok()
            .filter(|v| v.get("error").is_some())
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                let message =
                    format!("the {} engine answered {status}: {}", hop.as_str(), text.trim());
                openai_error(status, "UpstreamError", &message)
            });
        Self::Upstream { hop, status, body }
    }
}

fn openai_error(status: StatusCode, kind: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}})
}

impl IntoResponse for RouterError {
    fn into_response(self) -> Response {
        let (status, kind) = match self {
            Self::Client(e) => return e.into_response(),
            Self::Upstream { status, body, .. } => return (status, Json(body)).into_response(),
            Self::BadAnswer { .. } | Self::NoKvTransferParams(_) | Self::Unreachable { .. } => {
                (StatusCode::BAD_GATEWAY, "BadGatewayError")
            }
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableError"),
        };
        (status, Json(openai_error(status, kind, &self.to_string()))).into_response()
    }
}
