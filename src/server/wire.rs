//! Responses on the wire: gRPC length-prefixed protobuf assembled from each resource's
//! shared encoded bytes. Nothing is re-encoded per client, and a response is produced in
//! chunks as the transport asks for them, so no buffer the size of the largest response
//! outlives it (tonic's encoder would keep one per stream).
//!
//! Large lists of resources are written once for every stream that is sent the same
//! list (a fleet of Envoys syncing at once gets the same 10,000 endpoints, see
//! [`Resources`]): the streams share the written chunks and each writes only its own
//! version and nonce around them.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use super::protocol::{DeltaResponse, Resources, SotwResponse};
use crate::snapshot::{Resource, Version};

/// Chunks are about this large; resources this large or larger go out by reference.
const CHUNK: usize = 32 * 1024;
const BY_REFERENCE: usize = 4 * 1024;
/// Lists of at least this many resources are written once and shared.
const SHARE_FROM: usize = 64;

/// `DiscoveryResponse` and `DeltaDiscoveryResponse` field numbers.
mod tag {
    pub const VERSION_INFO: u32 = 1;
    pub const RESOURCES: u32 = 2;
    pub const TYPE_URL: u32 = 4;
    pub const NONCE: u32 = 5;
    pub const REMOVED_RESOURCES: u32 = 6;
    // envoy.service.discovery.v3.Resource
    pub const RESOURCE_VERSION: u32 = 1;
    pub const RESOURCE_BODY: u32 = 2;
    pub const RESOURCE_NAME: u32 = 3;
}

fn bytes_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn optional_string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        bytes_field_len(tag, s.len())
    }
}

fn put_header(tag: u32, len: usize, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_string(tag: u32, s: &str, buf: &mut BytesMut) {
    put_header(tag, s.len(), buf);
    buf.put_slice(s.as_bytes());
}

fn put_optional_string(tag: u32, s: &str, buf: &mut BytesMut) {
    if !s.is_empty() {
        put_string(tag, s, buf);
    }
}

/// Resources written as response chunks: small ones copied together into chunks of
/// about [`CHUNK`] bytes, large ones by reference.
struct Writer {
    chunks: VecDeque<Bytes>,
    buf: BytesMut,
    delta: bool,
}

impl Writer {
    fn new(delta: bool) -> Self {
        Self::with_capacity(delta, CHUNK + BY_REFERENCE)
    }

    fn with_capacity(delta: bool, capacity: usize) -> Self {
        Writer {
            chunks: VecDeque::new(),
            buf: BytesMut::with_capacity(capacity),
            delta,
        }
    }

    fn write(&mut self, resource: &Resource) {
        let any = resource.encoded_any();
        if self.delta {
            let version = resource.version().text();
            put_header(tag::RESOURCES, delta_resource_len(resource), &mut self.buf);
            put_header(tag::RESOURCE_VERSION, version.len(), &mut self.buf);
            self.buf.put_slice(&version);
            put_header(tag::RESOURCE_BODY, any.len(), &mut self.buf);
        } else {
            put_header(tag::RESOURCES, any.len(), &mut self.buf);
        }
        if any.len() >= BY_REFERENCE {
            self.flush();
            self.chunks.push_back(any.clone());
        } else {
            self.buf.extend_from_slice(any);
        }
        if self.delta {
            put_string(tag::RESOURCE_NAME, resource.name(), &mut self.buf);
        }
        if self.buf.len() >= CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.chunks.push_back(self.buf.split().freeze());
        }
    }
}

/// A list's resources written as response chunks.
fn write_all(delta: bool, resources: &[Resource]) -> Vec<Bytes> {
    let mut writer = Writer::new(delta);
    for resource in resources {
        writer.write(resource);
    }
    writer.flush();
    writer.chunks.into()
}

/// Where a response's resources come from.
enum Body {
    /// Written by this response: the list and the index of the next resource.
    Own(Resources, usize),
    /// Written once for every response with this list: the index of the next chunk.
    Shared(Resources, usize),
}

/// One response as a sequence of byte chunks (the first carries the gRPC message prefix).
pub struct Frames {
    out: Writer,
    body: Body,
    tail: Option<BytesMut>,
}

impl Frames {
    fn new(
        body_len: usize,
        head: BytesMut,
        tail: BytesMut,
        resources: Resources,
        delta: bool,
    ) -> Self {
        let shared = resources.len() >= SHARE_FROM;
        // A response whose list is shared writes only its prefix, head and tail.
        let mut out = if shared {
            Writer::with_capacity(delta, 5 + head.len() + tail.len())
        } else {
            Writer::new(delta)
        };
        out.buf.put_u8(0); // not compressed
        out.buf
            .put_u32(u32::try_from(body_len).expect("xDS response larger than 4 GiB"));
        out.buf.extend_from_slice(&head);
        let body = if shared {
            out.flush();
            resources.written(delta, |list| write_all(delta, list));
            Body::Shared(resources, 0)
        } else {
            Body::Own(resources, 0)
        };
        Frames {
            out,
            body,
            tail: Some(tail),
        }
    }

    /// A SotW `DiscoveryResponse`.
    pub fn sotw(response: SotwResponse) -> Self {
        let SotwResponse {
            ty,
            version_info,
            nonce,
            resources,
        } = response;
        let type_url = ty.type_url();
        let body_len = optional_string_len(tag::VERSION_INFO, &version_info)
            + resources
                .iter()
                .map(|r| bytes_field_len(tag::RESOURCES, r.encoded_any().len()))
                .sum::<usize>()
            + optional_string_len(tag::TYPE_URL, type_url)
            + optional_string_len(tag::NONCE, &nonce);
        let mut head = BytesMut::new();
        put_optional_string(tag::VERSION_INFO, &version_info, &mut head);
        let mut tail = BytesMut::new();
        put_optional_string(tag::TYPE_URL, type_url, &mut tail);
        put_optional_string(tag::NONCE, &nonce, &mut tail);
        Frames::new(body_len, head, tail, resources, false)
    }

    /// A `DeltaDiscoveryResponse`.
    pub fn delta(response: DeltaResponse) -> Self {
        let DeltaResponse {
            ty,
            system_version_info,
            nonce,
            resources,
            removed_resources,
        } = response;
        let type_url = ty.type_url();
        let body_len = optional_string_len(tag::VERSION_INFO, &system_version_info)
            + resources
                .iter()
                .map(|r| bytes_field_len(tag::RESOURCES, delta_resource_len(r)))
                .sum::<usize>()
            + optional_string_len(tag::TYPE_URL, type_url)
            + optional_string_len(tag::NONCE, &nonce)
            + removed_resources
                .iter()
                .map(|n| bytes_field_len(tag::REMOVED_RESOURCES, n.len()))
                .sum::<usize>();
        let mut head = BytesMut::new();
        put_optional_string(tag::VERSION_INFO, &system_version_info, &mut head);
        let mut tail = BytesMut::new();
        put_optional_string(tag::TYPE_URL, type_url, &mut tail);
        put_optional_string(tag::NONCE, &nonce, &mut tail);
        for name in &removed_resources {
            put_string(tag::REMOVED_RESOURCES, name, &mut tail);
        }
        Frames::new(body_len, head, tail, resources, true)
    }
}

impl From<SotwResponse> for Frames {
    fn from(response: SotwResponse) -> Self {
        Frames::sotw(response)
    }
}

impl From<DeltaResponse> for Frames {
    fn from(response: DeltaResponse) -> Self {
        Frames::delta(response)
    }
}

/// Encoded length of an `envoy.service.discovery.v3.Resource` wrapping `resource`.
fn delta_resource_len(resource: &Resource) -> usize {
    bytes_field_len(tag::RESOURCE_VERSION, Version::TEXT_LEN)
        + bytes_field_len(tag::RESOURCE_BODY, resource.encoded_any().len())
        + bytes_field_len(tag::RESOURCE_NAME, resource.name().len())
}

impl Iterator for Frames {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.out.chunks.pop_front() {
                return Some(chunk);
            }
            match &mut self.body {
                Body::Own(resources, next) => {
                    if let Some(resource) = resources.get(*next) {
                        *next += 1;
                        self.out.write(resource);
                        continue;
                    }
                }
                Body::Shared(resources, next) => {
                    let delta = self.out.delta;
                    let chunks = resources.written(delta, |list| write_all(delta, list));
                    if let Some(chunk) = chunks.get(*next) {
                        *next += 1;
                        return Some(chunk.clone());
                    }
                }
            }
            let tail = self.tail.take()?;
            self.out.buf.extend_from_slice(&tail);
            self.out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };
    use prost::Message;

    use super::*;
    use crate::server::protocol::Response;
    use crate::snapshot::fixtures::*;
    use crate::snapshot::{ResourceType, Snapshot};

    fn resources(n: usize, endpoints: usize) -> Vec<Resource> {
        let ips: Vec<String> = (0..endpoints)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let eps: Vec<(&str, u16)> = ips.iter().map(|ip| (ip.as_str(), 80)).collect();
        let mut b = Snapshot::builder();
        for i in 0..n {
            let name = format!("c{i}");
            b.upsert(&eds_cluster(&name))
                .upsert(&load_assignment(&name, &eps));
        }
        let s = b.build().unwrap();
        s.resources(ResourceType::Endpoint)
            .iter()
            .cloned()
            .collect()
    }

    fn unframe(frames: Frames) -> Vec<u8> {
        let bytes: Vec<u8> = frames.flat_map(|c| c.to_vec()).collect();
        assert_eq!(bytes[0], 0);
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 5, "length prefix matches the body");
        bytes[5..].to_vec()
    }

    #[test]
    fn sotw_bytes_decode_to_the_same_message() {
        // Small resources are copied into chunks, large ones (500 endpoints) go by reference.
        for (n, endpoints) in [(0, 1), (3, 1), (2000, 1), (4, 500)] {
            let response = SotwResponse {
                ty: ResourceType::Endpoint,
                version_info: "v1".into(),
                nonce: "7".into(),
                resources: resources(n, endpoints).into(),
            };
            let expected = response.to_proto();
            let decoded = DiscoveryResponse::decode(&*unframe(Frames::sotw(response))).unwrap();
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn delta_bytes_decode_to_the_same_message() {
        for (n, endpoints) in [(0, 1), (3, 1), (2000, 1), (4, 500)] {
            let response = DeltaResponse {
                ty: ResourceType::Endpoint,
                system_version_info: "v2".into(),
                nonce: "9".into(),
                resources: resources(n, endpoints).into(),
                removed_resources: vec!["gone".into(), "also-gone".into()],
            };
            let expected = response.to_proto();
            let decoded =
                DeltaDiscoveryResponse::decode(&*unframe(Frames::delta(response))).unwrap();
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn streams_sent_the_same_list_share_its_assembly() {
        let list: Resources = resources(100, 1).into();
        let response = |nonce: &str| SotwResponse {
            ty: ResourceType::Endpoint,
            version_info: "v".into(),
            nonce: nonce.into(),
            resources: list.clone(),
        };
        let (a, b) = (response("1"), response("2"));
        let (expected_a, expected_b) = (a.to_proto(), b.to_proto());
        let (a, b) = (Frames::sotw(a), Frames::sotw(b));
        let delta = Frames::delta(DeltaResponse {
            ty: ResourceType::Endpoint,
            system_version_info: "v".into(),
            nonce: "3".into(),
            resources: list.clone(),
            removed_resources: vec![],
        });
        let (a, b, delta): (Vec<Bytes>, Vec<Bytes>, Vec<Bytes>) =
            (a.collect(), b.collect(), delta.collect());
        let middle = |c: &[Bytes]| {
            c[1..c.len() - 1]
                .iter()
                .map(|c| c.as_ptr())
                .collect::<Vec<_>>()
        };
        assert!(a.len() > 2);
        assert_eq!(middle(&a), middle(&b), "the resources are the same memory");
        assert!(middle(&delta).iter().all(|p| !middle(&a).contains(p)));
        let decode = |chunks: Vec<Bytes>| {
            let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
            DiscoveryResponse::decode(&bytes[5..]).unwrap()
        };
        assert_eq!(decode(a), expected_a);
        assert_eq!(decode(b), expected_b);
    }

    #[test]
    fn large_responses_come_in_bounded_chunks() {
        let response = SotwResponse {
            ty: ResourceType::Endpoint,
            version_info: "v".into(),
            nonce: "1".into(),
            resources: resources(5000, 1).into(),
        };
        let chunks: Vec<Bytes> = Frames::sotw(response).collect();
        assert!(chunks.len() > 5);
        assert!(chunks.iter().all(|c| c.len() <= CHUNK + BY_REFERENCE));
    }
}
