//! Blocking detection: an async task whose poll holds its worker thread past
//! the threshold is logged once (from the watchdog thread, so this binary
//! installs a global subscriber), and marked in its info; sync tasks and
//! well-behaved async tasks are not.

use std::sync::OnceLock;
use std::time::Duration;

use axum_background::{Background, BlockingTask};

mod util;
use util::within;

const THRESHOLD: Duration = Duration::from_millis(40);

/// The WARN lines of this process.
fn log() -> &'static util::Captured {
    static LOG: OnceLock<util::Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = util::Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        log
    })
}

fn blocking_lines(name: &str) -> Vec<String> {
    log()
        .lines()
        .into_iter()
        .filter(|line| line.contains("blocking its runtime worker thread") && line.contains(name))
        .collect()
}

struct SleepsOnItsThread;

impl BlockingTask<()> for SleepsOnItsThread {
    fn run(self) {
        std::thread::sleep(THRESHOLD * 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_that_holds_its_thread_is_logged_once_and_marked() {
    log();
    let background = Background::builder()
        .detect_blocking(Some(THRESHOLD))
        .build();
    let blocks = background
        .task()
        .name("blocks-twice")
        .build()
        .schedule(async {
            std::thread::sleep(THRESHOLD * 5); // the mistake: a blocking call on the runtime
            tokio::task::yield_now().await;
            std::thread::sleep(THRESHOLD * 5); // again, in a second poll
        });
    let polite = background.task().name("polite").build().schedule(async {
        tokio::time::sleep(THRESHOLD * 5).await;
    });
    let sync = background
        .task()
        .name("sync-sleeps")
        .build()
        .schedule(SleepsOnItsThread);
    for handle in [&blocks, &polite, &sync] {
        within("the task", handle.outcome())
            .await
            .expect("it completes");
    }

    let held = blocks.info().blocked.expect("marked as blocking");
    assert!(held >= THRESHOLD, "held {held:?}");
    let lines = blocking_lines("blocks-twice");
    assert_eq!(lines.len(), 1, "logged once: {lines:?}");
    assert!(lines[0].contains("WARN"), "{lines:?}");
    assert!(lines[0].contains("held_ms="), "{lines:?}");
    assert_eq!(polite.info().blocked, None);
    assert_eq!(sync.info().blocked, None, "a sync task's thread is its own");
    assert!(blocking_lines("polite").is_empty() && blocking_lines("sync-sleeps").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_can_be_turned_off() {
    log();
    let background = Background::builder().detect_blocking(None).build();
    let blocks = background.task().name("unwatched").build().schedule(async {
        std::thread::sleep(THRESHOLD * 5);
    });
    within("the task", blocks.outcome())
        .await
        .expect("it completes");
    assert_eq!(blocks.info().blocked, None);
    assert!(blocking_lines("unwatched").is_empty());
}
