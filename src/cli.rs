//! The command line: one clap struct per subcommand, each run by destructuring itself so
//! a flag that nothing reads is a compile error.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tracing::info;

use crate::server::{single_group, ClientRegistry, XdsServer};
use crate::snapshot::{Snapshot, SnapshotCache, SnapshotSet};

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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, clap::Args)]
struct Serve {
    /// Address the xDS gRPC server listens on.
    #[arg(long, default_value = "[::]:18000")]
    xds_addr: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value = "pretty")]
    log_format: LogFormat,
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(serve) => serve.run().await,
        }
    }
}

impl Serve {
    async fn run(self) -> anyhow::Result<()> {
        let Serve {
            xds_addr,
            log_format,
        } = self;
        init_logging(log_format);
        let cache = SnapshotCache::new();
        // Sources and translation publish here; until they exist every client is served
        // the empty configuration.
        cache.publish(SnapshotSet::single(Snapshot::default()));
        let listener = TcpListener::bind(xds_addr)
            .await
            .with_context(|| format!("binding the xDS address {xds_addr}"))?;
        info!(addr = %listener.local_addr()?, "serving xDS");
        let server = XdsServer::new(cache, single_group(), ClientRegistry::new());
        server
            .serve(listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    }
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
