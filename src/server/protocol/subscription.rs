//! What a client subscribes to for one type: a wildcard, names, or both.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use super::request::Names;
use super::Resources;
use crate::snapshot::TypeSnapshot;

/// The explicit wildcard name (`xds_protocol`, "How the client specifies what resources to return").
pub const WILDCARD: &str = "*";

#[derive(Clone, Debug, Default)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: Arc<NameSet>,
    /// The client has named resources at least once: from then on an empty SotW list
    /// means "nothing", not the legacy wildcard.
    named_before: bool,
    /// [`Names::layout`] of the last SotW request: a request listing the same names in
    /// the same order (every ACK does) changes nothing, and is known without reading them.
    last_layout: Option<u128>,
}

impl PartialEq for Subscription {
    fn eq(&self, other: &Self) -> bool {
        self.wildcard == other.wildcard
            && self.names == other.names
            && self.named_before == other.named_before
    }
}

impl Eq for Subscription {}

/// A set of subscribed names with an order-independent digest of its contents.
///
/// A fleet of identical Envoys subscribes to the same EDS names, and every SotW ACK
/// repeats the whole list: sets are shared between streams through [`NAME_SETS`], and a
/// request whose digest equals the current set's is recognised without building a set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameSet {
    names: BTreeSet<String>,
    digest: u128,
}

impl NameSet {
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.names.iter()
    }
    fn insert(&mut self, name: &str) -> bool {
        let added = self.names.insert(name.to_owned());
        if added {
            self.digest = self.digest.wrapping_add(name_hash(name));
        }
        added
    }
    fn remove(&mut self, name: &str) -> bool {
        let removed = self.names.remove(name);
        if removed {
            self.digest = self.digest.wrapping_sub(name_hash(name));
        }
        removed
    }
}

fn name_hash(name: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(name.as_bytes())
}

/// Interned name sets, by digest. Entries die with the last stream holding them.
static NAME_SETS: LazyLock<Mutex<HashMap<u128, Weak<NameSet>>>> = LazyLock::new(Default::default);

/// The shared set for `names` (which hashes to `digest`), creating it if needed.
fn intern<'a>(names: impl Iterator<Item = &'a str>, digest: u128) -> Arc<NameSet> {
    if let Some(set) = interned(digest) {
        return set;
    }
    let mut set = NameSet::default();
    for name in names {
        set.insert(name);
    }
    share(Arc::new(set))
}

/// The live interned set with this digest. A 128-bit content digest: equal digests are
/// equal sets for any non-adversarial input, and a collision could only confuse the
/// colliding client's own view.
fn interned(digest: u128) -> Option<Arc<NameSet>> {
    let sets = NAME_SETS.lock().unwrap_or_else(|p| p.into_inner());
    sets.get(&digest).and_then(Weak::upgrade)
}

/// `set`, or the interned set equal to it.
fn share(set: Arc<NameSet>) -> Arc<NameSet> {
    let mut sets = NAME_SETS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(existing) = sets.get(&set.digest).and_then(Weak::upgrade) {
        return existing;
    }
    if sets.len() >= 64 && sets.len().is_power_of_two() {
        sets.retain(|_, weak| weak.strong_count() > 0);
    }
    sets.insert(set.digest, Arc::downgrade(&set));
    set
}

/// How a subscription changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SubscriptionChange {
    pub added: BTreeSet<String>,
    pub wildcard_added: bool,
    pub changed: bool,
}

impl Subscription {
    pub fn contains(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The resources of `snapshot` this subscription covers, in name order: one list
    /// for every stream with the same subscription to the same content.
    pub fn resources_in(&self, snapshot: &TypeSnapshot) -> Resources {
        // A wildcard covers everything, whatever names it also lists.
        let (digest, len) = if self.wildcard {
            (0, 0)
        } else {
            (self.names.digest, self.names.len())
        };
        let key = (snapshot.version().0, self.wildcard, digest, len);
        Resources::shared(key, || {
            if self.wildcard {
                snapshot.iter().cloned().collect()
            } else {
                self.names
                    .iter()
                    .filter_map(|n| snapshot.get(n))
                    .cloned()
                    .collect()
            }
        })
    }

    /// Applies a SotW request's full list of names. An empty list is the legacy wildcard
    /// as long as the client has never named a resource of this type.
    /// The names added are listed only when `track_added` (a stream's first request for
    /// a type adds everything, and nobody needs that listed).
    pub fn replace(&mut self, requested: &Names, track_added: bool) -> SubscriptionChange {
        // Applying a list is idempotent: the same list again is no change.
        if self.last_layout == Some(requested.layout()) {
            return SubscriptionChange::default();
        }
        self.last_layout = Some(requested.layout());
        let (wildcard, names) = if requested.is_empty() && !self.named_before {
            (true, Arc::default())
        } else {
            self.named_before = true;
            let (mut wildcard, mut named, mut digest) = (false, 0, 0u128);
            for name in requested.iter() {
                if name == WILDCARD {
                    wildcard = true;
                } else {
                    named += 1;
                    digest = digest.wrapping_add(name_hash(name));
                }
            }
            let names = if digest == self.names.digest && named == self.names.len() {
                self.names.clone()
            } else {
                intern(requested.iter().filter(|n| *n != WILDCARD), digest)
            };
            (wildcard, names)
        };
        let mut change = SubscriptionChange {
            wildcard_added: wildcard && !self.wildcard,
            changed: wildcard != self.wildcard,
            ..Default::default()
        };
        if !Arc::ptr_eq(&names, &self.names) {
            if track_added {
                change.added = names.names.difference(&self.names.names).cloned().collect();
            }
            change.changed |= names != self.names;
        }
        self.wildcard = wildcard;
        self.names = names;
        change
    }

    /// Applies a Delta request. `first` is the stream's first request for the type, where
    /// an empty subscribe list is the legacy wildcard.
    pub fn apply_delta(
        &mut self,
        first: bool,
        subscribe: &Names,
        unsubscribe: &Names,
    ) -> SubscriptionChange {
        // What a stream's first request adds is everything: nobody needs it listed.
        let track = !first;
        let mut change = SubscriptionChange::default();
        self.last_layout = None;
        if first && subscribe.is_empty() {
            change.wildcard_added = !self.wildcard;
            self.wildcard = true;
        }
        let mut names_changed = false;
        if subscribe.iter().any(|n| n == WILDCARD) {
            change.wildcard_added |= !self.wildcard;
            self.wildcard = true;
        }
        // A fleet subscribes to the same names: the resulting set is looked up among the
        // shared ones by its digest before anything is built.
        let added: Vec<&str> = subscribe
            .iter()
            .filter(|n| *n != WILDCARD && !self.names.contains(n))
            .collect();
        let digest = added
            .iter()
            .fold(self.names.digest, |d, n| d.wrapping_add(name_hash(n)));
        let len = self.names.len() + added.len();
        let existing = (unsubscribe.is_empty() && !added.is_empty())
            .then(|| interned(digest))
            .flatten()
            .filter(|set| set.len() == len);
        if track {
            change.added = added.iter().map(|n| n.to_string()).collect();
        }
        if let Some(set) = existing {
            self.names = set;
            names_changed = true;
        } else {
            for name in added {
                names_changed |= Arc::make_mut(&mut self.names).insert(name);
            }
        }
        for name in unsubscribe.iter() {
            if name == WILDCARD {
                self.wildcard = false;
                change.changed = true;
            } else if self.names.contains(name) {
                Arc::make_mut(&mut self.names).remove(name);
                change.added.remove(name);
                change.changed = true;
                names_changed = true;
            }
        }
        change.changed |= change.wildcard_added || names_changed;
        if names_changed {
            self.names = share(std::mem::take(&mut self.names));
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn list(v: &[&str]) -> Names {
        names(v).into()
    }

    #[test]
    fn sotw_empty_first_request_is_legacy_wildcard_until_names_are_given() {
        let mut s = Subscription::default();
        assert!(s.replace(&list(&[]), true).wildcard_added);
        assert!(s.wildcard);
        // An ACK with the same empty list changes nothing.
        assert!(!s.replace(&list(&[]), true).changed);
        let change = s.replace(&list(&["a"]), true);
        assert!(change.changed);
        assert!(!s.wildcard);
        assert!(s.contains("a") && !s.contains("b"));
        // Having named resources, an empty list now means "none".
        s.replace(&list(&[]), true);
        assert!(!s.wildcard);
        assert!(s.names.is_empty());
    }

    #[test]
    fn sotw_explicit_wildcard_with_names() {
        let mut s = Subscription::default();
        let change = s.replace(&list(&["*", "a"]), true);
        assert!(s.wildcard && s.names.contains("a"));
        assert!(change.wildcard_added);
        assert_eq!(change.added, ["a".to_string()].into());
    }

    #[test]
    fn identical_sotw_name_lists_share_one_set() {
        let mut a = Subscription::default();
        let mut b = Subscription::default();
        a.replace(&list(&["x", "y", "z"]), true);
        b.replace(&list(&["z", "x", "y"]), true);
        assert!(Arc::ptr_eq(&a.names, &b.names));
        // Repeating the list (every SotW ACK does) is no change.
        let before = a.names.clone();
        assert!(!a.replace(&list(&["y", "z", "x"]), true).changed);
        assert!(Arc::ptr_eq(&a.names, &before));
        // A Delta change to a shared set copies it; the other stream is unaffected.
        b.apply_delta(false, &list(&["w"]), &list(&[]));
        assert!(b.contains("w") && !a.contains("w"));
        // Delta streams that reach the same set share it too.
        let mut c = Subscription::default();
        c.apply_delta(true, &list(&["w", "x", "y", "z"]), &list(&[]));
        assert!(Arc::ptr_eq(&b.names, &c.names));
        let change = a.replace(&list(&["x", "y", "z", "w"]), true);
        assert_eq!(change.added, ["w".to_string()].into());
        assert_eq!(a.names, b.names);
    }

    #[test]
    fn delta_subscribe_and_unsubscribe() {
        let mut s = Subscription::default();
        let change = s.apply_delta(true, &list(&["a", "b"]), &list(&[]));
        assert!(!s.wildcard && s.contains("a") && s.contains("b"));
        assert!(change.changed);
        // A stream's first request adds everything; that is not listed.
        assert!(change.added.is_empty());
        let change = s.apply_delta(false, &list(&["c"]), &list(&["a"]));
        assert_eq!(change.added, ["c".to_string()].into());
        assert!(s.contains("b") && s.contains("c") && !s.contains("a"));
    }

    #[test]
    fn a_fleet_subscribing_to_the_same_names_shares_one_set() {
        let fleet: Vec<String> = (0..1000).map(|i| format!("svc-{i}")).collect();
        let mut first = Subscription::default();
        first.apply_delta(true, &fleet.clone().into(), &list(&[]));
        let mut reversed = fleet.clone();
        reversed.reverse();
        for (i, names) in [fleet.clone(), reversed].iter().enumerate() {
            let mut other = Subscription::default();
            let change = other.apply_delta(i == 0, &names.clone().into(), &list(&[]));
            assert!(change.changed);
            assert!(Arc::ptr_eq(&first.names, &other.names));
            if i == 1 {
                // Not a first request: what was added is listed.
                assert_eq!(change.added.len(), 1000);
            }
        }
        // A repeated name is no different.
        let mut doubled = fleet.clone();
        doubled.push("svc-1".into());
        let mut other = Subscription::default();
        other.apply_delta(true, &doubled.into(), &list(&[]));
        assert_eq!(other.names, first.names);
    }

    #[test]
    fn delta_legacy_wildcard_and_explicit_star() {
        let mut s = Subscription::default();
        assert!(s.apply_delta(true, &list(&[]), &list(&[])).wildcard_added);
        assert!(s.wildcard);
        // Naming a resource keeps the wildcard in Delta.
        s.apply_delta(false, &list(&["x"]), &list(&[]));
        assert!(s.wildcard);
        s.apply_delta(false, &list(&[]), &list(&["*"]));
        assert!(!s.wildcard && s.contains("x") && !s.contains("y"));
        assert!(
            s.apply_delta(false, &list(&["*"]), &list(&[]))
                .wildcard_added
        );
    }
}
