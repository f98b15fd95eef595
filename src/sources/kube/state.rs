//! Watch events as model changes, without I/O. Each watcher's objects arrive already
//! converted ([`Converted`]); a relist (the watcher's `Init` .. `InitDone`, after a
//! `410 Gone`, a reconnect or a timeout) is buffered and turned into changes as a whole
//! at `InitDone`, so clients never see a Service vanish and come back; the source is
//! synced once every watcher has completed its first list.

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::watcher::Event;

use crate::model::{ModelChange, ObjectKey, ObjectKind};

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

/// Every watcher's state.
#[derive(Debug)]
pub struct KubeState {
    watchers: Vec<WatcherState>,
}

impl KubeState {
    /// State for one watcher per kind given (watcher `i` watches `kinds[i]`), none synced.
    pub fn new(kinds: impl IntoIterator<Item = ObjectKind>) -> Self {
        KubeState {
            watchers: kinds
                .into_iter()
                .map(|kind| WatcherState {
                    kind,
                    synced: false,
                    known: BTreeSet::new(),
                    relist: None,
                })
                .collect(),
        }
    }

    /// Every watcher has completed its first list.
    pub fn is_synced(&self) -> bool {
        self.watchers.iter().all(|w| w.synced)
    }

    /// Applies one event of watcher `id`; returns the model changes it makes now.
    pub fn apply(&mut self, id: usize, event: Event<Converted>) -> Vec<ModelChange> {
        let w = &mut self.watchers[id];
        match event {
            Event::Apply(object) => {
                w.known.insert(object.key);
                vec![object.change]
            }
            Event::Delete(object) => {
                w.known.remove(&object.key);
                vec![ModelChange::removal(w.kind, object.key)]
            }
            Event::Init => {
                w.relist = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                if let Some(listed) = &mut w.relist {
                    listed.insert(object.key, object.change);
                }
                Vec::new()
            }
            Event::InitDone => {
                w.synced = true;
                let Some(listed) = w.relist.take() else {
                    return Vec::new();
                };
                // What the watcher held and the list no longer has was deleted while
                // the watch was down.
                let mut changes: Vec<ModelChange> = w
                    .known
                    .iter()
                    .filter(|k| !listed.contains_key(*k))
                    .map(|k| ModelChange::removal(w.kind, k.clone()))
                    .collect();
                w.known = listed.keys().cloned().collect();
                changes.extend(listed.into_values());
                changes
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Changed, ModelStore, PortKind, Service};
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
            .map(|k| k.name.clone())
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
}
