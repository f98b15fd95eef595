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
use crate::bootstrap::{self, BootstrapOptions};
use crate::model::{Family, ListenerFamilies, ObjectKey};
use crate::pipeline::{Pipeline, PipelineMetrics};
use crate::server::{ClientRegistry, XdsServer};
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
    Serve(Serve),
    /// Print every resource for a node, as Envoy's canonical proto3 JSON.
    Render(Render),
    /// Print a client bootstrap: Envoy YAML (ADS, SotW or --delta), or gRPC xDS JSON.
    Bootstrap(Bootstrap),
    /// Print one row per connected client, from a running server's admin API.
    Status(Status),
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
}

impl Selection {
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
    /// Address of the admin HTTP server (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9100")]
    admin_addr: SocketAddr,
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

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(serve) => serve.run().await,
            Command::Render(render) => render.run(),
            Command::Bootstrap(bootstrap) => bootstrap.run(),
            Command::Status(status) => status.run().await,
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
        let pipeline = Pipeline::new(selection.primary_family, cache.clone(), pipeline_metrics);
        let admin = Admin {
            pipeline: pipeline.status(),
            registry: Arc::new(registry),
            cache: cache.clone(),
            clients: clients.clone(),
        };
        let admin_listener = TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("binding the admin address {admin_addr}"))?;
        info!(addr = %admin_listener.local_addr()?, "serving admin HTTP");
        tokio::spawn(async move {
            if let Err(error) = admin.serve(admin_listener).await {
                tracing::error!(%error, "admin HTTP server failed");
            }
        });
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
                };
                tokio::spawn(kube::run(client, scope, debounce, source_metrics, pipeline));
            }
        }
        let listener = TcpListener::bind(xds_addr)
            .await
            .with_context(|| format!("binding the xDS address {xds_addr}"))?;
        info!(addr = %listener.local_addr()?, "serving xDS");
        let grouping: crate::server::NodeGrouping = Arc::new(translate::node_group);
        let server = XdsServer::new(cache, grouping, clients);
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
        let mut pipeline = Pipeline::new(
            selection.primary_family,
            cache.clone(),
            PipelineMetrics::default(),
        );
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
        } = self;
        let options = BootstrapOptions {
            node_id,
            cluster,
            families,
            xds_address,
            delta,
            admin_address,
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

impl Status {
    async fn run(self) -> anyhow::Result<()> {
        let Status { admin_addr } = self;
        let clients = crate::status::clients(admin_addr).await?;
        print!("{}", crate::status::table(&clients));
        Ok(())
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
