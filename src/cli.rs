//! The command line: one clap struct per subcommand, each run by destructuring itself so
//! a flag that nothing reads is a compile error.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tracing::info;

use std::path::PathBuf;
use std::sync::Arc;

use crate::model::{Family, ListenerFamilies, ServiceKey};
use crate::server::{ClientRegistry, XdsServer};
use crate::snapshot::json::snapshot_json;
use crate::snapshot::SnapshotCache;
use crate::sources::manifest_watch::{self, Debounce, ManifestDir};
use crate::sources::manifests::{self, LabelSelector};
use crate::sources::objects::ModelStore;
use crate::translate::{self, Translator};

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
    config_map: ServiceKey,
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

fn parse_namespaced(s: &str) -> Result<ServiceKey, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ServiceKey {
                namespace: ns.into(),
                name: name.into(),
            })
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
struct Serve {
    /// Directory of Kubernetes manifests (YAML or JSON) to serve.
    #[arg(long)]
    manifests: PathBuf,
    #[command(flatten)]
    selection: Selection,
    /// Address the xDS gRPC server listens on.
    #[arg(long, default_value = "[::]:18000")]
    xds_addr: SocketAddr,
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
        }
    }
}

impl Serve {
    async fn run(self) -> anyhow::Result<()> {
        let Serve {
            manifests,
            selection,
            xds_addr,
            debounce,
            debounce_max,
            log_format,
        } = self;
        init_logging(log_format);
        let cache = SnapshotCache::new();
        let source = ManifestDir::load(&manifests, selection.filter())
            .with_context(|| format!("reading {}", manifests.display()))?;
        let mut translator = Translator::new(selection.primary_family);
        let mut store = ModelStore::default();
        let mut publish = {
            let cache = cache.clone();
            move |source: &ManifestDir| {
                let changed = store.sync(source.objects());
                if changed.is_nothing() && cache.current().is_some() {
                    return;
                }
                let model = store.model();
                let result = translator.update(model, changed.services().as_ref());
                for skipped in model.skipped().chain(translator.conflicts().iter()) {
                    tracing::warn!(kind = %skipped.kind, namespace = %skipped.namespace, name = %skipped.name, reason = %skipped.reason, "skipping an invalid object");
                }
                match result {
                    Ok(set) => {
                        cache.publish(set);
                        info!(services = model.services.len(), "configuration published");
                    }
                    Err(error) => {
                        tracing::error!(%error, "not publishing an inconsistent snapshot")
                    }
                }
            }
        };
        publish(&source);
        let debounce = Debounce {
            quiet: debounce,
            max_delay: debounce_max.max(debounce),
        };
        tokio::spawn(async move {
            if let Err(error) = manifest_watch::watch(source, debounce, publish).await {
                tracing::error!(%error, "watching the manifest directory failed; serving the last configuration");
            }
        });
        let listener = TcpListener::bind(xds_addr)
            .await
            .with_context(|| format!("binding the xDS address {xds_addr}"))?;
        info!(addr = %listener.local_addr()?, "serving xDS");
        let grouping: crate::server::NodeGrouping = Arc::new(translate::node_group);
        let server = XdsServer::new(cache, grouping, ClientRegistry::new());
        server.serve(listener, shutdown_signal()).await?;
        Ok(())
    }
}

impl Render {
    fn run(self) -> anyhow::Result<()> {
        let Render {
            manifests,
            node_families,
            selection,
        } = self;
        let (objects, errors) = manifests::load_dir(&manifests, &selection.filter())
            .with_context(|| format!("reading {}", manifests.display()))?;
        for error in &errors {
            eprintln!("warning: skipping {error}");
        }
        let model = objects.to_model();
        let mut translator = Translator::new(selection.primary_family);
        let set = translator.update(&model, None)?;
        let snapshot = set
            .get(&node_families.to_string())
            .context("no snapshot for these listener families")?;
        let mut json = snapshot_json(snapshot);
        let skipped: Vec<_> = model
            .skipped()
            .chain(translator.conflicts().iter())
            .cloned()
            .collect();
        json["skipped"] = serde_json::to_value(skipped)?;
        println!("{}", serde_json::to_string_pretty(&json)?);
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
