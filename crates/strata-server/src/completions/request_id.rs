//! `X-Request-Id`, as vLLM honours it: when a request carries one, it is
//! the request's id. It names the response (`cmpl-ID`, `chatcmpl-ID`),
//! every log line of the handler (a span), the line that maps it to the
//! engine's request ids, and the accounting log's line; the response
//! carries the header back (vLLM does with `--enable-request-id-headers`;
//! here always when one was given, since echoing costs nothing).
//!
//! The id goes into logs and files, so only printable ASCII without
//! spaces, at most [`MAX_LEN`] bytes, is accepted (a UUID is 36).

use std::future::Future;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use strata_core::RequestId;
use tracing::Instrument;

use crate::error::ApiError;

pub const HEADER: &str = "x-request-id";
pub const MAX_LEN: usize = 256;

/// The request's `X-Request-Id`, if it has one; a 400 for one that is
/// empty, too long or not printable ASCII.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(HEADER) else { return Ok(None) };
    let bad = || {
        ApiError::bad_request(format!(
            "the {HEADER} header must be 1 to {MAX_LEN} printable ASCII characters without spaces"
        ))
    };
    let s = v.to_str().map_err(|_| bad())?;
    let ok = !s.is_empty() && s.len() <= MAX_LEN && s.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

/// The span a handler runs in: it names the request id when there is one.
pub fn span(id: Option<&str>) -> tracing::Span {
    match id {
        Some(id) => tracing::info_span!("request", x_request_id = id),
        None => tracing::Span::none(),
    }
}

/// Runs a handler with the request's id (in its span) and answers with
/// the id echoed; a bad header is a 400 before the body is read.
pub async fn handle<F, Fut>(headers: &HeaderMap, handler: F) -> Response
where
    F: FnOnce(Option<String>) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let id = match from_headers(headers) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let span = span(id.as_deref());
    let resp = handler(id.clone()).instrument(span).await.unwrap_or_else(|e| e.into_response());
    echo(resp, id.as_deref())
}

/// The response's `id`: `PREFIX-X-REQUEST-ID` as vLLM names it, or
/// `PREFIX-N` after the first engine request without one.
pub fn response_id(prefix: &str, id: Option<&str>, first: RequestId) -> String {
    match id {
        Some(id) => format!("{prefix}-{id}"),
        None => format!("{prefix}-{}", first.get()),
    }
}

/// `resp` with the request's id echoed in its headers.
pub fn echo(mut resp: Response, id: Option<&str>) -> Response {
    if let Some(v) = id.and_then(|id| HeaderValue::from_str(id).ok()) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_bytes(v).unwrap());
        h
    }

    #[test]
    fn a_printable_id_is_taken_and_anything_else_is_a_400() {
        assert_eq!(from_headers(&HeaderMap::new()).unwrap(), None);
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(from_headers(&headers(uuid.as_bytes())).unwrap().as_deref(), Some(uuid));
        for bad in [&b""[..], b"a b", b"caf\xc3\xa9", &[b'x'; MAX_LEN + 1]] {
            let err = from_headers(&headers(bad)).unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{bad:?}");
        }
    }
}
