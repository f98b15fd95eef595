//! Publication: one writer swaps in whole snapshot sets; every stream is notified and
//! reads the latest one (a slow stream skips intermediate sets, it never queues them).
//!
//! The current set is an `ArcSwapOption`: every request of every stream reads it, and a
//! read is a lock-free load, so thousands of streams answering ACKs never contend with
//! each other or with the writer. A watch channel carries only the wake-up.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::Snapshot;

/// The group of nodes that don't need a snapshot of their own.
pub const DEFAULT_GROUP: &str = "";

/// The snapshots served to each group of nodes (nodes that get the same resources,
/// for example all nodes binding the same listener families).
#[derive(Clone, Debug, Default)]
pub struct SnapshotSet {
    groups: BTreeMap<Arc<str>, Snapshot>,
}

impl SnapshotSet {
    /// One snapshot for every node.
    pub fn single(snapshot: Snapshot) -> Self {
        let mut set = SnapshotSet::default();
        set.insert(DEFAULT_GROUP, snapshot);
        set
    }

    pub fn insert(&mut self, group: &str, snapshot: Snapshot) {
        self.groups.insert(Arc::from(group), snapshot);
    }

    pub fn get(&self, group: &str) -> Option<&Snapshot> {
        self.groups.get(group)
    }

    pub fn groups(&self) -> impl Iterator<Item = (&str, &Snapshot)> {
        self.groups.iter().map(|(k, v)| (&**k, v))
    }
}

/// The writer side: holds the latest published set. Nothing is served before the
/// first [`SnapshotCache::publish`] (the initial-sync gate).
#[derive(Debug, Clone)]
pub struct SnapshotCache {
    current: Arc<ArcSwapOption<SnapshotSet>>,
    /// Counts publications; streams wait on it.
    published: Arc<watch::Sender<u64>>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotCache {
    pub fn new() -> Self {
        let (published, _) = watch::channel(0);
        SnapshotCache {
            current: Arc::new(ArcSwapOption::empty()),
            published: Arc::new(published),
        }
    }

    /// Replaces the served set atomically and wakes every stream.
    pub fn publish(&self, set: SnapshotSet) {
        // The set first: a stream woken by the count reads it, or a newer one.
        self.current.store(Some(Arc::new(set)));
        self.published.send_modify(|count| *count += 1);
    }

    /// The latest published set, if any.
    pub fn current(&self) -> Option<Arc<SnapshotSet>> {
        self.current.load_full()
    }

    /// Whether a first set has been published.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// A receiver for streams.
    pub fn watch(&self) -> SnapshotWatch {
        SnapshotWatch {
            current: self.current.clone(),
            published: self.published.subscribe(),
        }
    }
}

/// A stream's view of the cache: the latest set, and a wake-up when it changes.
#[derive(Debug)]
pub struct SnapshotWatch {
    current: Arc<ArcSwapOption<SnapshotSet>>,
    published: watch::Receiver<u64>,
}

impl SnapshotWatch {
    /// The latest set, marking it seen: the next [`SnapshotWatch::changed`] waits for a
    /// newer one.
    pub fn latest(&mut self) -> Option<Arc<SnapshotSet>> {
        self.published.borrow_and_update();
        self.current.load_full()
    }

    /// The latest set, without marking it seen: a set published since the last
    /// [`SnapshotWatch::changed`] still wakes it, so every type gets the change even if a
    /// request for one type read the set first.
    pub fn peek(&self) -> Option<Arc<SnapshotSet>> {
        self.current.load_full()
    }

    /// Waits until a set newer than the last seen one is published. Returns `false`
    /// when the cache is gone.
    pub async fn changed(&mut self) -> bool {
        self.published.changed().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peek_does_not_swallow_the_change_notification() {
        let cache = SnapshotCache::new();
        let mut watch = cache.watch();
        assert!(watch.latest().is_none());
        cache.publish(SnapshotSet::single(Snapshot::default()));
        // A request reads the new set before the stream saw the notification...
        assert!(watch.peek().is_some());
        // ...and the notification still comes, so the other types are sent too.
        let woke =
            tokio::time::timeout(std::time::Duration::from_millis(100), watch.changed()).await;
        assert_eq!(woke, Ok(true));
        watch.latest();
        let woke =
            tokio::time::timeout(std::time::Duration::from_millis(50), watch.changed()).await;
        assert!(woke.is_err(), "nothing new");
    }
}
