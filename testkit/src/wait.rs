//! Bounded waits: every helper panics naming what did not happen in time.

use std::future::Future;
use std::time::Duration;

/// Poll period of [`eventually`].
const POLL: Duration = Duration::from_millis(50);

/// Awaits `fut` for at most `limit`; panics naming `what` if it does not complete.
pub async fn within<F: Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for: {what}"),
    }
}

/// Polls `check` every 50 ms until it returns true; panics naming `what` after `limit`.
/// Bounded both in time and in the number of polls.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let max_polls = (limit.as_millis() / POLL.as_millis()).max(1) as usize + 1;
    let deadline = tokio::time::Instant::now() + limit;
    for _ in 0..max_polls {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Ok(true) = tokio::time::timeout(left.max(POLL), check()).await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("condition not reached within {limit:?}: {what}");
}
