//! Node authorization: which certificate identity may claim which node. A rule is a
//! template over the node's `cluster` and `id` (`spiffe://dualstack-xds/fleet/{cluster}`);
//! a client is authorized when, for some rule, the template filled with what its node
//! claims equals one of its certificate's identities (URI or DNS subject alternative
//! names). I/O-free: the transport hands in the identities it verified.

use std::fmt;
use std::str::FromStr;

use envoy_types::pb::envoy::config::core::v3::Node;

/// The rule used when mTLS is on and no rule is given: a fleet's certificate (from
/// `dualstack-xds certs`) names the fleet, and its nodes' `cluster` is that fleet.
pub const DEFAULT_RULE: &str = "spiffe://dualstack-xds/fleet/{cluster}";

/// One `--authorize-node` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityTemplate {
    parts: Vec<Part>,
    text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Cluster,
    NodeId,
}

impl FromStr for IdentityTemplate {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if rest[..open].contains('}') {
                return Err(format!("{text:?}: a }} without a {{"));
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{text:?}: an unclosed {{"))?
                + open;
            parts.push(match &rest[open + 1..close] {
                "cluster" => Part::Cluster,
                "node_id" => Part::NodeId,
                other => {
                    return Err(format!(
                        "{text:?}: {{{other}}} is not a placeholder ({{cluster}} or {{node_id}})"
                    ))
                }
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?}: a }} without a {{"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        if parts.iter().all(|p| matches!(p, Part::Literal(_))) {
            return Err(format!(
                "{text:?} names neither {{cluster}} nor {{node_id}}: every client would be authorized as every node"
            ));
        }
        Ok(IdentityTemplate {
            parts,
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for IdentityTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl IdentityTemplate {
    /// The identity a node's certificate must carry, or `None` when the node leaves a
    /// placeholder empty (nothing may match an empty claim).
    fn expected(&self, node: &Node) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Cluster if node.cluster.is_empty() => return None,
                Part::Cluster => out.push_str(&node.cluster),
                Part::NodeId if node.id.is_empty() => return None,
                Part::NodeId => out.push_str(&node.id),
            }
        }
        Some(out)
    }
}

/// Why a client may not claim a node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the client presented no certificate identity (URI or DNS name)")]
    NoIdentity,
    #[error("the client's certificate ({identities}) does not authorize node {node:?} of cluster {cluster:?} (rules: {rules})")]
    Mismatch {
        identities: String,
        node: String,
        cluster: String,
        rules: String,
    },
}

impl Denied {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::NoIdentity => "no_identity",
            Denied::Mismatch { .. } => "mismatch",
        }
    }
}

/// The rules: any one that matches authorizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAuthorization {
    rules: Vec<IdentityTemplate>,
}

impl NodeAuthorization {
    /// `rules`, or the default rule when there are none.
    pub fn new(rules: Vec<IdentityTemplate>) -> Self {
        let rules = if rules.is_empty() {
            vec![DEFAULT_RULE.parse().expect("the default rule parses")]
        } else {
            rules
        };
        NodeAuthorization { rules }
    }

    /// Whether a client with these certificate identities may claim `node`.
    pub fn check(&self, identities: &[String], node: &Node) -> Result<(), Denied> {
        if identities.is_empty() {
            return Err(Denied::NoIdentity);
        }
        let allowed = self
            .rules
            .iter()
            .filter_map(|rule| rule.expected(node))
            .any(|expected| identities.contains(&expected));
        if allowed {
            return Ok(());
        }
        Err(Denied::Mismatch {
            identities: identities.join(", "),
            node: node.id.clone(),
            cluster: node.cluster.clone(),
            rules: self
                .rules
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, cluster: &str) -> Node {
        Node {
            id: id.into(),
            cluster: cluster.into(),
            ..Default::default()
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_default_rule_binds_a_fleet_certificate_to_its_cluster() {
        let auth = NodeAuthorization::new(vec![]);
        let fleet = ids(&["spiffe://dualstack-xds/fleet/ingress-ipv4"]);
        assert_eq!(auth.check(&fleet, &node("envoy-1", "ingress-ipv4")), Ok(()));
        let denied = auth
            .check(&fleet, &node("envoy-1", "ingress-ipv6"))
            .unwrap_err();
        assert_eq!(denied.reason(), "mismatch");
        assert!(denied.to_string().contains("ingress-ipv6"), "{denied}");
        assert_eq!(
            auth.check(&[], &node("envoy-1", "ingress-ipv4")),
            Err(Denied::NoIdentity)
        );
        // An empty claim matches nothing, even a certificate naming an empty fleet.
        let empty = ids(&["spiffe://dualstack-xds/fleet/"]);
        assert!(auth.check(&empty, &node("envoy-1", "")).is_err());
    }

    #[test]
    fn templates_over_node_id_and_cluster() {
        let rule: IdentityTemplate = "{node_id}.{cluster}.nodes.example".parse().unwrap();
        let auth = NodeAuthorization::new(vec![rule]);
        let cert = ids(&["spiffe://x/y", "edge-7.ingress.nodes.example"]);
        assert!(auth.check(&cert, &node("edge-7", "ingress")).is_ok());
        assert!(auth.check(&cert, &node("edge-8", "ingress")).is_err());
        // A node id cannot smuggle in the rest of the template.
        assert!(auth
            .check(&cert, &node("edge-7.ingress.nodes.example#", ""))
            .is_err());
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in ["spiffe://fixed", "{cluster", "x/{tenant}", "a}b{cluster}"] {
            assert!(bad.parse::<IdentityTemplate>().is_err(), "{bad}");
        }
    }
}
