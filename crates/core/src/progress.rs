//! Progress callbacks, so a CLI can draw bars without the pipeline knowing about terminals.

use std::time::Duration;

use crate::error::Error;
use crate::item::Item;
use crate::report::Outcome;

/// Receives progress events from a running pipeline. Every method has an empty default.
pub trait Progress: Send + Sync {
    /// An item was found by the listing.
    fn listed(&self, _item: &Item) {}
    /// The listing has ended; totals are final.
    fn listing_done(&self) {}
    /// `n` more bytes were transferred.
    fn bytes(&self, _n: u64) {}
    /// A transfer failed and will be tried again after `delay`.
    fn retrying(&self, _item: &Item, _error: &Error, _delay: Duration) {}
    /// An item reached its final outcome.
    fn finished(&self, _item: &Item, _outcome: &Outcome) {}
}

/// Ignores all progress.
pub struct NoProgress;
impl Progress for NoProgress {}
