//! The "xDS server" stage: ADS and the per-type discovery services, SotW and Delta,
//! over one engine.
//!
//! [`protocol`] holds the per-stream state machines (no I/O); [`grpc`] is the tonic glue
//! that moves messages between them, the network and the
//! [`SnapshotCache`](crate::snapshot::SnapshotCache); [`inbound`] and [`wire`] are the
//! messages on the wire, requests in and responses out. [`transport`] owns the port's
//! connections (TLS, peer identities, idle timeout), [`authorization`] which certificate
//! may claim which node, and [`limits`] what one client may take.

pub mod authorization;
pub mod clients;
pub mod csds;
pub mod grpc;
mod inbound;
pub mod limits;
pub mod protocol;
pub mod transport;
mod wire;

pub use clients::{ClientRegistry, XdsMetrics};
pub use grpc::{ServerOptions, XdsServer};
pub use protocol::{single_group, NodeGrouping, StreamKind, StreamStatus};
