//! dualstack-xds: a Kubernetes-aware xDS control plane that lets an ordinary Envoy
//! ingress accept both IP families and forward to one primary family (NAT64 / NAT46).
//!
//! ```text
//!  sources (Kubernetes watch | manifest directory) --SourceEvent--> pipeline:
//!    -> model      (services, ports, endpoints per family, mode; no k8s, no protobuf)
//!    -> translate  (model + primary family + node's listener families -> Envoy resources)
//!    -> snapshot   (immutable, versioned by content, each resource encoded once)
//!    -> server     (ADS + per-type services, SotW + Delta, per-stream state machines)
//!    -> Envoy ingresses / proxyless gRPC clients
//! ```
//!
//! `ARCHITECTURE.md` says where each concern lives and how to add an input or an output.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bootstrap;
pub mod certs;
pub mod cli;
pub mod model;
pub mod nginx;
pub mod pipeline;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod status;
pub mod translate;
