//! The agent's Delta protocol, message by message.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::Resource as DeltaResource;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::*;

fn node() -> Node {
    crate::nginx::agent::node("nginx-1", "ingress-ipv6", "IPv6".parse().unwrap())
}

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn cluster(name: &str) -> DeltaResource {
    DeltaResource {
        name: name.into(),
        version: format!("v-{name}"),
        resource: Some(any(&Cluster {
            name: name.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn cla(name: &str, version: &str) -> DeltaResource {
    DeltaResource {
        name: name.into(),
        version: version.into(),
        resource: Some(any(&ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn response(
    ty: ResourceType,
    nonce: &str,
    resources: Vec<DeltaResource>,
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: ty.type_url().into(),
        nonce: nonce.into(),
        resources,
        ..Default::default()
    }
}

#[test]
fn the_first_requests_carry_the_node_and_ask_clusters_and_listeners_by_wildcard() {
    let mut c = Client::new(node());
    let start = c.start();
    assert_eq!(start.len(), 2);
    let n = start[0].node.as_ref().unwrap();
    assert_eq!(n.user_agent_name, "dualstack-xds-nginx");
    assert_eq!(n.cluster, "ingress-ipv6");
    assert_eq!(
        crate::translate::group_of(n).unwrap(),
        crate::translate::Group::Envoy("IPv6".parse().unwrap())
    );
    assert_eq!(start[0].type_url, ResourceType::Cluster.type_url());
    assert_eq!(start[1].type_url, ResourceType::Listener.type_url());
    assert!(start[1].node.is_none());
    assert!(start.iter().all(|r| r.resource_names_subscribe.is_empty()));
}

#[test]
fn clusters_lead_to_endpoint_subscriptions_and_an_ack_after_the_apply() {
    let mut c = Client::new(node());
    c.start();
    let follow = c.receive(response(
        ResourceType::Cluster,
        "1",
        vec![cluster("t/a:80"), cluster("t/b:80")],
    ));
    assert_eq!(follow.len(), 1);
    assert_eq!(follow[0].type_url, ResourceType::Endpoint.type_url());
    assert_eq!(follow[0].resource_names_subscribe, ["t/a:80", "t/b:80"]);
    assert!(c.warming() && c.has_pending() && c.dirty());
    assert!(c
        .receive(response(
            ResourceType::Endpoint,
            "2",
            vec![cla("t/a:80", "e1"), cla("t/b:80", "e1")]
        ))
        .is_empty());
    assert!(!c.warming());
    let answers = c.applied(&Outcome::Applied, &[]);
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].response_nonce, "1");
    assert_eq!(answers[1].response_nonce, "2");
    assert!(answers.iter().all(|a| a.error_detail.is_none()));
    assert!(!c.has_pending() && !c.dirty());

    // A removed cluster unsubscribes its endpoints.
    let follow = c.receive(DeltaDiscoveryResponse {
        type_url: ResourceType::Cluster.type_url().into(),
        nonce: "3".into(),
        removed_resources: vec!["t/b:80".into()],
        ..Default::default()
    });
    assert_eq!(follow[0].resource_names_unsubscribe, ["t/b:80"]);
    assert!(!c.resources().endpoints.contains_key("t/b:80"));
}

#[test]
fn a_refused_resource_nacks_the_response_that_carried_it_and_the_rest_is_acked() {
    let mut c = Client::new(node());
    c.start();
    c.receive(response(
        ResourceType::Cluster,
        "1",
        vec![cluster("t/a:80"), cluster("t/db:5432")],
    ));
    c.receive(response(
        ResourceType::Endpoint,
        "2",
        vec![cla("t/a:80", "e1"), cla("t/db:5432", "e1")],
    ));
    let refused = [Refused {
        ty: ResourceType::Cluster,
        name: "t/db:5432".into(),
        reason: "PROXY protocol v2".into(),
    }];
    let answers = c.applied(&Outcome::Applied, &refused);
    let nack = answers[0].error_detail.as_ref().unwrap();
    assert_eq!(nack.message, "t/db:5432: PROXY protocol v2");
    assert!(answers[1].error_detail.is_none());
}

#[test]
fn a_batch_nginx_refuses_is_nacked_with_its_message_and_rolled_back() {
    let mut c = Client::new(node());
    c.start();
    c.receive(response(
        ResourceType::Cluster,
        "1",
        vec![cluster("t/a:80")],
    ));
    c.receive(response(
        ResourceType::Endpoint,
        "2",
        vec![cla("t/a:80", "e1")],
    ));
    c.applied(&Outcome::Applied, &[]);
    let good = c.resources().clone();

    let follow = c.receive(response(
        ResourceType::Cluster,
        "3",
        vec![cluster("t/new:81")],
    ));
    assert_eq!(follow[0].resource_names_subscribe, ["t/new:81"]);
    c.receive(response(
        ResourceType::Endpoint,
        "4",
        vec![cla("t/new:81", "e1")],
    ));
    let answers = c.applied(
        &Outcome::Failed("duplicate \"0.0.0.0:81\" address and port pair".into()),
        &[],
    );
    assert_eq!(answers.len(), 3, "{answers:?}");
    for a in &answers[..2] {
        assert!(a
            .error_detail
            .as_ref()
            .unwrap()
            .message
            .contains("nginx refused the configuration: duplicate \"0.0.0.0:81\""));
    }
    // Back to what nginx holds, and no longer following what it does not.
    assert_eq!(c.resources(), &good);
    assert_eq!(answers[2].resource_names_unsubscribe, ["t/new:81"]);

    // The next good change applies on top of it.
    c.receive(response(
        ResourceType::Endpoint,
        "5",
        vec![cla("t/a:80", "e2")],
    ));
    let answers = c.applied(&Outcome::Applied, &[]);
    assert!(answers[0].error_detail.is_none());
}

#[test]
fn a_reconnect_resumes_with_the_versions_held_and_forgets_unanswered_nonces() {
    let mut c = Client::new(node());
    c.start();
    c.receive(response(
        ResourceType::Cluster,
        "1",
        vec![cluster("t/a:80")],
    ));
    c.receive(response(
        ResourceType::Endpoint,
        "2",
        vec![cla("t/a:80", "e7")],
    ));
    c.applied(&Outcome::Applied, &[]);
    c.receive(response(
        ResourceType::Endpoint,
        "3",
        vec![cla("t/a:80", "e8")],
    ));
    let start = c.start();
    assert!(!c.has_pending());
    assert_eq!(start.len(), 3);
    assert!(start[0].node.is_some());
    assert_eq!(
        start[0]
            .initial_resource_versions
            .get("t/a:80")
            .map(String::as_str),
        Some("v-t/a:80")
    );
    let eds = &start[2];
    assert_eq!(eds.type_url, ResourceType::Endpoint.type_url());
    assert_eq!(eds.resource_names_subscribe, ["t/a:80"]);
    assert_eq!(
        eds.initial_resource_versions
            .get("t/a:80")
            .map(String::as_str),
        Some("e8")
    );
    assert!(!c.warming());
}

#[test]
fn a_resource_that_does_not_decode_is_nacked() {
    let mut c = Client::new(node());
    c.start();
    let mut bad = cluster("t/a:80");
    bad.resource.as_mut().unwrap().value = vec![0xff, 0xff];
    c.receive(response(ResourceType::Cluster, "1", vec![bad]));
    let answers = c.applied(&Outcome::Applied, &[]);
    assert!(answers[0]
        .error_detail
        .as_ref()
        .unwrap()
        .message
        .starts_with("t/a:80: "));
}

#[test]
fn when_nginx_refuses_a_batch_its_endpoint_changes_and_removals_are_kept() {
    let mut c = Client::new(node());
    c.start();
    c.receive(response(
        ResourceType::Cluster,
        "1",
        vec![cluster("t/a:80"), cluster("t/gone:82")],
    ));
    c.receive(response(
        ResourceType::Endpoint,
        "2",
        vec![cla("t/a:80", "e1"), cla("t/gone:82", "e1")],
    ));
    c.applied(&Outcome::Applied, &[]);

    // One burst: a cluster nginx will refuse, a flip of t/a's endpoints, a removal.
    c.receive(response(
        ResourceType::Cluster,
        "3",
        vec![cluster("t/bad:81")],
    ));
    c.receive(DeltaDiscoveryResponse {
        type_url: ResourceType::Cluster.type_url().into(),
        nonce: "4".into(),
        removed_resources: vec!["t/gone:82".into()],
        ..Default::default()
    });
    c.receive(response(
        ResourceType::Endpoint,
        "5",
        vec![cla("t/a:80", "e2")],
    ));
    let fallback = c.fallback().expect("something to keep");
    assert!(!fallback.clusters.contains_key("t/bad:81"));
    assert!(!fallback.clusters.contains_key("t/gone:82"));
    assert!(fallback.clusters.contains_key("t/a:80"));

    let answers = c.applied_fallback("a duplicate listen", &[]);
    let by_nonce = |n: &str| answers.iter().find(|a| a.response_nonce == n).unwrap();
    assert!(by_nonce("3")
        .error_detail
        .as_ref()
        .unwrap()
        .message
        .contains("nginx refused the configuration: a duplicate listen"));
    assert!(by_nonce("4").error_detail.is_none(), "a removal is kept");
    assert!(
        by_nonce("5").error_detail.is_none(),
        "the endpoint change is kept"
    );
    assert_eq!(c.resources(), &fallback);
    // No longer following the refused cluster's endpoints (the removed one's were
    // dropped when it went), nor following the removed one again.
    let unsubscribed: Vec<&String> = answers
        .iter()
        .flat_map(|a| &a.resource_names_unsubscribe)
        .collect();
    assert_eq!(unsubscribed, ["t/bad:81"]);
    assert!(answers
        .iter()
        .all(|a| a.resource_names_subscribe.is_empty()));
    // A reconnect resumes from what nginx serves.
    let start = c.start();
    let eds = start
        .iter()
        .find(|r| r.type_url == ResourceType::Endpoint.type_url())
        .unwrap();
    assert_eq!(
        eds.initial_resource_versions
            .get("t/a:80")
            .map(String::as_str),
        Some("e2")
    );
}

#[test]
fn warming_waits_only_for_what_the_server_can_send() {
    let mut c = Client::new(node());
    c.start();
    c.receive(response(
        ResourceType::Cluster,
        "1",
        vec![cluster("t/a:80")],
    ));
    c.receive(response(
        ResourceType::Endpoint,
        "2",
        vec![cla("t/a:80", "e1")],
    ));
    c.applied(&Outcome::Applied, &[]);
    // An endpoint update and, in the same burst, a new cluster: its endpoints can't come
    // before the update is answered (one response per type in flight).
    c.receive(response(
        ResourceType::Endpoint,
        "3",
        vec![cla("t/a:80", "e2")],
    ));
    c.receive(response(
        ResourceType::Cluster,
        "4",
        vec![cluster("t/b:80")],
    ));
    assert!(!c.warming());
    c.applied(&Outcome::Applied, &[]);
    // Now they can come: wait for them, until told to stop.
    assert!(c.warming());
    c.stop_warming();
    assert!(!c.warming());
}

#[test]
fn a_response_of_a_type_not_asked_for_is_nacked_under_its_own_type() {
    let mut c = Client::new(node());
    c.start();
    c.receive(DeltaDiscoveryResponse {
        type_url: "type.googleapis.com/some.Other".into(),
        nonce: "1".into(),
        ..Default::default()
    });
    let answers = c.applied(&Outcome::Applied, &[]);
    assert_eq!(answers[0].type_url, "type.googleapis.com/some.Other");
    assert!(answers[0].error_detail.is_some());
}
