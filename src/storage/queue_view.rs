//! A replication queue as a metrics scrape reads it (depth and lag: a lock, no I/O).

use std::sync::Arc;
use std::time::Duration;

use super::remote::Queue;
use crate::metrics::storage::QueueView;

impl QueueView for Queue {
    fn paths(&self) -> usize {
        self.depth().0 + self.in_flight()
    }

    fn full_syncs(&self) -> usize {
        self.depth().1.len()
    }

    fn lag(&self) -> Duration {
        Queue::lag(self)
    }
}

pub fn of(q: &Arc<Queue>) -> Arc<dyn QueueView> {
    Arc::clone(q) as Arc<dyn QueueView>
}
