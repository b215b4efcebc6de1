//! Image processing, sync: `cargo run --example thumbnail`.
//!
//! The guide's "Example 2: Image Processing (Sync)". The `image` crate, like
//! PIL, is synchronous: decoding and resizing keep a thread busy. So the
//! thumbnail is a sync task (`type Mode = mode::Sync`), run on tokio's
//! blocking pool while the runtime goes on serving requests. (`BlockingTask`
//! is the shorthand for such a task: a plain `fn run`, nothing to await.)
//!
//! The example draws a 1200x800 gradient, uploads it to itself, and the
//! upload handler saves it and schedules the thumbnail, written next to it.
//! Lines starting with `[path]` or `[timing]` differ between runs and machines.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use axum_background::{
    Background, BackgroundTask, BoxError, TaskConfig, TaskError, TaskInfo, Tasks, mode,
};
use bytes::Bytes;
use image::imageops::FilterType;
use image::{ImageFormat, Rgb, RgbImage};
use serde_json::{Value, json};

/// The thumbnail's side, in pixels.
const SIDE: u32 = 200;

/// A sync task: the work is blocking, and it runs where blocking is fine.
struct Thumbnail {
    image: PathBuf,
}

impl BackgroundTask for Thumbnail {
    type Mode = mode::Sync; // runs on the blocking pool: blocking calls are fine here

    async fn run(self) -> Result<(), BoxError> {
        let image = image::open(&self.image)?; // reads and decodes the PNG
        // PIL's `img.thumbnail((200, 200))` keeps the aspect ratio (1200x800
        // gives 200x133); `resize_to_fill` crops to the centre for a square.
        let thumbnail = image.resize_to_fill(SIDE, SIDE, FilterType::Triangle);
        thumbnail.to_rgb8().save(thumbnail_path(&self.image))?; // JPEG, from the extension
        Ok(())
    }
}

/// `uploads/gradient.png` -> `uploads/gradient.thumb.jpg`.
fn thumbnail_path(image: &std::path::Path) -> PathBuf {
    image.with_extension("thumb.jpg")
}

/// Saves the upload, schedules its thumbnail, answers at once.
async fn upload(
    tasks: Tasks,
    State(dir): State<Arc<PathBuf>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), (StatusCode, &'static str)> {
    let safe = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || !name.chars().all(safe) {
        return Err((StatusCode::BAD_REQUEST, "bad file name"));
    }
    if image::guess_format(&body).ok() != Some(ImageFormat::Png) {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, "send a PNG"));
    }
    let image = dir.join(format!("{name}.png"));
    let saved = tokio::fs::write(&image, &body).await; // async I/O in the handler
    saved.map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "cannot save the upload"))?;
    tasks.schedule(Thumbnail { image }); // starts now, on the blocking pool; not awaited
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "uploaded"}))))
}

/// A 1200x800 gradient: red across, green down, blue constant.
fn gradient_png() -> Result<Vec<u8>, BoxError> {
    let (width, height) = (1200, 800);
    let image = RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 160])
    });
    let mut png = Cursor::new(Vec::new());
    image.write_to(&mut png, ImageFormat::Png)?;
    Ok(png.into_inner())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Uploads go to a fresh directory under the system's temporary directory.
    let dir =
        std::env::temp_dir().join(format!("axum-background-thumbnail-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("[path] uploads directory: {}", dir.display());

    // A task that fails is logged and reported here (a real app might alert).
    let report =
        |info: &TaskInfo, error: &TaskError| eprintln!("task {} failed: {error}", info.name);
    let defaults = TaskConfig::builder().on_error(report).build();
    let background = Background::builder().default_config(defaults).build();
    let app = Router::new()
        .route("/upload/{name}", post(upload))
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024)) // photos often exceed axum's 2 MB default
        .with_state(Arc::new(dir.clone()))
        .layer(background.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(axum::serve(listener, app).into_future());

    let png = gradient_png()?;
    println!(
        "client: drew a 1200x800 gradient, {} bytes as PNG",
        png.len()
    );
    let sent = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{base}/upload/gradient"))
        .body(png)
        .send()
        .await?;
    let answered = sent.elapsed();
    let (status, body) = (response.status(), response.text().await?);
    println!("client: POST /upload/gradient -> {status} {body}");

    background.wait_idle().await; // the thumbnail task has ended
    let done = sent.elapsed();
    let stats = background.stats();
    assert_eq!(
        (stats.completed, stats.failed),
        (1, 0),
        "the thumbnail task failed"
    );

    // Check the result as a reader would: open the files.
    let image = dir.join("gradient.png");
    let thumbnail = thumbnail_path(&image);
    for path in [&image, &thumbnail] {
        let (width, height) = image::image_dimensions(path)?;
        let bytes = std::fs::metadata(path)?.len();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        println!("file: {name}: {width}x{height}, {bytes} bytes");
        println!("[path]   {}", path.display());
    }
    assert_eq!(image::image_dimensions(&thumbnail)?, (SIDE, SIDE));
    println!("thumbnail verified: {SIDE}x{SIDE}");
    println!("[timing] response after {} ms", answered.as_millis());
    println!(
        "[timing] thumbnail ready {} ms after the upload was sent",
        done.as_millis()
    );
    std::fs::remove_dir_all(&dir)?; // leave nothing behind
    Ok(())
}
