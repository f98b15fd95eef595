//! nginx as an ingress of the control plane, across single-family hosts
//! (`common::netns`): the `dualstack-xds nginx` binary runs a real nginx (Debian's, with
//! its stream module) in the foreground on the ingress host, as the README shows, from
//! the repository's `nginx/nginx.conf`. NAT64, NAT46 after a flip under load, UDP, PROXY
//! protocol v1, X-Forwarded-For, a configuration nginx refuses (NACKed, reported, the
//! previous one serving), the control plane gone and back, nginx restarted without it.
//! Needs root.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::manifests;
use common::netns::*;
use common::*;
use dualstack_xds::model::Family;
use dualstack_xds::server::{ClientRegistry, StreamStatus, XdsServer};
use dualstack_xds::snapshot::SnapshotCache;
use dualstack_xds::translate::node_group;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const ECHO: u16 = 12007;
const PROXY: u16 = 12009;
const PROXY_V2: u16 = 12010;
const UDP: u16 = 12053;
const WEB: u16 = 12080;
const GRPC: u16 = 12090;
/// A port the operator's own server in nginx.conf holds.
const USER: u16 = 12099;
/// A port another process on the ingress host holds.
const BUSY: u16 = 12098;
const B_ECHO: u16 = 7007;
const B_PROXY: u16 = 7009;
const B_UDP: u16 = 7053;
const B_WEB: u16 = 7080;

fn start_backends(hosts: &Hosts) {
    for (role, addr) in [("b4", "0.0.0.0"), ("b6", "::")] {
        let ns = hosts.ns(role);
        let tag = |suffix: &str| -> &'static str {
            Box::leak(format!("{role}{suffix}").into_boxed_str())
        };
        serve_echo(bind_tcp(&ns, sa(addr, B_ECHO)), tag(":"));
        serve_udp_echo(bind_udp(&ns, sa(addr, B_UDP)), tag(":"));
        serve_http(bind_tcp(&ns, sa(addr, B_WEB)), tag(" xff="));
        serve_proxy_reader(bind_tcp(&ns, sa(addr, B_PROXY)), tag(" "));
    }
}

/// The manifests: TCP, PROXY v1 and v2, UDP, HTTP and gRPC Services; `extra` may add
/// `clash` (an HTTP Service on the port the operator's own server holds) or `busy` (a TCP
/// Service on a port another process holds).
fn write_manifests(dir: &Path, primary: &str, extra: &str) {
    let service = |name: &str, port: u16, listener: u16| {
        manifests::service("t", name)
            .annotate(
                "dualstack-xds.io/listener-ports",
                &format!("{port}={listener}"),
            )
            .port("p", port)
    };
    let mut objects = vec![
        manifests::config_map(primary),
        service("echo", 7, ECHO),
        service("pp", 9, PROXY).annotate("dualstack-xds.io/proxy-protocol", "v1"),
        service("pp2", 10, PROXY_V2).annotate("dualstack-xds.io/proxy-protocol", "v2"),
        manifests::service("t", "udp")
            .annotate("dualstack-xds.io/listener-ports", &format!("53={UDP}"))
            .udp_port("p", 53),
        manifests::service("t", "web")
            .annotate("dualstack-xds.io/listener-ports", &format!("80={WEB}"))
            .app_port("p", 80, "http"),
        manifests::service("t", "grpc")
            .annotate("dualstack-xds.io/listener-ports", &format!("90={GRPC}"))
            .app_port("p", 90, "grpc"),
    ];
    if extra == "busy" {
        objects.push(service("busy", 11, BUSY));
    }
    if extra == "clash" {
        objects.push(
            manifests::service("t", "clash")
                .annotate("dualstack-xds.io/listener-ports", &format!("80={USER}"))
                .app_port("p", 80, "http"),
        );
    }
    for (svc, port, udp) in [
        ("echo", B_ECHO, false),
        ("pp", B_PROXY, false),
        ("pp2", B_PROXY, false),
        ("udp", B_UDP, true),
        ("web", B_WEB, false),
        ("grpc", B_WEB, false),
        ("clash", B_WEB, false),
        ("busy", B_ECHO, false),
    ] {
        for (family, addr) in [("IPv4", B4), ("IPv6", B6)] {
            let slice = manifests::slice("t", &format!("{svc}-{family}"), svc, family);
            let slice = if udp {
                slice.udp_port("p", port)
            } else {
                slice.port("p", port)
            };
            objects.push(slice.endpoint(addr));
        }
    }
    std::fs::write(dir.join("all.yaml"), manifests::yaml(&objects)).unwrap();
}

/// `dualstack-xds nginx -- nginx ...` in namespace `ns`, from the working directory
/// `work` (which holds the nginx.conf), logging into `work/agent.log`.
struct Agent {
    child: Child,
    work: PathBuf,
}

impl Agent {
    fn start(ns: &str, work: &Path, xds: std::net::SocketAddr) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join("agent.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_dualstack-xds")])
            .args(["nginx", "--xds-address", &xds.to_string()])
            .args(["--node-id", "nginx-1", "--cluster", "ingress"])
            .args(["--config-dir", "run", "--debounce", "20ms"])
            .args(["--reload-timeout", "2s"])
            .arg("--")
            .arg(nginx_binary())
            .args(["-p", &work.display().to_string(), "-c", "nginx.conf"])
            .args(["-g", "daemon off;"])
            .current_dir(work)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent {
            child,
            work: work.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("agent.log")).unwrap_or_default()
    }

    fn nginx_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.work.join("run/nginx.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Kills nginx's master and workers at once (a crash), and waits for the agent,
    /// which exits with nginx's status; that status.
    fn crash_nginx(&mut self) -> std::process::ExitStatus {
        let master = self.nginx_pid().expect("nginx runs");
        let workers = Command::new("pgrep")
            .args(["-P", &master.to_string()])
            .output()
            .unwrap();
        let _ = kill(Pid::from_raw(master), Signal::SIGKILL);
        for w in String::from_utf8_lossy(&workers.stdout).split_whitespace() {
            let _ = kill(Pid::from_raw(w.parse().unwrap()), Signal::SIGKILL);
        }
        self.child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM reaches nginx through the agent; make sure nothing outlives the test.
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(pid) = self.nginx_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nginx node's stream as the server reports it (`status`, `/debug/clients`).
fn nginx_stream(registry: &ClientRegistry) -> Option<StreamStatus> {
    registry
        .clients()
        .into_iter()
        .find(|c| c.node_id == "nginx-1")
}

fn nack_messages(status: &StreamStatus) -> Vec<String> {
    status
        .types
        .iter()
        .filter_map(|t| t.last_nack.as_ref().map(|n| n.message.clone()))
        .collect()
}

/// The control plane on the ingress host at `addr` (port 0: any); stopped by the sender.
async fn start_control_plane(
    ing: &str,
    addr: std::net::SocketAddr,
    cache: &SnapshotCache,
    registry: &Arc<ClientRegistry>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let xds = bind_tcp(ing, addr);
    let addr = xds.local_addr().unwrap();
    let server = XdsServer::new(cache.clone(), Arc::new(node_group), registry.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(xds, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_ingress_does_nat64_and_nat46_from_the_same_snapshot_as_envoy() {
    let hosts = Hosts::create();
    let (ing, c4, c6) = (hosts.ns("ing"), hosts.ns("c4"), hosts.ns("c6"));
    start_backends(&hosts);

    // The repository's nginx.conf, with a server of the operator's own on USER.
    let work = tempfile::tempdir().unwrap();
    let conf = std::fs::read_to_string(repo_path("nginx/nginx.conf")).unwrap();
    let conf = conf.replace(
        "    include run/http.conf;\n",
        &format!("    include run/http.conf;\n\n    server {{\n        listen 0.0.0.0:{USER} default_server;\n        return 200 \"the operator's own\\n\";\n    }}\n"),
    );
    assert!(conf.contains("the operator's own"));
    std::fs::write(work.path().join("nginx.conf"), conf).unwrap();

    let cache = SnapshotCache::new();
    let registry = ClientRegistry::new();
    let (xds_addr, stop_control_plane) =
        start_control_plane(&ing, sa("127.0.0.1", 0), &cache, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), "IPv4", "");
    let mut manifests = ManifestPublisher::new(dir.path(), Family::IPv6, &cache);
    let mut agent = Agent::start(&ing, work.path(), xds_addr);

    // NAT64: the IPv6-only client reaches the IPv4-only backend through nginx.
    let reply = eventually("NAT64 through nginx", Duration::from_secs(30), || {
        tcp_from(&c6, sa(ING_C6, ECHO), "hello")
    })
    .await;
    assert_eq!(reply, "b4:hello", "{}", agent.log());
    // What a readiness probe checks: nginx took a configuration.
    let applied = eventually(
        "the generation recorded",
        Duration::from_secs(10),
        || async { std::fs::read_to_string(work.path().join("run/applied")).ok() },
    )
    .await;
    assert_eq!(applied.len(), 16, "{applied}");
    assert_eq!(
        tcp_from(&c4, sa(ING_C4, ECHO), "v4").await.as_deref(),
        Some("b4:v4")
    );
    // UDP across families.
    let udp = eventually("UDP NAT64", Duration::from_secs(10), || {
        udp_from(&c6, sa(ING_C6, UDP), "dns?")
    })
    .await;
    assert_eq!(udp, "b4:dns?");
    // PROXY protocol v1 carries the IPv6 client's address to the IPv4 backend.
    let pp = tcp_from(&c6, sa(ING_C6, PROXY), " ")
        .await
        .unwrap_or_default();
    assert!(
        pp.starts_with(&format!("b4 PROXY TCP6 {C6} {ING_C6} ")),
        "{pp}"
    );
    // HTTP: X-Forwarded-For is the client's address.
    assert_eq!(
        http_from(&c6, sa(ING_C6, WEB)).await.as_deref(),
        Some(format!("b4 xff={C6}").as_str())
    );
    // PROXY protocol v2 is refused by name, NACKed and reported; nothing listens there.
    let status = nginx_stream(&registry).expect("the nginx node is a client");
    assert_eq!(status.user_agent, "dualstack-xds-nginx");
    eventually(
        "the PROXY v2 cluster NACKed",
        Duration::from_secs(10),
        || async {
            nack_messages(&nginx_stream(&registry)?)
                .iter()
                .any(|m| m.contains("t/pp2:10: PROXY protocol v2"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(tcp_from(&c6, sa(ING_C6, PROXY_V2), "x").await, None);
    // gRPC ports are served over HTTP/2 (grpc_pass); the text is nginx's.
    let http_conf = std::fs::read_to_string(work.path().join("run/http.conf")).unwrap();
    assert!(
        http_conf.contains(&format!("listen [::]:{GRPC} http2")),
        "{http_conf}"
    );
    assert!(http_conf.contains("grpc_pass grpc://"), "{http_conf}");

    // A configuration nginx refuses: a Service on the port the operator's server holds.
    let good = http_conf;
    write_manifests(dir.path(), "IPv4", "clash");
    manifests.publish();
    let nack = eventually("the clash NACKed", Duration::from_secs(20), || async {
        nack_messages(&nginx_stream(&registry)?)
            .into_iter()
            .find(|m| m.contains("nginx refused the configuration"))
    })
    .await;
    assert!(
        nack.contains(&format!("a duplicate default server for 0.0.0.0:{USER}")),
        "{nack}"
    );
    // The previous configuration is in force and serves.
    assert_eq!(
        std::fs::read_to_string(work.path().join("run/http.conf")).unwrap(),
        good
    );
    assert_eq!(
        tcp_from(&c6, sa(ING_C6, ECHO), "still").await.as_deref(),
        Some("b4:still")
    );
    assert_eq!(
        http_from(&c4, sa(ING_C4, USER)).await.as_deref(),
        Some("the operator's own\n")
    );

    // A configuration `nginx -t` accepts but the master can't load: a port another
    // process on the host holds. The reload never comes; reported, the previous one
    // serves, and the files are back.
    let squatter = bind_tcp(&ing, sa("0.0.0.0", BUSY));
    write_manifests(dir.path(), "IPv4", "busy");
    manifests.publish();
    let nack = eventually("the busy port NACKed", Duration::from_secs(20), || async {
        nack_messages(&nginx_stream(&registry)?)
            .into_iter()
            .find(|m| m.contains("nginx did not take the configuration"))
    })
    .await;
    assert!(nack.contains("within 2s"), "{nack}");
    assert_eq!(
        std::fs::read_to_string(work.path().join("run/http.conf")).unwrap(),
        good
    );
    assert!(
        !std::fs::read_to_string(work.path().join("run/stream.conf"))
            .unwrap()
            .contains(&BUSY.to_string())
    );
    assert_eq!(
        tcp_from(&c6, sa(ING_C6, ECHO), "still").await.as_deref(),
        Some("b4:still")
    );
    drop(squatter);

    // The flip, under load, with a connection opened before it.
    let mut long_lived = LongLived::open(&c6, sa(ING_C6, ECHO)).await;
    assert_eq!(long_lived.roundtrip("before"), "b4:before");
    let load = Load::start(&c6, sa(ING_C6, ECHO), "load");
    tokio::time::sleep(Duration::from_millis(500)).await;
    write_manifests(dir.path(), "IPv6", "");
    manifests.publish();
    // NAT46: the IPv4-only client now reaches the IPv6-only backend.
    let reply = eventually("NAT46 after the flip", Duration::from_secs(30), || async {
        tcp_from(&c4, sa(ING_C4, ECHO), "v4 client")
            .await
            .filter(|r| r.starts_with("b6:"))
    })
    .await;
    assert_eq!(reply, "b6:v4 client");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, failed, seen) = load.stop().await;
    assert_eq!(
        failed,
        0,
        "connections failed during the flip (of {sent})\n{}",
        agent.log()
    );
    assert_eq!(
        seen,
        BTreeSet::from(["b4:load".to_string(), "b6:load".to_string()]),
        "the load crossed the flip"
    );
    // The old connection is finished by the old worker, to its original backend.
    assert_eq!(long_lived.roundtrip("after"), "b4:after");
    drop(long_lived);
    assert_eq!(
        udp_from(&c4, sa(ING_C4, UDP), "q").await.as_deref(),
        Some("b6:q")
    );
    assert_eq!(
        http_from(&c4, sa(ING_C4, WEB)).await.as_deref(),
        Some(format!("b6 xff={C4}").as_str())
    );

    // The control plane goes away: nginx keeps serving while traffic flows.
    let _ = stop_control_plane.send(());
    eventually("the stream gone", Duration::from_secs(10), || async {
        nginx_stream(&registry).is_none().then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            tcp_from(&c4, sa(ING_C4, ECHO), "alone").await.as_deref(),
            Some("b6:alone")
        );
    }
    // nginx crashes; the agent exits with its status (a container restarts), and the
    // restarted agent's nginx serves the last configuration without the control plane.
    let status = agent.crash_nginx();
    assert!(
        !status.success(),
        "the agent reports nginx's death: {status}"
    );
    drop(agent);
    let agent = Agent::start(&ing, work.path(), xds_addr);
    let reply = eventually(
        "the last config after a restart",
        Duration::from_secs(20),
        || tcp_from(&c4, sa(ING_C4, ECHO), "restarted"),
    )
    .await;
    assert_eq!(reply, "b6:restarted", "{}", agent.log());

    // The control plane comes back where it was, with a flip back to IPv4 meanwhile: the
    // agent reconnects (with backoff) and nginx follows.
    write_manifests(dir.path(), "IPv4", "");
    manifests.publish();
    let (_, _stop) = start_control_plane(&ing, xds_addr, &cache, &registry).await;
    let reply = eventually(
        "the flip back after the reconnect",
        Duration::from_secs(30),
        || async {
            tcp_from(&c6, sa(ING_C6, ECHO), "back")
                .await
                .filter(|r| r.starts_with("b4:"))
        },
    )
    .await;
    assert_eq!(reply, "b4:back");
    // A change nginx refuses and a flip in one burst: the flip is applied (the server
    // sends nothing twice, so the agent must not drop it with the rest), the rest is
    // NACKed, and the previous listeners serve.
    write_manifests(dir.path(), "IPv6", "clash");
    manifests.publish();
    let reply = eventually(
        "the flip kept despite the refusal",
        Duration::from_secs(30),
        || async {
            tcp_from(&c4, sa(ING_C4, ECHO), "both")
                .await
                .filter(|r| r.starts_with("b6:"))
        },
    )
    .await;
    assert_eq!(reply, "b6:both");
    // (The stream is new since the control plane came back: its NACKs are of this burst.)
    eventually(
        "the clash NACKed on the new stream",
        Duration::from_secs(20),
        || async {
            nack_messages(&nginx_stream(&registry)?)
                .iter()
                .any(|m| m.contains(&format!("a duplicate default server for 0.0.0.0:{USER}")))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        http_from(&c4, sa(ING_C4, USER)).await.as_deref(),
        Some("the operator's own\n")
    );

    // Every response of the new stream answered once nginx serves it: ACKed, or NACKed
    // with the reason (the PROXY v2 cluster, the clash).
    eventually(
        "every response answered",
        Duration::from_secs(10),
        || async {
            let status = nginx_stream(&registry)?;
            status
                .types
                .iter()
                .all(|t| {
                    t.pending_nonce.is_none()
                        && (t.acked_version.is_some() || t.last_nack.is_some())
                })
                .then_some(())
        },
    )
    .await;
    drop(agent);
    drop(hosts);
}

/// What the agent renders is valid for a real nginx (`nginx -t`), for every group of
/// nodes and both primary families: the examples (TCP, UDP, HTTP, gRPC, failover, SNI
/// passthrough, what is refused) and three Services sharing an HTTP port by Host.
#[tokio::test]
async fn every_rendering_is_valid_nginx() {
    use dualstack_xds::nginx::apply::files;
    use dualstack_xds::nginx::render::{render, Resources};
    let dir = tempfile::tempdir().unwrap();
    copy_examples(dir.path());
    let shared = |name: &str, hosts: &str| {
        manifests::service("t", name)
            .annotate("dualstack-xds.io/listener-ports", "80=12180")
            .annotate("dualstack-xds.io/hosts", hosts)
            .app_port("web", 80, "http")
    };
    let mut objects = vec![
        shared("a", "a.example.com"),
        shared("b", "b.example.com,www.b.example.com"),
        shared("c", "*.example.org"),
    ];
    for name in ["a", "b", "c"] {
        for (family, addr) in [("IPv4", "10.0.0.1"), ("IPv6", "fd00::1")] {
            objects.push(
                manifests::slice("t", &format!("{name}-{family}"), name, family)
                    .port("web", 8080)
                    .endpoint(addr),
            );
        }
    }
    std::fs::write(dir.path().join("shared.yaml"), manifests::yaml(&objects)).unwrap();
    for primary in ["IPv4", "IPv6"] {
        let text = std::fs::read_to_string(repo_path("examples/config.yaml"))
            .unwrap()
            .replace("primaryFamily: IPv4", &format!("primaryFamily: {primary}"));
        std::fs::write(dir.path().join("config.yaml"), text).unwrap();
        let cache = SnapshotCache::new();
        let _manifests = ManifestPublisher::reporting(dir.path(), Family::IPv4, &cache);
        let set = cache.current().unwrap();
        for group in ["IPv4,IPv6", "IPv4", "IPv6"] {
            let rendered = render(&Resources::from_snapshot(set.get(group).unwrap()));
            assert!(rendered.http.contains("server_name a.example.com;"));
            let work = tempfile::tempdir().unwrap();
            std::fs::copy(
                repo_path("nginx/nginx.conf"),
                work.path().join("nginx.conf"),
            )
            .unwrap();
            std::fs::create_dir(work.path().join("run")).unwrap();
            let files = files(&rendered, &work.path().join("run"));
            std::fs::write(work.path().join("run/stream.conf"), &files.stream).unwrap();
            std::fs::write(work.path().join("run/http.conf"), &files.http).unwrap();
            let out = Command::new(nginx_binary())
                .arg("-p")
                .arg(work.path())
                .args(["-c", "nginx.conf", "-t"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{group}, primary {primary}: {}\n{}{}",
                String::from_utf8_lossy(&out.stderr),
                files.stream,
                files.http
            );
        }
    }
}

fn copy_examples(to: &Path) {
    for entry in std::fs::read_dir(repo_path("examples")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
