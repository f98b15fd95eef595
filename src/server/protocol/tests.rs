//! The protocol rules, driven without a network.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::delta::DeltaStream;
use super::sotw::SotwStream;
use super::*;
use crate::snapshot::fixtures::*;
use crate::snapshot::{ResourceType::*, Snapshot, SnapshotSet};

fn node() -> Node {
    Node {
        id: "envoy-1".into(),
        cluster: "ingress".into(),
        ..Default::default()
    }
}

/// Services `names`, each with a cluster, endpoints on `port`, a listener and a route.
fn snapshot(names: &[&str], port: u16) -> SnapshotSet {
    let mut b = Snapshot::builder();
    for (i, name) in names.iter().enumerate() {
        b.upsert(&eds_cluster(name))
            .upsert(&load_assignment(name, &[("10.0.0.1", port)]))
            .upsert(&http_listener(
                name,
                "0.0.0.0",
                8000 + i as u16,
                &format!("{name}-routes"),
            ))
            .upsert(&route_to(&format!("{name}-routes"), name));
    }
    SnapshotSet::single(b.build().unwrap())
}

fn req(ty: ResourceType, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.type_url().into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn first(ty: ResourceType, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node()),
        ..req(ty, names)
    }
}

fn ack(resp: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: resp.version_info.clone(),
        response_nonce: resp.nonce.clone(),
        ..req(ResourceType::from_type_url(&resp.type_url).unwrap(), names)
    }
}

fn nack(resp: &DiscoveryResponse, names: &[&str], message: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: String::new(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: message.into(),
            details: vec![],
        }),
        ..ack(resp, names)
    }
}

fn names_of(resp: &DiscoveryResponse) -> Vec<String> {
    use crate::snapshot::XdsResource;
    use envoy_types::pb::envoy::config::{
        cluster::v3::Cluster as C, endpoint::v3::ClusterLoadAssignment as E,
        listener::v3::Listener as L, route::v3::RouteConfiguration as R,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret as S;
    fn name<M: XdsResource + Default>(bytes: &[u8]) -> String {
        M::decode(bytes).unwrap().resource_name().to_owned()
    }
    resp.resources
        .iter()
        .map(
            |any| match ResourceType::from_type_url(&any.type_url).unwrap() {
                Cluster => name::<C>(&any.value),
                Endpoint => name::<E>(&any.value),
                Listener => name::<L>(&any.value),
                Route => name::<R>(&any.value),
                Secret => name::<S>(&any.value),
            },
        )
        .collect()
}

fn ads() -> SotwStream {
    SotwStream::new(Scope::Aggregated, single_group())
}

/// Sends `request` and returns the single response it must produce.
fn one<M: Machine>(
    stream: &mut M,
    request: impl Into<M::Request>,
    set: &SnapshotSet,
) -> <M::Response as Response>::Proto {
    let out = stream.on_request(request, Some(set)).unwrap();
    let mut responses: Vec<_> = out.responses.iter().map(Response::to_proto).collect();
    assert_eq!(
        responses.len(),
        1,
        "expected one response, got {responses:?}"
    );
    responses.remove(0)
}

/// Sends `request`, which must produce no response; returns the events.
fn none<M: Machine>(
    stream: &mut M,
    request: impl Into<M::Request>,
    set: &SnapshotSet,
) -> Vec<Event> {
    let out = stream.on_request(request, Some(set)).unwrap();
    assert!(
        out.responses.is_empty(),
        "expected no response, got {:?}",
        out.responses
    );
    out.events
}

/// The responses a snapshot change produces, as protobuf.
fn on_snapshot<M: Machine>(
    stream: &mut M,
    set: &SnapshotSet,
) -> Vec<<M::Response as Response>::Proto> {
    stream
        .on_snapshot(set)
        .responses
        .iter()
        .map(Response::to_proto)
        .collect()
}

#[test]
fn first_request_without_node_is_rejected() {
    let set = snapshot(&["a"], 80);
    let err = ads().on_request(req(Cluster, &[]), Some(&set)).unwrap_err();
    assert_eq!(err, ProtocolError::MissingNode);
    let status = err.into_status();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"));
}

#[test]
fn later_requests_may_omit_the_node() {
    let set = snapshot(&["a"], 80);
    let mut s = ads();
    one(&mut s, first(Cluster, &[]), &set);
    assert!(s.on_request(req(Listener, &[]), Some(&set)).is_ok());
}

#[test]
fn unknown_type_url_is_named_in_the_error() {
    let mut s = ads();
    let mut r = first(Cluster, &[]);
    r.type_url = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into();
    let err = s.on_request(r, None).unwrap_err();
    assert!(err.to_string().contains("TypedExtensionConfig"), "{err}");
    assert!(
        err.to_string().contains("envoy.config.cluster.v3.Cluster"),
        "{err}"
    );
}

#[test]
fn per_type_service_takes_only_its_type() {
    let set = snapshot(&["a"], 80);
    let mut s = SotwStream::new(Scope::Single(Cluster), single_group());
    let err = s.on_request(first(Listener, &[]), Some(&set)).unwrap_err();
    assert!(matches!(err, ProtocolError::WrongType { .. }));
    let mut s = SotwStream::new(Scope::Single(Cluster), single_group());
    let mut r = first(Cluster, &[]);
    r.type_url.clear();
    assert_eq!(names_of(&one(&mut s, r, &set)), ["a"]);
}

#[test]
fn nothing_is_sent_before_the_first_snapshot() {
    let mut s = ads();
    let out = s.on_request(first(Cluster, &[]), None).unwrap();
    assert!(out.responses.is_empty());
    let set = snapshot(&["a", "b"], 80);
    let out = on_snapshot(&mut s, &set);
    assert_eq!(out.len(), 1);
    assert_eq!(names_of(&out[0]), ["a", "b"]);
}

#[test]
fn ack_is_never_answered_with_a_resend() {
    let set = snapshot(&["a"], 80);
    let mut s = ads();
    let resp = one(&mut s, first(Cluster, &[]), &set);
    let events = none(&mut s, ack(&resp, &[]), &set);
    assert_eq!(
        events,
        vec![Event::Ack {
            ty: Cluster,
            version: resp.version_info.clone()
        }]
    );
    // The same snapshot published again (for example after a relist) sends nothing.
    assert!(s.on_snapshot(&set).responses.is_empty());
    assert!(s.on_snapshot(&snapshot(&["a"], 80)).responses.is_empty());
}

#[test]
fn empty_listener_set_is_still_answered() {
    let set = snapshot(&[], 80);
    let mut s = ads();
    let resp = one(&mut s, first(Listener, &[]), &set);
    assert!(resp.resources.is_empty());
    assert!(!resp.version_info.is_empty());
}

#[test]
fn nack_is_recorded_and_the_rejected_version_is_not_resent() {
    let set = snapshot(&["a"], 80);
    let mut s = ads();
    let resp = one(&mut s, first(Listener, &[]), &set);
    let events = none(&mut s, nack(&resp, &[], "duplicate address"), &set);
    assert_eq!(
        events,
        vec![Event::Nack {
            ty: Listener,
            version: resp.version_info.clone(),
            message: "duplicate address".into()
        }]
    );
    let status = s.status();
    let lds = &status.types[0];
    assert_eq!(lds.nacks, 1);
    assert_eq!(lds.acked_version, None);
    assert_eq!(lds.last_nack.as_ref().unwrap().message, "duplicate address");
    // The same content again: nothing is resent.
    assert!(s.on_snapshot(&snapshot(&["a"], 80)).responses.is_empty());
    // New content is sent.
    let newer = snapshot(&["a", "b"], 80);
    let out = on_snapshot(&mut s, &newer);
    assert_eq!(names_of(&out[0]), ["a", "b"]);
    let events = none(&mut s, ack(&out[0], &[]), &newer);
    assert!(matches!(events[0], Event::Ack { .. }));
    assert_eq!(
        s.status().types[0].acked_version.as_deref(),
        Some(out[0].version_info.as_str())
    );
}

#[test]
fn stale_nonces_are_ignored() {
    let set = snapshot(&["a"], 80);
    let mut s = ads();
    let r1 = one(&mut s, first(Cluster, &[]), &set);
    none(&mut s, ack(&r1, &[]), &set);
    let r2 = on_snapshot(&mut s, &snapshot(&["a", "b"], 80)).remove(0);
    // A request carrying the older nonce (even a NACK) is stale: no ACK, no NACK.
    let events = none(&mut s, nack(&r1, &[], "late"), &set);
    assert!(matches!(events[0], Event::StaleNonce { .. }));
    assert_eq!(s.status().types[0].nacks, 0);
    assert_eq!(
        s.status().types[0].pending_nonce.as_deref(),
        Some(r2.nonce.as_str())
    );
}

#[test]
fn one_response_in_flight_per_type_and_changes_coalesce() {
    let mut s = ads();
    let r1 = one(&mut s, first(Cluster, &[]), &snapshot(&["a"], 80));
    // Two changes before the ACK: nothing is sent until the ACK, then only the latest.
    assert!(s
        .on_snapshot(&snapshot(&["a", "b"], 80))
        .responses
        .is_empty());
    let latest = snapshot(&["a", "b", "c"], 80);
    assert!(s.on_snapshot(&latest).responses.is_empty());
    let r2 = one(&mut s, ack(&r1, &[]), &latest);
    assert_eq!(names_of(&r2), ["a", "b", "c"]);
    assert_ne!(r1.nonce, r2.nonce);
}

#[test]
fn clusters_removed_by_omission() {
    let mut s = ads();
    let r1 = one(&mut s, first(Cluster, &[]), &snapshot(&["a", "b"], 80));
    none(&mut s, ack(&r1, &[]), &snapshot(&["a", "b"], 80));
    let out = on_snapshot(&mut s, &snapshot(&["b"], 80));
    assert_eq!(names_of(&out[0]), ["b"]);
}

#[test]
fn endpoints_are_sent_only_for_subscribed_names_and_only_when_changed() {
    let set = snapshot(&["a", "b", "c"], 80);
    let mut s = ads();
    let r1 = one(&mut s, first(Endpoint, &["a", "b"]), &set);
    assert_eq!(names_of(&r1), ["a", "b"]);
    none(&mut s, ack(&r1, &["a", "b"]), &set);
    // Change b and c: only b goes out (c is not subscribed).
    let mut b = set.get("").unwrap().edit();
    b.upsert(&load_assignment("b", &[("10.0.0.2", 80)]))
        .upsert(&load_assignment("c", &[("10.0.0.2", 80)]));
    let set2 = SnapshotSet::single(b.build().unwrap());
    let r2 = on_snapshot(&mut s, &set2).remove(0);
    assert_eq!(names_of(&r2), ["b"]);
    // Subscribing to c as well sends c alone.
    let r3 = one(&mut s, ack(&r2, &["a", "b", "c"]), &set2);
    assert_eq!(names_of(&r3), ["c"]);
    // Dropping a name sends nothing.
    none(&mut s, ack(&r3, &["a", "c"]), &set2);
}

#[test]
fn named_endpoints_that_do_not_exist_get_no_response() {
    let set = snapshot(&["a"], 80);
    let mut s = ads();
    none(&mut s, first(Endpoint, &["missing"]), &set);
}

#[test]
fn snapshot_changes_go_out_in_make_before_break_order() {
    let set = snapshot(&["a"], 80);
    let mut s = ads();
    let mut pending = vec![];
    for ty in [Route, Listener, Endpoint, Cluster] {
        let names: &[&str] = match ty {
            Endpoint => &["a", "b"],
            Route => &["a-routes", "b-routes"],
            _ => &[],
        };
        let r = if ty == Route {
            first(ty, names)
        } else {
            req(ty, names)
        };
        let resp = one(&mut s, r, &set);
        pending.push((resp, names));
    }
    for (resp, names) in &pending {
        none(&mut s, ack(resp, names), &set);
    }
    let out = on_snapshot(&mut s, &snapshot(&["a", "b"], 81));
    let order: Vec<_> = out
        .iter()
        .map(|r| ResourceType::from_type_url(&r.type_url).unwrap())
        .collect();
    assert_eq!(order, vec![Cluster, Endpoint, Listener, Route]);
}

#[test]
fn a_client_resuming_at_the_current_version_gets_no_resend() {
    let set = snapshot(&["a"], 80);
    let version = set
        .get("")
        .unwrap()
        .resources(Cluster)
        .version()
        .to_string();
    let mut s = ads();
    let mut r = first(Cluster, &[]);
    r.version_info = version;
    none(&mut s, r, &set);
    // It still gets later changes.
    let out = on_snapshot(&mut s, &snapshot(&["a", "b"], 80));
    assert_eq!(names_of(&out[0]), ["a", "b"]);
    // A client resuming at an older version gets the current state.
    let mut s = ads();
    let mut r = first(Cluster, &[]);
    r.version_info = "0123".into();
    assert_eq!(names_of(&one(&mut s, r, &set)), ["a"]);
}

#[test]
fn nodes_get_their_group_snapshot() {
    let grouping: NodeGrouping = std::sync::Arc::new(|node: &Node| {
        if node.id.is_empty() {
            Err("node id is empty".into())
        } else {
            Ok(node.cluster.clone())
        }
    });
    let mut set = SnapshotSet::default();
    set.insert("ingress", snapshot(&["x"], 80).get("").unwrap().clone());
    set.insert("other", snapshot(&["y"], 80).get("").unwrap().clone());
    let mut s = SotwStream::new(Scope::Aggregated, grouping.clone());
    assert_eq!(names_of(&one(&mut s, first(Cluster, &[]), &set)), ["x"]);
    let mut s = SotwStream::new(Scope::Aggregated, grouping);
    let mut r = first(Cluster, &[]);
    r.node.as_mut().unwrap().id.clear();
    let err = s.on_request(r, Some(&set)).unwrap_err();
    assert!(err.to_string().contains("node id is empty"));
}

// ---- Delta ----

fn delta() -> DeltaStream {
    DeltaStream::new(Scope::Aggregated, single_group())
}

fn dreq(ty: ResourceType, subscribe: &[&str], unsubscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: ty.type_url().into(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn dfirst(ty: ResourceType, subscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node()),
        ..dreq(ty, subscribe, &[])
    }
}

fn dack(resp: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        response_nonce: resp.nonce.clone(),
        ..dreq(
            ResourceType::from_type_url(&resp.type_url).unwrap(),
            &[],
            &[],
        )
    }
}

fn dnames(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}

#[test]
fn delta_wildcard_gets_everything_then_only_changes() {
    let set = snapshot(&["a", "b"], 80);
    let mut s = delta();
    let r1 = one(&mut s, dfirst(Cluster, &[]), &set);
    assert_eq!(dnames(&r1), ["a", "b"]);
    assert!(r1.resources.iter().all(|r| !r.version.is_empty()));
    none(&mut s, dack(&r1), &set);
    assert!(s.on_snapshot(&set).responses.is_empty());
    let out = on_snapshot(&mut s, &snapshot(&["b", "c"], 80));
    let r2 = &out[0];
    assert_eq!(dnames(r2), ["c"]);
    assert_eq!(r2.removed_resources, ["a"]);
}

#[test]
fn delta_first_wildcard_answer_is_sent_even_when_empty() {
    let set = snapshot(&[], 80);
    let mut s = delta();
    let r = one(&mut s, dfirst(Listener, &[]), &set);
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
}

#[test]
fn delta_initial_resource_versions_are_honoured() {
    let set = snapshot(&["a", "b"], 80);
    let snap = set.get("").unwrap().resources(Cluster).clone();
    let mut r = dfirst(Cluster, &[]);
    r.initial_resource_versions = [
        (
            "a".to_string(),
            snap.get("a").unwrap().version().to_string(),
        ),
        ("b".to_string(), "stale".to_string()),
        ("gone".to_string(), "whatever".to_string()),
    ]
    .into();
    let mut s = delta();
    let resp = one(&mut s, r, &set);
    assert_eq!(dnames(&resp), ["b"], "a is up to date");
    assert_eq!(resp.removed_resources, ["gone"]);
    // Fully up to date: the (empty) answer still completes the client's initial fetch.
    let mut r = dfirst(Cluster, &[]);
    r.initial_resource_versions = snap
        .iter()
        .map(|res| (res.name().to_string(), res.version().to_string()))
        .collect();
    let resp = one(&mut delta(), r, &set);
    assert!(resp.resources.is_empty() && resp.removed_resources.is_empty());
}

#[test]
fn delta_named_subscriptions() {
    let set = snapshot(&["a", "b", "c"], 80);
    let mut s = delta();
    let r1 = one(&mut s, dfirst(Endpoint, &["a"]), &set);
    assert_eq!(dnames(&r1), ["a"]);
    none(&mut s, dack(&r1), &set);
    let r2 = one(&mut s, dreq(Endpoint, &["b"], &["a"]), &set);
    assert_eq!(dnames(&r2), ["b"]);
    none(&mut s, dack(&r2), &set);
    // a changed but is no longer subscribed; b removed is reported.
    let mut b = set.get("").unwrap().edit();
    b.upsert(&load_assignment("a", &[("10.9.9.9", 1)]))
        .remove(Cluster, "b")
        .remove(Endpoint, "b");
    let out = on_snapshot(&mut s, &SnapshotSet::single(b.build().unwrap()));
    assert_eq!(out.len(), 1);
    assert!(out[0].resources.is_empty());
    assert_eq!(out[0].removed_resources, ["b"]);
}

/// Found by fuzzing (fuzz/seeds/delta_requests/wildcard-dropped-before-the-response).
#[test]
fn delta_wildcard_subscribed_and_dropped_before_the_response_sends_nothing_more() {
    let set = snapshot(&["a", "b", "c"], 80);
    let mut s = delta();
    let r1 = one(&mut s, dfirst(Endpoint, &["a"]), &set);
    // While r1 awaits its ACK: "*" subscribed, then unsubscribed.
    none(&mut s, dreq(Endpoint, &["*"], &[]), &set);
    none(&mut s, dreq(Endpoint, &[], &["*"]), &set);
    // The ACK frees the next response: nothing, since the subscription is back to "a".
    none(&mut s, dack(&r1), &set);
}

#[test]
fn delta_nack_is_not_resent_and_stale_nonces_keep_subscriptions() {
    let set = snapshot(&["a"], 80);
    let mut s = delta();
    let r1 = one(&mut s, dfirst(Listener, &[]), &set);
    let mut n = dack(&r1);
    n.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad listener".into(),
        details: vec![],
    });
    let events = none(&mut s, n, &set);
    assert!(matches!(&events[0], Event::Nack { message, .. } if message == "bad listener"));
    assert!(s.on_snapshot(&snapshot(&["a"], 80)).responses.is_empty());
    // A request with an old nonce is stale for ACK purposes but its subscription counts.
    let mut r = dreq(Endpoint, &["a"], &[]);
    r.response_nonce = "999".into();
    let out = s.on_request(r, Some(&set)).unwrap();
    assert!(matches!(out.events[0], Event::StaleNonce { .. }));
    assert_eq!(dnames(&out.responses[0].to_proto()), ["a"]);
}

#[test]
fn delta_make_before_break_order_on_removal() {
    let set = snapshot(&["a", "b"], 80);
    let mut s = delta();
    let mut acks = vec![];
    let order = [Route, Endpoint, Listener, Cluster];
    for (i, ty) in order.into_iter().enumerate() {
        let mut r = dreq(ty, &["*"], &[]);
        if i == 0 {
            r.node = Some(node());
        }
        acks.push(one(&mut s, r, &set));
    }
    for a in &acks {
        none(&mut s, dack(a), &set);
    }
    let out = on_snapshot(&mut s, &snapshot(&["a"], 80));
    let types: Vec<_> = out
        .iter()
        .map(|r| ResourceType::from_type_url(&r.type_url).unwrap())
        .collect();
    assert_eq!(types, vec![Cluster, Endpoint, Listener, Route]);
    assert!(out.iter().all(|r| r.removed_resources.len() == 1));
}
