//! `GET /`: the admin page, one self-contained HTML file.

use axum::response::Html;

/// The page: markup, style and a small script, no external resource.
///
/// Its script takes the page's own path, with a `/` added if it has none, as
/// the base of `tasks`, `stats`, `jobs` and the rest: the page works under
/// any prefix, at `/admin` as at `/admin/`.
const PAGE: &str = include_str!("page.html");

/// The policy every admin response carries: the page runs its own inline
/// script and style, talks to its own origin, and nothing else.
pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
     img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`.
pub(super) async fn index() -> Html<&'static str> {
    Html(PAGE)
}
