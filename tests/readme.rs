//! The README, followed as a new user follows it: its commands are read out of README.md
//! and run as written, from a working directory laid out as the repository (`examples/`
//! and `envoy/` beside each other), with the README's relative paths and default ports.
//! Then the manifest directory is edited with the tools people use (`sed -i`, vim, an
//! editor's write-and-rename, `ed`, `cp`, `mv`, `rm`, `mkdir`, a ConfigMap volume's
//! `..data` swap), and each edit is checked where it matters: in what the real Envoy
//! applied (its `/clusters` and `/listeners`).
//!
//! The README's ports are fixed (xDS 18000, admin 9100, Envoy admin 9901), so these tests
//! run one at a time.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const ENVOY_ADMIN: &str = "127.0.0.1:9901";
const SERVER_ADMIN: &str = "127.0.0.1:9100";
const WEB: &str = "shop/web:80";

/// The README's code lines (its indented blocks).
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(common::repo_path("README.md")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("    "))
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The README line that starts with `prefix`; the test fails if the README lost it.
fn readme_command(prefix: &str) -> String {
    readme_commands()
        .into_iter()
        .find(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("README.md has no command starting with {prefix:?}"))
}

/// A working directory laid out as the repository: what the README's commands use.
struct Workspace {
    dir: tempfile::TempDir,
    processes: Vec<(String, Child)>,
    started: usize,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["examples", "envoy", "nginx"] {
            copy_dir(&common::repo_path(sub), &dir.path().join(sub));
        }
        // As a fresh clone has it: nothing a local run of the README left behind.
        let _ = std::fs::remove_dir_all(dir.path().join("nginx/run"));
        // Outside the watched directory: where files are prepared before `cp` or `mv`.
        std::fs::create_dir(dir.path().join("staging")).unwrap();
        Workspace {
            dir,
            processes: Vec::new(),
            started: 0,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a README command as written: `cargo run --release -- ARGS` is the binary
    /// under test with ARGS, `.rig/venv/bin/envoy ARGS` the rig's Envoy; it keeps running.
    fn start(&mut self, command: &str) {
        let words: Vec<&str> = command.split_whitespace().collect();
        let (program, args): (PathBuf, &[&str]) = match words.as_slice() {
            ["cargo", "run", "--release", "--", args @ ..] => {
                (env!("CARGO_BIN_EXE_dualstack-xds").into(), args)
            }
            [".rig/venv/bin/envoy", args @ ..] => (common::envoy_binary(), args),
            _ => panic!("not a command this test knows how to start: {command}"),
        };
        let name = format!("process-{}", self.started);
        self.started += 1;
        let log = std::fs::File::create(self.root().join(format!("{name}.log"))).unwrap();
        let child = Command::new(program)
            .args(args)
            .current_dir(self.root())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        self.processes.push((name, child));
    }

    /// Runs a README command that needs a shell (quotes, `$PWD`) as written, with
    /// `cargo run --release --` the binary under test and the rig's nginx on the PATH;
    /// it keeps running.
    fn start_shell(&mut self, command: &str) {
        let binary = env!("CARGO_BIN_EXE_dualstack-xds");
        let command = command.replacen("cargo run --release --", binary, 1);
        let name = format!("process-{}", self.started);
        self.started += 1;
        let log = std::fs::File::create(self.root().join(format!("{name}.log"))).unwrap();
        let nginx_dir = common::nginx_binary().parent().unwrap().to_owned();
        let path = format!(
            "{}:{}",
            nginx_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("sh")
            .args(["-c", &format!("exec {command}")])
            .current_dir(self.root())
            .env("RUST_LOG", "info")
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        self.processes.push((name, child));
    }

    /// Runs a shell command in the working directory; it must succeed.
    fn sh(&self, script: &str) {
        let output = Command::new("sh")
            .args(["-c", script])
            .current_dir(self.root())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs a shell command in the working directory; its standard output, whatever
    /// its exit status.
    fn output(&self, script: &str) -> String {
        let output = Command::new("sh")
            .args(["-c", script])
            .current_dir(self.root())
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn write(&self, path: &str, text: &str) {
        std::fs::write(self.root().join(path), text).unwrap();
    }

    fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|(name, _)| {
                let log = std::fs::read_to_string(self.root().join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- {name}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts the server and Envoy with the README's commands and waits for Envoy to
    /// serve the examples.
    fn start_readme(&mut self, serve: &str) -> Envoy {
        self.start(serve);
        self.start(&readme_command(
            ".rig/venv/bin/envoy -c envoy/ads-sotw.yaml",
        ));
        let envoy = Envoy;
        self.until("Envoy serves the examples", || {
            !envoy.endpoints(WEB).is_empty() && envoy.listeners().contains(&format!("{WEB}:ipv6"))
        });
        envoy
    }

    /// Waits until `check` holds; returns how long that took.
    fn until(&self, what: &str, check: impl Fn() -> bool) -> Duration {
        let started = Instant::now();
        while !check() {
            if started.elapsed() > Duration::from_secs(15) {
                panic!("timed out waiting for: {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = started.elapsed();
        println!("{what}: {:.1} ms", took.as_secs_f64() * 1e3);
        took
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl Workspace {
    /// Stops every process started, last first.
    fn stop_all(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.processes).into_iter().rev() {
            // SIGTERM: what a user's Ctrl-C or a pod stop sends; then make sure.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The Envoy the README starts, read through its admin API.
struct Envoy;

impl Envoy {
    fn get_json(&self, path: &str) -> Value {
        common::blocking_http_get(ENVOY_ADMIN.parse().unwrap(), path)
            .and_then(|body| serde_json::from_str(&body).ok())
            .unwrap_or(Value::Null)
    }

    /// The endpoint addresses Envoy holds for a cluster.
    fn endpoints(&self, cluster: &str) -> Vec<String> {
        let clusters = self.get_json("/clusters?format=json");
        let Some(statuses) = clusters["cluster_statuses"].as_array() else {
            return Vec::new();
        };
        statuses
            .iter()
            .filter(|c| c["name"] == cluster)
            .flat_map(|c| c["host_statuses"].as_array().cloned().unwrap_or_default())
            .filter_map(|h| {
                h["address"]["socket_address"]["address"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// A counter or gauge from Envoy's `/stats`; 0 when absent.
    fn stat(&self, name: &str) -> u64 {
        common::blocking_http_get(
            ENVOY_ADMIN.parse().unwrap(),
            &format!("/stats?filter=^{name}$"),
        )
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
    }

    fn has_cluster(&self, cluster: &str) -> bool {
        let clusters = self.get_json("/clusters?format=json");
        clusters["cluster_statuses"]
            .as_array()
            .is_some_and(|all| all.iter().any(|c| c["name"] == cluster))
    }

    /// The names of Envoy's active listeners.
    fn listeners(&self) -> Vec<String> {
        let listeners = self.get_json("/listeners?format=json");
        listeners["listener_statuses"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|l| l["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The primary family Envoy forwards `cluster` to, judged by its endpoints.
    fn family(&self, cluster: &str) -> Option<&'static str> {
        let endpoints = self.endpoints(cluster);
        match endpoints.first()?.contains(':') {
            true => Some("IPv6"),
            false => Some("IPv4"),
        }
    }
}

/// A Service on a port of its own, with one endpoint.
fn service(name: &str, port: u16, ip: &str) -> String {
    common::manifests::yaml(&[
        common::manifests::service("shop", name).port("tcp", port),
        common::manifests::slice("shop", &format!("{name}-1"), name, "IPv4")
            .port("tcp", port)
            .endpoint(ip),
    ])
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn the_readme_main_job_and_its_next_step_reach_envoy() {
    let _one = lock();
    let mut ws = Workspace::new();
    let envoy = ws.start_readme(&readme_command(
        "cargo run --release -- serve --manifests examples",
    ));
    assert_eq!(envoy.family(WEB), Some("IPv4"));
    let ready = common::blocking_http_get(SERVER_ADMIN.parse().unwrap(), "/readyz");
    assert!(
        ready.is_some(),
        "the README's admin address answers /readyz"
    );

    // The README's next step, exactly as written.
    ws.sh(&readme_command("sed -i "));
    ws.until("README's sed -i flip reaches Envoy", || {
        envoy.family(WEB) == Some("IPv6")
    });

    // vim: renames the file away and writes a new one.
    ws.sh("vim -u NONE -i NONE -N -es -c '%s/primaryFamily: IPv6/primaryFamily: IPv4/' -c wq examples/config.yaml");
    ws.until("vim's write reaches Envoy", || {
        envoy.family(WEB) == Some("IPv4")
    });

    // An editor's safe write: a hidden temporary file renamed over the file.
    ws.sh("sed 's/primaryFamily: IPv4/primaryFamily: IPv6/' examples/config.yaml > examples/.config.yaml.tmp && mv examples/.config.yaml.tmp examples/config.yaml");
    ws.until("a rename over the file reaches Envoy", || {
        envoy.family(WEB) == Some("IPv6")
    });

    // ed: writes in place (truncate and write).
    ws.sh("printf ',s/primaryFamily: IPv6/primaryFamily: IPv4/\\nw\\nq\\n' | ed -s examples/config.yaml");
    ws.until("ed's write in place reaches Envoy", || {
        envoy.family(WEB) == Some("IPv4")
    });
    // Still one copy of each file's objects: nothing doubled, nothing left behind.
    assert_eq!(envoy.endpoints(WEB).len(), 3, "{:?}", envoy.endpoints(WEB));
}

#[test]
fn a_slow_write_in_place_never_withdraws_the_file() {
    let _one = lock();
    let mut ws = Workspace::new();
    let envoy = ws.start_readme(&readme_command(
        "cargo run --release -- serve --manifests examples",
    ));
    let original = std::fs::read_to_string(ws.root().join("examples/web.yaml")).unwrap();
    let edited = original.replace("10.244.1.10", "10.244.1.99");
    std::fs::write(ws.root().join("staging/web.yaml"), &edited).unwrap();
    // Truncate, pause (a slow writer, an editor saving over the network), then write.
    let writer = {
        let root = ws.root().to_owned();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(root.join("examples/web.yaml")).unwrap();
            std::thread::sleep(Duration::from_millis(600));
            file.write_all(edited.as_bytes()).unwrap();
        })
    };
    let started = Instant::now();
    let mut polls = 0;
    while !envoy.endpoints(WEB).contains(&"10.244.1.99".to_string()) {
        assert!(
            envoy.listeners().contains(&format!("{WEB}:ipv4")) && envoy.has_cluster(WEB),
            "the Service was withdrawn while its file was being written\n{}",
            ws.logs()
        );
        assert!(started.elapsed() < Duration::from_secs(15), "{}", ws.logs());
        polls += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    writer.join().unwrap();
    assert!(polls > 10, "the check ran while the file was empty");
}

#[test]
fn files_copied_moved_made_and_removed_reach_envoy() {
    let _one = lock();
    let mut ws = Workspace::new();
    let envoy = ws.start_readme(&readme_command(
        "cargo run --release -- serve --manifests examples",
    ));

    // cp over an existing file.
    ws.write(
        "staging/web.yaml",
        &std::fs::read_to_string(ws.root().join("examples/web.yaml"))
            .unwrap()
            .replace("10.244.2.11", "10.244.2.77"),
    );
    ws.sh("cp staging/web.yaml examples/web.yaml");
    ws.until("cp over a file reaches Envoy", || {
        envoy.endpoints(WEB).contains(&"10.244.2.77".to_string())
    });

    // mv in from outside the directory, and out again.
    ws.write("staging/extra.yaml", &service("extra", 7101, "10.244.9.1"));
    ws.sh("mv staging/extra.yaml examples/");
    ws.until("mv into the directory reaches Envoy", || {
        envoy.endpoints("shop/extra:7101") == ["10.244.9.1"]
            && envoy
                .listeners()
                .contains(&"shop/extra:7101:ipv6".to_string())
    });
    ws.sh("mv examples/extra.yaml staging/");
    ws.until("mv out of the directory reaches Envoy", || {
        !envoy.has_cluster("shop/extra:7101")
            && !envoy
                .listeners()
                .iter()
                .any(|l| l.starts_with("shop/extra"))
    });

    // A new subdirectory, filled right after it is made; a directory moved in whole.
    ws.write("staging/team.yaml", &service("team", 7102, "10.244.9.2"));
    ws.sh("mkdir examples/team && cp staging/team.yaml examples/team/");
    ws.until("a new subdirectory reaches Envoy", || {
        envoy.endpoints("shop/team:7102") == ["10.244.9.2"]
    });
    ws.sh("mkdir staging/more && mv staging/extra.yaml staging/more/ && mv staging/more examples/");
    ws.until("a directory moved in reaches Envoy", || {
        envoy.endpoints("shop/extra:7101") == ["10.244.9.1"]
    });
    ws.sh("rm -r examples/team");
    ws.until("rm -r of a subdirectory reaches Envoy", || {
        !envoy.has_cluster("shop/team:7102")
    });

    // rm of a bundled file.
    ws.sh("rm examples/legacy-db.yaml");
    ws.until("rm reaches Envoy", || {
        !envoy.has_cluster("shop/legacy-db:5432")
            && !envoy.listeners().iter().any(|l| l.contains("legacy-db"))
    });
    assert!(envoy.has_cluster(WEB) && envoy.has_cluster("shop/extra:7101"));
}

#[test]
fn the_directory_named_through_dots_and_symlinks() {
    let _one = lock();
    let mut ws = Workspace::new();
    ws.sh("ln -s examples live");
    let workspace_name = ws
        .root()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // The README's command with the directory spelt another way each time.
    for (i, spelling) in ["./live/", &format!("../{workspace_name}/examples/.")]
        .into_iter()
        .enumerate()
    {
        let serve = format!("cargo run --release -- serve --manifests {spelling}");
        let envoy = ws.start_readme(&serve);
        let (from, to) = if i % 2 == 0 {
            ("IPv4", "IPv6")
        } else {
            ("IPv6", "IPv4")
        };
        assert_eq!(envoy.family(WEB), Some(from));
        ws.sh(&format!(
            "sed -i 's/primaryFamily: {from}/primaryFamily: {to}/' examples/config.yaml"
        ));
        ws.until(
            &format!("an edit reaches Envoy (--manifests {spelling})"),
            || envoy.family(WEB) == Some(to),
        );
        ws.sh("rm examples/api.yaml");
        ws.until(
            &format!("rm reaches Envoy (--manifests {spelling})"),
            || !envoy.has_cluster("shop/api:9090"),
        );
        ws.sh(&format!(
            "cp {}/examples/api.yaml examples/",
            env!("CARGO_MANIFEST_DIR")
        ));
        ws.until("the file back", || envoy.has_cluster("shop/api:9090"));
        ws.stop_all();
    }
}

/// A ConfigMap volume as the kubelet writes it: each key a symlink into `..data`, which
/// points at a timestamped directory and is swapped atomically on every update.
struct ConfigMapVolume {
    generation: usize,
}

impl ConfigMapVolume {
    fn write(&mut self, ws: &Workspace, dir: &str, files: &[(&str, String)]) {
        self.generation += 1;
        let stamp = format!("..2026_12_01_00_00_00.{:09}", self.generation);
        let root = ws.root().join(dir);
        std::fs::create_dir_all(root.join(&stamp)).unwrap();
        for (name, text) in files {
            std::fs::write(root.join(&stamp).join(name), text).unwrap();
        }
        let old = std::fs::read_link(root.join("..data")).ok();
        std::os::unix::fs::symlink(&stamp, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        // Links for new keys; links of keys no longer there removed.
        for (name, _) in files {
            let link = root.join(name);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
            }
        }
        for entry in std::fs::read_dir(&root).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !files.iter().any(|(n, _)| *n == name) {
                std::fs::remove_file(root.join(name)).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}

#[test]
fn a_configmap_volume_is_served_and_its_updates_reach_envoy() {
    let _one = lock();
    let mut ws = Workspace::new();
    let example =
        |name: &str| std::fs::read_to_string(ws.root().join("examples").join(name)).unwrap();
    let (config, web, api) = (
        example("config.yaml"),
        example("web.yaml"),
        example("api.yaml"),
    );
    let mut volume = ConfigMapVolume { generation: 0 };
    volume.write(
        &ws,
        "manifests",
        &[("config.yaml", config.clone()), ("web.yaml", web.clone())],
    );
    ws.start("cargo run --release -- serve --manifests manifests");
    ws.start(&readme_command(
        ".rig/venv/bin/envoy -c envoy/ads-sotw.yaml",
    ));
    let envoy = Envoy;
    ws.until("Envoy serves the ConfigMap's manifests", || {
        envoy.family(WEB) == Some("IPv4")
    });
    assert!(!envoy.has_cluster("shop/api:9090"));

    // `kubectl edit configmap`: the kubelet swaps `..data`.
    let flipped = config.replace("primaryFamily: IPv4", "primaryFamily: IPv6");
    volume.write(
        &ws,
        "manifests",
        &[("config.yaml", flipped.clone()), ("web.yaml", web.clone())],
    );
    ws.until("a ConfigMap update reaches Envoy", || {
        envoy.family(WEB) == Some("IPv6")
    });
    // A key added, then a key removed.
    volume.write(
        &ws,
        "manifests",
        &[
            ("config.yaml", flipped.clone()),
            ("web.yaml", web.clone()),
            ("api.yaml", api),
        ],
    );
    ws.until("a key added to the ConfigMap reaches Envoy", || {
        envoy.has_cluster("shop/api:9090")
    });
    volume.write(&ws, "manifests", &[("config.yaml", flipped)]);
    ws.until("a key removed from the ConfigMap reaches Envoy", || {
        !envoy.has_cluster(WEB) && !envoy.has_cluster("shop/api:9090")
    });
}

/// The first PEM certificate in `text`, without whitespace (indentation differs).
fn first_certificate(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start;
    Some(text[start..end].split_whitespace().collect())
}

#[test]
fn the_readme_shared_443_example_serves_each_name_and_rotates_over_sds() {
    let _one = lock();
    let mut ws = Workspace::new();
    let envoy = ws.start_readme(&readme_command(
        "cargo run --release -- serve --manifests examples",
    ));
    let example = std::fs::read_to_string(ws.root().join("examples/shared-443.yaml")).unwrap();
    let example_cert = first_certificate(&example).unwrap();
    let blog = readme_command("openssl s_client -connect 127.0.0.1:8443 -servername blog");
    ws.until("the README's s_client gets the example certificate", || {
        first_certificate(&ws.output(&blog)).as_ref() == Some(&example_cert)
    });
    let nobody = readme_command("openssl s_client -connect 127.0.0.1:8443 -servername nobody");
    assert_eq!(
        first_certificate(&ws.output(&nobody)),
        None,
        "a name no Service claims gets no certificate"
    );
    let certs = envoy.get_json("/certs").to_string();
    assert!(certs.contains("www.blog.example.com"), "{certs}");

    // Rotation, as an editor saves: a new certificate and key, renamed over the file.
    let listener_stats = || {
        [
            "listener_modified",
            "listener_removed",
            "total_filter_chains_draining",
        ]
        .map(|s| envoy.stat(&format!("listener_manager.{s}")))
    };
    let before = listener_stats();
    let key = rcgen::KeyPair::generate().unwrap();
    let names = [
        "checkout.example.com",
        "blog.example.com",
        "www.blog.example.com",
    ];
    let cert = rcgen::CertificateParams::new(names.map(String::from).to_vec())
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n    ");
    let old_cert = example
        .split("tls.crt: |\n    ")
        .nth(1)
        .unwrap()
        .split("\n  tls.key")
        .next()
        .unwrap();
    let old_key = example.split("tls.key: |\n    ").nth(1).unwrap().trim_end();
    let rotated = example
        .replace(old_cert, &indent(&cert.pem()))
        .replace(old_key, &indent(&key.serialize_pem()));
    ws.write("examples/.shared-443.yaml.swp", &rotated);
    ws.sh("mv examples/.shared-443.yaml.swp examples/shared-443.yaml");
    let new_cert: String = cert.pem().split_whitespace().collect();
    let new_cert = new_cert
        .trim_end_matches("-----ENDCERTIFICATE-----")
        .to_owned();
    ws.until("the rotated certificate served", || {
        first_certificate(&ws.output(&blog)).as_ref() == Some(&new_cert)
    });
    assert_eq!(listener_stats(), before, "the rotation drained no listener");
}

/// The servers of the upstream block of `cluster` in an nginx file the agent wrote.
fn nginx_upstream(text: &str, cluster: &str) -> Vec<String> {
    let Some(at) = text.find(&format!("    # {cluster}\n    upstream ")) else {
        return Vec::new();
    };
    text[at..]
        .lines()
        .skip(2)
        .take_while(|l| l.trim() != "}")
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn the_readme_nginx_ingress_serves_the_examples_and_follows_the_flip() {
    let _one = lock();
    let mut ws = Workspace::new();
    ws.start(&readme_command(
        "cargo run --release -- serve --manifests examples",
    ));
    ws.start_shell(&readme_command("cargo run --release -- nginx "));
    let read = |file: &str| std::fs::read_to_string(ws.root().join("nginx/run").join(file));
    // nginx serves (the agent confirmed the reload) what the control plane sent.
    let applied = |family_prefix: &str| {
        let (Ok(http), Ok(applied)) = (read("http.conf"), read("applied")) else {
            return false;
        };
        let web = nginx_upstream(&http, WEB);
        http.contains(&format!("(generation {applied})"))
            && !web.is_empty()
            && web
                .iter()
                .all(|s| s.starts_with(&format!("server {family_prefix}")))
    };
    ws.until("nginx serves the examples", || applied("10.244."));
    for addr in [
        "127.0.0.1:8080",
        "[::1]:8080",
        "127.0.0.1:9090",
        "[::1]:9090",
    ] {
        assert!(
            std::net::TcpStream::connect(addr).is_ok(),
            "nginx listens on {addr}\n{}",
            ws.logs()
        );
    }
    let stream = read("stream.conf").unwrap();
    assert!(
        stream.contains("listen [::]:5353 udp reuseport ipv6only=on;"),
        "{stream}"
    );
    assert!(stream.contains("vault.example.com"), "{stream}");

    // The README's flip, exactly as written, reaches nginx.
    ws.sh(&readme_command("sed -i "));
    ws.until("the README's flip reaches nginx", || applied("[fd00:"));

    // The README's status: the nginx node, and what it refused.
    let status = Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
        .args(
            readme_command("cargo run --release -- status")
                .split_whitespace()
                .skip(4),
        )
        .output()
        .unwrap();
    let status = String::from_utf8(status.stdout).unwrap();
    let row = status
        .lines()
        .find(|l| l.starts_with("nginx-ingress "))
        .unwrap_or_else(|| panic!("no nginx row:\n{status}"));
    assert!(row.contains(" dualstack-xds-nginx "), "{row}");
    assert!(row.contains("not rendered for nginx"), "{row}");
}

#[test]
fn the_readme_render_command_prints_what_it_says() {
    let render = readme_command("cargo run -- render --manifests examples");
    let ws = Workspace::new();
    let args: Vec<&str> = render.split_whitespace().skip(3).collect();
    let output = Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
        .args(&args)
        .current_dir(ws.root())
        .output()
        .unwrap();
    assert!(output.status.success(), "{render}");
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let listeners: Vec<&str> = json["listeners"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert!(!listeners.is_empty());
    assert!(
        listeners
            .iter()
            .all(|l| l.ends_with(":ipv4") || l.starts_with("xds:")),
        "--node-families IPv4 gets IPv4 listeners only: {listeners:?}"
    );
}

#[test]
fn the_readme_names_no_file_outside_the_repository() {
    let text = std::fs::read_to_string(common::repo_path("README.md")).unwrap();
    assert!(
        !text.contains("../"),
        "README.md points outside the repository"
    );
    // Every repository path it names in backquotes exists.
    for quoted in text.split('`').skip(1).step_by(2) {
        let looks_like_path = [
            "docs/",
            "examples/",
            "envoy/",
            "deploy/",
            "scripts/",
            "tests/",
            "src/",
            "benches/",
        ]
        .iter()
        .any(|p| quoted.starts_with(p))
            && !quoted.contains(' ');
        if looks_like_path {
            assert!(
                common::repo_path(quoted.trim_end_matches('/')).exists(),
                "README.md names {quoted}, which does not exist"
            );
        }
    }
}

/// `--flag` words in `text`.
fn flags(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_reference_lists_every_flag_and_only_real_ones() {
    let doc = std::fs::read_to_string(common::repo_path("docs/reference.md")).unwrap();
    let synopsis: Vec<&str> = doc.lines().filter_map(|l| l.strip_prefix("    ")).collect();
    for sub in ["serve", "render", "bootstrap", "status", "certs", "nginx"] {
        let start = synopsis
            .iter()
            .position(|l| l.starts_with(&format!("dualstack-xds {sub} ")))
            .unwrap_or_else(|| panic!("docs/reference.md has no synopsis of {sub}"));
        let end = synopsis[start + 1..]
            .iter()
            .position(|l| l.starts_with("dualstack-xds "))
            .map_or(synopsis.len(), |i| start + 1 + i);
        let documented = flags(&synopsis[start..end].join("\n"));
        let help = Command::new(env!("CARGO_BIN_EXE_dualstack-xds"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8(help.stdout).unwrap();
        let mut real = flags(
            &help
                .lines()
                .filter(|l| l.trim_start().starts_with('-'))
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        real.remove("--help");
        assert_eq!(documented, real, "flags of `{sub}` in docs/reference.md");
    }
}
