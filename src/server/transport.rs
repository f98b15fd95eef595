//! The xDS port's connections: TCP, or TLS with rustls (the certificate reloaded when its
//! files change, client certificates verified against a CA for mTLS). Each connection
//! carries what its streams need to know of it ([`Peer`], in every request's extensions):
//! the peer's address, its certificate's identities, and how many streams it has open,
//! for the per-connection limit and the idle timeout (a connection without a stream for
//! that long is closed).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::Stream;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::clients::XdsMetrics;
use super::limits::Limits;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS on the xDS port: the server's certificate chain and key, and the CA that client
/// certificates must chain to (mTLS), as PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A TLS configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    pub path: String,
    pub message: String,
}

fn tls_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the files hold now.
struct Loaded {
    key: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls_error(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(&files.cert, e))?;
    if certs.is_empty() {
        return Err(tls_error(&files.cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| tls_error(&files.key, e))?;
    let key = CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| tls_error(&files.key, format!("does not match the certificate: {e}")))?;
    let verifier = match &files.client_ca {
        None => None,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(path).map_err(|e| tls_error(path, e))? {
                roots
                    .add(ca.map_err(|e| tls_error(path, e))?)
                    .map_err(|e| tls_error(path, e))?;
            }
            if roots.is_empty() {
                return Err(tls_error(path, "no CA certificate in the file"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| tls_error(path, e))?;
            Some(verifier)
        }
    };
    Ok(Loaded {
        key: Arc::new(key),
        verifier,
    })
}

/// What identifies a file's content without reading it: device, inode, modification
/// time (as for manifests: a Secret volume swaps a symlink, an editor renames,
/// cert-manager rewrites).
type Stamp = (u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec()))
}

/// The server certificate and the client CA, swapped in place when their files change:
/// new handshakes use the new ones, established connections and their streams go on.
pub struct ReloadingTls {
    files: TlsFiles,
    key: Arc<ArcSwap<CertifiedKey>>,
    verifier: Option<Arc<ArcSwap<Arc<dyn ClientCertVerifier>>>>,
    stamps: Mutex<Vec<Option<Stamp>>>,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Resolver(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The client certificate verifier of the moment.
#[derive(Debug)]
struct Verifier(Arc<ArcSwap<Arc<dyn ClientCertVerifier>>>);

impl ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; the CA of the moment can't be lent out from a swap.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().supported_verify_schemes()
    }
}

impl ReloadingTls {
    /// Loads the files; an error names the file.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let loaded = load(&files)?;
        let key = Arc::new(ArcSwap::new(loaded.key));
        let verifier = loaded.verifier.map(|v| Arc::new(ArcSwap::new(Arc::new(v))));
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(&files.cert, e))?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(Arc::new(Verifier(v.clone()))),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(Resolver(key.clone())));
        // gRPC is HTTP/2: clients (Envoy, grpcio) require it negotiated by ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let stamps = Mutex::new(Self::stamps_of(&files));
        Ok(Arc::new(ReloadingTls {
            files,
            key,
            verifier,
            stamps,
            config: Arc::new(config),
        }))
    }

    fn stamps_of(files: &TlsFiles) -> Vec<Option<Stamp>> {
        [
            Some(&files.cert),
            Some(&files.key),
            files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|p| stamp(p))
        .collect()
    }

    /// Whether client certificates are verified (mTLS).
    pub fn verifies_clients(&self) -> bool {
        self.verifier.is_some()
    }

    /// Loads the files again if they changed: `Ok(true)` when new ones are in use. A
    /// failure keeps the ones in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let now = Self::stamps_of(&self.files);
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if *stamps == now {
            return Ok(false);
        }
        // Files of a rotation may be written one after the other: a mismatch now may be
        // right at the next look, so the stamps are kept only on success.
        let loaded = load(&self.files)?;
        *stamps = now;
        self.key.store(loaded.key);
        if let (Some(swap), Some(verifier)) = (&self.verifier, loaded.verifier) {
            swap.store(Arc::new(verifier));
        }
        Ok(true)
    }

    /// Checks the files every `every` until the process ends.
    pub fn watch(self: Arc<Self>, every: Duration, metrics: XdsMetrics) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match self.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics.tls_reloaded(true);
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    }
                    Err(error) => {
                        metrics.tls_reloaded(false);
                        tracing::warn!(%error, "TLS files changed but do not load; the ones in use stay");
                    }
                }
            }
        });
    }
}

/// Streams open on one connection, and since when it has had none.
#[derive(Debug)]
struct ConnStreams {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// What a stream knows of its connection (in the request's extensions).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// The identities (URI and DNS names) of the verified client certificate; `None`
    /// when client certificates are not verified.
    pub identities: Option<Arc<[String]>>,
    streams: Arc<ConnStreams>,
}

impl Peer {
    fn new(addr: Option<SocketAddr>, identities: Option<Arc<[String]>>) -> Self {
        Peer {
            addr,
            identities,
            streams: Arc::new(ConnStreams {
                open: AtomicUsize::new(0),
                idle_since: Mutex::new(Instant::now()),
            }),
        }
    }

    /// A peer for a connection made outside [`incoming`] (tests).
    pub fn unknown() -> Self {
        Peer::new(None, None)
    }

    /// Opens a stream on this connection unless it has `limit` already; the stream
    /// counts until the guard is dropped.
    pub fn open_stream(&self, limit: usize) -> Option<OpenStream> {
        let streams = &self.streams;
        streams
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(OpenStream(streams.clone()))
    }
}

/// A stream counted on its connection.
#[derive(Debug)]
pub struct OpenStream(Arc<ConnStreams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One connection on the xDS port.
pub struct Conn {
    io: Io,
    peer: Peer,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    /// The peer closed its side, or reading failed.
    peer_gone: bool,
    /// Closed for the idle timeout.
    idle_closed: bool,
    /// When the peer last sent anything, and how long a ping may go unanswered.
    last_read: Instant,
    keepalive_timeout: Duration,
    metrics: XdsMetrics,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closed by the server while the peer still held it open, and silent for longer
        // than a ping may go unanswered: HTTP/2 keepalive gave up on a vanished peer.
        if !self.peer_gone
            && !self.idle_closed
            && self.last_read.elapsed() >= self.keepalive_timeout
        {
            self.metrics.limit_exceeded("keepalive");
            tracing::info!(peer = ?self.peer.addr, "closed a connection whose peer stopped answering keepalive pings");
        }
    }
}

impl Conn {
    /// The connection has had no stream for the idle timeout: it reads as closed.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle.as_mut().poll(cx).is_ready() {
            let streams = &self.peer.streams;
            let deadline = if streams.open.load(Ordering::SeqCst) == 0 {
                *streams.idle_since.lock().unwrap_or_else(|p| p.into_inner()) + self.idle_timeout
            } else {
                Instant::now() + self.idle_timeout
            };
            if deadline <= Instant::now() {
                self.idle_closed = true;
                self.metrics.limit_exceeded("idle_timeout");
                tracing::debug!(peer = ?self.peer.addr, "closing a connection idle for {:?}", self.idle_timeout);
                return true;
            }
            self.idle.as_mut().reset(deadline);
        }
        false
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.idle_expired(cx) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.last_read = Instant::now(),
            Poll::Ready(_) => self.peer_gone = true,
            Poll::Pending => {}
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// The identities a client certificate carries: its URI and DNS subject alternative
/// names.
pub fn certificate_identities(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

/// The connections of `listener`, TLS-wrapped when `tls` is given, each closed after
/// the idle timeout without a stream.
/// The port stops accepting when `stopping` turns true (a replica shutting down refuses
/// new connections, so clients find another one).
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    limits: Limits,
    metrics: XdsMetrics,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = io::Result<Conn>> {
    let idle_timeout = limits.idle_timeout;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopping.wait_for(|stopping| *stopping) => return,
            };
            let (tcp, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "accepting an xDS connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (tx, tls, metrics) = (tx.clone(), tls.clone(), metrics.clone());
            tokio::spawn(async move {
                let (io, identities) = match tls {
                    None => (Io::Plain(tcp), None),
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
                        let stream = match tokio::time::timeout(
                            HANDSHAKE_TIMEOUT.min(idle_timeout),
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                metrics.tls_handshake_failed();
                                tracing::info!(peer = %addr, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                metrics.tls_handshake_failed();
                                tracing::info!(peer = %addr, "TLS handshake timed out");
                                return;
                            }
                        };
                        let identities = tls.verifies_clients().then(|| {
                            stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .map(certificate_identities)
                                .unwrap_or_default()
                                .into()
                        });
                        (Io::Tls(Box::new(stream)), identities)
                    }
                };
                let conn = Conn {
                    io,
                    peer: Peer::new(Some(addr), identities),
                    idle_timeout,
                    idle: Box::pin(tokio::time::sleep(idle_timeout)),
                    peer_gone: false,
                    idle_closed: false,
                    last_read: Instant::now(),
                    keepalive_timeout: limits.keepalive_timeout,
                    metrics,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}
