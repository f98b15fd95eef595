//! The "xDS server" stage: ADS and the per-type discovery services, SotW and Delta,
//! over one engine.
//!
//! [`protocol`] holds the per-stream state machines (no I/O); [`grpc`] is the tonic glue
//! that moves messages between them, the network and the
//! [`SnapshotCache`](crate::snapshot::SnapshotCache).

pub mod clients;
pub mod csds;
pub mod grpc;
pub mod protocol;
mod wire;

pub use clients::{ClientRegistry, XdsMetrics};
pub use grpc::XdsServer;
pub use protocol::{single_group, NodeGrouping, StreamKind, StreamStatus};
