//! The "sources" stage: where the model comes from (Kubernetes objects from a manifest
//! directory; the Kubernetes API watch comes with its own module).

pub mod debounce;
pub mod kube;
pub mod manifest_watch;
pub mod manifests;
pub mod objects;
