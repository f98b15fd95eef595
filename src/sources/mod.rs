//! The "sources" stage: where the model's inputs come from. Two sources, one contract:
//! each hands a [`Sink`] (the pipeline) [`SourceEvent`]s — a set of model changes
//! gathered in one debounced burst, and once, that its initial state is complete. The
//! call returns when the change is published, so a source's debouncer knows what
//! publication costs and keeps every change within its maximum delay.
//!
//! - [`kube`]: the Kubernetes API, watched with kube-rs;
//! - [`manifest_watch`]: a directory of manifests, watched with notify.
//!
//! Both turn Kubernetes objects into model changes through [`convert`], the one place
//! that knows Kubernetes types.

pub mod convert;
pub mod debounce;
pub mod kube;
pub mod manifest_watch;
pub mod manifests;

use crate::model::ModelChange;
use debounce::Instant;

/// What a source tells the pipeline.
#[derive(Debug)]
pub enum SourceEvent {
    /// Changes seen in one burst, applied together, and when the burst's first event
    /// happened (the start of the change-to-push time).
    Changes {
        changes: Vec<ModelChange>,
        since: Instant,
    },
    /// Everything the source held when it started has been sent: until every source has
    /// said so, nothing is published and `/readyz` answers 503.
    Synced,
}

/// Where a source delivers its events: the pipeline, or a test's recorder.
pub trait Sink: Send {
    fn send(&mut self, event: SourceEvent);
}
