//! Watch events as model changes, without I/O. Each watcher's objects arrive already
//! converted ([`Converted`]); a relist (the watcher's `Init` .. `InitDone`, after a
//! `410 Gone`, a reconnect or a timeout) is buffered and turned into changes as a whole
//! at `InitDone`, so clients never see a Service vanish and come back; the source is
//! synced once every watcher has completed its first list.
//!
//! Secrets are watched one by one, only those that Services terminating TLS name: the
//! state follows which Secrets the Services it has passed on reference, and
//! [`KubeState::secret_watches`] says which watchers to start and stop.

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::watcher::Event;

use crate::model::{ModelChange, ObjectKey, ObjectKind, ServiceKey};

/// An object as the state receives it: its identity and the change its content makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converted {
    pub key: ObjectKey,
    pub change: ModelChange,
}

#[derive(Debug)]
struct WatcherState {
    kind: ObjectKind,
    /// Has completed a first list.
    synced: bool,
    /// What this watcher's last list and events hold (its share of the model).
    known: BTreeSet<ObjectKey>,
    /// A relist in progress: the objects listed so far.
    relist: Option<BTreeMap<ObjectKey, ModelChange>>,
}

impl WatcherState {
    fn new(kind: ObjectKind) -> Self {
        WatcherState {
            kind,
            synced: false,
            known: BTreeSet::new(),
            relist: None,
        }
    }
}

/// Secret watchers to start and stop, and the changes stopping them makes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SecretWatches {
    /// New watchers: their id and the one Secret each watches.
    pub start: Vec<(usize, ObjectKey)>,
    /// Watchers no longer needed (their events, still queued, are ignored).
    pub stop: Vec<usize>,
    /// The Secrets those held, withdrawn from the model.
    pub changes: Vec<ModelChange>,
}

/// Every watcher's state.
#[derive(Debug)]
pub struct KubeState {
    watchers: BTreeMap<usize, WatcherState>,
    next_id: usize,
    /// When Secrets are watched: the Secret each Service passed on terminates TLS with.
    secret_refs: Option<BTreeMap<ServiceKey, ObjectKey>>,
    /// The watcher of each Secret watched.
    secret_watchers: BTreeMap<ObjectKey, usize>,
}

impl KubeState {
    /// State for one watcher per kind given (watcher `i` watches `kinds[i]`), none synced.
    pub fn new(kinds: impl IntoIterator<Item = ObjectKind>) -> Self {
        let watchers: BTreeMap<usize, WatcherState> = kinds
            .into_iter()
            .map(WatcherState::new)
            .enumerate()
            .collect();
        KubeState {
            next_id: watchers.len(),
            watchers,
            secret_refs: None,
            secret_watchers: BTreeMap::new(),
        }
    }

    /// Follows the Secrets that Services reference, for [`KubeState::secret_watches`].
    pub fn with_secret_watches(mut self) -> Self {
        self.secret_refs = Some(BTreeMap::new());
        self
    }

    /// Every watcher has completed its first list.
    pub fn is_synced(&self) -> bool {
        self.watchers.values().all(|w| w.synced)
    }

    /// Applies one event of watcher `id`; returns the model changes it makes now. Events
    /// of a watcher that was stopped are ignored.
    pub fn apply(&mut self, id: usize, event: Event<Converted>) -> Vec<ModelChange> {
        let Some(w) = self.watchers.get_mut(&id) else {
            return Vec::new();
        };
        let changes = w.apply(event);
        if let Some(refs) = &mut self.secret_refs {
            for change in &changes {
                match change {
                    ModelChange::Service(key, service) => {
                        match service.as_ref().ok().and_then(|s| s.tls_secret()) {
                            Some(secret) => refs.insert(key.clone(), secret.clone()),
                            None => refs.remove(key),
                        };
                    }
                    ModelChange::ServiceRemoved(key) => {
                        refs.remove(key);
                    }
                    _ => {}
                }
            }
        }
        changes
    }

    /// Watcher `id` failed a request (it retries with backoff). A Secret watcher that has
    /// not listed yet counts as synced from then on: until it lists, its Secret is missing
    /// (the Services using it are reported), and the rest is served rather than held
    /// back by one Secret the control plane cannot read.
    pub fn failed(&mut self, id: usize) {
        if let Some(w) = self.watchers.get_mut(&id) {
            if w.kind == ObjectKind::Secret {
                w.synced = true;
            }
        }
    }

    /// The Secret watchers to start (for Secrets newly referenced) and stop (for Secrets
    /// no Service references any more), applied to the state: new watchers count as not
    /// yet synced.
    pub fn secret_watches(&mut self) -> SecretWatches {
        let mut watches = SecretWatches::default();
        let Some(refs) = &self.secret_refs else {
            return watches;
        };
        let wanted: BTreeSet<&ObjectKey> = refs.values().collect();
        let unwanted: Vec<ObjectKey> = self
            .secret_watchers
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for key in wanted {
            if !self.secret_watchers.contains_key(key) {
                let id = self.next_id;
                self.next_id += 1;
                self.watchers
                    .insert(id, WatcherState::new(ObjectKind::Secret));
                self.secret_watchers.insert(key.clone(), id);
                watches.start.push((id, key.clone()));
            }
        }
        for key in unwanted {
            let id = self.secret_watchers.remove(&key).expect("watched");
            let watcher = self.watchers.remove(&id).expect("a watcher");
            watches.stop.push(id);
            watches.changes.extend(
                watcher
                    .known
                    .into_iter()
                    .map(|k| ModelChange::removal(ObjectKind::Secret, k)),
            );
        }
        watches
    }
}

impl WatcherState {
    fn apply(&mut self, event: Event<Converted>) -> Vec<ModelChange> {
        match event {
            Event::Apply(object) => {
                self.known.insert(object.key);
                vec![object.change]
            }
            Event::Delete(object) => {
                self.known.remove(&object.key);
                vec![ModelChange::removal(self.kind, object.key)]
            }
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                if let Some(listed) = &mut self.relist {
                    listed.insert(object.key, object.change);
                }
                Vec::new()
            }
            Event::InitDone => {
                self.synced = true;
                let Some(listed) = self.relist.take() else {
                    return Vec::new();
                };
                // What the watcher held and the list no longer has was deleted while
                // the watch was down.
                let mut changes: Vec<ModelChange> = self
                    .known
                    .iter()
                    .filter(|k| !listed.contains_key(*k))
                    .map(|k| ModelChange::removal(self.kind, k.clone()))
                    .collect();
                self.known = listed.keys().cloned().collect();
                changes.extend(listed.into_values());
                changes
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Changed, ModelStore, PortKind, Service, TlsMode};
    use Event::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("ns", name)
    }

    fn svc(name: &str) -> Converted {
        Converted {
            key: key(name),
            change: ModelChange::Service(
                key(name),
                Ok(Service::one_port(key(name), 80, PortKind::Tcp)),
            ),
        }
    }

    fn services(store: &ModelStore) -> Vec<String> {
        store
            .model()
            .services
            .keys()
            .map(|k| k.name.to_string())
            .collect()
    }

    #[test]
    fn synced_once_every_watcher_has_listed() {
        let mut state = KubeState::new([
            ObjectKind::Service,
            ObjectKind::EndpointSlice,
            ObjectKind::ConfigMap,
        ]);
        let mut store = ModelStore::default();
        state.apply(0, Init);
        state.apply(0, InitApply(svc("web")));
        store.apply_all(state.apply(0, InitDone));
        state.apply(1, Init);
        state.apply(1, InitDone);
        assert!(!state.is_synced());
        state.apply(2, Init);
        assert!(
            state.apply(2, InitDone).is_empty(),
            "no ConfigMap: no change"
        );
        assert!(state.is_synced());
        assert_eq!(services(&store), ["web"]);
    }

    #[test]
    fn a_relist_is_applied_as_a_whole() {
        let mut state = KubeState::new([ObjectKind::Service]);
        let mut store = ModelStore::default();
        state.apply(0, Init);
        state.apply(0, InitApply(svc("a")));
        state.apply(0, InitApply(svc("b")));
        store.apply_all(state.apply(0, InitDone));
        // A relist starts: nothing is withdrawn while it runs.
        assert!(state.apply(0, Init).is_empty());
        assert!(state.apply(0, InitApply(svc("b"))).is_empty());
        let changed = store.apply_all(state.apply(0, InitDone));
        // a is gone (deleted while the watch was down); b is unchanged.
        assert_eq!(services(&store), ["b"]);
        assert_eq!(changed, Changed::Services([key("a")].into()));
    }

    #[test]
    fn events_after_the_list_apply_at_once() {
        let mut state = KubeState::new([ObjectKind::Service]);
        let mut store = ModelStore::default();
        state.apply(0, Init);
        state.apply(0, InitDone);
        assert_eq!(
            store.apply_all(state.apply(0, Apply(svc("web")))),
            Changed::Services([key("web")].into())
        );
        store.apply_all(state.apply(0, Delete(svc("web"))));
        assert!(services(&store).is_empty());
        // A relist after the delete does not bring it back, nor withdraw it twice.
        state.apply(0, Init);
        assert!(state.apply(0, InitDone).is_empty());
    }

    fn terminating(name: &str, secret: &str) -> Converted {
        let mut service = Service::one_port(key(name), 443, PortKind::Tcp);
        service.hosts = vec![format!("{name}.example.com")];
        service.tls = Some(TlsMode::Terminate {
            secret: key(secret),
        });
        Converted {
            key: key(name),
            change: ModelChange::Service(key(name), Ok(service)),
        }
    }

    fn secret_change(name: &str) -> Converted {
        Converted {
            key: key(name),
            change: ModelChange::SecretRemoved(key(name)),
        }
    }

    #[test]
    fn secrets_are_watched_while_services_reference_them() {
        let mut state = KubeState::new([ObjectKind::Service]).with_secret_watches();
        state.apply(0, Init);
        state.apply(0, InitApply(terminating("shop", "shop-tls")));
        state.apply(0, InitApply(terminating("blog", "shared-tls")));
        state.apply(0, InitApply(terminating("docs", "shared-tls")));
        state.apply(0, InitApply(svc("plain")));
        assert!(
            state.secret_watches().start.is_empty(),
            "nothing listed yet"
        );
        state.apply(0, InitDone);
        let watches = state.secret_watches();
        let started: Vec<_> = watches.start.iter().map(|(_, k)| &*k.name).collect();
        assert_eq!(
            started,
            ["shared-tls", "shop-tls"],
            "one watcher per Secret"
        );
        assert!(
            !state.is_synced(),
            "synced only once the Secrets are listed"
        );
        for (id, _) in &watches.start {
            state.apply(*id, Init);
            state.apply(*id, InitDone);
        }
        assert!(state.is_synced());
        let shop_watcher = watches.start[1].0;
        // A Secret that cannot be read does not hold the rest back.
        state.apply(0, Apply(terminating("unreadable", "forbidden-tls")));
        let forbidden = state.secret_watches().start[0].0;
        assert!(!state.is_synced());
        state.failed(forbidden);
        assert!(state.is_synced());
        state.failed(0);
        state.apply(0, Delete(svc("unreadable")));
        assert_eq!(state.secret_watches().stop, [forbidden]);
        state.apply(shop_watcher, Apply(secret_change("shop-tls")));

        // blog stops using shared-tls: docs still does.
        state.apply(0, Apply(svc("blog")));
        assert_eq!(state.secret_watches(), SecretWatches::default());
        // shop is deleted: its Secret is no longer watched and leaves the model.
        state.apply(0, Delete(svc("shop")));
        let watches = state.secret_watches();
        assert_eq!(watches.stop, [shop_watcher]);
        assert_eq!(
            watches.changes,
            [ModelChange::SecretRemoved(key("shop-tls"))]
        );
        // Events the stopped watcher had queued are ignored.
        assert!(state
            .apply(shop_watcher, Apply(secret_change("shop-tls")))
            .is_empty());
        // A Service naming it again starts a new watcher.
        state.apply(0, Apply(terminating("shop", "shop-tls")));
        let watches = state.secret_watches();
        assert_eq!(watches.start.len(), 1);
        assert_ne!(watches.start[0].0, shop_watcher);
        assert!(!state.is_synced());
    }

    #[test]
    fn without_secret_watches_no_secret_is_watched() {
        let mut state = KubeState::new([ObjectKind::Service]);
        state.apply(0, Apply(terminating("shop", "shop-tls")));
        assert_eq!(state.secret_watches(), SecretWatches::default());
    }
}
