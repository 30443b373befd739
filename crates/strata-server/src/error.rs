//! The errors of `strata serve`'s routes, and the one OpenAI error body
//! that both the server and the router (`router::RouterError`) answer with.
//!
//! The body is vLLM's (`ErrorResponse`): `{"error": {"message", "type",
//! "param", "code"}}`, where `type` names the error class as vLLM does
//! (`BadRequestError`, `NotFoundError`, `InternalServerError`, ...),
//! `param` the request field at fault when there is one, and `code` is the
//! HTTP status. OpenAI's SDKs pick their exception class from the status,
//! so the class names and the status always agree.
//!
//! Nothing internal reaches a client: each variant holds only what the
//! client may read. Where an error has a cause the client must not see (a
//! template engine's message, an engine's URL, a file path, an executor's
//! error), the detail is logged where the error is made and the client
//! gets a fixed message ([`ApiError::Internal`] takes a `&'static str` for
//! that reason).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use strata_core::sampling::SamplingError;
use strata_core::AdmissionError;

use crate::driver::SubmitError;

/// The `type` of an error body: vLLM's class names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// 400 and 413: the request is at fault.
    BadRequest,
    /// 401: no or a wrong API key.
    Authentication,
    /// 404: no such model.
    NotFound,
    /// 500: the server failed.
    InternalServer,
    /// 502: an upstream engine failed (the router).
    BadGateway,
    /// 503: try again later.
    ServiceUnavailable,
}

impl ErrorType {
    /// The type that goes with an error status (an engine's answer whose
    /// body says nothing usable).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => Self::Authentication,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::BAD_GATEWAY => Self::BadGateway,
            StatusCode::SERVICE_UNAVAILABLE => Self::ServiceUnavailable,
            s if s.is_client_error() => Self::BadRequest,
            _ => Self::InternalServer,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BadRequestError",
            Self::Authentication => "AuthenticationError",
            Self::NotFound => "NotFoundError",
            Self::InternalServer => "InternalServerError",
            Self::BadGateway => "BadGatewayError",
            Self::ServiceUnavailable => "ServiceUnavailableError",
        }
    }
}

/// The OpenAI error body, `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

/// What an error body says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, or `null`.
    pub param: Option<String>,
    /// The HTTP status.
    pub code: u16,
}

impl ErrorBody {
    pub fn new(
        status: StatusCode,
        kind: ErrorType,
        message: impl Into<String>,
        param: Option<&str>,
    ) -> Self {
        Self {
            error: ErrorInfo {
                message: message.into(),
                kind: kind.as_str().to_owned(),
                param: param.map(str::to_owned),
                code: status.as_u16(),
            },
        }
    }

    /// The response with this body and `status`.
    pub fn into_response(self, status: StatusCode) -> Response {
        (status, Json(self)).into_response()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is missing, malformed or out of range (400);
    /// `param` names the field when one is at fault.
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<&'static str> },
    /// The prompt leaves no room for a single completion token (400).
    #[error(
        "This model's maximum context length is {max_model_len} tokens, and the prompt's \
         {prompt_tokens} tokens leave no room for a completion"
    )]
    PromptTooLong { prompt_tokens: usize, max_model_len: usize },
    /// The prompt and the completion's budget together exceed the context
    /// length (400, `param`: `max_tokens`).
    #[error(
        "This model's maximum context length is {max_model_len} tokens, but {} were requested \
         ({prompt_tokens} in the prompt, {max_tokens} in the completion)",
        requested(.prompt_tokens, .max_tokens)
    )]
    ContextLengthExceeded { prompt_tokens: usize, max_tokens: u32, max_model_len: usize },
    /// The body is larger than the server reads (413).
    #[error("the request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The request names a model this server does not serve (404).
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// `/v1/*` without the server's API key (401).
    #[error("missing or invalid API key")]
    Unauthorized,
    /// The server has its limit of requests in flight (503).
    #[error("the server is at its limit of {limit} requests in flight; retry later")]
    Overloaded { limit: usize },
    /// The engine no longer takes requests (it is shutting down) (503).
    #[error("the engine is shutting down")]
    EngineUnavailable,
    /// The engine thread died (panicked) with the request in flight (500,
    /// vLLM's `EngineDeadError`). The panic is in the log; it reads the
    /// same for every request the engine held.
    #[error("the engine stopped before the request finished")]
    EngineDied,
    /// The server failed (500). The message is fixed text, so no detail can
    /// reach the client; whoever makes this error logs the detail.
    #[error("{0}")]
    Internal(&'static str),
}

/// Prompt plus completion tokens (for the message).
fn requested(prompt_tokens: &usize, max_tokens: &u32) -> u64 {
    *prompt_tokens as u64 + u64::from(*max_tokens)
}

impl ApiError {
    /// A bad request field.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest { message: message.into(), param: Some(param) }
    }

    /// A bad request that no single field is to blame for.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::InvalidRequest { message: message.into(), param: None }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. }
            | Self::PromptTooLong { .. }
            | Self::ContextLengthExceeded { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Overloaded { .. } | Self::EngineUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::EngineDied | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> ErrorType {
        match self {
            Self::InvalidRequest { .. }
            | Self::PromptTooLong { .. }
            | Self::ContextLengthExceeded { .. }
            | Self::PayloadTooLarge { .. } => ErrorType::BadRequest,
            Self::ModelNotFound(_) => ErrorType::NotFound,
            Self::Unauthorized => ErrorType::Authentication,
            Self::Overloaded { .. } | Self::EngineUnavailable => ErrorType::ServiceUnavailable,
            Self::EngineDied | Self::Internal(_) => ErrorType::InternalServer,
        }
    }

    /// The request field at fault, if one is.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRequest { param, .. } => *param,
            Self::ContextLengthExceeded { .. } => Some("max_tokens"),
            Self::ModelNotFound(_) => Some("model"),
            Self::PromptTooLong { .. }
            | Self::PayloadTooLarge { .. }
            | Self::Unauthorized
            | Self::Overloaded { .. }
            | Self::EngineUnavailable
            | Self::EngineDied
            | Self::Internal(_) => None,
        }
    }

    /// The body the client gets.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.status(), self.kind(), self.to_string(), self.param())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.body().into_response(self.status())
    }
}

/// A body the server would not read (too large, or cut off).
impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge { limit: crate::MAX_BODY_BYTES }
        } else {
            tracing::debug!("could not read a request body: {r}");
            Self::bad_request("could not read the request body")
        }
    }
}

/// Sampling parameters the engine refuses, named by their request field.
impl From<SamplingError> for ApiError {
    fn from(e: SamplingError) -> Self {
        let param = match &e {
            SamplingError::Temperature(_) => "temperature",
            SamplingError::TopP(_) => "top_p",
            SamplingError::MinP(_) => "min_p",
            SamplingError::Penalty { name, .. } => name,
            SamplingError::Logprobs(_) => "logprobs",
            SamplingError::MaxTokens(_) => "max_tokens",
            SamplingError::MinTokens { .. } => "min_tokens",
            SamplingError::RepetitionPenalty(_) => "repetition_penalty",
            SamplingError::LogitBias { .. } => "logit_bias",
            SamplingError::AllowedTokenIdsEmpty => "allowed_token_ids",
            SamplingError::BadWordEmpty { .. } => "bad_words",
            SamplingError::PromptLogprobs(_) => "prompt_logprobs",
        };
        Self::invalid(param, e.to_string())
    }
}

/// The engine's admission checks, as vLLM answers them: what the client
/// can fix is a 400 naming the field; a duplicate id is the server's own
/// fault (it makes the ids), a 500.
impl From<AdmissionError> for ApiError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::EmptyPrompt => Self::invalid("prompt", "the prompt is empty"),
            AdmissionError::Sampling(s) => s.into(),
            AdmissionError::PromptTooLong { prompt, max_model_len } => {
                Self::PromptTooLong { prompt_tokens: prompt, max_model_len }
            }
            AdmissionError::ContextExceeded { prompt, max_tokens, max_model_len, .. } => {
                Self::ContextLengthExceeded { prompt_tokens: prompt, max_tokens, max_model_len }
            }
            e @ AdmissionError::NeverFits { .. } => Self::invalid("max_tokens", e.to_string()),
            e @ AdmissionError::TokenOutOfVocabulary { .. } => {
                Self::invalid("prompt", e.to_string())
            }
            ref e @ AdmissionError::ParamTokenOutOfVocabulary { field, .. } => {
                // The engine names its own field; the API's is `bad_words`.
                let param = if field == "bad_words_token_ids" { "bad_words" } else { field };
                Self::invalid(param, e.to_string())
            }
            e @ AdmissionError::DuplicateId(_) => {
                tracing::error!("the engine refused a request: {e}");
                Self::Internal("the server could not queue the request")
            }
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Admission(a) => a.into(),
            SubmitError::EngineStopped => Self::EngineUnavailable,
        }
    }
}
