//! Requests as the state machines read them: `DiscoveryRequest` and
//! `DeltaDiscoveryRequest` with their resource names left in the message's bytes.
//!
//! A SotW ACK repeats every name the client subscribes to: 10,000 EDS names from each of
//! 1,000 Envoys is ten million strings to allocate, hash and free per change if decoded
//! the usual way, and a fleet's Delta streams each subscribe to the same 10,000 names.
//! Here the names stay where they arrived: decoding checks them (as prost would) and
//! takes one digest of them as sent, and a SotW request whose digest equals the stream's
//! last one is recognised as the same subscription without touching a name. The other
//! fields, a few bytes, are decoded by prost.

use std::ops::Range;

use bytes::{Buf, Bytes};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc::Status;
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
use prost::Message;
use xxhash_rust::xxh3::Xxh3;

/// `resource_names` of `DiscoveryRequest`; `resource_names_subscribe` and
/// `resource_names_unsubscribe` of `DeltaDiscoveryRequest`.
const SOTW_NAMES: u32 = 3;
const DELTA_SUBSCRIBE: u32 = 3;
const DELTA_UNSUBSCRIBE: u32 = 4;

/// A `DiscoveryRequest` whose `resource_names` are read in place.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwRequest {
    pub version_info: String,
    pub node: Option<Node>,
    pub resource_names: Names,
    pub type_url: String,
    pub response_nonce: String,
    pub error_detail: Option<Status>,
}

/// A request that is not a valid `DiscoveryRequest` or `DeltaDiscoveryRequest`.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Decode(#[from] prost::DecodeError),
    #[error("a resource name runs past the end of the message")]
    Truncated,
    #[error("a resource name is not valid UTF-8")]
    NotUtf8,
}

/// The resource names of a request, in the order sent.
#[derive(Clone, Debug, Default)]
pub struct Names {
    repr: Repr,
    len: usize,
    /// Digest of the names as sent (order and repeats included).
    layout: u128,
}

#[derive(Clone, Debug)]
enum Repr {
    Owned(Vec<String>),
    /// The whole message, and the ranges of it that hold only resource-name fields.
    Wire {
        message: Bytes,
        runs: Runs,
    },
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Vec::new())
    }
}

/// Ranges of a message made only of consecutive resource-name fields: one in practice
/// (clients write a repeated field's elements together), more only if other fields
/// come between them.
#[derive(Clone, Debug, Default)]
struct Runs {
    first: Option<Range<usize>>,
    more: Vec<Range<usize>>,
}

impl Runs {
    fn push(&mut self, range: Range<usize>) {
        match self.more.last_mut().or(self.first.as_mut()) {
            Some(last) if last.end == range.start => last.end = range.end,
            Some(_) => self.more.push(range),
            None => self.first = Some(range),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Range<usize>> {
        self.first.iter().chain(self.more.iter())
    }
}

impl PartialEq for Names {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Names {
    /// How many names were sent (the wildcard `*` included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// An order-sensitive digest of the names as sent: equal for two requests that
    /// listed the same names in the same order.
    pub fn layout(&self) -> u128 {
        self.layout
    }

    /// The names as sent.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let (owned, wire) = match &self.repr {
            Repr::Owned(names) => (Some(names.iter().map(String::as_str)), None),
            Repr::Wire { message, runs } => (
                None,
                Some(
                    runs.iter()
                        .flat_map(move |run| name_fields(&message[run.clone()])),
                ),
            ),
        };
        owned
            .into_iter()
            .flatten()
            .chain(wire.into_iter().flatten())
    }
}

impl From<Vec<String>> for Names {
    fn from(names: Vec<String>) -> Self {
        let mut layout = Xxh3::new();
        let mut field = Vec::new();
        for name in &names {
            field.clear();
            // As a SotW request carries them (layouts compare SotW lists).
            prost::encoding::string::encode(SOTW_NAMES, name, &mut field);
            layout.update(&field);
        }
        Names {
            len: names.len(),
            layout: layout.digest128(),
            repr: Repr::Owned(names),
        }
    }
}

/// The names in a range that holds only (already checked) resource-name fields.
fn name_fields(mut fields: &[u8]) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        if fields.is_empty() {
            return None;
        }
        let (_, _) = decode_key(&mut fields).ok()?;
        let len = decode_varint(&mut fields).ok()? as usize;
        let (name, rest) = fields.split_at_checked(len)?;
        fields = rest;
        // Checked when the message was decoded.
        std::str::from_utf8(name).ok()
    })
}

impl From<DiscoveryRequest> for SotwRequest {
    fn from(r: DiscoveryRequest) -> Self {
        SotwRequest {
            version_info: r.version_info,
            node: r.node,
            resource_names: r.resource_names.into(),
            type_url: r.type_url,
            response_nonce: r.response_nonce,
            error_detail: r.error_detail,
        }
    }
}

impl SotwRequest {
    /// Decodes a serialized `DiscoveryRequest`, accepting and refusing exactly what
    /// prost's decoding would, without copying the resource names out of `message`.
    pub fn decode(message: Bytes) -> Result<SotwRequest, RequestError> {
        let (rest, [names]) = split_names(message, [SOTW_NAMES])?;
        let r = DiscoveryRequest::decode(&rest[..])?;
        Ok(SotwRequest {
            version_info: r.version_info,
            node: r.node,
            resource_names: names,
            type_url: r.type_url,
            response_nonce: r.response_nonce,
            error_detail: r.error_detail,
        })
    }

    /// The request as prost would have decoded it (for tests and one-shot fetches).
    pub fn into_proto(self) -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: self.resource_names.iter().map(str::to_owned).collect(),
            version_info: self.version_info,
            node: self.node,
            type_url: self.type_url,
            response_nonce: self.response_nonce,
            error_detail: self.error_detail,
            resource_locators: Vec::new(),
        }
    }
}

/// A `DeltaDiscoveryRequest` whose subscribed and unsubscribed names are read in place.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaRequest {
    pub node: Option<Node>,
    pub type_url: String,
    pub resource_names_subscribe: Names,
    pub resource_names_unsubscribe: Names,
    pub initial_resource_versions: std::collections::HashMap<String, String>,
    pub response_nonce: String,
    pub error_detail: Option<Status>,
}

impl From<DeltaDiscoveryRequest> for DeltaRequest {
    fn from(r: DeltaDiscoveryRequest) -> Self {
        DeltaRequest {
            node: r.node,
            type_url: r.type_url,
            resource_names_subscribe: r.resource_names_subscribe.into(),
            resource_names_unsubscribe: r.resource_names_unsubscribe.into(),
            initial_resource_versions: r.initial_resource_versions,
            response_nonce: r.response_nonce,
            error_detail: r.error_detail,
        }
    }
}

impl DeltaRequest {
    /// Decodes a serialized `DeltaDiscoveryRequest` as prost would, without copying the
    /// subscribed and unsubscribed names out of `message`.
    pub fn decode(message: Bytes) -> Result<DeltaRequest, RequestError> {
        let (rest, [subscribe, unsubscribe]) =
            split_names(message, [DELTA_SUBSCRIBE, DELTA_UNSUBSCRIBE])?;
        let r = DeltaDiscoveryRequest::decode(&rest[..])?;
        Ok(DeltaRequest {
            node: r.node,
            type_url: r.type_url,
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            initial_resource_versions: r.initial_resource_versions,
            response_nonce: r.response_nonce,
            error_detail: r.error_detail,
        })
    }

    /// The request as prost would have decoded it (for tests).
    pub fn into_proto(self) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: self.node,
            type_url: self.type_url,
            resource_names_subscribe: self
                .resource_names_subscribe
                .iter()
                .map(str::to_owned)
                .collect(),
            resource_names_unsubscribe: self
                .resource_names_unsubscribe
                .iter()
                .map(str::to_owned)
                .collect(),
            initial_resource_versions: self.initial_resource_versions,
            response_nonce: self.response_nonce,
            error_detail: self.error_detail,
            ..Default::default()
        }
    }
}

/// Splits `message` into the name fields numbered `tags`, left in place and checked as
/// prost checks strings, and a copy of every other field for prost to decode.
fn split_names<const N: usize>(
    message: Bytes,
    tags: [u32; N],
) -> Result<(Vec<u8>, [Names; N]), RequestError> {
    let mut runs: [Runs; N] = std::array::from_fn(|_| Runs::default());
    let mut counts = [0usize; N];
    let mut rest = Vec::new();
    let mut buf = &message[..];
    let start = buf.as_ptr() as usize;
    let offset = |buf: &[u8]| buf.as_ptr() as usize - start;
    while buf.has_remaining() {
        let field_start = offset(buf);
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tags.iter().position(|t| *t == tag) {
            Some(i) => {
                prost::encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                let n = decode_varint(&mut buf)?;
                let n = usize::try_from(n).map_err(|_| RequestError::Truncated)?;
                if n > buf.len() {
                    return Err(RequestError::Truncated);
                }
                buf.advance(n);
                counts[i] += 1;
                // The names that follow, while each is the same one-byte key and a
                // one-byte length (names under 128 bytes, as Kubernetes' are): a
                // 10,000-name ACK is read in one tight pass, not field by field.
                let key = u8::try_from((tag << 3) | WireType::LengthDelimited as u32);
                if let Some(key) = key.ok().filter(|key| *key < 0x80) {
                    let mut at = 0;
                    while let [k, len, ..] = buf[at..] {
                        let end = at + 2 + usize::from(len);
                        if k != key || len >= 0x80 || end > buf.len() {
                            break;
                        }
                        at = end;
                        counts[i] += 1;
                    }
                    buf.advance(at);
                }
                runs[i].push(field_start..offset(buf));
            }
            None => {
                skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
                rest.extend_from_slice(&message[field_start..offset(buf)]);
            }
        }
    }
    let mut names: [Names; N] = std::array::from_fn(|_| Names::default());
    for (i, runs) in runs.into_iter().enumerate() {
        let mut layout = Xxh3::new();
        for run in runs.iter() {
            let fields = &message[run.clone()];
            check_utf8(fields)?;
            layout.update(fields);
        }
        names[i] = Names {
            len: counts[i],
            layout: layout.digest128(),
            repr: Repr::Wire {
                message: message.clone(),
                runs,
            },
        };
    }
    Ok((rest, names))
}

/// Checks that every name in a run of resource-name fields is UTF-8. One pass over the
/// whole run when every name is shorter than 128 bytes (each field's key and length are
/// then single ASCII bytes, so the run is UTF-8 exactly when every name is); name by name
/// otherwise.
fn check_utf8(fields: &[u8]) -> Result<(), RequestError> {
    if std::str::from_utf8(fields).is_ok() {
        return Ok(());
    }
    let mut rest = fields;
    while !rest.is_empty() {
        decode_key(&mut rest)?;
        let len = decode_varint(&mut rest)? as usize;
        let (name, tail) = rest.split_at_checked(len).ok_or(RequestError::Truncated)?;
        std::str::from_utf8(name).map_err(|_| RequestError::NotUtf8)?;
        rest = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn request(names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node {
                id: "envoy-1".into(),
                ..Default::default()
            }),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            response_nonce: "7".into(),
            error_detail: Some(Status {
                code: 3,
                message: "rejected".into(),
                details: vec![],
            }),
            resource_locators: vec![],
        }
    }

    fn decode(bytes: &[u8]) -> Result<SotwRequest, RequestError> {
        SotwRequest::decode(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn decodes_what_prost_encodes() {
        for names in [&[][..], &["a"], &["*", "svc-1", "svc-2", "ünïcode"]] {
            let proto = request(names);
            let decoded = decode(&proto.encode_to_vec()).unwrap();
            assert_eq!(decoded.resource_names.len(), names.len());
            assert_eq!(decoded.clone().into_proto(), proto);
            assert_eq!(decoded, SotwRequest::from(proto));
        }
    }

    #[test]
    fn the_layout_digest_is_the_same_however_the_request_arrived() {
        let proto = request(&["b", "a", "c"]);
        let wire = decode(&proto.encode_to_vec()).unwrap();
        let owned = SotwRequest::from(proto.clone());
        assert_eq!(wire.resource_names.layout(), owned.resource_names.layout());
        let reordered = SotwRequest::from(request(&["a", "b", "c"]));
        assert_ne!(
            wire.resource_names.layout(),
            reordered.resource_names.layout()
        );
    }

    #[test]
    fn names_split_by_other_fields_are_all_read() {
        // Fields may come in any order; names interleaved with other fields still count.
        let mut bytes = DiscoveryRequest {
            resource_names: vec!["a".into()],
            ..Default::default()
        }
        .encode_to_vec();
        bytes.extend(
            DiscoveryRequest {
                type_url: "t".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        bytes.extend(
            DiscoveryRequest {
                resource_names: vec!["b".into(), "*".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let decoded = decode(&bytes).unwrap();
        assert_eq!(
            decoded.resource_names.iter().collect::<Vec<_>>(),
            ["a", "b", "*"]
        );
        assert_eq!(decoded.type_url, "t");
        assert_eq!(
            decoded.into_proto(),
            DiscoveryRequest::decode(&*bytes).unwrap()
        );
    }

    /// Runs of short names are read in one tight pass; a long name, another field or a
    /// cut in the middle of a run hands over to the field-by-field reading, with the
    /// same result as prost's.
    #[test]
    fn runs_of_short_names_read_as_prost_reads_them() {
        let long = "x".repeat(200);
        let names: Vec<String> = (0..300)
            .map(|i| match i {
                100 => long.clone(),
                _ => format!("cluster-{i}"),
            })
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let bytes = request(&names).encode_to_vec();
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.resource_names.len(), 300);
        assert_eq!(decoded.resource_names.iter().collect::<Vec<_>>(), names);
        assert_eq!(
            decoded.resource_names.layout(),
            SotwRequest::from(request(&names)).resource_names.layout()
        );
        for cut in [bytes.len() - 1, bytes.len() / 2, bytes.len() / 3 + 1] {
            let prost = DiscoveryRequest::decode(&bytes[..cut]);
            let ours = decode(&bytes[..cut]);
            assert_eq!(prost.is_ok(), ours.is_ok(), "cut at {cut}");
            if let (Ok(prost), Ok(ours)) = (prost, ours) {
                assert_eq!(ours.into_proto(), prost, "cut at {cut}");
            }
        }
    }

    #[test]
    fn refuses_what_prost_refuses() {
        let good = request(&["a", "b"]).encode_to_vec();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // Truncated anywhere.
        for cut in 1..good.len() {
            cases.push(good[..cut].to_vec());
        }
        // A name that is not UTF-8, short and long.
        for len in [1usize, 200] {
            let mut bytes = vec![0x1a];
            prost::encoding::encode_varint(len as u64, &mut bytes);
            bytes.extend(std::iter::repeat_n(0xff, len));
            cases.push(bytes);
        }
        // A name with the wrong wire type.
        cases.push(vec![0x18, 0x01]);
        for bytes in cases {
            let prost = DiscoveryRequest::decode(&*bytes);
            let ours = decode(&bytes);
            assert_eq!(
                prost.is_ok(),
                ours.is_ok(),
                "{bytes:?}: prost {prost:?}, ours {ours:?}"
            );
            if let (Ok(prost), Ok(ours)) = (prost, ours) {
                assert_eq!(ours.into_proto(), prost);
            }
        }
    }

    #[test]
    fn delta_requests_decode_as_prost_decodes_them() {
        let proto = DeltaDiscoveryRequest {
            node: Some(Node {
                id: "envoy-1".into(),
                ..Default::default()
            }),
            type_url: "t".into(),
            resource_names_subscribe: vec!["a".into(), "*".into()],
            resource_names_unsubscribe: vec!["b".into()],
            initial_resource_versions: [("a".to_string(), "1".to_string())].into(),
            response_nonce: "3".into(),
            ..Default::default()
        };
        let bytes = proto.encode_to_vec();
        let decoded = DeltaRequest::decode(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(decoded.clone(), DeltaRequest::from(proto.clone()));
        assert_eq!(decoded.into_proto(), proto);
        for cut in 1..bytes.len() {
            let prost = DeltaDiscoveryRequest::decode(&bytes[..cut]);
            let ours = DeltaRequest::decode(Bytes::copy_from_slice(&bytes[..cut]));
            assert_eq!(prost.is_ok(), ours.is_ok(), "cut at {cut}");
        }
    }

    #[test]
    fn long_names_are_checked_one_by_one() {
        let long = "é".repeat(100); // 200 bytes: a two-byte length that is not UTF-8
        let proto = request(&[&long, "x"]);
        let decoded = decode(&proto.encode_to_vec()).unwrap();
        assert_eq!(decoded.into_proto(), proto);
    }
}
