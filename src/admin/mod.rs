//! An admin router: the tasks in flight, the counters and a cancel button, as
//! JSON and as a live HTML page.
//!
//! [`Background::admin_router`](crate::Background::admin_router) returns an
//! axum [`Router`](axum::Router) to mount where the application chooses,
//! usually with [`Router::nest_service`](axum::Router::nest_service):
//!
//! | route | answers |
//! |---|---|
//! | `GET /` | the page: counters, a chart of completions and failures per second over the last minute, the tasks in flight grouped by phase and mode, a cancel button per task; it refreshes itself every second |
//! | `GET /tasks` | `{"tasks": [..]}`: a snapshot of the tasks in flight, by id |
//! | `GET /stats` | the [`Stats`](crate::Stats) counters, and `in_flight` |
//! | `GET /periodic` | `{"periodic": [..]}`: each periodic task with its schedule, the time to its next run, its last run, and whether it is durable |
//! | `GET /failures` | `{"failures": [..]}`: the recent failures, newest first (name, request, attempts, kind, error text, when; see [`BackgroundBuilder::recent_failures`](crate::BackgroundBuilder::recent_failures)) |
//! | `POST /tasks/{id}/cancel` | [`Background::cancel`](crate::Background::cancel): `200` cancelled, `404` unknown id, `409` already ended, `400` malformed id, `403` sent by a browser from another site (see Security) |
//!
//! # Security
//!
//! **Mount it behind the application's own authentication.** It shows
//! internals (task names, request paths, counters) and it can cancel work.
//! The router has no authentication of its own; put it under a layer that
//! has, as below.
//!
//! What it does do: every response is `Cache-Control: no-store`; the page
//! may not be framed and may load nothing from elsewhere (a
//! `Content-Security-Policy` that allows its own inline script and requests
//! to its own origin only); the page inserts task names and paths as text,
//! never as HTML; the JSON escapes `<`, `>` and `&` as `\u003c`, `\u003e`
//! and `\u0026`, so it is inert even if pasted into HTML; and a cancel sent
//! by a browser from another site (`Sec-Fetch-Site` other than
//! `same-origin`, or an `Origin` that is not the request's host) is refused
//! with `403`, so a cookie session cannot be used from a page elsewhere.
//! Clients that are not browsers (curl, scripts) send neither header and are
//! not affected.
//!
//! # Mounting
//!
//! The page's URLs are relative to its own path, so the router works under
//! any prefix. Mount it with [`Router::nest_service`](axum::Router::nest_service):
//! then both `/admin` and `/admin/` reach the page. ([`Router::nest`](axum::Router::nest)
//! works too, but in axum 0.8 it routes the nested root at `/admin` only, and
//! `/admin/` is a 404: tokio-rs/axum#2659.)
//!
//! ```
//! use axum::{
//!     Router,
//!     extract::Request,
//!     http::{StatusCode, header},
//!     middleware::{self, Next},
//!     response::Response,
//!     routing::get,
//! };
//! use axum_background::Background;
//!
//! /// The application's own check; here, a fixed bearer token.
//! async fn require_admin(request: Request, next: Next) -> Result<Response, StatusCode> {
//!     match request.headers().get(header::AUTHORIZATION) {
//!         Some(value) if value == "Bearer let-me-in" => Ok(next.run(request).await),
//!         _ => Err(StatusCode::UNAUTHORIZED),
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let background = Background::new();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .nest_service(
//!         "/admin",
//!         background
//!             .admin_router()
//!             .layer(middleware::from_fn(require_admin)),
//!     )
//!     .layer(background.layer());
//! # drop(app);
//! # }
//! ```
//!
//! # JSON
//!
//! `GET /tasks`:
//!
//! ```json
//! {"tasks": [{
//!   "id": 7, "name": "send_welcome", "phase": "after_response", "mode": "async",
//!   "shielded": false, "state": "running", "age_ms": 1520, "due_in_ms": null, "attempts": 1,
//!   "method": "POST", "path": "/register"
//! }]}
//! ```
//!
//! `state` is `"queued"` (waiting for its phase or a slot) or `"running"`;
//! `age_ms` counts from `schedule`; `due_in_ms` is the time left before a
//! delayed task falls due (`null` for other tasks and once it has started); `method` and `path` are `null` for a task
//! scheduled outside a request.
//!
//! `GET /stats`: the [`Stats`](crate::Stats) fields by name (`scheduled`,
//! `queued`, `running`, `completed`, `failed`, `panicked`, `timed_out`,
//! `cancelled`, `rejected`) and `in_flight`.
//!
//! `POST /tasks/{id}/cancel`: `{"id": 7, "outcome": "cancelled"}`; an error
//! is `{"error": "..."}` with its status.

mod json;
mod page;
mod routes;
