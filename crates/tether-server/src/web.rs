//! Browser assets embedded in the binary (no build step, nothing to deploy beside it): the
//! `tether.js` client module, the dashboard, and the plain-WebSocket example page. The files
//! live in the repository's `web/` folder.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const TETHER_JS: &str = include_str!("../../../web/tether.js");
/// Imported by `tether.js` (`./tether-fallback.js`): sessions over plain HTTP.
const TETHER_FALLBACK_JS: &str = include_str!("../../../web/tether-fallback.js");
const DASHBOARD_HTML: &str = include_str!("../../../web/dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../../../web/dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../../web/dashboard/dashboard.css");
const PLAIN_HTML: &str = include_str!("../../../web/examples/plain.html");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
}

pub(crate) async fn tether_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", TETHER_JS)
}

pub(crate) async fn tether_fallback_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", TETHER_FALLBACK_JS)
}

pub(crate) fn dashboard_routes() -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", DASHBOARD_HTML) }))
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route("/dashboard.css", get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }))
        .route(
            "/examples/plain.html",
            get(|| async { asset("text/html; charset=utf-8", PLAIN_HTML) }),
        )
}
