//! The agent's waits after a failure: a gateway skipped after it failed, the revocation
//! stream reconnecting.

use std::time::Duration;

pub(super) use lastmile_api_client::backoff::Backoff;

/// The first wait after a failure.
pub(super) const FIRST: Duration = Duration::from_millis(500);
/// The longest wait.
pub(super) const MAX: Duration = Duration::from_secs(30);

/// A fresh backoff from [`FIRST`] up to [`MAX`].
pub(super) const fn backoff() -> Backoff {
    Backoff::new(FIRST, MAX)
}
