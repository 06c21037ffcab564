//! Repeat prank callers. In Indonesian 112 centers about a quarter of
//! calls are pranks, many from the same numbers. siaga never refuses or
//! blocks a number: the phone that pranked yesterday may report a real
//! fire today, and a child's prank line may be the only phone in a house.
//! A number with `prank_repeat` calls classified as pranks in the last
//! `prank_window` is answered, greeted and recorded like any caller, but
//! waits behind every other caller (`acd::Standing::Low`), and the
//! call-taker sees a "sering iseng" badge. A supervisor can clear a
//! number: only its later pranks count.
//!
//! A call never waits on the database for this: the counts live in
//! memory, read at intake, and are rebuilt from the database at the start,
//! when this node starts leading, after incidents change (debounced) and
//! every minute.

use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::warn;

/// One number, written one way: `0812…` for `+62812…`, `62812…` and
/// `0812…` alike (spaces, dashes and brackets dropped). Short numbers and
/// numbers of other countries are kept as their digits (and `+`).
pub fn normalise(number: &str) -> String {
    let plus = number.trim_start().starts_with('+');
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    match digits.strip_prefix("62") {
        Some(rest) if digits.len() >= 9 && !rest.starts_with('0') => format!("0{rest}"),
        _ if plus => format!("+{digits}"),
        _ => digits,
    }
}

/// How often the counts are rebuilt at most, and at least.
const AT_MOST_EVERY: Duration = Duration::from_secs(2);
const AT_LEAST_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Pranks {
    inner: Arc<Inner>,
}

struct Inner {
    /// Pranks counted per normalised number (those at or over the rule).
    counts: RwLock<HashMap<String, u32>>,
    repeat: u32,
    window: Duration,
    changed: Notify,
}

impl Pranks {
    pub fn new(repeat: u32, window: Duration) -> Pranks {
        Pranks {
            inner: Arc::new(Inner {
                counts: RwLock::default(),
                repeat,
                window,
                changed: Notify::new(),
            }),
        }
    }

    /// The number's pranks in the window, if it is a repeat prank caller;
    /// else 0.
    pub fn of(&self, number: Option<&str>) -> u32 {
        let Some(number) = number else { return 0 };
        let counts = self.inner.counts.read().unwrap_or_else(|e| e.into_inner());
        counts.get(&normalise(number)).copied().unwrap_or(0)
    }

    /// The repeat prank callers now, most pranks first.
    pub fn list(&self) -> Vec<(String, u32)> {
        let counts = self.inner.counts.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, u32)> = counts.iter().map(|(n, c)| (n.clone(), *c)).collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Something that may move a count happened: rebuild soon.
    pub fn changed(&self) {
        self.inner.changed.notify_one();
    }

    /// Rebuilds the counts from what the database holds.
    pub async fn load(&self, store: &Store, now_ms: i64) {
        if self.inner.repeat == 0 {
            return;
        }
        let since = now_ms - self.inner.window.as_millis() as i64;
        match store.pranks_since(since).await {
            Ok((pranks, clears)) => {
                let counts = count(&pranks, &clears, self.inner.repeat);
                *self.inner.counts.write().unwrap_or_else(|e| e.into_inner()) = counts;
            }
            Err(e) => warn!(error = %e, "repeat prank callers not reloaded; the last counts stand"),
        }
    }

    /// Keeps the counts current until the process ends.
    pub fn spawn(&self, store: Store) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.load(&store, crate::store::now_ms()).await;
                tokio::time::sleep(AT_MOST_EVERY).await;
                let _ = tokio::time::timeout(AT_LEAST_EVERY, this.inner.changed.notified()).await;
            }
        });
    }
}

/// Pranks per normalised number, after its clearing, for the numbers
/// with at least `repeat`.
fn count(pranks: &[(String, i64)], clears: &[(String, i64)], repeat: u32) -> HashMap<String, u32> {
    let cleared: HashMap<String, i64> = clears.iter().map(|(n, at)| (normalise(n), *at)).collect();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for (number, at) in pranks {
        let n = normalise(number);
        if cleared.get(&n).is_none_or(|c| at > c) {
            *counts.entry(n).or_default() += 1;
        }
    }
    counts.retain(|_, c| *c >= repeat);
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_indonesian_number_is_written_one_way() {
        for n in [
            "+62 812-3456-789",
            "62812 3456 789",
            "0812-3456-789",
            "(0812) 3456789",
        ] {
            assert_eq!(normalise(n), "08123456789", "{n}");
        }
        assert_eq!(normalise("112"), "112");
        assert_eq!(normalise("6212"), "6212", "too short to be +62");
        assert_eq!(normalise("+6562345678"), "+6562345678", "Singapore stays");
        assert_eq!(
            normalise("+62021555"),
            "+62021555",
            "+62 0… is not a number"
        );
    }

    /// Pranks count per number however it was written, only after the
    /// number's clearing, and only from `repeat` up.
    #[test]
    fn pranks_count_per_number_after_its_clearing() {
        let p = |n: &str, at: i64| (n.to_string(), at);
        let pranks = [
            p("+6281100001111", 10),
            p("081100001111", 20),
            p("6281100001111", 30),
            p("082200002222", 10),
            p("082200002222", 20),
            p("083300003333", 5),
            p("083300003333", 6),
            p("083300003333", 50),
        ];
        let clears = [p("+6283300003333", 10)];
        let counts = count(&pranks, &clears, 2);
        assert_eq!(counts.get("081100001111"), Some(&3));
        assert_eq!(counts.get("082200002222"), Some(&2));
        assert_eq!(
            counts.get("083300003333"),
            None,
            "one prank since the clearing"
        );
        assert_eq!(count(&pranks, &clears, 3).len(), 1);
    }
}
