use super::fixtures::*;
use super::*;

fn one_service(endpoint_port: u16) -> Snapshot {
    let mut b = Snapshot::builder();
    b.upsert(&eds_cluster("web"))
        .upsert(&load_assignment("web", &[("10.0.0.1", endpoint_port)]))
        .upsert(&http_listener("web-v4", "0.0.0.0", 8080, "web-routes"))
        .upsert(&route_to("web-routes", "web"));
    b.build().expect("consistent")
}

#[test]
fn versions_are_content_hashes_identical_across_builds() {
    let a = one_service(80);
    let b = one_service(80);
    for ty in ResourceType::ALL {
        assert_eq!(a.resources(ty).version(), b.resources(ty).version(), "{ty}");
        let expected = usize::from(ty != ResourceType::Secret);
        assert_eq!(a.resources(ty).len(), expected, "{ty}");
    }
    let c = one_service(81);
    assert_ne!(
        a.resources(ResourceType::Endpoint).version(),
        c.resources(ResourceType::Endpoint).version()
    );
    assert_eq!(
        a.resources(ResourceType::Cluster).version(),
        c.resources(ResourceType::Cluster).version()
    );
}

#[test]
fn type_version_does_not_depend_on_insertion_order() {
    let mut x = Snapshot::builder();
    x.upsert(&eds_cluster("a")).upsert(&eds_cluster("b"));
    x.upsert(&load_assignment("a", &[]))
        .upsert(&load_assignment("b", &[]));
    let mut y = Snapshot::builder();
    y.upsert(&load_assignment("b", &[]))
        .upsert(&load_assignment("a", &[]));
    y.upsert(&eds_cluster("b")).upsert(&eds_cluster("a"));
    let (x, y) = (x.build().unwrap(), y.build().unwrap());
    assert_eq!(
        x.resources(ResourceType::Cluster).version(),
        y.resources(ResourceType::Cluster).version()
    );
    // Removing and re-adding comes back to the same version.
    let mut z = x.edit();
    z.remove(ResourceType::Cluster, "b")
        .remove(ResourceType::Endpoint, "b");
    let z = z.build().unwrap();
    assert_ne!(
        z.resources(ResourceType::Cluster).version(),
        x.resources(ResourceType::Cluster).version()
    );
    let mut w = z.edit();
    w.upsert(&eds_cluster("b"))
        .upsert(&load_assignment("b", &[]));
    assert_eq!(
        w.build()
            .unwrap()
            .resources(ResourceType::Cluster)
            .version(),
        x.resources(ResourceType::Cluster).version()
    );
}

#[test]
fn endpoints_nobody_references_are_refused() {
    let mut b = Snapshot::builder();
    b.upsert(&load_assignment("orphan", &[]));
    let err = b.build().unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(
        err.problems[0].contains("\"orphan\" is not referenced by any cluster"),
        "{err}"
    );
}

#[test]
fn a_cluster_without_its_endpoints_is_refused() {
    let mut b = Snapshot::builder();
    b.upsert(&eds_cluster("web"));
    let err = b.build().unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn routes_must_be_named_by_a_listener() {
    let base = one_service(80);
    let mut b = base.edit();
    b.upsert(&route_to("stray", "web"));
    assert!(b.build().is_err());
    // Removing the listener but keeping its route is inconsistent too.
    let mut b = base.edit();
    b.remove(ResourceType::Listener, "web-v4");
    let err = b.build().unwrap_err();
    assert!(err.to_string().contains("web-routes"), "{err}");
    // Removing both is fine.
    let mut b = base.edit();
    b.remove(ResourceType::Listener, "web-v4")
        .remove(ResourceType::Route, "web-routes");
    assert!(b.build().is_ok());
}

#[test]
fn a_cluster_shared_reference_survives_one_removal() {
    let mut c2 = eds_cluster("web-copy");
    c2.eds_cluster_config.as_mut().unwrap().service_name = "web".into();
    let mut b = one_service(80).edit();
    b.upsert(&c2);
    let s = b.build().unwrap();
    let mut b = s.edit();
    b.remove(ResourceType::Cluster, "web");
    assert!(b.build().is_ok(), "web-copy still references the endpoints");
}

#[test]
fn diff_reports_only_what_changed() {
    let mut b = Snapshot::builder();
    for i in 0..1000 {
        let name = format!("c{i}");
        b.upsert(&eds_cluster(&name))
            .upsert(&load_assignment(&name, &[("10.0.0.1", 80)]));
    }
    let before = b.build().unwrap();
    let mut b = before.edit();
    b.upsert(&load_assignment("c500", &[("10.0.0.2", 80)]));
    b.upsert(&load_assignment("c7", &[("10.0.0.1", 80)])); // unchanged content
    let after = b.build().unwrap();
    let old = before.resources(ResourceType::Endpoint);
    let new = after.resources(ResourceType::Endpoint);
    let changes: Vec<_> = old.changes_to(new).map(|c| c.name().to_string()).collect();
    assert_eq!(changes, vec!["c500".to_string()]);
    assert_eq!(
        before
            .resources(ResourceType::Cluster)
            .changes_to(after.resources(ResourceType::Cluster))
            .count(),
        0
    );
}

#[test]
fn listener_references_its_rds_route() {
    let l = http_listener("l", "0.0.0.0", 80, "r");
    assert_eq!(
        XdsResource::references(&l),
        vec![(ResourceType::Route, "r".to_string())]
    );
    let t = tcp_listener("t", "0.0.0.0", 81, "c");
    assert!(XdsResource::references(&t).is_empty());
}

#[test]
fn a_version_is_written_as_11_base64url_characters_without_formatting() {
    use base64::Engine;
    for value in [
        0u128,
        1,
        0xdead_beef,
        u128::MAX,
        0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        0xfc00_0000_0000_0003 << 64,
    ] {
        let version = Version(value);
        let high = ((value >> 64) as u64).to_be_bytes();
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(high);
        assert_eq!(expected.len(), Version::TEXT_LEN);
        assert_eq!(version.text(), expected.as_bytes());
        assert_eq!(version.to_string(), expected);
        assert!(version.is(&expected));
        assert!(!version.is(&Version(value ^ (1 << 64)).to_string()));
        assert!(!version.is(&expected[1..]));
    }
}

#[test]
fn a_resource_is_the_any_prost_encodes_and_its_version_hashes_the_message() {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;
    for (any, resource) in [
        (
            any_of(&eds_cluster("web")),
            Resource::new(&eds_cluster("web")),
        ),
        (
            any_of(&http_listener("web-v4", "0.0.0.0", 8080, "web-routes")),
            Resource::new(&http_listener("web-v4", "0.0.0.0", 8080, "web-routes")),
        ),
        // An empty message: prost leaves the value out.
        (
            any_of(&ClusterLoadAssignment::default()),
            Resource::new(&ClusterLoadAssignment::default()),
        ),
    ] {
        assert_eq!(resource.encoded_any()[..], any.encode_to_vec()[..]);
        assert_eq!(resource.version(), Version::of_bytes(&any.value));
    }
}

fn any_of<R: XdsResource>(message: &R) -> envoy_types::pb::google::protobuf::Any {
    envoy_types::pb::google::protobuf::Any {
        type_url: R::TYPE.type_url().into(),
        value: message.encode_to_vec(),
    }
}

/// Both ways of checking a build (the names touched, or every name when much was
/// touched) find the same problems, each once, in name order.
#[test]
fn large_and_small_changes_are_checked_alike() {
    let mut b = Snapshot::builder();
    for i in 0..40 {
        let name = format!("svc-{i:02}");
        b.upsert(&eds_cluster(&name))
            .upsert(&load_assignment(&name, &[("10.0.0.1", 80)]));
    }
    let base = b.build().expect("consistent");

    // Small: one stray CLA and one cluster without its CLA among 80 resources.
    let mut b = base.edit();
    b.upsert(&load_assignment("stray", &[]))
        .upsert(&eds_cluster("lonely"));
    let small = b.build().unwrap_err().problems;

    // Large: the same problems in a build from scratch, where every name is touched.
    let mut b = Snapshot::builder();
    for i in 0..40 {
        let name = format!("svc-{i:02}");
        b.upsert(&eds_cluster(&name))
            .upsert(&load_assignment(&name, &[("10.0.0.1", 80)]));
    }
    b.upsert(&load_assignment("stray", &[]))
        .upsert(&eds_cluster("lonely"))
        // Touched twice: reported once.
        .upsert(&load_assignment("stray", &[("10.0.0.9", 80)]));
    let large = b.build().unwrap_err().problems;

    let expected = [
        "a cluster references eds resource \"lonely\", which is missing",
        "eds resource \"stray\" is not referenced by any cluster",
    ];
    assert_eq!(small, expected);
    assert_eq!(large, expected);
}

#[test]
fn a_shared_type_is_checked_against_the_sharing_builders_own_references() {
    // The dual-stack group: listeners of both families, two route tables.
    let mut dual = Snapshot::builder();
    dual.upsert(&http_listener("a-v4", "0.0.0.0", 80, "a"))
        .upsert(&http_listener("a-v6", "::", 80, "a"))
        .upsert(&http_listener("b-v6", "::", 81, "b"))
        .upsert(&route_to("a", "x"))
        .upsert(&route_to("b", "x"));
    // Many others, so that a small change is checked by the names it touched.
    let others: Vec<String> = (0..20).map(|i| format!("other-{i}")).collect();
    for (i, name) in others.iter().enumerate() {
        dual.upsert(&http_listener(name, "::", 1000 + i as u16, name))
            .upsert(&route_to(name, "x"));
    }
    let dual = dual.build().unwrap();
    // A group whose listeners reference every shared route table builds.
    let mut full = Snapshot::builder();
    full.upsert(&http_listener("a-v4", "0.0.0.0", 80, "a"))
        .upsert(&http_listener("b-v4", "0.0.0.0", 81, "b"));
    for (i, name) in others.iter().enumerate() {
        full.upsert(&http_listener(name, "0.0.0.0", 1000 + i as u16, name));
    }
    full.share_checked(&dual, ResourceType::Route);
    let full = full.build().unwrap();
    assert_eq!(full.resources(ResourceType::Route).len(), 22);
    // One whose listeners do not reference "b" is refused, as if it had put "b" itself.
    let mut partial = Snapshot::builder();
    partial
        .upsert(&http_listener("a-v4", "0.0.0.0", 80, "a"))
        .share_checked(&dual, ResourceType::Route);
    let err = partial.build().unwrap_err();
    assert_eq!(
        err.problems[0],
        "rds resource \"b\" is not referenced by any listener"
    );
    assert_eq!(err.problems.len(), 1 + others.len(), "b and the others");
    // A later edit: the shared set loses "b" while this group's listener still uses it
    // (nothing else of the group changed: only the shared change points at "b").
    let mut dual_without_b = dual.edit();
    dual_without_b
        .remove(ResourceType::Listener, "b-v6")
        .remove(ResourceType::Route, "b");
    let dual_without_b = dual_without_b.build().unwrap();
    let mut next = full.edit();
    next.share_checked(&dual_without_b, ResourceType::Route);
    let err = next.build().unwrap_err();
    assert_eq!(
        err.problems,
        ["a listener references rds resource \"b\", which is missing"]
    );
}
