//! Objects as the Kubernetes API could send them (any JSON a Service, an EndpointSlice, a
//! ConfigMap or a Secret deserializes from, every field wrong in every way): converted as the watch
//! converts them, applied and translated. Nothing may panic.
#![no_main]

use dualstack_xds::model::{Family, ModelStore};
use dualstack_xds::sources::convert::Convert;
use dualstack_xds::translate::Translator;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut store = ModelStore::default();
    // Several objects, one JSON document per line.
    for line in data.split(|b| *b == b'\n') {
        let change = if let Ok(o) = serde_json::from_slice::<Service>(line) {
            o.change()
        } else if let Ok(o) = serde_json::from_slice::<EndpointSlice>(line) {
            o.change()
        } else if let Ok(o) = serde_json::from_slice::<ConfigMap>(line) {
            o.change()
        } else if let Ok(o) = serde_json::from_slice::<Secret>(line) {
            o.change()
        } else {
            continue;
        };
        store.apply(change);
    }
    Translator::new(Family::IPv6)
        .update(store.model(), None)
        .expect("a model from any input translates into a consistent snapshot");
});
