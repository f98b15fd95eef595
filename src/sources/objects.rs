//! The Kubernetes edge: Services, EndpointSlices and the mode ConfigMap (k8s-openapi
//! types) become model values here, and nowhere else. Invalid objects are reported with a
//! reason and left out; everything else is kept.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ConfigMap, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{
    Endpoint, EndpointState, Endpoints, Family, Model, PortKind, ProxyProtocol, Service,
    ServiceKey, ServicePort, Skipped,
};

pub const ANNOTATION_PRIMARY_FAMILY: &str = "dualstack-xds.io/primary-family";
pub const ANNOTATION_FAILOVER: &str = "dualstack-xds.io/failover";
pub const ANNOTATION_PROXY_PROTOCOL: &str = "dualstack-xds.io/proxy-protocol";
pub const ANNOTATION_LISTENER_PORTS: &str = "dualstack-xds.io/listener-ports";
pub const ANNOTATION_INGRESS: &str = "dualstack-xds.io/ingress";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const CONFIG_PRIMARY_FAMILY_KEY: &str = "primaryFamily";

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ServiceKey {
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

/// An EndpointSlice's contribution: the Service it belongs to, its family, its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoints {
    pub service: ServiceKey,
    pub family: Family,
    pub endpoints: Vec<Endpoint>,
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
    let Some(service) = object
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
    else {
        return Ok(None);
    };
    let mut ports = BTreeMap::new();
    for port in object.ports.clone().unwrap_or_default() {
        let Some(number) = port.port else {
            continue; // "all ports": not usable for a proxy
        };
        ports.insert(
            port.name.clone().unwrap_or_default(),
            port_number("port", number)?,
        );
    }
    let mut endpoints = Vec::new();
    for endpoint in &object.endpoints {
        let conditions = endpoint.conditions.clone().unwrap_or_default();
        let state = if conditions.ready != Some(false) {
            EndpointState::Ready
        } else if conditions.serving == Some(true) && conditions.terminating == Some(true) {
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
                ports: ports.clone(),
            });
        }
    }
    Ok(Some(SliceEndpoints {
        service: ServiceKey {
            namespace: key.namespace.clone(),
            name: service.clone(),
        },
        family,
        endpoints,
    }))
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
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: BTreeMap<ServiceKey, K8sService>,
    pub slices: BTreeMap<ServiceKey, EndpointSlice>,
    pub config_map: Option<ConfigMap>,
}

impl Objects {
    /// Joins everything into a model (slices to Services by `kubernetes.io/service-name`).
    pub fn to_model(&self) -> Model {
        let mut model = Model::default();
        let mut endpoints: BTreeMap<ServiceKey, Endpoints> = BTreeMap::new();
        for slice in self.slices.values() {
            match endpoint_slice(slice) {
                Ok(Some(s)) => endpoints
                    .entry(s.service)
                    .or_default()
                    .merge(s.family, s.endpoints),
                Ok(None) => {}
                Err(skip) => model.skipped.push(skip),
            }
        }
        for object in self.services.values() {
            match service(object) {
                Ok(svc) => {
                    let eps = endpoints.remove(&svc.key).unwrap_or_default();
                    model.services.insert(svc.key.clone(), (svc, eps));
                }
                Err(skip) => model.skipped.push(skip),
            }
        }
        if let Some(cm) = &self.config_map {
            match config_primary_family(cm) {
                Ok(family) => model.config_primary_family = family,
                Err(skip) => model.skipped.push(skip),
            }
        }
        model
    }
}
