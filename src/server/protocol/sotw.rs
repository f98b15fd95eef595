//! State-of-the-world streams (`StreamAggregatedResources` and the per-type `Stream*`).

use envoy_types::pb::envoy::config::core::v3::Node;

use super::{
    Event, Machine, NodeGrouping, Outcome, ProtocolError, Resources, Scope, SotwRequest,
    SotwResponse, StreamCore, StreamKind, StreamPolicy, StreamStatus,
};
use crate::snapshot::{Change, Resource, ResourceType, Snapshot, SnapshotSet};

/// One SotW stream.
pub struct SotwStream {
    core: StreamCore,
    /// Per type, the `version_info` of the first request when the client resumes on a new
    /// stream: if it equals the current version, the client is up to date and nothing is
    /// resent (reconnecting to a restarted or another replica causes no churn).
    resume_versions: [Option<String>; ResourceType::COUNT],
}

impl Machine for SotwStream {
    type Request = SotwRequest;
    type Response = SotwResponse;

    fn node(&self) -> Option<&Node> {
        self.core.node.as_ref()
    }

    fn status(&self) -> StreamStatus {
        self.core.status(StreamKind::Sotw)
    }

    /// Handles one request; `set` is the latest published snapshot set, if any.
    fn on_request(
        &mut self,
        req: impl Into<SotwRequest>,
        set: Option<&SnapshotSet>,
    ) -> Result<Outcome<SotwResponse>, ProtocolError> {
        let req = req.into();
        self.core.accept_node(req.node)?;
        self.core.check_names(req.resource_names.len())?;
        let ty = self.core.scope.resolve(&req.type_url)?;
        let mut out = Outcome::default();
        let state = &mut self.core.types[ty.index()];
        if !req.response_nonce.is_empty() {
            if state.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
                out.events.push(Event::StaleNonce {
                    ty,
                    nonce: req.response_nonce,
                });
                return Ok(out);
            }
            let error = req.error_detail.map(|status| status.message);
            let version = req.version_info.clone();
            out.events
                .extend(state.answer(ty, &req.response_nonce, error, || version));
        } else if !state.requested && !req.version_info.is_empty() {
            self.resume_versions[ty.index()] = Some(req.version_info.clone());
        }
        let first = !state.requested;
        state.requested = true;
        let change = state.subscription.replace(&req.resource_names, !first);
        if !first {
            state.newly_subscribed.extend(change.added);
            state.newly_wildcard |= change.wildcard_added;
        }
        if let Some(snapshot) = self.core.snapshot(set) {
            out.responses.extend(self.respond(ty, snapshot));
        }
        Ok(out)
    }

    /// Handles a newly published snapshot set: responses in make-before-break order.
    fn on_snapshot(&mut self, set: &SnapshotSet) -> Outcome<SotwResponse> {
        let mut out = Outcome::default();
        if let Some(snapshot) = self.core.snapshot(Some(set)) {
            for ty in self.core.types_in_order() {
                out.responses.extend(self.respond(ty, snapshot));
            }
        }
        out
    }
}

impl SotwStream {
    pub fn new(scope: Scope, grouping: NodeGrouping) -> Self {
        Self::with_policy(scope, grouping, StreamPolicy::default())
    }

    /// A stream whose client is held to `policy`.
    pub fn with_policy(scope: Scope, grouping: NodeGrouping, policy: StreamPolicy) -> Self {
        SotwStream {
            core: StreamCore::new(scope, grouping, policy),
            resume_versions: Default::default(),
        }
    }

    fn respond(&mut self, ty: ResourceType, snapshot: &Snapshot) -> Option<SotwResponse> {
        let state = &mut self.core.types[ty.index()];
        if !state.ready_to_send() {
            return None;
        }
        let current = snapshot.resources(ty);
        let version = current.version().to_string();
        let resources: Resources = match &state.sent {
            None => {
                if self.resume_versions[ty.index()].take().as_ref() == Some(&version) {
                    state.mark_sent(current);
                    return None;
                }
                let subscribed = state.subscribed(current);
                // Listeners and clusters are answered even when empty: an empty set is
                // a state of the world too, and Envoy's initialization waits for it.
                if subscribed.is_empty() && !ty.sotw_full_state() {
                    state.mark_sent(current);
                    return None;
                }
                subscribed
            }
            Some(previous) if ty.sotw_full_state() => {
                let changed = previous
                    .changes_to(current)
                    .any(|c| state.subscription.contains(c.name()));
                if !changed && !state.newly_wildcard && state.newly_subscribed.is_empty() {
                    state.mark_sent(current);
                    return None;
                }
                state.subscribed(current)
            }
            Some(previous) => {
                // Endpoints and routes go resource by resource: only what changed or was
                // newly subscribed. SotW cannot express their removal.
                let mut resources: Vec<&Resource> = previous
                    .changes_to(current)
                    .filter_map(|c| match c {
                        Change::Upserted(r) if state.subscription.contains(r.name()) => Some(r),
                        _ => None,
                    })
                    .collect();
                resources.extend(state.newly(current));
                resources.sort_by(|a, b| a.name().cmp(b.name()));
                resources.dedup_by(|a, b| a.name() == b.name());
                if resources.is_empty() {
                    state.mark_sent(current);
                    return None;
                }
                resources.into_iter().cloned().collect()
            }
        };
        state.mark_sent(current);
        let nonce = self.core.next_nonce();
        self.core.types[ty.index()].start_pending(nonce.clone(), version.clone());
        Some(SotwResponse {
            ty,
            version_info: version,
            nonce,
            resources,
        })
    }
}
