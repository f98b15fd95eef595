//! Translation benchmark (prints figures; not a timed test): services x endpoints of
//! 1x10,000, 100x100 and 10,000x1; a full rebuild, and one slice changed.
//!
//! Run: `cargo bench --bench translate`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use dualstack_xds::model::{
    Endpoint, EndpointState, Endpoints, Family, Model, PortKind, Service, ServiceKey, ServicePort,
};
use dualstack_xds::translate::Translator;

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
        ports: BTreeMap::from([("http".to_string(), 8080)]),
    }
}

fn model(services: usize, endpoints: usize) -> Model {
    let mut model = Model::default();
    for s in 0..services {
        let key = ServiceKey {
            namespace: "bench".into(),
            name: format!("svc-{s}"),
        };
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
        let eps = Endpoints {
            ipv4: (0..endpoints)
                .map(|i| endpoint(s * endpoints + i, false))
                .collect(),
            ipv6: (0..endpoints)
                .map(|i| endpoint(s * endpoints + i, true))
                .collect(),
        };
        model.services.insert(key, (service, eps));
    }
    model
}

fn main() {
    println!(
        "translation benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (services, endpoints) in [(1, 10_000), (100, 100), (10_000, 1)] {
        let mut m = model(services, endpoints);
        let total = services * endpoints;
        let mut translator = Translator::new(Family::IPv4);
        let t = Instant::now();
        translator.update(&m, None).unwrap();
        let full = t.elapsed();
        // One slice changed: 1% of one Service's endpoints (at least one) move.
        let key = m.services.keys().nth(services / 2).unwrap().clone();
        let mut samples = Vec::new();
        for round in 0..20 {
            let eps = &mut m.services.get_mut(&key).unwrap().1.ipv4;
            let n = (endpoints / 100).max(1);
            for (j, e) in eps.iter_mut().take(n).enumerate() {
                e.ports
                    .insert("http".into(), 9000 + ((round + j) % 100) as u16);
            }
            let changed: BTreeSet<ServiceKey> = [key.clone()].into();
            let t = Instant::now();
            translator.update(&m, Some(&changed)).unwrap();
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
        samples.sort_by(f64::total_cmp);
        println!(
            "{services} services x {endpoints} endpoints (x2 families, 3 listener groups): full rebuild {:.1} ms = {:.2} us per endpoint (target <= 1 us); one slice changed: median {:.3} ms, max {:.3} ms (target <= 1 ms)",
            full.as_secs_f64() * 1e3,
            full.as_secs_f64() * 1e6 / total as f64,
            samples[samples.len() / 2],
            samples.last().unwrap()
        );
    }
}
