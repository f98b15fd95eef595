//! The nginx agent (`dualstack-xds nginx`): an ordinary Delta ADS client of the control
//! plane that renders the resources it receives as nginx configuration and applies them.
//!
//! ```text
//!  control plane --Delta ADS--> client (I/O-free: subscriptions, ACK/NACK, rollback)
//!                                 -> render (I/O-free: xDS resources -> nginx text)
//!                                 -> apply  (write files, `nginx -t`, SIGHUP, confirm)
//!  agent: the tokio loop that moves messages between them, reconnects, and supervises
//!  nginx when it is the container's entrypoint.
//! ```
//!
//! There is no second translation path from the Kubernetes model: nginx nodes get the very
//! resources an Envoy node of the same listener families gets.

pub mod agent;
pub mod apply;
pub mod client;
pub mod render;

/// The user agent the agent announces in its node, so the server and `status` tell nginx
/// nodes from Envoy ones.
pub const USER_AGENT: &str = "dualstack-xds-nginx";
