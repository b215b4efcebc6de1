//! The admin page in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver, with `fantoccini`).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). Without them the test is skipped with a message, unless `CI` is
//! set: then it fails. `CHROMEDRIVER` and `CHROMIUM` name other binaries.
//!
//! It saves screenshots of the page to `target/admin-dashboard.png` and, with
//! 100,000 tasks in flight, `target/admin-100k.png`.

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

/// chromedriver and Chromium; `None` (skip the test, with a message) when
/// they are missing, unless `CI` is set: then the test fails.
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    match browser_binaries() {
        Ok(found) => Some(found),
        Err(why) if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) => {
            panic!("{why}: CI must run the browser test (apt-get install chromium chromium-driver)")
        }
        Err(why) => {
            eprintln!(
                "skipping the browser test: {why} (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

/// A fresh browser profile for this test process.
fn fresh_profile() -> PathBuf {
    // One per browser: under `cargo test` the browser tests run at once in
    // one process, and two browsers must never share (or remove) a profile.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("admin-browser-profile-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    profile
}

/// Saves a screenshot of the page to `target/{file}`.
async fn save_screenshot(client: &Client, file: &str) {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/")
        .join(file);
    let png = within("a screenshot", client.screenshot())
        .await
        .expect("screenshot");
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// Clicks the element `css` finds, as a person would.
async fn click(client: &Client, css: &str) {
    let element = client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("{css}: {error}"));
    element
        .click()
        .await
        .unwrap_or_else(|error| panic!("click {css}: {error}"));
}

/// A chromedriver this test started; killed when dropped.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// Starts a chromedriver on a port of its choosing. Started at the same
    /// moment as another one (the browser tests of one binary run at once
    /// under `cargo test`), it may pick the same port and exit ("bind()
    /// failed: Address already in use"): then another is started, up to three.
    async fn start(binary: &Path) -> Chromedriver {
        for _ in 0..3 {
            if let Some(driver) = Chromedriver::try_start(binary).await {
                return driver;
            }
            eprintln!("chromedriver exited before listening: starting another");
        }
        panic!("three chromedrivers exited before listening");
    }

    async fn try_start(binary: &Path) -> Option<Chromedriver> {
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
                    return Some(port.trim_end_matches('.').parse::<u16>().expect("a port"));
                }
            }
            None
        })
        .await?;
        // Keep reading its output so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
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

/// A WebDriver session in a Chromium of this test's own: its chromedriver
/// and its fresh profile.
struct Browser {
    client: Client,
    chromedriver: Chromedriver,
    profile: PathBuf,
}

impl Browser {
    async fn open(driver: &Path, browser: &Path) -> Browser {
        let profile = fresh_profile();
        let chromedriver = Chromedriver::start(driver).await;
        let client = chromedriver.session(browser, &profile).await;
        Browser {
            client,
            chromedriver,
            profile,
        }
    }

    /// Closes the session, stops the chromedriver and removes the profile.
    async fn close(self) {
        within("the session to close", self.client.close())
            .await
            .expect("close");
        drop(self.chromedriver);
        let _ = std::fs::remove_dir_all(&self.profile);
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
            phase: row.dataset.phase,
            mode: row.dataset.mode,
        }));
        const groups = [...document.querySelectorAll("#groups tr[data-group]")].map((row) => ({
            name: row.querySelector("td.name").textContent,
            phase: row.querySelector("td.phase").textContent,
            mode: row.querySelector("td.mode").textContent,
            state: row.querySelector("td.state").textContent,
            count: row.querySelector("td.count").textContent,
            selected: row.classList.contains("selected"),
        }));
        const stats = {};
        for (const value of document.querySelectorAll("[id^=stat-]")) {
            stats[value.id.slice(5)] = Number(value.textContent);
        }
        const chart = document.getElementById("chart").dataset;
        const status = document.getElementById("status").dataset;
        return {
            rows, groups, stats,
            status: text("#status"),
            refreshes: Number(status.refreshes ?? 0),
            renderMs: Number(status.renderMs ?? -1),
            position: text("#page-position"),
            filter: text("#filter-label"),
            omitted: document.getElementById("groups-omitted").hidden ? null : text("#groups-omitted"),
            actions: [...document.querySelectorAll("#actions li")].map((li) => li.textContent),
            chart: {
                samples: Number(chart.samples ?? 0),
                peakCompleted: Number(chart.peakCompleted ?? 0),
                peakFailures: Number(chart.peakFailures ?? 0),
            },
            scripts: document.scripts.length,
            periodic: [...document.querySelectorAll("#periodic tbody tr")]
                .map((row) => [...row.cells].map((cell) => cell.textContent)),
            blocking: [...document.querySelectorAll("tr[data-task-id] .badge.blocking")]
                .map((badge) => Number(badge.closest("tr").dataset.taskId)),
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
    let Some((driver_binary, browser)) = browser_or_skip() else {
        return;
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

    // A task that blocks its worker thread (the mistake blocking detection
    // is for), then waits: marked on the page.
    let (release_blocker, blocker_waits) = tokio::sync::oneshot::channel::<()>();
    let blocker = background
        .task()
        .name("blocks its thread")
        .build()
        .schedule(async move {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let _ = blocker_waits.await;
        });
    poll("the blocking task to be marked", async || {
        blocker.info().blocked.map(|_| ())
    })
    .await;

    // The browser, on a fresh profile.
    let session = Browser::open(&driver_binary, &browser).await;
    let client = &session.client;

    // At `/admin` (no slash): the page's relative URLs must still work.
    within("the page", client.goto(&format!("http://{addr}/admin")))
        .await
        .expect("goto");
    let state = poll("every task listed", async || {
        let state = page_state(client).await;
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
    assert_eq!(
        state["blocking"],
        json!([blocker.id().as_u64()]),
        "only the blocking task is marked: {state}"
    );
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

    // The groups: one per name, phase, mode and state, with its count.
    let groups = state["groups"].as_array().expect("groups");
    assert_eq!(
        groups.len(),
        7,
        "the order's six and the blocking task: {state}"
    );
    assert!(
        groups.contains(&json!({
            "name": "charge card", "phase": "Immediate", "mode": "async", "state": "running",
            "count": "1", "selected": false,
        })),
        "{state}"
    );
    // A group's name lists its tasks; "Show all" lists every task again.
    click(
        client,
        r#"tr[data-group='["charge card","immediate","async","running"]'] button"#,
    )
    .await;
    poll("the page to list the group's tasks", async || {
        let state = page_state(client).await;
        let ids: Vec<&Value> = state["rows"]
            .as_array()?
            .iter()
            .map(|row| &row["id"])
            .collect();
        let shown = ids == [&json!(order.charge.id().as_u64())]
            && state["filter"]
                .as_str()
                .is_some_and(|filter| filter.contains("charge card"))
            && state["groups"]
                .as_array()?
                .iter()
                .any(|group| group["name"] == "charge card" && group["selected"] == true)
            && state["position"] == "1–1 of 1";
        shown.then_some(())
    })
    .await;
    click(client, "#show-all").await;
    poll("every task listed again", async || {
        let state = page_state(client).await;
        (state["rows"].as_array()?.len() == 7 && state["filter"] == "").then_some(())
    })
    .await;

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
        let state = page_state(client).await;
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
            let state = page_state(client).await;
            (state["stats"]["completed"] == completed).then_some(())
        })
        .await;
    }
    let state = poll("the chart to plot both series", async || {
        let state = page_state(client).await;
        let chart = &state["chart"];
        (chart["peakCompleted"].as_f64() > Some(0.0) && chart["peakFailures"].as_f64() > Some(0.0))
            .then_some(state)
    })
    .await;
    assert_eq!(
        state["stats"]["failed"], 10,
        "the waves' 9 and the card's one: {state}"
    );

    save_screenshot(client, "admin-dashboard.png").await;

    session.close().await;

    gate.cancel();
    release_invoice.send(()).unwrap();
    drop(release_blocker);
    within("idle", background.wait_idle()).await;
    assert!(order.images.is_finished());
}

/// The refresh the page made last, as the browser's resource timing saw it:
/// each request's URL, bytes on the wire (`transferSize`, headers included)
/// and body bytes (`encodedBodySize`).
async fn last_refresh_sizes(client: &Client) -> Value {
    const SCRIPT: &str = r##"
        const last = {};
        for (const entry of performance.getEntriesByType("resource")) {
            if (entry.initiatorType !== "fetch") continue;
            const path = new URL(entry.name).pathname.split("/").pop();
            last[path] = { url: entry.name, transfer: entry.transferSize, body: entry.encodedBodySize };
        }
        return last;
    "##;
    client
        .execute(SCRIPT, vec![])
        .await
        .expect("resource timing")
}

/// How many times in `millis` the page refreshed, and the longest task its
/// main thread ran meanwhile (the browser's long-task timing: 50 ms and up).
async fn watch_the_page(client: &Client, millis: u64) -> Value {
    const SCRIPT: &str = r##"
        const [millis, done] = arguments;
        const longest = { ms: 0 };
        const observer = new PerformanceObserver((list) => {
            for (const entry of list.getEntries()) longest.ms = Math.max(longest.ms, entry.duration);
        });
        observer.observe({ type: "longtask" });
        const status = document.getElementById("status").dataset;
        const before = Number(status.refreshes ?? 0);
        const renders = [];
        const watch = setInterval(() => {
            const ms = Number(status.renderMs);
            const seen = renders.at(-1)?.refresh ?? String(before);
            if (status.refreshes !== seen) renders.push({ refresh: status.refreshes, ms });
        }, 20);
        setTimeout(() => {
            clearInterval(watch);
            observer.disconnect();
            done({
                refreshes: Number(status.refreshes ?? 0) - before,
                longestTaskMs: longest.ms,
                renderMs: renders.map((render) => render.ms),
            });
        }, millis);
    "##;
    within_secs(
        millis / 1000 + 10,
        "the page watched",
        client.execute_async(SCRIPT, vec![json!(millis)]),
    )
    .await
    .expect("the page watched")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_100k_tasks_in_flight_a_refresh_is_small_and_the_page_stays_live() {
    const ASYNC_NAMES: [&str; 3] = ["send receipt", "charge card", "render invoice"];
    const QUEUED: usize = 239;
    const TENANTS: usize = 120;
    const TOTAL: usize = 100_000;
    let Some((driver_binary, browser)) = browser_or_skip() else {
        return;
    };

    // 100,000 tasks in flight, none of them doing anything: one sync task
    // holding the only blocking slot and 239 queued behind it, one task for
    // each of 120 tenants (more groups than a page lists), and the rest
    // parked in three groups and one after-response group.
    let background = Background::builder().max_blocking(1).build();
    let app = Router::new()
        .nest_service("/admin", background.admin_router())
        .layer(background.layer());
    let addr = util::serve(app.clone()).await;
    let scheduling = std::time::Instant::now();
    let (release_export, export_waits) = std::sync::mpsc::channel::<()>();
    let export = background.task().name("export").build().schedule(move || {
        let _ = export_waits.recv();
    });
    within("the export to start", export.started()).await;
    for _ in 0..QUEUED {
        background.task().name("export").build().schedule(|| ());
    }
    for tenant in 0..TENANTS {
        background
            .task()
            .name(format!("tenant {tenant}"))
            .build()
            .schedule(std::future::pending::<()>());
    }
    let parked = TOTAL - 1 - QUEUED - TENANTS;
    for i in 0..parked {
        let config = background.task();
        let config = if i % 4 == 3 {
            config.name("notify warehouse").phase(Phase::AfterResponse)
        } else {
            config.name(ASYNC_NAMES[i % 4])
        };
        config.build().schedule(std::future::pending::<()>());
    }
    poll("every async task to start", async || {
        let stats = background.stats();
        (stats.running == (TOTAL - QUEUED) as u64 && stats.queued == QUEUED as u64).then_some(())
    })
    .await;
    eprintln!(
        "100k: {TOTAL} tasks in flight after {:?}",
        scheduling.elapsed()
    );

    // The handler, in process: one answer's time and size.
    let mut times = Vec::new();
    let mut length = 0;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let response = tower::ServiceExt::oneshot(
            app.clone(),
            axum::http::Request::get("/admin/tasks")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .expect("infallible");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("the body");
        times.push(started.elapsed());
        length = body.len();
        let list: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(list["in_flight"], TOTAL, "{list}");
        assert_eq!(list["groups"].as_array().map(Vec::len), Some(100));
        // 126 groups: the four parked ones, export queued, and of the 121
        // groups of one task, the oldest 95.
        assert_eq!(list["groups_omitted"], 26, "{list}");
        assert_eq!(list["tasks_in_omitted_groups"], 26, "{list}");
        assert_eq!(list["tasks"].as_array().map(Vec::len), Some(50));
    }
    times.sort();
    eprintln!(
        "100k: GET /tasks in process: median {:?}, fastest {:?}, slowest {:?} ({} profile); {length} bytes",
        times[2],
        times[0],
        times[4],
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    assert!(length < 64 * 1024, "{length} bytes");

    // The page, in Chromium.
    let session = Browser::open(&driver_binary, &browser).await;
    let client = &session.client;
    within("the page", client.goto(&format!("http://{addr}/admin/")))
        .await
        .expect("goto");
    let state = poll("the page to show 100,000 tasks", async || {
        let state = page_state(client).await;
        (state["position"] == "1–50 of 100,000").then_some(state)
    })
    .await;
    assert_eq!(state["rows"].as_array().map(Vec::len), Some(50), "{state}");
    assert_eq!(state["groups"].as_array().map(Vec::len), Some(100));
    // The first render builds every row; later ones update them in place.
    let first_render = state["renderMs"].as_f64().expect("a render time");
    eprintln!("100k: the first render took {first_render} ms");
    assert!(first_render < 1000.0, "{first_render} ms");
    assert_eq!(
        state["omitted"],
        "26 more groups (26 tasks) not shown: the 100 largest are listed.",
    );
    assert_eq!(state["stats"]["in_flight"], TOTAL);
    let export_group = &state["groups"][1];
    assert_eq!(
        (
            &export_group["name"],
            &export_group["state"],
            &export_group["count"]
        ),
        (&json!("export"), &json!("queued"), &json!("239")),
        "{state}"
    );

    // Three seconds of refreshes: each one's transfer and render time.
    let watched = watch_the_page(client, 3000).await;
    let sizes = last_refresh_sizes(client).await;
    eprintln!("100k: three seconds of the page: {watched}");
    eprintln!("100k: the last refresh's requests: {sizes}");
    let refreshes = watched["refreshes"].as_u64().expect("a count");
    assert!(refreshes >= 2, "the page refreshed twice in 3 s: {watched}");
    let longest = watched["longestTaskMs"].as_f64().expect("a duration");
    assert!(longest < 250.0, "no stall of the main thread: {watched}");
    let renders = watched["renderMs"].as_array().expect("render times");
    assert!(renders.len() >= 2, "{watched}");
    for render in renders {
        let ms = render.as_f64().expect("ms");
        assert!(ms < 100.0, "a refresh renders in under 100 ms: {watched}");
    }
    let mut refresh_bytes = 0;
    for endpoint in ["tasks", "stats", "periodic", "failures"] {
        let entry = &sizes[endpoint];
        let transfer = entry["transfer"].as_u64().expect("transferSize");
        assert!(
            transfer > entry["body"].as_u64().expect("encodedBodySize"),
            "measured on the wire: {sizes}"
        );
        refresh_bytes += transfer;
    }
    assert!(
        sizes["tasks"]["transfer"].as_u64() < Some(64 * 1024),
        "{sizes}"
    );
    assert!(
        refresh_bytes < 64 * 1024,
        "one refresh under 64 KiB: {refresh_bytes} bytes"
    );
    eprintln!("100k: one refresh transfers {refresh_bytes} bytes");

    // The largest groups first, at a click.
    click(client, "[data-sort=largest]").await;
    let state = poll("the largest group first", async || {
        let state = page_state(client).await;
        (state["groups"][0]["count"] == "24,910").then_some(state)
    })
    .await;
    assert_eq!(state["groups"][0]["name"], "send receipt", "{state}");
    assert_eq!(state["groups"][4]["name"], "export", "{state}");
    save_screenshot(client, "admin-100k.png").await;

    // Paging and a group's tasks, at this scale.
    click(client, "[data-page=newer]").await;
    poll("the second page", async || {
        let state = page_state(client).await;
        (state["position"] == "51–100 of 100,000").then_some(())
    })
    .await;
    click(client, "[data-page=newest]").await;
    poll("the newest page", async || {
        let state = page_state(client).await;
        (state["position"] == "99,951–100,000 of 100,000").then_some(())
    })
    .await;
    click(
        client,
        r#"tr[data-group='["export","immediate","sync","queued"]'] button"#,
    )
    .await;
    let state = poll("the export group's tasks", async || {
        let state = page_state(client).await;
        (state["position"] == "1–50 of 239").then_some(state)
    })
    .await;
    assert!(
        state["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|row| row["name"] == "export" && row["state"] == "queued"),
        "{state}"
    );

    session.close().await;

    let stopping = std::time::Instant::now();
    release_export.send(()).unwrap();
    let report = within(
        "shutdown",
        background.shutdown(std::time::Duration::from_secs(5)),
    )
    .await;
    eprintln!("100k: shutdown took {:?}", stopping.elapsed());
    // The export ran to its end, as may some queued behind it; the rest
    // were cancelled.
    assert!(report.overdue.is_empty());
    let stats = background.stats();
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(stats.completed + stats.cancelled, TOTAL as u64, "{stats:?}");
    assert!(stats.cancelled >= (TOTAL - 1 - QUEUED) as u64, "{stats:?}");
}

/// The "Stored jobs" card: a discarded job with its error as text, and its
/// Retry button, which runs it again (this time it completes).
#[cfg(feature = "durable-sqlite")]
mod stored_jobs {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum_background::durable::{DurableStore, DurableTask, JobId, JobState};
    use axum_background::{BackgroundTask, BoxError, RetryPolicy, TaskConfig, mode};
    use serde::{Deserialize, Serialize};

    use super::*;

    /// Whether `FailsUntilFixed` fails.
    static BROKEN: AtomicBool = AtomicBool::new(true);

    #[derive(Serialize, Deserialize)]
    struct FailsUntilFixed;

    impl BackgroundTask for FailsUntilFixed {
        type Mode = mode::Async;
        async fn run(self) -> Result<(), BoxError> {
            if BROKEN.load(Ordering::SeqCst) {
                return Err(XSS_ERROR.into());
            }
            Ok(())
        }
    }

    impl DurableTask for FailsUntilFixed {
        const NAME: &'static str = "fails_until_fixed";
    }

    /// Waits (up to 60 s) until the job is in `state`.
    async fn wait_state(background: &Background, id: JobId, state: JobState) {
        let wait = async {
            loop {
                if background.durable().job(id).await.expect("the job").state == state {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("job {id} not {state:?} in 60 s"));
    }

    /// What the card shows.
    async fn card_state(client: &Client) -> Value {
        const SCRIPT: &str = r##"
            const card = document.getElementById("jobs-card");
            const rows = (table) => [...document.querySelectorAll("#jobs-" + table + " tbody tr")]
                .map((row) => ({ id: Number(row.dataset.jobId), cells: [...row.cells].map((cell) => cell.textContent) }));
            return {
                hidden: card.hidden,
                counts: [...document.querySelectorAll("#job-counts .badge")].map((badge) => badge.textContent),
                discarded: rows("discarded"),
                retrying: rows("retrying"),
                injected: card.querySelectorAll("img, script, b").length,
                actions: [...document.querySelectorAll("#actions li")].map((li) => li.textContent),
            };
        "##;
        client.execute(SCRIPT, vec![]).await.expect("the card")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stored_jobs_card_shows_a_discarded_job_and_retries_it_in_a_real_browser() {
        let Some((driver_binary, browser)) = browser_or_skip() else {
            return;
        };
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-browser-jobs.db");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let store = DurableStore::sqlite(&path).await.expect("the store");
        let background = Background::builder()
            .durable(store)
            .register_with::<FailsUntilFixed>(
                TaskConfig::builder()
                    .retry(RetryPolicy::attempts(1))
                    .build(),
            )
            .build();
        let id = background
            .durable()
            .schedule(FailsUntilFixed)
            .await
            .expect("written")
            .expect("now")
            .id;
        wait_state(&background, id, JobState::Discarded).await;
        let app = Router::new()
            .nest_service("/admin", background.admin_router())
            .layer(background.layer());
        let addr = util::serve(app).await;

        let session = Browser::open(&driver_binary, &browser).await;
        let client = &session.client;
        within("the page", client.goto(&format!("http://{addr}/admin/")))
            .await
            .expect("goto");
        let state = poll("the discarded job listed", async || {
            let state = card_state(client).await;
            (state["discarded"].as_array()?.len() == 1).then_some(state)
        })
        .await;
        assert_eq!(state["hidden"], false, "{state}");
        assert!(
            state["counts"]
                .as_array()
                .unwrap()
                .contains(&json!("discarded 1")),
            "{state}"
        );
        let row = &state["discarded"][0];
        assert_eq!(row["id"], id.as_i64(), "{state}");
        assert_eq!(row["cells"][0], "fails_until_fixed", "{state}");
        assert_eq!(row["cells"][1], format!("#{id}"), "{state}");
        assert_eq!(row["cells"][2], "1", "{state}");
        assert!(
            row["cells"][3]
                .as_str()
                .is_some_and(|error| error.contains(XSS_ERROR)),
            "the error as text: {state}"
        );
        assert!(
            row["cells"][4]
                .as_str()
                .is_some_and(|when| when.ends_with("ago")),
            "{state}"
        );
        assert_eq!(
            state["injected"], 0,
            "no element came from a string: {state}"
        );
        assert_eq!(state["retrying"], json!([]), "{state}");

        // Fixed: Retry runs it again, and it completes.
        BROKEN.store(false, Ordering::SeqCst);
        click(
            client,
            &format!("tr[data-job-id='{id}'] button[data-action='retry']"),
        )
        .await;
        wait_state(&background, id, JobState::Completed).await;
        let state = poll("the page to show it completed", async || {
            let state = card_state(client).await;
            let shown = state["discarded"].as_array()?.is_empty()
                && state["counts"].as_array()?.contains(&json!("completed 1"))
                && state["actions"][0]
                    .as_str()
                    .is_some_and(|action| action.contains("fails_until_fixed: retried"));
            shown.then_some(state)
        })
        .await;
        assert!(
            state["counts"]
                .as_array()
                .unwrap()
                .contains(&json!("discarded 0")),
            "{state}"
        );
        save_screenshot(client, "admin-jobs.png").await;

        session.close().await;
        within("shutdown", background.shutdown(Duration::from_secs(5))).await;
    }
}
