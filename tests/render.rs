//! `dualstack-xds render`: golden output for the bundled examples, and bad input reported
//! without losing anything else.

use std::process::Command;

fn render(args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
        .arg("render")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        serde_json::from_slice(&out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn golden(name: &str, actual: &serde_json::Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert!(
        expected == text,
        "render output differs from {} (UPDATE_GOLDEN=1 rewrites it after review)",
        path.display()
    );
}

fn names(json: &serde_json::Value, ty: &str) -> Vec<String> {
    json[ty]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn examples_render_as_in_the_golden_files() {
    let (both, _) = render(&["--manifests", "examples"]);
    golden("examples-dual.json", &both);
    let (v6, _) = render(&[
        "--manifests",
        "examples",
        "--node-families",
        "IPv6",
        "--primary-family",
        "ipv6",
    ]);
    golden("examples-ipv6-node-ipv6-primary.json", &v6);
    assert!(names(&v6, "listeners").iter().all(|n| n.ends_with(":ipv6")));
}

#[test]
fn a_flip_in_render_changes_only_endpoints() {
    let (a, _) = render(&["--manifests", "examples", "--primary-family", "ipv4"]);
    // The examples' ConfigMap says IPv4; the flag cannot override it, so flip with the
    // annotation-free view of a copy where the ConfigMap is gone.
    let dir = tempfile::tempdir().unwrap();
    for entry in
        std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
            .unwrap()
    {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "config.yaml" {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let (b, _) = render(&[
        "--manifests",
        dir.path().to_str().unwrap(),
        "--primary-family",
        "ipv6",
    ]);
    for ty in ["clusters", "listeners", "routes"] {
        assert_eq!(a[ty]["version_info"], b[ty]["version_info"], "{ty}");
    }
    assert_ne!(
        a["endpoints"]["version_info"],
        b["endpoints"]["version_info"]
    );
}

#[test]
fn bad_input_is_skipped_with_reasons_and_the_rest_is_served() {
    let (json, stderr) = render(&["--manifests", "tests/data/bad"]);
    assert_eq!(names(&json, "clusters"), ["t/good:9000"]);
    let reasons: Vec<String> = json["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}/{}: {}",
                s["kind"].as_str().unwrap(),
                s["namespace"].as_str().unwrap(),
                s["name"].as_str().unwrap(),
                s["reason"].as_str().unwrap()
            )
        })
        .collect();
    let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
    assert!(
        has("Service t/bad-family: annotation dualstack-xds.io/primary-family: \"IPv5\""),
        "{reasons:#?}"
    );
    assert!(
        has("Service t/sctp: port 9002: protocol SCTP is not supported"),
        "{reasons:#?}"
    );
    assert!(
        has("Service t/bad-port: port 70000 is not a port number"),
        "{reasons:#?}"
    );
    assert!(
        has("EndpointSlice t/good-bad-address: address \"10.1.0.999\" is not an IP address"),
        "{reasons:#?}"
    );
    assert!(stderr.contains("broken.yaml (document 1)"), "{stderr}");
    // The good slice still serves the good Service.
    let cla = &json["endpoints"]["resources"][0]["resource"];
    assert_eq!(
        cla["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"],
        "10.1.0.1"
    );
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
        .args([
            "render",
            "--manifests",
            "examples",
            "--primary-family",
            "ipv5",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ipv5"));
    let out = Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
        .args([
            "render",
            "--manifests",
            "examples",
            "--node-families",
            "IPv4,IPv7",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
