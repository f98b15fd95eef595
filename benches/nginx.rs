//! The nginx agent against a real nginx (prints figures; not a timed test): for 10, 100
//! and 1,000 TCP Services, each on a port of its own, an endpoint change published by the
//! control plane until nginx forwards the next connection to the new backend (the agent's
//! debounce, rendering, `nginx -t`, the reload); the reload alone (SIGHUP until the new
//! workers answer); nginx's memory (proportional set size of the master and workers); the
//! bytes the agent writes per change (it rewrites both files).
//!
//! Run: `cargo bench --bench nginx` (or `scripts/bench.sh`, which installs nginx).

/// The test rig (servers, manifests), shared with the integration tests.
#[path = "../tests/common/mod.rs"]
mod common;
mod report;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::manifests::{config_map, service, slice, yaml, Object};
use common::{echo_server_on, nginx_binary, repo_path, tcp_roundtrip, ManifestPublisher};
use dualstack_xds::model::Family;
use dualstack_xds::server::{ClientRegistry, XdsServer};
use dualstack_xds::snapshot::SnapshotCache;
use dualstack_xds::translate;
use report::{percentile, Report};

/// Listener ports: BASE + i for Service i.
const BASE: u16 = 31000;
const ROUNDS: usize = 20;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "the nginx agent against a real nginx (agent defaults: debounce 50 ms; {} cores)",
        report::cores()
    );
    let mut report = Report::new("nginx");
    runtime.block_on(bench(&mut report));
    report.write();
}

fn write_manifests(dir: &Path, services: usize, backends: &[SocketAddr], first: SocketAddr) {
    let mut objects: Vec<Object> = vec![config_map("IPv4")];
    for i in 0..services {
        let name = format!("s{i}");
        let backend = if i == 0 {
            first
        } else {
            backends[i % backends.len()]
        };
        objects.push(service("bench", &name).port("tcp", 80).annotate(
            "dualstack-xds.io/listener-ports",
            &format!("80={}", BASE + i as u16),
        ));
        objects.push(
            slice("bench", &format!("{name}-4"), &name, "IPv4")
                .port("tcp", backend.port())
                .endpoint("127.0.0.1"),
        );
    }
    let tmp = dir.join("all.yaml.tmp");
    std::fs::write(&tmp, yaml(&objects)).unwrap();
    std::fs::rename(tmp, dir.join("all.yaml")).unwrap();
}

/// The agent running nginx, from a working directory holding the repository's nginx.conf.
struct Agent {
    child: Child,
    work: tempfile::TempDir,
}

impl Agent {
    fn start(xds: SocketAddr) -> Agent {
        let work = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_path("nginx/nginx.conf"),
            work.path().join("nginx.conf"),
        )
        .unwrap();
        let log = std::fs::File::create(work.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
            .args(["nginx", "--xds-address", &xds.to_string()])
            .args(["--config-dir", "run", "--log-format", "json"])
            .arg("--")
            .arg(nginx_binary())
            .args(["-p", &work.path().display().to_string(), "-c", "nginx.conf"])
            .args(["-g", "daemon off;"])
            .current_dir(work.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent { child, work }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("agent.log")).unwrap_or_default()
    }

    /// Every reload the agent logged, in milliseconds.
    fn reloads(&self) -> Vec<f64> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "nginx reloaded")
            .filter_map(|v| parse_duration_ms(v["fields"]["took"].as_str()?))
            .collect()
    }

    /// Proportional set size of nginx's master and workers, KiB.
    fn nginx_pss_kib(&self) -> u64 {
        let master: i32 = std::fs::read_to_string(self.work.path().join("run/nginx.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let children = Command::new("pgrep")
            .args(["-P", &master.to_string()])
            .output()
            .unwrap();
        std::iter::once(master.to_string())
            .chain(
                String::from_utf8_lossy(&children.stdout)
                    .split_whitespace()
                    .map(str::to_owned),
            )
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
            .filter_map(|text| {
                text.lines()
                    .find(|l| l.starts_with("Pss:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .sum()
    }

    fn bytes_written(&self) -> u64 {
        ["stream.conf", "http.conf"]
            .iter()
            .map(|f| {
                std::fs::metadata(self.work.path().join("run").join(f))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// `Duration`'s Debug text ("110.13ms", "1.2s", "950µs") in milliseconds.
fn parse_duration_ms(text: &str) -> Option<f64> {
    for (unit, scale) in [("ms", 1.0), ("µs", 1e-3), ("ns", 1e-6), ("s", 1e3)] {
        if let Some(n) = text.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|v| v * scale);
        }
    }
    None
}

async fn bench(report: &mut Report) {
    let backends = [
        echo_server_on("127.0.0.1:0", "a:").await,
        echo_server_on("127.0.0.1:0", "b:").await,
    ];
    for services in [10usize, 100, 1_000] {
        let dir = tempfile::tempdir().unwrap();
        write_manifests(dir.path(), services, &backends, backends[0]);
        let cache = SnapshotCache::new();
        let mut manifests = ManifestPublisher::new(dir.path(), Family::IPv4, &cache);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let xds = listener.local_addr().unwrap();
        let server = XdsServer::new(
            cache,
            Arc::new(translate::node_group),
            ClientRegistry::new(),
        );
        tokio::spawn(server.serve(listener, std::future::pending()));
        let agent = Agent::start(xds);
        let first = SocketAddr::from(([127, 0, 0, 1], BASE));
        let last = SocketAddr::from(([127, 0, 0, 1], BASE + services as u16 - 1));
        let start = Instant::now();
        while tcp_roundtrip(last, "x").await.is_none() || tcp_roundtrip(first, "x").await.is_none()
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "nginx never served:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cold = start.elapsed().as_secs_f64() * 1e3;
        let mut applied = Vec::new();
        for round in 0..ROUNDS {
            let to = backends[(round + 1) % 2];
            let tag = if (round + 1) % 2 == 0 { "a:x" } else { "b:x" };
            write_manifests(dir.path(), services, &backends, to);
            let start = Instant::now();
            manifests.publish();
            loop {
                if tcp_roundtrip(first, "x").await.as_deref() == Some(tag) {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "nginx never took round {round}:\n{}",
                    agent.log()
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            applied.push(start.elapsed().as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        applied.sort_by(f64::total_cmp);
        let mut reloads = agent.reloads();
        reloads.sort_by(f64::total_cmp);
        let n = services;
        report.add(
            &format!("first_config_ms_{n}"),
            &format!("{n} Services: agent start -> nginx serving every port"),
            cold,
            "ms",
            "",
        );
        report.add(
            &format!("change_to_serving_p50_ms_{n}"),
            &format!("{n} Services: endpoint change -> nginx serving it, p50"),
            percentile(&applied, 0.5),
            "ms",
            "",
        );
        report.add(
            &format!("change_to_serving_p99_ms_{n}"),
            &format!("{n} Services: endpoint change -> nginx serving it, p99"),
            percentile(&applied, 0.99),
            "ms",
            "",
        );
        report.add(
            &format!("reload_p50_ms_{n}"),
            &format!("{n} Services: reload (SIGHUP -> new workers answer), p50"),
            percentile(&reloads, 0.5),
            "ms",
            "",
        );
        report.add(
            &format!("nginx_pss_kib_{n}"),
            &format!("{n} Services: nginx memory (PSS, master + 2 workers)"),
            agent.nginx_pss_kib() as f64,
            "KiB",
            "",
        );
        report.add(
            &format!("bytes_written_per_change_{n}"),
            &format!("{n} Services: bytes written per change (both files)"),
            agent.bytes_written() as f64,
            "B",
            "",
        );
        drop(agent);
        // nginx gone before the next size reuses the ports.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
