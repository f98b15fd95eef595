//! Admin HTTP: health, readiness and Prometheus metrics (`--admin-addr`), and the debug
//! views of what is served (`/debug/resources`) and to whom (`/debug/clients`), which
//! show every client's configuration and so are served only on loopback: on the admin
//! address when it is a loopback one, and wherever `--debug-addr` opens them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;

use crate::pipeline::PipelineStatus;
use crate::server::ClientRegistry;
use crate::snapshot::json::snapshot_json;
use crate::snapshot::SnapshotCache;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct Admin {
    /// Readiness and the objects left out, from the pipeline.
    pub pipeline: PipelineStatus,
    pub registry: Arc<Registry>,
    pub cache: SnapshotCache,
    pub clients: Arc<ClientRegistry>,
}

impl Admin {
    /// Probes and metrics; with `debug`, the debug views too.
    pub fn router(self, debug: bool) -> Router {
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics));
        let router = if debug {
            router.merge(debug_routes())
        } else {
            router
        };
        router.with_state(self)
    }

    /// The debug views alone.
    pub fn debug_router(self) -> Router {
        debug_routes().with_state(self)
    }

    /// Serves probes and metrics on `listener` until the process ends, and the debug
    /// views too when it is bound to loopback.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let debug = listener.local_addr()?.ip().is_loopback();
        axum::serve(listener, self.router(debug)).await
    }

    /// Serves the debug views on `listener` until the process ends.
    pub async fn serve_debug(self, listener: TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.debug_router()).await
    }

    /// [`Admin::serve`] on `listener` (and [`Admin::serve_debug`] on `debug`) on a thread
    /// and a runtime of their own, so that probes and metrics answer promptly however
    /// busy the xDS streams keep the main runtime (a fleet reconnecting at once).
    pub fn serve_on_own_thread(
        self,
        listener: TcpListener,
        debug: Option<TcpListener>,
    ) -> std::io::Result<()> {
        let listener = listener.into_std()?;
        let debug = debug.map(TcpListener::into_std).transpose()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Some(debug) = debug {
                        let admin = self.clone();
                        tokio::spawn(async move {
                            let served = match TcpListener::from_std(debug) {
                                Ok(listener) => admin.serve_debug(listener).await,
                                Err(error) => Err(error),
                            };
                            if let Err(error) = served {
                                tracing::error!(%error, "debug HTTP server failed");
                            }
                        });
                    }
                    let served = match TcpListener::from_std(listener) {
                        Ok(listener) => self.serve(listener).await,
                        Err(error) => Err(error),
                    };
                    if let Err(error) = served {
                        tracing::error!(%error, "admin HTTP server failed");
                    }
                })
            })?;
        Ok(())
    }
}

fn debug_routes() -> Router<Admin> {
    Router::new()
        .route("/debug/resources", get(resources))
        .route("/debug/clients", get(clients))
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.pipeline.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the initial sync of every source\n",
        )
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &admin.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            error.to_string(),
        ),
    }
}

/// Every served resource with its version, per group of listener families, as
/// proto3 JSON; and every object left out, with its reason.
async fn resources(State(admin): State<Admin>) -> impl IntoResponse {
    let groups: serde_json::Map<String, serde_json::Value> = admin
        .cache
        .current()
        .map(|set| {
            set.groups()
                .map(|(group, snapshot)| (group.to_owned(), snapshot_json(snapshot)))
                .collect()
        })
        .unwrap_or_default();
    let skipped = admin.pipeline.skipped();
    Json(json!({ "groups": groups, "skipped": skipped }))
}

/// Every connected stream: node, cluster, listener families, SotW or Delta, and per
/// type the acked version, the pending nonce and the last NACK.
async fn clients(State(admin): State<Admin>) -> impl IntoResponse {
    Json(admin.clients.clients())
}
