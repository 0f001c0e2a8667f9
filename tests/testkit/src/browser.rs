//! Loads a page in headless Chromium and reports what a person opening it
//! would have seen: the DOM after the page's scripts ran, a PNG screenshot,
//! and every console message or uncaught exception.
//!
//! One browser run does both `--dump-dom` and `--screenshot`. The `wait`
//! given to [`check_page`] is page time, passed as `--virtual-time-budget`:
//! Chromium fast-forwards timers whenever the page is not waiting on the
//! network, so letting a page with a 5 s refresh run for 12 s takes about
//! two or three seconds of real time while real HTTP requests still happen.
//! A real-time deadline on top kills the browser if it hangs anyway.
//!
//! Console capture relies on `--enable-logging=stderr --v=0`. Chromium 156
//! (Debian bookworm) prints each console message of a web page as
//!
//! ```text
//! [pid:tid:MMDD/HHMMSS.micros:INFO:CONSOLE:12] "message", source: http://host/page (12)
//! ```
//!
//! (older builds write `CONSOLE(12)`), and a message containing newlines
//! continues over the following lines. Uncaught exceptions and unhandled
//! rejections arrive the same way, as `"Uncaught …"`. For ordinary web pages
//! Chromium logs every console level at INFO, so `console.log` cannot be told
//! apart from `console.error`: [`PageCheck::console_errors`] holds all
//! console output, and pages under test are expected to log nothing at all.
//!
//! The only lines set aside are `Failed to load resource: …`, which some
//! Chromium builds emit for HTTP errors on subresources; they go to
//! [`PageCheck::network_errors`] so a test can provoke a 500 on purpose.
//! Chromium 156 does not emit them for `fetch` errors (500, refused
//! connection) or missing images and scripts, so in practice that list
//! stays empty. The rest of stderr (D-Bus, GPU and sandbox chatter, the
//! Debian launcher's own shell warnings) is ignored, except that
//! `Page load failed:` turns into an error because nothing was checked.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The outcome of [`check_page`].
#[derive(Debug, Clone)]
pub struct PageCheck {
    /// The serialized DOM once the page's time budget ran out.
    pub dom: String,
    /// Console messages of any level and uncaught exceptions, each as
    /// `message (source: url (line))`.
    pub console_errors: Vec<String>,
    /// `Failed to load resource` lines, kept apart from `console_errors`
    /// because they describe the server's answers rather than page bugs.
    pub network_errors: Vec<String>,
    /// The screenshot path, if Chromium wrote a non-empty file there.
    pub screenshot: Option<PathBuf>,
}

const BROWSER_NAMES: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// Real time allowed on top of the page-time budget for starting the browser,
/// network waits (which pause virtual time) and writing the outputs.
const STARTUP_SLACK: Duration = Duration::from_secs(60);

/// Finds a Chromium or Chrome binary on `PATH`; `None` lets tests skip
/// instead of fail on machines without a browser.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    BROWSER_NAMES.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Opens `url` in headless Chromium, lets it run for `wait` of page time,
/// and returns its DOM, console output and a 1400×1000 screenshot written to
/// `screenshot`.
///
/// Fails if no browser is installed, the browser exits unsuccessfully, the
/// page does not load, or the run overruns `wait` plus a minute of real time
/// (the browser is then killed).
pub fn check_page(url: &str, screenshot: &Path, wait: Duration) -> io::Result<PageCheck> {
    let browser = chromium().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("none of {BROWSER_NAMES:?} found on PATH"),
        )
    })?;
    let scratch = ScratchDir::new()?;

    // A stale file from an earlier run must not pass for this run's screenshot.
    match fs::remove_file(screenshot) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if let Some(parent) = screenshot.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }

    let dom_path = scratch.0.join("dom.html");
    let log_path = scratch.0.join("stderr.log");
    let budget_ms = wait.as_millis().max(1);

    let mut cmd = Command::new(&browser);
    cmd.arg("--headless=new")
        // Tests run as root, where the sandbox refuses to start.
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        // Container /dev/shm is often 64 MB, too small for the renderer.
        .arg("--disable-dev-shm-usage")
        .arg(format!(
            "--user-data-dir={}",
            scratch.0.join("profile").display()
        ))
        .arg(format!(
            "--disk-cache-dir={}",
            scratch.0.join("cache").display()
        ))
        .args([
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,1000",
        ])
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        // Files instead of pipes: nothing has to drain them while we poll,
        // and Chromium can be very chatty on stderr.
        .stdout(File::create(&dom_path)?)
        .stderr(File::create(&log_path)?);
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, so a timeout can take down the renderer and
        // GPU helpers together with the browser process.
        cmd.process_group(0);
    }

    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + wait + STARTUP_SLACK;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            let log = read_lossy(&log_path);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} overran {:?} on {url}; stderr tail:\n{}",
                    browser.display(),
                    wait + STARTUP_SLACK,
                    tail(&log)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    let log = read_lossy(&log_path);
    if !status.success() {
        return Err(io::Error::other(format!(
            "{} exited with {status} on {url}; stderr tail:\n{}",
            browser.display(),
            tail(&log)
        )));
    }
    if let Some(line) = log.lines().find(|l| l.contains("Page load failed")) {
        return Err(io::Error::other(format!("{url}: {line}")));
    }
    let dom = read_lossy(&dom_path);
    if dom.trim().is_empty() {
        return Err(io::Error::other(format!(
            "{} printed no DOM for {url}; stderr tail:\n{}",
            browser.display(),
            tail(&log)
        )));
    }

    let (network_errors, console_errors): (Vec<String>, Vec<String>) = console_messages(&log)
        .into_iter()
        .partition(|m| m.starts_with("Failed to load resource"));
    let screenshot = fs::metadata(screenshot)
        .is_ok_and(|m| m.len() > 0)
        .then(|| screenshot.to_path_buf());
    Ok(PageCheck {
        dom,
        console_errors,
        network_errors,
        screenshot,
    })
}

fn kill_group(child: &mut Child) {
    // std has no killpg; the group id is the child's pid and the child is
    // not reaped yet, so the id cannot have been reused.
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Extracts console messages from Chromium's stderr log.
fn console_messages(log: &str) -> Vec<String> {
    const END: &str = "\", source: ";
    // A message body can contain newlines; cap how far we follow one so a
    // missing terminator cannot swallow the rest of the log.
    const MAX_LINES: usize = 200;

    let mut out = Vec::new();
    let mut lines = log.lines();
    while let Some(line) = lines.next() {
        let Some(body) = console_body(line) else {
            continue;
        };
        let mut text = body.to_owned();
        let mut taken = 0;
        while !text.contains(END) && taken < MAX_LINES {
            let Some(next) = lines.next() else { break };
            text.push('\n');
            text.push_str(next);
            taken += 1;
        }
        let text = text.strip_prefix('"').unwrap_or(&text);
        out.push(match text.rsplit_once(END) {
            Some((message, source)) => format!("{message} (source: {source})"),
            None => text.to_owned(),
        });
    }
    out
}

/// The part after `] ` of a `[…:CONSOLE:12]` or `[…:CONSOLE(12)]` log line.
fn console_body(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let (prefix, body) = rest.split_once("] ")?;
    let marker = prefix.rfind(":CONSOLE")?;
    let after = &prefix[marker + ":CONSOLE".len()..];
    (after.starts_with(':') || after.starts_with('(')).then_some(body)
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A per-run directory for the profile, cache and captured output, removed
/// on drop so parallel tests never share browser state.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> io::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "actorbot-chromium-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_console_lines_of_both_formats_and_multiline_messages() {
        let log = "\
/usr/bin/chromium: 9: [: 25274986496: unexpected operator
[1:2:1125/114254.958873:ERROR:dbus/bus.cc:405] Failed to connect to the bus
[3:3:1125/114256.140189:INFO:CONSOLE:2] \"my error\", source: http://h/p (2)
[3:3:1125/114256.152825:INFO:CONSOLE:5] \"Uncaught (in promise) Error: x\", source: http://h/p (5)
[3:3:1125/114631.681418:INFO:CONSOLE:2] \"Error: multi
line\", source: http://h/p (2)
[3:3:1125/114631.700000:INFO:CONSOLE(7)] \"Failed to load resource: the server responded with a status of 500 ()\", source: http://h/actors (0)
6363 bytes written to file /tmp/s.png
";
        assert_eq!(
            console_messages(log),
            vec![
                "my error (source: http://h/p (2))",
                "Uncaught (in promise) Error: x (source: http://h/p (5))",
                "Error: multi\nline (source: http://h/p (2))",
                "Failed to load resource: the server responded with a status of 500 () (source: http://h/actors (0))",
            ]
        );
    }

    #[test]
    fn ignores_non_console_lines_that_mention_console() {
        assert_eq!(console_body("[1:2:x:INFO:foo.cc:1] CONSOLE: \"x\""), None);
        assert_eq!(console_body("[1:2:x:INFO:CONSOLEX:1] \"x\""), None);
    }
}
