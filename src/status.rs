//! `dualstack-xds status`: one row per connected client, read from a running server's
//! `/debug/clients`.

use std::net::SocketAddr;

use anyhow::Context;

use crate::snapshot::ResourceType;

/// Every connected stream, as `/debug/clients` at `addr` describes it.
pub async fn clients(addr: SocketAddr) -> anyhow::Result<Vec<serde_json::Value>> {
    get_json(addr, "/debug/clients").await
}

/// GET a JSON document from the admin API (plain HTTP/1.1 on loopback, no client crate).
async fn get_json<T: serde::de::DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<T> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the admin API at {addr}"))?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("a malformed HTTP response from the admin API")?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{addr}{path}: {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_str(body).with_context(|| format!("decoding {path}"))
}

/// One row per stream, from `/debug/clients`: node, its user agent (an Envoy, an nginx
/// agent, a gRPC library), its cluster and families, the
/// stream kind, per type the acked version, what is pending, the last NACK.
pub fn table(clients: &[serde_json::Value]) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut rows = vec![[
        "NODE".to_string(),
        "AGENT".into(),
        "CLUSTER".into(),
        "FAMILIES".into(),
        "STREAM".into(),
        format!(
            "ACKED ({})",
            ResourceType::ALL.map(ResourceType::short_name).join(" ")
        ),
        "PENDING".into(),
        "LAST NACK".into(),
    ]];
    for c in clients {
        let types = c["types"].as_array().cloned().unwrap_or_default();
        let of = |ty: ResourceType| types.iter().find(|t| t["type_url"] == ty.type_url());
        let acked: Vec<String> = ResourceType::ALL
            .into_iter()
            .map(|ty| {
                of(ty)
                    .and_then(|t| t["acked_version"].as_str())
                    .map_or("-".to_string(), |v| v[..v.len().min(8)].to_string())
            })
            .collect();
        let pending: Vec<&str> = ResourceType::ALL
            .into_iter()
            .filter(|ty| of(*ty).is_some_and(|t| !t["pending_nonce"].is_null()))
            .map(ResourceType::short_name)
            .collect();
        let nack = ResourceType::ALL
            .into_iter()
            .filter_map(|ty| {
                let message = of(ty)?["last_nack"]["message"].as_str()?;
                Some(format!(
                    "{}: {}",
                    ty.short_name(),
                    message.lines().next().unwrap_or_default()
                ))
            })
            .next_back()
            .unwrap_or_else(|| "-".into());
        let kind = format!(
            "{}{}",
            text(&c["kind"]),
            if c["aggregated"] == true { " ads" } else { "" }
        );
        rows.push([
            text(&c["node_id"]),
            match text(&c["user_agent"]) {
                a if a.is_empty() => "-".into(),
                a => a,
            },
            text(&c["cluster"]),
            text(&c["group"]),
            kind,
            acked.join(" "),
            if pending.is_empty() {
                "-".into()
            } else {
                pending.join(",")
            },
            nack,
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_tells_nginx_nodes_from_envoys_and_shows_their_nacks() {
        let clients = serde_json::json!([
            {"node_id": "envoy-1", "user_agent": "envoy", "cluster": "ingress-ipv4",
             "group": "IPv4", "kind": "sotw", "aggregated": true,
             "types": [{"type_url": ResourceType::Cluster.type_url(), "acked_version": "0123456789abcdef", "pending_nonce": null}]},
            {"node_id": "nginx-1", "user_agent": "dualstack-xds-nginx", "cluster": "ingress-ipv6",
             "group": "IPv6", "kind": "delta", "aggregated": true,
             "types": [{"type_url": ResourceType::Cluster.type_url(), "acked_version": null, "pending_nonce": null,
                        "last_nack": {"message": "shop/db:5432: PROXY protocol v2\nmore"}}]}
        ]);
        let table = table(clients.as_array().unwrap());
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("NODE     AGENT                CLUSTER"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("envoy-1  envoy                ingress-ipv4"),
            "{table}"
        );
        assert!(lines[1].contains("sotw ads   01234567 - - - -"), "{table}");
        assert!(
            lines[2].starts_with("nginx-1  dualstack-xds-nginx  ingress-ipv6"),
            "{table}"
        );
        assert!(
            lines[2].ends_with("cds: shop/db:5432: PROXY protocol v2"),
            "{table}"
        );
    }
}
