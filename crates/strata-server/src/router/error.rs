//! The router's error type: the server's own errors for bad input, the
//! engines' errors passed on as they were, and gateway errors (502/503)
//! for what only a proxy can get wrong. Each variant names its
//! `strata:router_errors_total` kind, so counting cannot drift from the
//! answer given.
//!
//! Every answer is the server's [`ErrorBody`]. A variant's `Display` is for
//! the router's log and may name an engine's URL and the connection or
//! parse error; the client's body never does ([`RouterError::body`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::metrics::{ErrorKind, Hop};
use crate::error::{ApiError, ErrorBody, ErrorType};

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The client's request, refused before any engine saw it; rendered
    /// exactly as `strata serve` renders it.
    #[error(transparent)]
    Client(#[from] ApiError),
    /// An engine's OpenAI error answer, passed to the client with the
    /// engine's status and body (the engine knows best why it refused).
    #[error("the {} engine answered {status}: {}", hop.as_str(), body.error.message)]
    Upstream { hop: Hop, status: StatusCode, body: ErrorBody },
    /// An engine answered 2xx with something that is not an OpenAI body.
    #[error("the {} engine {url} gave an unreadable answer: {detail}", hop.as_str())]
    BadAnswer { hop: Hop, url: String, detail: String },
    /// The prefill answer carries no `kv_transfer_params`: the engine is
    /// not a P/D prefill engine (no connector), so no decode can follow.
    #[error("the prefill engine {url} returned no kv_transfer_params (is it running with a P/D connector?)")]
    NoKvTransferParams { url: String },
    /// An engine could not be reached, or its connection broke.
    #[error("the {} engine {url} is unreachable: {detail}", hop.as_str())]
    Unreachable { hop: Hop, url: String, detail: String },
    /// No engine of a role could answer (`/v1/models`).
    #[error("{0}")]
    Unavailable(&'static str),
}

impl RouterError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Client(ApiError::Unauthorized) => ErrorKind::Unauthorized,
            Self::Client(_) => ErrorKind::BadRequest,
            Self::Upstream { hop: Hop::Prefill, .. }
            | Self::BadAnswer { hop: Hop::Prefill, .. } => ErrorKind::PrefillError,
            Self::Upstream { hop: Hop::Decode, .. } | Self::BadAnswer { hop: Hop::Decode, .. } => {
                ErrorKind::DecodeError
            }
            Self::NoKvTransferParams { .. } => ErrorKind::NoKvTransferParams,
            Self::Unreachable { .. } | Self::Unavailable(_) => ErrorKind::UpstreamUnreachable,
        }
    }

    /// An engine's error answer. A body that is not an OpenAI error body (a
    /// proxy's or a framework's page) is replaced by one with the same
    /// status that says only which engine answered what status, so clients
    /// always parse the same shape and never read a page meant for no one.
    pub fn upstream(hop: Hop, status: StatusCode, body: &[u8]) -> Self {
        let body = serde_json::from_slice::<ErrorBody>(body).unwrap_or_else(|_| {
            tracing::warn!(
                hop = hop.as_str(),
                %status,
                "the engine's error answer is not an OpenAI error body: {}",
                String::from_utf8_lossy(body).trim()
            );
            let message = format!("the {} engine answered {status}", hop.as_str());
            ErrorBody::new(status, ErrorType::for_status(status), message, None)
        });
        Self::Upstream { hop, status, body }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Client(e) => e.status(),
            Self::Upstream { status, .. } => *status,
            Self::BadAnswer { .. } | Self::NoKvTransferParams { .. } | Self::Unreachable { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The body the client gets: no engine URL, no connection or parse
    /// error (those are in `Display`, for the log).
    pub fn body(&self) -> ErrorBody {
        let gateway = |message: String| {
            ErrorBody::new(StatusCode::BAD_GATEWAY, ErrorType::BadGateway, message, None)
        };
        match self {
            Self::Client(e) => e.body(),
            Self::Upstream { body, .. } => body.clone(),
            Self::BadAnswer { hop, .. } => {
                gateway(format!("the upstream {} engine gave an unreadable answer", hop.as_str()))
            }
            Self::NoKvTransferParams { .. } => gateway(
                "the upstream prefill engine returned no kv_transfer_params \
                 (is it running with a P/D connector?)"
                    .to_owned(),
            ),
            Self::Unreachable { hop, .. } => {
                gateway(format!("upstream {} engine unavailable", hop.as_str()))
            }
            Self::Unavailable(message) => ErrorBody::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorType::ServiceUnavailable,
                *message,
                None,
            ),
        }
    }

    /// Whether the router itself failed the request (a gateway error), as
    /// opposed to the client or an engine refusing it.
    pub fn is_gateway(&self) -> bool {
        !matches!(self, Self::Client(_) | Self::Upstream { .. })
    }
}

impl IntoResponse for RouterError {
    fn into_response(self) -> Response {
        self.body().into_response(self.status())
    }
}
