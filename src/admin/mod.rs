//! An admin router: the tasks in flight, the counters and a cancel button,
//! and (with a durable store) the stored jobs with retry and cancel
//! buttons, as JSON and as a live HTML page.
//!
//! [`Background::admin_router`](crate::Background::admin_router) returns an
//! axum [`Router`](axum::Router) to mount where the application chooses,
//! usually with [`Router::nest_service`](axum::Router::nest_service):
//!
//! | route | answers |
//! |---|---|
//! | `GET /` | the page: counters, a chart of completions and failures per second over the last minute, the tasks in flight grouped by name, phase, mode and state with counts (click a group to list its tasks), one page of tasks, oldest first, with a cancel button each and older/newer controls; it refreshes itself every second |
//! | `GET /tasks` | the tasks in flight grouped by name, phase, mode and state with counts, and one page of tasks, oldest first (`?limit=`, `?after=`/`?before=`, `?name=`, `?phase=`, `?mode=`, `?state=`; see JSON) |
//! | `GET /stats` | the [`Stats`](crate::Stats) counters, and `in_flight` |
//! | `GET /periodic` | `{"periodic": [..]}`: each periodic task with its schedule, the time to its next run, its last run, and whether it is durable |
//! | `GET /failures` | `{"failures": [..]}`: the recent failures, newest first (name, request, attempts, kind, error text, when; see [`BackgroundBuilder::recent_failures`](crate::BackgroundBuilder::recent_failures)) |
//! | `POST /tasks/{id}/cancel` | [`Background::cancel`](crate::Background::cancel): `200` cancelled, `404` unknown id, `409` already ended, `400` malformed id, `403` sent by a browser from another site (see Security) |
//! | `GET /jobs` | with `durable-sqlite` or `durable-postgres`: the stored jobs of the durable store, counted by state (up to 1,000 each), and the newest 50 retrying and 50 discarded jobs with their errors (see JSON); `404` with an `error` when the `Background` has no store |
//! | `POST /jobs/{id}/cancel` | `DurableTasks::cancel`: `200` with the job as it is after the request (a finished job is left as it is), `404` unknown id or no store, `400` malformed id, `403` sent by a browser from another site |
//! | `POST /jobs/{id}/retry` | `DurableTasks::retry`: `200` with the job as it is after the request (a discarded or cancelled one is waiting again), `404` unknown id or no store, `400` malformed id, `403` sent by a browser from another site |
//!
//! # Security
//!
//! **Mount it behind the application's own authentication.** It shows
//! internals (task names, request paths, counters, stored jobs' errors) and
//! it can cancel work and run stored jobs again.
//! The router has no authentication of its own; put it under a layer that
//! has, as below.
//!
//! What it does do: every response is `Cache-Control: no-store`; the page
//! may not be framed and may load nothing from elsewhere (a
//! `Content-Security-Policy` that allows its own inline script and requests
//! to its own origin only); the page inserts task names and paths as text,
//! never as HTML; the JSON escapes `<`, `>` and `&` as `\u003c`, `\u003e`
//! and `\u0026`, so it is inert even if pasted into HTML; and a cancel or a
//! retry sent by a browser from another site (`Sec-Fetch-Site` other than
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
//! `GET /tasks` answers in the same size with 100 tasks in flight as with
//! 100,000: the tasks grouped with counts, and one page of tasks.
//!
//! ```json
//! {
//!   "in_flight": 100000,
//!   "groups": [
//!     {"name": "send_welcome", "phase": "after_response", "mode": "async",
//!      "state": "running", "count": 98000, "oldest_age_ms": 61520}
//!   ],
//!   "groups_omitted": 0, "tasks_in_omitted_groups": 0,
//!   "total": 100000, "older": 0, "limit": 50,
//!   "tasks": [{
//!     "id": 7, "name": "send_welcome", "phase": "after_response", "mode": "async",
//!     "shielded": false, "state": "running", "age_ms": 61520, "due_in_ms": null, "attempts": 1,
//!     "blocked_ms": null, "method": "POST", "path": "/register"
//!   }],
//!   "next_after": 412, "prev_before": null
//! }
//! ```
//!
//! - `blocked_ms`: the longest one of the task's polls held its worker
//!   thread, if it was seen blocking it (`null` otherwise; see
//!   [`BackgroundBuilder::detect_blocking`](crate::BackgroundBuilder::detect_blocking)).
//! - `groups`: the tasks in flight by `name`, `phase`, `mode` and `state`,
//!   each with its `count` and the age of its oldest task, the group holding
//!   the oldest task first. At most 100 are listed: the largest (the oldest
//!   first among equals; the oldest task of all still heads `tasks`);
//!   `groups_omitted` says how many more there are and
//!   `tasks_in_omitted_groups` how many tasks they hold. Groups count every
//!   task, whatever the filter.
//! - `tasks`: one page of the tasks that match the filter, oldest first (by
//!   id: ids are handed out in schedule order). `total` is how many match,
//!   `older` how many of those come before this page.
//! - Paging is by task id, not by position: `?after=<id>` lists the oldest
//!   tasks with a higher id (the next page: pass `next_after`), `?before=<id>`
//!   the newest tasks with a lower id (the previous page: pass `prev_before`;
//!   `before=18446744073709551615` is the newest page). Tasks come and go
//!   while a person pages, and an id keeps its place where a position would
//!   shift: when older tasks end, a page by position skips the tasks that
//!   slide onto the page already seen. `next_after` and `prev_before` are
//!   `null` when nothing lies that way.
//! - `?limit=` is the page's length: 50 unless given, from 1 to 500 (a value
//!   outside is clamped; the answer's `limit` says which was used).
//! - `?name=`, `?phase=` (`immediate`, `after_route`, `after_response`),
//!   `?mode=` (`async`, `sync`) and `?state=` (`queued`, `running`) keep the
//!   page to the tasks that match them all (the page's groups link to their
//!   tasks this way).
//! - An empty value is as if absent; other parameters are ignored. A value
//!   that is not one of these, `after` with `before`, or a parameter given
//!   twice is a `400` whose `error` says what is expected.
//!
//! Each task: `state` is `"queued"` (waiting for its phase or a slot) or
//! `"running"`; `age_ms` counts from `schedule`; `due_in_ms` is the time
//! left before a delayed task falls due (`null` for other tasks and once it
//! has started); `method` and `path` are `null` for a task scheduled outside
//! a request.
//!
//! Building the answer walks the tasks in flight once, counting each in its
//! group and keeping a page of them, whatever their number: about 20 ms
//! with 100,000 in flight (a release build, measured by the browser test),
//! done on the blocking pool past 10,000 so that no runtime worker is held.
//!
//! `GET /stats`: the [`Stats`](crate::Stats) fields by name (`scheduled`,
//! `queued`, `running`, `completed`, `failed`, `panicked`, `timed_out`,
//! `cancelled`, `rejected`) and `in_flight`.
//!
//! `POST /tasks/{id}/cancel`: `{"id": 7, "outcome": "cancelled"}`; an error
//! is `{"error": "..."}` with its status.
//!
//! `GET /jobs` (with a durable backend compiled, and a store):
//!
//! ```json
//! {
//!   "counts": {"waiting": 3, "scheduled": 1, "running": 2, "retrying": 1,
//!              "completed": 1000, "cancelled": 0, "discarded": 1},
//!   "capped": ["completed"],
//!   "retrying": [{
//!     "id": 812, "name": "send_invoice", "state": "retrying", "attempts": 2,
//!     "errors": [{"attempt": 1, "at_unix_ms": 1767225600000, "error": "smtp: 421 try later"},
//!                {"attempt": 2, "at_unix_ms": 1767225601000, "error": "smtp: 421 try later"}],
//!     "scheduled_at_unix_ms": 1767225632000, "finalized_at_unix_ms": null
//!   }],
//!   "discarded": [],
//!   "now_unix_ms": 1767225605000
//! }
//! ```
//!
//! - `counts`: the jobs of the store's queue by state. The store has no
//!   count query: each state is counted by listing it, up to **1,000**
//!   jobs. A state that reaches that is named in `capped`, and its count
//!   means "1,000 or more" (the page shows `1,000+`). One answer is seven
//!   indexed queries, run together, reading up to 7,000 rows: cheap for a
//!   queue of a few thousand jobs, not free past that.
//! - `retrying` and `discarded`: the newest 50 of each (by id), each with
//!   its most recent 3 errors, oldest first, each cut to 200 characters;
//!   a refresh of the page stays small however many jobs fail.
//! - Times are milliseconds since the Unix epoch, on the server's clock
//!   (`now_unix_ms`): `scheduled_at_unix_ms` is when a retrying job runs
//!   next, `finalized_at_unix_ms` when a discarded one was given up.
//!
//! `POST /jobs/{id}/cancel` and `POST /jobs/{id}/retry` answer the job, in
//! the shape of one entry above. The page asks for `GET /jobs` with each
//! refresh while its first answer was a success; a `404` (no store, or no
//! durable backend compiled) hides its "Stored jobs" card.

#[cfg(feature = "_durable")]
mod jobs;
mod json;
mod listing;
mod page;
mod query;
mod routes;
