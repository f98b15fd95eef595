//! Faults, against a real Envoy with traffic flowing through it the whole time: the
//! control plane killed (Envoy keeps forwarding), restarted (Envoy reconnects and applies
//! nothing new), two replicas behind one address with one killed (the fleet moves to the
//! other with no config churn), a graceful SIGTERM (streams are closed so clients move at
//! once), and the Kubernetes API going away and coming back in the middle of a flip.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::apiserver::FakeApiServer;
use common::vip::vip;
use common::*;
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(30);

/// TCP round trips through `addr` every 20 ms until stopped: answers by tag, failures.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let last = Arc::new(std::sync::Mutex::new(String::new()));
        let task = {
            let (stop, ok, failed, last) = (stop.clone(), ok.clone(), failed.clone(), last.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match tcp_roundtrip(addr, "x").await {
                        Some(reply) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            *last.lock().unwrap() = reply;
                        }
                        None => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Traffic {
            stop,
            ok,
            failed,
            last,
            task,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    fn last(&self) -> String {
        self.last.lock().unwrap().clone()
    }

    /// Waits until `n` more round trips have succeeded.
    async fn flows(&self, n: u64) {
        let target = self.ok() + n;
        eventually("traffic flows", WAIT, || async {
            (self.ok() >= target).then_some(())
        })
        .await;
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let (ok, failed) = (self.ok.clone(), self.failed.clone());
        let _ = self.task.await;
        (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
    }
}

/// What Envoy applied and drained: none of these move when nothing new is applied.
const CHURN: [&str; 8] = [
    "cluster_manager.cluster_added",
    "cluster_manager.cluster_modified",
    "cluster_manager.cluster_removed",
    "listener_manager.listener_added",
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
    "listener_manager.listener_in_place_updated",
    "listener_manager.total_listeners_draining",
];

async fn churn(envoy: &Envoy) -> Vec<u64> {
    let mut values = Vec::new();
    for stat in CHURN {
        values.push(envoy.stat(stat).await);
    }
    values
}

/// Which replica has Envoy's stream.
async fn holds(serve: &ServeProcess, node: &str) -> bool {
    match serve.get("/debug/clients").await {
        Some((_, body)) => body.contains(&format!("\"node_id\":\"{node}\"")),
        None => false,
    }
}

fn write_manifests(dir: &std::path::Path, port: u16, backend: SocketAddr) {
    let objects = [
        manifests::service("shop", "echo")
            .annotate("dualstack-xds.io/listener-ports", &format!("80={port}"))
            .port("tcp", 80),
        manifests::slice("shop", "echo-v4", "echo", "IPv4")
            .port("tcp", backend.port())
            .endpoint(&backend.ip().to_string()),
    ];
    std::fs::write(dir.join("echo.yaml"), manifests::yaml(&objects)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_killed_restarted_and_stopped_under_traffic() {
    let backend = echo_server("echo:").await;
    let port = free_port();
    let config = tempfile::tempdir().unwrap();
    write_manifests(config.path(), port, backend);
    let args = vec![
        "--manifests".to_string(),
        config.path().display().to_string(),
    ];
    let mut a = Some(ServeProcess::start(tempfile::tempdir().unwrap(), &args));
    let mut b = Some(ServeProcess::start(tempfile::tempdir().unwrap(), &args));
    for replica in [&a, &b].into_iter().flatten() {
        replica.wait_ready().await;
    }
    let (a_addrs, b_addrs) = {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        ((a.xds, a.admin), (b.xds, b.admin))
    };
    let vip = vip(vec![a_addrs.0, b_addrs.0]).await;
    let envoy = Envoy::start("envoy/ads-delta.yaml", vip.addr, "edge").await;
    envoy
        .wait_stat("listener_manager.lds.update_success", 1)
        .await;
    envoy.wait_listening().await;
    let ingress: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let traffic = Traffic::start(ingress);
    traffic.flows(10).await;
    let applied = churn(&envoy).await;

    // 1. The replica holding Envoy's stream is killed: Envoy moves to the other one.
    let a_holds = holds(a.as_ref().unwrap(), "edge").await;
    let (killed, survivor) = if a_holds {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let killed_addrs = if a_holds { a_addrs } else { b_addrs };
    let killed_dir = killed.take().unwrap().stop(Signal::SIGKILL);
    let moved = Instant::now();
    eventually("Envoy on the surviving replica", WAIT, || async {
        holds(survivor.as_ref().unwrap(), "edge")
            .await
            .then_some(())
    })
    .await;
    println!(
        "SIGKILL: Envoy on the other replica after {:?}",
        moved.elapsed()
    );
    traffic.flows(10).await;
    assert_eq!(
        churn(&envoy).await,
        applied,
        "the other replica's versions are the same: nothing re-applied"
    );

    // 2. Every replica gone: Envoy keeps forwarding with what it has.
    let survivor_addrs = if a_holds { b_addrs } else { a_addrs };
    let survivor_dir = survivor.take().unwrap().stop(Signal::SIGKILL);
    let before = traffic.ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        traffic.ok() >= before + 20,
        "traffic flows without a control plane"
    );
    assert_eq!(envoy.stat("control_plane.connected_state").await, 0);

    // 3. Restarted: Envoy reconnects and applies nothing new.
    *killed = Some(ServeProcess::start_on(
        killed_dir,
        &args,
        killed_addrs.0,
        killed_addrs.1,
    ));
    killed.as_ref().unwrap().wait_ready().await;
    eventually(
        "Envoy reconnects to the restarted replica",
        WAIT,
        || async { holds(killed.as_ref().unwrap(), "edge").await.then_some(()) },
    )
    .await;
    traffic.flows(10).await;
    assert_eq!(
        churn(&envoy).await,
        applied,
        "a restart applies nothing new"
    );
    *survivor = Some(ServeProcess::start_on(
        survivor_dir,
        &args,
        survivor_addrs.0,
        survivor_addrs.1,
    ));
    survivor.as_ref().unwrap().wait_ready().await;

    // 4. A graceful stop (SIGTERM, what a rollout sends): the stream is closed with
    // UNAVAILABLE and Envoy is on the other replica at once, not after a timeout.
    let stopping = Instant::now();
    let _ = killed.take().unwrap().stop(Signal::SIGTERM);
    let exited = stopping.elapsed();
    eventually("Envoy on the other replica after SIGTERM", WAIT, || async {
        holds(survivor.as_ref().unwrap(), "edge")
            .await
            .then_some(())
    })
    .await;
    let moved = stopping.elapsed();
    println!("SIGTERM: the replica exited after {exited:?}, Envoy moved after {moved:?}");
    assert!(exited < Duration::from_secs(5), "{exited:?}");
    assert!(moved < Duration::from_secs(5), "{moved:?}");
    traffic.flows(10).await;
    assert_eq!(churn(&envoy).await, applied);

    let (ok, failed) = traffic.stop().await;
    println!("{ok} round trips through Envoy, {failed} failed");
    assert_eq!(failed, 0, "a request failed during the faults");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_goes_away_in_the_middle_of_a_flip() {
    let v4 = echo_server_on("127.0.0.1:0", "v4:").await;
    let v6 = echo_server_on("[::1]:0", "v6:").await;
    let port = free_port();
    let mut api = FakeApiServer::start_new().await;
    api.apply(
        manifests::service("shop", "echo")
            .annotate("dualstack-xds.io/listener-ports", &format!("80={port}"))
            .port("tcp", 80)
            .json(),
    );
    for (name, family, backend) in [("echo-v4", "IPv4", v4), ("echo-v6", "IPv6", v6)] {
        api.apply(
            manifests::slice("shop", name, "echo", family)
                .port("tcp", backend.port())
                .endpoint(&backend.ip().to_string())
                .json(),
        );
    }
    api.apply(manifests::config_map("IPv4").json());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let serve = ServeProcess::start(
        dir,
        &["--kubeconfig".into(), kubeconfig.display().to_string()],
    );
    serve.wait_ready().await;
    let envoy = Envoy::start("envoy/ads-delta.yaml", serve.xds, "edge").await;
    // Every failed round trip counts: start the traffic once Envoy takes connections.
    envoy.wait_listening().await;
    let ingress: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let traffic = Traffic::start(ingress);
    traffic.flows(10).await;
    assert_eq!(traffic.last(), "v4:x");
    let cds = envoy.stat("cluster_manager.cds.update_success").await;
    let applied = churn(&envoy).await;

    // The API server goes away (the watches fail and retry); meanwhile the operator
    // flips to IPv6, which etcd keeps.
    api.stop().await;
    eventually("the watches notice the outage", WAIT, || async {
        (serve.metric("dualstack_xds_watch_errors_total").await >= 1).then_some(())
    })
    .await;
    api.apply(manifests::config_map("IPv6").json());
    tokio::time::sleep(Duration::from_secs(2)).await;
    traffic.flows(10).await;
    assert_eq!(traffic.last(), "v4:x", "the last state stays served");

    // It comes back: the relist brings the flip, traffic moves, nothing else changes.
    api.start().await;
    let started = Instant::now();
    eventually("traffic on the IPv6 backend", WAIT, || async {
        (traffic.last() == "v6:x").then_some(())
    })
    .await;
    println!(
        "flip applied {:?} after the API server came back",
        started.elapsed()
    );
    traffic.flows(10).await;
    assert_eq!(churn(&envoy).await, applied, "the flip is an EDS push only");
    assert_eq!(envoy.stat("cluster_manager.cds.update_success").await, cds);
    let (ok, failed) = traffic.stop().await;
    println!("{ok} round trips through Envoy, {failed} failed");
    assert_eq!(failed, 0);
}
