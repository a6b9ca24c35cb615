//! The canned answers every dialect shares: JSON, the empty "never delivered" answer, and the
//! fault bodies (not JSON, an HTML page, a huge or endless body).

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// What a dropped or hung request "returns": never delivered.
pub fn empty() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// 200 with a body that is not JSON.
pub fn malformed() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        "not json",
    )
        .into_response()
}

/// 200 with an HTML page, as a misconfigured proxy answers.
pub fn html() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>",
    )
        .into_response()
}

/// One chunk of a huge or endless body: the same 64 KiB of `x` each time, so the fake holds
/// almost nothing however much it sends.
const FILL_CHUNK: usize = 64 * 1024;

/// 200 `application/json` with `size` bytes (with `Content-Length`) of a reply whose JSON
/// never ends, or an endless chunked one when `size` is `None`, sent until the client
/// hangs up or the fake shuts down.
pub fn huge(prefix: &str, size: Option<u64>, shutdown: CancellationToken) -> Response {
    let fill = Bytes::from(vec![b'x'; FILL_CHUNK]);
    let head = Bytes::copy_from_slice(prefix.as_bytes());
    let mut left = size.map(|s| s.saturating_sub(head.len() as u64));
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
        futures::stream::poll_fn(move |_| {
            if shutdown.is_cancelled() {
                return std::task::Poll::Ready(None);
            }
            let next = match &mut left {
                Some(0) => None,
                Some(n) => {
                    let take = (*n).min(FILL_CHUNK as u64);
                    *n -= take;
                    Some(fill.slice(..take as usize))
                }
                None => Some(fill.clone()),
            };
            std::task::Poll::Ready(next.map(Ok))
        }),
    );
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response();
    if let Some(size) = size
        && let Ok(value) = header::HeaderValue::from_str(&size.max(prefix.len() as u64).to_string())
    {
        response.headers_mut().insert(header::CONTENT_LENGTH, value);
    }
    response
}
