//! Templated encoding: a Service port's cluster, route table and listeners differ from
//! another's of the same shape only in a few strings and one port, so their encoding is
//! done once per shape and the lengths of those strings, and each resource is that
//! template with its own bytes written in.
//!
//! A template is found by encoding the message with stand-in values and finding where
//! the bytes change when one value changes (strings of the same length, ports whose
//! varints have the same length): protobuf writes a string's bytes as they are and its
//! length before them, so for given lengths everything else stays the same. The result
//! is byte for byte what prost writes (tested, and checked in debug builds).

use std::collections::HashMap;
use std::ops::Range;

use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;

/// The variable parts of a message: strings, and one TCP/UDP port (0 when it has none).
#[derive(Clone, Copy, Debug)]
pub(super) struct Values<'a> {
    pub texts: &'a [&'a str],
    pub port: u16,
}

/// What a template is kept by: the message shape, the length of each string, and the
/// length of the port's varint (0: the port is 0 and proto3 leaves it out).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key<S> {
    shape: S,
    lengths: [usize; MAX_TEXTS],
    port_len: usize,
}

/// How many strings a message may have written in.
const MAX_TEXTS: usize = 4;

/// Where each value goes in the encoded template.
#[derive(Debug)]
struct Template {
    bytes: Vec<u8>,
    /// (byte range, index of the string) for every place a string is written.
    texts: Vec<(Range<usize>, usize)>,
    /// Every place the port's varint is written.
    ports: Vec<Range<usize>>,
}

/// The templates of one kind of message, by shape `S` (`None`: the shape did not
/// behave as a template, and its messages are encoded whole).
#[derive(Debug)]
pub(super) struct Templates<S> {
    kept: HashMap<Key<S>, Option<Template>>,
}

/// How many templates are kept per kind of message; past that (an unusual spread of name
/// lengths), messages are encoded whole.
const MAX_TEMPLATES: usize = 4096;

impl<S> Default for Templates<S> {
    fn default() -> Self {
        Templates {
            kept: HashMap::new(),
        }
    }
}

impl<S: Clone + Eq + std::hash::Hash + std::fmt::Debug> Templates<S> {
    /// The encoding of `build(values)`, from the template of `shape` for the lengths of
    /// `values` (made the first time). `build` must copy its strings and port into the
    /// message as they are.
    pub(super) fn encode<M: Message>(
        &mut self,
        shape: S,
        values: Values<'_>,
        build: impl Fn(Values<'_>) -> M,
    ) -> Vec<u8> {
        assert!(
            values.texts.len() <= MAX_TEXTS,
            "at most {MAX_TEXTS} strings"
        );
        let mut lengths = [0; MAX_TEXTS];
        for (length, text) in lengths.iter_mut().zip(values.texts) {
            *length = text.len();
        }
        let key = Key {
            shape,
            lengths,
            port_len: port_len(values.port),
        };
        let template = match self.kept.get(&key) {
            Some(template) => template,
            None if self.kept.len() >= MAX_TEMPLATES => return build(values).encode_to_vec(),
            None => {
                let lengths = &key.lengths[..values.texts.len()];
                let template = Template::find(lengths, key.port_len, &build);
                self.kept.entry(key.clone()).or_insert(template)
            }
        };
        match template {
            Some(template) => {
                let bytes = template.fill(values);
                debug_assert_eq!(bytes, build(values).encode_to_vec(), "template of {key:?}");
                bytes
            }
            None => build(values).encode_to_vec(),
        }
    }

    /// How many templates are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }
}

/// The length of a port's varint, 0 for port 0 (left out).
fn port_len(port: u16) -> usize {
    if port == 0 {
        0
    } else {
        encoded_len_varint(u64::from(port))
    }
}

/// Two ports whose varints have `len` bytes (1 to 3) and differ in every byte: the
/// smallest and the largest of that length.
fn stand_in_ports(len: usize) -> (u16, u16) {
    match len {
        0 => (0, 0),
        1 => (1, 127),
        2 => (128, 16383),
        _ => (16384, u16::MAX),
    }
}

/// The byte ranges where `a` and `b` (of equal length) differ.
fn differences(a: &[u8], b: &[u8]) -> Vec<Range<usize>> {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for (i, _) in a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y) {
        match ranges.last_mut() {
            Some(last) if last.end == i => last.end = i + 1,
            _ => ranges.push(i..i + 1),
        }
    }
    ranges
}

impl Template {
    /// The template of `build` for these lengths, if every value is written as it is.
    fn find<M: Message>(
        lengths: &[usize],
        port_len: usize,
        build: &impl Fn(Values<'_>) -> M,
    ) -> Option<Template> {
        let fill = |c: char, len: usize| c.to_string().repeat(len);
        let base_texts: Vec<String> = lengths.iter().map(|&len| fill('a', len)).collect();
        let (port, other_port) = stand_in_ports(port_len);
        let encode = |texts: &[String], port: u16| {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            build(Values {
                texts: &texts,
                port,
            })
            .encode_to_vec()
        };
        let bytes = encode(&base_texts, port);
        let mut texts = Vec::new();
        for (slot, &len) in lengths.iter().enumerate() {
            let mut changed = base_texts.clone();
            changed[slot] = fill('b', len);
            let other = encode(&changed, port);
            if other.len() != bytes.len() {
                return None;
            }
            for range in differences(&bytes, &other) {
                if range.len() != len {
                    return None;
                }
                texts.push((range, slot));
            }
        }
        let other = encode(&base_texts, other_port);
        if other.len() != bytes.len() {
            return None;
        }
        let ports = differences(&bytes, &other);
        if ports.iter().any(|r| r.len() != port_len) {
            return None;
        }
        // Checked once with values unlike the stand-ins.
        let template = Template {
            bytes,
            texts,
            ports,
        };
        let probe: Vec<String> = lengths.iter().map(|&len| fill('z', len)).collect();
        let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
        let values = Values {
            texts: &probe,
            // Between the stand-ins: a varint of the same length (0 stays 0).
            port: port + u16::from(port != 0),
        };
        (template.fill(values) == build(values).encode_to_vec()).then_some(template)
    }

    fn fill(&self, values: Values<'_>) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        for (range, slot) in &self.texts {
            bytes[range.clone()].copy_from_slice(values.texts[*slot].as_bytes());
        }
        if !self.ports.is_empty() {
            let mut varint = [0u8; 3];
            let len = encoded_len_varint(u64::from(values.port));
            encode_varint(u64::from(values.port), &mut &mut varint[..]);
            for range in &self.ports {
                bytes[range.clone()].copy_from_slice(&varint[..len]);
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, PortKind, ServicePort};
    use crate::translate::envoy;

    fn listener(values: Values<'_>) -> envoy_types::pb::envoy::config::listener::v3::Listener {
        let port = ServicePort {
            name: "http".into(),
            port: 80,
            kind: PortKind::Http,
            listener_port: values.port,
        };
        envoy::listener(
            values.texts[0],
            Family::IPv6,
            &port,
            values.texts[1],
            values.texts[1],
        )
    }

    /// Every template gives what prost writes, for names of several lengths (one used
    /// twice in the message) and ports of every varint length, 0 included.
    #[test]
    fn a_template_writes_what_prost_writes() {
        let mut templates = Templates::default();
        let names = ["a", "shop/web:80:ipv6", "x".repeat(130).as_str(), ""].map(str::to_owned);
        for name in &names {
            for cluster in ["shop/web:80", "ns/other:8443", ""] {
                for port in [0u16, 1, 80, 127, 128, 8080, 16383, 16384, 50051, 65535] {
                    let values = Values {
                        texts: &[name, cluster],
                        port,
                    };
                    let bytes = templates.encode("http", values, listener);
                    assert_eq!(
                        bytes,
                        listener(values).encode_to_vec(),
                        "{name} {cluster} {port}"
                    );
                }
            }
        }
        // One template per combination of lengths, however many ports and names, and
        // every one of them found (none fell back to encoding whole).
        assert_eq!(templates.len(), names.len() * 3 * 4);
        assert!(templates.kept.values().all(Option::is_some));
    }

    /// A message that does not copy its values as they are is encoded whole, and right.
    #[test]
    fn a_message_that_is_no_template_is_encoded_whole() {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        let build = |values: Values<'_>| ClusterLoadAssignment {
            cluster_name: values.texts[0]
                .to_uppercase()
                .repeat(1 + values.texts[0].starts_with('a') as usize),
            ..Default::default()
        };
        let mut templates = Templates::default();
        for name in ["abc", "xyz", "aaa"] {
            let values = Values {
                texts: &[name],
                port: 0,
            };
            assert_eq!(
                templates.encode((), values, build),
                build(values).encode_to_vec()
            );
        }
        assert!(templates.kept.values().all(Option::is_none));
    }

    #[test]
    fn stand_in_ports_have_the_length_asked_and_differ_in_every_byte() {
        for len in 1..=3 {
            let (low, high) = stand_in_ports(len);
            assert_eq!(port_len(low), len);
            assert_eq!(port_len(high), len);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_varint(u64::from(low), &mut a);
            encode_varint(u64::from(high), &mut b);
            assert!(a.iter().zip(&b).all(|(x, y)| x != y), "{len}: {a:?} {b:?}");
        }
    }
}
