//! tonic glue: one task per stream moves requests and snapshot changes into a protocol
//! state machine and its responses out. Nothing here decides what to send.

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, field, info, info_span, warn, Instrument, Span};

use super::clients::ClientRegistry;
use super::protocol::delta::DeltaStream;
use super::protocol::sotw::SotwStream;
use super::protocol::{Event, NodeGrouping, Outcome, ProtocolError, Scope, StreamStatus};
use crate::snapshot::{ResourceType, SnapshotCache, SnapshotSet};

/// Responses a stream may have queued for the transport. Each type has at most one
/// response awaiting its ACK, so a stream never has more than four in flight and this
/// bound is never reached by a well-behaved peer; a stuck peer blocks only its own task.
const STREAM_BUFFER: usize = 8;

/// The xDS server: every discovery service, sharing one cache and one client registry.
#[derive(Clone)]
pub struct XdsServer {
    inner: Arc<Inner>,
}

struct Inner {
    cache: SnapshotCache,
    grouping: NodeGrouping,
    registry: Arc<ClientRegistry>,
}

impl XdsServer {
    pub fn new(
        cache: SnapshotCache,
        grouping: NodeGrouping,
        registry: Arc<ClientRegistry>,
    ) -> Self {
        XdsServer {
            inner: Arc::new(Inner {
                cache,
                grouping,
                registry,
            }),
        }
    }

    pub fn registry(&self) -> &Arc<ClientRegistry> {
        &self.inner.registry
    }

    /// Serves ADS and the CDS, EDS, LDS and RDS services on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(self.clone()))
            .add_service(ClusterDiscoveryServiceServer::new(self.clone()))
            .add_service(EndpointDiscoveryServiceServer::new(self.clone()))
            .add_service(ListenerDiscoveryServiceServer::new(self.clone()))
            .add_service(RouteDiscoveryServiceServer::new(self))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }

    fn open_sotw(
        &self,
        scope: Scope,
        inbound: Streaming<DiscoveryRequest>,
    ) -> ReceiverStream<Result<DiscoveryResponse, Status>> {
        let machine = SotwStream::new(scope, self.inner.grouping.clone());
        self.open(machine, inbound)
    }

    fn open_delta(
        &self,
        scope: Scope,
        inbound: Streaming<DeltaDiscoveryRequest>,
    ) -> ReceiverStream<Result<DeltaDiscoveryResponse, Status>> {
        let machine = DeltaStream::new(scope, self.inner.grouping.clone());
        self.open(machine, inbound)
    }

    fn open<M: Machine>(
        &self,
        machine: M,
        inbound: Streaming<M::Request>,
    ) -> ReceiverStream<Result<M::Response, Status>> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let span = info_span!(
            "xds_stream",
            kind = machine.status().kind.as_str(),
            node_id = field::Empty
        );
        tokio::spawn(drive(machine, inbound, tx, self.inner.clone()).instrument(span));
        ReceiverStream::new(rx)
    }

    /// A one-shot SotW fetch (the REST-style `Fetch*` methods).
    fn fetch(&self, ty: ResourceType, req: DiscoveryRequest) -> Result<DiscoveryResponse, Status> {
        let set = self
            .inner
            .cache
            .current()
            .ok_or_else(|| Status::unavailable("no configuration has been published yet"))?;
        let mut machine = SotwStream::new(Scope::Single(ty), self.inner.grouping.clone());
        let outcome = machine
            .on_request(req, Some(&set))
            .map_err(ProtocolError::into_status)?;
        Ok(outcome.responses.into_iter().next().unwrap_or_else(|| {
            // Nothing new for the client (it already has this version, or asked for names
            // that don't exist): answer with the current version and no resources.
            let version = machine
                .status()
                .types
                .into_iter()
                .find_map(|t| t.sent_version)
                .unwrap_or_default();
            DiscoveryResponse {
                version_info: version,
                type_url: ty.type_url().to_owned(),
                ..Default::default()
            }
        }))
    }
}

/// What the driver needs from a protocol state machine.
trait Machine: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    fn on_request(
        &mut self,
        req: Self::Request,
        set: Option<&SnapshotSet>,
    ) -> Result<Outcome<Self::Response>, ProtocolError>;
    fn on_snapshot(&mut self, set: &SnapshotSet) -> Outcome<Self::Response>;
    fn status(&self) -> StreamStatus;
    fn node_id(&self) -> Option<&str>;
    fn response_type(response: &Self::Response) -> Option<ResourceType>;
}

macro_rules! impl_machine {
    ($machine:ty, $req:ty, $resp:ty) => {
        impl Machine for $machine {
            type Request = $req;
            type Response = $resp;
            fn on_request(
                &mut self,
                req: $req,
                set: Option<&SnapshotSet>,
            ) -> Result<Outcome<$resp>, ProtocolError> {
                <$machine>::on_request(self, req, set)
            }
            fn on_snapshot(&mut self, set: &SnapshotSet) -> Outcome<$resp> {
                <$machine>::on_snapshot(self, set)
            }
            fn status(&self) -> StreamStatus {
                <$machine>::status(self)
            }
            fn node_id(&self) -> Option<&str> {
                self.node().map(|n| n.id.as_str())
            }
            fn response_type(response: &$resp) -> Option<ResourceType> {
                ResourceType::from_type_url(&response.type_url)
            }
        }
    };
}

impl_machine!(SotwStream, DiscoveryRequest, DiscoveryResponse);
impl_machine!(DeltaStream, DeltaDiscoveryRequest, DeltaDiscoveryResponse);

/// The per-stream task.
async fn drive<M: Machine>(
    mut machine: M,
    mut inbound: Streaming<M::Request>,
    tx: mpsc::Sender<Result<M::Response, Status>>,
    shared: Arc<Inner>,
) {
    let client = shared.registry.connect(machine.status());
    let metrics = &shared.registry.metrics;
    let mut snapshots = shared.cache.watch();
    debug!("stream opened");
    loop {
        let outcome = tokio::select! {
            request = inbound.message() => match request {
                Ok(Some(request)) => {
                    let had_node = machine.node_id().is_some();
                    let set = snapshots.latest();
                    let result = machine.on_request(request, set.as_deref());
                    if !had_node {
                        if let Some(id) = machine.node_id() {
                            Span::current().record("node_id", id);
                            info!("client connected");
                        }
                    }
                    match result {
                        Ok(outcome) => outcome,
                        Err(error) => {
                            warn!(%error, "rejecting stream");
                            let _ = tx.send(Err(error.into_status())).await;
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    debug!(%status, "stream ended by the client");
                    break;
                }
            },
            alive = snapshots.changed() => {
                if !alive {
                    break;
                }
                match snapshots.latest() {
                    Some(set) => machine.on_snapshot(&set),
                    None => continue,
                }
            }
            _ = tx.closed() => break,
        };
        for event in &outcome.events {
            match event {
                Event::Ack { ty, version } => debug!(r#type = %ty, %version, "ack"),
                Event::Nack {
                    ty,
                    version,
                    message,
                } => {
                    metrics.nack(*ty);
                    warn!(r#type = %ty, %version, error = %message, "client rejected configuration (NACK)");
                }
                Event::StaleNonce { ty, nonce } => {
                    debug!(r#type = %ty, %nonce, "ignoring stale nonce")
                }
            }
        }
        if !outcome.responses.is_empty() || !outcome.events.is_empty() {
            client.update(machine.status());
        }
        for response in outcome.responses {
            if let Some(ty) = M::response_type(&response) {
                metrics.response_sent(ty);
            }
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
    }
    debug!("stream closed");
}

type SotwStreamOut = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaStreamOut = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = SotwStreamOut;
    type DeltaAggregatedResourcesStream = DeltaStreamOut;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStreamOut>, Status> {
        Ok(Response::new(
            self.open_sotw(Scope::Aggregated, request.into_inner()),
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStreamOut>, Status> {
        Ok(Response::new(
            self.open_delta(Scope::Aggregated, request.into_inner()),
        ))
    }
}

/// The per-type services differ only in names.
macro_rules! per_type_service {
    ($trait:ident, $ty:expr, $stream:ident, $stream_type:ident, $delta:ident, $delta_type:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $trait for XdsServer {
            type $stream_type = SotwStreamOut;
            type $delta_type = DeltaStreamOut;

            async fn $stream(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<SotwStreamOut>, Status> {
                Ok(Response::new(
                    self.open_sotw(Scope::Single($ty), request.into_inner()),
                ))
            }

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaStreamOut>, Status> {
                Ok(Response::new(
                    self.open_delta(Scope::Single($ty), request.into_inner()),
                ))
            }

            async fn $fetch(
                &self,
                request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                self.fetch($ty, request.into_inner()).map(Response::new)
            }
        }
    };
}

per_type_service!(
    ClusterDiscoveryService,
    ResourceType::Cluster,
    stream_clusters,
    StreamClustersStream,
    delta_clusters,
    DeltaClustersStream,
    fetch_clusters
);
per_type_service!(
    EndpointDiscoveryService,
    ResourceType::Endpoint,
    stream_endpoints,
    StreamEndpointsStream,
    delta_endpoints,
    DeltaEndpointsStream,
    fetch_endpoints
);
per_type_service!(
    ListenerDiscoveryService,
    ResourceType::Listener,
    stream_listeners,
    StreamListenersStream,
    delta_listeners,
    DeltaListenersStream,
    fetch_listeners
);
per_type_service!(
    RouteDiscoveryService,
    ResourceType::Route,
    stream_routes,
    StreamRoutesStream,
    delta_routes,
    DeltaRoutesStream,
    fetch_routes
);
