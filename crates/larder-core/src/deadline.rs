//! Deadlines: a point in time after which an operation is cancelled.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// A point in time by which an operation must finish.
///
/// Set one per unit of work ([`UowOptions::with_deadline`](crate::UowOptions::with_deadline))
/// and/or per call ([`Repo::with_deadline`](crate::Repo::with_deadline)); the earlier one
/// wins. When it passes, the backend cancels the statement inside the database (PostgreSQL
/// `statement_timeout`, SQLite interrupt), the caller gets
/// [`Error::DeadlineExceeded`], and the connection stays healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline `d` from now.
    pub fn after(d: Duration) -> Deadline {
        Deadline(Instant::now() + d)
    }

    /// A deadline at an instant.
    pub fn at(instant: Instant) -> Deadline {
        Deadline(instant)
    }

    /// The instant.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left (zero once passed).
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn is_expired(self) -> bool {
        Instant::now() >= self.0
    }

    /// The earlier of two optional deadlines.
    pub fn earliest(a: Option<Deadline>, b: Option<Deadline>) -> Option<Deadline> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fails fast with `DeadlineExceeded` if the deadline has passed.
    pub fn check(deadline: Option<Deadline>, operation: &'static str) -> Result<()> {
        match deadline {
            Some(d) if d.is_expired() => Err(Error::DeadlineExceeded { operation }),
            _ => Ok(()),
        }
    }
}

/// How long after the deadline the client-side timer fires. The database's own
/// cancellation (which keeps the connection healthy) gets this head start; the client
/// timer is only the backstop for a stuck network.
pub const CLIENT_GRACE: Duration = Duration::from_millis(250);

/// Runs `fut` under an optional deadline with the client-side backstop timer.
pub async fn bounded<T>(
    deadline: Option<Deadline>,
    operation: &'static str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match deadline {
        None => fut.await,
        Some(d) => {
            Deadline::check(Some(d), operation)?;
            match tokio::time::timeout_at(d.0 + CLIENT_GRACE, fut).await {
                Ok(Err(Error::DeadlineExceeded { .. })) => {
                    Err(Error::DeadlineExceeded { operation })
                }
                Ok(r) => r,
                Err(_) => Err(Error::DeadlineExceeded { operation }),
            }
        }
    }
}
