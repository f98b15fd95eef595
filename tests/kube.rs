//! The Kubernetes source, end to end: the real `dualstack-xds serve --kubeconfig` binary
//! (kube-rs watchers) against the fake API server, observed through an open ADS stream
//! and the admin endpoints.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::apiserver::{FakeApiServer, Kind};
use common::manifests::{self, Object};
use common::*;
use dualstack_xds::snapshot::ResourceType;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(20);

/// An exposed Service in the test namespace with one TCP port.
fn service(name: &str) -> Object {
    manifests::service(NS, name).port("tcp", 80)
}

fn slice(name: &str, service: &str, family: &str, addresses: &[&str]) -> Value {
    addresses
        .iter()
        .fold(
            manifests::slice(NS, name, service, family).port("tcp", 8080),
            |slice, a| slice.endpoint(a),
        )
        .json()
}

/// The server binary watching the fake API server.
fn serve_kube(api: &FakeApiServer, extra: &[&str]) -> ServeProcess {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let mut args = vec!["--kubeconfig".to_string(), kubeconfig.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    ServeProcess::start(dir, &args)
}

/// What an ADS client saw: every CDS response's cluster names, and each cluster's
/// latest endpoint addresses.
#[derive(Default, Debug)]
struct Seen {
    cds: Vec<BTreeSet<String>>,
    eds: BTreeMap<String, Vec<String>>,
    responses: usize,
}

/// An ADS client that subscribes like Envoy (CDS wildcard, then EDS for every cluster)
/// and ACKs everything, recording what it receives.
struct Observer {
    seen: Arc<Mutex<Seen>>,
}

impl Observer {
    async fn open(xds: SocketAddr) -> Observer {
        let channel = eventually("xDS port open", WAIT, || async {
            tonic::transport::Channel::from_shared(format!("http://{xds}"))
                .unwrap()
                .connect()
                .await
                .ok()
        })
        .await;
        let (tx, rx) = mpsc::channel(16);
        let request =
            |ty: ResourceType, names: Vec<String>, version: &str, nonce: &str| DiscoveryRequest {
                node: Some(Node {
                    id: "kube-test".into(),
                    ..Default::default()
                }),
                type_url: ty.type_url().into(),
                resource_names: names,
                version_info: version.into(),
                response_nonce: nonce.into(),
                ..Default::default()
            };
        tx.send(request(ResourceType::Cluster, vec![], "", ""))
            .await
            .unwrap();
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        tokio::spawn(async move {
            let mut eds_names: Vec<String> = Vec::new();
            let mut eds_version = String::new();
            let mut eds_nonce = String::new();
            while let Ok(Some(response)) = responses.message().await {
                let ty = ResourceType::from_type_url(&response.type_url).unwrap();
                let ack = request(
                    ty,
                    eds_names.clone(),
                    &response.version_info,
                    &response.nonce,
                );
                match ty {
                    ResourceType::Cluster => {
                        let names: BTreeSet<String> = response
                            .resources
                            .iter()
                            .map(|a| Cluster::decode(&*a.value).unwrap().name)
                            .collect();
                        {
                            let mut seen = record.lock().unwrap();
                            seen.responses += 1;
                            seen.cds.push(names.clone());
                        }
                        let _ = tx
                            .send(DiscoveryRequest {
                                resource_names: vec![],
                                ..ack
                            })
                            .await;
                        eds_names = names.into_iter().collect();
                        let _ = tx
                            .send(request(
                                ResourceType::Endpoint,
                                eds_names.clone(),
                                &eds_version,
                                &eds_nonce,
                            ))
                            .await;
                    }
                    ResourceType::Endpoint => {
                        {
                            let mut seen = record.lock().unwrap();
                            seen.responses += 1;
                            for any in &response.resources {
                                let cla = ClusterLoadAssignment::decode(&*any.value).unwrap();
                                seen.eds.insert(cla.cluster_name.clone(), addresses(&cla));
                            }
                        }
                        eds_version = response.version_info.clone();
                        eds_nonce = response.nonce.clone();
                        let _ = tx.send(ack).await;
                    }
                    _ => {}
                }
            }
        });
        Observer { seen }
    }

    fn responses(&self) -> usize {
        self.seen.lock().unwrap().responses
    }

    fn clusters(&self) -> Option<BTreeSet<String>> {
        self.seen.lock().unwrap().cds.last().cloned()
    }

    fn endpoints(&self, cluster: &str) -> Option<Vec<String>> {
        self.seen.lock().unwrap().eds.get(cluster).cloned()
    }

    async fn wait_clusters(&self, what: &str, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        eventually(what, WAIT, || async {
            (self.clusters().as_ref() == Some(&want)).then_some(())
        })
        .await;
    }

    async fn wait_endpoints(&self, what: &str, cluster: &str, want: &[&str]) {
        eventually(what, WAIT, || async {
            let got = self.endpoints(cluster)?;
            (got == want).then_some(())
        })
        .await;
    }
}

fn addresses(cla: &ClusterLoadAssignment) -> Vec<String> {
    let mut out: Vec<String> = cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                match &ep.address.as_ref()?.address {
                    Some(address::Address::SocketAddress(s)) => Some(s.address.clone()),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// The example shop: one exposed Service with slices of both families, one Service
/// that is not exposed (the selector leaves it out), the mode ConfigMap absent.
fn seed(api: &FakeApiServer) {
    api.apply(service("web").json());
    api.apply(slice("web-v4", "web", "IPv4", &["10.1.0.1", "10.1.0.2"]));
    api.apply(slice("web-v6", "web", "IPv6", &["fd00:1::1"]));
    api.apply(
        service("internal")
            .set("/metadata/labels", json!({}))
            .json(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_served_and_readyz_is_503_until_every_watcher_has_listed() {
    let api = FakeApiServer::start_new().await;
    seed(&api);
    api.hold_lists(true);
    let serve = serve_kube(&api, &[]);
    eventually("/healthz 200", WAIT, || async {
        matches!(serve.get("/healthz").await, Some((200, _))).then_some(())
    })
    .await;
    let (code, body) = serve.get("/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    let observer = Observer::open(serve.xds).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        observer.responses(),
        0,
        "no xDS response before the initial sync"
    );
    assert_eq!(serve.get("/readyz").await.unwrap().0, 503);

    api.hold_lists(false);
    serve.wait_ready().await;
    observer
        .wait_clusters("the exposed Service only", &["shop/web:80"])
        .await;
    observer
        .wait_endpoints("IPv4 endpoints", "shop/web:80", &["10.1.0.1", "10.1.0.2"])
        .await;
    assert!(api.requests("watch") >= 3, "every kind is watched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_modifies_and_deletes_of_each_kind_reach_an_open_stream() {
    let api = FakeApiServer::start_new().await;
    seed(&api);
    let serve = serve_kube(&api, &[]);
    serve.wait_ready().await;
    let observer = Observer::open(serve.xds).await;
    observer.wait_clusters("initial", &["shop/web:80"]).await;

    // Service: add, modify (a second port), delete.
    api.apply(service("api").json());
    observer
        .wait_clusters("added Service", &["shop/api:80", "shop/web:80"])
        .await;
    api.apply(service("api").port("admin", 9000).json());
    observer
        .wait_clusters(
            "modified Service",
            &["shop/api:80", "shop/api:9000", "shop/web:80"],
        )
        .await;
    api.delete(Kind::Service, NS, "api");
    observer
        .wait_clusters("deleted Service", &["shop/web:80"])
        .await;

    // EndpointSlice: add, modify, delete.
    api.apply(slice("web-v4-b", "web", "IPv4", &["10.1.0.3"]));
    observer
        .wait_endpoints(
            "added slice",
            "shop/web:80",
            &["10.1.0.1", "10.1.0.2", "10.1.0.3"],
        )
        .await;
    api.apply(slice("web-v4-b", "web", "IPv4", &["10.1.0.4"]));
    observer
        .wait_endpoints(
            "modified slice",
            "shop/web:80",
            &["10.1.0.1", "10.1.0.2", "10.1.0.4"],
        )
        .await;
    api.delete(Kind::EndpointSlice, NS, "web-v4-b");
    observer
        .wait_endpoints("deleted slice", "shop/web:80", &["10.1.0.1", "10.1.0.2"])
        .await;

    // ConfigMap: created with IPv6 flips the family, modified back, deleted.
    api.apply(manifests::config_map("IPv6").json());
    observer
        .wait_endpoints("flipped to IPv6", "shop/web:80", &["fd00:1::1"])
        .await;
    api.apply(manifests::config_map("IPv4").json());
    observer
        .wait_endpoints("flipped back", "shop/web:80", &["10.1.0.1", "10.1.0.2"])
        .await;
    api.apply(manifests::config_map("IPv6").json());
    observer
        .wait_endpoints("flipped again", "shop/web:80", &["fd00:1::1"])
        .await;
    api.delete(Kind::ConfigMap, "dualstack-xds", "dualstack-xds");
    observer
        .wait_endpoints(
            "ConfigMap gone: --primary-family again",
            "shop/web:80",
            &["10.1.0.1", "10.1.0.2"],
        )
        .await;

    // A Service that leaves the selector is withdrawn.
    api.apply(service("web").set("/metadata/labels", json!({})).json());
    observer
        .wait_clusters("Service left the selector", &[])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_relist_never_withdraws_a_service() {
    let api = FakeApiServer::start_new().await;
    seed(&api);
    for i in 0..20 {
        api.apply(service(&format!("svc-{i:02}")).json());
    }
    let serve = serve_kube(&api, &[]);
    serve.wait_ready().await;
    let observer = Observer::open(serve.xds).await;
    eventually("every Service", WAIT, || async {
        (observer.clusters()?.len() == 21).then_some(())
    })
    .await;
    // Relists take longer than the debounce: a half-applied relist would be published.
    api.slow_lists(Duration::from_millis(400));
    let lists = api.requests("list");
    for round in 0..3 {
        // History compacted while watches are open: every watcher gets 410 Gone and
        // relists (kube backs off between attempts). A Service is added meanwhile, so
        // the relist carries news.
        api.expire();
        api.apply(service(&format!("late-{round}")).json());
        eventually("the relist's news", Duration::from_secs(60), || async {
            (observer.clusters()?.len() == 22 + round).then_some(())
        })
        .await;
    }
    assert!(api.requests("list") >= lists + 3, "relisted");
    let cds = observer.seen.lock().unwrap().cds.clone();
    for pair in cds.windows(2) {
        assert!(
            pair[0].is_subset(&pair[1]),
            "a CDS response withdrew {:?}",
            pair[0].difference(&pair[1]).collect::<Vec<_>>()
        );
    }
    assert!(
        serve.metric("dualstack_xds_watch_errors").await >= 3,
        "410s are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_api_server_keeps_serving_and_reconnects() {
    let mut api = FakeApiServer::start_new().await;
    seed(&api);
    let serve = serve_kube(&api, &[]);
    serve.wait_ready().await;
    let observer = Observer::open(serve.xds).await;
    observer
        .wait_endpoints("initial", "shop/web:80", &["10.1.0.1", "10.1.0.2"])
        .await;

    api.stop().await;
    eventually("watch errors counted", WAIT, || async {
        (serve.metric("dualstack_xds_watch_errors").await > 0).then_some(())
    })
    .await;
    assert_eq!(serve.get("/healthz").await.unwrap().0, 200);
    assert_eq!(
        serve.get("/readyz").await.unwrap().0,
        200,
        "still serving the last state"
    );
    assert_eq!(observer.clusters().unwrap().len(), 1, "nothing withdrawn");

    api.start().await;
    api.apply(slice("web-v4", "web", "IPv4", &["10.1.0.9"]));
    observer
        .wait_endpoints("a change after the restart", "shop/web:80", &["10.1.0.9"])
        .await;
    assert!(
        serve.log().contains("Kubernetes watch failed"),
        "the outage is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_namespaces_given_are_watched() {
    let api = FakeApiServer::start_new().await;
    seed(&api);
    api.apply(manifests::service("other", "web").port("tcp", 80).json());
    api.apply(manifests::config_map("IPv6").json());
    let serve = serve_kube(&api, &["--namespace", NS]);
    serve.wait_ready().await;
    let observer = Observer::open(serve.xds).await;
    observer
        .wait_clusters("the shop namespace only", &["shop/web:80"])
        .await;
    // The ConfigMap is watched in its own namespace whatever --namespace says.
    observer
        .wait_endpoints(
            "IPv6 primary from the ConfigMap",
            "shop/web:80",
            &["fd00:1::1"],
        )
        .await;
}

/// A Service terminating TLS for `host` on port 443 with the Secret `secret`.
fn terminating(name: &str, host: &str, secret: &str) -> Value {
    manifests::service(NS, name)
        .port("https", 443)
        .annotate("dualstack-xds.io/hosts", host)
        .annotate("dualstack-xds.io/tls", "terminate")
        .annotate("dualstack-xds.io/tls-secret", secret)
        .json()
}

/// The served Secrets: each SDS name and its certificate chain.
async fn served_secrets(serve: &ServeProcess) -> BTreeMap<String, String> {
    let Some((200, body)) = serve.get("/debug/resources").await else {
        return BTreeMap::new();
    };
    let json: Value = serde_json::from_str(&body).unwrap();
    json["groups"]["IPv4,IPv6"]["secrets"]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let chain = &r["resource"]["tls_certificate"]["certificate_chain"];
            let pem = chain["inline_bytes"]
                .as_str()
                .or(chain["inline_string"].as_str())
                .unwrap_or_default();
            (r["name"].as_str().unwrap().to_owned(), pem.to_owned())
        })
        .collect()
}

async fn skipped_reasons(serve: &ServeProcess) -> Vec<String> {
    let (_, body) = serve.get("/debug/resources").await.unwrap();
    let json: Value = serde_json::from_str(&body).unwrap();
    json["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}: {}", s["name"].as_str().unwrap(), s["reason"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_secrets_that_services_name_are_read_and_their_rotation_is_pushed() {
    let ca = common::tls::TestCa::new();
    let first = ca.issue(&["shop.example.com"]);
    let api = FakeApiServer::start_new().await;
    seed(&api);
    api.apply(terminating("shop", "shop.example.com", "shop-tls"));
    api.apply(slice("shop-v4", "shop", "IPv4", &["10.1.0.5"]));
    api.apply(manifests::tls_secret(NS, "shop-tls", &first.cert, &first.key).json());
    // Secrets no Service names are never read.
    let unrelated = ca.issue(&["db.internal"]);
    api.apply(manifests::tls_secret(NS, "db-credentials", &unrelated.cert, &unrelated.key).json());
    let serve = serve_kube(&api, &[]);
    serve.wait_ready().await;
    // Ready means the Secret was listed: the first publication already has it.
    let secrets = served_secrets(&serve).await;
    assert_eq!(
        secrets.keys().collect::<Vec<_>>(),
        ["shop/shop-tls"],
        "{secrets:?}"
    );
    assert!(secrets["shop/shop-tls"].contains(first.cert.lines().nth(1).unwrap()));
    assert_eq!(
        api.requests("secrets list metadata.name=shop-tls"),
        api.requests("secrets list"),
        "every Secret request selects one named Secret"
    );

    // Rotation: the new certificate is served.
    let second = ca.issue(&["shop.example.com"]);
    api.apply(manifests::tls_secret(NS, "shop-tls", &second.cert, &second.key).json());
    eventually("the rotated certificate served", WAIT, || async {
        let secrets = served_secrets(&serve).await;
        secrets
            .get("shop/shop-tls")?
            .contains(second.cert.lines().nth(1).unwrap())
            .then_some(())
    })
    .await;

    // A malformed Secret: the host is reported, the rest served.
    api.apply(manifests::tls_secret(NS, "shop-tls", &second.cert, &unrelated.key).json());
    eventually("the malformed Secret reported", WAIT, || async {
        let reasons = skipped_reasons(&serve).await;
        (reasons
            .iter()
            .any(|r| r.starts_with("shop-tls:") && r.contains("key"))
            && reasons.iter().any(|r| r.starts_with("shop:")))
        .then_some(())
    })
    .await;
    assert!(served_secrets(&serve).await.is_empty());
    let observer = Observer::open(serve.xds).await;
    observer
        .wait_endpoints(
            "the rest is served",
            "shop/web:80",
            &["10.1.0.1", "10.1.0.2"],
        )
        .await;

    // Another Service names a second Secret: it is read from then on.
    let blog = ca.issue(&["blog.example.com"]);
    api.apply(manifests::tls_secret(NS, "blog-tls", &blog.cert, &blog.key).json());
    assert_eq!(api.requests("secrets list metadata.name=blog-tls"), 0);
    api.apply(terminating("blog", "blog.example.com", "blog-tls"));
    eventually("the blog Secret served", WAIT, || async {
        served_secrets(&serve)
            .await
            .contains_key("shop/blog-tls")
            .then_some(())
    })
    .await;
    assert_eq!(api.requests("secrets list metadata.name=db-credentials"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_refuses_secrets_still_gets_everything_else() {
    let api = FakeApiServer::start_new().await;
    seed(&api);
    api.apply(terminating("shop", "shop.example.com", "shop-tls"));
    api.forbid(Kind::Secret);

    // Termination on, Secrets forbidden: ready anyway, the Service reported.
    let serve = serve_kube(&api, &[]);
    serve.wait_ready().await;
    let observer = Observer::open(serve.xds).await;
    observer
        .wait_endpoints(
            "the rest is served",
            "shop/web:80",
            &["10.1.0.1", "10.1.0.2"],
        )
        .await;
    assert!(skipped_reasons(&serve)
        .await
        .iter()
        .any(|r| r.starts_with("shop:") && r.contains("shop-tls")));
    assert!(
        serve
            .metric("dualstack_xds_watch_errors_total{kind=\"Secret\"}")
            .await
            >= 1
    );
    eventually("the log says what to do", WAIT, || async {
        serve
            .log()
            .contains("--tls-termination=false")
            .then_some(())
    })
    .await;
    drop(serve);

    // --tls-termination=false: no Secret is ever requested.
    let before = api.requests("secrets list") + api.requests("secrets watch");
    let serve = serve_kube(&api, &["--tls-termination=false"]);
    serve.wait_ready().await;
    let reasons = skipped_reasons(&serve).await;
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("shop:") && r.contains("TLS termination is turned off")),
        "{reasons:?}"
    );
    assert_eq!(
        api.requests("secrets list") + api.requests("secrets watch"),
        before
    );
    assert_eq!(
        serve
            .metric("dualstack_xds_watch_errors_total{kind=\"Secret\"}")
            .await,
        0
    );
}
