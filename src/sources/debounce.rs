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

/// Waits for the next burst of events, handing each to `each` as it arrives (nothing
/// queues here). Returns when the burst's first event arrived, or `None` when the sender
/// is gone and nothing arrived.
pub async fn burst<T>(
    rx: &mut mpsc::Receiver<T>,
    debounce: Debounce,
    mut each: impl FnMut(T),
) -> Option<Instant> {
    let first = rx.recv().await?;
    let start = Instant::now();
    each(first);
    let deadline = start + debounce.max_delay;
    loop {
        let quiet_end = (Instant::now() + debounce.quiet).min(deadline);
        match tokio::time::timeout_at(quiet_end, rx.recv()).await {
            Ok(Some(more)) => each(more),
            Ok(None) | Err(_) => return Some(start),
        }
        if Instant::now() >= deadline {
            return Some(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: Debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
    };

    /// Sends one event every `every` for `count` events, from a task.
    fn events(every: Duration, count: usize) -> mpsc::Receiver<usize> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            for i in 0..count {
                let _ = tx.send(i).await;
                tokio::time::sleep(every).await;
            }
        });
        rx
    }

    async fn next_burst(rx: &mut mpsc::Receiver<usize>, debounce: Debounce) -> Option<Vec<usize>> {
        let mut all = Vec::new();
        burst(rx, debounce, |i| all.push(i)).await.map(|_| all)
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
            DEBOUNCE.max_delay,
            "cut at the maximum delay"
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
}
