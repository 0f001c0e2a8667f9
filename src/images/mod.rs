//! Photos users send, made ready for a PDF page.
//!
//! [`ImagePool`] is the actor in front of the image worker threads. For a
//! photo it checks the cache (by Telegram's `file_unique_id`, so a photo
//! sent twice is processed once), else asks getFile, downloads the file
//! into the temporary directory and hands its path to a worker, which
//! decodes, turns it upright, scales and re-encodes it ([`process`]).
//! Downloads wait on disk rather than in memory: a queue of 200 photos of
//! 20 MB each would otherwise hold 4 GB.

pub mod process;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use actorbot_actors::pool::{Failure, JobError, PoolConfig, SubmitError, WorkerPool};
use actorbot_actors::probe::{Probe, ProbeReport};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::config::Config;
use crate::health::memory::MemoryGauge;
use crate::metrics;
use crate::retune::Resize;
use crate::telegram::{BotApi, Endpoint, TelegramError};
use process::{ImageError, ImageLimits, ProcessedImage};

/// A photo as Telegram describes it: enough to fetch it again later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoRef {
    pub file_id: String,
    pub file_unique_id: String,
    /// What the user calls it: the file name, or "photo N".
    pub name: String,
    /// The size Telegram announced, when it did.
    pub size: Option<u64>,
}

/// Why a photo could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PhotoError {
    #[error("the file is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("could not fetch the file from Telegram: {0}")]
    Download(#[source] TelegramError),
    #[error(transparent)]
    Image(ImageError),
    #[error("the image workers are busy")]
    Busy,
    #[error("image processing failed: {0}")]
    Failed(String),
}

impl PhotoError {
    /// The reply that tells the user what became of `name`.
    pub fn user_text(&self, name: &str) -> String {
        match self {
            PhotoError::TooLarge { max } => format!(
                "{name} is too large: I can take files up to {} MB.",
                max / (1024 * 1024)
            ),
            PhotoError::Image(ImageError::TooManyPixels { width, height, .. }) => format!(
                "{name} is too large to process ({width} × {height} pixels). Please send a smaller image."
            ),
            PhotoError::Image(ImageError::TooLarge { max, .. }) => format!(
                "{name} is too large: I can take files up to {} MB.",
                max / (1024 * 1024)
            ),
            PhotoError::Image(ImageError::UnsupportedFormat | ImageError::Corrupt(_)) => format!(
                "I could not read {name}: it is not a JPEG or PNG image I can decode. It was not added."
            ),
            PhotoError::Busy => format!(
                "I am processing many photos right now and could not take {name}. Please send it again in a minute."
            ),
            PhotoError::Download(_) | PhotoError::Image(_) | PhotoError::Failed(_) => {
                format!("Something went wrong with {name}; it was not added. Please send it again.")
            }
        }
    }
}

/// A photo made ready, shared between the cache and the jobs that use it.
pub type Prepared = Arc<ProcessedImage>;

/// Makes a photo ready: cached, or fetched and processed.
#[derive(Message)]
#[rtype(result = "Result<Prepared, PhotoError>")]
pub struct Prepare {
    pub photo: PhotoRef,
    /// Higher runs first (an admin's photos, for one).
    pub priority: u8,
}

pub struct ImagePool {
    api: BotApi,
    pool: WorkerPool,
    cache: Arc<Cache>,
    limits: ImageLimits,
    temp_dir: PathBuf,
    processed: Arc<AtomicU64>,
    /// Past the memory limit's soft mark new photos are refused "busy".
    memory: MemoryGauge,
}

impl ImagePool {
    /// Starts the pool's threads, and answers what makes the actor on the
    /// thread it is to run on (its Bot API client is bound to that thread).
    pub fn builder(
        config: &Config,
        cache: Arc<Cache>,
        memory: MemoryGauge,
    ) -> std::io::Result<impl FnOnce() -> ImagePool + Send + 'static> {
        let pool = WorkerPool::new(PoolConfig {
            name: "images".into(),
            workers: config.worker_threads(),
            queue_capacity: config.image_queue_size,
            max_attempts: config.job_max_attempts,
        })?;
        let limits = ImageLimits {
            max_bytes: config.max_download_bytes,
            max_pixels: config.max_image_pixels,
            ..ImageLimits::default()
        };
        let endpoint = Endpoint::new(config).map_err(std::io::Error::other)?;
        let temp_dir = config.temp_dir();
        Ok(move || ImagePool {
            api: endpoint.client(),
            pool,
            cache,
            limits,
            temp_dir,
            processed: Arc::default(),
            memory,
        })
    }
}

impl Actor for ImagePool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.pool.close();
    }
}

/// A restart keeps the pool and its threads; the photos being prepared go
/// on in their own tasks. Only the request being taken when it crashed is
/// refused.
impl Supervised for ImagePool {}

impl Handler<Prepare> for ImagePool {
    type Result = ResponseFuture<Result<Prepared, PhotoError>>;

    fn handle(&mut self, msg: Prepare, _: &mut Self::Context) -> Self::Result {
        actorbot_actors::fault::hit("images");
        let api = self.api.clone();
        let pool = self.pool.clone();
        let cache = self.cache.clone();
        let limits = self.limits.clone();
        let temp_dir = self.temp_dir.clone();
        let processed = self.processed.clone();
        let memory = self.memory.clone();
        Box::pin(async move {
            let photo = msg.photo;
            let key = cache_key(&photo, &limits);
            if let Some(prepared) = cache.get(&key).await.and_then(|b| decode_cached(&b)) {
                metrics::IMAGES.with_label_values(&["cached"]).inc();
                return Ok(Arc::new(prepared));
            }
            if memory.refuses_jobs() {
                metrics::IMAGES.with_label_values(&["busy"]).inc();
                return Err(PhotoError::Busy);
            }
            let result =
                fetch_and_process(&api, &pool, &photo, msg.priority, &limits, &temp_dir).await;
            let outcome = match &result {
                Ok(_) => "processed",
                Err(PhotoError::Image(_) | PhotoError::TooLarge { .. }) => "refused",
                Err(_) => "failed",
            };
            metrics::IMAGES.with_label_values(&[outcome]).inc();
            let prepared = result.inspect_err(|err| match err {
                // The operator's to fix, not the user's photo.
                PhotoError::Download(TelegramError::Unusable { .. }) => {
                    log::error!("photo {}: {err}", photo.file_unique_id);
                }
                _ => log::info!("photo {} ({}): {err}", photo.file_unique_id, photo.name),
            })?;
            processed.fetch_add(1, Ordering::Relaxed);
            cache.put(&key, encode_cached(&prepared)).await;
            Ok(Arc::new(prepared))
        })
    }
}

impl Handler<Resize> for ImagePool {
    type Result = ();

    fn handle(&mut self, msg: Resize, _: &mut Self::Context) {
        self.pool.resize(msg.workers, msg.queue_capacity);
        log::info!(
            "image pool: {} workers, {} jobs may wait",
            msg.workers,
            msg.queue_capacity
        );
    }
}

impl Handler<Probe> for ImagePool {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let mut report: ProbeReport = self.pool.report();
        report.name = "images".into();
        report = report
            .detail("processed", self.processed.load(Ordering::Relaxed))
            .detail("cache", self.cache.backend());
        MessageResult(report)
    }
}

async fn fetch_and_process(
    api: &BotApi,
    pool: &WorkerPool,
    photo: &PhotoRef,
    priority: u8,
    limits: &ImageLimits,
    temp_dir: &Path,
) -> Result<ProcessedImage, PhotoError> {
    let max = limits.max_bytes;
    if photo.size.is_some_and(|size| size > max as u64) {
        return Err(PhotoError::TooLarge { max });
    }
    let file = with_retries(|| api.get_file(&photo.file_id))
        .await
        .map_err(|err| match &err {
            // Telegram's answer to a file over its download limit, where
            // the message did not say the size.
            TelegramError::Api {
                error_code: 400,
                description,
                ..
            } if description.contains("file is too big") => PhotoError::TooLarge { max },
            _ => PhotoError::Download(err),
        })?;
    if file.file_size.is_some_and(|size| size > max as u64) {
        return Err(PhotoError::TooLarge { max });
    }
    let Some(path) = file.file_path else {
        // Telegram gives no path for files over its own download limit.
        return Err(PhotoError::TooLarge { max });
    };
    let bytes = with_retries(|| api.download_file(&path, max))
        .await
        .map_err(|err| match err {
            TelegramError::Refused { .. } => PhotoError::TooLarge { max },
            other => PhotoError::Download(other),
        })?;
    // Off the event loop: a 20 MB write would stall every actor on it.
    let dir = temp_dir.to_path_buf();
    let download = tokio::task::spawn_blocking(move || TempFile::write(&dir, "photo", &bytes))
        .await
        .map_err(|err| PhotoError::Failed(err.to_string()))?
        .map_err(|err| PhotoError::Failed(format!("cannot write a temporary file: {err}")))?;
    let source = download.path().to_path_buf();
    let job_limits = limits.clone();
    let handle = pool
        .submit(priority, move || {
            let bytes = std::fs::read(&source)
                .map_err(|err| Failure::Fatal(PhotoError::Failed(err.to_string())))?;
            process::process(&bytes, &job_limits)
                .map_err(|err| Failure::Fatal(PhotoError::Image(err)))
        })
        .map_err(|err| match err {
            SubmitError::Busy { .. } => PhotoError::Busy,
            SubmitError::Closed => PhotoError::Failed("the image pool is closed".into()),
        })?;
    // The file goes when this function returns, whatever the job did.
    let result = handle.await;
    drop(download);
    result.map_err(|err| match err {
        JobError::Failed(err) => err,
        other => PhotoError::Failed(other.to_string()),
    })
}

/// Attempts at a getFile or a download that fails for a passing reason.
const FETCH_ATTEMPTS: u32 = 3;

/// Runs `call` again after a short pause while it fails transiently (a
/// network error, a 5xx, a 429), up to [`FETCH_ATTEMPTS`] times.
async fn with_retries<T, F, Fut>(call: F) -> Result<T, TelegramError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, TelegramError>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(err) if err.is_transient() && attempt < FETCH_ATTEMPTS => {
                let pause = err
                    .retry_after()
                    .unwrap_or(Duration::from_millis(250 * u64::from(attempt)));
                log::debug!("fetching a photo failed ({err}); again in {pause:?}");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Keys a processed photo by the file and the settings that shaped it.
fn cache_key(photo: &PhotoRef, limits: &ImageLimits) -> String {
    format!(
        "{}:{}x{}q{}",
        photo.file_unique_id, limits.target_width, limits.target_height, limits.jpeg_quality
    )
}

/// The cached form: width and height (little-endian u32) before the JPEG.
fn encode_cached(image: &ProcessedImage) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + image.jpeg.len());
    bytes.extend_from_slice(&image.width.to_le_bytes());
    bytes.extend_from_slice(&image.height.to_le_bytes());
    bytes.extend_from_slice(&image.jpeg);
    bytes
}

fn decode_cached(bytes: &[u8]) -> Option<ProcessedImage> {
    let width = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
    let height = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let jpeg = bytes.get(8..)?.to_vec();
    (!jpeg.is_empty()).then_some(ProcessedImage {
        jpeg,
        width,
        height,
        source_format: "jpeg",
        rotated: false,
    })
}

/// A file in the temporary directory, removed when dropped: on success, on
/// error and while unwinding from a panic alike. The cleanup scheduler
/// sweeps what a killed process left behind.
pub struct TempFile {
    path: PathBuf,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl TempFile {
    pub fn write(dir: &Path, prefix: &str, bytes: &[u8]) -> std::io::Result<TempFile> {
        std::fs::create_dir_all(dir)?;
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{prefix}-{}-{seq}.tmp", std::process::id()));
        let file = TempFile { path };
        std::fs::write(&file.path, bytes)?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("could not remove {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_go_on_drop_and_on_unwind() {
        let dir = std::env::temp_dir().join(format!("actorbot-temp-{}", std::process::id()));
        let kept = TempFile::write(&dir, "t", b"abc").unwrap();
        let path = kept.path().to_path_buf();
        assert!(path.exists());
        drop(kept);
        assert!(!path.exists());

        let dir2 = dir.clone();
        let seen = std::panic::catch_unwind(move || {
            let file = TempFile::write(&dir2, "t", b"abc").unwrap();
            let path = file.path().to_path_buf();
            assert!(path.exists());
            std::panic::panic_any(path);
        })
        .unwrap_err();
        let path = seen.downcast::<PathBuf>().unwrap();
        assert!(!path.exists(), "a panic must not leave the file behind");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cached_form_round_trips() {
        let image = ProcessedImage {
            jpeg: vec![0xFF, 0xD8, 1, 2, 3],
            width: 1240,
            height: 877,
            source_format: "png",
            rotated: true,
        };
        let back = decode_cached(&encode_cached(&image)).unwrap();
        assert_eq!((back.width, back.height), (1240, 877));
        assert_eq!(back.jpeg, image.jpeg);
        assert!(decode_cached(&[1, 2, 3]).is_none());
        assert!(
            decode_cached(&encode_cached(&ProcessedImage {
                jpeg: vec![],
                ..image
            }))
            .is_none()
        );
    }
}
