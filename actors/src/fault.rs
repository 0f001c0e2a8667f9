//! Fault injection, for tests: named points in the program panic on chosen
//! messages, or hold until a file appears.
//!
//! Supervision is only as good as its tests, and a test cannot wait for a
//! real bug to crash an actor. A program marks the places where an actor
//! takes a message with [`hit`] (or [`hit_keyed`], where messages belong to
//! something, such as a chat), and a test names which of them panic:
//!
//! - `router:5`: the router's 5th message panics;
//! - `outbox:3..`: the 3rd and every later one (a crash loop);
//! - `render:1..2`: the 1st and the 2nd;
//! - `session:chat_id=77:1`: the 1st message of chat 77's session.
//!
//! Rules are separated by commas. [`hold`] makes a point wait while a file
//! does not exist (`render=/tmp/gate`): work held there stays queued, as
//! behind a slow worker.
//!
//! Nothing is installed unless the program calls [`install`]; a point then
//! costs one load of an empty cell.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A rule that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault rule {rule:?}: {reason}")]
pub struct FaultSpecError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// One point's panics: messages `from` through `to` (inclusive; `None`:
/// every one from `from` on) of those that match `key`.
#[derive(Debug)]
struct Rule {
    point: String,
    key: Option<(String, String)>,
    from: u64,
    to: Option<u64>,
    seen: AtomicU64,
}

/// The panics and holds a program runs with.
#[derive(Debug, Default)]
pub struct Faults {
    panics: Vec<Rule>,
    holds: Vec<(String, PathBuf)>,
}

impl Faults {
    /// Reads `panics` (`point[:key=value]:N[..[M]]`, comma-separated) and
    /// `holds` (`point=path`, comma-separated). Empty strings: no faults.
    pub fn parse(panics: &str, holds: &str) -> Result<Faults, FaultSpecError> {
        let mut faults = Faults::default();
        for rule in panics.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            faults.panics.push(parse_rule(rule)?);
        }
        for rule in holds.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (point, path) = rule.split_once('=').ok_or(FaultSpecError {
                rule: rule.into(),
                reason: "expected point=path",
            })?;
            faults.holds.push((point.trim().into(), path.trim().into()));
        }
        Ok(faults)
    }

    /// Whether there is nothing to inject.
    pub fn is_empty(&self) -> bool {
        self.panics.is_empty() && self.holds.is_empty()
    }

    /// Counts a message at `point` (belonging to `key`, if given) and
    /// answers the panic message when this one is to panic.
    pub fn check(&self, point: &str, key: Option<(&str, &str)>) -> Option<String> {
        for rule in self.panics.iter().filter(|r| r.point == point) {
            if let Some((name, value)) = &rule.key
                && key != Some((name.as_str(), value.as_str()))
            {
                continue;
            }
            let n = rule.seen.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= rule.from && rule.to.is_none_or(|to| n <= to) {
                return Some(format!("injected fault: {point} message {n}"));
            }
        }
        None
    }

    /// The file `point` waits for, if it has one.
    pub fn gate(&self, point: &str) -> Option<&PathBuf> {
        self.holds.iter().find(|(p, _)| p == point).map(|(_, g)| g)
    }
}

fn parse_rule(rule: &str) -> Result<Rule, FaultSpecError> {
    let bad = |reason| FaultSpecError {
        rule: rule.into(),
        reason,
    };
    let mut parts: Vec<&str> = rule.split(':').collect();
    let range = parts.pop().ok_or(bad("empty"))?;
    let (point, key) = match parts.as_slice() {
        [point] => (*point, None),
        [point, key] => {
            let (name, value) = key.split_once('=').ok_or(bad("expected key=value"))?;
            (*point, Some((name.to_string(), value.to_string())))
        }
        _ => return Err(bad("expected point[:key=value]:N")),
    };
    if point.is_empty() {
        return Err(bad("no point named"));
    }
    let number = |s: &str| s.parse::<u64>().ok().filter(|n| *n > 0);
    let (from, to) = match range.split_once("..") {
        None => {
            let n = number(range).ok_or(bad("N must be a number from 1"))?;
            (n, Some(n))
        }
        Some((from, "")) => (number(from).ok_or(bad("N must be a number from 1"))?, None),
        Some((from, to)) => {
            let from = number(from).ok_or(bad("N must be a number from 1"))?;
            let to = number(to)
                .filter(|to| *to >= from)
                .ok_or(bad("M must be a number from N"))?;
            (from, Some(to))
        }
    };
    Ok(Rule {
        point: point.to_string(),
        key,
        from,
        to,
        seen: AtomicU64::new(0),
    })
}

static INSTALLED: OnceLock<Faults> = OnceLock::new();

/// Installs the process's faults; the first call wins. Empty faults are not
/// installed, so the points stay free.
pub fn install(faults: Faults) -> bool {
    !faults.is_empty() && INSTALLED.set(faults).is_ok()
}

/// A message at `point`: panics if a rule says so.
#[inline]
pub fn hit(point: &str) {
    if let Some(message) = INSTALLED.get().and_then(|f| f.check(point, None)) {
        panic!("{message}");
    }
}

/// A message at `point` that belongs to `key`=`value`.
#[inline]
pub fn hit_keyed(point: &str, key: &str, value: impl std::fmt::Display) {
    if let Some(faults) = INSTALLED.get()
        && let Some(message) = faults.check(point, Some((key, &value.to_string())))
    {
        panic!("{message}");
    }
}

/// Waits, blocking the thread, while `point`'s gate file does not exist.
pub fn hold(point: &str) {
    if let Some(gate) = INSTALLED.get().and_then(|f| f.gate(point)) {
        while !gate.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_message_panics_once() {
        let faults = Faults::parse("router:3", "").unwrap();
        let hits: Vec<bool> = (0..5)
            .map(|_| faults.check("router", None).is_some())
            .collect();
        assert_eq!(hits, [false, false, true, false, false]);
        assert!(faults.check("journal", None).is_none());
    }

    #[test]
    fn ranges_open_and_closed() {
        let faults = Faults::parse("a:2..3, b:2..", "").unwrap();
        let a: Vec<bool> = (0..5).map(|_| faults.check("a", None).is_some()).collect();
        let b: Vec<bool> = (0..5).map(|_| faults.check("b", None).is_some()).collect();
        assert_eq!(a, [false, true, true, false, false]);
        assert_eq!(b, [false, true, true, true, true]);
    }

    #[test]
    fn keyed_rules_count_only_their_key() {
        let faults = Faults::parse("session:chat_id=77:1", "").unwrap();
        assert!(faults.check("session", Some(("chat_id", "5"))).is_none());
        assert!(faults.check("session", None).is_none());
        let message = faults.check("session", Some(("chat_id", "77")));
        assert_eq!(
            message.as_deref(),
            Some("injected fault: session message 1")
        );
        assert!(faults.check("session", Some(("chat_id", "77"))).is_none());
    }

    #[test]
    fn bad_rules_are_refused_with_the_rule() {
        for bad in [
            "router", "router:0", "router:x", ":1", "a:3..2", "s:chat:1", "a:b:c:1",
        ] {
            let err = Faults::parse(bad, "").expect_err(bad);
            assert_eq!(err.rule, bad);
        }
        assert!(Faults::parse("", "render").is_err());
        assert!(Faults::parse(" , ", "").unwrap().is_empty());
    }

    #[test]
    fn holds_name_their_gate() {
        let faults = Faults::parse("", "render=/tmp/gate").unwrap();
        assert_eq!(faults.gate("render"), Some(&PathBuf::from("/tmp/gate")));
        assert_eq!(faults.gate("images"), None);
    }
}
