//! The model, kept up to date change by change. Sources describe what happened to their
//! objects as [`ModelChange`]s (already converted: no Kubernetes types here); the store
//! applies each one and says which Services it touched, so translation redoes those only.
//!
//! Only converted values are kept, not objects: an EndpointSlice of 100 endpoints is a few
//! kilobytes as a Kubernetes object and a fraction of that as a [`Slice`](super::Slice).
//! A change that converts to what is already held changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{
    Family, Model, ObjectKey, ObjectKind, Service, ServiceKey, Skipped, SliceEndpoints, TlsSecret,
};

/// One change to the model's inputs, from any source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelChange {
    /// A Service added or updated, or why it can't be served.
    Service(ObjectKey, Result<Service, Skipped>),
    ServiceRemoved(ObjectKey),
    /// An EndpointSlice added or updated: its endpoints and the Service they feed,
    /// `Ok(None)` for a slice the product ignores (FQDN, no Service label), or why it is
    /// invalid.
    Slice(ObjectKey, Result<Option<SliceEndpoints>, Skipped>),
    SliceRemoved(ObjectKey),
    /// The mode ConfigMap: `None` when there is none, else its `primaryFamily` (`None`
    /// when unset) or why that is invalid (the last valid value then stays in force).
    Mode(Option<Result<Option<Family>, Skipped>>),
    /// A TLS Secret added or updated, or why it can't be used.
    Secret(ObjectKey, Result<TlsSecret, Skipped>),
    SecretRemoved(ObjectKey),
}

impl ModelChange {
    /// The change that withdraws an object of `kind`.
    pub fn removal(kind: ObjectKind, key: ObjectKey) -> ModelChange {
        match kind {
            ObjectKind::Service => ModelChange::ServiceRemoved(key),
            ObjectKind::EndpointSlice => ModelChange::SliceRemoved(key),
            // One ConfigMap is read (by name): its removal is the mode's.
            ObjectKind::ConfigMap => ModelChange::Mode(None),
            ObjectKind::Secret => ModelChange::SecretRemoved(key),
        }
    }
}

/// Which Services a change may have affected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Changed {
    #[default]
    Nothing,
    Services(BTreeSet<ServiceKey>),
    /// Every Service may have (the global primary family changed, or a first sync).
    All,
}

impl Changed {
    fn add(&mut self, key: ServiceKey) {
        match self {
            Changed::Nothing => *self = Changed::Services([key].into()),
            Changed::Services(keys) => {
                keys.insert(key);
            }
            Changed::All => {}
        }
    }

    /// Adds what `other` changed.
    pub fn merge(&mut self, other: Changed) {
        match other {
            Changed::Nothing => {}
            Changed::All => *self = Changed::All,
            Changed::Services(keys) => keys.into_iter().for_each(|k| self.add(k)),
        }
    }

    pub fn is_nothing(&self) -> bool {
        *self == Changed::Nothing
    }

    /// The Services to retranslate: `None` means all of them.
    pub fn services(&self) -> Option<BTreeSet<ServiceKey>> {
        match self {
            Changed::Nothing => Some(BTreeSet::new()),
            Changed::Services(keys) => Some(keys.clone()),
            Changed::All => None,
        }
    }
}

/// The model and what is needed to apply changes to it.
#[derive(Debug, Default)]
pub struct ModelStore {
    model: Model,
    /// Every Service held (valid or skipped).
    services: BTreeSet<ObjectKey>,
    /// Every EndpointSlice held, with the Service it feeds (if any).
    slices: BTreeMap<ObjectKey, Option<ServiceKey>>,
    /// The mode ConfigMap as last seen.
    mode: Option<Result<Option<Family>, Skipped>>,
    /// The Services that terminate TLS with each Secret.
    secret_users: BTreeMap<ObjectKey, BTreeSet<ServiceKey>>,
}

impl ModelStore {
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Applies changes in order; returns what they touched.
    pub fn apply_all(&mut self, changes: impl IntoIterator<Item = ModelChange>) -> Changed {
        let mut changed = Changed::Nothing;
        for change in changes {
            changed.merge(self.apply(change));
        }
        changed
    }

    /// Applies one change; returns what it touched.
    pub fn apply(&mut self, change: ModelChange) -> Changed {
        match change {
            ModelChange::Service(key, service) => self.upsert_service(key, service),
            ModelChange::ServiceRemoved(key) => self.remove_service(&key),
            ModelChange::Slice(key, slice) => self.upsert_slice(key, slice),
            ModelChange::SliceRemoved(key) => {
                let changed = self.detach_slice(&key);
                self.slices.remove(&key);
                changed
            }
            ModelChange::Mode(mode) => self.set_mode(mode),
            ModelChange::Secret(key, secret) => self.upsert_secret(key, secret),
            ModelChange::SecretRemoved(key) => {
                let mut changed = self.secret_changed(&key);
                let had = self.model.secrets.remove(&key).is_some()
                    | self
                        .model
                        .skipped
                        .remove(&(ObjectKind::Secret, key.clone()))
                        .is_some();
                if !had {
                    changed = Changed::Nothing;
                }
                changed
            }
        }
    }

    /// The Services a change of this Secret touches.
    fn secret_changed(&self, key: &ObjectKey) -> Changed {
        match self.secret_users.get(key) {
            Some(users) if !users.is_empty() => Changed::Services(users.clone()),
            _ => Changed::Nothing,
        }
    }

    fn upsert_secret(&mut self, key: ObjectKey, secret: Result<TlsSecret, Skipped>) -> Changed {
        let skip_key = (ObjectKind::Secret, key.clone());
        match secret {
            Ok(secret) => {
                if self.model.secrets.get(&key).map(|s| &**s) == Some(&secret) {
                    return Changed::Nothing;
                }
                self.model.skipped.remove(&skip_key);
                self.model.secrets.insert(key.clone(), Arc::new(secret));
            }
            Err(skip) => {
                if self.model.skipped.get(&skip_key) == Some(&skip) {
                    return Changed::Nothing;
                }
                self.model.secrets.remove(&key);
                self.model.skipped.insert(skip_key, skip);
            }
        }
        self.secret_changed(&key)
    }

    /// Keeps the index of Secret users in line with a Service's new value.
    fn index_secret(&mut self, key: &ObjectKey, service: Option<&Service>) {
        for users in self.secret_users.values_mut() {
            users.remove(key);
        }
        self.secret_users.retain(|_, users| !users.is_empty());
        if let Some(secret) = service.and_then(Service::tls_secret) {
            self.secret_users
                .entry(secret.clone())
                .or_default()
                .insert(key.clone());
        }
    }

    fn upsert_service(&mut self, key: ObjectKey, service: Result<Service, Skipped>) -> Changed {
        self.services.insert(key.clone());
        let skip_key = (ObjectKind::Service, key.clone());
        match service {
            Ok(service) => {
                if self.model.services.get(&key) == Some(&service) {
                    return Changed::Nothing;
                }
                self.index_secret(&key, Some(&service));
                self.model.skipped.remove(&skip_key);
                self.model.services.insert(key.clone(), service);
            }
            Err(skip) => {
                if self.model.skipped.get(&skip_key) == Some(&skip) {
                    return Changed::Nothing;
                }
                self.index_secret(&key, None);
                self.model.services.remove(&key);
                self.model.skipped.insert(skip_key, skip);
            }
        }
        Changed::Services([key].into())
    }

    fn remove_service(&mut self, key: &ObjectKey) -> Changed {
        if !self.services.remove(key) {
            return Changed::Nothing;
        }
        self.model
            .skipped
            .remove(&(ObjectKind::Service, key.clone()));
        self.index_secret(key, None);
        self.model.services.remove(key);
        Changed::Services([key.clone()].into())
    }

    fn upsert_slice(
        &mut self,
        key: ObjectKey,
        slice: Result<Option<SliceEndpoints>, Skipped>,
    ) -> Changed {
        let skip_key = (ObjectKind::EndpointSlice, key.clone());
        match slice {
            Ok(Some(converted)) => {
                let held = self.slices.get(&key).cloned().flatten();
                if held.as_ref() == Some(&converted.service) {
                    let same = self
                        .model
                        .endpoints
                        .get(&converted.service)
                        .and_then(|e| e.slices.get(&*key.name))
                        .is_some_and(|s| s.digest() == converted.slice.digest());
                    if same {
                        return Changed::Nothing;
                    }
                }
                let mut changed = self.detach_slice(&key);
                self.model
                    .endpoints
                    .entry(converted.service.clone())
                    .or_default()
                    .slices
                    .insert(key.name.to_string(), Arc::new(converted.slice));
                self.slices.insert(key, Some(converted.service.clone()));
                changed.add(converted.service);
                changed
            }
            Ok(None) => {
                let changed = self.detach_slice(&key);
                self.slices.insert(key, None);
                changed
            }
            Err(skip) => {
                if self.model.skipped.get(&skip_key) == Some(&skip) {
                    return Changed::Nothing;
                }
                let changed = self.detach_slice(&key);
                self.model.skipped.insert(skip_key, skip);
                self.slices.insert(key, None);
                changed
            }
        }
    }

    /// Takes a slice's endpoints out of the Service it fed, and any skip record.
    fn detach_slice(&mut self, key: &ObjectKey) -> Changed {
        self.model
            .skipped
            .remove(&(ObjectKind::EndpointSlice, key.clone()));
        let Some(Some(service)) = self.slices.insert(key.clone(), None) else {
            return Changed::Nothing;
        };
        if let Some(endpoints) = self.model.endpoints.get_mut(&service) {
            endpoints.slices.remove(&*key.name);
            if endpoints.slices.is_empty() {
                self.model.endpoints.remove(&service);
            }
        }
        Changed::Services([service].into())
    }

    fn set_mode(&mut self, mode: Option<Result<Option<Family>, Skipped>>) -> Changed {
        if self.mode == mode {
            return Changed::Nothing;
        }
        self.model
            .skipped
            .retain(|(kind, _), _| *kind != ObjectKind::ConfigMap);
        let family = match &mode {
            None => None,
            Some(Ok(family)) => *family,
            Some(Err(skip)) => {
                self.model
                    .skipped
                    .insert((ObjectKind::ConfigMap, skip.key.clone()), skip.clone());
                // An invalid value keeps the last valid one in force.
                self.model.config_primary_family
            }
        };
        self.mode = mode;
        if family == self.model.config_primary_family {
            return Changed::Nothing;
        }
        self.model.config_primary_family = family;
        Changed::All
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Endpoint, EndpointState, PortKind, Slice};

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("ns", name)
    }

    fn svc(name: &str) -> ModelChange {
        ModelChange::Service(
            key(name),
            Ok(Service::one_port(key(name), 80, PortKind::Tcp)),
        )
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> ModelChange {
        let endpoints = ips
            .iter()
            .map(|ip| Endpoint {
                address: ip.parse().unwrap(),
                state: EndpointState::Ready,
                zone: None,
                target: None,
            })
            .collect();
        ModelChange::Slice(
            key(name),
            Ok(Some(SliceEndpoints {
                service: key(service),
                slice: Slice::new(
                    Family::IPv4,
                    BTreeMap::from([("http".to_string(), 8080)]),
                    endpoints,
                ),
            })),
        )
    }

    fn services(names: &[&str]) -> Changed {
        Changed::Services(names.iter().map(|n| key(n)).collect())
    }

    #[test]
    fn each_change_names_the_services_it_touches() {
        let mut store = ModelStore::default();
        assert_eq!(store.apply(svc("web")), services(&["web"]));
        assert_eq!(store.apply(svc("web")), Changed::Nothing);
        // A slice may arrive before its Service; it is kept and joined later.
        assert_eq!(
            store.apply(slice("api-1", "api", &["10.0.0.1"])),
            services(&["api"])
        );
        assert_eq!(
            store.model().endpoints_of(&key("api")).count(Family::IPv4),
            1
        );
        // Relabelled to another Service: both are touched, the old one loses it.
        assert_eq!(
            store.apply(slice("api-1", "web", &["10.0.0.1", "10.0.0.2"])),
            services(&["api", "web"])
        );
        assert_eq!(
            store.model().endpoints_of(&key("api")).count(Family::IPv4),
            0
        );
        assert_eq!(
            store.model().endpoints_of(&key("web")).count(Family::IPv4),
            2
        );
        assert_eq!(
            store.apply(ModelChange::SliceRemoved(key("api-1"))),
            services(&["web"])
        );
        assert!(store.model().endpoints.is_empty());
        assert_eq!(
            store.apply(ModelChange::ServiceRemoved(key("web"))),
            services(&["web"])
        );
        assert_eq!(
            store.apply(ModelChange::ServiceRemoved(key("web"))),
            Changed::Nothing
        );
    }

    #[test]
    fn an_invalid_object_is_skipped_and_replaced_by_its_fix() {
        let mut store = ModelStore::default();
        store.apply(svc("web"));
        let bad = Skipped::new(ObjectKind::EndpointSlice, &key("web-1"), "bad address");
        store.apply(ModelChange::Slice(key("web-1"), Err(bad)));
        let reasons: Vec<&str> = store.model().skipped().map(|s| s.reason.as_str()).collect();
        assert_eq!(reasons, ["bad address"]);
        assert!(
            store.model().services.contains_key(&key("web")),
            "the rest is served"
        );
        store.apply(slice("web-1", "web", &["10.0.0.1"]));
        assert_eq!(store.model().skipped().count(), 0);
        assert_eq!(
            store.model().endpoints_of(&key("web")).count(Family::IPv4),
            1
        );
    }

    #[test]
    fn the_mode_changes_everything_and_a_bad_value_keeps_the_last_good_one() {
        let mut store = ModelStore::default();
        let mode = |family| ModelChange::Mode(Some(Ok(Some(family))));
        assert_eq!(store.apply(mode(Family::IPv6)), Changed::All);
        assert_eq!(store.model().config_primary_family, Some(Family::IPv6));
        let bad = Skipped::new(ObjectKind::ConfigMap, &key("mode"), "IPv7");
        assert_eq!(
            store.apply(ModelChange::Mode(Some(Err(bad)))),
            Changed::Nothing
        );
        assert_eq!(store.model().config_primary_family, Some(Family::IPv6));
        assert_eq!(store.model().skipped().count(), 1);
        assert_eq!(store.apply(ModelChange::Mode(None)), Changed::All);
        assert_eq!(store.model().config_primary_family, None);
        assert_eq!(store.model().skipped().count(), 0);
    }
}
