//! The command line: one clap struct per subcommand, each run by destructuring itself so
//! a flag that nothing reads is a compile error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::info;

use crate::admin::Admin;
use crate::bootstrap::{self, BootstrapOptions, BootstrapTls};
use crate::certs::{self, CertsOptions};
use crate::model::{Family, ListenerFamilies, ObjectKey};
use crate::pipeline::{Pipeline, PipelineMetrics};
use crate::server::authorization::{IdentityTemplate, NodeAuthorization};
use crate::server::limits::{parse_bytes, Limits};
use crate::server::transport::{ReloadingTls, TlsFiles};
use crate::server::{ClientRegistry, ServerOptions, XdsServer};
use crate::snapshot::json::snapshot_json;
use crate::snapshot::SnapshotCache;
use crate::sources::debounce::{Debounce, Instant};
use crate::sources::kube::{self, SourceMetrics};
use crate::sources::manifest_watch::{self, ManifestDir};
use crate::sources::manifests::{self, LabelSelector};
use crate::sources::{Sink, SourceEvent};
use crate::translate;

#[derive(Debug, Parser)]
#[command(
    name = "dualstack-xds",
    version,
    about = "xDS control plane for dual-stack (NAT64/NAT46) Envoy ingresses"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the xDS server.
    Serve(Box<Serve>),
    /// Print every resource for a node, as Envoy's canonical proto3 JSON.
    Render(Render),
    /// Print a client bootstrap: Envoy YAML (ADS, SotW or --delta), or gRPC xDS JSON.
    Bootstrap(Bootstrap),
    /// Print one row per connected client, from a running server's admin API.
    Status(Status),
    /// Write a CA, a server certificate and per-fleet client certificates for mTLS.
    Certs(Certs),
    /// Run an nginx ingress from the control plane: an xDS client that writes nginx
    /// configuration and reloads nginx (or, with a command after `--`, runs nginx too).
    Nginx(Box<NginxAgent>),
}

#[derive(Debug, clap::Args)]
struct NginxAgent {
    /// The control plane, HOST:PORT (IPv6 hosts in brackets).
    #[arg(
        long,
        default_value = "dualstack-xds.dualstack-xds.svc.cluster.local:18000"
    )]
    xds_address: String,
    /// The node id (unique per nginx instance: the pod name in a cluster).
    #[arg(long, default_value = "nginx-ingress")]
    node_id: String,
    /// The node's cluster (the fleet; under --authorize-node, the certificate's fleet).
    #[arg(long, default_value = "dualstack-ingress")]
    cluster: String,
    /// The families nginx binds listeners on.
    #[arg(long, default_value = "IPv4,IPv6")]
    families: ListenerFamilies,
    /// mTLS to the control plane with tls.crt, tls.key and ca.crt from this directory.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// The name the control plane's certificate must carry [default: the host of
    /// --xds-address].
    #[arg(long, requires = "tls_dir")]
    tls_server_name: Option<String>,
    /// Directory for stream.conf (include it at nginx.conf's main level) and http.conf
    /// (include it inside http {}); created when missing.
    #[arg(long, default_value = "/etc/nginx/dualstack-xds")]
    config_dir: PathBuf,
    /// The nginx binary for `nginx -t` when nginx runs on its own.
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// nginx's main configuration file (`-c`) when nginx runs on its own.
    #[arg(long)]
    nginx_conf: Option<PathBuf>,
    /// The pid file of an nginx that runs on its own (the master gets SIGHUP).
    #[arg(long, default_value = "/run/nginx.pid")]
    pid_file: PathBuf,
    /// Quiet time after a response before nginx is reloaded: a burst is one reload.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    debounce: std::time::Duration,
    /// Longest a burst may hold a reload back.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    debounce_max: std::time::Duration,
    /// How long a new listener waits for the endpoints and routes it references.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warming_timeout: std::time::Duration,
    /// How long nginx may take to serve a configuration after the reload signal before
    /// it is reported as refused.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    reload_timeout: std::time::Duration,
    /// Log format.
    #[arg(long, value_enum, default_value = "pretty")]
    log_format: LogFormat,
    /// nginx's command line, to run it in the foreground under the agent (e.g. `-- nginx
    /// -g 'daemon off;'`): signals are forwarded and the agent exits with nginx's status.
    /// `nginx -t` is that command line with `-t`.
    #[arg(last = true)]
    exec: Vec<std::ffi::OsString>,
}

#[derive(Debug, clap::Args)]
struct Bootstrap {
    /// The node id.
    #[arg(long, default_value = "envoy-ingress")]
    node_id: String,
    /// The node's cluster (Envoy's --service-cluster).
    #[arg(long, default_value = "dualstack-ingress")]
    cluster: String,
    /// The families this node binds listeners on.
    #[arg(long, default_value = "IPv4,IPv6")]
    families: ListenerFamilies,
    /// The xDS server, HOST:PORT (IPv6 hosts in brackets).
    #[arg(
        long,
        default_value = "dualstack-xds.dualstack-xds.svc.cluster.local:18000"
    )]
    xds_address: String,
    /// Delta (incremental) xDS instead of state of the world.
    #[arg(long, conflicts_with = "grpc")]
    delta: bool,
    /// Envoy's admin address.
    #[arg(long, default_value = "127.0.0.1:9901", conflicts_with = "grpc")]
    admin_address: String,
    /// A gRPC xDS bootstrap (GRPC_XDS_BOOTSTRAP) for proxyless clients instead.
    #[arg(long)]
    grpc: bool,
    /// mTLS to the server with the certificate, key and CA in this directory (tls.crt,
    /// tls.key, ca.crt: a fleet's directory from `certs`, or its mounted Secret).
    #[arg(long)]
    tls_dir: Option<String>,
    /// Where Envoy reads the SDS files that point at --tls-dir's files (and reloads them
    /// when they are rotated) [default: --tls-dir].
    #[arg(long, requires = "tls_dir", conflicts_with = "grpc")]
    sds_dir: Option<String>,
    /// Write those SDS files into --sds-dir too.
    #[arg(long, requires = "tls_dir", conflicts_with = "grpc")]
    write_sds: bool,
}

#[derive(Debug, clap::Args)]
struct Certs {
    /// Directory for the CA (ca.crt, ca.key: kept there and reused by later runs), the
    /// server's and each fleet's certificate (a directory each: tls.crt, tls.key,
    /// ca.crt), and secrets.yaml (the Kubernetes Secrets).
    #[arg(long)]
    out: PathBuf,
    /// The namespace of the control plane and of the Secrets.
    #[arg(long, default_value = "dualstack-xds")]
    namespace: String,
    /// A fleet to issue a client certificate for (repeatable); its nodes' `cluster` must
    /// be this name [default: ingress-ipv4, ingress-ipv6].
    #[arg(long = "fleet")]
    fleets: Vec<String>,
    /// Another name or IP address the server certificate is valid for (repeatable).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// Validity of the server and client certificates, in days.
    #[arg(long, default_value_t = 90)]
    days: u32,
}

#[derive(Debug, clap::Args)]
struct Status {
    /// The server's admin address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    admin_addr: SocketAddr,
}

/// What to read from the objects, shared by `serve` and `render`.
#[derive(Debug, clap::Args)]
struct Selection {
    /// Only Services with these labels.
    #[arg(long, default_value = "dualstack-xds.io/expose=true")]
    service_selector: LabelSelector,
    /// Only these namespaces (repeatable; all when absent).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// The ConfigMap whose `primaryFamily` overrides --primary-family.
    #[arg(long, default_value = "dualstack-xds/dualstack-xds", value_parser = parse_namespaced)]
    config_map: ObjectKey,
    /// The primary family: Service endpoints of this family are served.
    #[arg(long, default_value = "ipv4")]
    primary_family: Family,
    /// Terminate TLS for Services that ask (`dualstack-xds.io/tls: terminate`) with the
    /// certificates of the Secrets they name; `false` where the control plane may not
    /// read Secrets: none is read, and those Services are reported.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    tls_termination: bool,
}

impl Selection {
    /// A pipeline for this selection, publishing into `cache`.
    fn pipeline(&self, cache: SnapshotCache, metrics: PipelineMetrics) -> Pipeline {
        let pipeline = Pipeline::new(self.primary_family, cache, metrics);
        if self.tls_termination {
            pipeline
        } else {
            pipeline.without_tls_termination()
        }
    }

    fn filter(&self) -> manifests::Filter {
        manifests::Filter {
            service_selector: self.service_selector.clone(),
            namespaces: self.namespaces.clone(),
            config_map: self.config_map.clone(),
        }
    }
}

fn parse_namespaced(s: &str) -> Result<ObjectKey, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ObjectKey::new(ns, name))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

#[derive(Debug, clap::Args)]
struct Render {
    /// Directory of Kubernetes manifests (YAML or JSON).
    #[arg(long)]
    manifests: PathBuf,
    /// The node's listener families.
    #[arg(long, default_value = "IPv4,IPv6")]
    node_families: ListenerFamilies,
    #[command(flatten)]
    selection: Selection,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("source").args(["manifests", "kubeconfig"]))]
struct Serve {
    /// Directory of Kubernetes manifests (YAML or JSON) to serve, watched live.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Kubeconfig of the cluster to watch (in-cluster configuration when neither this nor
    /// --manifests is given).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    selection: Selection,
    /// Address the xDS gRPC server listens on.
    #[arg(long, default_value = "[::]:18000")]
    xds_addr: SocketAddr,
    /// Address of the admin HTTP server (/healthz, /readyz, /metrics; and /debug/* when
    /// it is a loopback address).
    #[arg(long, default_value = "127.0.0.1:9100")]
    admin_addr: SocketAddr,
    /// Serve the debug views (/debug/resources, /debug/clients: every client's
    /// configuration) on this address too. They are never served on a non-loopback
    /// admin address; this flag is how to open them elsewhere.
    #[arg(long)]
    debug_addr: Option<SocketAddr>,
    /// TLS on the xDS port: the certificate chain (PEM), reloaded when the file changes.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM), reloaded with it.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// mTLS: clients must present a certificate signed by this CA (PEM), reloaded when
    /// the file changes.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Which client certificate may claim which node (repeatable; needs --tls-client-ca):
    /// a template over {cluster} and {node_id} that must equal one of the certificate's
    /// URI or DNS names [default with mTLS: spiffe://dualstack-xds/fleet/{cluster}].
    #[arg(long = "authorize-node", requires = "tls_client_ca")]
    authorize_node: Vec<IdentityTemplate>,
    #[command(flatten)]
    limits: LimitFlags,
    /// Quiet period that ends a burst of changes before they are published.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    debounce: std::time::Duration,
    /// Longest a change waits for a burst to end: steady changes cannot starve pushes.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    debounce_max: std::time::Duration,
    /// Log format.
    #[arg(long, value_enum, default_value = "pretty")]
    log_format: LogFormat,
}

/// What one client may take of the xDS server.
#[derive(Debug, clap::Args)]
struct LimitFlags {
    /// xDS streams open at once, all clients together.
    #[arg(long, default_value_t = Limits::default().max_streams)]
    max_streams: usize,
    /// xDS streams open at once on one connection.
    #[arg(long, default_value_t = Limits::default().max_streams_per_connection)]
    max_streams_per_connection: usize,
    /// The largest request message.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes)]
    max_request_bytes: usize,
    /// Resource names one request may carry.
    #[arg(long, default_value_t = Limits::default().max_names_per_request)]
    max_names_per_request: usize,
    /// Requests per second on one stream (bursts of twice as many pass).
    #[arg(long, default_value_t = Limits::default().requests_per_second)]
    max_requests_per_second: u32,
    /// HTTP/2 PING interval on xDS connections.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    keepalive_interval: std::time::Duration,
    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    keepalive_timeout: std::time::Duration,
    /// An xDS connection without any stream for this long is closed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    idle_timeout: std::time::Duration,
}

impl From<LimitFlags> for Limits {
    fn from(flags: LimitFlags) -> Limits {
        let LimitFlags {
            max_streams,
            max_streams_per_connection,
            max_request_bytes,
            max_names_per_request,
            max_requests_per_second,
            keepalive_interval,
            keepalive_timeout,
            idle_timeout,
        } = flags;
        Limits {
            max_streams,
            max_streams_per_connection,
            max_request_bytes,
            max_names_per_request,
            requests_per_second: max_requests_per_second,
            keepalive_interval,
            keepalive_timeout,
            idle_timeout,
        }
    }
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(serve) => serve.run().await,
            Command::Render(render) => render.run(),
            Command::Bootstrap(bootstrap) => bootstrap.run(),
            Command::Status(status) => status.run().await,
            Command::Certs(certs) => certs.run(),
            Command::Nginx(agent) => {
                let code = agent.run().await?;
                if code != 0 {
                    std::process::exit(code);
                }
                Ok(())
            }
        }
    }
}

impl Serve {
    async fn run(self) -> anyhow::Result<()> {
        let Serve {
            manifests,
            kubeconfig,
            selection,
            xds_addr,
            admin_addr,
            debug_addr,
            tls_cert,
            tls_key,
            tls_client_ca,
            authorize_node,
            limits,
            debounce,
            debounce_max,
            log_format,
        } = self;
        init_logging(log_format);
        let cache = SnapshotCache::new();
        let clients = ClientRegistry::new();
        let source_metrics = SourceMetrics::default();
        let pipeline_metrics = PipelineMetrics::default();
        let mut registry = Registry::with_prefix("dualstack_xds");
        clients.metrics.register(&mut registry);
        source_metrics.register(&mut registry);
        pipeline_metrics.register(&mut registry);
        let pipeline = selection.pipeline(cache.clone(), pipeline_metrics);
        let admin = Admin {
            pipeline: pipeline.status(),
            registry: Arc::new(registry),
            cache: cache.clone(),
            clients: clients.clone(),
        };
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(
                ReloadingTls::load(TlsFiles {
                    cert,
                    key,
                    client_ca: tls_client_ca,
                })
                .context("loading the TLS files of the xDS port")?,
            ),
            _ => None,
        };
        let authorization = tls
            .as_ref()
            .filter(|tls| tls.verifies_clients())
            .map(|_| Arc::new(NodeAuthorization::new(authorize_node)));
        let options = ServerOptions {
            tls,
            authorization,
            limits: limits.into(),
        };
        let admin_listener = TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("binding the admin address {admin_addr}"))?;
        let debug_listener = match debug_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the debug address {addr}"))?,
            ),
            None => None,
        };
        info!(addr = %admin_listener.local_addr()?, debug_views = admin_addr.ip().is_loopback(), "serving admin HTTP");
        if let Some(listener) = &debug_listener {
            info!(addr = %listener.local_addr()?, "serving the debug views");
        }
        admin
            .serve_on_own_thread(admin_listener, debug_listener)
            .context("starting the admin HTTP server")?;
        let debounce = Debounce {
            quiet: debounce,
            max_delay: debounce_max.max(debounce),
        };
        match manifests {
            Some(dir) => {
                let source = ManifestDir::load(&dir, selection.filter())
                    .with_context(|| format!("reading {}", dir.display()))?;
                tokio::spawn(async move {
                    if let Err(error) = manifest_watch::run(source, debounce, pipeline).await {
                        tracing::error!(%error, "watching the manifest directory failed; serving the last configuration");
                    }
                });
            }
            None => {
                let client = kube_client(kubeconfig.as_deref()).await?;
                let scope = kube::Scope {
                    service_selector: selection.service_selector.to_string(),
                    namespaces: selection.namespaces.clone(),
                    config_map: selection.config_map.clone(),
                    secrets: selection.tls_termination,
                };
                tokio::spawn(kube::run(client, scope, debounce, source_metrics, pipeline));
            }
        }
        let listener = TcpListener::bind(xds_addr)
            .await
            .with_context(|| format!("binding the xDS address {xds_addr}"))?;
        info!(
            addr = %listener.local_addr()?,
            tls = options.tls.is_some(),
            mtls = options.authorization.is_some(),
            "serving xDS"
        );
        let grouping: crate::server::NodeGrouping = Arc::new(translate::node_group);
        let server = XdsServer::with_options(cache, grouping, clients, options);
        server.serve(listener, shutdown_signal()).await?;
        Ok(())
    }
}

/// A client for the cluster of `kubeconfig`, or the one this pod runs in.
async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<::kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = ::kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            ::kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => ::kube::Config::incluster().context(
            "no --manifests or --kubeconfig given, and not running in a cluster (in-cluster configuration)",
        )?,
    };
    ::kube::Client::try_from(config).context("creating the Kubernetes client")
}

impl Render {
    fn run(self) -> anyhow::Result<()> {
        let Render {
            manifests,
            node_families,
            selection,
        } = self;
        let mut dir = ManifestDir::load(&manifests, selection.filter())
            .with_context(|| format!("reading {}", manifests.display()))?;
        for error in dir.errors() {
            eprintln!("warning: skipping {error}");
        }
        // The pipeline `serve` runs, on the directory's objects, once.
        let cache = SnapshotCache::new();
        let mut pipeline = selection.pipeline(cache.clone(), PipelineMetrics::default());
        pipeline.send(SourceEvent::Changes {
            changes: dir.take_changes(),
            since: Instant::now(),
        });
        pipeline.send(SourceEvent::Synced);
        let set = cache
            .current()
            .context("the configuration could not be translated")?;
        let snapshot = set
            .get(&node_families.to_string())
            .context("no snapshot for these listener families")?;
        let mut json = snapshot_json(snapshot);
        json["skipped"] = serde_json::to_value(pipeline.status().skipped())?;
        println!("{}", serde_json::to_string_pretty(&json)?);
        Ok(())
    }
}

impl Bootstrap {
    fn run(self) -> anyhow::Result<()> {
        let Bootstrap {
            node_id,
            cluster,
            families,
            xds_address,
            delta,
            admin_address,
            grpc,
            tls_dir,
            sds_dir,
            write_sds,
        } = self;
        let tls = tls_dir.map(|cert_dir| BootstrapTls {
            sds_dir: sds_dir.unwrap_or_else(|| cert_dir.clone()),
            cert_dir,
        });
        if let (Some(tls), true) = (&tls, write_sds) {
            for (path, text) in bootstrap::sds_files(tls) {
                std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
            }
        }
        let options = BootstrapOptions {
            node_id,
            cluster,
            families,
            xds_address,
            delta,
            admin_address,
            tls,
        };
        let text = if grpc {
            serde_json::to_string_pretty(&bootstrap::grpc(&options).map_err(anyhow::Error::msg)?)?
        } else {
            bootstrap::envoy_yaml(&options).map_err(anyhow::Error::msg)?
        };
        println!("{}", text.trim_end());
        Ok(())
    }
}

impl Certs {
    fn run(self) -> anyhow::Result<()> {
        let Certs {
            out,
            namespace,
            fleets,
            server_names,
            days,
        } = self;
        let fleets = if fleets.is_empty() {
            vec!["ingress-ipv4".into(), "ingress-ipv6".into()]
        } else {
            fleets
        };
        let written = certs::generate(&CertsOptions {
            out,
            namespace,
            fleets,
            server_names,
            days,
        })?;
        for path in written {
            println!("{}", path.display());
        }
        Ok(())
    }
}

impl Status {
    async fn run(self) -> anyhow::Result<()> {
        let Status { admin_addr } = self;
        let clients = crate::status::clients(admin_addr).await?;
        print!("{}", crate::status::table(&clients));
        Ok(())
    }
}

impl NginxAgent {
    async fn run(self) -> anyhow::Result<i32> {
        let NginxAgent {
            xds_address,
            node_id,
            cluster,
            families,
            tls_dir,
            tls_server_name,
            config_dir,
            nginx,
            nginx_conf,
            pid_file,
            debounce,
            debounce_max,
            warming_timeout,
            reload_timeout,
            log_format,
            exec,
        } = self;
        init_logging(log_format);
        let scheme = if tls_dir.is_some() { "https" } else { "http" };
        let mut nginx_test = vec![nginx.into_os_string()];
        if let Some(conf) = nginx_conf {
            nginx_test.extend(["-c".into(), conf.into_os_string()]);
        }
        let code = crate::nginx::agent::run(crate::nginx::agent::AgentOptions {
            server: format!("{scheme}://{xds_address}"),
            node: crate::nginx::agent::node(&node_id, &cluster, families),
            tls_dir,
            tls_server_name,
            debounce,
            debounce_max,
            warming_timeout,
            config_dir,
            nginx_test,
            pid_file,
            reload_timeout,
            exec,
        })
        .await?;
        Ok(code)
    }
}

/// SIGINT or SIGTERM (what Kubernetes sends a pod).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("shutting down");
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
