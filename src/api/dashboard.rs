//! The dashboard at `/`: one HTML page, a stylesheet and a script, embedded in the binary.
//!
//! The page holds no data and needs no token to load; the script asks for a token in a login
//! form, keeps it in `sessionStorage` and reads everything from the authenticated `/api/*`
//! endpoints. There is no build step and nothing comes from a CDN, so the dashboard works
//! offline. A strict Content-Security-Policy allows only these same-origin files.
//!
//! Assets are referenced as `/assets/NAME?v=HASH`, where `HASH` is computed from the embedded
//! bytes at compile time: assets can be cached for long, and a new binary's page asks for new
//! URLs. The page itself is `no-cache`.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::http_error::{self, ApiError};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_CSS: &str = include_str!("dashboard/app.css");
const APP_JS: &str = include_str!("dashboard/app.js");
const PANELS_JS: &str = include_str!("dashboard/panels.js");

/// Replaced in `index.html` by the assets' version.
const VERSION_MARK: &str = "__ASSET_VERSION__";

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

const PAGE_CACHE: &str = "no-cache";
const ASSET_CACHE: &str = "public, max-age=86400";

/// Only this origin's script, style and API; no frames, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// FNV-1a over the embedded assets, so the version changes whenever one of them does.
const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

const ASSET_HASH: u64 = fnv1a(
    fnv1a(
        fnv1a(0xcbf2_9ce4_8422_2325, APP_CSS.as_bytes()),
        APP_JS.as_bytes(),
    ),
    PANELS_JS.as_bytes(),
);

/// `GET /` and `GET /assets/{name}`, public, for merging into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
}

fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| INDEX_HTML.replace(VERSION_MARK, &format!("{ASSET_HASH:016x}")))
}

async fn index() -> Response {
    let mut res = respond(HTML, PAGE_CACHE, page());
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    match name.as_str() {
        "app.css" => Ok(respond(CSS, ASSET_CACHE, APP_CSS)),
        "app.js" => Ok(respond(JS, ASSET_CACHE, APP_JS)),
        "panels.js" => Ok(respond(JS, ASSET_CACHE, PANELS_JS)),
        _ => Err(http_error::not_found().await),
    }
}

fn respond(content_type: &'static str, cache: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn page_names_versioned_assets_and_no_inline_script() {
        let p = page();
        assert!(!p.contains(VERSION_MARK));
        let v = format!("?v={ASSET_HASH:016x}");
        assert!(p.contains(&format!("/assets/app.js{v}")), "{p}");
        assert!(p.contains(&format!("/assets/app.css{v}")), "{p}");
        // CSP allows no inline script or style; the page must not need any.
        assert!(!p.contains("<script>") && !p.contains("<style") && !p.contains("style="));
        assert!(!p.contains("onclick") && !p.contains("http://") && !p.contains("https://"));
        // The script never feeds API strings to the HTML parser.
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("outerHTML"));
        assert!(!APP_JS.contains("insertAdjacentHTML") && !APP_JS.contains("document.write"));
    }
}
