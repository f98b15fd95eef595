//! Any sequence of Delta requests (subscriptions and unsubscriptions, initial versions,
//! nonces, NACKs) and snapshot publications, through one Delta ADS stream's state
//! machine. Nothing may panic, no type has two responses in flight, and nothing is sent
//! that the client did not subscribe to.
#![no_main]

use std::collections::{BTreeSet, HashMap};

use dualstack_xds::server::protocol::delta::DeltaStream;
use dualstack_xds::server::protocol::{DeltaRequest, Machine, Scope};
use dualstack_xds::translate::node_group;
use dualstack_xds_fuzz::{snapshot_sets, InFlight, Script, NAMES, TYPE_URLS};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let sets = snapshot_sets();
    let mut script = Script(data);
    let mut stream = DeltaStream::new(Scope::Aggregated, std::sync::Arc::new(node_group));
    let mut in_flight = InFlight::default();
    let mut nonces: Vec<String> = vec![String::new()];
    // What the client subscribed to, per type URL: names, and whether it is wildcard
    // (legacy wildcard: an empty first subscription).
    let mut subscribed: HashMap<String, (BTreeSet<String>, bool)> = HashMap::new();
    let mut set = 0;
    while !script.is_empty() {
        let outcome = match script.byte() % 4 {
            0 => {
                set = 1 - set;
                stream.on_snapshot(&sets[set])
            }
            _ => {
                let node = (script.byte() % 4 != 0).then(|| Node {
                    id: script.string(&["envoy-1"]),
                    ..Default::default()
                });
                let type_url = script.pick(&TYPE_URLS).to_string();
                let subscribe = script.strings(&NAMES);
                let unsubscribe = script.strings(&NAMES);
                let initial: HashMap<String, String> = script
                    .strings(&NAMES)
                    .into_iter()
                    .map(|n| (n, "v".to_owned()))
                    .collect();
                let request = DeltaDiscoveryRequest {
                    node,
                    type_url: type_url.clone(),
                    resource_names_subscribe: subscribe.clone(),
                    resource_names_unsubscribe: unsubscribe.clone(),
                    initial_resource_versions: initial,
                    response_nonce: script.pick(&nonces).clone(),
                    error_detail: (script.byte() % 8 == 0).then(|| Status {
                        code: 3,
                        message: script.string(&["rejected"]),
                        details: vec![],
                    }),
                    ..Default::default()
                };
                in_flight.answered(&type_url, &request.response_nonce);
                let entry = subscribed
                    .entry(type_url)
                    .or_insert_with(|| (BTreeSet::new(), subscribe.is_empty()));
                for name in &subscribe {
                    if name == "*" {
                        entry.1 = true;
                    }
                    entry.0.insert(name.clone());
                }
                for name in &unsubscribe {
                    if name == "*" {
                        entry.1 = false;
                    }
                    entry.0.remove(name);
                }
                // Read as the server reads it off the wire.
                let request = DeltaRequest::decode(request.encode_to_vec().into())
                    .expect("what prost encodes decodes");
                match stream.on_request(request, Some(&sets[set])) {
                    Ok(outcome) => outcome,
                    Err(_) => return,
                }
            }
        };
        for response in outcome.responses {
            in_flight.sent(response.ty, &response.nonce);
            nonces.push(response.nonce.clone());
            let (names, wildcard) = subscribed
                .get(response.ty.type_url())
                .cloned()
                .unwrap_or_default();
            for resource in &response.resources {
                assert!(
                    wildcard || names.contains(&**resource.name()),
                    "{} sent without a subscription ({names:?})",
                    resource.name()
                );
            }
        }
    }
});
