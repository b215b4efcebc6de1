//! The admin router over HTTP (`tower::ServiceExt::oneshot`): the JSON of
//! each endpoint, cancel's answers, escaping, and the page under a prefix.

mod util;

use std::collections::BTreeSet;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::routing::post;
use axum_background::{Background, Phase, TaskError, TaskHandle, Tasks};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use util::within;

/// An answer: status, headers, and the body as text.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = within("the response", app.clone().oneshot(request))
        .await
        .expect("infallible");
    let (parts, body) = response.into_parts();
    let body = within("the body", to_bytes(body, 1 << 20))
        .await
        .expect("body");
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
    }
}

async fn get(app: &Router, uri: &str) -> Answer {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn post_to(app: &Router, uri: &str) -> Answer {
    send(app, Request::post(uri).body(Body::empty()).unwrap()).await
}

/// The app of these tests: the admin router at `/admin`, the background layer.
fn app(background: &Background, routes: Router) -> Router {
    routes
        .nest_service("/admin", background.admin_router())
        .layer(background.layer())
}

/// A task that waits until `gate` is cancelled (by the test, at its end).
fn held(gate: &CancellationToken) -> impl Future<Output = ()> + Send + 'static {
    let gate = gate.clone();
    async move { gate.cancelled().await }
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

/// The keys of `GET /tasks`.
const LIST_KEYS: [&str; 10] = [
    "in_flight",
    "groups",
    "groups_omitted",
    "tasks_in_omitted_groups",
    "total",
    "older",
    "limit",
    "tasks",
    "next_after",
    "prev_before",
];

/// The ids of a page of `GET /tasks`, in order.
fn ids_of(list: &Value) -> Vec<u64> {
    list["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("tasks is an array: {list}"))
        .iter()
        .map(|task| task["id"].as_u64().expect("an id"))
        .collect()
}

/// Schedules `n` tasks named `name` that never end by themselves, and
/// waits until they have started.
async fn park(background: &Background, name: &str, n: usize) -> Vec<TaskHandle> {
    let handles: Vec<TaskHandle> = (0..n)
        .map(|_| {
            background
                .task()
                .name(name.to_owned())
                .build()
                .schedule(std::future::pending::<()>())
        })
        .collect();
    for handle in &handles {
        within("the task to start", handle.started()).await;
    }
    handles
}

fn id_list(handles: &[TaskHandle]) -> Vec<u64> {
    handles.iter().map(|handle| handle.id().as_u64()).collect()
}

fn task_with_id(tasks: &Value, handle: &TaskHandle) -> Value {
    let id = handle.id().as_u64();
    tasks["tasks"]
        .as_array()
        .expect("tasks is an array")
        .iter()
        .find(|task| task["id"] == id)
        .unwrap_or_else(|| panic!("task {id} not in {tasks}"))
        .clone()
}

#[tokio::test]
async fn tasks_lists_each_task_in_flight_with_its_state_and_request() {
    let test_started = Instant::now();
    let background = Background::builder().max_blocking(1).build();
    let gate = CancellationToken::new();
    let (release_sync, sync_waits) = std::sync::mpsc::channel::<()>();
    let sync_waits = std::sync::Arc::new(std::sync::Mutex::new(Some(sync_waits)));
    let (handles_tx, mut handles) = mpsc::unbounded_channel::<TaskHandle>();

    let handler_gate = gate.clone();
    let routes = Router::new().route(
        "/signup",
        post(move |tasks: Tasks| {
            let sync_waits = sync_waits.lock().unwrap().take().expect("called once");
            let scheduled = [
                tasks
                    .task()
                    .name("welcome")
                    .shield(true)
                    .build()
                    .schedule(held(&handler_gate)),
                tasks.task().name("thumbnail").build().schedule(move || {
                    let _ = sync_waits.recv();
                }),
                tasks
                    .task()
                    .name("second thumbnail")
                    .build()
                    .schedule(|| ()),
                tasks
                    .task()
                    .name("audit")
                    .phase(Phase::AfterResponse)
                    .build()
                    .schedule(held(&handler_gate)),
            ];
            for handle in scheduled {
                handles_tx.send(handle).unwrap();
            }
            async { StatusCode::CREATED }
        }),
    );
    let app = app(&background, routes);
    let nightly = background
        .task()
        .name("nightly")
        .build()
        .schedule(held(&gate));

    assert_eq!(post_to(&app, "/signup").await.status, StatusCode::CREATED);
    let mut next = async || within("a handle", handles.recv()).await.unwrap();
    let (welcome, thumbnail, second, audit) =
        (next().await, next().await, next().await, next().await);
    for handle in [&nightly, &welcome, &thumbnail, &audit] {
        within("the task to start", handle.started()).await;
    }

    let answer = get(&app, "/admin/tasks").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    let tasks = answer.json();
    assert_eq!(keys(&tasks), BTreeSet::from(LIST_KEYS));
    let ids = ids_of(&tasks);
    assert_eq!(ids.len(), 5, "{tasks}");
    assert!(ids.is_sorted(), "by id: {ids:?}");
    assert_eq!(
        (&tasks["in_flight"], &tasks["total"]),
        (&5.into(), &5.into())
    );

    let welcome_json = task_with_id(&tasks, &welcome);
    assert_eq!(
        keys(&welcome_json),
        BTreeSet::from([
            "id",
            "name",
            "phase",
            "mode",
            "shielded",
            "state",
            "age_ms",
            "due_in_ms",
            "attempts",
            "blocked_ms",
            "method",
            "path"
        ])
    );
    let expect = |handle: &TaskHandle, fields: Value| {
        let task = task_with_id(&tasks, handle);
        for (key, value) in fields.as_object().unwrap() {
            assert_eq!(&task[key], value, "{key} of {task}");
        }
        let age = task["age_ms"].as_u64().expect("age_ms is a number");
        assert!(age as u128 <= test_started.elapsed().as_millis(), "{task}");
    };
    let from_signup = |fields: Value| {
        let mut fields = fields;
        fields["method"] = "POST".into();
        fields["path"] = "/signup".into();
        fields
    };
    expect(
        &welcome,
        from_signup(serde_json::json!({
            "name": "welcome", "phase": "immediate", "mode": "async", "shielded": true,
            "state": "running", "attempts": 1,
        })),
    );
    expect(
        &thumbnail,
        from_signup(serde_json::json!({
            "name": "thumbnail", "phase": "immediate", "mode": "sync", "shielded": false,
            "state": "running",
        })),
    );
    expect(
        &second,
        from_signup(serde_json::json!({
            "name": "second thumbnail", "mode": "sync", "state": "queued", "attempts": 0,
        })),
    );
    expect(
        &audit,
        from_signup(serde_json::json!({
            "name": "audit", "phase": "after_response", "state": "running",
        })),
    );
    expect(
        &nightly,
        serde_json::json!({
            "name": "nightly", "state": "running", "method": null, "path": null,
        }),
    );

    gate.cancel();
    release_sync.send(()).unwrap();
    within("idle", background.wait_idle()).await;
    let answer = get(&app, "/admin/tasks").await;
    assert_eq!(
        answer.json(),
        serde_json::json!({
            "in_flight": 0, "groups": [], "groups_omitted": 0, "tasks_in_omitted_groups": 0,
            "total": 0, "older": 0, "limit": 50, "tasks": [],
            "next_after": null, "prev_before": null,
        })
    );
}

#[tokio::test]
async fn tasks_are_grouped_by_name_phase_mode_and_state_with_counts_oldest_group_first() {
    let test_started = Instant::now();
    let background = Background::builder().max_blocking(1).build();
    let app = app(&background, Router::new());
    let (release, waits) = std::sync::mpsc::channel::<()>();
    let resize = background.task().name("resize").build().schedule(move || {
        let _ = waits.recv();
    });
    within("the sync task to start", resize.started()).await;
    let queued: Vec<TaskHandle> = (0..2)
        .map(|_| background.task().name("resize").build().schedule(|| ()))
        .collect();
    let mail = park(&background, "mail", 3).await;
    let audit = background
        .task()
        .name("audit")
        .phase(Phase::AfterResponse)
        .build()
        .schedule(std::future::pending::<()>());
    within("the task to start", audit.started()).await;
    let more_mail = park(&background, "mail", 1).await;

    let list = get(&app, "/admin/tasks").await.json();
    assert_eq!(list["in_flight"], 8, "{list}");
    let groups: Vec<Value> = list["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|group| {
            let age = group["oldest_age_ms"].as_u64().expect("an age");
            assert!(
                u128::from(age) <= test_started.elapsed().as_millis(),
                "{group}"
            );
            let mut group = group.clone();
            group.as_object_mut().unwrap().remove("oldest_age_ms");
            group
        })
        .collect();
    // The group of the oldest task first: resize (running), resize (queued),
    // mail, audit.
    assert_eq!(
        groups,
        [
            serde_json::json!({"name": "resize", "phase": "immediate", "mode": "sync", "state": "running", "count": 1}),
            serde_json::json!({"name": "resize", "phase": "immediate", "mode": "sync", "state": "queued", "count": 2}),
            serde_json::json!({"name": "mail", "phase": "immediate", "mode": "async", "state": "running", "count": 4}),
            serde_json::json!({"name": "audit", "phase": "after_response", "mode": "async", "state": "running", "count": 1}),
        ],
        "{list}"
    );
    // A group's age is its oldest task's.
    let mail_group = &list["groups"][2];
    let oldest_mail = task_with_id(&list, &mail[0]);
    assert!(
        mail_group["oldest_age_ms"].as_u64() >= oldest_mail["age_ms"].as_u64(),
        "{list}"
    );
    assert!(
        mail_group["oldest_age_ms"].as_u64()
            >= task_with_id(&list, &more_mail[0])["age_ms"].as_u64(),
        "{list}"
    );
    assert_eq!(
        (&list["groups_omitted"], &list["tasks_in_omitted_groups"]),
        (&0.into(), &0.into())
    );

    release.send(()).unwrap();
    let _ = background.shutdown(std::time::Duration::from_secs(5)).await;
    assert!(queued.iter().all(TaskHandle::is_finished));
}

#[tokio::test]
async fn tasks_are_paged_oldest_first_by_id_and_a_page_stays_put_when_tasks_end() {
    let background = Background::new();
    let app = app(&background, Router::new());
    let parked = park(&background, "parked", 25).await;
    let ids = id_list(&parked);

    // Forward, ten at a time.
    let first = get(&app, "/admin/tasks?limit=10").await.json();
    assert_eq!(ids_of(&first), ids[..10], "{first}");
    assert_eq!(
        (
            &first["total"],
            &first["older"],
            &first["limit"],
            &first["prev_before"]
        ),
        (&25.into(), &0.into(), &10.into(), &Value::Null),
        "{first}"
    );
    assert_eq!(first["next_after"], ids[9], "{first}");
    let uri = format!("/admin/tasks?limit=10&after={}", first["next_after"]);
    let second = get(&app, &uri).await.json();
    assert_eq!(ids_of(&second), ids[10..20], "{second}");
    assert_eq!(second["older"], 10, "{second}");
    assert_eq!(second["prev_before"], ids[10], "{second}");
    let uri = format!("/admin/tasks?limit=10&after={}", second["next_after"]);
    let third = get(&app, &uri).await.json();
    assert_eq!(ids_of(&third), ids[20..], "{third}");
    assert_eq!(
        (&third["older"], &third["next_after"]),
        (&20.into(), &Value::Null)
    );

    // And back.
    let uri = format!("/admin/tasks?limit=10&before={}", third["prev_before"]);
    let back = get(&app, &uri).await.json();
    assert_eq!(ids_of(&back), ids[10..20], "{back}");
    assert_eq!(
        (&back["older"], &back["next_after"]),
        (&10.into(), &ids[19].into())
    );
    assert_eq!(back["prev_before"], ids[10], "{back}");
    let newest = get(&app, "/admin/tasks?limit=10&before=18446744073709551615")
        .await
        .json();
    assert_eq!(ids_of(&newest), ids[15..], "{newest}");
    assert_eq!(
        (&newest["older"], &newest["next_after"]),
        (&15.into(), &Value::Null)
    );

    // The oldest five and two of the second page end: the page after the
    // first still starts where it did, and nothing is skipped.
    for handle in parked[..5].iter().chain(&parked[10..12]) {
        assert!(handle.cancel().is_cancelled());
        let _ = within("the cancel", handle.outcome()).await;
    }
    let uri = format!("/admin/tasks?limit=10&after={}", first["next_after"]);
    let second_again = get(&app, &uri).await.json();
    assert_eq!(ids_of(&second_again), ids[12..22], "{second_again}");
    assert_eq!(
        (&second_again["total"], &second_again["older"]),
        (&18.into(), &5.into()),
        "{second_again}"
    );
    let first_again = get(&app, "/admin/tasks?limit=10").await.json();
    assert_eq!(
        ids_of(&first_again),
        [&ids[5..10], &ids[12..17]].concat(),
        "{first_again}"
    );

    // Past the end: an empty page that points back.
    let uri = format!("/admin/tasks?after={}", ids[24]);
    let past = get(&app, &uri).await.json();
    assert_eq!(ids_of(&past), Vec::<u64>::new(), "{past}");
    assert_eq!(
        (&past["older"], &past["next_after"]),
        (&18.into(), &Value::Null)
    );
    assert_eq!(past["prev_before"], ids[24] + 1, "{past}");

    let _ = background.shutdown(std::time::Duration::ZERO).await;
}

#[tokio::test]
async fn filters_keep_the_page_to_one_group_and_the_groups_count_every_task() {
    let background = Background::builder().max_blocking(1).build();
    let app = app(&background, Router::new());
    let (release, waits) = std::sync::mpsc::channel::<()>();
    let busy = background
        .task()
        .name("mail <b>")
        .build()
        .schedule(move || {
            let _ = waits.recv();
        });
    within("the sync task to start", busy.started()).await;
    let queued = background.task().name("mail <b>").build().schedule(|| ());
    let mail = park(&background, "mail <b>", 3).await;
    let audit = background
        .task()
        .name("audit")
        .phase(Phase::AfterRoute)
        .build()
        .schedule(std::future::pending::<()>());
    within("the task to start", audit.started()).await;

    let page = async |query: &str| {
        let list = get(&app, &format!("/admin/tasks?{query}")).await.json();
        assert_eq!(list["in_flight"], 6, "{query}: {list}");
        assert_eq!(
            list["groups"].as_array().map(Vec::len),
            Some(4),
            "{query}: {list}"
        );
        (ids_of(&list), list["total"].as_u64().unwrap())
    };
    let mail_ids = id_list(&mail);
    assert_eq!(
        page("name=mail+%3Cb%3E&mode=async").await,
        (mail_ids.clone(), 3)
    );
    assert_eq!(
        page("name=mail%20%3Cb%3E&mode=sync&state=queued").await,
        (vec![queued.id().as_u64()], 1)
    );
    assert_eq!(
        page("name=mail+%3Cb%3E&state=running").await,
        ([vec![busy.id().as_u64()], mail_ids.clone()].concat(), 4)
    );
    assert_eq!(
        page("phase=after_route").await,
        (vec![audit.id().as_u64()], 1)
    );
    assert_eq!(page("phase=after_response").await, (vec![], 0));
    assert_eq!(page("name=mail").await, (vec![], 0), "names match whole");
    // Filters and cursors together.
    let (ids, total) = page(&format!(
        "name=mail+%3Cb%3E&mode=async&limit=2&after={}",
        mail_ids[0]
    ))
    .await;
    assert_eq!((ids, total), (mail_ids[1..].to_vec(), 3));

    release.send(()).unwrap();
    let _ = background.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_limit_is_50_by_default_and_clamped_to_1_and_500() {
    let background = Background::new();
    let app = app(&background, Router::new());
    let parked = park(&background, "parked", 600).await;
    let ids = id_list(&parked);
    for (query, length) in [
        ("", 50),
        ("?limit=0", 1),
        ("?limit=1", 1),
        ("?limit=500", 500),
        ("?limit=100000", 500),
    ] {
        let list = get(&app, &format!("/admin/tasks{query}")).await.json();
        assert_eq!(ids_of(&list), ids[..length], "{query}");
        assert_eq!(list["limit"], length, "{query}");
        assert_eq!(list["next_after"], ids[length - 1], "{query}");
    }
    let _ = background.shutdown(std::time::Duration::ZERO).await;
}

#[tokio::test]
async fn past_100_groups_the_largest_are_listed_and_the_rest_counted() {
    let background = Background::new();
    let app = app(&background, Router::new());
    let mut handles = Vec::new();
    for group in 0..103 {
        let n = if group >= 100 { 2 } else { 1 };
        handles.extend(park(&background, &format!("tenant {group}"), n).await);
    }
    let answer = get(&app, "/admin/tasks?limit=1").await;
    assert!(answer.body.len() < 16 * 1024, "{} bytes", answer.body.len());
    let list = answer.json();
    let names: Vec<&str> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|group| group["name"].as_str().unwrap())
        .collect();
    // The largest three, then the oldest among the groups of one task;
    // listed oldest first.
    let kept: Vec<String> = (0..97)
        .chain(100..103)
        .map(|group| format!("tenant {group}"))
        .collect();
    assert_eq!(names, kept, "the largest groups");
    // The oldest task of all still heads the page.
    assert_eq!(ids_of(&list), [handles[0].id().as_u64()], "{list}");
    assert_eq!(
        (
            &list["in_flight"],
            &list["groups_omitted"],
            &list["tasks_in_omitted_groups"]
        ),
        (&106.into(), &3.into(), &3.into()),
        "{list}"
    );
    let _ = background.shutdown(std::time::Duration::ZERO).await;
}

#[tokio::test]
async fn a_bad_query_is_400_saying_what_is_expected() {
    let background = Background::new();
    let app = app(&background, Router::new());
    for (query, says) in [
        (
            "limit=ten",
            "invalid limit \"ten\": a number of tasks, as in limit=50 (at most 500)",
        ),
        ("limit=-5", "invalid limit \"-5\""),
        (
            "after=abc",
            "invalid after \"abc\": a task id, as in after=42",
        ),
        (
            "before=-1",
            "invalid before \"-1\": a task id, as in before=42",
        ),
        ("after=1&before=9", "give after or before, not both"),
        (
            "phase=later",
            "invalid phase \"later\": one of immediate, after_route, after_response",
        ),
        (
            "mode=blocking",
            "invalid mode \"blocking\": one of async, sync",
        ),
        (
            "state=done",
            "invalid state \"done\": one of queued, running",
        ),
        ("limit=5&limit=6", "limit is given twice"),
        ("name=%FF", "invalid name: not UTF-8 once decoded"),
    ] {
        let answer = get(&app, &format!("/admin/tasks?{query}")).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            answer.body
        );
        assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(error.starts_with(says), "{query}: {error}");
    }
    // What is not a parameter of the list is left alone; empty is absent.
    for query in ["utm_source=mail", "limit=&after=&name=", "x"] {
        let answer = get(&app, &format!("/admin/tasks?{query}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{query}: {}", answer.body);
    }
}

#[tokio::test]
async fn stats_reports_every_counter_and_in_flight() {
    let background = Background::new();
    let app = app(&background, Router::new());
    background.schedule(async {});
    background.schedule(|| ());
    background.schedule(async { Err::<(), _>("boom") });
    let gate = CancellationToken::new();
    let held_task = background.schedule(held(&gate));
    within("the task to start", held_task.started()).await;

    let stats = get(&app, "/admin/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.headers[header::CONTENT_TYPE], "application/json");
    let stats = stats.json();
    assert_eq!(
        keys(&stats),
        BTreeSet::from([
            "scheduled",
            "queued",
            "running",
            "completed",
            "failed",
            "panicked",
            "timed_out",
            "cancelled",
            "rejected",
            "in_flight"
        ])
    );
    assert_eq!(stats["scheduled"], 4);
    assert_eq!(
        stats["in_flight"],
        stats["queued"].as_u64().unwrap() + stats["running"].as_u64().unwrap()
    );

    gate.cancel();
    within("idle", background.wait_idle()).await;
    let stats = get(&app, "/admin/stats").await.json();
    let expected = background.stats();
    assert_eq!(
        stats,
        serde_json::json!({
            "scheduled": expected.scheduled, "queued": 0, "running": 0,
            "completed": expected.completed, "failed": expected.failed,
            "panicked": expected.panicked, "timed_out": expected.timed_out,
            "cancelled": expected.cancelled, "rejected": expected.rejected, "in_flight": 0,
        })
    );
    assert_eq!((expected.completed, expected.failed), (3, 1));
}

#[tokio::test]
async fn cancel_answers_200_and_the_task_ends_cancelled_then_409() {
    let background = Background::new();
    let app = app(&background, Router::new());
    let handle = background.schedule(std::future::pending::<()>());
    within("the task to start", handle.started()).await;
    let id = handle.id();

    let answer = post_to(&app, &format!("/admin/tasks/{id}/cancel")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.json(),
        serde_json::json!({ "id": id.as_u64(), "outcome": "cancelled" })
    );
    assert!(matches!(
        within("the outcome", handle.outcome()).await,
        Err(TaskError::Cancelled)
    ));

    let again = post_to(&app, &format!("/admin/tasks/{id}/cancel")).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(
        again.json(),
        serde_json::json!({ "error": format!("task {id} has already ended") })
    );
    within("idle", background.wait_idle()).await;
    assert_eq!(background.stats().cancelled, 1);
}

#[tokio::test]
async fn cancel_of_an_unknown_id_is_404() {
    let background = Background::new();
    let app = app(&background, Router::new());
    let answer = post_to(&app, "/admin/tasks/4242/cancel").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer.json(),
        serde_json::json!({ "error": "no task with id 4242" })
    );
}

#[tokio::test]
async fn cancel_of_a_malformed_id_is_400_saying_ids_are_positive_integers() {
    let background = Background::new();
    let app = app(&background, Router::new());
    let handle = background.schedule(std::future::pending::<()>());
    for bad in [
        "abc",
        "0",
        "-1",
        "%2B1",
        "1.5",
        "99999999999999999999999",
        "%FF",
    ] {
        let answer = post_to(&app, &format!("/admin/tasks/{bad}/cancel")).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.body
        );
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.contains("task ids are positive integers"),
            "{bad}: {error}"
        );
    }
    assert!(!handle.is_finished(), "nothing was cancelled");
    assert!(handle.cancel().is_cancelled());
}

#[tokio::test]
async fn cross_site_cancel_from_a_browser_is_403_and_cancels_nothing() {
    let background = Background::new();
    let app = app(&background, Router::new());
    let handle = background.schedule(std::future::pending::<()>());
    let uri = format!("/admin/tasks/{}/cancel", handle.id());

    let forged = |name: &'static str, value: &'static str| {
        Request::post(&uri)
            .header(header::HOST, "admin.example")
            .header(name, value)
            .body(Body::empty())
            .unwrap()
    };
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://elsewhere.example"),
    ] {
        let answer = send(&app, forged(name, value)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{name}: {value}");
        assert!(
            answer.json()["error"]
                .as_str()
                .unwrap()
                .contains("cross-site")
        );
    }
    assert!(!handle.is_finished());

    let same_origin = send(&app, forged("sec-fetch-site", "same-origin")).await;
    assert_eq!(same_origin.status, StatusCode::OK);
    assert!(handle.is_finished());
}

#[tokio::test]
async fn names_and_paths_are_escaped_in_the_json() {
    const NAME: &str = "<script>alert(1)</script> \"quoted\" \\ & 'single'\n";
    let background = Background::new();
    let gate = CancellationToken::new();
    let (handles_tx, mut handles) = mpsc::unbounded_channel::<TaskHandle>();
    let handler_gate = gate.clone();
    let routes = Router::new().route(
        "/search/{*rest}",
        post(move |tasks: Tasks| {
            let handle = tasks
                .task()
                .name(NAME)
                .build()
                .schedule(held(&handler_gate));
            handles_tx.send(handle).unwrap();
            async {}
        }),
    );
    let app = app(&background, routes);
    let path = "/search/a&b='c'/%3Cscript%3E";
    assert_eq!(post_to(&app, path).await.status, StatusCode::OK);
    let handle = within("the handle", handles.recv()).await.unwrap();

    let answer = get(&app, "/admin/tasks").await;
    for raw in ['<', '>', '&'] {
        assert!(
            !answer.body.contains(raw),
            "{raw:?} is escaped: {}",
            answer.body
        );
    }
    assert!(
        answer
            .body
            .contains(r"\u003cscript\u003ealert(1)\u003c/script\u003e")
    );
    let task = task_with_id(&answer.json(), &handle);
    assert_eq!(task["name"], NAME, "the same string to a JSON parser");
    assert_eq!(task["path"], path);

    gate.cancel();
    within("idle", background.wait_idle()).await;
}

#[tokio::test]
async fn the_page_is_served_at_admin_and_admin_slash() {
    let background = Background::new();
    let nested_service = app(&background, Router::new());
    for uri in ["/admin", "/admin/"] {
        let page = get(&nested_service, uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert_eq!(
            page.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(page.body.contains("<title>Background tasks</title>"));
    }
    for uri in ["/admin/tasks", "/admin/stats"] {
        assert_eq!(
            get(&nested_service, uri).await.status,
            StatusCode::OK,
            "{uri}"
        );
    }

    // `Router::nest` in axum 0.8 routes the nested root at `/admin` only.
    let nested = Router::new().nest("/admin", background.admin_router());
    assert_eq!(get(&nested, "/admin").await.status, StatusCode::OK);
    assert_eq!(get(&nested, "/admin/tasks").await.status, StatusCode::OK);

    let at_root = background.admin_router();
    assert_eq!(get(&at_root, "/").await.status, StatusCode::OK);
    assert_eq!(get(&at_root, "/stats").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_page_is_self_contained_and_uses_relative_urls() {
    let background = Background::new();
    let page = get(&background.admin_router(), "/").await;
    // The SVG namespace is a name, not something fetched.
    let body = page.body.replace("\"http://www.w3.org/2000/svg\"", "SVG");
    for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
        assert!(!body.contains(external), "the page has {external:?}");
    }
    assert_eq!(body.matches("<script").count(), 1, "one inline script");
    for absolute in ["\"/tasks", "\"/stats", "'/tasks", "'/stats", "`/tasks"] {
        assert!(!body.contains(absolute), "an absolute URL: {absolute}");
    }
    assert!(!body.contains("innerHTML"), "data goes in as text");
}

#[tokio::test]
async fn every_response_is_uncached_and_the_page_cannot_be_framed() {
    let background = Background::new();
    let app = background.admin_router();
    for answer in [
        get(&app, "/").await,
        get(&app, "/tasks").await,
        get(&app, "/stats").await,
        post_to(&app, "/tasks/7/cancel").await,
    ] {
        let headers = &answer.headers;
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(policy.starts_with("default-src 'none'"), "{policy}");
    }
    let wrong_method = send(
        &app,
        Request::builder()
            .method(Method::GET)
            .uri("/tasks/7/cancel")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn periodic_lists_each_schedule_with_its_next_and_last_run() {
    let period = std::time::Duration::from_millis(50);
    let (ran, mut runs) = mpsc::unbounded_channel();
    let purge = axum_background::periodic::Periodic::every(period, move || {
        let ran = ran.clone();
        async move {
            let _ = ran.send(());
        }
    })
    .name("purge");
    let background = Background::builder().periodic(purge).build();
    let app = app(&background, Router::new());
    within("a run", runs.recv()).await.expect("it ran");

    let answer = get(&app, "/admin/periodic").await;
    assert_eq!(answer.status, StatusCode::OK);
    let list = answer.json();
    let schedule = &list["periodic"][0];
    assert_eq!(schedule["name"], "purge", "{list}");
    assert_eq!(schedule["schedule"], "every 50ms", "{list}");
    let next = schedule["next_run_in_ms"].as_u64().expect("a next run");
    assert!(next <= 50, "{list}");
    assert!(schedule["last_run"]["id"].as_u64().is_some(), "{list}");
    assert_eq!(schedule["durable"], false, "{list}");
    let state = schedule["last_run"]["state"].as_str().expect("a state");
    assert!(
        ["queued", "running", "completed"].contains(&state),
        "{list}"
    );

    let _ = background.shutdown(std::time::Duration::ZERO).await;
    let stopped = get(&app, "/admin/periodic").await.json();
    assert_eq!(
        stopped["periodic"][0]["next_run_in_ms"],
        Value::Null,
        "{stopped}"
    );
}

#[tokio::test]
async fn failures_lists_the_recent_failures_newest_first_escaped() {
    const NAME: &str = "<script>alert(1)</script>";
    const ERROR: &str = "<img src=x onerror=alert(1)> & more";
    let background = Background::new();
    let routes = Router::new().route(
        "/orders",
        post(|tasks: Tasks| async move {
            tasks
                .task()
                .name(NAME)
                .build()
                .schedule(async { Err::<(), axum_background::BoxError>(ERROR.into()) });
        }),
    );
    let app = app(&background, routes);
    background
        .task()
        .name("older")
        .build()
        .schedule(async { Err::<(), axum_background::BoxError>("first".into()) });
    within("idle", background.wait_idle()).await;
    assert_eq!(post_to(&app, "/orders").await.status, StatusCode::OK);
    within("idle", background.wait_idle()).await;
    // A cancellation is not a failure.
    let cancelled = background.schedule(std::future::pending::<()>());
    let _ = cancelled.cancel();
    within("idle", background.wait_idle()).await;

    let answer = get(&app, "/admin/failures").await;
    assert_eq!(answer.status, StatusCode::OK);
    for raw in ['<', '>', '&'] {
        assert!(
            !answer.body.contains(raw),
            "{raw:?} is escaped: {}",
            answer.body
        );
    }
    let list = answer.json();
    let failures = list["failures"].as_array().expect("a list");
    assert_eq!(failures.len(), 2, "{list}");
    let newest = &failures[0];
    assert_eq!(newest["name"], NAME, "{list}");
    assert_eq!(newest["method"], "POST", "{list}");
    assert_eq!(newest["path"], "/orders", "{list}");
    assert_eq!(newest["kind"], "failed", "{list}");
    assert_eq!(newest["error"], format!("task failed: {ERROR}"), "{list}");
    assert_eq!(newest["attempts"], 1, "{list}");
    assert!(
        newest["ago_ms"].as_u64().is_some_and(|ago| ago < 10_000),
        "{list}"
    );
    assert!(
        newest["at_unix_ms"]
            .as_u64()
            .is_some_and(|at| at > 1_700_000_000_000),
        "{list}"
    );
    assert_eq!(failures[1]["name"], "older", "{list}");

    // A long error is cut, so that a refresh stays small.
    let long = "x".repeat(10_000);
    background
        .task()
        .name("long")
        .build()
        .schedule(async move { Err::<(), axum_background::BoxError>(long.into()) });
    within("idle", background.wait_idle()).await;
    let list = get(&app, "/admin/failures").await.json();
    let error = list["failures"][0]["error"].as_str().expect("an error");
    assert_eq!(error.chars().count(), 201, "200 characters and an ellipsis");
    assert!(error.ends_with('…'), "{error}");
    assert_eq!(failures[1]["path"], Value::Null, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_blocking_its_thread_is_marked_with_the_time_held() {
    let background = Background::new();
    let app = app(&background, Router::new());
    let (release, waits) = tokio::sync::oneshot::channel::<()>();
    let blocker = background.schedule(async move {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = waits.await;
    });
    let polite = background.schedule(std::future::pending::<()>());
    within("the blocking task to be marked", async {
        while blocker.info().blocked.is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let list = get(&app, "/admin/tasks").await.json();
    let blocked = task_with_id(&list, &blocker)["blocked_ms"].as_u64();
    assert!(blocked.is_some_and(|ms| ms >= 100), "{list}");
    assert_eq!(
        task_with_id(&list, &polite)["blocked_ms"],
        Value::Null,
        "{list}"
    );
    release.send(()).unwrap();
    let _ = polite.cancel();
    within("idle", background.wait_idle()).await;
}

/// The stored jobs of a durable store (`GET /jobs`, its retry and cancel).
#[cfg(feature = "durable-sqlite")]
mod stored_jobs {
    use std::time::Duration;

    use axum_background::durable::{DurableStore, DurableTask, JobId, JobState};
    use axum_background::{BackgroundTask, BoxError, RetryPolicy, TaskConfig, mode};
    use serde::{Deserialize, Serialize};

    use super::*;

    /// An error text that is markup, quotes and an ampersand.
    const HOSTILE: &str = "<img src=x onerror=alert(1)> \"smtp\" & 'co'";

    /// Fails every time, with [`HOSTILE`].
    #[derive(Serialize, Deserialize)]
    struct Fails;

    impl BackgroundTask for Fails {
        type Mode = mode::Async;
        async fn run(self) -> Result<(), BoxError> {
            Err(HOSTILE.into())
        }
    }

    impl DurableTask for Fails {
        const NAME: &'static str = "admin_fails";
    }

    /// Fails every time; registered with a long backoff, so it stays retrying.
    #[derive(Serialize, Deserialize)]
    struct Flaky;

    impl BackgroundTask for Flaky {
        type Mode = mode::Async;
        async fn run(self) -> Result<(), BoxError> {
            Err("the mail server said no".into())
        }
    }

    impl DurableTask for Flaky {
        const NAME: &'static str = "admin_flaky";
    }

    /// Completes.
    #[derive(Serialize, Deserialize)]
    struct Fine;

    impl BackgroundTask for Fine {
        type Mode = mode::Async;
        async fn run(self) -> Result<(), BoxError> {
            Ok(())
        }
    }

    impl DurableTask for Fine {
        const NAME: &'static str = "admin_fine";
    }

    /// A `Background` on a fresh store: `Fails` given up after one attempt,
    /// `Flaky` retried in ten minutes, `Fine`.
    async fn background(test: &str) -> Background {
        let store = DurableStore::sqlite(util::fresh_sqlite("admin-jobs", test))
            .await
            .expect("the store");
        let once = TaskConfig::builder()
            .retry(RetryPolicy::attempts(1))
            .build();
        let later = TaskConfig::builder()
            .retry(
                RetryPolicy::attempts(3)
                    .backoff(Duration::from_secs(600))
                    .max_backoff(Duration::from_secs(3600))
                    .jitter(false),
            )
            .build();
        Background::builder()
            .durable(store)
            .register_with::<Fails>(once)
            .register_with::<Flaky>(later)
            .register::<Fine>()
            .build()
    }

    async fn schedule<T: DurableTask>(background: &Background, task: T) -> JobId {
        background
            .durable()
            .schedule(task)
            .await
            .expect("written to the store")
            .expect("written now")
            .id
    }

    /// Waits (up to 60 s) until `done` holds of the job.
    async fn wait_job(
        background: &Background,
        id: JobId,
        what: &str,
        done: impl Fn(&axum_background::durable::JobInfo) -> bool,
    ) {
        let wait = async {
            loop {
                let job = background.durable().job(id).await.expect("the job");
                if done(&job) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("job {id}: not {what} in 60 s"));
    }

    async fn wait_state(background: &Background, id: JobId, state: JobState) {
        wait_job(background, id, &format!("{state:?}"), |job| {
            job.state == state
        })
        .await;
    }

    /// A `POST` as the admin page sends it, from its own origin.
    async fn post_same_origin(app: &Router, uri: &str) -> Answer {
        let request = Request::post(uri)
            .header("sec-fetch-site", "same-origin")
            .body(Body::empty())
            .unwrap();
        send(app, request).await
    }

    fn entry(list: &Value, id: JobId) -> &Value {
        list.as_array()
            .unwrap_or_else(|| panic!("an array: {list}"))
            .iter()
            .find(|job| job["id"] == id.as_i64())
            .unwrap_or_else(|| panic!("job {id} listed: {list}"))
    }

    #[tokio::test]
    async fn jobs_counts_by_state_and_lists_the_retrying_and_discarded_with_their_errors() {
        let background = background("list").await;
        let app = app(&background, Router::new());
        let discarded = schedule(&background, Fails).await;
        let retrying = schedule(&background, Flaky).await;
        let completed = schedule(&background, Fine).await;
        let delayed = background
            .durable()
            .delay(Duration::from_secs(3600))
            .schedule(Fine)
            .await
            .unwrap()
            .unwrap()
            .id;
        wait_state(&background, discarded, JobState::Discarded).await;
        wait_state(&background, retrying, JobState::Retrying).await;
        wait_state(&background, completed, JobState::Completed).await;
        wait_state(&background, delayed, JobState::Scheduled).await;

        let answer = get(&app, "/admin/jobs").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let jobs = answer.json();
        assert_eq!(
            keys(&jobs),
            BTreeSet::from(["counts", "capped", "retrying", "discarded", "now_unix_ms"])
        );
        assert_eq!(
            jobs["counts"],
            serde_json::json!({
                "waiting": 0, "scheduled": 1, "running": 0, "retrying": 1,
                "completed": 1, "cancelled": 0, "discarded": 1,
            })
        );
        assert_eq!(jobs["capped"], serde_json::json!([]));

        let flaky = entry(&jobs["retrying"], retrying);
        assert_eq!(
            keys(flaky),
            BTreeSet::from([
                "id",
                "name",
                "state",
                "attempts",
                "errors",
                "scheduled_at_unix_ms",
                "finalized_at_unix_ms"
            ])
        );
        assert_eq!(flaky["name"], "admin_flaky");
        assert_eq!(flaky["state"], "retrying");
        assert_eq!(flaky["attempts"], 1);
        assert_eq!(flaky["errors"][0]["attempt"], 1);
        assert_eq!(
            flaky["errors"][0]["error"],
            "task failed: the mail server said no"
        );
        assert_eq!(flaky["finalized_at_unix_ms"], Value::Null);
        let next = flaky["scheduled_at_unix_ms"].as_u64().unwrap();
        let now = jobs["now_unix_ms"].as_u64().unwrap();
        assert!(
            next > now + 500_000,
            "the next attempt in ten minutes: {next} vs {now}"
        );

        let fails = entry(&jobs["discarded"], discarded);
        assert_eq!(fails["name"], "admin_fails");
        assert_eq!(fails["state"], "discarded");
        assert_eq!(fails["attempts"], 1);
        let error = fails["errors"][0]["error"].as_str().unwrap();
        assert!(error.contains(HOSTILE), "the task's own error: {error}");
        assert!(fails["finalized_at_unix_ms"].as_u64().unwrap() <= now);
        // Markup in an error is escaped in the JSON, the same string to a parser.
        for raw in ['<', '>', '&'] {
            assert!(
                !answer.body.contains(raw),
                "{raw:?} is escaped: {}",
                answer.body
            );
        }
        assert!(answer.body.contains(r"\u003cimg src=x"));

        within("shutdown", background.shutdown(Duration::from_secs(5))).await;
    }

    #[tokio::test]
    async fn retry_runs_a_discarded_job_again_and_cancel_stops_a_retrying_one() {
        let background = background("act").await;
        let app = app(&background, Router::new());
        let discarded = schedule(&background, Fails).await;
        let retrying = schedule(&background, Flaky).await;
        wait_state(&background, discarded, JobState::Discarded).await;
        wait_state(&background, retrying, JobState::Retrying).await;

        let retried = post_same_origin(&app, &format!("/admin/jobs/{discarded}/retry")).await;
        assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
        let job = retried.json();
        assert_eq!(job["id"], discarded.as_i64());
        assert_ne!(job["state"], "discarded", "{job}");
        // It runs once more, fails again and is given up again.
        wait_job(&background, discarded, "run again", |job| {
            job.attempts == 2 && job.state == JobState::Discarded
        })
        .await;

        let cancelled = post_same_origin(&app, &format!("/admin/jobs/{retrying}/cancel")).await;
        assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
        assert_eq!(cancelled.json()["state"], "cancelled");
        let job = background.durable().job(retrying).await.unwrap();
        assert_eq!(job.state, JobState::Cancelled);

        let jobs = get(&app, "/admin/jobs").await.json();
        assert_eq!(jobs["counts"]["cancelled"], 1, "{jobs}");
        assert_eq!(jobs["counts"]["retrying"], 0, "{jobs}");
        assert_eq!(jobs["retrying"], serde_json::json!([]));
        assert_eq!(entry(&jobs["discarded"], discarded)["attempts"], 2);

        within("shutdown", background.shutdown(Duration::from_secs(5))).await;
    }

    #[tokio::test]
    async fn job_actions_refuse_other_sites_bad_ids_and_unknown_jobs() {
        let background = background("refuse").await;
        let app = app(&background, Router::new());
        let discarded = schedule(&background, Fails).await;
        wait_state(&background, discarded, JobState::Discarded).await;

        for action in ["retry", "cancel"] {
            let uri = format!("/admin/jobs/{discarded}/{action}");
            for (name, value) in [
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://elsewhere.example"),
            ] {
                let forged = Request::post(&uri)
                    .header(header::HOST, "admin.example")
                    .header(name, value)
                    .body(Body::empty())
                    .unwrap();
                let answer = send(&app, forged).await;
                assert_eq!(
                    answer.status,
                    StatusCode::FORBIDDEN,
                    "{action} {name}: {value}"
                );
                let error = answer.json()["error"].as_str().unwrap().to_owned();
                assert!(
                    error.contains("cross-site") && error.contains(action),
                    "{error}"
                );
            }
            for bad in ["0", "-3", "abc", "1.5"] {
                let answer = post_to(&app, &format!("/admin/jobs/{bad}/{action}")).await;
                assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{action} {bad}");
                assert!(
                    answer.json()["error"]
                        .as_str()
                        .unwrap()
                        .contains("positive integers")
                );
            }
            let unknown = post_to(&app, &format!("/admin/jobs/987654321/{action}")).await;
            assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{action}");
            assert!(
                unknown.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("987654321")
            );
        }
        let job = background.durable().job(discarded).await.unwrap();
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Discarded, 1),
            "untouched"
        );

        within("shutdown", background.shutdown(Duration::from_secs(5))).await;
    }

    #[tokio::test]
    async fn without_a_store_jobs_is_404_saying_so() {
        let background = Background::new();
        let app = app(&background, Router::new());
        let answer = get(&app, "/admin/jobs").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("no durable store"), "{error}");
        let retry = post_to(&app, "/admin/jobs/1/retry").await;
        assert_eq!(retry.status, StatusCode::NOT_FOUND);
    }
}
