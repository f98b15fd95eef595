//! Incremental ("Delta") streams (`DeltaAggregatedResources` and the per-type `Delta*`).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::Node;

use super::{
    DeltaRequest, DeltaResponse, Event, Machine, NodeGrouping, Outcome, ProtocolError, Resources,
    Scope, StreamCore, StreamKind, StreamPolicy, StreamStatus,
};
use crate::snapshot::{Change, Resource, ResourceType, Snapshot, SnapshotSet};

/// One Delta stream.
pub struct DeltaStream {
    core: StreamCore,
    /// Per type, `initial_resource_versions` of the first request: what the client
    /// already has from an earlier stream, consumed by the first response.
    initial_versions: [HashMap<String, String>; ResourceType::COUNT],
}

impl Machine for DeltaStream {
    type Request = DeltaRequest;
    type Response = DeltaResponse;

    fn node(&self) -> Option<&Node> {
        self.core.node.as_ref()
    }

    fn status(&self) -> StreamStatus {
        self.core.status(StreamKind::Delta)
    }

    /// Handles one request; `set` is the latest published snapshot set, if any.
    fn on_request(
        &mut self,
        req: impl Into<DeltaRequest>,
        set: Option<&SnapshotSet>,
    ) -> Result<Outcome<DeltaResponse>, ProtocolError> {
        let req = req.into();
        self.core.accept_node(req.node)?;
        self.core.check_names(
            req.resource_names_subscribe.len() + req.resource_names_unsubscribe.len(),
        )?;
        let ty = self.core.scope.resolve(&req.type_url)?;
        let mut out = Outcome::default();
        let state = &mut self.core.types[ty.index()];
        if !req.response_nonce.is_empty() {
            let error = req.error_detail.map(|status| status.message);
            let sent_version = state.pending.as_ref().map(|p| p.version.clone());
            match state.answer(ty, &req.response_nonce, error, || {
                sent_version.unwrap_or_default()
            }) {
                Some(event) => out.events.push(event),
                // A stale nonce voids the ACK, not the subscription changes: in Delta
                // those are increments and must not be lost.
                None => out.events.push(Event::StaleNonce {
                    ty,
                    nonce: req.response_nonce.clone(),
                }),
            }
        }
        let first = !state.requested;
        if first {
            self.initial_versions[ty.index()] = req.initial_resource_versions;
        }
        state.requested = true;
        let change = state.subscription.apply_delta(
            first,
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
        );
        if !first {
            state.newly_subscribed.extend(change.added);
            for name in req.resource_names_unsubscribe.iter() {
                state.newly_subscribed.remove(name);
            }
            state.newly_wildcard |= change.wildcard_added;
        }
        if let Some(snapshot) = self.core.snapshot(set) {
            out.responses.extend(self.respond(ty, snapshot));
        }
        Ok(out)
    }

    /// Handles a newly published snapshot set: responses in make-before-break order.
    fn on_snapshot(&mut self, set: &SnapshotSet) -> Outcome<DeltaResponse> {
        let mut out = Outcome::default();
        if let Some(snapshot) = self.core.snapshot(Some(set)) {
            for ty in self.core.types_in_order() {
                out.responses.extend(self.respond(ty, snapshot));
            }
        }
        out
    }
}

impl DeltaStream {
    pub fn new(scope: Scope, grouping: NodeGrouping) -> Self {
        Self::with_policy(scope, grouping, StreamPolicy::default())
    }

    /// A stream whose client is held to `policy`.
    pub fn with_policy(scope: Scope, grouping: NodeGrouping, policy: StreamPolicy) -> Self {
        DeltaStream {
            core: StreamCore::new(scope, grouping, policy),
            initial_versions: Default::default(),
        }
    }

    fn respond(&mut self, ty: ResourceType, snapshot: &Snapshot) -> Option<DeltaResponse> {
        let state = &mut self.core.types[ty.index()];
        if !state.ready_to_send() {
            return None;
        }
        let current = snapshot.resources(ty);
        // In name order, each name once.
        let mut upserts: Vec<&Resource> = Vec::new();
        let mut whole: Option<Resources> = None;
        let mut removed: Vec<String> = Vec::new();
        let first_response = state.sent.is_none();
        match &state.sent {
            None => {
                let known = std::mem::take(&mut self.initial_versions[ty.index()]);
                let subscribed = state.subscribed(current);
                whole = Some(if known.is_empty() {
                    subscribed
                } else {
                    subscribed
                        .iter()
                        .filter(|resource| {
                            !known
                                .get(&**resource.name())
                                .is_some_and(|v| resource.version().is(v))
                        })
                        .cloned()
                        .collect()
                });
                removed.extend(
                    known
                        .into_keys()
                        .filter(|name| current.get(name).is_none())
                        .filter(|name| state.subscription.contains(name)),
                );
                removed.sort();
            }
            Some(previous) => {
                for change in previous.changes_to(current) {
                    if !state.subscription.contains(change.name()) {
                        continue;
                    }
                    match change {
                        Change::Upserted(r) => upserts.push(r),
                        Change::Removed(name) => removed.push(name.to_string()),
                    }
                }
                upserts.extend(state.newly(current));
                upserts.sort_unstable_by(|a, b| a.name().cmp(b.name()));
                upserts.dedup_by(|a, b| a.name() == b.name());
            }
        }
        let resources = whole.unwrap_or_else(|| upserts.into_iter().cloned().collect());
        // A wildcard subscriber's first answer is sent even when empty: Envoy's
        // initialization waits for the first CDS and LDS response.
        let must_answer = first_response && state.subscription.wildcard;
        if resources.is_empty() && removed.is_empty() && !must_answer {
            state.mark_sent(current);
            return None;
        }
        let version = current.version().to_string();
        state.mark_sent(current);
        let nonce = self.core.next_nonce();
        self.core.types[ty.index()].start_pending(nonce.clone(), version.clone());
        Some(DeltaResponse {
            ty,
            system_version_info: version,
            nonce,
            resources,
            removed_resources: removed,
        })
    }
}
