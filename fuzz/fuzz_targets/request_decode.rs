//! Any bytes as a `DiscoveryRequest` and as a `DeltaDiscoveryRequest`: the server's
//! decoders, which leave resource names in the message's bytes, accept exactly what
//! prost's decoding accepts and read the same request from it.
#![no_main]

use dualstack_xds::server::protocol::{DeltaRequest, SotwRequest};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(data);
    match (
        SotwRequest::decode(bytes.clone()),
        DiscoveryRequest::decode(data),
    ) {
        (Ok(ours), Ok(mut prost)) => {
            assert_eq!(ours.resource_names.len(), prost.resource_names.len());
            prost.resource_locators.clear();
            assert_eq!(ours.into_proto(), prost);
        }
        (Err(_), Err(_)) => {}
        (ours, prost) => panic!("SotW decoders disagree: ours {ours:?}, prost {prost:?}"),
    }
    match (
        DeltaRequest::decode(bytes),
        DeltaDiscoveryRequest::decode(data),
    ) {
        (Ok(ours), Ok(mut prost)) => {
            prost.resource_locators_subscribe.clear();
            prost.resource_locators_unsubscribe.clear();
            assert_eq!(ours.into_proto(), prost);
        }
        (Err(_), Err(_)) => {}
        (ours, prost) => panic!("Delta decoders disagree: ours {ours:?}, prost {prost:?}"),
    }
});
