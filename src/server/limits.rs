//! What one client may take of the server, each a flag with a safe default and a metric
//! when hit: streams in total and per connection, request size, names per request,
//! requests per second per stream, and the HTTP/2 keepalive and idle timeouts. A client
//! that breaks a limit gets a gRPC status (`RESOURCE_EXHAUSTED`); others are unaffected.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The server's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// xDS streams open at once, all clients together.
    pub max_streams: usize,
    /// xDS streams open at once on one connection (an Envoy opens one, ADS).
    pub max_streams_per_connection: usize,
    /// The largest request message (a SotW EDS request names every cluster).
    pub max_request_bytes: usize,
    /// Resource names in one request (subscribed and unsubscribed together in Delta).
    pub max_names_per_request: usize,
    /// Requests per second on one stream, sustained; bursts of twice as many pass.
    pub requests_per_second: u32,
    /// HTTP/2 PING interval, and how long a ping may go unanswered before the connection
    /// is closed (a client that vanished without closing its connection).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection without any stream for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: 10_000,
            max_streams_per_connection: 16,
            max_request_bytes: 16 * 1024 * 1024,
            max_names_per_request: 100_000,
            requests_per_second: 100,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Streams open on the whole server.
#[derive(Debug, Default)]
pub struct StreamCount(Arc<AtomicUsize>);

impl StreamCount {
    /// Counts a new stream unless `limit` are open; it counts until the guard drops.
    pub fn open(&self, limit: usize) -> Option<CountedStream> {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(CountedStream(self.0.clone()))
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A stream counted in a [`StreamCount`].
#[derive(Debug)]
pub struct CountedStream(Arc<AtomicUsize>);

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A token bucket: `per_second` requests a second, bursts of twice that.
#[derive(Debug)]
pub struct RequestRate {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RequestRate {
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        RequestRate {
            per_second,
            burst: 2.0 * per_second,
            tokens: 2.0 * per_second,
            last: None,
        }
    }

    /// Whether a request at `now` is within the rate (it is counted if so).
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A byte size such as `16MiB`, `512KiB` or `1000000`.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 16MiB"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => return Err(format!("{other:?} is not a size unit (B, KiB, MiB, GiB)")),
    };
    number
        .checked_mul(scale)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a size between 1 byte and the address space"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_twice_the_rate_passes_then_the_rate_holds() {
        let start = Instant::now();
        let mut rate = RequestRate::new(10);
        assert_eq!((0..25).filter(|_| rate.allow(start)).count(), 20);
        // One second later: ten more.
        let later = start + Duration::from_secs(1);
        assert_eq!((0..25).filter(|_| rate.allow(later)).count(), 10);
    }

    #[test]
    fn stream_counts_are_released() {
        let count = StreamCount::default();
        let a = count.open(2).unwrap();
        let _b = count.open(2).unwrap();
        assert!(count.open(2).is_none());
        drop(a);
        assert!(count.open(2).is_some());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("16MiB"), Ok(16 << 20));
        assert_eq!(parse_bytes("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("MiB").is_err());
    }
}
