//! The admin router: its routes and the handlers behind the JSON ones.

use std::time::Instant;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::middleware::map_response;
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};

use super::json::{self, Cancelled, ErrorBody, FailureList, PeriodicList, StatsBody, TaskList};
use super::listing;
use super::page;
use super::query::TasksQuery;
use crate::{Background, CancelOutcome, TaskId};

impl Background {
    /// An axum [`Router`] with the admin endpoints and page of this
    /// `Background`: see the [`admin`](crate::admin) module for the routes,
    /// the JSON and how to mount it.
    ///
    /// **Mount it behind the application's own authentication:** it shows
    /// task names, request paths and counters, and it can cancel tasks. It
    /// has no authentication of its own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use axum::Router;
    /// use axum_background::Background;
    ///
    /// let background = Background::new();
    /// let app: Router = Router::new()
    ///     // .nest_service("/admin", background.admin_router().layer(your_auth_layer))
    ///     .nest_service("/admin", background.admin_router())
    ///     .layer(background.layer());
    /// # drop(app);
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
    pub fn admin_router(&self) -> Router {
        let router = Router::new()
            .route("/", get(page::index))
            .route("/tasks", get(tasks))
            .route("/stats", get(stats))
            .route("/periodic", get(periodic))
            .route("/failures", get(failures))
            .route("/tasks/{id}/cancel", post(cancel));
        // Served whether or not this `Background` has a store: without one,
        // `GET /jobs` is a 404 that says so (the page then hides its card).
        #[cfg(feature = "_durable")]
        let router = router
            .route("/jobs", get(super::jobs::list))
            .route("/jobs/{id}/cancel", post(super::jobs::cancel))
            .route("/jobs/{id}/retry", post(super::jobs::retry));
        router
            .layer(map_response(admin_headers))
            .with_state(self.clone())
    }
}

/// Up to this many tasks in flight, `GET /tasks` reads them on the runtime
/// worker that serves it; past it, on the blocking pool: the pass costs
/// about 0.2 µs a task (20 ms for 100,000, in a release build), too long to
/// hold a worker that other requests and tasks share.
const INLINE_UP_TO: usize = 10_000;

/// `GET /tasks`: the tasks in flight grouped with counts, and one page of
/// them (see the module docs for the query).
///
/// One pass over the registry, holding a page's worth of tasks: its cost
/// grows with the tasks in flight, its answer does not.
async fn tasks(State(background): State<Background>, RawQuery(raw): RawQuery) -> Response {
    let query = match TasksQuery::parse(raw.as_deref()) {
        Ok(query) => query,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let listing = if background.shared.registry.len() <= INLINE_UP_TO {
        listing::list(&background.shared.registry, &query)
    } else {
        let query = query.clone();
        let read = move || listing::list(&background.shared.registry, &query);
        match tokio::task::spawn_blocking(read).await {
            Ok(listing) => listing,
            Err(join_error) => {
                tracing::error!(error = %join_error, "admin router: could not list the tasks");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not list the tasks".into(),
                );
            }
        }
    };
    json::response(
        StatusCode::OK,
        &TaskList::new(&listing, query.limit, Instant::now()),
    )
}

/// `GET /periodic`: the periodic tasks, with their next run and their last.
async fn periodic(State(background): State<Background>) -> Response {
    let infos = background.periodic_tasks();
    json::response(StatusCode::OK, &PeriodicList::new(&infos, Instant::now()))
}

/// `GET /failures`: the recent failures, newest first.
async fn failures(State(background): State<Background>) -> Response {
    let failures = background.recent_failures();
    json::response(
        StatusCode::OK,
        &FailureList::new(&failures, std::time::SystemTime::now()),
    )
}

/// `GET /stats`: the counters.
async fn stats(State(background): State<Background>) -> Response {
    json::response(StatusCode::OK, &StatsBody::from(background.stats()))
}

/// `POST /tasks/{id}/cancel`.
async fn cancel(
    State(background): State<Background>,
    raw: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let id = match admitted_id(&headers, &uri, &raw, "task", "cancel") {
        Ok(id) => TaskId::from_u64(id),
        Err((status, message)) => return error(status, message),
    };
    match background.cancel(id) {
        CancelOutcome::Cancelled => json::response(
            StatusCode::OK,
            &Cancelled {
                id: id.as_u64(),
                outcome: "cancelled",
            },
        ),
        CancelOutcome::AlreadyEnded => {
            error(StatusCode::CONFLICT, format!("task {id} has already ended"))
        }
        CancelOutcome::Unknown => error(StatusCode::NOT_FOUND, format!("no task with id {id}")),
    }
}

/// A task id as the URL gives it: decimal digits only, at least 1.
fn parse_id(raw: &str) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match raw.parse::<u64>() {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// The id of a `POST /{what}s/{id}/{verb}`, once the request is known to come
/// from the page's own origin; else why it is refused (`403` for a
/// cross-site request, `400` for an id that is not a positive integer at most
/// `i64::MAX`, the largest job id): its status and message.
pub(super) fn admitted_id(
    headers: &HeaderMap,
    uri: &Uri,
    raw: &Result<Path<String>, PathRejection>,
    what: &str,
    verb: &str,
) -> Result<u64, (StatusCode, String)> {
    if is_cross_site(headers, uri) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("cross-site request refused: {verb} from the admin page's own origin"),
        ));
    }
    // A segment that is not UTF-8 once percent-decoded is as malformed as "abc".
    let id = raw
        .as_ref()
        .ok()
        .and_then(|Path(raw)| parse_id(raw))
        .filter(|&id| i64::try_from(id).is_ok());
    id.ok_or_else(|| {
        let shown = match raw {
            Ok(Path(raw)) => format!("{raw:?}"),
            Err(_) => "(not UTF-8)".into(),
        };
        (
            StatusCode::BAD_REQUEST,
            format!(
                "invalid {what} id {shown}: {what} ids are positive integers, as in {what}s/42/{verb}"
            ),
        )
    })
}

pub(super) fn error(status: StatusCode, message: String) -> Response {
    json::response(status, &ErrorBody { error: message })
}

/// Whether a browser says this request comes from another site.
///
/// Browsers send `Sec-Fetch-Site` (and older ones at least `Origin` on a
/// cross-origin `POST`); other clients send neither, and pass.
pub(super) fn is_cross_site(headers: &HeaderMap, uri: &Uri) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()));
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, host)| host);
    match (origin_host, host) {
        (Some(origin_host), Some(host)) => !origin_host.eq_ignore_ascii_case(host),
        // `Origin: null` (a sandboxed or opaque origin), or nothing to compare.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// Headers every admin response carries: nothing is cached, nothing is
/// sniffed, the page is not framed and loads nothing from elsewhere.
async fn admin_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(page::CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_decimal_integers() {
        assert_eq!(parse_id("42"), Some(42));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1.5",
            "abc",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        let check = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            is_cross_site(&headers, &Uri::from_static("/tasks/1/cancel"))
        };
        assert!(!check(&[]), "curl and scripts send neither header");
        assert!(!check(&[("sec-fetch-site", "same-origin")]));
        assert!(!check(&[("sec-fetch-site", "none")]));
        assert!(check(&[("sec-fetch-site", "cross-site")]));
        assert!(check(&[("sec-fetch-site", "same-site")]));
        assert!(!check(&[
            ("origin", "http://localhost:3000"),
            ("host", "localhost:3000")
        ]));
        assert!(check(&[
            ("origin", "https://evil.example"),
            ("host", "localhost:3000")
        ]));
        assert!(check(&[("origin", "null"), ("host", "localhost:3000")]));
    }
}
