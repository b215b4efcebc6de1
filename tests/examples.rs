//! Runs each guide example and checks the key lines of its output, so that
//! the examples cannot rot.
//!
//! The examples are built once, by one `cargo build --example ..` call (a
//! no-op when `cargo test` has just built them, as it does without target
//! filters), then each runs as its own process, as `cargo run --example NAME`
//! would run it. They talk only to 127.0.0.1.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long one example may run before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(120);

/// The examples this file runs.
const EXAMPLES: [&str; 6] = [
    "sync_async",
    "email",
    "thumbnail",
    "cpu_bound",
    "errors",
    "shielding",
];

/// Builds the examples once, in one cargo call; their executables by name.
fn executables() -> &'static HashMap<String, PathBuf> {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let output = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--message-format=json-render-diagnostics",
            ])
            .args(["--manifest-path", manifest])
            .args(EXAMPLES.iter().flat_map(|name| ["--example", name]))
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(output.status.success(), "building the examples failed");
        let mut executables = HashMap::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let kinds = &message["target"]["kind"];
            let is_example = kinds
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "example"));
            if let (true, Some(name), Some(exe)) = (
                is_example,
                message["target"]["name"].as_str(),
                message["executable"].as_str(),
            ) {
                executables.insert(name.to_owned(), PathBuf::from(exe));
            }
        }
        executables
    })
}

/// Runs example `name` to its end and returns its stdout; fails the test if it
/// exits non-zero or outlives [`DEADLINE`].
fn run(name: &str) -> String {
    let exe = executables()
        .get(name)
        .unwrap_or_else(|| panic!("no example {name:?} was built"));
    let mut child = Command::new(exe)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_BACKTRACE", "0") // panics the examples provoke stay one line each
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    // Read both pipes while waiting, so that a full pipe cannot stall the child.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.expect("piped")
                .read_to_string(&mut text)
                .expect("utf-8 output");
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20)); // polling the child, nothing else
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let report = format!("--- stdout:\n{stdout}--- stderr:\n{stderr}");
    match status {
        None => panic!("example {name} still running after {DEADLINE:?}\n{report}"),
        Some(status) if !status.success() => {
            panic!("example {name} exited with {status}\n{report}")
        }
        Some(_) => stdout,
    }
}

/// Collapses runs of whitespace, so that column alignment does not matter.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Asserts that each of `expected` is found, in this order, each in a later
/// line of `output` than the one before (whitespace runs count as one space).
#[track_caller]
fn assert_lines(output: &str, expected: &[&str]) {
    let lines: Vec<String> = output.lines().map(squeeze).collect();
    let mut next = 0;
    for want in expected {
        let want = squeeze(want);
        match lines[next..].iter().position(|line| line.contains(&want)) {
            Some(found) => next += found + 1,
            None => panic!("{want:?} not found (in order) in the output:\n{output}"),
        }
    }
}

#[test]
fn sync_async_runs_async_tasks_on_the_runtime_and_sync_ones_on_the_blocking_pool() {
    let output = run("sync_async");
    assert_lines(
        &output,
        &[
            r#"client: POST /tasks -> 200 OK {"status":"scheduled"}"#,
            r#"task 1: async_task async immediate on thread "main": async data"#,
            r#"task 2: schedule_tasks sync immediate on thread "blocking-pool": sync data"#,
            "tasks overlapped, and the response did not wait for them: true",
            r#"client: POST /mixed -> 200 OK {"status":"ok"}"#,
            r#"task 3: async_task async immediate on thread "main": async, now"#,
            r#"task 4: mixed_tasks sync immediate on thread "blocking-pool": sync, now"#,
            r#"task 5: async_task async after_route on thread "main""#,
            r#"task 6: mixed_tasks sync after_response on thread "blocking-pool""#,
            "tasks overlapped, and the response did not wait for them: true",
            "20 tasks completed, never more than 4 at once",
        ],
    );
}

#[test]
fn email_posts_json_to_the_mail_api_after_the_response() {
    let output = run("email");
    let mail = |to: &str| {
        format!(
            r#"mail-api: received {{"to":"{to}","subject":"Welcome","body":"Thanks for registering!"}}"#
        )
    };
    let (ada, bob, eve) = (
        mail("ada@example.com"),
        mail("bob@greylist.example"),
        mail("eve@invalid"),
    );
    assert_lines(
        &output,
        &[
            r#"client: POST /register {"email":"ada@example.com"} -> 200 OK {"status":"registered"}"#,
            &format!(r#"{ada}; answered 202 Accepted "queued""#),
            r#"client: POST /register {"email":"bob@greylist.example"} -> 200 OK"#,
            &format!(r#"{bob}; answered 503 Service Unavailable"#),
            &format!(r#"{bob}; answered 202 Accepted"#),
            r#"client: POST /register {"email":"eve@invalid"} -> 200 OK"#,
            &format!(r#"{eve}; answered 422 Unprocessable Entity "no such domain""#),
            &format!(r#"{eve}; answered 422"#),
            &format!(r#"{eve}; answered 422"#),
            "app: on_error: welcome_email gave up after 3 attempts: task failed: mail API answered 422",
            "app: 3 welcome emails scheduled: 2 sent, 1 failed",
        ],
    );
}

#[test]
fn thumbnail_makes_a_200x200_thumbnail_next_to_the_upload() {
    let output = run("thumbnail");
    assert_lines(
        &output,
        &[
            "client: drew a 1200x800 gradient",
            r#"client: POST /upload/gradient -> 202 Accepted {"status":"uploaded"}"#,
            "file: gradient.png: 1200x800",
            "file: gradient.thumb.jpg: 200x200",
            "thumbnail verified: 200x200",
        ],
    );
}

#[test]
fn cpu_bound_counts_primes_three_ways() {
    let output = run("cpu_bound");
    let mut expected = Vec::new();
    for how in ["inline", "blocking", "rayon"] {
        expected.push(format!("== {how}: counting primes"));
        expected.push(format!("client: POST /primes/{how} -> 202 Accepted"));
        expected.push("primes below 400000: 33860".to_owned());
        expected.push("[timing] work took".to_owned());
    }
    assert_lines(
        &output,
        &expected.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

#[test]
fn errors_reach_sync_async_default_and_plugin_handlers() {
    let output = run("errors");
    assert_lines(
        &output,
        &[
            "client: POST /fail/async-task-async-handler",
            "async handler: charge_card (async task, from /fail/async-task-async-handler): failed",
            "client: POST /fail/async-task-sync-handler",
            "sync handler: charge_card (async task, from /fail/async-task-sync-handler): failed",
            "client: POST /fail/sync-task-async-handler",
            "async handler: ImportCsv (sync task, from /fail/sync-task-async-handler): failed",
            "client: POST /fail/sync-task-sync-handler",
            "sync handler: ImportCsv (sync task, from /fail/sync-task-sync-handler): failed",
            "client: POST /fail/no-handler-of-its-own",
            "default handler: charge_card (async task, from /fail/no-handler-of-its-own)",
            "client: POST /fail/plugin-handler",
            "Pager plugin: page #1 to #payments-oncall: ImportCsv",
            "client: POST /fail/task-panics",
            "default handler: settle_balance (async task, from /fail/task-panics): panicked / task panicked: negative balance: -5",
            "client: POST /fail/task-times-out",
            "Pager plugin: page #2 to #payments-oncall: nightly_report (async task, from /fail/task-times-out): timed_out",
            "client: POST /fail/handler-panics",
            "broken handler: called for charge_card, now panicking",
            "client: GET /health -> 200 OK",
            "stats: scheduled 9, failed 7, panicked 1, timed out 1",
        ],
    );
}

#[test]
fn shielding_lets_the_payment_finish_and_cancels_the_rest() {
    let output = run("shielding");
    assert_lines(
        &output,
        &[
            r#"client: POST /checkout/42 -> 200 OK {"order":42,"status":"accepted"}"#,
            "background: in flight [payment #1 (shielded), recommendations #2]",
            "report: finished  [payment #1 (shielded)]",
            "report: cancelled [recommendations #2]",
            "report: overdue []",
            "ledger: order 42: charged 1999 cents",
            "a task scheduled after shutdown: task was rejected: the background runtime is shutting down",
        ],
    );
    assert!(!output.contains("recommendations refreshed"), "{output}");
}
