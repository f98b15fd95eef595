//! Bytes per change, SotW vs Delta (prints figures; not a timed test): what a fully
//! synced ADS client subscribed to every cluster receives when one endpoint changes in a
//! 10,000-endpoint cluster, and when one cluster changes among 1,000 and 10,000. The
//! protocol state machines are driven directly, as the server drives them.
//!
//! Run: `cargo bench --bench bytes_per_change` (or `scripts/bench.sh`).

#[allow(dead_code)]
#[path = "../tests/common/fixtures.rs"]
mod fixtures;
mod report;

use dualstack_xds::server::protocol::delta::DeltaStream;
use dualstack_xds::server::protocol::sotw::SotwStream;
use dualstack_xds::server::protocol::{Machine, Response, Scope};
use dualstack_xds::server::single_group;
use dualstack_xds::snapshot::{ResourceType, Snapshot, SnapshotSet};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use fixtures::{eds_cluster, load_assignment};
use prost::Message;
use report::Report;

fn main() {
    println!(
        "bytes per change, encoded responses ({} cores)",
        report::cores()
    );
    let mut report = Report::new("load");
    bytes_per_change(&mut report);
    report.write();
}

fn node() -> Option<Node> {
    Some(Node {
        id: "bench".into(),
        ..Default::default()
    })
}

/// A snapshot of `clusters` EDS clusters, the first with `big` endpoints; `bump` changes
/// cluster `bump.0` (its connect timeout) or one endpoint of the first cluster.
fn snapshot(
    clusters: usize,
    big: usize,
    cluster_bump: Option<usize>,
    endpoint_bump: u16,
) -> SnapshotSet {
    let mut b = Snapshot::builder();
    for i in 0..clusters {
        let name = format!("svc-{i}");
        let mut cluster = eds_cluster(&name);
        if cluster_bump == Some(i) {
            cluster.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 9,
                nanos: 0,
            });
        }
        let count = if i == 0 { big } else { 1 };
        let ips: Vec<String> = (0..count)
            .map(|j| format!("10.{}.{}.{}", j >> 16, (j >> 8) & 255, j & 255))
            .collect();
        let endpoints: Vec<(&str, u16)> = ips
            .iter()
            .enumerate()
            .map(|(j, ip)| {
                (
                    ip.as_str(),
                    if j == 0 { 8080 + endpoint_bump } else { 8080 },
                )
            })
            .collect();
        b.upsert(&cluster)
            .upsert(&load_assignment(&name, &endpoints));
    }
    SnapshotSet::single(b.build().unwrap())
}

/// Bytes a SotW and a Delta ADS client (subscribed to every cluster and its endpoints,
/// fully synced and ACKed) receive for the change from `before` to `after`.
fn change_bytes(before: &SnapshotSet, after: &SnapshotSet) -> (usize, usize) {
    let grouping = single_group();
    // SotW, as Envoy subscribes: CDS wildcard, then EDS by name; every response ACKed.
    let mut sotw = SotwStream::new(Scope::Aggregated, grouping.clone());
    let mut pending = sotw
        .on_request(
            DiscoveryRequest {
                node: node(),
                type_url: ResourceType::Cluster.type_url().into(),
                ..Default::default()
            },
            Some(before),
        )
        .unwrap()
        .responses;
    let names: Vec<String> = before
        .get(dualstack_xds::snapshot::DEFAULT_GROUP)
        .unwrap()
        .resources(ResourceType::Cluster)
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    pending.extend(
        sotw.on_request(
            DiscoveryRequest {
                type_url: ResourceType::Endpoint.type_url().into(),
                resource_names: names.clone(),
                ..Default::default()
            },
            Some(before),
        )
        .unwrap()
        .responses,
    );
    while let Some(r) = pending.pop() {
        let ack = DiscoveryRequest {
            type_url: r.ty.type_url().into(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: if r.ty == ResourceType::Endpoint {
                names.clone()
            } else {
                vec![]
            },
            ..Default::default()
        };
        pending.extend(sotw.on_request(ack, Some(before)).unwrap().responses);
    }
    let sotw_bytes: usize = sotw
        .on_snapshot(after)
        .responses
        .iter()
        .map(|r| r.to_proto().encoded_len())
        .sum();

    let mut delta = DeltaStream::new(Scope::Aggregated, grouping);
    let mut pending = Vec::new();
    for (ty, names) in [
        (ResourceType::Cluster, vec!["*".to_string()]),
        (ResourceType::Endpoint, names),
    ] {
        pending.extend(
            delta
                .on_request(
                    DeltaDiscoveryRequest {
                        node: node(),
                        type_url: ty.type_url().into(),
                        resource_names_subscribe: names,
                        ..Default::default()
                    },
                    Some(before),
                )
                .unwrap()
                .responses,
        );
    }
    while let Some(r) = pending.pop() {
        let ack = DeltaDiscoveryRequest {
            type_url: r.ty.type_url().into(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        pending.extend(delta.on_request(ack, Some(before)).unwrap().responses);
    }
    let delta_bytes: usize = delta
        .on_snapshot(after)
        .responses
        .iter()
        .map(|r| r.to_proto().encoded_len())
        .sum();
    (sotw_bytes, delta_bytes)
}

fn bytes_per_change(report: &mut Report) {
    let (sotw, delta) = change_bytes(&snapshot(1, 10_000, None, 0), &snapshot(1, 10_000, None, 1));
    report.add(
        "bytes_one_endpoint_in_10000_sotw",
        "one endpoint changed in a 10,000-endpoint cluster, SotW",
        sotw as f64,
        "B",
        "",
    );
    report.add(
        "bytes_one_endpoint_in_10000_delta",
        "same, Delta",
        delta as f64,
        "B",
        "",
    );
    for clusters in [1_000, 10_000] {
        let (sotw, delta) = change_bytes(
            &snapshot(clusters, 1, None, 0),
            &snapshot(clusters, 1, Some(clusters / 2), 0),
        );
        report.add(
            &format!("bytes_one_cluster_in_{clusters}_sotw"),
            &format!("one cluster changed among {clusters}, SotW"),
            sotw as f64,
            "B",
            "",
        );
        report.add(
            &format!("bytes_one_cluster_in_{clusters}_delta"),
            &format!("one cluster changed among {clusters}, Delta"),
            delta as f64,
            "B",
            "independent of the number of clusters",
        );
    }
}
