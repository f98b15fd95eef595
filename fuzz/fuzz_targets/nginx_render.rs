//! The nginx agent's rendering of what the control plane sends, on the examples'
//! resources changed field by field (protobuf merges of the fuzzer's bytes into a
//! listener, cluster, ClusterLoadAssignment or RouteConfiguration). Nothing may panic,
//! rendering is deterministic, and the text is nginx's grammar with nothing of the
//! server's strings outside what was checked: balanced blocks, every line a directive, a
//! block or a comment, every address an IP address, every server name a host name.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use dualstack_xds::model::Family;
use dualstack_xds::nginx::render::{host_ok, render, Resources};
use dualstack_xds::pipeline::{Pipeline, PipelineMetrics};
use dualstack_xds::snapshot::SnapshotCache;
use dualstack_xds::sources::debounce::Instant;
use dualstack_xds::sources::manifest_watch::ManifestDir;
use dualstack_xds::sources::manifests::Filter;
use dualstack_xds::sources::{Sink, SourceEvent};
use dualstack_xds_fuzz::Script;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn examples() -> &'static Resources {
    static RESOURCES: OnceLock<Resources> = OnceLock::new();
    RESOURCES.get_or_init(|| {
        let filter = Filter {
            service_selector: "dualstack-xds.io/expose=true".parse().unwrap(),
            namespaces: vec![],
            config_map: dualstack_xds::model::ObjectKey::new("dualstack-xds", "dualstack-xds"),
        };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut manifests = ManifestDir::load(&dir, filter).unwrap();
        let cache = SnapshotCache::new();
        let mut pipeline = Pipeline::new(Family::IPv4, cache.clone(), PipelineMetrics::default());
        pipeline.send(SourceEvent::Changes {
            changes: manifests.take_changes(),
            since: Instant::now(),
        });
        pipeline.send(SourceEvent::Synced);
        Resources::from_snapshot(cache.current().unwrap().get("IPv4,IPv6").unwrap())
    })
}

fn merge<M: Message>(map: &mut std::collections::BTreeMap<String, M>, pick: u8, bytes: &[u8]) {
    let len = map.len();
    if len == 0 {
        return;
    }
    let name = map.keys().nth(pick as usize % len).unwrap().clone();
    let message = map.get_mut(&name).unwrap();
    let _ = message.merge(bytes);
}

fuzz_target!(|data: &[u8]| {
    let mut resources = examples().clone();
    let mut script = Script(data);
    while !script.is_empty() {
        let kind = script.byte();
        let pick = script.byte();
        let len = script.byte() as usize;
        let bytes: Vec<u8> = (0..len)
            .map_while(|_| (!script.is_empty()).then(|| script.byte()))
            .collect();
        match kind % 4 {
            0 => merge(&mut resources.listeners, pick, &bytes),
            1 => merge(&mut resources.clusters, pick, &bytes),
            2 => merge(&mut resources.endpoints, pick, &bytes),
            _ => merge(&mut resources.routes, pick, &bytes),
        }
    }
    let rendered = render(&resources);
    assert_eq!(rendered, render(&resources), "deterministic");
    for text in [&rendered.stream, &rendered.http] {
        let mut depth = 0i64;
        let mut in_map = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            assert!(
                line.ends_with(';') || line.ends_with('{') || line == "}",
                "not a directive or a block: {line:?}\n{text}"
            );
            if line.ends_with('{') {
                depth += 1;
                in_map = line.starts_with("map ");
            }
            if line == "}" {
                depth -= 1;
                in_map = false;
                assert!(depth >= 0, "{text}");
            }
            let words: Vec<&str> = line.trim_end_matches(';').split(' ').collect();
            match words[0] {
                "server_name" => {
                    for host in &words[1..] {
                        assert!(host_ok(host), "{host:?}");
                    }
                }
                "listen" => assert!(
                    words[1].parse::<std::net::SocketAddr>().is_ok()
                        || words[1].starts_with("unix:"),
                    "{line:?}"
                ),
                "server" if words.len() > 1 && words[1] != "{" => {
                    assert!(words[1].parse::<std::net::SocketAddr>().is_ok(), "{line:?}")
                }
                host if in_map && host != "hostnames" && host != "default" && host != "map" => {
                    assert!(host_ok(host), "{line:?}")
                }
                _ => {}
            }
        }
        assert_eq!(depth, 0, "{text}");
    }
});
