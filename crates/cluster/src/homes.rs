//! Each terminal's home: the instance its requests arrive at, kept in the bucket
//! `<prefix>_homes` (terminal id in hex → instance id) and copied into every instance by a
//! watch, so that asking "is this terminal at home here?" costs no round trip. A request of
//! a terminal at home is claimed behind (see the router's `SharedConfig::claims_behind`);
//! elsewhere it is claimed synchronously and the instance names itself the terminal's home.
//!
//! The copy counts only while its watch runs and has caught up with the bucket; a lost
//! watch empties it (every request claimed synchronously) until it has caught up again.
//! Writes are plain puts: the bucket's order is every instance's order, so the last
//! instance to name itself is the home everywhere, once the watch has brought it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;

/// How long a terminal's home is kept without a move (a terminal silent for a day is
/// claimed synchronously at its next request, then at home again).
pub(crate) const HOMES_TTL: Duration = Duration::from_secs(24 * 3600);

/// The most terminals whose homes are copied; past it, new terminals are claimed
/// synchronously (their homes are still written, only not copied here).
const MAX_HOMES: usize = 1_000_000;

/// A move of a terminal's home is not asked again within this time (its watch brings it
/// back in milliseconds; until then its requests are claimed synchronously anyway).
const MOVE_AGAIN_AFTER: Duration = Duration::from_secs(2);
const MAX_MOVING: usize = 10_000;

/// A terminal's home as this instance last heard it, and since when (here).
#[derive(Debug)]
struct Home {
    instance: String,
    since: Instant,
}

/// This instance's copy of the homes.
#[derive(Debug)]
pub(crate) struct Homes {
    instance: String,
    settle: Duration,
    current: RwLock<HashMap<String, Home>>,
    caught_up: AtomicBool,
    moving: Mutex<HashMap<String, Instant>>,
}

impl Homes {
    /// Homes as `instance` sees them; a terminal counts as at home here `settle` after it
    /// came.
    pub(crate) fn new(instance: &str, settle: Duration) -> Homes {
        Homes {
            instance: instance.to_string(),
            settle,
            current: RwLock::default(),
            caught_up: AtomicBool::new(false),
            moving: Mutex::default(),
        }
    }

    /// Whether the group last named this instance the home of `terminal` (hex), and that
    /// at least `settle` ago.
    pub(crate) fn at_home(&self, terminal: &str) -> bool {
        self.caught_up.load(Ordering::Acquire)
            && self.current.read().is_ok_and(|c| {
                c.get(terminal).is_some_and(|h| {
                    h.instance == self.instance && h.since.elapsed() >= self.settle
                })
            })
    }

    /// Whether the group last named this instance the home of `terminal`, however lately.
    pub(crate) fn named_here(&self, terminal: &str) -> bool {
        self.current
            .read()
            .is_ok_and(|c| c.get(terminal).is_some_and(|h| h.instance == self.instance))
    }

    /// Whether to ask for `terminal`'s move here now (not asked within
    /// [`MOVE_AGAIN_AFTER`]).
    pub(crate) fn start_move(&self, terminal: &str) -> bool {
        let Ok(mut moving) = self.moving.lock() else {
            return false;
        };
        let now = Instant::now();
        if moving.len() >= MAX_MOVING {
            moving.retain(|_, at| now.duration_since(*at) < MOVE_AGAIN_AFTER);
        }
        match moving.get(terminal) {
            Some(at) if now.duration_since(*at) < MOVE_AGAIN_AFTER => false,
            _ if moving.len() >= MAX_MOVING => false,
            _ => {
                moving.insert(terminal.to_string(), now);
                true
            }
        }
    }

    fn apply(&self, entry: kv::Entry) {
        let home = match entry.operation {
            kv::Operation::Put => std::str::from_utf8(&entry.value).ok(),
            _ => None,
        };
        self.set(entry.key, home, entry.seen_current);
    }

    /// `terminal`'s home is now `home` (none: deleted); `seen_current`: the watch has
    /// caught up with the bucket.
    fn set(&self, terminal: String, home: Option<&str>, seen_current: bool) {
        if let Ok(mut current) = self.current.write() {
            match home {
                Some(instance) if current.len() < MAX_HOMES || current.contains_key(&terminal) => {
                    // The same home named again keeps its time.
                    if current
                        .get(&terminal)
                        .is_none_or(|h| h.instance != instance)
                    {
                        let instance = instance.to_string();
                        let since = Instant::now();
                        current.insert(terminal, Home { instance, since });
                    }
                }
                Some(_) => {}
                None => {
                    current.remove(&terminal);
                }
            }
        }
        if seen_current {
            self.caught_up.store(true, Ordering::Release);
        }
    }

    fn lost(&self) {
        self.caught_up.store(false, Ordering::Release);
        if let Ok(mut current) = self.current.write() {
            current.clear();
        }
    }
}

/// Keep `homes` a copy of the bucket `name`: watch it (its last entries first, then every
/// change); when the watch fails, empty the copy and watch again a second later.
pub(crate) async fn watch(
    js: jetstream::Context,
    name: String,
    replicas: usize,
    homes: Arc<Homes>,
) {
    loop {
        let watched = async {
            let store = crate::shared::bucket(
                &js,
                &name,
                HOMES_TTL,
                replicas,
                jetstream::stream::StorageType::Memory,
            )
            .await
            .map_err(|e| e.0)?;
            let mut entries = store
                .watch_with_history(">")
                .await
                .map_err(|e| e.to_string())?;
            while let Some(entry) = entries.next().await {
                homes.apply(entry.map_err(|e| e.to_string())?);
            }
            Err::<(), String>("the watch ended".into())
        }
        .await;
        homes.lost();
        if let Err(why) = watched {
            tracing::warn!(reason = %why, "terminal homes: watch lost; every request claimed synchronously until it is back");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_is_at_home_only_once_the_copy_has_caught_up() {
        let homes = Homes::new("a", Duration::ZERO);
        homes.set("t1".into(), Some("a"), false);
        assert!(!homes.at_home("t1"), "still catching up");
        homes.set("t2".into(), Some("b"), true);
        assert!(homes.at_home("t1"));
        assert!(!homes.at_home("t2"), "another instance's");
        homes.set("t1".into(), Some("b"), true);
        assert!(!homes.at_home("t1"), "moved");
        homes.set("t2".into(), Some("a"), true);
        homes.set("t2".into(), None, true);
        assert!(!homes.at_home("t2"), "deleted");
        homes.set("t3".into(), Some("a"), true);
        homes.lost();
        assert!(!homes.at_home("t3"), "the watch lost");
    }

    #[test]
    fn a_terminal_that_came_lately_is_not_at_home_yet() {
        let homes = Homes::new("a", Duration::from_millis(50));
        homes.set("t1".into(), Some("a"), true);
        assert!(!homes.at_home("t1") && homes.named_here("t1"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(homes.at_home("t1"));
        homes.set("t1".into(), Some("a"), true);
        assert!(homes.at_home("t1"), "named again: still its time");
        homes.set("t1".into(), Some("b"), true);
        homes.set("t1".into(), Some("a"), true);
        assert!(!homes.at_home("t1"), "came back: settles again");
    }

    #[test]
    fn a_move_is_asked_once_within_its_time() {
        let homes = Homes::new("a", Duration::ZERO);
        assert!(homes.start_move("t1"));
        assert!(!homes.start_move("t1"));
        assert!(homes.start_move("t2"));
    }
}
