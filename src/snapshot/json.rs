//! Resources as Envoy's canonical proto3 JSON (the shape of Envoy's `/config_dump`), from
//! the descriptor set that ships with envoy-types (`proto/envoy-descriptors.bin`).

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use super::{Resource, ResourceType, Snapshot};

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!("../../proto/envoy-descriptors.bin")[..])
        .expect("proto/envoy-descriptors.bin is a valid descriptor set")
});

/// One resource as proto3 JSON, `Any` expanded with its `@type`.
pub fn resource_json(resource: &Resource) -> serde_json::Value {
    let any = POOL
        .get_message_by_name("google.protobuf.Any")
        .expect("Any is in the descriptor set");
    let message = DynamicMessage::decode(any, resource.encoded_any().clone())
        .expect("resources are valid Any messages");
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

/// A resource as an operator may see it: private keys are never shown (TLS secrets
/// carry them; their versions still tell a rotation).
pub fn redacted_json(resource: &Resource, ty: ResourceType) -> serde_json::Value {
    let mut json = resource_json(resource);
    if ty == ResourceType::Secret {
        if let Some(key) = json.pointer_mut("/tls_certificate/private_key") {
            *key = serde_json::json!("[redacted]");
        }
    }
    json
}

/// Every resource of a snapshot, by type, each with its name and version.
pub fn snapshot_json(snapshot: &Snapshot) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for ty in ResourceType::ALL {
        let key = match ty {
            ResourceType::Cluster => "clusters",
            ResourceType::Endpoint => "endpoints",
            ResourceType::Secret => "secrets",
            ResourceType::Listener => "listeners",
            ResourceType::Route => "routes",
        };
        let resources = snapshot.resources(ty);
        out.insert(
            key.into(),
            serde_json::json!({
                "version_info": resources.version().to_string(),
                "resources": resources.iter().map(|r| serde_json::json!({
                    "name": &**r.name(),
                    "version": r.version().to_string(),
                    "resource": redacted_json(r, ty),
                })).collect::<Vec<_>>(),
            }),
        );
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::fixtures::*;

    #[test]
    fn any_is_expanded_with_its_type_and_proto_field_names() {
        let r = Resource::new(&http_listener("l", "0.0.0.0", 8080, "routes"));
        let json = resource_json(&r);
        assert_eq!(
            json["@type"],
            "type.googleapis.com/envoy.config.listener.v3.Listener"
        );
        assert_eq!(json["address"]["socket_address"]["port_value"], 8080);
        let hcm = &json["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            hcm["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        assert_eq!(hcm["rds"]["route_config_name"], "routes");
    }
}
