//! Responses as the state machines decide them: metadata plus shared, already encoded
//! resources. `server::wire` writes them to the network without re-encoding.

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource,
};

use crate::snapshot::{Resource, ResourceType};

/// A response of either protocol.
pub trait Response: std::fmt::Debug + Send + 'static {
    /// The protobuf message.
    type Proto: std::fmt::Debug;
    /// The type of the resources it carries.
    fn ty(&self) -> ResourceType;
    /// The protobuf message (copies every resource; the server uses `server::wire`).
    fn to_proto(&self) -> Self::Proto;
}

/// A SotW `DiscoveryResponse`.
#[derive(Clone, Debug)]
pub struct SotwResponse {
    pub ty: ResourceType,
    pub version_info: String,
    pub nonce: String,
    pub resources: Vec<Resource>,
}

/// A `DeltaDiscoveryResponse`.
#[derive(Clone, Debug)]
pub struct DeltaResponse {
    pub ty: ResourceType,
    pub system_version_info: String,
    pub nonce: String,
    pub resources: Vec<Resource>,
    pub removed_resources: Vec<String>,
}

impl Response for SotwResponse {
    type Proto = DiscoveryResponse;
    fn ty(&self) -> ResourceType {
        self.ty
    }
    fn to_proto(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(Resource::to_any).collect(),
            type_url: self.ty.type_url().to_owned(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl Response for DeltaResponse {
    type Proto = DeltaDiscoveryResponse;
    fn ty(&self) -> ResourceType {
        self.ty
    }
    fn to_proto(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|r| DeltaResource {
                    name: r.name().to_string(),
                    version: r.version().to_string(),
                    resource: Some(r.to_any()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.ty.type_url().to_owned(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}
