//! The live manifest directory: edits, atomic renames, deletions, new files and broken
//! files reach the published snapshot; bursts are coalesced.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use dualstack_xds::model::Family;
use dualstack_xds::pipeline::Pipeline;
use dualstack_xds::snapshot::{ResourceType, SnapshotCache, SnapshotSet};
use dualstack_xds::sources::debounce::Debounce;
use dualstack_xds::sources::manifest_watch::{run, ManifestDir};
use dualstack_xds::sources::{Sink, SourceEvent};

fn service(name: &str, ip: &str) -> String {
    common::manifests::yaml(&[
        common::manifests::service("t", name).port("p", 80),
        common::manifests::slice("t", &format!("{name}-1"), name, "IPv4")
            .port("p", 8080)
            .endpoint(ip),
    ])
}

struct Live {
    cache: SnapshotCache,
    publications: Arc<AtomicUsize>,
    dir: tempfile::TempDir,
}

/// The pipeline, counting the changes it is handed.
struct Counting {
    pipeline: Pipeline,
    changes: Arc<AtomicUsize>,
}

impl Sink for Counting {
    fn send(&mut self, event: SourceEvent) {
        if matches!(event, SourceEvent::Changes { .. }) {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
        self.pipeline.send(event);
    }
}

async fn start(files: &[(&str, String)]) -> Live {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let source = ManifestDir::load(dir.path(), common::default_filter()).unwrap();
    let cache = SnapshotCache::new();
    let publications = Arc::new(AtomicUsize::new(0));
    let sink = Counting {
        pipeline: Pipeline::new(Family::IPv4, cache.clone(), Default::default()),
        changes: publications.clone(),
    };
    let debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
    };
    tokio::spawn(run(source, debounce, sink));
    // inotify watches are in place once `run` has started; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Live {
        cache,
        publications,
        dir,
    }
}

/// The endpoint addresses per cluster in the published snapshot.
fn endpoints(set: &SnapshotSet) -> Vec<(String, String)> {
    let snapshot = set.get("IPv4,IPv6").unwrap();
    snapshot
        .resources(ResourceType::Endpoint)
        .iter()
        .map(|r| {
            let json = dualstack_xds::snapshot::json::resource_json(r);
            let ip = json["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["address"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (r.name().to_string(), ip)
        })
        .collect()
}

async fn until(live: &Live, what: &str, want: impl Fn(&[(String, String)]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let current = endpoints(&live.cache.current().unwrap());
        if want(&current) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pair(name: &str, ip: &str) -> (String, String) {
    (name.to_string(), ip.to_string())
}

#[tokio::test]
async fn edits_renames_deletions_and_new_files_are_served() {
    let live = start(&[
        ("a.yaml", service("a", "10.0.0.1")),
        ("b.yaml", service("b", "10.0.0.2")),
    ])
    .await;
    let path = |n: &str| live.dir.path().join(n);
    assert_eq!(
        endpoints(&live.cache.current().unwrap()),
        [pair("t/a:80", "10.0.0.1"), pair("t/b:80", "10.0.0.2")]
    );

    std::fs::write(path("a.yaml"), service("a", "10.0.0.11")).unwrap();
    until(&live, "the edit", |e| {
        e.contains(&pair("t/a:80", "10.0.0.11"))
    })
    .await;

    // Atomic replace: write elsewhere (a temporary name) and rename over the file.
    std::fs::write(path(".b.yaml.tmp"), service("b", "10.0.0.22")).unwrap();
    std::fs::rename(path(".b.yaml.tmp"), path("b.yaml")).unwrap();
    until(&live, "the rename", |e| {
        e.contains(&pair("t/b:80", "10.0.0.22"))
    })
    .await;

    std::fs::write(
        path("c.json"),
        serde_json::to_string(
            &serde_yaml_ng::from_str::<serde_json::Value>(
                service("c", "10.0.0.3").split("---").next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    std::fs::create_dir(path("sub")).unwrap();
    std::fs::write(path("sub/d.yaml"), service("d", "10.0.0.4")).unwrap();
    until(&live, "the new files", |e| {
        e.iter().any(|(n, _)| n == "t/d:80") && e.iter().any(|(n, _)| n == "t/c:80")
    })
    .await;

    std::fs::remove_file(path("a.yaml")).unwrap();
    until(&live, "the deletion", |e| {
        !e.iter().any(|(n, _)| n == "t/a:80")
    })
    .await;
}

#[tokio::test]
async fn a_broken_file_keeps_its_last_good_content() {
    let live = start(&[
        ("a.yaml", service("a", "10.0.0.1")),
        ("b.yaml", service("b", "10.0.0.2")),
    ])
    .await;
    let path = |n: &str| live.dir.path().join(n);
    let before = live.publications.load(Ordering::SeqCst);
    // a.yaml breaks in its second document; b changes at the same time.
    std::fs::write(
        path("a.yaml"),
        service("a", "10.0.0.9").replace("addressType: IPv4", "addressType: ["),
    )
    .unwrap();
    std::fs::write(path("b.yaml"), service("b", "10.0.0.20")).unwrap();
    until(&live, "b's change", |e| {
        e.contains(&pair("t/b:80", "10.0.0.20"))
    })
    .await;
    assert!(live.publications.load(Ordering::SeqCst) > before);
    assert!(
        endpoints(&live.cache.current().unwrap()).contains(&pair("t/a:80", "10.0.0.1")),
        "a keeps its last good content"
    );
    // Fixed: the new content is served.
    std::fs::write(path("a.yaml"), service("a", "10.0.0.9")).unwrap();
    until(&live, "the fix", |e| {
        e.contains(&pair("t/a:80", "10.0.0.9"))
    })
    .await;
}

#[tokio::test]
async fn a_burst_of_edits_ends_with_the_last_content() {
    let live = start(&[("a.yaml", service("a", "10.0.0.1"))]).await;
    for i in 0..30 {
        std::fs::write(
            live.dir.path().join("a.yaml"),
            service("a", &format!("10.0.1.{i}")),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until(&live, "the last edit", |e| {
        e.contains(&pair("t/a:80", "10.0.1.29"))
    })
    .await;
}
