//! The admin page in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver, with `fantoccini`).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). Without them the test is skipped with a message, unless `CI` is
//! set: then it fails. `CHROMEDRIVER` and `CHROMIUM` name other binaries.
//!
//! It saves a screenshot of the page to `target/admin-dashboard.png`.

mod util;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use axum_background::{Background, Phase, TaskError, TaskHandle, Tasks};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use util::within;

/// The flags Chromium needs here: headless, as root, on a closed network.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1250",
];

const XSS_NAME: &str = "<script>alert(1)</script>";
const XSS_ERROR: &str = "<img src=x onerror=alert(1)><b>bold</b>";

/// Awaits `future`, failing the test after `seconds`: for the browser's start,
/// slower than anything `within` covers.
async fn within_secs<F: Future>(seconds: u64, what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {seconds} s waiting for: {what}"))
}

/// Asks `probe` again until it answers `Some`, failing the test after 10 s.
async fn poll<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    within(what, async {
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            // The page refreshes itself every second; ask a few times as often.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// `name` on `PATH`, or the path itself if it names a file.
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// chromedriver and Chromium, or why the test cannot run.
fn browser_binaries() -> Result<(PathBuf, PathBuf), String> {
    let driver_name = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let driver = find_binary(&driver_name).ok_or_else(|| format!("no {driver_name} found"))?;
    let browser = match std::env::var("CHROMIUM") {
        Ok(name) => find_binary(&name).ok_or_else(|| format!("no {name} found"))?,
        Err(_) => ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find_map(find_binary)
            .ok_or("no chromium found")?,
    };
    Ok((driver, browser))
}

/// A chromedriver this test started; killed when dropped.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    async fn start(binary: &Path) -> Chromedriver {
        let mut child = Command::new(binary)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        // "ChromeDriver was started successfully on port 34069."
        let port = within_secs(30, "chromedriver to listen", async {
            while let Some(line) = lines.next_line().await.expect("chromedriver output") {
                if let Some((_, port)) = line.split_once("started successfully on port ") {
                    return port.trim_end_matches('.').parse::<u16>().expect("a port");
                }
            }
            panic!("chromedriver exited before listening");
        })
        .await;
        // Keep reading its output so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn session(&self, browser: &Path, profile: &Path) -> Client {
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|&flag| flag.into()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({
            "goog:chromeOptions": { "binary": browser, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        within_secs(
            60,
            "a Chromium session",
            ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&self.url),
        )
        .await
        .expect("a WebDriver session")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The process this test started, by its handle.
        let _ = self.child.start_kill();
    }
}

/// What the page shows, read in one round trip.
async fn page_state(client: &Client) -> Value {
    const SCRIPT: &str = r##"
        const text = (selector) => document.querySelector(selector)?.textContent ?? null;
        const rows = [...document.querySelectorAll("tr[data-task-id]")].map((row) => ({
            id: Number(row.dataset.taskId),
            name: row.querySelector("td.name").textContent,
            state: row.querySelector("td.state .badge").textContent,
            request: row.querySelector("td.request").textContent,
            phase: row.closest(".group").dataset.phase,
            mode: row.closest(".group").dataset.mode,
        }));
        const stats = {};
        for (const value of document.querySelectorAll("[id^=stat-]")) {
            stats[value.id.slice(5)] = Number(value.textContent);
        }
        const chart = document.getElementById("chart").dataset;
        return {
            rows, stats,
            status: text("#status"),
            actions: [...document.querySelectorAll("#actions li")].map((li) => li.textContent),
            chart: {
                samples: Number(chart.samples ?? 0),
                peakCompleted: Number(chart.peakCompleted ?? 0),
                peakFailures: Number(chart.peakFailures ?? 0),
            },
            scripts: document.scripts.length,
            periodic: [...document.querySelectorAll("#periodic tbody tr")]
                .map((row) => [...row.cells].map((cell) => cell.textContent)),
            failures: [...document.querySelectorAll("#failures tbody tr")]
                .map((row) => [...row.cells].map((cell) => cell.textContent)),
            injected: document.querySelectorAll("#failures img, #failures script, #failures b").length,
        };
    "##;
    client
        .execute(SCRIPT, vec![])
        .await
        .expect("the page state")
}

fn row_of<'a>(state: &'a Value, handle: &TaskHandle) -> Option<&'a Value> {
    let id = handle.id().as_u64();
    state["rows"].as_array()?.iter().find(|row| row["id"] == id)
}

/// The tasks an order schedules, in schedule order.
struct Order {
    receipt: TaskHandle,
    charge: TaskHandle,
    invoice: TaskHandle,
    images: TaskHandle,
    warehouse: TaskHandle,
    hostile: TaskHandle,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_tasks_and_cancels_one_in_a_real_browser() {
    let (driver_binary, browser) = match browser_binaries() {
        Ok(found) => found,
        Err(why) if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) => {
            panic!("{why}: CI must run the browser test (apt-get install chromium chromium-driver)")
        }
        Err(why) => {
            eprintln!(
                "skipping the browser test: {why} (apt-get install chromium chromium-driver)"
            );
            return;
        }
    };

    // An app whose one route schedules a task of every kind; each waits for
    // the test, but for the sync one queued behind `max_blocking(1)`.
    // A periodic task too: its schedule is listed (an hour apart: it does not
    // run during the test).
    let nightly = axum_background::periodic::Periodic::every(
        std::time::Duration::from_secs(3600),
        || async {},
    )
    .name("<b>nightly</b>");
    let background = Background::builder()
        .max_blocking(1)
        .periodic(nightly)
        .build();
    let gate = CancellationToken::new();
    let (release_invoice, invoice_waits) = std::sync::mpsc::channel::<()>();
    let invoice_waits = std::sync::Arc::new(std::sync::Mutex::new(Some(invoice_waits)));
    let (handles_tx, mut handles) = mpsc::unbounded_channel::<TaskHandle>();
    let handler_gate = gate.clone();
    let routes = Router::new().route(
        "/orders",
        post(move |tasks: Tasks| {
            let held = || {
                let gate = handler_gate.clone();
                async move { gate.cancelled().await }
            };
            let invoice_waits = invoice_waits.lock().unwrap().take().expect("called once");
            let scheduled = [
                tasks.task().name("send receipt").build().schedule(held()),
                tasks
                    .task()
                    .name("charge card")
                    .shield(true)
                    .build()
                    .schedule(held()),
                tasks
                    .task()
                    .name("render invoice")
                    .build()
                    .schedule(move || {
                        let _ = invoice_waits.recv();
                    }),
                tasks.task().name("resize images").build().schedule(|| ()),
                tasks
                    .task()
                    .name("notify warehouse")
                    .phase(Phase::AfterResponse)
                    .build()
                    .schedule(held()),
                tasks.task().name(XSS_NAME).build().schedule(held()),
            ];
            for handle in scheduled {
                handles_tx.send(handle).unwrap();
            }
            async { StatusCode::CREATED }
        }),
    );
    let app = routes
        .nest_service("/admin", background.admin_router())
        .layer(background.layer());
    let addr = util::serve(app).await;
    // A failure for the recent-failures card: its name and error as text.
    let failed = background
        .task()
        .name(XSS_NAME)
        .build()
        .schedule(async { Err::<(), axum_background::BoxError>(XSS_ERROR.into()) });
    within("the failure", failed.outcome())
        .await
        .expect_err("it fails");

    let response = within(
        "POST /orders",
        reqwest::Client::new()
            .post(format!("http://{addr}/orders"))
            .send(),
    )
    .await
    .expect("POST /orders");
    assert_eq!(response.status(), StatusCode::CREATED);
    within("the body", response.bytes()).await.expect("body");
    let mut next = async || within("a handle", handles.recv()).await.unwrap();
    let order = Order {
        receipt: next().await,
        charge: next().await,
        invoice: next().await,
        images: next().await,
        warehouse: next().await,
        hostile: next().await,
    };
    for handle in [
        &order.receipt,
        &order.charge,
        &order.invoice,
        &order.warehouse,
        &order.hostile,
    ] {
        within("the task to start", handle.started()).await;
    }

    // The browser, on a fresh profile.
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("admin-browser-profile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let chromedriver = Chromedriver::start(&driver_binary).await;
    let client = chromedriver.session(&browser, &profile).await;

    // At `/admin` (no slash): the page's relative URLs must still work.
    within("the page", client.goto(&format!("http://{addr}/admin")))
        .await
        .expect("goto");
    let state = poll("every task listed", async || {
        let state = page_state(&client).await;
        let listed = [
            &order.receipt,
            &order.charge,
            &order.invoice,
            &order.images,
            &order.warehouse,
            &order.hostile,
        ]
        .iter()
        .all(|handle| row_of(&state, handle).is_some());
        listed.then_some(state)
    })
    .await;
    let row = |handle: &TaskHandle| row_of(&state, handle).expect("listed").clone();
    assert_eq!(
        row(&order.receipt),
        json!({
            "id": order.receipt.id().as_u64(), "name": "send receipt", "state": "running",
            "request": "POST /orders", "phase": "immediate", "mode": "async",
        })
    );
    assert_eq!(row(&order.invoice)["mode"], "sync");
    assert_eq!(row(&order.images)["state"], "queued");
    // The periodic card: its name as text, never as HTML.
    let periodic = &state["periodic"];
    assert_eq!(periodic.as_array().map(Vec::len), Some(1), "{periodic}");
    assert_eq!(periodic[0][0], "<b>nightly</b>", "{periodic}");
    assert_eq!(periodic[0][1], "every 3600s", "{periodic}");
    assert!(
        periodic[0][2]
            .as_str()
            .is_some_and(|next| next.contains("min")),
        "{periodic}"
    );
    assert_eq!(periodic[0][3], "none yet", "{periodic}");
    // The failures card: one row, every string as text.
    let failures = &state["failures"];
    assert_eq!(failures.as_array().map(Vec::len), Some(1), "{failures}");
    assert_eq!(
        failures[0][0],
        format!("#{} {XSS_NAME}", failed.id().as_u64()),
        "{failures}"
    );
    assert_eq!(failures[0][1], "", "outside a request: {failures}");
    assert!(
        failures[0][2]
            .as_str()
            .is_some_and(|when| when.ends_with(" ago")),
        "{failures}"
    );
    assert_eq!(failures[0][3], "1", "{failures}");
    assert_eq!(failures[0][4], "failed", "{failures}");
    assert_eq!(
        failures[0][5],
        format!("task failed: {XSS_ERROR}"),
        "{failures}"
    );
    assert_eq!(
        state["injected"], 0,
        "no element came from a string: {state}"
    );
    assert_eq!(row(&order.warehouse)["phase"], "after_response");
    assert!(
        state["status"].as_str().unwrap().starts_with("live"),
        "{state}"
    );

    // The hostile name is text on the page, not markup: no new script, no alert.
    assert_eq!(row(&order.hostile)["name"], XSS_NAME);
    assert_eq!(state["scripts"], 1, "no script element was added");
    let alert = client.get_alert_text().await;
    assert!(
        alert.as_ref().is_err_and(|error| error.is_no_such_alert()),
        "no alert opened: {alert:?}"
    );

    // Cancel one with its button, as a person would.
    let button = client
        .find(Locator::Css(&format!(
            "tr[data-task-id='{}'] button[data-action='cancel']",
            order.receipt.id()
        )))
        .await
        .expect("the cancel button");
    button.click().await.expect("click");
    assert!(matches!(
        within("the cancelled outcome", order.receipt.outcome()).await,
        Err(TaskError::Cancelled)
    ));
    let state = poll("the page to show the cancel", async || {
        let state = page_state(&client).await;
        let shown = row_of(&state, &order.receipt).is_none()
            && state["stats"]["cancelled"] == 1
            && state["actions"][0]
                .as_str()
                .is_some_and(|action| action.ends_with("send receipt: cancelled"));
        shown.then_some(state)
    })
    .await;
    assert!(row_of(&state, &order.charge).is_some(), "the others remain");
    assert!(!order.charge.is_finished());

    // Waves of completions and failures for the chart: each wave waits until
    // the page has counted the one before, so they land in different seconds.
    let mut completed = 0;
    for (ok, failing) in [(12, 2), (30, 0), (18, 6), (8, 1)] {
        let mut wave = Vec::new();
        for _ in 0..ok {
            wave.push(background.schedule(async {}));
        }
        for _ in 0..failing {
            wave.push(background.schedule(async { Err::<(), _>("upstream timed out") }));
        }
        for handle in &wave {
            let _ = within("a wave task", handle.outcome()).await;
        }
        completed += ok;
        poll("the page to count the wave", async || {
            let state = page_state(&client).await;
            (state["stats"]["completed"] == completed).then_some(())
        })
        .await;
    }
    let state = poll("the chart to plot both series", async || {
        let state = page_state(&client).await;
        let chart = &state["chart"];
        (chart["peakCompleted"].as_f64() > Some(0.0) && chart["peakFailures"].as_f64() > Some(0.0))
            .then_some(state)
    })
    .await;
    assert_eq!(
        state["stats"]["failed"], 10,
        "the waves' 9 and the card's one: {state}"
    );

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/")
        .join("admin-dashboard.png");
    let png = within("a screenshot", client.screenshot())
        .await
        .expect("screenshot");
    std::fs::write(&screenshot, png).expect("write the screenshot");
    eprintln!("screenshot: {}", screenshot.display());

    within("the session to close", client.close())
        .await
        .expect("close");
    drop(chromedriver);
    let _ = std::fs::remove_dir_all(&profile);

    gate.cancel();
    release_invoice.send(()).unwrap();
    within("idle", background.wait_idle()).await;
    assert!(order.images.is_finished());
}
