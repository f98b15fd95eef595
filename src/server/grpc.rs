//! gRPC glue: one task per stream moves requests and snapshot changes into a protocol
//! state machine and its responses out. Nothing here decides what to send.
//!
//! Requests are decoded by tonic; responses are written by [`super::wire`] from shared,
//! already encoded resources, so the services are plain tower services registered with
//! tonic's router under the Envoy service names.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use http_body::Frame;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use tonic::Status;
use tracing::{debug, field, info, info_span, warn, Instrument, Span};

use super::clients::ClientRegistry;
use super::protocol::delta::DeltaStream;
use super::protocol::sotw::SotwStream;
use super::protocol::{Event, Machine, NodeGrouping, ProtocolError, Response, Scope, SotwResponse};
use super::wire::Frames;
use crate::snapshot::{ResourceType, SnapshotCache};

/// Responses a stream may have queued for the transport. Each type has at most one
/// response awaiting its ACK, so a stream never has more than four in flight and this
/// bound is never reached by a well-behaved peer; a stuck peer blocks only its own task.
const STREAM_BUFFER: usize = 8;

/// Largest request accepted (a SotW EDS request names every cluster).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

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

    /// Serves ADS, the CDS, EDS, LDS and RDS services and CSDS on `listener` until
    /// `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(AdsService(self.clone()))
            .add_service(CdsService(self.clone()))
            .add_service(EdsService(self.clone()))
            .add_service(LdsService(self.clone()))
            .add_service(RdsService(self.clone()))
            .add_service(super::csds::Csds::service(self.inner.registry.clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }

    /// Dispatches one gRPC call by method name (`Stream*`, `Delta*`, `Fetch*`).
    async fn call(
        self,
        scope: Scope,
        request: http::Request<tonic::body::Body>,
    ) -> http::Response<ResponseBody> {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let body = request.into_body();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let span = info_span!("xds_stream", kind = field::Empty, node_id = field::Empty);
        if method.starts_with("Stream") {
            span.record("kind", "sotw");
            let inbound = decode::<DiscoveryRequest, DiscoveryResponse>(body);
            let machine = SotwStream::new(scope, self.inner.grouping.clone());
            tokio::spawn(drive(machine, inbound, tx, self.inner.clone()).instrument(span));
        } else if method.starts_with("Delta") {
            span.record("kind", "delta");
            let inbound = decode::<DeltaDiscoveryRequest, DeltaDiscoveryResponse>(body);
            let machine = DeltaStream::new(scope, self.inner.grouping.clone());
            tokio::spawn(drive(machine, inbound, tx, self.inner.clone()).instrument(span));
        } else if let (true, Scope::Single(ty)) = (method.starts_with("Fetch"), scope) {
            let mut inbound = decode::<DiscoveryRequest, DiscoveryResponse>(body);
            let answer = match inbound.message().await {
                Ok(Some(request)) => self.fetch(ty, request).map(Frames::sotw),
                Ok(None) => Err(Status::invalid_argument("no request message")),
                Err(status) => Err(status),
            };
            let _ = tx.send(answer).await;
        } else {
            let _ = tx
                .send(Err(Status::unimplemented(format!(
                    "unknown method {method}"
                ))))
                .await;
        }
        ResponseBody::response(rx)
    }

    /// A one-shot SotW fetch (the REST-style `Fetch*` methods).
    fn fetch(&self, ty: ResourceType, req: DiscoveryRequest) -> Result<SotwResponse, Status> {
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
            let version_info = machine
                .status()
                .types
                .into_iter()
                .find_map(|t| t.sent_version)
                .unwrap_or_default();
            SotwResponse {
                ty,
                version_info,
                nonce: String::new(),
                resources: Vec::new(),
            }
        }))
    }
}

fn decode<Req, Resp>(body: tonic::body::Body) -> Streaming<Req>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
{
    let decoder = tonic_prost::ProstCodec::<Resp, Req>::default().decoder();
    Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES))
}

/// A gRPC response body: the stream's responses as they come, then the status trailers.
pub struct ResponseBody {
    rx: mpsc::Receiver<Result<Frames, Status>>,
    current: Option<Frames>,
    done: bool,
}

impl ResponseBody {
    fn response(rx: mpsc::Receiver<Result<Frames, Status>>) -> http::Response<ResponseBody> {
        let mut response = http::Response::new(ResponseBody {
            rx,
            current: None,
            done: false,
        });
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(chunk) = self.current.as_mut().and_then(Iterator::next) {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            self.current = None;
            let status = match ready!(self.rx.poll_recv(cx)) {
                Some(Ok(frames)) => {
                    self.current = Some(frames);
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            self.done = true;
            let mut trailers = http::HeaderMap::new();
            if let Err(status) = status.add_header(&mut trailers) {
                warn!(%status, "could not encode a gRPC status");
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }
}

/// The per-stream task.
async fn drive<M>(
    mut machine: M,
    mut inbound: Streaming<M::Request>,
    tx: mpsc::Sender<Result<Frames, Status>>,
    shared: Arc<Inner>,
) where
    M: Machine,
    M::Response: Into<Frames>,
{
    let client = shared.registry.connect(machine.status());
    let metrics = &shared.registry.metrics;
    let mut snapshots = shared.cache.watch();
    debug!("stream opened");
    loop {
        let outcome = tokio::select! {
            request = inbound.message() => match request {
                Ok(Some(request)) => {
                    let had_node = machine.node().is_some();
                    let set = snapshots.peek();
                    let result = machine.on_request(request, set.as_deref());
                    if !had_node {
                        if let Some(id) = machine.node().map(|n| n.id.as_str()) {
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
            metrics.response_sent(response.ty());
            if tx.send(Ok(response.into())).await.is_err() {
                return;
            }
        }
    }
    debug!("stream closed");
}

/// The tower services, one per Envoy discovery service name.
macro_rules! discovery_services {
    ($($service:ident: $name:literal => $scope:expr;)*) => {$(
        #[derive(Clone)]
        struct $service(XdsServer);

        impl NamedService for $service {
            const NAME: &'static str = $name;
        }

        impl tower_service::Service<http::Request<tonic::body::Body>> for $service {
            type Response = http::Response<ResponseBody>;
            type Error = Infallible;
            type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
                let server = self.0.clone();
                Box::pin(async move { Ok(server.call($scope, request).await) })
            }
        }
    )*};
}

discovery_services! {
    AdsService: "envoy.service.discovery.v3.AggregatedDiscoveryService" => Scope::Aggregated;
    CdsService: "envoy.service.cluster.v3.ClusterDiscoveryService" => Scope::Single(ResourceType::Cluster);
    EdsService: "envoy.service.endpoint.v3.EndpointDiscoveryService" => Scope::Single(ResourceType::Endpoint);
    LdsService: "envoy.service.listener.v3.ListenerDiscoveryService" => Scope::Single(ResourceType::Listener);
    RdsService: "envoy.service.route.v3.RouteDiscoveryService" => Scope::Single(ResourceType::Route);
}
