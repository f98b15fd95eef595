//! Test rig shared by the integration tests: the server in-process on `127.0.0.1:0`,
//! real Envoy processes, and polling helpers.
#![allow(dead_code)]

pub mod apiserver;
pub mod fixtures;
pub mod manifests;
pub mod netns;
pub mod python;
pub mod tls;
pub mod vip;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dualstack_xds::model::{Family, ObjectKey};
use dualstack_xds::pipeline::Pipeline;
use dualstack_xds::server::{single_group, ClientRegistry, NodeGrouping, XdsServer};
use dualstack_xds::snapshot::SnapshotCache;
use dualstack_xds::sources::debounce::Instant as SourceInstant;
use dualstack_xds::sources::manifest_watch::ManifestDir;
use dualstack_xds::sources::manifests::Filter;
use dualstack_xds::sources::{Sink, SourceEvent};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The server under test, stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub cache: SnapshotCache,
    pub registry: Arc<ClientRegistry>,
    _stop: oneshot::Sender<()>,
}

pub async fn start_server() -> TestServer {
    start_server_with(single_group()).await
}

/// The server with a node grouping (for example `translate::node_group`).
pub async fn start_server_with(grouping: NodeGrouping) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cache = SnapshotCache::new();
    let registry = ClientRegistry::new();
    let server = XdsServer::new(cache.clone(), grouping, registry.clone());
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        cache,
        registry,
        _stop: stop,
    }
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The Envoy binary the rig installed. Missing is an error, never a skip: CI runs
/// every real-Envoy test.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("DUALSTACK_XDS_ENVOY").unwrap_or_else(|| {
        panic!("DUALSTACK_XDS_ENVOY is not set: run the tests through scripts/test.sh, which installs Envoy")
    });
    PathBuf::from(path)
}

/// The rig's Python (with grpcio). Missing is an error, never a skip.
pub fn python_binary() -> PathBuf {
    let path = std::env::var_os("DUALSTACK_XDS_PYTHON").unwrap_or_else(|| {
        panic!("DUALSTACK_XDS_PYTHON is not set: run the tests through scripts/test.sh, which installs the rig")
    });
    PathBuf::from(path)
}

/// Distinct per Envoy, so several run at once.
fn next_base_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    (std::process::id() % 10_000) * 100 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A real Envoy process configured only by the server under test; killed on drop.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    /// The network namespace Envoy runs in, if not the test's own.
    netns: Option<String>,
}

impl Envoy {
    /// Starts Envoy with a bootstrap from `envoy/`, pointed at `xds`.
    pub async fn start(bootstrap: &str, xds: SocketAddr, node_id: &str) -> Envoy {
        Self::start_with(bootstrap, xds, node_id, None).await
    }

    /// Same, with `--config-yaml` merged over the bootstrap (node metadata, say).
    pub async fn start_with(
        bootstrap: &str,
        xds: SocketAddr,
        node_id: &str,
        overlay: Option<&str>,
    ) -> Envoy {
        Self::launch(bootstrap, xds, node_id, overlay, None).await
    }

    /// Starts Envoy with a bootstrap file as it is (its xDS address must be right; an
    /// admin port of 0 is found out).
    pub async fn start_file(bootstrap: &Path, node_id: &str) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bootstrap.yaml");
        std::fs::copy(bootstrap, &config).unwrap();
        Self::run(dir, config, node_id, None, None).await
    }

    /// Starts Envoy inside network namespace `netns` (`xds` is an address there).
    pub async fn start_in_netns(
        netns: &str,
        bootstrap: &str,
        xds: SocketAddr,
        node_id: &str,
    ) -> Envoy {
        Self::launch(bootstrap, xds, node_id, None, Some(netns)).await
    }

    async fn launch(
        bootstrap: &str,
        xds: SocketAddr,
        node_id: &str,
        overlay: Option<&str>,
        netns: Option<&str>,
    ) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(repo_path(bootstrap)).unwrap();
        assert!(text.contains("port_value: 18000") && text.contains("port_value: 9901"));
        let text = text
            .replace("port_value: 18000", &format!("port_value: {}", xds.port()))
            .replace("port_value: 9901", "port_value: 0");
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, text).unwrap();
        Self::run(dir, config, node_id, overlay, netns).await
    }

    async fn run(
        dir: tempfile::TempDir,
        config: PathBuf,
        node_id: &str,
        overlay: Option<&str>,
        netns: Option<&str>,
    ) -> Envoy {
        let admin_path = dir.path().join("admin");
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(envoy_binary());
                c
            }
            None => Command::new(envoy_binary()),
        };
        let child = command
            .arg("-c")
            .arg(&config)
            .arg("--service-node")
            .arg(node_id)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--disable-hot-restart")
            .arg("--base-id")
            .arg(next_base_id().to_string())
            .args(["--log-level", "info", "--concurrency", "1"])
            .args(overlay.map(|o| ["--config-yaml", o]).into_iter().flatten())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting envoy");
        let admin = eventually("envoy's admin address", Duration::from_secs(20), || {
            let path = admin_path.clone();
            async move {
                let text = std::fs::read_to_string(&path).ok()?;
                text.trim().parse::<SocketAddr>().ok()
            }
        })
        .await;
        Envoy {
            child,
            admin,
            _dir: dir,
            http: reqwest::Client::new(),
            netns: netns.map(str::to_owned),
        }
    }

    /// GET on the admin API.
    pub async fn admin_get(&self, path: &str) -> String {
        if let Some(ns) = self.netns.clone() {
            let (admin, path) = (self.admin, path.to_owned());
            return tokio::task::spawn_blocking(move || {
                in_netns(&ns, move || blocking_http_get(admin, &path)).unwrap_or_default()
            })
            .await
            .unwrap();
        }
        self.http
            .get(format!("http://{}{}", self.admin, path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A counter from `/stats`, or 0 when Envoy has not created it yet.
    pub async fn stat(&self, name: &str) -> u64 {
        let text = self
            .admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
            .await;
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until Envoy's listeners take connections: its initial xDS fetch is done and
    /// its workers run (`/ready` answers LIVE only then).
    pub async fn wait_listening(&self) {
        eventually(
            "Envoy LIVE with its workers started",
            Duration::from_secs(30),
            || async {
                let ready = self.admin_get("/ready").await;
                (ready.trim() == "LIVE" && self.stat("listener_manager.workers_started").await >= 1)
                    .then_some(())
            },
        )
        .await;
    }

    /// The sum of every counter whose name matches the regular expression `pattern`.
    pub async fn stat_sum(&self, pattern: &str) -> u64 {
        let text = self.admin_get(&format!("/stats?filter={pattern}")).await;
        text.lines()
            .filter_map(|line| line.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
            .sum()
    }

    /// Waits until a stat reaches at least `min`.
    pub async fn wait_stat(&self, name: &str, min: u64) -> u64 {
        eventually(
            &format!("{name} >= {min}"),
            Duration::from_secs(20),
            || async {
                let v = self.stat(name).await;
                (v >= min).then_some(v)
            },
        )
        .await
    }

    /// The process id (to stop or kill it as a fault would).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's own log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f` on a thread that has joined network namespace `ns` (sockets made there stay
/// in that namespace when used from elsewhere).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap()
}

/// A plain blocking HTTP/1.1 GET (Envoy refuses HTTP/1.0); the body.
pub fn blocking_http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body.to_owned());
    }
    // De-chunk: size line, data, CRLF, until the zero-size chunk.
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// A TCP echo server on 127.0.0.1 that prefixes replies with `tag`.
pub async fn echo_server(tag: &'static str) -> SocketAddr {
    echo_server_on("127.0.0.1:0", tag).await
}

/// A TCP echo server on `bind` that prefixes replies with `tag`.
pub async fn echo_server_on(bind: &str, tag: &'static str) -> SocketAddr {
    serve_echo(TcpListener::bind(bind).await.unwrap(), tag)
}

/// Serves TCP echo on `listener`, prefixing replies with `tag`.
pub fn serve_echo(listener: TcpListener, tag: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let mut reply = tag.as_bytes().to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    if socket.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `msg` to `addr` over TCP and returns the reply, or `None` if that fails.
pub async fn tcp_roundtrip(addr: SocketAddr, msg: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(msg.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// A UDP echo server on `bind` that prefixes replies with `tag`.
pub async fn udp_echo_on(bind: &str, tag: &'static str) -> SocketAddr {
    serve_udp_echo(tokio::net::UdpSocket::bind(bind).await.unwrap(), tag)
}

/// Serves UDP echo on `socket`, prefixing replies with `tag`.
pub fn serve_udp_echo(socket: tokio::net::UdpSocket, tag: &'static str) -> SocketAddr {
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let mut reply = tag.as_bytes().to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    addr
}

/// Sends one datagram to `addr` and returns the reply, if one comes within a second.
pub async fn udp_roundtrip(addr: SocketAddr, msg: &str) -> Option<String> {
    let bind = if addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    socket.send_to(msg.as_bytes(), addr).await.ok()?;
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// An HTTP/1.1 server on `bind` answering `tag` followed by the request's
/// X-Forwarded-For header.
pub async fn http_server_on(bind: &str, tag: &'static str) -> SocketAddr {
    serve_http(TcpListener::bind(bind).await.unwrap(), tag)
}

/// Serves HTTP on `listener`: `tag` followed by the request's X-Forwarded-For.
pub fn serve_http(listener: TcpListener, tag: &'static str) -> SocketAddr {
    serve_http_answering(listener, move |request| {
        format!("{tag}{}", header(request, "x-forwarded-for"))
    })
}

/// Serves HTTP on `listener`: `tag`, then the request's X-Forwarded-For and
/// X-Forwarded-Proto (`TAG xff=... proto=...`).
pub fn serve_http_headers(listener: TcpListener, tag: &'static str) -> SocketAddr {
    serve_http_answering(listener, move |request| {
        format!(
            "{tag} xff={} proto={}",
            header(request, "x-forwarded-for"),
            header(request, "x-forwarded-proto")
        )
    })
}

/// A request header's value (empty when absent).
fn header(request: &str, name: &str) -> String {
    request
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Serves HTTP on `listener`, each response's body `body(request head)`.
fn serve_http_answering(
    listener: TcpListener,
    body: impl Fn(&str) -> String + Copy + Send + 'static,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = body(&String::from_utf8_lossy(&request));
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// GET / over HTTP/1.1; the response body, or `None` on failure.
pub async fn http_get(addr: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        s.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        if !text.starts_with("HTTP/1.1 200") {
            return None;
        }
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
}

/// The server's default selection: exposed Services, every namespace, the default
/// ConfigMap.
pub fn default_filter() -> Filter {
    Filter {
        service_selector: "dualstack-xds.io/expose=true".parse().unwrap(),
        namespaces: vec![],
        config_map: ObjectKey::new("dualstack-xds", "dualstack-xds"),
    }
}

/// A manifest directory published into a cache by the pipeline `serve` runs, when the
/// test says so (the test decides when an edit is published). Every object must be valid.
pub struct ManifestPublisher {
    dir: ManifestDir,
    pipeline: Pipeline,
    /// Objects may be skipped (the test asserts which); else none may.
    reporting: bool,
}

impl ManifestPublisher {
    /// Loads `dir` and publishes it; every object must be served.
    pub fn new(dir: &Path, primary: Family, cache: &SnapshotCache) -> Self {
        Self::start(dir, primary, cache, false)
    }

    /// Loads `dir` and publishes it; objects may be left out ([`Self::skipped`]).
    pub fn reporting(dir: &Path, primary: Family, cache: &SnapshotCache) -> Self {
        Self::start(dir, primary, cache, true)
    }

    fn start(dir: &Path, primary: Family, cache: &SnapshotCache, reporting: bool) -> Self {
        let dir = ManifestDir::load(dir, default_filter()).unwrap();
        let pipeline = Pipeline::new(primary, cache.clone(), Default::default());
        let mut publisher = ManifestPublisher {
            dir,
            pipeline,
            reporting,
        };
        publisher.publish();
        publisher.pipeline.send(SourceEvent::Synced);
        publisher.check();
        publisher
    }

    /// Objects left out of the last publication: `NAME: reason`.
    pub fn skipped(&self) -> Vec<String> {
        self.pipeline
            .status()
            .skipped()
            .iter()
            .map(|s| format!("{}: {}", s.key.name, s.reason))
            .collect()
    }

    /// Reads the directory again and publishes what changed.
    pub fn publish(&mut self) {
        self.dir.reload().unwrap();
        self.pipeline.send(SourceEvent::Changes {
            changes: self.dir.take_changes(),
            since: SourceInstant::now(),
        });
        self.check();
    }

    fn check(&self) {
        let errors: Vec<_> = self.dir.errors().collect();
        assert!(errors.is_empty(), "{errors:?}");
        let skipped = self.pipeline.status().skipped();
        assert!(self.reporting || skipped.is_empty(), "{skipped:?}");
    }
}

/// Runs the binary with `args` (a one-shot command such as `certs` or `bootstrap`); its
/// standard output. It must succeed.
pub fn run_binary(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dualstack-xds {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The `dualstack-xds serve` binary on free loopback ports, killed when dropped.
pub struct ServeProcess {
    child: Child,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Starts `serve` with the source arguments `args`, logging into `dir`.
    pub fn start(dir: tempfile::TempDir, args: &[String]) -> ServeProcess {
        let xds: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_on(dir, args, xds, admin)
    }

    /// Starts `serve` on these addresses (a replica restarted where it was).
    pub fn start_on(
        dir: tempfile::TempDir,
        args: &[String],
        xds: SocketAddr,
        admin: SocketAddr,
    ) -> ServeProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("serve.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
            .arg("serve")
            .args(args)
            .args(["--xds-addr", &xds.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--debounce", "10ms", "--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        ServeProcess {
            child,
            xds,
            admin,
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Sends `signal` (SIGKILL, SIGTERM) and waits for the process to end; the log
    /// directory is handed back for a restart.
    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> tempfile::TempDir {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// GET on the admin API: (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::get(format!("http://{}{}", self.admin, path))
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    pub async fn wait_ready(&self) {
        eventually("/readyz 200", Duration::from_secs(20), || async {
            matches!(self.get("/readyz").await, Some((200, _))).then_some(())
        })
        .await;
    }

    /// The sum of a metric's samples (every label set).
    pub async fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.get("/metrics").await.expect("metrics");
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nginx binary the rig installed (Debian's, with the stream module). Missing is an
/// error, never a skip.
pub fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("DUALSTACK_XDS_NGINX").unwrap_or_else(|| {
        panic!("DUALSTACK_XDS_NGINX is not set: run the tests through scripts/test.sh, which installs nginx")
    });
    PathBuf::from(path)
}
