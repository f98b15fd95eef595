//! gRPC glue: one task per stream moves requests and snapshot changes into a protocol
//! state machine and its responses out. Nothing here decides what to send.
//!
//! Requests are read by [`super::inbound`] (SotW names left in the message's bytes) and
//! responses written by [`super::wire`] from shared, already encoded resources, so the
//! services are plain tower services registered with tonic's router under the Envoy
//! service names.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::server::NamedService;
use tonic::Status;
use tracing::{debug, field, info, info_span, warn, Instrument, Span};

use super::authorization::NodeAuthorization;
use super::clients::ClientRegistry;
use super::inbound::{Inbound, RequestMessage};
use super::limits::{CountedStream, Limits, RequestRate, StreamCount};
use super::protocol::delta::DeltaStream;
use super::protocol::sotw::SotwStream;
use super::protocol::{
    Event, Machine, NodeGrouping, ProtocolError, Response, Scope, SotwRequest, SotwResponse,
    StreamAuthorization, StreamPolicy,
};
use super::transport::{incoming, OpenStream, Peer, ReloadingTls};
use super::wire::Frames;
use crate::snapshot::{ResourceType, SnapshotCache};

/// Responses a stream may have queued for the transport. Each type has at most one
/// response awaiting its ACK, so a stream never has more than four in flight and this
/// bound is never reached by a well-behaved peer; a stuck peer blocks only its own task.
const STREAM_BUFFER: usize = 8;

/// HTTP/2 receive windows (the default is 64 KiB).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// How often the TLS files are checked for a rotation.
const TLS_RELOAD_CHECK: Duration = Duration::from_secs(1);

/// How the xDS port is served: TLS, node authorization, limits.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// TLS (and mTLS when it verifies client certificates); plaintext when `None`.
    pub tls: Option<Arc<ReloadingTls>>,
    /// Which certificate may claim which node; only with mTLS.
    pub authorization: Option<Arc<NodeAuthorization>>,
    pub limits: Limits,
}

/// The xDS server: every discovery service, sharing one cache and one client registry.
#[derive(Clone)]
pub struct XdsServer {
    inner: Arc<Inner>,
}

struct Inner {
    cache: SnapshotCache,
    grouping: NodeGrouping,
    registry: Arc<ClientRegistry>,
    options: ServerOptions,
    streams: StreamCount,
    /// Set when the server shuts down: every stream ends at once.
    stopping: watch::Sender<bool>,
}

impl XdsServer {
    /// A plaintext server with the default limits.
    pub fn new(
        cache: SnapshotCache,
        grouping: NodeGrouping,
        registry: Arc<ClientRegistry>,
    ) -> Self {
        Self::with_options(cache, grouping, registry, ServerOptions::default())
    }

    pub fn with_options(
        cache: SnapshotCache,
        grouping: NodeGrouping,
        registry: Arc<ClientRegistry>,
        options: ServerOptions,
    ) -> Self {
        XdsServer {
            inner: Arc::new(Inner {
                cache,
                grouping,
                registry,
                options,
                streams: StreamCount::default(),
                stopping: watch::channel(false).0,
            }),
        }
    }

    pub fn registry(&self) -> &Arc<ClientRegistry> {
        &self.inner.registry
    }

    /// Serves ADS, the CDS, EDS, LDS and RDS services and CSDS on `listener` until
    /// `shutdown`; then every stream is ended with `UNAVAILABLE`, so clients reconnect
    /// to another replica at once, and the connections are closed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let options = &self.inner.options;
        let limits = options.limits;
        let metrics = self.inner.registry.metrics.clone();
        if let Some(tls) = &options.tls {
            tls.clone().watch(TLS_RELOAD_CHECK, metrics.clone());
        }
        let incoming = incoming(
            listener,
            options.tls.clone(),
            limits,
            metrics,
            self.inner.stopping.subscribe(),
        );
        let csds =
            super::csds::Csds::service(self.inner.registry.clone(), options.authorization.clone());
        let stopping = self.inner.stopping.clone();
        tonic::transport::Server::builder()
            // Room for a SotW ACK naming 10,000 resources (about 150 KB) to arrive at
            // once, without waiting for window updates; what one connection can have
            // buffered unread stays bounded.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            // A backstop in HTTP/2 itself; the limit is counted (and answered with a
            // status) per stream, with room for CSDS beside it.
            .max_concurrent_streams(Some(
                u32::try_from(limits.max_streams_per_connection.saturating_add(4))
                    .unwrap_or(u32::MAX),
            ))
            .add_service(AdsService(self.clone()))
            .add_service(CdsService(self.clone()))
            .add_service(EdsService(self.clone()))
            .add_service(LdsService(self.clone()))
            .add_service(RdsService(self.clone()))
            .add_service(SdsService(self.clone()))
            .add_service(csds)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                stopping.send_replace(true);
            })
            .await
    }

    /// The policy a stream of `peer` is held to.
    fn policy(&self, peer: &Peer) -> StreamPolicy {
        let options = &self.inner.options;
        StreamPolicy {
            authorization: options
                .authorization
                .clone()
                .map(|rules| StreamAuthorization {
                    rules,
                    identities: peer.identities.clone().unwrap_or_else(|| Arc::new([])),
                }),
            max_names_per_request: options.limits.max_names_per_request,
        }
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
        let peer = request
            .extensions()
            .get::<Peer>()
            .cloned()
            .unwrap_or_else(Peer::unknown);
        let body = request.into_body();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let limits = self.inner.options.limits;
        let metrics = &self.inner.registry.metrics;
        let span = info_span!(
            "xds_stream",
            kind = field::Empty,
            node_id = field::Empty,
            peer = peer.addr.map(|a| a.to_string()).unwrap_or_default()
        );
        let policy = self.policy(&peer);
        if method.starts_with("Stream") || method.starts_with("Delta") {
            let Some(counted) = self.inner.streams.open(limits.max_streams) else {
                metrics.limit_exceeded("streams");
                let _ = tx
                    .send(Err(Status::resource_exhausted(format!(
                        "the server has {} xDS streams open, its limit; try another replica",
                        limits.max_streams
                    ))))
                    .await;
                return ResponseBody::response(rx);
            };
            let Some(on_connection) = peer.open_stream(limits.max_streams_per_connection) else {
                metrics.limit_exceeded("streams_per_connection");
                let _ = tx
                    .send(Err(Status::resource_exhausted(format!(
                        "a connection may carry at most {} xDS streams",
                        limits.max_streams_per_connection
                    ))))
                    .await;
                return ResponseBody::response(rx);
            };
            let counted = (counted, on_connection);
            let grouping = self.inner.grouping.clone();
            if method.starts_with("Stream") {
                span.record("kind", "sotw");
                let inbound = Inbound::new(body, limits.max_request_bytes);
                let machine = SotwStream::with_policy(scope, grouping, policy);
                let task = drive(machine, inbound, tx, self.inner.clone(), peer, counted);
                tokio::spawn(task.instrument(span));
            } else {
                span.record("kind", "delta");
                let inbound = Inbound::new(body, limits.max_request_bytes);
                let machine = DeltaStream::with_policy(scope, grouping, policy);
                let task = drive(machine, inbound, tx, self.inner.clone(), peer, counted);
                tokio::spawn(task.instrument(span));
            }
        } else if let (true, Scope::Single(ty)) = (method.starts_with("Fetch"), scope) {
            let mut inbound = Inbound::<_, SotwRequest>::new(body, limits.max_request_bytes);
            let answer = match inbound.message().await {
                Ok(Some(request)) => self
                    .fetch(ty, request, policy)
                    .map_err(|e| self.refused(e, &peer))
                    .map(Frames::sotw),
                Ok(None) => Err(Status::invalid_argument("no request message")),
                Err(status) => Err(self.inbound_error(status)),
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
    fn fetch(
        &self,
        ty: ResourceType,
        req: SotwRequest,
        policy: StreamPolicy,
    ) -> Result<SotwResponse, ProtocolError> {
        let mut machine =
            SotwStream::with_policy(Scope::Single(ty), self.inner.grouping.clone(), policy);
        let set = self.inner.cache.current();
        let outcome = machine.on_request(req, set.as_deref())?;
        Ok(outcome.responses.into_iter().next().unwrap_or_else(|| {
            // Nothing new for the client (it already has this version, asked for names
            // that don't exist, or nothing is published yet): answer with the current
            // version and no resources.
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
                resources: Default::default(),
            }
        }))
    }

    /// The status for a request refused by the protocol, counted and logged.
    fn refused(&self, error: ProtocolError, peer: &Peer) -> Status {
        refused(&self.inner, error, peer)
    }

    fn inbound_error(&self, status: Status) -> Status {
        inbound_error(&self.inner, status)
    }
}

/// The status for a request refused by the protocol, counted and logged with the peer.
fn refused(shared: &Inner, error: ProtocolError, peer: &Peer) -> Status {
    let metrics = &shared.registry.metrics;
    let peer = peer.addr.map(|a| a.to_string()).unwrap_or_default();
    match &error {
        ProtocolError::Unauthorized(denied) => {
            metrics.authorization_denied(denied.reason());
            warn!(%peer, %error, "refusing a client that claims a node its certificate does not name");
        }
        ProtocolError::TooManyNames { .. } => {
            metrics.limit_exceeded("names_per_request");
            warn!(%peer, %error, "refusing a request over the names limit");
        }
        _ => warn!(%peer, %error, "rejecting stream"),
    }
    error.into_status()
}

/// A request the transport could not read: too large (counted), or the client's error.
fn inbound_error(shared: &Inner, status: Status) -> Status {
    // tonic says OUT_OF_RANGE for a message over the decoding limit.
    if status.code() == tonic::Code::OutOfRange {
        shared.registry.metrics.limit_exceeded("request_bytes");
        return Status::resource_exhausted(status.message().to_owned());
    }
    status
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
    mut inbound: Inbound<tonic::body::Body, M::Request>,
    tx: mpsc::Sender<Result<Frames, Status>>,
    shared: Arc<Inner>,
    peer: Peer,
    // Counted on the server and on its connection while the stream lives.
    _counted: (CountedStream, OpenStream),
) where
    M: Machine,
    M::Request: RequestMessage,
    M::Response: Into<Frames>,
{
    let client = shared.registry.connect(machine.status());
    let metrics = &shared.registry.metrics;
    let limits = shared.options.limits;
    let mut rate = RequestRate::new(limits.requests_per_second);
    let mut snapshots = shared.cache.watch();
    let mut stopping = shared.stopping.subscribe();
    debug!("stream opened");
    loop {
        let outcome = tokio::select! {
            request = inbound.message() => match request {
                Ok(Some(request)) => {
                    if !rate.allow(tokio::time::Instant::now()) {
                        metrics.limit_exceeded("requests_per_second");
                        warn!("ending a stream over the request rate limit");
                        let _ = tx.send(Err(Status::resource_exhausted(format!(
                            "more than {} requests per second on one stream",
                            limits.requests_per_second
                        )))).await;
                        break;
                    }
                    let had_node = machine.node().is_some();
                    let set = snapshots.peek();
                    let result = machine.on_request(request, set.as_deref());
                    if !had_node {
                        if let Some(id) = machine.node().map(|n| n.id.as_str()) {
                            Span::current().record("node_id", id);
                            info!("client connected");
                            // Shown at once, even if nothing is sent to it (a client
                            // resuming with the current versions).
                            client.update(machine.status());
                        }
                    }
                    match result {
                        Ok(outcome) => outcome,
                        Err(error) => {
                            let _ = tx.send(Err(refused(&shared, error, &peer))).await;
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    let status = inbound_error(&shared, status);
                    debug!(%status, "stream ended by the client");
                    let _ = tx.send(Err(status)).await;
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
            () = stopped(&mut stopping) => {
                let _ = tx.send(Err(Status::unavailable(
                    "the xDS server is shutting down; reconnect (to another replica)",
                ))).await;
                break;
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

/// Returns once the server is shutting down.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        // The server is gone: nothing will stop this stream but its client.
        std::future::pending::<()>().await;
    }
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
    SdsService: "envoy.service.secret.v3.SecretDiscoveryService" => Scope::Single(ResourceType::Secret);
}
