//! Requests on the wire: the gRPC length-prefixed messages of a request body, each decoded
//! from a buffer of its own — a slice of what the transport received when the message
//! arrived in one piece, a buffer of exactly its size otherwise — and released with it.
//!
//! Nothing stays allocated between messages. tonic's decoder keeps one buffer per stream
//! at the size of the largest message it ever read: 200 KiB for every SotW stream whose
//! ACKs name 10,000 resources, for as long as the stream lives.

use std::marker::PhantomData;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use tonic::Status;

use super::protocol::{DeltaRequest, SotwRequest};

/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// A request message type, decoded from one message's bytes.
pub trait RequestMessage: Sized {
    fn decode(message: Bytes) -> Result<Self, Status>;
}

impl RequestMessage for SotwRequest {
    fn decode(message: Bytes) -> Result<Self, Status> {
        SotwRequest::decode(message)
            .map_err(|e| Status::invalid_argument(format!("invalid DiscoveryRequest: {e}")))
    }
}

impl RequestMessage for DeltaRequest {
    fn decode(message: Bytes) -> Result<Self, Status> {
        DeltaRequest::decode(message)
            .map_err(|e| Status::invalid_argument(format!("invalid DeltaDiscoveryRequest: {e}")))
    }
}

/// The messages of one request body.
pub struct Inbound<B, M> {
    body: B,
    frames: Framer,
    _message: PhantomData<fn() -> M>,
}

impl<B, M> Inbound<B, M>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
    M: RequestMessage,
{
    /// Messages over `max_bytes` are refused with `OUT_OF_RANGE` (as tonic does).
    pub fn new(body: B, max_bytes: usize) -> Self {
        Inbound {
            body,
            frames: Framer::new(max_bytes),
            _message: PhantomData,
        }
    }

    /// The next message; `None` when the client has ended the stream.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(message) = self.frames.next_message()? {
                return M::decode(message).map(Some);
            }
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.frames.push(data);
                    }
                }
                Some(Err(status)) => return Err(status),
                None if self.frames.in_message() => {
                    return Err(Status::internal(
                        "the request stream ended in the middle of a message",
                    ))
                }
                None => return Ok(None),
            }
        }
    }
}

/// Splits received bytes into messages (I/O-free).
#[derive(Debug)]
struct Framer {
    max_bytes: usize,
    /// Received and not yet consumed.
    received: Bytes,
    /// A prefix that arrived in pieces.
    prefix: Vec<u8>,
    /// A message that arrives in pieces: its length, and what has arrived of it.
    partial: Option<(usize, BytesMut)>,
}

impl Framer {
    fn new(max_bytes: usize) -> Self {
        Framer {
            max_bytes,
            received: Bytes::new(),
            prefix: Vec::new(),
            partial: None,
        }
    }

    fn push(&mut self, data: Bytes) {
        debug_assert!(
            self.received.is_empty(),
            "push only once every message is taken"
        );
        self.received = data;
    }

    fn in_message(&self) -> bool {
        !self.prefix.is_empty() || self.partial.is_some() || !self.received.is_empty()
    }

    /// The next complete message, if what was received holds one.
    fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if let Some((len, buf)) = &mut self.partial {
            let take = (*len - buf.len()).min(self.received.len());
            buf.extend_from_slice(&self.received.split_to(take));
            if buf.len() < *len {
                return Ok(None);
            }
            let (_, buf) = self.partial.take().expect("a partial message");
            return Ok(Some(buf.freeze()));
        }
        let prefix: [u8; PREFIX] = if self.prefix.is_empty() && self.received.len() >= PREFIX {
            let prefix = self.received.split_to(PREFIX);
            prefix[..].try_into().expect("five bytes")
        } else {
            let take = (PREFIX - self.prefix.len()).min(self.received.len());
            self.prefix.extend_from_slice(&self.received.split_to(take));
            if self.prefix.len() < PREFIX {
                return Ok(None);
            }
            std::mem::take(&mut self.prefix)[..]
                .try_into()
                .expect("five bytes")
        };
        if prefix[0] != 0 {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        let len = u32::from_be_bytes(prefix[1..].try_into().expect("four bytes")) as usize;
        if len > self.max_bytes {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max_bytes
            )));
        }
        if self.received.len() >= len {
            return Ok(Some(self.received.split_to(len)));
        }
        let mut buf = BytesMut::with_capacity(len);
        buf.extend_from_slice(&std::mem::take(&mut self.received));
        self.partial = Some((len, buf));
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.push(0);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    /// Feeds `bytes` in chunks of `chunk` bytes; returns the messages taken.
    fn split(bytes: &[u8], chunk: usize, max: usize) -> Result<Vec<Vec<u8>>, Status> {
        let mut framer = Framer::new(max);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            framer.push(Bytes::copy_from_slice(piece));
            while let Some(m) = framer.next_message()? {
                out.push(m.to_vec());
            }
            assert!(framer.received.is_empty());
        }
        assert!(!framer.in_message(), "a message left unfinished");
        Ok(out)
    }

    #[test]
    fn messages_come_out_whole_however_the_bytes_are_cut() {
        let big = vec![7u8; 70_000];
        let messages: [&[u8]; 4] = [b"one", b"", &big, b"four"];
        let bytes = framed(&messages);
        for chunk in [1, 2, 5, 6, 1000, 16_384, bytes.len()] {
            let got = split(&bytes, chunk, 1 << 20).unwrap();
            assert_eq!(got, messages.map(<[u8]>::to_vec), "chunks of {chunk}");
        }
    }

    #[test]
    fn a_message_in_one_piece_is_not_copied() {
        let bytes = Bytes::from(framed(&[b"hello", b"world"]));
        let mut framer = Framer::new(1024);
        framer.push(bytes.clone());
        let first = framer.next_message().unwrap().unwrap();
        assert_eq!(first.as_ptr(), bytes[PREFIX..].as_ptr());
    }

    #[test]
    fn oversized_and_compressed_messages_are_refused() {
        let bytes = framed(&[&[1u8; 100]]);
        let err = split(&bytes, 7, 99).unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        let mut compressed = framed(&[b"x"]);
        compressed[0] = 1;
        assert_eq!(
            split(&compressed, 64, 99).unwrap_err().code(),
            tonic::Code::Internal
        );
    }
}
