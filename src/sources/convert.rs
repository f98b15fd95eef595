//! The Kubernetes edge: Services, EndpointSlices and the mode ConfigMap (k8s-openapi
//! types) become model changes here, and nowhere else. Invalid objects are reported with
//! a reason and left out; everything else is kept. Both sources use it: the Kubernetes
//! watch converts each object as it arrives, the manifest directory the objects of the
//! files that changed ([`Objects::changes_to`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ConfigMap, Secret as K8sSecret, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{
    Endpoint, EndpointState, Family, ModelChange, ObjectKey, ObjectKind, PortKind, ProxyProtocol,
    Service, ServiceKey, ServicePort, Skipped, Slice, SliceEndpoints, TlsMode, TlsSecret,
};

/// Every annotation the product reads starts with this.
pub const ANNOTATION_PREFIX: &str = "dualstack-xds.io/";
pub const ANNOTATION_PRIMARY_FAMILY: &str = "dualstack-xds.io/primary-family";
pub const ANNOTATION_FAILOVER: &str = "dualstack-xds.io/failover";
pub const ANNOTATION_PROXY_PROTOCOL: &str = "dualstack-xds.io/proxy-protocol";
pub const ANNOTATION_LISTENER_PORTS: &str = "dualstack-xds.io/listener-ports";
pub const ANNOTATION_INGRESS: &str = "dualstack-xds.io/ingress";
pub const ANNOTATION_HOSTS: &str = "dualstack-xds.io/hosts";
pub const ANNOTATION_TLS: &str = "dualstack-xds.io/tls";
pub const ANNOTATION_TLS_SECRET: &str = "dualstack-xds.io/tls-secret";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const CONFIG_PRIMARY_FAMILY_KEY: &str = "primaryFamily";

/// An object's identity (a missing namespace is `default`, as kubectl has it).
pub fn key_of(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey {
        namespace: meta.namespace.as_deref().unwrap_or("default").into(),
        name: meta.name.as_deref().unwrap_or_default().into(),
    }
}

/// Kubernetes names: a namespace and a Service name are DNS labels (RFC 1123: lowercase
/// letters, digits and `-`, at most 63, starting and ending alphanumeric). Resource names
/// are built from them (`xds:///NAME.NAMESPACE:PORT`), so anything else could make two
/// Services collide.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} is not a DNS label (lowercase letters, digits and '-', at most 63)"
        ))
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
    convert_service(object, &key).map_err(|reason| Skipped::new(ObjectKind::Service, &key, reason))
}

fn convert_service(object: &K8sService, key: &ServiceKey) -> Result<Service, String> {
    if key.name.is_empty() {
        return Err("metadata.name is missing".into());
    }
    check_name("name", &key.name)?;
    check_name("namespace", &key.namespace)?;
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
    let hosts = annotation(ANNOTATION_HOSTS)
        .map(parse_hosts)
        .transpose()?
        .unwrap_or_default();
    let tls = match (annotation(ANNOTATION_TLS).map(str::trim), annotation(ANNOTATION_TLS_SECRET)) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(format!(
                "annotation {ANNOTATION_TLS_SECRET} without {ANNOTATION_TLS}: terminate"
            ))
        }
        (Some("passthrough"), None) => Some(TlsMode::Passthrough),
        (Some("passthrough"), Some(_)) => {
            return Err(format!(
                "annotation {ANNOTATION_TLS_SECRET}: a passthrough Service's backend holds its own certificate"
            ))
        }
        (Some("terminate"), Some(secret)) => {
            let secret = secret.trim();
            check_subdomain(ANNOTATION_TLS_SECRET, secret)?;
            Some(TlsMode::Terminate {
                secret: ObjectKey::new(key.namespace.clone(), secret),
            })
        }
        (Some("terminate"), None) => {
            return Err(format!(
                "annotation {ANNOTATION_TLS}: terminate needs {ANNOTATION_TLS_SECRET} (a kubernetes.io/tls Secret)"
            ))
        }
        (Some(other), _) => {
            return Err(format!(
                "annotation {ANNOTATION_TLS}: {other:?} is not passthrough or terminate"
            ))
        }
    };
    if tls.is_some() && hosts.is_empty() {
        return Err(format!(
            "annotation {ANNOTATION_TLS} needs {ANNOTATION_HOSTS}: TLS on a shared port is routed by SNI"
        ));
    }
    if !hosts.is_empty() {
        // Every port joins the shared listener of its listener port: by SNI with TLS, by
        // Host without.
        for port in &ports {
            match (port.kind, &tls) {
                (PortKind::Udp, _) => {
                    return Err(format!(
                        "port {}: UDP cannot be routed by host ({ANNOTATION_HOSTS})",
                        port.port
                    ))
                }
                (PortKind::Tcp, None) => {
                    return Err(format!(
                        "port {}: {ANNOTATION_HOSTS} routes HTTP by Host; give the port appProtocol http (or h2c, grpc), or set {ANNOTATION_TLS}",
                        port.port
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(Service {
        key: key.clone(),
        ports,
        primary_family,
        failover,
        proxy_protocol,
        ingress,
        hosts,
        tls,
    })
}

/// `"shop.example.com, *.shop.example.com"`: names to route by (lowercase DNS names, or
/// `*.` and a DNS name), sorted, without duplicates.
fn parse_hosts(value: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for host in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let host = host.to_ascii_lowercase();
        let name = host.strip_prefix("*.").unwrap_or(&host);
        check_subdomain(ANNOTATION_HOSTS, name).map_err(|_| {
            format!("annotation {ANNOTATION_HOSTS}: {host:?} is not a host name or *.name")
        })?;
        if !name.contains('.') && host.starts_with("*.") {
            return Err(format!(
                "annotation {ANNOTATION_HOSTS}: {host:?} would match a whole top-level domain"
            ));
        }
        hosts.push(host);
    }
    if hosts.is_empty() {
        return Err(format!("annotation {ANNOTATION_HOSTS} names no host"));
    }
    hosts.sort();
    hosts.dedup();
    Ok(hosts)
}

/// A DNS subdomain (RFC 1123): dot-separated labels, at most 253 characters.
fn check_subdomain(what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| check_name(what, label).is_ok());
    if valid {
        Ok(())
    } else {
        Err(format!("{what}: {name:?} is not a DNS name"))
    }
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

/// An EndpointSlice as the model sees it: `Ok(None)` for slices the product ignores
/// (FQDN, no Service label).
pub fn endpoint_slice(object: &EndpointSlice) -> Result<Option<SliceEndpoints>, Skipped> {
    let key = key_of(&object.metadata);
    convert_slice(object, &key)
        .map_err(|reason| Skipped::new(ObjectKind::EndpointSlice, &key, reason))
}

fn convert_slice(
    object: &EndpointSlice,
    key: &ObjectKey,
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
        service: ObjectKey::new(key.namespace.clone(), service),
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
            Skipped::new(
                ObjectKind::ConfigMap,
                &key,
                format!("{CONFIG_PRIMARY_FAMILY_KEY}: {e}"),
            )
        })
}

/// A `kubernetes.io/tls` Secret's certificate and key, checked: both parse as PEM and
/// the key is the certificate's.
pub fn tls_secret(object: &K8sSecret) -> Result<TlsSecret, Skipped> {
    let key = key_of(&object.metadata);
    convert_secret(object).map_err(|reason| Skipped::new(ObjectKind::Secret, &key, reason))
}

fn convert_secret(object: &K8sSecret) -> Result<TlsSecret, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let field = |name: &str| -> Result<String, String> {
        let bytes = object
            .string_data
            .as_ref()
            .and_then(|d| d.get(name).map(|s| s.as_bytes().to_vec()))
            .or_else(|| {
                object
                    .data
                    .as_ref()
                    .and_then(|d| d.get(name).map(|b| b.0.clone()))
            })
            .ok_or_else(|| format!("has no {name}"))?;
        String::from_utf8(bytes).map_err(|_| format!("{name} is not PEM text"))
    };
    if let Some(ty) = object.type_.as_deref() {
        if ty != "kubernetes.io/tls" && ty != "Opaque" {
            return Err(format!("type {ty} is not kubernetes.io/tls"));
        }
    }
    let certificate_chain = field("tls.crt")?;
    let private_key = field("tls.key")?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate_chain.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls.crt: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(private_key.as_bytes())
        .map_err(|e| format!("tls.key: {e}"))?;
    rustls::sign::CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| format!("tls.key does not go with tls.crt: {e}"))?;
    Ok(TlsSecret {
        certificate_chain,
        private_key,
    })
}

/// A kind of Kubernetes object the product reads, and the model change it makes.
pub trait Convert {
    const KIND: ObjectKind;
    fn metadata(&self) -> &ObjectMeta;
    /// The model change this object's current content makes.
    fn change(&self) -> ModelChange;
    fn key(&self) -> ObjectKey {
        key_of(self.metadata())
    }
}

impl Convert for K8sService {
    const KIND: ObjectKind = ObjectKind::Service;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn change(&self) -> ModelChange {
        ModelChange::Service(self.key(), service(self))
    }
}

impl Convert for EndpointSlice {
    const KIND: ObjectKind = ObjectKind::EndpointSlice;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn change(&self) -> ModelChange {
        ModelChange::Slice(self.key(), endpoint_slice(self))
    }
}

impl Convert for ConfigMap {
    const KIND: ObjectKind = ObjectKind::ConfigMap;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn change(&self) -> ModelChange {
        ModelChange::Mode(Some(config_primary_family(self)))
    }
}

impl Convert for K8sSecret {
    const KIND: ObjectKind = ObjectKind::Secret;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn change(&self) -> ModelChange {
        ModelChange::Secret(self.key(), tls_secret(self))
    }
}

/// The objects a manifest source selects, by identity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub services: BTreeMap<ObjectKey, K8sService>,
    pub slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub config_map: Option<ConfigMap>,
    pub secrets: BTreeMap<ObjectKey, K8sSecret>,
}

impl Objects {
    /// The model changes that turn `self` into `newer`: only objects that differ are
    /// converted.
    pub fn changes_to(&self, newer: &Objects) -> Vec<ModelChange> {
        let mut changes = Vec::new();
        diff(&self.services, &newer.services, &mut changes);
        diff(&self.slices, &newer.slices, &mut changes);
        diff(&self.secrets, &newer.secrets, &mut changes);
        if self.config_map != newer.config_map {
            changes.push(match &newer.config_map {
                Some(config_map) => config_map.change(),
                None => ModelChange::removal(ObjectKind::ConfigMap, ObjectKey::default()),
            });
        }
        changes
    }
}

fn diff<K: Convert + PartialEq>(
    old: &BTreeMap<ObjectKey, K>,
    new: &BTreeMap<ObjectKey, K>,
    changes: &mut Vec<ModelChange>,
) {
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        changes.push(ModelChange::removal(K::KIND, key.clone()));
    }
    for (key, object) in new {
        if old.get(key) != Some(object) {
            changes.push(object.change());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Changed, ModelStore};

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

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("ns", name)
    }

    #[test]
    fn objects_are_converted_with_reasons_for_what_is_wrong() {
        let mut bad = slice("web-1", "web", &["10.0.0.1"]);
        bad.endpoints[0].addresses = vec!["not-an-ip".into()];
        assert_eq!(
            endpoint_slice(&bad).unwrap_err().reason,
            "address \"not-an-ip\" is not an IP address"
        );
        let v6 = slice("web-1", "web", &["fd00::1"]);
        assert!(endpoint_slice(&v6)
            .unwrap_err()
            .reason
            .contains("is not IPv4"));
        let mut dotted = svc("a.b");
        assert!(service(&dotted)
            .unwrap_err()
            .reason
            .contains("not a DNS label"));
        dotted.metadata.name = Some("ok".into());
        dotted.metadata.namespace = Some("Caps".into());
        assert!(service(&dotted).unwrap_err().reason.contains("namespace"));
        let cm: ConfigMap =
            yaml("metadata: {name: mode, namespace: ns}\ndata: {primaryFamily: IPv7}");
        assert!(config_primary_family(&cm)
            .unwrap_err()
            .reason
            .contains("IPv7"));
    }

    #[test]
    fn only_objects_that_differ_become_changes() {
        let mut store = ModelStore::default();
        let mut objects = Objects::default();
        for name in ["a", "b", "c"] {
            objects.services.insert(key(name), svc(name));
        }
        objects
            .slices
            .insert(key("b-1"), slice("b-1", "b", &["10.0.0.1"]));
        let first = Objects::default().changes_to(&objects);
        assert_eq!(first.len(), 4);
        store.apply_all(first);
        let mut newer = objects.clone();
        newer.services.remove(&key("a"));
        newer
            .slices
            .insert(key("b-1"), slice("b-1", "b", &["10.0.0.2"]));
        let changes = objects.changes_to(&newer);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(
            store.apply_all(changes),
            Changed::Services([key("a"), key("b")].into())
        );
        assert!(newer.changes_to(&newer).is_empty());
    }
}
