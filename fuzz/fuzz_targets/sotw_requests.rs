//! Any sequence of SotW requests (nodes or none, any type URL, names, versions, nonces,
//! NACKs) and snapshot publications, through one ADS stream's state machine. Nothing may
//! panic, and no type ever has two responses in flight.
#![no_main]

use dualstack_xds::server::protocol::sotw::SotwStream;
use dualstack_xds::server::protocol::{Machine, Scope, SotwRequest};
use dualstack_xds::translate::node_group;
use dualstack_xds_fuzz::{snapshot_sets, InFlight, Script, NAMES, TYPE_URLS};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let sets = snapshot_sets();
    let mut script = Script(data);
    let mut stream = SotwStream::new(Scope::Aggregated, std::sync::Arc::new(node_group));
    let mut in_flight = InFlight::default();
    let mut nonces: Vec<String> = vec![String::new()];
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
                    user_agent_name: script.string(&["envoy", "gRPC Python"]),
                    ..Default::default()
                });
                let request = DiscoveryRequest {
                    node,
                    type_url: script.pick(&TYPE_URLS).to_string(),
                    resource_names: script.strings(&NAMES),
                    version_info: script.string(&[""]),
                    response_nonce: script.pick(&nonces).clone(),
                    error_detail: (script.byte() % 8 == 0).then(|| Status {
                        code: 3,
                        message: script.string(&["rejected"]),
                        details: vec![],
                    }),
                    ..Default::default()
                };
                in_flight.answered(&request.type_url, &request.response_nonce);
                // Read as the server reads it off the wire.
                let request = SotwRequest::decode(request.encode_to_vec().into())
                    .expect("what prost encodes decodes");
                match stream.on_request(request, Some(&sets[set])) {
                    Ok(outcome) => outcome,
                    // The stream ends with a status: nothing more happens on it.
                    Err(_) => return,
                }
            }
        };
        for response in outcome.responses {
            in_flight.sent(response.ty, &response.nonce);
            nonces.push(response.nonce.clone());
        }
    }
});
