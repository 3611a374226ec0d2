//! How long to wait after a failure before trying again: the gateway skipped after it
//! failed, and the revocation stream reconnecting.

use std::time::Duration;

/// Waits that double with each failure, from FIRST up to MAX, and start over after a
/// success.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) const FIRST: Duration = Duration::from_millis(500);
    pub(super) const MAX: Duration = Duration::from_secs(30);

    /// The wait after one more failure.
    pub(super) fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(Self::MAX);
        wait
    }

    /// A success: the next failure waits FIRST again.
    pub(super) fn reset(&mut self) {
        *self = Self::default();
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_start_over_after_a_success() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..9).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.failed(), Backoff::FIRST);
        assert_eq!(b.failed(), Backoff::FIRST * 2);
    }
}
