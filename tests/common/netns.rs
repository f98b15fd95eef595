//! Single-family hosts as Linux network namespaces, for the tests that prove NAT64 and
//! NAT46 across them:
//!
//! ```text
//!   c6 (IPv6 only) fd64:6::2 ──┐                  ┌── b4 (IPv4 only) 10.64.14.2
//!                              ├── ing (both) ────┤
//!   c4 (IPv4 only) 10.64.4.2 ──┘                  └── b6 (IPv6 only) fd64:16::2
//! ```
//!
//! Private addresses only, inside namespaces the test creates and deletes. Needs root.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::{blocking_http_get, in_netns};

pub const ING_C4: &str = "10.64.4.1";
pub const C4: &str = "10.64.4.2";
pub const ING_C6: &str = "fd64:6::1";
pub const C6: &str = "fd64:6::2";
pub const B4: &str = "10.64.14.2";
pub const B6: &str = "fd64:16::2";

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The five hosts; deleted on drop.
pub struct Hosts {
    prefix: String,
}

impl Hosts {
    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    pub fn create() -> Hosts {
        let hosts = Hosts {
            prefix: format!("dsx{}", std::process::id() % 100_000),
        };
        let ing = hosts.ns("ing");
        for role in ["ing", "c4", "c6", "b4", "b6"] {
            let ns = hosts.ns(role);
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        // (peer, ingress address, peer address, prefix length)
        let links = [
            ("c4", ING_C4, C4, "24"),
            ("b4", "10.64.14.1", B4, "24"),
            ("c6", ING_C6, C6, "64"),
            ("b6", "fd64:16::1", B6, "64"),
        ];
        for (role, ing_addr, peer_addr, len) in links {
            let peer = hosts.ns(role);
            let (a, b) = (
                format!("{}{role}i", hosts.prefix),
                format!("{}{role}p", hosts.prefix),
            );
            ip(&[
                "link", "add", &a, "netns", &ing, "type", "veth", "peer", "name", &b, "netns",
                &peer,
            ]);
            let v6 = ing_addr.contains(':');
            if !v6 {
                // An IPv4-only host: no IPv6 at all.
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &peer,
                        "sysctl",
                        "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1",
                    ])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            for (ns, dev, addr) in [(&ing, &a, ing_addr), (&peer, &b, peer_addr)] {
                let cidr = format!("{addr}/{len}");
                if v6 {
                    ip(&["-n", ns, "addr", "add", &cidr, "dev", dev, "nodad"]);
                } else {
                    ip(&["-n", ns, "addr", "add", &cidr, "dev", dev]);
                }
                ip(&["-n", ns, "link", "set", dev, "up"]);
            }
        }
        hosts
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for role in ["ing", "c4", "c6", "b4", "b6"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .output();
        }
    }
}

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

pub fn bind_tcp(ns: &str, addr: SocketAddr) -> tokio::net::TcpListener {
    let l = in_netns(ns, move || std::net::TcpListener::bind(addr).unwrap());
    l.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(l).unwrap()
}

pub fn bind_udp(ns: &str, addr: SocketAddr) -> tokio::net::UdpSocket {
    let s = in_netns(ns, move || std::net::UdpSocket::bind(addr).unwrap());
    s.set_nonblocking(true).unwrap();
    tokio::net::UdpSocket::from_std(s).unwrap()
}

/// One TCP exchange from a client host: a new connection, `msg` out, the reply back.
pub async fn tcp_from(ns: &str, to: SocketAddr, msg: &str) -> Option<String> {
    let (ns, msg) = (ns.to_owned(), msg.to_owned());
    tokio::task::spawn_blocking(move || {
        in_netns(&ns, move || {
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            s.write_all(msg.as_bytes()).ok()?;
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).ok()?;
            (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    })
    .await
    .unwrap()
}

pub async fn udp_from(ns: &str, to: SocketAddr, msg: &str) -> Option<String> {
    let (ns, msg) = (ns.to_owned(), msg.to_owned());
    tokio::task::spawn_blocking(move || {
        in_netns(&ns, move || {
            let bind = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
            let s = std::net::UdpSocket::bind(bind).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            s.send_to(msg.as_bytes(), to).ok()?;
            let mut buf = [0u8; 512];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    })
    .await
    .unwrap()
}

pub async fn http_from(ns: &str, to: SocketAddr) -> Option<String> {
    let ns = ns.to_owned();
    tokio::task::spawn_blocking(move || in_netns(&ns, move || blocking_http_get(to, "/")))
        .await
        .unwrap()
}

/// Runs a command inside namespace `ns` (curl, openssl as a client there); its output.
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .unwrap()
}

/// A backend that answers with `tag` and the PROXY protocol v1 line it received.
pub fn serve_proxy_reader(listener: tokio::net::TcpListener, tag: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while !line.ends_with(b"\r\n") {
                    match s.read(&mut byte).await {
                        Ok(1) => line.push(byte[0]),
                        _ => return,
                    }
                }
                let reply = format!("{tag}{}", String::from_utf8_lossy(&line).trim_end());
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
}

/// A TCP connection from a client host, kept open across a change.
pub struct LongLived(std::net::TcpStream);

impl LongLived {
    pub async fn open(ns: &str, to: SocketAddr) -> LongLived {
        let ns = ns.to_owned();
        let stream = tokio::task::spawn_blocking(move || {
            in_netns(&ns, move || {
                std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap()
            })
        })
        .await
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        LongLived(stream)
    }

    /// `msg` out, the reply back, on the same connection.
    pub fn roundtrip(&mut self, msg: &str) -> String {
        self.0.write_all(msg.as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        let n = self.0.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// New connections from a client host, one after the other, until stopped: how many
/// were made, how many failed, and the replies seen.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, usize, std::collections::BTreeSet<String>)>,
}

impl Load {
    pub fn start(ns: &str, to: SocketAddr, msg: &'static str) -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (ns, flag) = (ns.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let (mut sent, mut failed, mut seen) = (0, 0, std::collections::BTreeSet::new());
            while !flag.load(Ordering::Relaxed) {
                sent += 1;
                match tcp_from(&ns, to, msg).await {
                    Some(reply) => {
                        seen.insert(reply);
                    }
                    None => failed += 1,
                }
            }
            (sent, failed, seen)
        });
        Load { stop, task }
    }

    /// (connections made, failed, the distinct replies).
    pub async fn stop(self) -> (usize, usize, std::collections::BTreeSet<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}
