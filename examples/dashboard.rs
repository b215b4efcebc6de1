//! The admin page over a live server: `cargo run --example dashboard --features admin`.
//!
//! A server with the admin router mounted at `/admin`, and a trickle of
//! requests that schedule tasks of every kind: each phase, both modes,
//! shielded ones, tasks that fail, panic, time out, retry, and long ones to
//! cancel from the page. It prints the page's URL, runs for a few seconds,
//! then shuts down gracefully and prints the report.
//!
//! `-- --serve` keeps it running until Ctrl-C (or SIGTERM); `-- --port 3000`
//! picks the port (by default, any free one). In a real application, mount
//! the admin router behind your own authentication.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum_background::{Background, BoxError, RetryPolicy, Tasks, shutdown_signal};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long the demo runs without `--serve`.
const DEMO_RUN: Duration = Duration::from_secs(8);
/// How long shielded tasks may run on at shutdown.
const GRACE: Duration = Duration::from_secs(3);
/// What a simulated panic says (the panic hook keeps these quiet).
const SIMULATED: &str = "simulated panic";

/// A small xorshift generator: varied durations without another dependency.
struct Dice(AtomicU64);

impl Dice {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |since| since.as_nanos() as u64);
        Dice(AtomicU64::new(seed | 1))
    }

    /// A number in `0..n`.
    fn below(&self, n: u64) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        x % n
    }

    /// A duration between `min` and `max` milliseconds.
    fn millis(&self, min: u64, max: u64) -> Duration {
        Duration::from_millis(min + self.below(max - min + 1))
    }
}

async fn send_welcome_email(delay: Duration) {
    tokio::time::sleep(delay).await;
}

async fn update_search_index(delay: Duration) {
    tokio::time::sleep(delay).await;
}

async fn charge_card(delay: Duration) -> Result<(), BoxError> {
    tokio::time::sleep(delay).await;
    Ok(())
}

async fn sync_crm(delay: Duration, fails: bool) -> Result<(), BoxError> {
    tokio::time::sleep(delay).await;
    if fails {
        return Err("CRM answered 502".into());
    }
    Ok(())
}

/// Fails its first attempt, then succeeds.
async fn notify_warehouse(tries: Arc<AtomicU32>, delay: Duration) -> Result<(), BoxError> {
    tokio::time::sleep(delay).await;
    match tries.fetch_add(1, Ordering::SeqCst) {
        0 => Err("warehouse connection reset".into()),
        _ => Ok(()),
    }
}

async fn signup(tasks: Tasks, State(dice): State<Arc<Dice>>) -> StatusCode {
    // Unnamed: the page shows the name derived from the async fn.
    tasks.schedule(send_welcome_email(dice.millis(500, 3000)));
    let audit = dice.millis(200, 800);
    tasks
        .after_route()
        .task()
        .name("write audit line")
        .build()
        .schedule(move || std::thread::sleep(audit));
    tasks
        .after_response()
        .schedule(update_search_index(dice.millis(1000, 5000)));
    StatusCode::CREATED
}

async fn order(tasks: Tasks, State(dice): State<Arc<Dice>>) -> StatusCode {
    tasks
        .task()
        .name("charge card")
        .shield(true)
        .build()
        .schedule(charge_card(dice.millis(500, 2500)));
    let render = dice.millis(800, 2500);
    tasks
        .task()
        .name("render invoice")
        .build()
        .schedule(move || std::thread::sleep(render));
    let tries = Arc::new(AtomicU32::new(0));
    let delay = dice.millis(200, 1000);
    tasks
        .after_response()
        .task()
        .name("notify warehouse")
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(300)))
        .build()
        .schedule(move || notify_warehouse(Arc::clone(&tries), delay));
    tasks
        .task()
        .name("quote shipping (slow partner API)")
        .timeout(Duration::from_millis(1500))
        .build()
        .schedule(tokio::time::sleep(dice.millis(300, 2200)));
    StatusCode::CREATED
}

async fn report(tasks: Tasks, State(dice): State<Arc<Dice>>) -> StatusCode {
    tasks
        .task()
        .name("export monthly report")
        .build()
        .schedule(tokio::time::sleep(dice.millis(10_000, 30_000)));
    tasks
        .after_route()
        .task()
        .name("sync CRM")
        .build()
        .schedule(sync_crm(dice.millis(300, 1500), dice.below(2) == 0));
    if dice.below(3) == 0 {
        tasks
            .after_response()
            .task()
            .name("parse upload")
            .build()
            .schedule(move || -> Result<(), BoxError> { panic!("{SIMULATED}: bad CSV row") });
    }
    StatusCode::ACCEPTED
}

/// Sends requests to `app` (through its layer, as a client would) until
/// `stop` is cancelled.
async fn trickle(app: Router, dice: Arc<Dice>, stop: CancellationToken) {
    let mut n: u64 = 0;
    loop {
        let uri = match dice.below(10) {
            0..=4 => "/signup",
            5..=8 => "/orders",
            _ => "/reports",
        };
        let request = Request::post(uri).body(Body::empty()).expect("a request");
        let Ok(response) = app.clone().oneshot(request).await;
        // Reading the body to its end is what starts after-response tasks.
        let _ = to_bytes(response.into_body(), usize::MAX).await;
        n += 1;
        let pause = dice.millis(150, 600);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    println!("sent {n} requests");
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve = args.iter().any(|arg| arg == "--serve");
    let port: u16 = match args.iter().position(|arg| arg == "--port") {
        Some(at) => args
            .get(at + 1)
            .ok_or("--port needs a number")?
            .parse()
            .map_err(|_| "--port needs a number")?,
        None => 0,
    };

    // The simulated panics are part of the show: keep them off the terminal.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied());
        if !message.is_some_and(|message| message.starts_with(SIMULATED)) {
            default_hook(info);
        }
    }));

    let background = Background::builder().max_blocking(4).build();
    let dice = Arc::new(Dice::new());
    let app = Router::new()
        .route("/signup", post(signup))
        .route("/orders", post(order))
        .route("/reports", post(report))
        .with_state(Arc::clone(&dice))
        // In a real application: behind the application's own authentication.
        .nest_service("/admin", background.admin_router())
        .layer(background.layer());

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("admin page: http://{addr}/admin/");
    if serve {
        println!("serving until Ctrl-C");
    } else {
        println!(
            "running for {} s (pass --serve to keep it running)",
            DEMO_RUN.as_secs()
        );
    }

    let stop = CancellationToken::new();
    let traffic = tokio::spawn(trickle(app.clone(), dice, stop.clone()));
    let stopped = stop.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            if serve {
                shutdown_signal().await;
            } else {
                tokio::time::sleep(DEMO_RUN).await;
            }
            stopped.cancel();
        })
        .await?;
    stop.cancel();
    traffic.await?;

    let report = background.shutdown(GRACE).await;
    let stats = background.stats();
    println!(
        "shutdown: {} completed, {} cancelled, {} overdue",
        report.finished.len(),
        report.cancelled.len(),
        report.overdue.len()
    );
    println!(
        "all told: {} scheduled; {} completed, {} failed, {} panicked, {} timed out, {} cancelled, {} rejected",
        stats.scheduled,
        stats.completed,
        stats.failed,
        stats.panicked,
        stats.timed_out,
        stats.cancelled,
        stats.rejected
    );
    Ok(())
}
