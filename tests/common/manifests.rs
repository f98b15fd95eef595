//! Kubernetes objects for tests and benchmarks, as a manifest file or the API server holds
//! them: Services labelled for exposure, EndpointSlices, the mode ConfigMap.
//!
//! ```ignore
//! let web = service("shop", "web").app_port("http", 80, "http").annotate(LISTENER_PORTS, "80=8080");
//! let v4 = slice("shop", "web-4", "web", "IPv4").port("http", 8080).endpoint("10.0.0.1");
//! std::fs::write(dir.join("web.yaml"), yaml(&[web, v4]))?;
//! ```

use serde_json::{json, Value};

/// A Kubernetes object under construction.
#[derive(Clone, Debug)]
pub struct Object(pub Value);

/// A Service in `namespace`, labelled `dualstack-xds.io/expose: "true"`, without ports.
pub fn service(namespace: &str, name: &str) -> Object {
    Object(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"dualstack-xds.io/expose": "true"},
        },
        "spec": {"ports": []},
    }))
}

/// An EndpointSlice of `service` with addresses of `family` (`IPv4` or `IPv6`).
pub fn slice(namespace: &str, name: &str, service: &str, family: &str) -> Object {
    Object(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": family,
        "ports": [],
        "endpoints": [],
    }))
}

/// The mode ConfigMap (`dualstack-xds/dualstack-xds`) with `primaryFamily: family`.
pub fn config_map(family: &str) -> Object {
    Object(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "dualstack-xds", "namespace": "dualstack-xds"},
        "data": {"primaryFamily": family},
    }))
}

/// A `kubernetes.io/tls` Secret with a certificate and its key (PEM).
pub fn tls_secret(namespace: &str, name: &str, cert: &str, key: &str) -> Object {
    Object(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"tls.crt": cert, "tls.key": key},
    }))
}

impl Object {
    fn ports(&mut self) -> &mut Vec<Value> {
        let ports = match self.0["kind"].as_str() {
            Some("Service") => &mut self.0["spec"]["ports"],
            _ => &mut self.0["ports"],
        };
        ports.as_array_mut().expect("ports")
    }

    /// A port with extra fields (`protocol`, `appProtocol`).
    pub fn port_with(mut self, name: &str, number: u16, extra: Value) -> Self {
        let mut port = json!({"name": name, "port": number});
        if let (Some(port), Some(extra)) = (port.as_object_mut(), extra.as_object()) {
            port.extend(extra.clone());
        }
        self.ports().push(port);
        self
    }

    /// A TCP port: a Service's `spec.ports`, an EndpointSlice's `ports`.
    pub fn port(self, name: &str, number: u16) -> Self {
        self.port_with(name, number, json!({}))
    }

    /// A UDP port.
    pub fn udp_port(self, name: &str, number: u16) -> Self {
        self.port_with(name, number, json!({"protocol": "UDP"}))
    }

    /// A TCP port with an `appProtocol` (`http`, `grpc`, `kubernetes.io/h2c`).
    pub fn app_port(self, name: &str, number: u16, app_protocol: &str) -> Self {
        self.port_with(name, number, json!({"appProtocol": app_protocol}))
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["annotations"][key] = json!(value);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["labels"][key] = json!(value);
        self
    }

    /// A ready endpoint with one address.
    pub fn endpoint(self, address: &str) -> Self {
        self.endpoint_with(json!({"addresses": [address], "conditions": {"ready": true}}))
    }

    /// An endpoint as given (conditions, zone, targetRef...).
    pub fn endpoint_with(mut self, endpoint: Value) -> Self {
        self.0["endpoints"]
            .as_array_mut()
            .expect("an EndpointSlice")
            .push(endpoint);
        self
    }

    /// A field set to any value (`spec.ports` replaced, a wrong type for a bad-input test).
    pub fn set(mut self, pointer: &str, value: Value) -> Self {
        *self.0.pointer_mut(pointer).expect("a field that exists") = value;
        self
    }

    pub fn json(&self) -> Value {
        self.0.clone()
    }
}

/// Objects as one multi-document YAML file.
pub fn yaml(objects: &[Object]) -> String {
    objects
        .iter()
        .map(|o| serde_yaml_ng::to_string(&o.0).expect("YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}
