//! An email service, async: `cargo run --example email`.
//!
//! The guide's "Example 1: Email Service (Async)". Registering answers at
//! once; the welcome email is POSTed as JSON to a mail API only after the
//! response has been sent, by an async task (HTTP is I/O: async is the fit).
//! A second local axum server stands in for the mail API and prints what it
//! receives. Beyond the Python guide: the send is retried with backoff when
//! the API says "try again", and a send that still fails reaches `on_error`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use axum_background::{Background, BoxError, RetryPolicy, TaskError, TaskInfo, Tasks};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

/// What the mail API takes.
#[derive(Clone, Serialize, Deserialize)]
struct Mail {
    to: String,
    subject: String,
    body: String,
}

/// The async task: one POST to the mail API. `Err` makes the task fail.
async fn send_email_via_api(
    client: reqwest::Client,
    api: String,
    mail: Mail,
) -> Result<(), BoxError> {
    let response = client
        .post(format!("{api}/send"))
        .json(&mail)
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        let reason = response.text().await?;
        return Err(format!("mail API answered {status}: {reason}").into());
    }
    Ok(())
}

/// The application's state: one HTTP client (it pools connections) and where the mail API is.
#[derive(Clone)]
struct App {
    client: reqwest::Client,
    mail_api: String,
}

#[derive(Deserialize)]
struct Registration {
    email: String,
}

async fn register(
    tasks: Tasks,
    State(app): State<App>,
    Json(form): Json<Registration>,
) -> Json<Value> {
    let mail = Mail {
        to: form.email,
        subject: "Welcome".into(),
        body: "Thanks for registering!".into(),
    };
    tasks
        .after_response() // the client is not kept waiting for the mail API
        .task()
        .name("welcome_email")
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(50)))
        .on_error(email_failed)
        .build()
        // A retried task must be able to run again: this factory makes a fresh send per attempt.
        .schedule(move || {
            send_email_via_api(app.client.clone(), app.mail_api.clone(), mail.clone())
        });
    Json(json!({"status": "registered"}))
}

/// Where a send that failed every attempt goes (a real app might flag the account).
fn email_failed(info: &TaskInfo, error: &TaskError) {
    let (name, attempts) = (info.name.clone(), info.attempts);
    println!("app: on_error: {name} gave up after {attempts} attempts: {error}");
}

/// The stand-in mail API's state.
#[derive(Clone)]
struct MailApi {
    /// Greylisted addresses seen once (greylisting: "try again later" the first time).
    seen: Arc<Mutex<HashSet<String>>>,
    /// (Ordering only) `true` once the client has printed its line; keeps the output in order.
    client_printed: watch::Receiver<bool>,
}

/// The mail API: prints what it received, accepts it, or refuses it as a real one might.
async fn mail_api_send(State(api): State<MailApi>, body: String) -> (StatusCode, String) {
    let mut printed = api.client_printed.clone();
    let _ = printed.wait_for(|printed| *printed).await; // (ordering only)
    let mail: Mail = match serde_json::from_str(&body) {
        Ok(mail) => mail,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()),
    };
    let answer = if mail.to.ends_with("@invalid") {
        (StatusCode::UNPROCESSABLE_ENTITY, "no such domain")
    } else if mail.to.ends_with("@greylist.example") && api.seen.lock().unwrap().insert(mail.to) {
        (StatusCode::SERVICE_UNAVAILABLE, "greylisted, try again")
    } else {
        (StatusCode::ACCEPTED, "queued")
    };
    println!(
        "mail-api: received {body}; answered {} {:?}",
        answer.0, answer.1
    );
    (answer.0, answer.1.to_owned())
}

async fn serve(app: Router) -> Result<String, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(axum::serve(listener, app).into_future());
    Ok(base)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The crate logs each failed attempt and failure with `tracing` (to stderr here).
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    // 1. The mail API (in real life: https://api.emailservice.com).
    let (client_printed, printed_rx) = watch::channel(false);
    let mail_api = MailApi {
        seen: Arc::default(),
        client_printed: printed_rx,
    };
    let mail_api = serve(
        Router::new()
            .route("/send", post(mail_api_send))
            .with_state(mail_api),
    )
    .await?;
    println!("mail-api: listening on 127.0.0.1 (stands in for the real mail service)");

    // 2. The application.
    let background = Background::new();
    let client = reqwest::Client::new();
    let state = App {
        client: client.clone(),
        mail_api,
    };
    let router = Router::new()
        .route("/register", post(register))
        .with_state(state);
    let app = serve(router.layer(background.layer())).await?;

    // 3. Three sign-ups: accepted at once; greylisted, then accepted on retry;
    //    refused every time (a permanent error is retried too: the policy
    //    retries every `Err`), then handed to `on_error`.
    for email in ["ada@example.com", "bob@greylist.example", "eve@invalid"] {
        let form = json!({ "email": email });
        let response = client
            .post(format!("{app}/register"))
            .json(&form)
            .send()
            .await?;
        let (status, body) = (response.status(), response.text().await?);
        println!("client: POST /register {form} -> {status} {body}");
        client_printed.send_replace(true); // (ordering only) the mail API may print now
        background.wait_idle().await; // every attempt and handler has run
        client_printed.send_replace(false);
    }

    let stats = background.stats();
    let (scheduled, completed, failed) = (stats.scheduled, stats.completed, stats.failed);
    println!("app: {scheduled} welcome emails scheduled: {completed} sent, {failed} failed");
    Ok(())
}
