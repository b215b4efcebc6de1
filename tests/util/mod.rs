//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum_background::Stats;

/// Awaits `future`, failing the test if it takes longer than 10 s.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// A fresh SQLite file for `test`, in `dir` under the target directory
/// (the file and its WAL companions removed).
pub fn fresh_sqlite(dir: &str, test: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    std::fs::create_dir_all(&dir).expect("the test's directory");
    let path = dir.join(format!("{test}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// Serves `app` on 127.0.0.1 (port 0) in a spawned task; returns its address.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    addr
}

/// An ordered log of events, shared between tasks and the test.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    pub fn push(&self, event: impl Into<String>) {
        self.0.lock().unwrap().push(event.into());
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Position of `event` in the log; panics with the log if absent.
    pub fn position(&self, event: &str) -> usize {
        let events = self.snapshot();
        events
            .iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("{event:?} not in {events:?}"))
    }
}

/// The invariant that holds whenever nothing is changing: nothing queued or
/// running, and every scheduled task counted under exactly one outcome.
pub fn assert_settled(stats: Stats) {
    assert_eq!((stats.queued, stats.running), (0, 0), "{stats:?}");
    assert_eq!(stats.scheduled, stats.ended(), "{stats:?}");
    assert_eq!(
        stats.scheduled,
        stats.completed
            + stats.failed
            + stats.panicked
            + stats.timed_out
            + stats.cancelled
            + stats.rejected,
        "{stats:?}"
    );
}

/// Busy threads that keep every core loaded until dropped: races that need a
/// descheduled runtime worker to show up do show up under it.
pub struct CpuLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    /// Starts `threads` spinning threads.
    pub fn start(threads: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Sets its flag when dropped: tells a test when a task's future is gone.
pub struct DropFlag(pub Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The tasks of a shutdown report's list.
pub fn infos(entries: &[axum_background::ShutdownEntry]) -> Vec<axum_background::TaskInfo> {
    entries.iter().map(|entry| entry.info.clone()).collect()
}

/// Installs `subscriber` for this thread only, as
/// `tracing::subscriber::set_default` does, safe among parallel tests.
///
/// While only one dispatcher is alive, tracing caches a callsite's interest
/// from the dispatcher of whichever thread hits it first: a callsite first hit
/// by a parallel test (no subscriber) would be "never" for this one too. A
/// second, idle dispatcher kept alive makes tracing ask every live dispatcher
/// instead.
pub fn set_default(
    subscriber: impl tracing::Subscriber + Send + Sync + 'static,
) -> tracing::subscriber::DefaultGuard {
    static IDLE: OnceLock<tracing::Dispatch> = OnceLock::new();
    IDLE.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    tracing::subscriber::set_default(subscriber)
}

/// A tracing writer into a shared buffer.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Installs a subscriber at `level` writing here, for this thread only:
    /// on a current-thread runtime the async tasks log on this thread too.
    pub fn install(&self, level: tracing::Level) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(level)
            .finish();
        set_default(subscriber)
    }

    pub fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
