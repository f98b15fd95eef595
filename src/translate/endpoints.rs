//! ClusterLoadAssignments assembled from encoded slices.
//!
//! A Service with 10,000 endpoints has about a hundred EndpointSlices per family. Each
//! slice's endpoints are encoded once (as the `lb_endpoints` entries of a
//! `LocalityLbEndpoints`, grouped by zone) and kept; when one slice changes, only that
//! slice is encoded again and the Service's ClusterLoadAssignment is a concatenation of
//! the kept pieces. Protobuf allows this: a repeated field is the concatenation of its
//! entries. The result is byte for byte what encoding the whole message would give
//! (tested below).
//!
//! Duplicates (the same address in two slices of a family, as during an EndpointSlice
//! migration) are tracked by counting addresses; while a family has any, its endpoints
//! are merged the slow way ([`Endpoints::merged`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Locality;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use crate::model::{Endpoint, Endpoints, Family, Slice};
use crate::snapshot::{Resource, ResourceType};

use super::envoy::lb_endpoint;

/// Encoded `lb_endpoints` entries by zone, in zone order.
type ZoneChunks = Vec<(Option<String>, Vec<u8>)>;

/// One slice and its encoded endpoints, per port name (computed when first needed).
#[derive(Debug)]
struct CachedSlice {
    slice: Arc<Slice>,
    chunks: BTreeMap<String, ZoneChunks>,
}

/// What translation keeps of one Service's endpoints.
#[derive(Debug, Default)]
pub(super) struct EndpointCache {
    slices: BTreeMap<String, CachedSlice>,
    /// How many times each address appears, per family.
    counts: [HashMap<IpAddr, u32>; 2],
    /// How many addresses appear more than once, per family.
    duplicates: [usize; 2],
}

fn index(family: Family) -> usize {
    match family {
        Family::IPv4 => 0,
        Family::IPv6 => 1,
    }
}

impl EndpointCache {
    /// Brings the cache in line with `endpoints`, touching only slices that changed.
    pub(super) fn sync(&mut self, endpoints: &Endpoints) {
        let gone: Vec<String> = self
            .slices
            .keys()
            .filter(|name| !endpoints.slices.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(cached) = self.slices.remove(&name) {
                self.count(&cached.slice, false);
            }
        }
        for (name, slice) in &endpoints.slices {
            match self.slices.get(name) {
                Some(cached)
                    if Arc::ptr_eq(&cached.slice, slice)
                        || cached.slice.digest() == slice.digest() => {}
                _ => {
                    if let Some(old) = self.slices.remove(name) {
                        self.count(&old.slice, false);
                    }
                    self.count(slice, true);
                    self.slices.insert(
                        name.clone(),
                        CachedSlice {
                            slice: slice.clone(),
                            chunks: BTreeMap::new(),
                        },
                    );
                }
            }
        }
    }

    fn count(&mut self, slice: &Slice, add: bool) {
        let f = index(slice.family());
        for endpoint in slice.endpoints() {
            let count = self.counts[f].entry(endpoint.address).or_insert(0);
            if add {
                *count += 1;
                if *count == 2 {
                    self.duplicates[f] += 1;
                }
            } else {
                *count -= 1;
                if *count == 1 {
                    self.duplicates[f] -= 1;
                } else if *count == 0 {
                    self.counts[f].remove(&endpoint.address);
                }
            }
        }
    }

    /// The ClusterLoadAssignment of one Service port: the primary family's endpoints at
    /// priority 0 and, with failover, the other family's at priority 1.
    pub(super) fn load_assignment(
        &mut self,
        name: &Arc<str>,
        port_name: &str,
        endpoints: &Endpoints,
        primary: Family,
        failover: bool,
    ) -> Resource {
        let families: &[Family] = if failover {
            &[primary, primary.other()]
        } else {
            &[primary]
        };
        // Encode what is missing first, then read.
        let mut merged: [Option<ZoneChunks>; 2] = [None, None];
        for &family in families {
            if self.duplicates[index(family)] == 0 {
                for cached in self.slices.values_mut() {
                    if cached.slice.family() == family && !cached.chunks.contains_key(port_name) {
                        let chunks = encode_slice(&cached.slice, port_name);
                        cached.chunks.insert(port_name.to_owned(), chunks);
                    }
                }
            } else {
                let endpoints = endpoints.merged(family, port_name);
                merged[index(family)] = Some(encode_endpoints(
                    endpoints.iter().map(|(e, port)| (e, *port)),
                ));
            }
        }
        let mut priorities: Vec<BTreeMap<Option<&str>, Vec<&[u8]>>> = Vec::new();
        for &family in families {
            let mut zones: BTreeMap<Option<&str>, Vec<&[u8]>> = BTreeMap::new();
            let pieces: Box<dyn Iterator<Item = &(Option<String>, Vec<u8>)>> =
                match &merged[index(family)] {
                    Some(chunks) => Box::new(chunks.iter()),
                    None => Box::new(
                        self.slices
                            .values()
                            .filter(|c| c.slice.family() == family)
                            .filter_map(|c| c.chunks.get(port_name))
                            .flatten(),
                    ),
                };
            for (zone, bytes) in pieces {
                zones.entry(zone.as_deref()).or_default().push(bytes);
            }
            priorities.push(zones);
        }
        Resource::from_encoded_with_references(
            ResourceType::Endpoint,
            name.clone(),
            &assemble(name, &priorities, failover),
            Vec::new(),
        )
    }
}

/// A slice's endpoints that serve `port_name`, encoded by zone.
fn encode_slice(slice: &Slice, port_name: &str) -> ZoneChunks {
    match slice.ports().get(port_name) {
        Some(&port) => encode_endpoints(slice.endpoints().iter().map(|e| (e, port))),
        None => Vec::new(),
    }
}

fn encode_endpoints<'a>(endpoints: impl Iterator<Item = (&'a Endpoint, u16)>) -> ZoneChunks {
    let mut by_zone: BTreeMap<Option<&str>, Vec<u8>> = BTreeMap::new();
    for (endpoint, port) in endpoints {
        let buf = by_zone.entry(endpoint.zone.as_deref()).or_default();
        // LocalityLbEndpoints.lb_endpoints = 2
        prost::encoding::message::encode(2, &lb_endpoint(endpoint, port), buf);
    }
    by_zone
        .into_iter()
        .map(|(zone, bytes)| (zone.map(str::to_owned), bytes))
        .collect()
}

/// Encodes a ClusterLoadAssignment from pieces: `priorities[i]` holds the encoded
/// `lb_endpoints` of priority `i` by zone. With failover, an empty priority 0 is kept
/// (priorities are contiguous: all traffic then goes to priority 1).
fn assemble(
    name: &str,
    priorities: &[BTreeMap<Option<&str>, Vec<&[u8]>>],
    failover: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    // ClusterLoadAssignment.cluster_name = 1
    prost::encoding::string::encode(1, &name.to_owned(), &mut out);
    for (priority, zones) in priorities.iter().enumerate() {
        let priority = priority as u32;
        if zones.is_empty() && priority == 0 && failover {
            // An empty LocalityLbEndpoints.
            encode_key(2, WireType::LengthDelimited, &mut out);
            encode_varint(0, &mut out);
            continue;
        }
        for (zone, pieces) in zones {
            let locality = zone.map(|z| Locality {
                zone: z.to_owned(),
                ..Default::default()
            });
            let locality_len = locality.as_ref().map_or(0, |l| {
                key_len(1) + encoded_len_varint(l.encoded_len() as u64) + l.encoded_len()
            });
            let priority_len = if priority == 0 {
                0
            } else {
                prost::encoding::uint32::encoded_len(5, &priority)
            };
            let body: usize =
                locality_len + pieces.iter().map(|p| p.len()).sum::<usize>() + priority_len;
            // ClusterLoadAssignment.endpoints = 2
            encode_key(2, WireType::LengthDelimited, &mut out);
            encode_varint(body as u64, &mut out);
            out.reserve(body);
            if let Some(locality) = &locality {
                // LocalityLbEndpoints.locality = 1
                prost::encoding::message::encode(1, locality, &mut out);
            }
            for piece in pieces {
                out.extend_from_slice(piece);
            }
            if priority != 0 {
                // LocalityLbEndpoints.priority = 5
                prost::encoding::uint32::encode(5, &priority, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EndpointState;
    use crate::translate::envoy::load_assignment;

    fn endpoint(ip: &str, zone: Option<&str>, state: EndpointState) -> Endpoint {
        Endpoint {
            address: ip.parse().unwrap(),
            state,
            zone: zone.map(Into::into),
            target: None,
        }
    }

    fn slice(family: Family, port: u16, endpoints: Vec<Endpoint>) -> Arc<Slice> {
        Arc::new(Slice::new(
            family,
            BTreeMap::from([("http".to_string(), port)]),
            endpoints,
        ))
    }

    fn endpoints() -> Endpoints {
        use EndpointState::*;
        let mut e = Endpoints::default();
        e.slices.insert(
            "web-a".into(),
            slice(
                Family::IPv4,
                8080,
                vec![
                    endpoint("10.0.0.3", Some("z2"), Ready),
                    endpoint("10.0.0.1", Some("z1"), Draining),
                    endpoint("10.0.0.4", None, Ready),
                ],
            ),
        );
        e.slices.insert(
            "web-b".into(),
            slice(
                Family::IPv4,
                8080,
                vec![endpoint("10.0.0.2", Some("z1"), Ready)],
            ),
        );
        e.slices.insert(
            "web-v6".into(),
            slice(
                Family::IPv6,
                8080,
                vec![endpoint("fd00::1", Some("z1"), Ready)],
            ),
        );
        e
    }

    /// The same message built whole and encoded by prost, endpoints in the same order.
    fn reference(e: &Endpoints, primary: Family, failover: bool) -> Vec<u8> {
        let in_order = |family: Family| -> Vec<Endpoint> {
            let mut all: Vec<Endpoint> = e
                .of_family(family)
                .flat_map(|(_, s)| s.endpoints().iter().cloned())
                .collect();
            // Zone order, then slice order (a stable sort keeps it).
            all.sort_by(|a, b| a.zone.cmp(&b.zone));
            all
        };
        let primary_eps = in_order(primary);
        let other = in_order(primary.other());
        load_assignment(
            "ns/web:80",
            8080,
            &primary_eps,
            failover.then_some(&other[..]),
        )
        .encode_to_vec()
    }

    #[test]
    fn assembled_bytes_equal_whole_encoding() {
        let e = endpoints();
        for primary in Family::BOTH {
            for failover in [false, true] {
                let mut cache = EndpointCache::default();
                cache.sync(&e);
                let r = cache.load_assignment(&"ns/web:80".into(), "http", &e, primary, failover);
                assert_eq!(
                    r.to_any().value,
                    reference(&e, primary, failover),
                    "primary {primary}, failover {failover}"
                );
            }
        }
    }

    #[test]
    fn empty_primary_with_failover_keeps_an_empty_priority_zero() {
        let mut e = endpoints();
        e.slices.retain(|_, s| s.family() == Family::IPv4);
        let mut cache = EndpointCache::default();
        cache.sync(&e);
        let r = cache.load_assignment(&"ns/web:80".into(), "http", &e, Family::IPv6, true);
        assert_eq!(r.to_any().value, reference(&e, Family::IPv6, true));
    }

    #[test]
    fn a_changed_slice_is_reencoded_and_duplicates_are_merged() {
        let mut e = endpoints();
        let mut cache = EndpointCache::default();
        cache.sync(&e);
        let before = cache.load_assignment(&"ns/web:80".into(), "http", &e, Family::IPv4, false);
        // web-b now also lists 10.0.0.1 (ready): a duplicate of web-a's draining copy.
        e.slices.insert(
            "web-b".into(),
            slice(
                Family::IPv4,
                8080,
                vec![
                    endpoint("10.0.0.2", Some("z1"), EndpointState::Ready),
                    endpoint("10.0.0.1", Some("z1"), EndpointState::Ready),
                ],
            ),
        );
        cache.sync(&e);
        assert_eq!(cache.duplicates, [1, 0]);
        let dup = cache.load_assignment(&"ns/web:80".into(), "http", &e, Family::IPv4, false);
        assert_ne!(before, dup);
        let merged: Vec<Endpoint> = e
            .merged(Family::IPv4, "http")
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(merged.len(), 4, "one entry per address");
        assert_eq!(merged[0].state, EndpointState::Ready, "the ready copy wins");
        let mut sorted = merged.clone();
        sorted.sort_by(|a, b| a.zone.cmp(&b.zone));
        assert_eq!(
            dup.to_any().value,
            load_assignment("ns/web:80", 8080, &sorted, None).encode_to_vec()
        );
        // The duplicate goes away: back to the assembled form.
        e.slices.remove("web-b");
        cache.sync(&e);
        assert_eq!(cache.duplicates, [0, 0]);
        let after = cache.load_assignment(&"ns/web:80".into(), "http", &e, Family::IPv4, false);
        assert_eq!(after.to_any().value, reference(&e, Family::IPv4, false));
    }

    #[test]
    fn slices_without_the_port_contribute_nothing() {
        let e = endpoints();
        let mut cache = EndpointCache::default();
        cache.sync(&e);
        let r = cache.load_assignment(&"ns/web:80".into(), "metrics", &e, Family::IPv4, false);
        assert_eq!(
            r.to_any().value,
            load_assignment("ns/web:80", 0, &[], None).encode_to_vec()
        );
    }
}
