//! The admin router's JSON: what each endpoint returns, and how it is written.

use std::io;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use super::listing::Listing;
use crate::periodic::PeriodicInfo;
use crate::{RecentFailure, Stats, TaskInfo};

/// `GET /tasks`: the groups, and one page of tasks.
#[derive(Serialize)]
pub(super) struct TaskList<'a> {
    /// Every task in flight.
    in_flight: usize,
    /// By name, phase, mode and state: the largest groups, listed the group
    /// with the oldest task first.
    groups: Vec<GroupEntry<'a>>,
    /// Groups past [`MAX_GROUPS`](super::listing::MAX_GROUPS), left out of
    /// `groups`, and the tasks in them.
    groups_omitted: usize,
    tasks_in_omitted_groups: usize,
    /// The tasks that match the query's filter.
    total: usize,
    /// Of those, how many come before this page.
    older: usize,
    /// The page's length as asked, once clamped.
    limit: usize,
    /// The page, oldest first.
    tasks: Vec<TaskEntry<'a>>,
    /// `after=` for the next page (newer tasks); `None` (`null`) on the last.
    next_after: Option<u64>,
    /// `before=` for the previous page (older tasks); `None` (`null`) on the first.
    prev_before: Option<u64>,
}

impl<'a> TaskList<'a> {
    pub(super) fn new(listing: &'a Listing, limit: usize, now: Instant) -> Self {
        TaskList {
            in_flight: listing.in_flight,
            groups: listing
                .groups
                .iter()
                .map(|group| GroupEntry {
                    name: &group.key.name,
                    phase: group.key.phase.as_str(),
                    mode: group.key.mode.as_str(),
                    state: state(group.key.running),
                    count: group.count,
                    oldest_age_ms: millis(now.saturating_duration_since(group.oldest)),
                })
                .collect(),
            groups_omitted: listing.groups_omitted,
            tasks_in_omitted_groups: listing.tasks_in_omitted_groups,
            total: listing.total,
            older: listing.older,
            limit,
            tasks: listing
                .tasks
                .iter()
                .map(|info| TaskEntry::new(info, now))
                .collect(),
            next_after: listing.next_after,
            prev_before: listing.prev_before,
        }
    }
}

/// One group of `GET /tasks`.
#[derive(Serialize)]
struct GroupEntry<'a> {
    name: &'a str,
    phase: &'static str,
    mode: &'static str,
    state: &'static str,
    count: usize,
    /// Milliseconds since the group's oldest task was scheduled.
    oldest_age_ms: u64,
}

/// `"queued"` until a task starts, then `"running"`.
fn state(running: bool) -> &'static str {
    if running { "running" } else { "queued" }
}

/// One task of `GET /tasks`.
#[derive(Serialize)]
struct TaskEntry<'a> {
    id: u64,
    name: &'a str,
    phase: &'static str,
    mode: &'static str,
    shielded: bool,
    /// `"queued"` until it starts, then `"running"`.
    state: &'static str,
    /// Milliseconds since `schedule`.
    age_ms: u64,
    /// For a delayed task not yet started: milliseconds until it falls due
    /// (0 once due); `None` (`null`) otherwise.
    due_in_ms: Option<u64>,
    attempts: u32,
    /// The longest one of its polls held its worker thread, in milliseconds,
    /// if it was seen blocking (see `BackgroundBuilder::detect_blocking`);
    /// `None` (`null`) otherwise.
    blocked_ms: Option<u64>,
    /// `None` (`null`) outside a request, as `path`.
    method: Option<&'a str>,
    path: Option<&'a str>,
}

impl<'a> TaskEntry<'a> {
    fn new(info: &'a TaskInfo, now: Instant) -> Self {
        let age = now.saturating_duration_since(info.scheduled_at);
        TaskEntry {
            id: info.id.as_u64(),
            name: &info.name,
            phase: info.phase.as_str(),
            mode: info.mode.as_str(),
            shielded: info.shielded,
            state: state(info.started_at.is_some()),
            age_ms: millis(age),
            due_in_ms: info
                .due_at
                .filter(|_| info.started_at.is_none())
                .map(|due| millis(due.saturating_duration_since(now))),
            attempts: info.attempts,
            blocked_ms: info
                .blocked
                .map(|held| u64::try_from(held.as_millis()).unwrap_or(u64::MAX)),
            method: info.method.as_ref().map(http::Method::as_str),
            path: info.path.as_deref(),
        }
    }
}

/// An error's text in a list is cut to this many characters (and `…`), so
/// that a refresh stays small whatever the errors say.
const ERROR_CHARS: usize = 200;

/// `text`, at most `chars` characters of it (and `…` if it was longer).
pub(super) fn shorten(text: String, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// Whole milliseconds, saturating.
fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `GET /stats`: every counter of [`Stats`], and `in_flight`.
#[derive(Serialize)]
pub(super) struct StatsBody {
    scheduled: u64,
    queued: u64,
    running: u64,
    completed: u64,
    failed: u64,
    panicked: u64,
    timed_out: u64,
    cancelled: u64,
    rejected: u64,
    in_flight: u64,
}

impl From<Stats> for StatsBody {
    fn from(stats: Stats) -> Self {
        // Every field named: a new counter is a compile error here.
        let Stats {
            scheduled,
            queued,
            running,
            completed,
            failed,
            panicked,
            timed_out,
            cancelled,
            rejected,
        } = stats;
        StatsBody {
            scheduled,
            queued,
            running,
            completed,
            failed,
            panicked,
            timed_out,
            cancelled,
            rejected,
            in_flight: stats.in_flight(),
        }
    }
}

/// `GET /periodic`.
#[derive(Serialize)]
pub(super) struct PeriodicList<'a> {
    periodic: Vec<PeriodicEntry<'a>>,
}

impl<'a> PeriodicList<'a> {
    pub(super) fn new(infos: &'a [PeriodicInfo], now: Instant) -> Self {
        PeriodicList {
            periodic: infos
                .iter()
                .map(|info| PeriodicEntry::new(info, now))
                .collect(),
        }
    }
}

/// One schedule of `GET /periodic`.
#[derive(Serialize)]
struct PeriodicEntry<'a> {
    name: &'a str,
    /// `every 300s`, or `cron 0 30 2 * * * (Europe/Paris)`.
    schedule: &'a str,
    /// Milliseconds until the next run; `None` (`null`) once stopped.
    next_run_in_ms: Option<u64>,
    /// The last run: `None` (`null`) before the first, and for a durable
    /// schedule (its runs are in the store).
    last_run: Option<LastRun>,
    /// Whether its runs are written to the durable store.
    durable: bool,
}

/// The last run of a schedule.
#[derive(Serialize)]
struct LastRun {
    id: u64,
    /// `"queued"`, `"running"`, or how it ended (`"completed"`, `"failed"`, ..).
    state: &'static str,
}

impl<'a> PeriodicEntry<'a> {
    fn new(info: &'a PeriodicInfo, now: Instant) -> Self {
        PeriodicEntry {
            name: &info.name,
            schedule: &info.schedule,
            next_run_in_ms: info
                .next_run
                .map(|next| millis(next.saturating_duration_since(now))),
            last_run: info.last_run.as_ref().map(|last| LastRun {
                id: last.id().as_u64(),
                state: match last.try_outcome() {
                    Some(Ok(())) => "completed",
                    Some(Err(error)) => error.kind(),
                    None if last.is_started() => "running",
                    None => "queued",
                },
            }),
            durable: info.durable,
        }
    }
}

/// `GET /failures`.
#[derive(Serialize)]
pub(super) struct FailureList<'a> {
    failures: Vec<FailureEntry<'a>>,
}

impl<'a> FailureList<'a> {
    pub(super) fn new(failures: &'a [RecentFailure], now: SystemTime) -> Self {
        FailureList {
            failures: failures
                .iter()
                .map(|failure| FailureEntry::new(failure, now))
                .collect(),
        }
    }
}

/// One failure of `GET /failures`.
#[derive(Serialize)]
struct FailureEntry<'a> {
    id: u64,
    name: &'a str,
    phase: &'static str,
    mode: &'static str,
    method: Option<&'a str>,
    path: Option<&'a str>,
    attempts: u32,
    /// `"failed"`, `"panicked"`, `"timed_out"` or `"rejected"`.
    kind: &'static str,
    /// The error's text.
    error: String,
    /// When it ended, in milliseconds since the Unix epoch.
    at_unix_ms: u64,
    /// How long ago it ended, in milliseconds.
    ago_ms: u64,
}

impl<'a> FailureEntry<'a> {
    fn new(failure: &'a RecentFailure, now: SystemTime) -> Self {
        let info = &failure.info;
        FailureEntry {
            id: info.id.as_u64(),
            name: &info.name,
            phase: info.phase.as_str(),
            mode: info.mode.as_str(),
            method: info.method.as_ref().map(http::Method::as_str),
            path: info.path.as_deref(),
            attempts: info.attempts,
            kind: failure.error.kind(),
            error: shorten(failure.error.to_string(), ERROR_CHARS),
            at_unix_ms: failure
                .at
                .duration_since(UNIX_EPOCH)
                .map(millis)
                .unwrap_or(0),
            ago_ms: now.duration_since(failure.at).map(millis).unwrap_or(0),
        }
    }
}

/// `POST /tasks/{id}/cancel` when it cancelled.
#[derive(Serialize)]
pub(super) struct Cancelled {
    pub(super) id: u64,
    pub(super) outcome: &'static str,
}

/// Any refusal: `{"error": "..."}`.
#[derive(Serialize)]
pub(super) struct ErrorBody {
    pub(super) error: String,
}

/// `value` as an `application/json` response with `status`.
pub(super) fn response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut body = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::with_formatter(&mut body, HtmlSafe);
    if let Err(error) = value.serialize(&mut serializer) {
        // Only a `Serialize` impl can fail here, and these are all derived.
        tracing::error!(%error, "admin router: could not write JSON");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// serde_json's compact output, with `<`, `>` and `&` in strings written as
/// `\u003c`, `\u003e` and `\u0026` (as Go's `encoding/json` does): the
/// same JSON to a parser, and no markup to anything that reads it as HTML.
struct HtmlSafe;

impl serde_json::ser::Formatter for HtmlSafe {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut rest = fragment;
        while let Some(at) = rest.find(['<', '>', '&']) {
            writer.write_all(&rest.as_bytes()[..at])?;
            writer.write_all(match rest.as_bytes()[at] {
                b'<' => b"\\u003c",
                b'>' => b"\\u003e",
                _ => b"\\u0026",
            })?;
            rest = &rest[at + 1..];
        }
        writer.write_all(rest.as_bytes())
    }
}
