//! The `dualstack-xds` binary.
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dualstack_xds::cli::Cli::parse().run().await
}
