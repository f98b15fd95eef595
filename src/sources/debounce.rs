//! Debouncing: a burst of changes becomes one publication. A burst ends after a quiet
//! period without events, or at a maximum delay after its first event, so a steady
//! stream of changes cannot starve publication.

use std::time::Duration;

use tokio::sync::mpsc;
pub use tokio::time::Instant;

/// How changes are grouped: a burst ends after `quiet` without events, or `max_delay`
/// after its first event.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    pub quiet: Duration,
    pub max_delay: Duration,
}

/// Resolution of tokio's timers.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// Groups stamped events (`(when it happened, event)`) into bursts, so that no change
/// waits longer than `max_delay` to be published: a burst ends `max_delay` after its
/// first event *happened* (time queued behind a previous publication counts), less the
/// time the last publication took.
#[derive(Debug)]
pub struct Debouncer {
    debounce: Debounce,
    /// How long the last publication took, plus how late the timer ended the last burst:
    /// the next burst ends that much before its deadline.
    reserve: Duration,
    /// How late bursts ended after their deadline (timer granularity, scheduling): the
    /// highest recently seen, decaying slowly.
    late: Duration,
}

impl Debouncer {
    pub fn new(debounce: Debounce) -> Self {
        Debouncer {
            debounce,
            // Before anything is measured: two timer ticks.
            reserve: (2 * TIMER_TICK).min(debounce.max_delay / 2),
            late: Duration::ZERO,
        }
    }

    /// Waits for the next burst, handing each event to `each` as it arrives (nothing
    /// queues here). Returns when the burst's first event happened, or `None` when the
    /// sender is gone and nothing arrived.
    pub async fn burst<T>(
        &mut self,
        rx: &mut mpsc::Receiver<(Instant, T)>,
        mut each: impl FnMut(T),
    ) -> Option<Instant> {
        let (start, first) = rx.recv().await?;
        each(first);
        let deadline = start + self.debounce.max_delay.saturating_sub(self.reserve);
        loop {
            let now = Instant::now();
            if now >= deadline {
                self.record_lateness(now - deadline);
                return Some(start);
            }
            let quiet_end = (now + self.debounce.quiet).min(deadline);
            match tokio::time::timeout_at(quiet_end, rx.recv()).await {
                Ok(Some((_, more))) => each(more),
                Ok(None) => return Some(start),
                Err(_) => {
                    self.record_lateness(Instant::now().saturating_duration_since(deadline));
                    return Some(start);
                }
            }
        }
    }

    fn record_lateness(&mut self, late: Duration) {
        self.late = late.max(self.late - self.late / 8);
    }

    /// Records how long publishing the last burst took; the next bursts end that much
    /// earlier (and as much earlier as the timer was late).
    pub fn published(&mut self, took: Duration) {
        // Timers fire on millisecond ticks: keep one tick in hand. Never more than half
        // the delay: a burst still gathers what arrives together.
        self.reserve = (took + self.late + TIMER_TICK).min(self.debounce.max_delay / 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: Debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
    };

    /// Sends one stamped event every `every` for `count` events, from a task.
    fn events(every: Duration, count: usize) -> mpsc::Receiver<(Instant, usize)> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            for i in 0..count {
                let _ = tx.send((Instant::now(), i)).await;
                tokio::time::sleep(every).await;
            }
        });
        rx
    }

    async fn next_burst(
        rx: &mut mpsc::Receiver<(Instant, usize)>,
        debounce: Debounce,
    ) -> Option<Vec<usize>> {
        let mut all = Vec::new();
        Debouncer::new(debounce)
            .burst(rx, |i| all.push(i))
            .await
            .map(|_| all)
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_burst_is_one_publication() {
        let mut rx = events(Duration::from_millis(5), 20);
        let start = Instant::now();
        let burst = next_burst(&mut rx, DEBOUNCE).await.unwrap();
        assert_eq!(burst.len(), 20);
        // Ends one quiet period after the last event.
        assert!(
            start.elapsed() < Duration::from_millis(100 + 50 + 10),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_cannot_starve_publication() {
        let mut rx = events(Duration::from_millis(10), 200);
        let start = Instant::now();
        let first = next_burst(&mut rx, DEBOUNCE).await.unwrap();
        assert_eq!(
            start.elapsed(),
            DEBOUNCE.max_delay - 2 * TIMER_TICK,
            "cut at the maximum delay, two timer ticks kept in hand"
        );
        assert!(first.len() >= 39 && first.len() <= 41, "{}", first.len());
        let second = next_burst(&mut rx, DEBOUNCE).await.unwrap();
        assert!(second.len() >= 39, "{}", second.len());
    }

    #[tokio::test(start_paused = true)]
    async fn separate_changes_are_separate_publications() {
        let mut rx = events(Duration::from_millis(200), 3);
        for _ in 0..3 {
            assert_eq!(next_burst(&mut rx, DEBOUNCE).await.unwrap().len(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_change_waits_longer_than_the_maximum_delay() {
        let mut debouncer = Debouncer::new(DEBOUNCE);
        // The last publication took 29 ms: a steady stream is cut 30 ms earlier (one
        // timer tick kept in hand).
        debouncer.published(Duration::from_millis(29));
        let mut rx = events(Duration::from_millis(10), 200);
        let start = Instant::now();
        debouncer.burst(&mut rx, |_| {}).await.unwrap();
        assert_eq!(
            start.elapsed(),
            DEBOUNCE.max_delay - Duration::from_millis(30)
        );
        // An event that waited in the queue counts from when it happened.
        let (tx, mut rx) = mpsc::channel(4);
        let happened = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send((happened, 0)).await.unwrap();
        let keep_sending = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if tx.send((Instant::now(), 1)).await.is_err() {
                    return;
                }
            }
        });
        let first = debouncer.burst(&mut rx, |_| {}).await.unwrap();
        assert_eq!(first, happened);
        assert_eq!(
            happened.elapsed(),
            DEBOUNCE.max_delay - Duration::from_millis(30)
        );
        keep_sending.abort();
    }
}
