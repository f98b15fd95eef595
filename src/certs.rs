//! `dualstack-xds certs`: the certificates mTLS needs, like Contour's certgen. A CA, a
//! server certificate for the control plane's Service names, and one client certificate
//! per fleet naming it (`spiffe://dualstack-xds/fleet/FLEET`, which the default
//! `--authorize-node` rule matches against the node's `cluster`), written as PEM files
//! (laid out as the Secrets mount them: `tls.crt`, `tls.key`, `ca.crt`) and as
//! Kubernetes Secret manifests. An existing CA in the output directory is reused, so
//! running it again issues fresh leaf certificates (a rotation) that every holder of the
//! old CA still trusts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::json;

/// The identity a fleet's client certificate carries.
pub fn fleet_identity(fleet: &str) -> String {
    format!("spiffe://dualstack-xds/fleet/{fleet}")
}

/// What to issue.
#[derive(Clone, Debug)]
pub struct CertsOptions {
    pub out: PathBuf,
    /// Where the control plane and the fleets run (the Secrets' namespace, and the
    /// server certificate's Service names).
    pub namespace: String,
    pub fleets: Vec<String>,
    /// More names (or IP addresses) for the server certificate.
    pub server_names: Vec<String>,
    /// Validity of the leaf certificates.
    pub days: u32,
}

/// A certificate and its key, as PEM.
struct Issued {
    cert: String,
    key: String,
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that lag.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "dualstack-xds");
    name.push(DnType::CommonName, common_name);
    name
}

/// The CA of `out`, created (valid ten years) when it has none.
fn ca(out: &Path) -> anyhow::Result<(Issuer<'static, KeyPair>, String)> {
    let (cert_path, key_path) = (out.join("ca.crt"), out.join("ca.key"));
    if key_path.exists() {
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let cert_pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a private key", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("{} is not a CA certificate", cert_path.display()))?;
        return Ok((issuer, cert_pem));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("dualstack-xds CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 3650);
    let cert = params.self_signed(&key)?;
    write(&cert_path, &cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok((Issuer::new(params, key), cert.pem()))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    days: u32,
) -> anyhow::Result<Issued> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, issuer)?;
    Ok(Issued {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn san(name: &str) -> anyhow::Result<SanType> {
    Ok(match name.parse() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The Secret (`kubernetes.io/tls`, with `ca.crt`) holding a certificate.
fn secret(name: &str, namespace: &str, issued: &Issued, ca: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "dualstack-xds"},
        },
        "stringData": {"tls.crt": issued.cert, "tls.key": issued.key, "ca.crt": ca},
    })
}

/// The name of a fleet's client certificate Secret.
pub fn fleet_secret(fleet: &str) -> String {
    format!("xds-client-{fleet}")
}

/// The name of the control plane's server certificate Secret.
pub const SERVER_SECRET: &str = "dualstack-xds-tls";

/// Issues everything; returns the files written.
pub fn generate(options: &CertsOptions) -> anyhow::Result<Vec<PathBuf>> {
    let CertsOptions {
        out,
        namespace,
        fleets,
        server_names,
        days,
    } = options;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (issuer, ca_pem) = ca(out)?;
    let mut written = vec![out.join("ca.crt"), out.join("ca.key")];
    let mut secrets = Vec::new();
    let mut issue = |dir: &str, secret_name: &str, issued: Issued| -> anyhow::Result<()> {
        let dir = out.join(dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write(&dir.join("tls.crt"), &issued.cert)?;
        write_private(&dir.join("tls.key"), &issued.key)?;
        write(&dir.join("ca.crt"), &ca_pem)?;
        written.extend(["tls.crt", "tls.key", "ca.crt"].map(|f| dir.join(f)));
        secrets.push(secret(secret_name, namespace, &issued, &ca_pem));
        Ok(())
    };
    let service = "dualstack-xds";
    let mut names: Vec<String> = vec![
        service.into(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    names.extend(server_names.iter().cloned());
    let sans = names
        .iter()
        .map(|n| san(n))
        .collect::<anyhow::Result<_>>()?;
    let server = leaf(
        &issuer,
        "dualstack-xds",
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
        *days,
    )?;
    issue("server", SERVER_SECRET, server)?;
    for fleet in fleets {
        anyhow::ensure!(
            !fleet.is_empty()
                && fleet
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "fleet {fleet:?}: letters, digits and '-' only"
        );
        let identity = SanType::URI(fleet_identity(fleet).as_str().try_into()?);
        let client = leaf(
            &issuer,
            fleet,
            vec![identity],
            ExtendedKeyUsagePurpose::ClientAuth,
            *days,
        )?;
        issue(fleet, &fleet_secret(fleet), client)?;
    }
    let manifests: Vec<String> = secrets
        .iter()
        .map(serde_yaml_ng::to_string)
        .collect::<Result<_, _>>()?;
    let path = out.join("secrets.yaml");
    write_private(
        &path,
        &format!(
            "# Generated by `dualstack-xds certs`: apply with `kubectl apply -f`. The CA's private\n# key stays in {}, not in the cluster.\n{}",
            out.display(),
            manifests.join("---\n")
        ),
    )?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::transport::certificate_identities;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn a_ca_a_server_and_fleets_and_the_ca_is_kept_on_a_second_run() {
        let dir = tempfile::tempdir().unwrap();
        let options = CertsOptions {
            out: dir.path().to_owned(),
            namespace: "dualstack-xds".into(),
            fleets: vec!["ingress-ipv4".into(), "ingress-ipv6".into()],
            server_names: vec!["xds.example.com".into()],
            days: 30,
        };
        let written = generate(&options).unwrap();
        assert!(written.contains(&dir.path().join("ingress-ipv6/tls.key")));
        let cert = |path: &str| CertificateDer::from_pem_file(dir.path().join(path)).unwrap();
        assert_eq!(
            certificate_identities(&cert("ingress-ipv4/tls.crt")),
            ["spiffe://dualstack-xds/fleet/ingress-ipv4"]
        );
        let server = certificate_identities(&cert("server/tls.crt"));
        assert!(server.contains(&"dualstack-xds.dualstack-xds.svc".to_string()));
        assert!(server.contains(&"xds.example.com".to_string()));
        let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let mode = std::os::unix::fs::MetadataExt::mode(
            &std::fs::metadata(dir.path().join("server/tls.key")).unwrap(),
        );
        assert_eq!(mode & 0o077, 0, "keys are private");
        let secrets = std::fs::read_to_string(dir.path().join("secrets.yaml")).unwrap();
        assert_eq!(secrets.matches("kind: Secret").count(), 3);
        let ca_key = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
        assert!(
            !secrets.contains(ca_key.trim()),
            "the CA's key stays out of the cluster"
        );
        // Again: new leaves, the same CA.
        let first = std::fs::read(dir.path().join("server/tls.crt")).unwrap();
        generate(&options).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca);
        assert_ne!(
            std::fs::read(dir.path().join("server/tls.crt")).unwrap(),
            first
        );
    }
}
