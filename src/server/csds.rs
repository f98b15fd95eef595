//! CSDS (`envoy.service.status.v3.ClientStatusDiscoveryService`): each connected
//! client's resources with their ACKED / NACKED status, so standard tooling (istioctl-
//! style `proxy-status`, grpcdebug) can ask this server what its clients hold.
//!
//! [`client_status`] builds the answer from the client registry without I/O; the tonic
//! service only calls it.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
use envoy_types::pb::envoy::admin::v3::UpdateFailureState;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::{
    ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::authorization::NodeAuthorization;
use super::clients::ClientRegistry;
use super::protocol::StreamStatus;
use super::transport::Peer;
use crate::snapshot::ResourceType;

/// Every stream's resources and their status. With `exclude_contents`, resources are
/// listed without their bodies.
pub fn client_status(streams: &[StreamStatus], exclude_contents: bool) -> ClientStatusResponse {
    let config = streams
        .iter()
        .filter(|s| !s.node_id.is_empty())
        .map(|stream| {
            let mut generic = Vec::new();
            for ty in &stream.types {
                let rejected = ty.rejected();
                let acked = rejected.is_none() && ty.pending_nonce.is_none();
                for resource in ty.sent_resources().iter() {
                    let (config_status, client_status) = match (rejected, acked) {
                        (Some(_), _) => (ConfigStatus::Error, ClientResourceStatus::Nacked),
                        (None, true) => (ConfigStatus::Synced, ClientResourceStatus::Acked),
                        // Sent, not yet answered.
                        (None, false) => (ConfigStatus::NotSent, ClientResourceStatus::Requested),
                    };
                    generic.push(GenericXdsConfig {
                        type_url: ty.type_url.to_owned(),
                        name: resource.name().to_string(),
                        version_info: resource.version().to_string(),
                        // Never a TLS secret's body: it carries a private key.
                        xds_config: (!exclude_contents
                            && ty.type_url != ResourceType::Secret.type_url())
                        .then(|| resource.to_any()),
                        config_status: config_status as i32,
                        client_status: client_status as i32,
                        error_state: rejected.map(|nack| UpdateFailureState {
                            details: nack.message.clone(),
                            version_info: nack.version.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
            }
            ClientConfig {
                node: Some(Node {
                    id: stream.node_id.clone(),
                    cluster: stream.cluster.clone(),
                    user_agent_name: stream.user_agent.clone(),
                    ..Default::default()
                }),
                generic_xds_configs: generic,
                ..Default::default()
            }
        })
        .collect();
    ClientStatusResponse { config }
}

/// The tonic service.
#[derive(Clone)]
pub struct Csds {
    registry: Arc<ClientRegistry>,
    /// With mTLS: a client sees the nodes its certificate may claim, and no others.
    authorization: Option<Arc<NodeAuthorization>>,
}

impl Csds {
    pub fn service(
        registry: Arc<ClientRegistry>,
        authorization: Option<Arc<NodeAuthorization>>,
    ) -> ClientStatusDiscoveryServiceServer<Csds> {
        ClientStatusDiscoveryServiceServer::new(Csds {
            registry,
            authorization,
        })
    }

    fn answer(
        &self,
        peer: Option<&Peer>,
        request: &ClientStatusRequest,
    ) -> Result<ClientStatusResponse, Status> {
        let streams = self.registry.clients();
        let mut response = client_status(&streams, request.exclude_resource_contents);
        // A request naming a node asks about that node only.
        if let Some(node) = request.node.as_ref().filter(|n| !n.id.is_empty()) {
            response
                .config
                .retain(|c| c.node.as_ref().is_some_and(|n| n.id == node.id));
        }
        let Some(rules) = &self.authorization else {
            return Ok(response);
        };
        let identities = peer
            .and_then(|p| p.identities.clone())
            .unwrap_or_else(|| Arc::new([]));
        let allowed = |node: &Node| rules.check(&identities, node);
        if let Some(node) = request.node.as_ref().filter(|n| !n.id.is_empty()) {
            // Asking about a node by name: the certificate must authorize it as claimed.
            if let Err(denied) = allowed(node) {
                self.registry.metrics.authorization_denied(denied.reason());
                tracing::warn!(peer = ?peer.and_then(|p| p.addr), %denied, "refusing a CSDS request for a node the client's certificate does not name");
                return Err(Status::permission_denied(denied.to_string()));
            }
        }
        response
            .config
            .retain(|c| c.node.as_ref().is_some_and(|n| allowed(n).is_ok()));
        Ok(response)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = ResponseStream;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let this = self.clone();
        let peer = request.extensions().get::<Peer>().cloned();
        let requests = request.into_inner();
        let responses =
            requests.map(move |request| request.and_then(|r| this.answer(peer.as_ref(), &r)));
        Ok(Response::new(Box::pin(responses)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        let peer = request.extensions().get::<Peer>();
        Ok(Response::new(self.answer(peer, request.get_ref())?))
    }
}
