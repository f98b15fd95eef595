//! deploy/ (kustomize) and the Dockerfile: every manifest parses as its k8s-openapi type
//! with no field lost (a misspelt field fails), RBAC is read-only and minimal, the
//! control plane is hardened and highly available, and the ingress fleets meet AKS's
//! dual-stack constraints.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::repo_path;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// Every document of deploy/*.yaml (kustomization.yaml aside), by kind/name.
fn documents() -> BTreeMap<String, Value> {
    documents_in("deploy")
}

/// Every document of the YAML files of `dir` (kustomization.yaml aside), by kind/name.
fn documents_in(dir: &str) -> BTreeMap<String, Value> {
    let mut docs = BTreeMap::new();
    for entry in std::fs::read_dir(repo_path(dir)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml")
            || path.file_name().unwrap() == "kustomization.yaml"
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            let key = format!(
                "{}/{}",
                value["kind"].as_str().unwrap(),
                value["metadata"]["name"].as_str().unwrap()
            );
            assert!(docs.insert(key.clone(), value).is_none(), "{key} twice");
        }
    }
    docs
}

/// Parses as `T` and checks nothing was dropped: serializing it back gives the input.
fn typed<T: DeserializeOwned + serde::Serialize>(value: &Value) -> T {
    let object: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| {
        panic!("{}: {e}", value["metadata"]["name"]);
    });
    assert_eq!(
        &serde_json::to_value(&object).unwrap(),
        value,
        "a field of {} {} is not part of the API (misspelt?)",
        value["kind"],
        value["metadata"]["name"]
    );
    object
}

fn get<T: DeserializeOwned + serde::Serialize>(docs: &BTreeMap<String, Value>, key: &str) -> T {
    typed(
        docs.get(key)
            .unwrap_or_else(|| panic!("deploy/ has no {key}")),
    )
}

#[test]
fn every_manifest_parses_and_kustomize_lists_them() {
    let docs = documents();
    for (key, value) in &docs {
        match value["kind"].as_str().unwrap() {
            "Namespace" => drop(typed::<Namespace>(value)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(value)),
            "ClusterRole" => drop(typed::<ClusterRole>(value)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(value)),
            "Deployment" => drop(typed::<Deployment>(value)),
            "Service" => drop(typed::<Service>(value)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(value)),
            "ConfigMap" => drop(typed::<ConfigMap>(value)),
            "NetworkPolicy" => drop(typed::<NetworkPolicy>(value)),
            other => panic!("{key}: unexpected kind {other}"),
        }
    }
    let kustomization: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_path("deploy/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for entry in std::fs::read_dir(repo_path("deploy")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name.as_str()),
                "{name} is not in kustomization.yaml"
            );
        }
    }
    for generator in kustomization["configMapGenerator"].as_array().unwrap() {
        for file in generator["files"].as_array().unwrap() {
            let path = file.as_str().unwrap().split_once('=').unwrap().1;
            assert!(repo_path("deploy").join(path).exists(), "{path}");
        }
    }
}

/// Every (API group, resource, sorted verbs) a role grants; no resource names or URLs.
fn grants(role: ClusterRole) -> Vec<(String, String, Vec<String>)> {
    let mut granted: Vec<(String, String, Vec<String>)> = Vec::new();
    for rule in role.rules.unwrap() {
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                granted.push((group.clone(), resource, verbs));
            }
        }
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
    }
    granted.sort();
    granted
}

#[test]
fn rbac_is_read_only_on_what_the_sources_watch() {
    let docs = documents();
    let role: ClusterRole = get(&docs, "ClusterRole/dualstack-xds");
    let read = vec!["get".to_string(), "list".into(), "watch".into()];
    assert_eq!(
        grants(role),
        vec![
            ("".into(), "configmaps".into(), read.clone()),
            ("".into(), "services".into(), read.clone()),
            (
                "discovery.k8s.io".into(),
                "endpointslices".into(),
                read.clone()
            ),
        ]
    );
    // Secrets in a role of their own, which clusters that refuse Secret access delete
    // (with --tls-termination=false).
    let secrets: ClusterRole = get(&docs, "ClusterRole/dualstack-xds-tls-secrets");
    assert_eq!(grants(secrets), vec![("".into(), "secrets".into(), read)]);
    for name in ["dualstack-xds", "dualstack-xds-tls-secrets"] {
        let binding: ClusterRoleBinding = get(&docs, &format!("ClusterRoleBinding/{name}"));
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, name);
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("ServiceAccount", "dualstack-xds")
        );
    }
    let _: ServiceAccount = get(&docs, "ServiceAccount/dualstack-xds");
    let deployment: Deployment = get(&docs, "Deployment/dualstack-xds");
    let spec = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("dualstack-xds"));
}

fn hardened(spec: &PodSpec, what: &str) {
    let pod = spec.security_context.clone().unwrap_or_default();
    for c in &spec.containers {
        let sc = c.security_context.clone().unwrap_or_default();
        assert!(
            pod.run_as_non_root == Some(true) || sc.run_as_non_root == Some(true),
            "{what}: non-root"
        );
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{what}: read-only root"
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{what}: no escalation"
        );
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()]),
            "{what}: capabilities dropped"
        );
        let resources = c.resources.clone().unwrap_or_default();
        assert!(
            resources.requests.is_some() && resources.limits.is_some(),
            "{what}: requests and limits"
        );
        assert!(c.readiness_probe.is_some(), "{what}: readiness probe");
    }
    let zones = spec.topology_spread_constraints.clone().unwrap_or_default();
    assert!(
        zones
            .iter()
            .any(|t| t.topology_key == "topology.kubernetes.io/zone"),
        "{what}: spread across zones"
    );
}

fn pdb_covers(docs: &BTreeMap<String, Value>, name: &str, labels: &BTreeMap<String, String>) {
    let pdb: PodDisruptionBudget = get(docs, &format!("PodDisruptionBudget/{name}"));
    let selector = pdb.spec.unwrap().selector.unwrap().match_labels.unwrap();
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "{name}: PDB selects the pods"
    );
}

#[test]
fn the_control_plane_is_highly_available_and_hardened() {
    let docs = documents();
    let deployment: Deployment = get(&docs, "Deployment/dualstack-xds");
    let spec = deployment.spec.unwrap();
    assert!(spec.replicas.unwrap_or(1) >= 2);
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    let pod = spec.template.spec.unwrap();
    hardened(&pod, "control plane");
    let c = &pod.containers[0];
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "serve");
    assert!(
        !args.iter().any(|a| a.starts_with("--manifests")),
        "in-cluster: watches the API"
    );
    pdb_covers(&docs, "dualstack-xds", &labels);
    let service: Service = get(&docs, "Service/dualstack-xds");
    let service = service.spec.unwrap();
    assert_eq!(service.selector.unwrap(), labels);
    assert!(service.ports.unwrap().iter().any(|p| p.port == 18000));
    // The mode ConfigMap the control plane is pointed at.
    let mode: ConfigMap = get(&docs, "ConfigMap/dualstack-xds");
    assert!(args.contains(&"--config-map=dualstack-xds/dualstack-xds".to_string()));
    assert!(mode.data.unwrap().contains_key("primaryFamily"));
    // mTLS from the mounted Secret, with node authorization; the debug views on
    // loopback only.
    for flag in [
        "--tls-cert=/etc/dualstack-xds/tls/tls.crt",
        "--tls-key=/etc/dualstack-xds/tls/tls.key",
        "--tls-client-ca=/etc/dualstack-xds/tls/ca.crt",
        "--authorize-node=spiffe://dualstack-xds/fleet/{cluster}",
        "--debug-addr=127.0.0.1:9101",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
    }
    assert_eq!(
        mounted_secret(&pod, "/etc/dualstack-xds/tls"),
        "dualstack-xds-tls"
    );
}

/// The Secret mounted at `path` in a pod.
fn mounted_secret(pod: &PodSpec, path: &str) -> String {
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.mount_path == path)
        .unwrap_or_else(|| panic!("nothing is mounted at {path}"));
    let volume = pod
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    volume.secret.and_then(|s| s.secret_name).unwrap()
}

#[test]
fn network_policies_admit_xds_clients_and_monitoring_only() {
    let docs = documents();
    let policy: NetworkPolicy = get(&docs, "NetworkPolicy/dualstack-xds");
    let spec = policy.spec.unwrap();
    let control_plane: Deployment = get(&docs, "Deployment/dualstack-xds");
    let labels = control_plane
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap();
    assert_eq!(spec.pod_selector.unwrap().match_labels.unwrap(), labels);
    assert_eq!(
        spec.policy_types.unwrap(),
        ["Ingress".to_string(), "Egress".to_string()]
    );
    let port = |p: &k8s_openapi::api::networking::v1::NetworkPolicyPort| match &p.port {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => *n,
        other => panic!("{other:?}"),
    };
    let ingress = spec.ingress.unwrap();
    assert_eq!(ingress.len(), 2);
    // xDS: only from pods labelled as xDS clients, and every fleet is labelled so.
    let xds = &ingress[0];
    assert_eq!(
        xds.ports
            .as_ref()
            .unwrap()
            .iter()
            .map(port)
            .collect::<Vec<_>>(),
        [18000]
    );
    let from = &xds.from.as_ref().unwrap()[0];
    let client_label = from.pod_selector.clone().unwrap().match_labels.unwrap();
    for fleet in ["envoy-ingress-ipv4", "envoy-ingress-ipv6"] {
        let deployment: Deployment = get(&docs, &format!("Deployment/{fleet}"));
        let pod_labels = deployment
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        assert!(
            client_label
                .iter()
                .all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{fleet} may reach the xDS port"
        );
    }
    // Metrics: only from the monitoring namespace.
    let metrics = &ingress[1];
    assert_eq!(
        metrics
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(port)
            .collect::<Vec<_>>(),
        [9100]
    );
    let namespace = metrics.from.as_ref().unwrap()[0]
        .namespace_selector
        .clone()
        .unwrap()
        .match_labels
        .unwrap();
    assert_eq!(namespace["kubernetes.io/metadata.name"], "monitoring");
    // Egress: DNS and the API server, nothing else.
    let egress = spec.egress.unwrap();
    let ports: Vec<i32> = egress
        .iter()
        .flat_map(|e| e.ports.clone().unwrap_or_default())
        .map(|p| port(&p))
        .collect();
    assert_eq!(ports, [53, 53, 443, 6443]);
    assert!(
        egress.iter().all(|e| e.ports.is_some()),
        "no rule opens every port"
    );
}

#[test]
fn cert_manager_issues_the_secrets_the_deploy_mounts() {
    let text = std::fs::read_to_string(repo_path("deploy/cert-manager/certificates.yaml")).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let certificate = |secret: &str| {
        docs.iter()
            .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == secret)
            .unwrap_or_else(|| panic!("no Certificate for {secret}"))
            .clone()
    };
    let server = certificate("dualstack-xds-tls");
    assert!(server["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .contains(&Value::from(
            "dualstack-xds.dualstack-xds.svc.cluster.local"
        )));
    for fleet in ["ingress-ipv4", "ingress-ipv6"] {
        let client = certificate(&format!("xds-client-{fleet}"));
        assert_eq!(
            client["spec"]["uris"][0],
            format!("spiffe://dualstack-xds/fleet/{fleet}")
        );
        assert_eq!(client["spec"]["issuerRef"]["name"], "dualstack-xds-ca");
    }
}

#[test]
fn ingress_fleets_meet_the_aks_dual_stack_constraints() {
    let docs = documents();
    for (name, family) in [
        ("envoy-ingress-ipv4", "IPv4"),
        ("envoy-ingress-ipv6", "IPv6"),
    ] {
        let service: Service = get(&docs, &format!("Service/{name}"));
        let spec = service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"), "{name}");
        assert_eq!(
            spec.ip_families,
            Some(vec![family.to_string()]),
            "{name}: one family"
        );
        assert_eq!(
            spec.ip_family_policy.as_deref(),
            Some("SingleStack"),
            "{name}"
        );
        assert_eq!(
            spec.external_traffic_policy.as_deref(),
            Some("Local"),
            "{name}"
        );
        let deployment: Deployment = get(&docs, &format!("Deployment/{name}"));
        let dspec = deployment.spec.unwrap();
        let labels = dspec.template.metadata.unwrap().labels.unwrap();
        assert!(
            spec.selector
                .clone()
                .unwrap()
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v)),
            "{name}: selects its fleet"
        );
        let pod = dspec.template.spec.unwrap();
        hardened(&pod, name);
        pdb_covers(&docs, name, &labels);
        // Every Service port lands on a named container port.
        let container_ports: Vec<String> = pod.containers[0]
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        // The shared web ports of an ingress: 80 and 443 (to Envoy's 8080 and 8443).
        let ports = spec.ports.clone().unwrap();
        for (public, container) in [(80, 8080), (443, 8443)] {
            let port = ports
                .iter()
                .find(|p| p.port == public)
                .unwrap_or_else(|| panic!("{name}: no port {public}"));
            assert_eq!(port.protocol.as_deref(), Some("TCP"));
            let target = format!("{:?}", port.target_port);
            let container_port = pod.containers[0]
                .ports
                .iter()
                .flatten()
                .find(|p| target.contains(&format!("{:?}", p.name.clone().unwrap_or_default())))
                .unwrap_or_else(|| panic!("{name}: {target}"));
            assert_eq!(container_port.container_port, container, "{name}");
        }
        for port in spec.ports.unwrap() {
            let target = match port.target_port.unwrap() {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
                other => panic!("{name}: targetPort {other:?} should name a container port"),
            };
            assert!(container_ports.contains(&target), "{name}: {target}");
        }
        // Its client certificate, and the xDS-client label the control plane admits.
        assert_eq!(
            mounted_secret(&pod, "/etc/dualstack-xds/tls"),
            format!("xds-client-ingress-{}", family.to_lowercase())
        );
        // Its bootstrap binds this family only and is what `bootstrap` prints.
        let bootstrap_file = format!("ingress/ingress-{}.yaml", family.to_lowercase());
        let bootstrap = std::fs::read_to_string(repo_path("deploy").join(&bootstrap_file)).unwrap();
        assert_eq!(
            bootstrap,
            std::fs::read_to_string(
                repo_path("envoy").join(Path::new(&bootstrap_file).file_name().unwrap())
            )
            .unwrap(),
            "deploy/{bootstrap_file} and envoy/ differ"
        );
        let parsed: Value = serde_yaml_ng::from_str(&bootstrap).unwrap();
        assert_eq!(
            parsed["node"]["metadata"]["dualstack-xds.io/listener-families"],
            family
        );
        // Its cluster is the fleet its certificate names.
        let args = pod.containers[0].args.clone().unwrap();
        assert!(args.contains(&format!(
            "--service-cluster=ingress-{}",
            family.to_lowercase()
        )));
    }
    for sds in ["xds-client-certificate.yaml", "xds-server-ca.yaml"] {
        assert_eq!(
            std::fs::read_to_string(repo_path("deploy/ingress").join(sds)).unwrap(),
            std::fs::read_to_string(repo_path("envoy").join(sds)).unwrap(),
            "deploy/ingress/{sds} and envoy/ differ"
        );
    }
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage");
    let final_stage = text.rsplit("\nFROM ").next().unwrap();
    assert!(final_stage
        .lines()
        .any(|l| l.starts_with("USER ") && !l.contains("root")));
    assert!(final_stage.contains("COPY --from=build"));
    // The nginx fleets' image: nginx's, with the agent, not as root.
    let nginx = text
        .split("\nFROM ")
        .find(|s| s.contains(" AS nginx-agent"))
        .expect("an nginx-agent stage");
    assert!(nginx.starts_with("nginx:"));
    assert!(nginx.contains("COPY --from=build /src/target/release/dualstack-xds"));
    assert!(nginx.lines().any(|l| l == "USER 101:101"));
    assert!(
        nginx.lines().any(|l| l == "STOPSIGNAL SIGQUIT"),
        "a graceful stop"
    );
}

#[test]
fn nginx_fleets_run_the_agent_under_the_aks_constraints() {
    let docs = documents_in("deploy/nginx");
    let base = documents();
    let kustomization: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_path("deploy/nginx/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "nginx-ingress-ipv4.yaml",
            "nginx-ingress-ipv6.yaml",
            "network-policy.yaml"
        ]
    );
    let policy: NetworkPolicy = get(&docs, "NetworkPolicy/nginx-ingress");
    // The control plane admits xDS clients by label.
    let control_plane: NetworkPolicy = get(&base, "NetworkPolicy/dualstack-xds");
    let client_label = control_plane.spec.unwrap().ingress.unwrap()[0]
        .from
        .as_ref()
        .unwrap()[0]
        .pod_selector
        .clone()
        .unwrap()
        .match_labels
        .unwrap();
    for family in ["IPv4", "IPv6"] {
        let fam = family.to_lowercase();
        let name = format!("nginx-ingress-{fam}");
        let service: Service = get(&docs, &format!("Service/{name}"));
        let spec = service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.ip_families, Some(vec![family.to_string()]));
        assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        let deployment: Deployment = get(&docs, &format!("Deployment/{name}"));
        let dspec = deployment.spec.unwrap();
        let labels = dspec.template.metadata.unwrap().labels.unwrap();
        assert!(spec
            .selector
            .clone()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v)));
        assert!(client_label.iter().all(|(k, v)| labels.get(k) == Some(v)));
        let pod = dspec.template.spec.unwrap();
        hardened(&pod, &name);
        pdb_covers(&docs, &name, &labels);
        let container = &pod.containers[0];
        let container_ports: Vec<(String, i32)> = container
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.container_port))
            .collect();
        for port in spec.ports.unwrap() {
            let target = match port.target_port.unwrap() {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
                other => panic!("{name}: targetPort {other:?}"),
            };
            let (_, number) = container_ports
                .iter()
                .find(|(n, _)| *n == target)
                .unwrap_or_else(|| panic!("{name}: {target}"));
            // Every Service port is open in the fleet's NetworkPolicy.
            let open = policy.spec.clone().unwrap().ingress.unwrap()[0]
                .ports
                .clone()
                .unwrap();
            assert!(
                open.iter().any(|p| p.port
                    == Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(*number)
                    )
                    && p.protocol == port.protocol),
                "{name}: {target} closed"
            );
        }
        // The agent: the family's identity and listeners, nginx under it.
        let args = container.args.clone().unwrap();
        for arg in [
            format!("--cluster=ingress-{fam}"),
            format!("--families={family}"),
            "--tls-dir=/etc/dualstack-xds/tls".to_string(),
            "--config-dir=/var/run/dualstack-xds".to_string(),
        ] {
            assert!(args.contains(&arg), "{name}: {arg}");
        }
        assert_eq!(args[0], "nginx");
        let exec = &args[args.iter().position(|a| a == "--").unwrap() + 1..];
        assert_eq!(
            exec,
            [
                "nginx",
                "-e",
                "stderr",
                "-c",
                "/etc/nginx/dualstack-xds/nginx.conf",
                "-g",
                "daemon off;"
            ]
        );
        assert_eq!(
            mounted_secret(&pod, "/etc/dualstack-xds/tls"),
            format!("xds-client-ingress-{fam}")
        );
        // Ready once nginx took a configuration.
        let probe = container.readiness_probe.clone().unwrap().exec.unwrap();
        assert_eq!(
            probe.command.unwrap(),
            ["test", "-s", "/var/run/dualstack-xds/applied"]
        );
    }
}

/// The fleets' nginx.conf is valid for a real nginx and includes the agent's files where
/// they belong (stream.conf at the main level, http.conf inside http {}).
#[test]
fn the_nginx_fleet_configuration_is_valid_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    // Rendered files, as the agent writes them, for a Service of each kind.
    std::fs::write(
        run.join("stream.conf"),
        "stream {\n    upstream u { server 127.0.0.1:1; }\n    server { listen 127.0.0.1:15001; proxy_pass u; }\n}\n",
    )
    .unwrap();
    std::fs::write(
        run.join("http.conf"),
        "    server { listen 127.0.0.1:15002 default_server; return 404; }\n",
    )
    .unwrap();
    let conf = std::fs::read_to_string(repo_path("deploy/nginx/nginx.conf"))
        .unwrap()
        .replace("/var/run/dualstack-xds", &run.display().to_string());
    // Debian's nginx has the stream module as a dynamic module; nginx's image has it built in.
    let conf = format!("load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n{conf}");
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let out = std::process::Command::new(common::nginx_binary())
        .args(["-e", "stderr", "-t", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(repo_path("deploy/nginx/nginx.conf")).unwrap();
    let http = text.find("http {").unwrap();
    assert!(
        text.find("include /var/run/dualstack-xds/stream.conf;")
            .unwrap()
            < http
    );
    assert!(
        text.find("include /var/run/dualstack-xds/http.conf;")
            .unwrap()
            > http
    );
}
