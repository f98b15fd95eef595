//! Bootstraps for the clients of this server: an Envoy ingress (ADS over SotW or Delta,
//! with the node metadata that names the families it binds) and a proxyless gRPC client
//! (gRFC A27 bootstrap JSON). Pure functions: `dualstack-xds bootstrap` prints them and
//! the files in envoy/ are their output.

use serde_json::{json, Value};

use crate::model::ListenerFamilies;
use crate::translate::LISTENER_FAMILIES_KEY;

/// What a bootstrap names.
#[derive(Clone, Debug)]
pub struct BootstrapOptions {
    pub node_id: String,
    pub cluster: String,
    /// The families the node binds listeners on.
    pub families: ListenerFamilies,
    /// The xDS server, `HOST:PORT` (a DNS name, an IPv4 address or a bracketed IPv6 one).
    pub xds_address: String,
    /// Delta xDS instead of state-of-the-world.
    pub delta: bool,
    /// Envoy's admin address, `IP:PORT`.
    pub admin_address: String,
    /// mTLS to the server; plaintext when `None`.
    pub tls: Option<BootstrapTls>,
}

/// Where a client finds its certificate, key and the CA (as `dualstack-xds certs` and a
/// mounted Secret lay them out: `tls.crt`, `tls.key`, `ca.crt`), and, for Envoy, the two
/// SDS files that point at them ([`sds_files`]): through them Envoy reloads the
/// certificate when the Secret is rotated.
#[derive(Clone, Debug)]
pub struct BootstrapTls {
    pub cert_dir: String,
    pub sds_dir: String,
}

/// The SDS resource names of Envoy's client certificate and of the server's CA.
const SDS_CERTIFICATE: &str = "xds-client-certificate";
const SDS_VALIDATION: &str = "xds-server-ca";

impl BootstrapTls {
    fn file(&self, name: &str) -> String {
        format!("{}/{name}", self.cert_dir.trim_end_matches('/'))
    }

    fn sds_path(&self, name: &str) -> String {
        format!("{}/{name}.yaml", self.sds_dir.trim_end_matches('/'))
    }

    /// An SDS config read from a file, reloaded when the certificates' directory changes
    /// (a Secret volume swaps its `..data` link).
    fn sds_config(&self, name: &str) -> Value {
        json!({
            "name": name,
            "sds_config": {
                "path_config_source": {
                    "path": self.sds_path(name),
                    "watched_directory": { "path": self.cert_dir },
                },
                "resource_api_version": "V3",
            },
        })
    }
}

/// The SDS files an Envoy bootstrap with [`BootstrapTls`] reads: (path, content).
pub fn sds_files(tls: &BootstrapTls) -> Vec<(String, String)> {
    let secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    let watched = json!({ "path": tls.cert_dir });
    let certificate = json!({ "resources": [{
        "@type": secret,
        "name": SDS_CERTIFICATE,
        "tls_certificate": {
            "certificate_chain": { "filename": tls.file("tls.crt") },
            "private_key": { "filename": tls.file("tls.key") },
            "watched_directory": watched,
        },
    }]});
    let validation = json!({ "resources": [{
        "@type": secret,
        "name": SDS_VALIDATION,
        "validation_context": {
            "trusted_ca": { "filename": tls.file("ca.crt") },
            "watched_directory": watched,
        },
    }]});
    [(SDS_CERTIFICATE, certificate), (SDS_VALIDATION, validation)]
        .into_iter()
        .map(|(name, value)| {
            let yaml = serde_yaml_ng::to_string(&value).expect("SDS file as YAML");
            (
                tls.sds_path(name),
                format!("# SDS file for the Envoy bootstrap of `dualstack-xds bootstrap --tls-dir`.\n{yaml}"),
            )
        })
        .collect()
}

/// Splits `HOST:PORT`, with IPv6 hosts in brackets.
pub fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = split_host_any_port(address)?;
    if port == 0 {
        return Err(format!("{address:?}: port 0 is not a port to connect to"));
    }
    Ok((host, port))
}

/// Splits `HOST:PORT` where the port may be 0 (an address to bind: any free port).
fn split_host_any_port(address: &str) -> Result<(String, u16), String> {
    let bad = || format!("{address:?} is not HOST:PORT (IPv6 hosts in brackets: [fd00::1]:18000)");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(bad)?.to_owned(),
        None if host.contains(':') => return Err(bad()),
        None => host.to_owned(),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

fn node(options: &BootstrapOptions) -> Value {
    json!({
        "id": options.node_id,
        "cluster": options.cluster,
        "metadata": { LISTENER_FAMILIES_KEY: options.families.to_string() },
    })
}

/// An Envoy bootstrap that takes every listener, cluster, endpoint and route from
/// dualstack-xds over ADS.
pub fn envoy(options: &BootstrapOptions) -> Result<Value, String> {
    let (host, port) = split_host_port(&options.xds_address)?;
    let (admin_host, admin_port) = split_host_any_port(&options.admin_address)?;
    let literal = host.parse::<std::net::IpAddr>().is_ok();
    let mut cluster = json!({
        "name": "dualstack-xds",
        // A DNS name (the control plane's Service) is re-resolved; replicas are spread.
        "type": if literal { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": { "interval": "30s", "timeout": "5s" },
                    },
                },
            },
        },
        "load_assignment": {
            "cluster_name": "dualstack-xds",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": host, "port_value": port },
            }}}]}],
        },
    });
    if !literal {
        // Whichever family the pod network offers.
        cluster["dns_lookup_family"] = json!("ALL");
    }
    if let Some(tls) = &options.tls {
        // The server must prove the name (or address) Envoy dials.
        let san_type = if literal { "IP_ADDRESS" } else { "DNS" };
        cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": if literal { Value::Null } else { json!(host) },
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificate_sds_secret_configs": [tls.sds_config(SDS_CERTIFICATE)],
                    "combined_validation_context": {
                        "default_validation_context": {
                            "match_typed_subject_alt_names": [{
                                "san_type": san_type,
                                "matcher": { "exact": host },
                            }],
                        },
                        "validation_context_sds_secret_config": tls.sds_config(SDS_VALIDATION),
                    },
                },
            },
        });
        if literal {
            cluster["transport_socket"]["typed_config"]
                .as_object_mut()
                .expect("an object")
                .remove("sni");
        }
    }
    Ok(json!({
        "node": node(options),
        "dynamic_resources": {
            "ads_config": {
                "api_type": if options.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "dualstack-xds" } }],
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
        },
        "static_resources": { "clusters": [cluster] },
        "admin": {
            "address": { "socket_address": { "address": admin_host, "port_value": admin_port } },
        },
    }))
}

/// A gRPC xDS bootstrap (gRFC A27) for proxyless clients: `GRPC_XDS_BOOTSTRAP` points at
/// it, and `xds:///SERVICE.NAMESPACE:PORT` targets resolve through this server.
pub fn grpc(options: &BootstrapOptions) -> Result<Value, String> {
    split_host_port(&options.xds_address)?;
    let creds = match &options.tls {
        None => json!({ "type": "insecure" }),
        Some(tls) => json!({ "type": "tls", "config": {
            "ca_certificate_file": tls.file("ca.crt"),
            "certificate_file": tls.file("tls.crt"),
            "private_key_file": tls.file("tls.key"),
        }}),
    };
    Ok(json!({
        "xds_servers": [{
            "server_uri": options.xds_address,
            "channel_creds": [creds],
            "server_features": ["xds_v3"],
        }],
        "node": node(options),
    }))
}

/// The bootstrap as YAML with a header comment.
pub fn envoy_yaml(options: &BootstrapOptions) -> Result<String, String> {
    let value = envoy(options)?;
    let yaml = serde_yaml_ng::to_string(&value).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Envoy bootstrap generated by `dualstack-xds bootstrap`: every listener, cluster,\n# endpoint and route comes from dualstack-xds at {} over ADS ({}).\n# This node binds listeners on: {}.\n{yaml}",
        options.xds_address,
        if options.delta { "Delta" } else { "state of the world" },
        options.families,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BootstrapOptions {
        BootstrapOptions {
            node_id: "ingress-v6-0".into(),
            cluster: "ingress-v6".into(),
            families: ListenerFamilies::IPV6,
            xds_address: "dualstack-xds.dualstack-xds.svc.cluster.local:18000".into(),
            delta: true,
            admin_address: "0.0.0.0:9901".into(),
            tls: None,
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("[fd00::1]:18000").unwrap(),
            ("fd00::1".into(), 18000)
        );
        assert_eq!(
            split_host_port("10.0.0.1:1").unwrap(),
            ("10.0.0.1".into(), 1)
        );
        assert!(split_host_port("fd00::1:18000").is_err());
        assert!(split_host_port("host").is_err());
        assert!(split_host_port("host:0").is_err());
    }

    #[test]
    fn envoy_bootstrap_names_the_families_and_the_protocol() {
        let b = envoy(&options()).unwrap();
        assert_eq!(b["node"]["metadata"][LISTENER_FAMILIES_KEY], "IPv6");
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        let cluster = &b["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"], "STRICT_DNS");
        let literal = envoy(&BootstrapOptions {
            xds_address: "[::1]:18000".into(),
            delta: false,
            ..options()
        })
        .unwrap();
        assert_eq!(literal["static_resources"]["clusters"][0]["type"], "STATIC");
        assert_eq!(
            literal["dynamic_resources"]["ads_config"]["api_type"],
            "GRPC"
        );
    }

    #[test]
    fn tls_bootstraps_name_the_files_and_check_the_server() {
        let tls = BootstrapTls {
            cert_dir: "/etc/dualstack-xds/tls".into(),
            sds_dir: "/etc/envoy".into(),
        };
        let b = envoy(&BootstrapOptions {
            tls: Some(tls.clone()),
            ..options()
        })
        .unwrap();
        let context = &b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"];
        assert_eq!(
            context["sni"],
            "dualstack-xds.dualstack-xds.svc.cluster.local"
        );
        let common = &context["common_tls_context"];
        assert_eq!(
            common["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]
                ["path"],
            "/etc/envoy/xds-client-certificate.yaml"
        );
        assert_eq!(
            common["combined_validation_context"]["default_validation_context"]
                ["match_typed_subject_alt_names"][0]["san_type"],
            "DNS"
        );
        let files = sds_files(&tls);
        assert_eq!(files[0].0, "/etc/envoy/xds-client-certificate.yaml");
        assert!(files[0].1.contains("/etc/dualstack-xds/tls/tls.key"));
        let g = grpc(&BootstrapOptions {
            tls: Some(tls),
            ..options()
        })
        .unwrap();
        assert_eq!(g["xds_servers"][0]["channel_creds"][0]["type"], "tls");
        assert_eq!(
            g["xds_servers"][0]["channel_creds"][0]["config"]["certificate_file"],
            "/etc/dualstack-xds/tls/tls.crt"
        );
    }

    #[test]
    fn grpc_bootstrap_is_a27_shaped() {
        let b = grpc(&options()).unwrap();
        assert_eq!(
            b["xds_servers"][0]["server_uri"],
            "dualstack-xds.dualstack-xds.svc.cluster.local:18000"
        );
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
        assert_eq!(b["node"]["id"], "ingress-v6-0");
    }
}
