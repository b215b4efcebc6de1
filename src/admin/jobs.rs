//! The durable store's jobs (with a durable backend compiled): `GET /jobs`,
//! `POST /jobs/{id}/cancel` and `POST /jobs/{id}/retry`.
//!
//! The engine has no count: each state is counted by listing it, newest
//! first, up to [`COUNT_CAP`] jobs (seven indexed queries, run together);
//! a state that reaches the cap is named in `capped`, its count then a
//! lower bound. The retrying and discarded jobs listed come from the same
//! queries (the newest [`LISTED`] of each).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::future::try_join_all;
use http::{HeaderMap, StatusCode, Uri};
use serde::Serialize;

use super::json;
use super::routes::{admitted_id, error};
use crate::Background;
use crate::durable::{DurableError, JobId, JobInfo, JobState};

/// The most jobs of one state that `GET /jobs` reads to count them.
const COUNT_CAP: u32 = 1_000;
/// The most retrying jobs, and the most discarded ones, listed.
const LISTED: usize = 50;
/// Of a job's errors, the most recent this many are listed.
const ERRORS_LISTED: usize = 3;
/// An error's text is cut to this many characters (and `…`).
const ERROR_CHARS: usize = 200;

/// Every state, in the order of `counts`.
const STATES: [JobState; 7] = [
    JobState::Waiting,
    JobState::Scheduled,
    JobState::Running,
    JobState::Retrying,
    JobState::Completed,
    JobState::Cancelled,
    JobState::Discarded,
];

fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Waiting => "waiting",
        JobState::Scheduled => "scheduled",
        JobState::Running => "running",
        JobState::Retrying => "retrying",
        JobState::Completed => "completed",
        JobState::Cancelled => "cancelled",
        JobState::Discarded => "discarded",
    }
}

/// `GET /jobs`.
#[derive(Serialize)]
struct JobsBody {
    /// By state, each counted up to [`COUNT_CAP`].
    counts: Counts,
    /// The states whose count reached the cap (a lower bound).
    capped: Vec<&'static str>,
    /// The newest retrying jobs, then the newest discarded ones.
    retrying: Vec<JobEntry>,
    discarded: Vec<JobEntry>,
    /// The server's clock, to compare the times with.
    now_unix_ms: u64,
}

#[derive(Serialize)]
struct Counts {
    waiting: usize,
    scheduled: usize,
    running: usize,
    retrying: usize,
    completed: usize,
    cancelled: usize,
    discarded: usize,
}

/// One job.
#[derive(Serialize)]
struct JobEntry {
    id: i64,
    name: String,
    state: &'static str,
    attempts: u32,
    /// The most recent [`ERRORS_LISTED`], oldest first, each cut to
    /// [`ERROR_CHARS`] characters.
    errors: Vec<ErrorEntry>,
    /// When it may run (next).
    scheduled_at_unix_ms: u64,
    /// When it finished; `None` (`null`) if it has not.
    finalized_at_unix_ms: Option<u64>,
}

#[derive(Serialize)]
struct ErrorEntry {
    attempt: u32,
    at_unix_ms: u64,
    error: String,
}

impl JobEntry {
    fn new(job: JobInfo) -> Self {
        let skip = job.errors.len().saturating_sub(ERRORS_LISTED);
        JobEntry {
            id: job.id.as_i64(),
            name: job.name,
            state: state_name(job.state),
            attempts: job.attempts,
            errors: job
                .errors
                .into_iter()
                .skip(skip)
                .map(|e| ErrorEntry {
                    attempt: e.attempt,
                    at_unix_ms: unix_ms(e.at),
                    error: cut(e.error),
                })
                .collect(),
            scheduled_at_unix_ms: unix_ms(job.scheduled_at),
            finalized_at_unix_ms: job.finalized_at.map(unix_ms),
        }
    }
}

/// `text`, at most [`ERROR_CHARS`] characters of it.
fn cut(text: String) -> String {
    super::json::shorten(text, ERROR_CHARS)
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A store error as an answer: `404` without a store or for an unknown
/// job, `500` (logged) when the store failed.
fn failed(failure: DurableError) -> Response {
    let status = match failure {
        DurableError::NotConfigured | DurableError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => {
            tracing::error!(error = %failure, "admin router: durable store request failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error(status, failure.to_string())
}

/// `GET /jobs`: the counts by state, and the retrying and discarded jobs.
pub(super) async fn list(State(background): State<Background>) -> Response {
    let durable = background.durable();
    let listed = match try_join_all(STATES.map(|state| durable.list(state, COUNT_CAP))).await {
        Ok(listed) => listed,
        Err(failure) => return failed(failure),
    };
    let mut capped = Vec::new();
    let mut counts = [0; STATES.len()];
    let mut retrying = Vec::new();
    let mut discarded = Vec::new();
    for ((state, jobs), count) in STATES.into_iter().zip(listed).zip(&mut counts) {
        *count = jobs.len();
        if jobs.len() >= COUNT_CAP as usize {
            capped.push(state_name(state));
        }
        let entries = || jobs.into_iter().take(LISTED).map(JobEntry::new).collect();
        match state {
            JobState::Retrying => retrying = entries(),
            JobState::Discarded => discarded = entries(),
            _ => {}
        }
    }
    let [
        waiting,
        scheduled,
        running,
        retrying_n,
        completed,
        cancelled,
        discarded_n,
    ] = counts;
    let body = JobsBody {
        counts: Counts {
            waiting,
            scheduled,
            running,
            retrying: retrying_n,
            completed,
            cancelled,
            discarded: discarded_n,
        },
        capped,
        retrying,
        discarded,
        now_unix_ms: unix_ms(SystemTime::now()),
    };
    json::response(StatusCode::OK, &body)
}

/// `POST /jobs/{id}/cancel`.
pub(super) async fn cancel(
    State(background): State<Background>,
    raw: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    act(background, Action::Cancel, raw, &uri, &headers).await
}

/// `POST /jobs/{id}/retry`.
pub(super) async fn retry(
    State(background): State<Background>,
    raw: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    act(background, Action::Retry, raw, &uri, &headers).await
}

#[derive(Clone, Copy)]
enum Action {
    Cancel,
    Retry,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Retry => "retry",
        }
    }
}

async fn act(
    background: Background,
    action: Action,
    raw: Result<Path<String>, PathRejection>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let id = match admitted_id(headers, uri, &raw, "job", action.as_str()) {
        // At most `i64::MAX`: checked.
        Ok(id) => JobId::from(i64::try_from(id).unwrap_or(i64::MAX)),
        Err((status, message)) => return error(status, message),
    };
    let durable = background.durable();
    let done = match action {
        Action::Cancel => durable.cancel(id).await,
        Action::Retry => durable.retry(id).await,
    };
    match done {
        Ok(job) => json::response(StatusCode::OK, &JobEntry::new(job)),
        Err(failure) => failed(failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_at_a_character() {
        assert_eq!(cut("short".into()), "short");
        let long = "é".repeat(ERROR_CHARS + 5);
        let shown = cut(long);
        assert_eq!(shown.chars().count(), ERROR_CHARS + 1);
        assert!(shown.ends_with('…'));
    }
}
