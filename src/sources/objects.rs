//! The Kubernetes edge: Services, EndpointSlices and the mode ConfigMap (k8s-openapi
//! types) become model values here, and nowhere else. Invalid objects are reported with a
//! reason and left out; everything else is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{
    Endpoint, EndpointState, Family, Model, PortKind, ProxyProtocol, Service, ServiceKey,
    ServicePort, Skipped, Slice,
};

/// Every annotation the product reads starts with this.
pub const ANNOTATION_PREFIX: &str = "dualstack-xds.io/";
pub const ANNOTATION_PRIMARY_FAMILY: &str = "dualstack-xds.io/primary-family";
pub const ANNOTATION_FAILOVER: &str = "dualstack-xds.io/failover";
pub const ANNOTATION_PROXY_PROTOCOL: &str = "dualstack-xds.io/proxy-protocol";
pub const ANNOTATION_LISTENER_PORTS: &str = "dualstack-xds.io/listener-ports";
pub const ANNOTATION_INGRESS: &str = "dualstack-xds.io/ingress";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const CONFIG_PRIMARY_FAMILY_KEY: &str = "primaryFamily";

pub(crate) fn key_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ServiceKey {
    ServiceKey {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name: meta.name.clone().unwrap_or_default(),
    }
}

fn skipped(kind: &str, key: &ServiceKey, reason: String) -> Skipped {
    Skipped {
        kind: kind.into(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        reason,
    }
}

fn parse_bool(annotation: &str, value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "annotation {annotation}: {other:?} is not \"true\" or \"false\""
        )),
    }
}

fn port_number(what: &str, port: i32) -> Result<u16, String> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{what} {port} is not a port number (1-65535)"))
}

/// A Service as the model sees it, or why it can't be served.
pub fn service(object: &K8sService) -> Result<Service, Skipped> {
    let key = key_of(&object.metadata);
    convert_service(object, &key).map_err(|reason| skipped("Service", &key, reason))
}

fn convert_service(object: &K8sService, key: &ServiceKey) -> Result<Service, String> {
    if key.name.is_empty() {
        return Err("metadata.name is missing".into());
    }
    let annotations = object.metadata.annotations.clone().unwrap_or_default();
    let annotation = |name: &str| annotations.get(name).map(String::as_str);
    let primary_family = annotation(ANNOTATION_PRIMARY_FAMILY)
        .map(|v| {
            v.parse::<Family>()
                .map_err(|e| format!("annotation {ANNOTATION_PRIMARY_FAMILY}: {e}"))
        })
        .transpose()?;
    let failover = annotation(ANNOTATION_FAILOVER)
        .map(|v| parse_bool(ANNOTATION_FAILOVER, v))
        .transpose()?
        .unwrap_or(false);
    let ingress = annotation(ANNOTATION_INGRESS)
        .map(|v| parse_bool(ANNOTATION_INGRESS, v))
        .transpose()?
        .unwrap_or(true);
    let proxy_protocol = annotation(ANNOTATION_PROXY_PROTOCOL)
        .map(|v| match v.trim() {
            "v1" => Ok(ProxyProtocol::V1),
            "v2" => Ok(ProxyProtocol::V2),
            other => Err(format!(
                "annotation {ANNOTATION_PROXY_PROTOCOL}: {other:?} is not v1 or v2"
            )),
        })
        .transpose()?;
    let listener_ports = annotation(ANNOTATION_LISTENER_PORTS)
        .map(parse_listener_ports)
        .transpose()?
        .unwrap_or_default();

    let spec = object.spec.clone().unwrap_or_default();
    let mut ports = Vec::new();
    for port in spec.ports.unwrap_or_default() {
        let number = port_number("port", port.port)?;
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let kind = match (protocol, port.app_protocol.as_deref()) {
            ("UDP", _) => PortKind::Udp,
            ("TCP", Some("http")) => PortKind::Http,
            ("TCP", Some("kubernetes.io/h2c")) => PortKind::H2c,
            ("TCP", Some("grpc")) => PortKind::Grpc,
            ("TCP", _) => PortKind::Tcp,
            (other, _) => {
                return Err(format!(
                    "port {number}: protocol {other} is not supported (TCP or UDP)"
                ))
            }
        };
        ports.push(ServicePort {
            name: port.name.clone().unwrap_or_default(),
            port: number,
            kind,
            listener_port: listener_ports.get(&number).copied().unwrap_or(number),
        });
    }
    if ports.is_empty() {
        return Err("the Service has no ports".into());
    }
    if let Some(unknown) = listener_ports
        .keys()
        .find(|p| !ports.iter().any(|sp| sp.port == **p))
    {
        return Err(format!(
            "annotation {ANNOTATION_LISTENER_PORTS}: {unknown} is not a port of this Service"
        ));
    }
    Ok(Service {
        key: key.clone(),
        ports,
        primary_family,
        failover,
        proxy_protocol,
        ingress,
    })
}

/// `"80=8080,443=8443"`: Service port -> ingress listener port.
fn parse_listener_ports(value: &str) -> Result<BTreeMap<u16, u16>, String> {
    let bad = |part: &str| {
        format!(
            "annotation {ANNOTATION_LISTENER_PORTS}: {part:?} is not SERVICE_PORT=LISTENER_PORT"
        )
    };
    let mut map = BTreeMap::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (from, to) = part.split_once('=').ok_or_else(|| bad(part))?;
        let from: u16 = from.trim().parse().map_err(|_| bad(part))?;
        let to: u16 = to.trim().parse().map_err(|_| bad(part))?;
        if from == 0 || to == 0 {
            return Err(bad(part));
        }
        map.insert(from, to);
    }
    Ok(map)
}

/// An EndpointSlice's contribution: the Service it belongs to and its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoints {
    pub service: ServiceKey,
    pub slice: Slice,
}

/// An EndpointSlice as the model sees it: `Ok(None)` for slices the product ignores
/// (FQDN, no Service label).
pub fn endpoint_slice(object: &EndpointSlice) -> Result<Option<SliceEndpoints>, Skipped> {
    let key = key_of(&object.metadata);
    convert_slice(object, &key).map_err(|reason| skipped("EndpointSlice", &key, reason))
}

fn convert_slice(
    object: &EndpointSlice,
    key: &ServiceKey,
) -> Result<Option<SliceEndpoints>, String> {
    let family = match object.address_type.as_str() {
        "IPv4" => Family::IPv4,
        "IPv6" => Family::IPv6,
        other => {
            tracing::debug!(slice = %key, address_type = other, "ignoring EndpointSlice that is not IPv4 or IPv6");
            return Ok(None);
        }
    };
    let Some(service) = service_label(object) else {
        return Ok(None);
    };
    let mut ports = BTreeMap::new();
    for port in object.ports.iter().flatten() {
        let Some(number) = port.port else {
            continue; // "all ports": not usable for a proxy
        };
        ports.insert(
            port.name.clone().unwrap_or_default(),
            port_number("port", number)?,
        );
    }
    let mut endpoints = Vec::with_capacity(object.endpoints.len());
    for endpoint in &object.endpoints {
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready);
        let serving = conditions.and_then(|c| c.serving);
        let terminating = conditions.and_then(|c| c.terminating);
        let state = if ready != Some(false) {
            EndpointState::Ready
        } else if serving == Some(true) && terminating == Some(true) {
            EndpointState::Draining
        } else {
            continue;
        };
        let target = endpoint.target_ref.as_ref().map(|r| {
            format!(
                "{}/{}/{}",
                r.kind.as_deref().unwrap_or("Pod"),
                r.namespace.as_deref().unwrap_or(&key.namespace),
                r.name.as_deref().unwrap_or_default()
            )
        });
        for address in &endpoint.addresses {
            let ip: IpAddr = address
                .parse()
                .map_err(|_| format!("address {address:?} is not an IP address"))?;
            if Family::of(&ip) != family {
                return Err(format!(
                    "address {address} is not {family} (the slice's addressType)"
                ));
            }
            endpoints.push(Endpoint {
                address: ip,
                state,
                zone: endpoint.zone.clone(),
                target: target.clone(),
            });
        }
    }
    Ok(Some(SliceEndpoints {
        service: ServiceKey {
            namespace: key.namespace.clone(),
            name: service.to_owned(),
        },
        slice: Slice::new(family, ports, endpoints),
    }))
}

fn service_label(object: &EndpointSlice) -> Option<&str> {
    object
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
}

/// The ConfigMap's `primaryFamily`, if set.
pub fn config_primary_family(object: &ConfigMap) -> Result<Option<Family>, Skipped> {
    let key = key_of(&object.metadata);
    object
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_PRIMARY_FAMILY_KEY))
        .map(|v| v.parse::<Family>())
        .transpose()
        .map_err(|e| {
            skipped(
                "ConfigMap",
                &key,
                format!("{CONFIG_PRIMARY_FAMILY_KEY}: {e}"),
            )
        })
}

/// The objects a source holds, by identity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub services: BTreeMap<ServiceKey, K8sService>,
    pub slices: BTreeMap<ServiceKey, EndpointSlice>,
    pub config_map: Option<ConfigMap>,
}

impl Objects {
    /// Joins everything into a model (slices to Services by `kubernetes.io/service-name`).
    pub fn to_model(&self) -> Model {
        let mut store = ModelStore::default();
        store.sync(self.clone());
        store.model
    }
}

/// Which Services a change may have affected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Changed {
    #[default]
    Nothing,
    Services(BTreeSet<ServiceKey>),
    /// The global primary family changed: every Service may have.
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

/// The model, kept up to date object by object: a change to one object converts that
/// object only and names the Services it touches. Sources feed it; translation reads
/// [`ModelStore::model`].
///
/// Only converted values are kept, not the objects: an EndpointSlice of 100 endpoints
/// is a few kilobytes as a Kubernetes object and a fraction of that as a [`Slice`]. An
/// update that converts to what is already held changes nothing.
#[derive(Debug, Default)]
pub struct ModelStore {
    model: Model,
    /// Every Service object held (valid or skipped).
    services: BTreeSet<ServiceKey>,
    /// Every EndpointSlice object held, with the Service it feeds (if any).
    slices: BTreeMap<ServiceKey, Option<ServiceKey>>,
    config_map: Option<ConfigMap>,
}

const SERVICE: &str = "Service";
const SLICE: &str = "EndpointSlice";
const CONFIG_MAP: &str = "ConfigMap";

impl ModelStore {
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Makes the store hold exactly `objects`, converting only what differs from what it
    /// holds (a re-read manifest directory is applied as a whole).
    pub fn sync(&mut self, objects: Objects) -> Changed {
        let mut changed = self.replace_services(objects.services);
        changed.merge(self.replace_slices(objects.slices));
        changed.merge(self.set_config_map(objects.config_map));
        changed
    }

    /// Replaces every Service at once.
    pub fn replace_services(&mut self, services: BTreeMap<ServiceKey, K8sService>) -> Changed {
        let mut changed = Changed::Nothing;
        let gone: Vec<ServiceKey> = self
            .services
            .iter()
            .filter(|k| !services.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            changed.merge(self.remove_service(&key));
        }
        for (_, object) in services {
            changed.merge(self.upsert_service(object));
        }
        changed
    }

    /// Replaces every EndpointSlice at once.
    pub fn replace_slices(&mut self, slices: BTreeMap<ServiceKey, EndpointSlice>) -> Changed {
        let mut changed = Changed::Nothing;
        let gone: Vec<ServiceKey> = self
            .slices
            .keys()
            .filter(|k| !slices.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            changed.merge(self.remove_slice(&key));
        }
        for (_, object) in slices {
            changed.merge(self.upsert_slice(object));
        }
        changed
    }

    pub fn upsert_service(&mut self, object: K8sService) -> Changed {
        let key = key_of(&object.metadata);
        self.services.insert(key.clone());
        let skip_key = (SERVICE.to_owned(), key.clone());
        match service(&object) {
            Ok(svc) => {
                if self.model.services.get(&key) == Some(&svc) {
                    return Changed::Nothing;
                }
                self.model.skipped.remove(&skip_key);
                self.model.services.insert(key.clone(), svc);
            }
            Err(skip) => {
                if self.model.skipped.get(&skip_key) == Some(&skip) {
                    return Changed::Nothing;
                }
                self.model.services.remove(&key);
                self.model.skipped.insert(skip_key, skip);
            }
        }
        Changed::Services([key].into())
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Changed {
        if !self.services.remove(key) {
            return Changed::Nothing;
        }
        self.model.skipped.remove(&(SERVICE.into(), key.clone()));
        self.model.services.remove(key);
        Changed::Services([key.clone()].into())
    }

    pub fn upsert_slice(&mut self, object: EndpointSlice) -> Changed {
        let key = key_of(&object.metadata);
        let skip_key = (SLICE.to_owned(), key.clone());
        match endpoint_slice(&object) {
            Ok(Some(converted)) => {
                let held = self.slices.get(&key).cloned().flatten();
                if held.as_ref() == Some(&converted.service) {
                    let same = self
                        .model
                        .endpoints
                        .get(&converted.service)
                        .and_then(|e| e.slices.get(&key.name))
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
                    .insert(key.name.clone(), Arc::new(converted.slice));
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

    pub fn remove_slice(&mut self, key: &ServiceKey) -> Changed {
        let changed = self.detach_slice(key);
        self.slices.remove(key);
        changed
    }

    /// Takes a slice's endpoints out of the Service it fed, and any skip record.
    fn detach_slice(&mut self, key: &ServiceKey) -> Changed {
        self.model.skipped.remove(&(SLICE.into(), key.clone()));
        let Some(Some(service)) = self.slices.insert(key.clone(), None) else {
            return Changed::Nothing;
        };
        if let Some(endpoints) = self.model.endpoints.get_mut(&service) {
            endpoints.slices.remove(&key.name);
            if endpoints.slices.is_empty() {
                self.model.endpoints.remove(&service);
            }
        }
        Changed::Services([service].into())
    }

    /// Sets (or, with `None`, removes) the mode ConfigMap.
    pub fn set_config_map(&mut self, object: Option<ConfigMap>) -> Changed {
        if self.config_map == object {
            return Changed::Nothing;
        }
        self.model
            .skipped
            .retain(|(kind, _), _| kind.as_str() != CONFIG_MAP);
        let family = match object.as_ref().map(config_primary_family) {
            None => None,
            Some(Ok(family)) => family,
            Some(Err(skip)) => {
                let key = ServiceKey {
                    namespace: skip.namespace.clone(),
                    name: skip.name.clone(),
                };
                self.model.skipped.insert((CONFIG_MAP.into(), key), skip);
                // An invalid value keeps the last valid one in force.
                self.model.config_primary_family
            }
        };
        self.config_map = object;
        if family == self.model.config_primary_family {
            return Changed::Nothing;
        }
        self.model.config_primary_family = family;
        Changed::All
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_yaml_ng::from_str(text).unwrap()
    }

    fn svc(name: &str) -> K8sService {
        yaml(&format!(
            "metadata: {{name: {name}, namespace: ns}}\nspec: {{ports: [{{name: http, port: 80}}]}}"
        ))
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        let endpoints: Vec<String> = ips
            .iter()
            .map(|ip| format!("{{addresses: [\"{ip}\"]}}"))
            .collect();
        yaml(&format!(
            "metadata: {{name: {name}, namespace: ns, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]",
            endpoints.join(", ")
        ))
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn services(names: &[&str]) -> Changed {
        Changed::Services(names.iter().map(|n| key(n)).collect())
    }

    #[test]
    fn each_change_names_the_services_it_touches() {
        let mut store = ModelStore::default();
        assert_eq!(store.upsert_service(svc("web")), services(&["web"]));
        assert_eq!(store.upsert_service(svc("web")), Changed::Nothing);
        // A slice may arrive before its Service; it is kept and joined later.
        assert_eq!(
            store.upsert_slice(slice("api-1", "api", &["10.0.0.1"])),
            services(&["api"])
        );
        assert_eq!(
            store.model().endpoints_of(&key("api")).count(Family::IPv4),
            1
        );
        // Relabelled to another Service: both are touched, the old one loses it.
        assert_eq!(
            store.upsert_slice(slice("api-1", "web", &["10.0.0.1", "10.0.0.2"])),
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
        assert_eq!(store.remove_slice(&key("api-1")), services(&["web"]));
        assert!(store.model().endpoints.is_empty());
        assert_eq!(store.remove_service(&key("web")), services(&["web"]));
        assert_eq!(store.remove_service(&key("web")), Changed::Nothing);
    }

    #[test]
    fn an_invalid_object_is_skipped_and_replaced_by_its_fix() {
        let mut store = ModelStore::default();
        store.upsert_service(svc("web"));
        let mut bad = slice("web-1", "web", &["10.0.0.1"]);
        bad.endpoints[0].addresses = vec!["not-an-ip".into()];
        store.upsert_slice(bad);
        let reasons: Vec<&str> = store.model().skipped().map(|s| s.reason.as_str()).collect();
        assert_eq!(reasons, ["address \"not-an-ip\" is not an IP address"]);
        assert!(
            store.model().services.contains_key(&key("web")),
            "the rest is served"
        );
        store.upsert_slice(slice("web-1", "web", &["10.0.0.1"]));
        assert_eq!(store.model().skipped().count(), 0);
        assert_eq!(
            store.model().endpoints_of(&key("web")).count(Family::IPv4),
            1
        );
    }

    #[test]
    fn the_config_map_changes_everything_and_a_bad_value_keeps_the_last_good_one() {
        let mut store = ModelStore::default();
        let cm = |family: &str| -> ConfigMap {
            yaml(&format!(
                "metadata: {{name: mode, namespace: ns}}\ndata: {{primaryFamily: {family}}}"
            ))
        };
        assert_eq!(store.set_config_map(Some(cm("IPv6"))), Changed::All);
        assert_eq!(store.model().config_primary_family, Some(Family::IPv6));
        assert_eq!(store.set_config_map(Some(cm("IPv7"))), Changed::Nothing);
        assert_eq!(store.model().config_primary_family, Some(Family::IPv6));
        assert_eq!(store.model().skipped().count(), 1);
        assert_eq!(store.set_config_map(None), Changed::All);
        assert_eq!(store.model().config_primary_family, None);
        assert_eq!(store.model().skipped().count(), 0);
    }

    #[test]
    fn a_sync_applies_only_the_difference() {
        let mut store = ModelStore::default();
        let mut objects = Objects::default();
        for name in ["a", "b", "c"] {
            objects.services.insert(key(name), svc(name));
        }
        objects
            .slices
            .insert(key("b-1"), slice("b-1", "b", &["10.0.0.1"]));
        assert_eq!(store.sync(objects.clone()), services(&["a", "b", "c"]));
        objects.services.remove(&key("a"));
        objects
            .slices
            .insert(key("b-1"), slice("b-1", "b", &["10.0.0.2"]));
        assert_eq!(store.sync(objects.clone()), services(&["a", "b"]));
        assert_eq!(store.sync(objects), Changed::Nothing);
    }
}
