//! Translation benchmark (prints figures; not a timed test): services x endpoints of
//! 1x10,000, 100x100 and 10,000x1; a full rebuild, and one slice changed. Then 1,000
//! Services sharing one port by Host, and 1,000 by SNI with TLS terminated: a full
//! rebuild, one Service's endpoints changed, one Service's hosts changed, one Secret
//! rotated, and what Envoy is sent for each.
//!
//! Run: `cargo bench --bench translate [-- FIGURES] [--shared-services N]`, FIGURES any
//! of `1x10000`, `100x100`, `10000x1` and `shared` (all when none is named).

mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use dualstack_xds::model::{
    Endpoint, EndpointState, Endpoints, Family, Model, ObjectKey, PortKind, Service, ServiceKey,
    ServicePort, Slice, TlsMode, TlsSecret,
};
use dualstack_xds::snapshot::{ResourceType, SnapshotSet};
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
            hosts: Vec::new(),
            tls: None,
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
    // `cargo bench --bench translate -- 10000x1 shared`: only the figures named (by
    // shape, or `shared` for the shared-port ones); none named: all of them.
    const FIGURES: [&str; 4] = ["1x10000", "100x100", "10000x1", "shared"];
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| FIGURES.contains(&a.as_str()))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    for (services, endpoints) in [(1, 10_000), (100, 100), (10_000, 1)] {
        if !wanted(&format!("{services}x{endpoints}")) {
            continue;
        }
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
        // A global flip (the ConfigMap's primary family): every ClusterLoadAssignment
        // changes, clusters, listeners and routes are kept.
        let mut flips = Vec::new();
        for family in [Family::IPv6, Family::IPv4, Family::IPv6] {
            m.config_primary_family = Some(family);
            let t = Instant::now();
            translator.update(&m, None).unwrap();
            flips.push(t.elapsed().as_secs_f64() * 1e3);
        }
        flips.sort_by(f64::total_cmp);
        report.record(&format!("{shape}_global_flip_median_ms"), flips[1]);
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
        println!(
            "  global flip of the primary family: median {:.1} ms ({:.2} us per Service)",
            flips[1],
            flips[1] * 1e3 / services as f64
        );
    }
    if wanted("shared") {
        shared_ports(&mut report);
    }
    report.write();
}

/// Services sharing one listener port: by Host (`tls` false) or by SNI with TLS
/// terminated, each with its own host, 10 endpoints per family and (with TLS) its own
/// Secret.
fn shared_model(services: usize, tls: bool) -> Model {
    let mut m = model(services, 10);
    let secret = rcgen::generate_simple_self_signed(vec!["bench.example.com".to_string()]).unwrap();
    for (i, service) in m.services.values_mut().enumerate() {
        service.ports[0].listener_port = 8443;
        service.hosts = vec![format!("svc-{i}.example.com")];
        if tls {
            let name = ObjectKey::new("bench", format!("svc-{i}-tls"));
            service.tls = Some(TlsMode::Terminate {
                secret: name.clone(),
            });
            m.secrets.insert(
                name,
                Arc::new(TlsSecret {
                    certificate_chain: secret.cert.pem(),
                    private_key: secret.signing_key.serialize_pem(),
                }),
            );
        }
    }
    m
}

/// What changed between two snapshots of the dual-family group, by type: resources
/// resent and their encoded bytes (what a Delta client receives; a SotW client gets the
/// same for RDS, EDS and SDS, and every listener and cluster for LDS and CDS).
fn sent(before: &SnapshotSet, after: &SnapshotSet) -> Vec<(ResourceType, usize, usize)> {
    let (b, a) = (
        before.get("IPv4,IPv6").unwrap(),
        after.get("IPv4,IPv6").unwrap(),
    );
    ResourceType::ALL
        .into_iter()
        .filter_map(|ty| {
            let changed: Vec<_> = a
                .resources(ty)
                .iter()
                .filter(|r| b.resources(ty).get(r.name()).map(|o| o.version()) != Some(r.version()))
                .collect();
            let bytes = changed.iter().map(|r| r.to_any().value.len()).sum();
            (!changed.is_empty()).then_some((ty, changed.len(), bytes))
        })
        .collect()
}

fn describe(sent: &[(ResourceType, usize, usize)]) -> String {
    sent.iter()
        .map(|(ty, n, bytes)| format!("{} {n} resource(s) {bytes} B", ty.short_name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median_ms(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn shared_ports(report: &mut report::Report) {
    // `--shared-services n` (default 1,000).
    let n = report::arg("--shared-services", 1_000) as usize;
    for (tls, label) in [(false, "hosts"), (true, "sni_terminate")] {
        let mut m = shared_model(n, tls);
        let mut translator = Translator::new(Family::IPv4);
        let t = Instant::now();
        let mut last = translator.update(&m, None).unwrap();
        let full = t.elapsed().as_secs_f64() * 1e3;
        let key = m.services.keys().nth(n / 2).unwrap().clone();
        let s = m.services.keys().position(|k| *k == key).unwrap();
        let one: BTreeSet<ServiceKey> = [key.clone()].into();

        // One Service's endpoints change: EDS only.
        let mut endpoint_ms = Vec::new();
        let mut endpoint_sent = Vec::new();
        for round in 0..20 {
            let t = Instant::now();
            m.endpoints.get_mut(&key).unwrap().slices.insert(
                format!("svc-{s}-v4-0"),
                slice(s * 10, 10, false, 9000 + round),
            );
            let set = translator.update(&m, Some(&one)).unwrap();
            endpoint_ms.push(t.elapsed().as_secs_f64() * 1e3);
            endpoint_sent = sent(&last, &set);
            last = set;
        }
        assert_eq!(
            endpoint_sent.iter().map(|s| s.0).collect::<Vec<_>>(),
            [ResourceType::Endpoint],
            "an endpoint change on a shared port is EDS only"
        );

        // One Service's hosts change: its virtual host or filter chain is encoded again,
        // the other 999 are reused; Envoy gets the port's whole route table or listener.
        let mut hosts_ms = Vec::new();
        let mut hosts_sent = Vec::new();
        for round in 0..20 {
            let t = Instant::now();
            m.services.get_mut(&key).unwrap().hosts = vec![
                format!("svc-{s}.example.com"),
                format!("r{round}.example.com"),
            ];
            let set = translator.update(&m, Some(&one)).unwrap();
            hosts_ms.push(t.elapsed().as_secs_f64() * 1e3);
            hosts_sent = sent(&last, &set);
            last = set;
        }
        let (endpoint_med, hosts_med) = (median_ms(&mut endpoint_ms), median_ms(&mut hosts_ms));
        report.record(&format!("shared_{label}_{n}_full_ms"), full);
        report.record(
            &format!("shared_{label}_{n}_endpoint_change_median_ms"),
            endpoint_med,
        );
        report.record(
            &format!("shared_{label}_{n}_hosts_change_median_ms"),
            hosts_med,
        );
        let resent: usize = hosts_sent.iter().map(|s| s.2).sum();
        report.record(
            &format!("shared_{label}_{n}_hosts_change_bytes"),
            resent as f64,
        );
        println!(
            "{n} Services sharing one port ({}): full rebuild {full:.1} ms; one Service's endpoints changed: median {endpoint_med:.3} ms, sent: {}; one Service's hosts changed: median {hosts_med:.3} ms, sent: {}",
            if tls { "SNI, TLS terminated" } else { "Host" },
            describe(&endpoint_sent),
            describe(&hosts_sent),
        );

        if tls {
            // One Secret rotated: SDS only.
            let secret = ObjectKey::new("bench", format!("svc-{s}-tls"));
            let mut rotate_ms = Vec::new();
            let mut rotate_sent = Vec::new();
            for _ in 0..20 {
                let issued =
                    rcgen::generate_simple_self_signed(vec!["bench.example.com".to_string()])
                        .unwrap();
                let t = Instant::now();
                m.secrets.insert(
                    secret.clone(),
                    Arc::new(TlsSecret {
                        certificate_chain: issued.cert.pem(),
                        private_key: issued.signing_key.serialize_pem(),
                    }),
                );
                let set = translator.update(&m, Some(&one)).unwrap();
                rotate_ms.push(t.elapsed().as_secs_f64() * 1e3);
                rotate_sent = sent(&last, &set);
                last = set;
            }
            assert_eq!(
                rotate_sent.iter().map(|s| s.0).collect::<Vec<_>>(),
                [ResourceType::Secret],
                "a rotation is SDS only"
            );
            let rotate_med = median_ms(&mut rotate_ms);
            report.record(
                &format!("shared_{label}_{n}_secret_rotation_median_ms"),
                rotate_med,
            );
            println!(
                "  one Secret rotated: median {rotate_med:.3} ms, sent: {}",
                describe(&rotate_sent)
            );
        }
    }
}
