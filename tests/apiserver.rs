//! The fake API server speaks list/watch as kube-rs expects: driven here with kube's own
//! client, so the Kubernetes-source tests rest on a faithful protocol.

mod common;

use std::time::{Duration, Instant};

use common::apiserver::{FakeApiServer, Kind};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client, Config};
use serde_json::json;

fn service(ns: &str, name: &str, expose: bool) -> serde_json::Value {
    let labels = if expose {
        json!({"dualstack-xds.io/expose": "true"})
    } else {
        json!({})
    };
    json!({
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"ports": [{"port": 80}]},
    })
}

async fn client(api: &FakeApiServer) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let path = api.kubeconfig(dir.path());
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn names(list: &[Service]) -> Vec<String> {
    list.iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect()
}

#[tokio::test]
async fn lists_page_with_continue_and_filter_by_selectors() {
    let api = FakeApiServer::start_new().await;
    for i in 0..5 {
        api.apply(service("a", &format!("s{i}"), i % 2 == 0));
    }
    api.apply(service("b", "s9", true));
    let services: Api<Service> = Api::all(client(&api).await);

    let first = services
        .list(&ListParams::default().limit(2))
        .await
        .unwrap();
    assert_eq!(names(&first.items), ["s0", "s1"]);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let rest = services
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&rest.items), ["s2", "s3", "s4", "s9"]);
    assert_eq!(
        rest.metadata.resource_version,
        first.metadata.resource_version
    );

    let exposed = services
        .list(&ListParams::default().labels("dualstack-xds.io/expose=true"))
        .await
        .unwrap();
    assert_eq!(names(&exposed.items), ["s0", "s2", "s4", "s9"]);
    let not_exposed = services
        .list(&ListParams::default().labels("!dualstack-xds.io/expose"))
        .await
        .unwrap();
    assert_eq!(names(&not_exposed.items), ["s1", "s3"]);
    let in_b: Api<Service> = Api::namespaced(client(&api).await, "b");
    assert_eq!(
        names(&in_b.list(&ListParams::default()).await.unwrap().items),
        ["s9"]
    );
    let by_name = services
        .list(&ListParams::default().fields("metadata.name=s3"))
        .await
        .unwrap();
    assert_eq!(names(&by_name.items), ["s3"]);
    // A field the API server cannot select on is a 400, as on a real one.
    let error = services
        .list(&ListParams::default().fields("spec.type=LoadBalancer"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("field label not supported"),
        "{error}"
    );
}

#[tokio::test]
async fn a_watch_streams_changes_after_its_version_with_bookmarks_until_its_timeout() {
    let api = FakeApiServer::start_new().await;
    api.apply(json!({"kind": "ConfigMap", "metadata": {"name": "m", "namespace": "x"}, "data": {"k": "1"}}));
    let maps: Api<ConfigMap> = Api::namespaced(client(&api).await, "x");
    let list = maps.list(&ListParams::default()).await.unwrap();
    let version = list.metadata.resource_version.unwrap();
    let started = Instant::now();
    let mut events = maps
        .watch(&WatchParams::default().timeout(2), &version)
        .await
        .unwrap()
        .boxed();
    api.apply(json!({"kind": "ConfigMap", "metadata": {"name": "m", "namespace": "x"}, "data": {"k": "2"}}));
    api.delete(Kind::ConfigMap, "x", "m");
    let mut seen = Vec::new();
    let mut versions = Vec::new();
    while let Some(event) = events.try_next().await.unwrap() {
        match event {
            WatchEvent::Added(o) => seen.push(format!("added {:?}", o.data.unwrap()["k"])),
            WatchEvent::Modified(o) => {
                versions.push(o.metadata.resource_version.clone().unwrap());
                seen.push(format!("modified {}", o.data.unwrap()["k"]));
            }
            WatchEvent::Deleted(o) => {
                versions.push(o.metadata.resource_version.clone().unwrap());
                seen.push("deleted".into());
            }
            WatchEvent::Bookmark(b) => {
                versions.push(b.metadata.resource_version.clone());
                if !seen.contains(&"bookmark".to_string()) {
                    seen.push("bookmark".into());
                }
            }
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(seen, ["modified 2", "deleted", "bookmark"]);
    let numbers: Vec<u64> = versions.iter().map(|v| v.parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] <= w[1]),
        "monotonic: {numbers:?}"
    );
    assert!(numbers[0] > version.parse().unwrap());
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(5),
        "timeoutSeconds ends the watch: {elapsed:?}"
    );
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_is_410_gone() {
    let api = FakeApiServer::start_new().await;
    api.apply(service("a", "web", true));
    let services: Api<Service> = Api::all(client(&api).await);
    let version = services
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.expire();
    let events: Vec<_> = services
        .watch(&WatchParams::default().timeout(5), &version)
        .await
        .unwrap()
        .collect()
        .await;
    match events.as_slice() {
        [Ok(WatchEvent::Error(status))] => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }
}
