//! Translation benchmark (prints figures; not a timed test): services x endpoints of
//! 1x10,000, 100x100 and 10,000x1; a full rebuild, and one slice changed.
//!
//! Run: `cargo bench --bench translate`.

mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use dualstack_xds::model::{
    Endpoint, EndpointState, Endpoints, Family, Model, ObjectKey, PortKind, Service, ServiceKey,
    ServicePort, Slice,
};
use dualstack_xds::translate::Translator;

/// Endpoints per EndpointSlice, as Kubernetes' EndpointSlice controller uses by default.
const SLICE_SIZE: usize = 100;

fn endpoint(i: usize, v6: bool) -> Endpoint {
    let address = if v6 {
        format!("fd00::{:x}:{:x}", i >> 16, i & 0xffff)
    } else {
        format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
    };
    Endpoint {
        address: address.parse().unwrap(),
        state: EndpointState::Ready,
        zone: Some(format!("zone-{}", i % 3)),
        target: Some(format!("Pod/ns/pod-{i}")),
    }
}

fn slice(first: usize, count: usize, v6: bool, port: u16) -> Arc<Slice> {
    Arc::new(Slice::new(
        if v6 { Family::IPv6 } else { Family::IPv4 },
        BTreeMap::from([("http".to_string(), port)]),
        (first..first + count).map(|i| endpoint(i, v6)).collect(),
    ))
}

fn model(services: usize, endpoints: usize) -> Model {
    let mut model = Model::default();
    for s in 0..services {
        let key = ObjectKey::new("bench", format!("svc-{s}"));
        let service = Service {
            key: key.clone(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                kind: PortKind::Http,
                listener_port: 10_000 + (s % 50_000) as u16,
            }],
            primary_family: None,
            failover: false,
            proxy_protocol: None,
            ingress: true,
        };
        let mut eps = Endpoints::default();
        for (n, first) in (0..endpoints).step_by(SLICE_SIZE).enumerate() {
            let count = SLICE_SIZE.min(endpoints - first);
            let base = s * endpoints + first;
            eps.slices
                .insert(format!("svc-{s}-v4-{n}"), slice(base, count, false, 8080));
            eps.slices
                .insert(format!("svc-{s}-v6-{n}"), slice(base, count, true, 8080));
        }
        model.endpoints.insert(key.clone(), eps);
        model.services.insert(key, service);
    }
    model
}

fn main() {
    let mut report = report::Report::new("translate");
    println!(
        "translation benchmark ({} cores; EndpointSlices of {SLICE_SIZE} endpoints)",
        report::cores()
    );
    for (services, endpoints) in [(1, 10_000), (100, 100), (10_000, 1)] {
        let mut m = model(services, endpoints);
        let total = services * endpoints;
        let mut translator = Translator::new(Family::IPv4);
        let t = Instant::now();
        translator.update(&m, None).unwrap();
        let full = t.elapsed();
        // One slice changed: the first IPv4 slice of one Service, its endpoints' port
        // changes (the slice is rebuilt from scratch, as a watch event would).
        let key = m.services.keys().nth(services / 2).unwrap().clone();
        let s = m.services.keys().position(|k| *k == key).unwrap();
        let mut samples = Vec::new();
        for round in 0..20 {
            let t = Instant::now();
            let changed_slice = slice(
                s * endpoints,
                SLICE_SIZE.min(endpoints),
                false,
                9000 + round,
            );
            let name = format!("svc-{s}-v4-0");
            m.endpoints
                .get_mut(&key)
                .unwrap()
                .slices
                .insert(name, changed_slice);
            let changed: BTreeSet<ServiceKey> = [key.clone()].into();
            translator.update(&m, Some(&changed)).unwrap();
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
        samples.sort_by(f64::total_cmp);
        let shape = format!("{services}x{endpoints}");
        report.record(
            &format!("{shape}_full_us_per_endpoint"),
            full.as_secs_f64() * 1e6 / total as f64,
        );
        report.record(
            &format!("{shape}_slice_change_median_ms"),
            samples[samples.len() / 2],
        );
        report.record(
            &format!("{shape}_slice_change_max_ms"),
            *samples.last().unwrap(),
        );
        println!(
            "{services} services x {endpoints} endpoints (x2 families, 3 listener groups): full rebuild {:.1} ms = {:.2} us per endpoint (target <= 1 us); one slice changed: median {:.3} ms, max {:.3} ms (target <= 1 ms)",
            full.as_secs_f64() * 1e3,
            full.as_secs_f64() * 1e6 / total as f64,
            samples[samples.len() / 2],
            samples.last().unwrap()
        );
    }
    report.write();
}
