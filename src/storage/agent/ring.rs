//! What a standby agent saw change in its export, kept for a while in memory: when it is promoted,
//! the changes clients made through a web node that switched before the agent learned its role are
//! journaled for the peer from it (see [`Ring::since`]).
//!
//! Bounded by count and age; losing the oldest entries, or events (an overflow), moves
//! [`Ring::covered_since_ms`] forward, and the decider can tell whether the ring covers its switch.

use std::collections::VecDeque;

use crate::storage::batch::Entry;

/// Entries kept at most.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Entries older than this are dropped (an hour: a web node that could not reach the agent for
/// longer gets the reverse sync fallback).
pub const MAX_AGE_MS: u64 = 3_600_000;

pub struct Ring {
    entries: VecDeque<(u64, Entry)>,
    covered_since_ms: u64,
    max: usize,
}

impl Ring {
    /// A ring that has seen everything since `start_ms` (the watches went in then).
    pub fn new(start_ms: u64) -> Ring {
        Ring::with_capacity(start_ms, MAX_ENTRIES)
    }

    pub fn with_capacity(start_ms: u64, max: usize) -> Ring {
        Ring { entries: VecDeque::new(), covered_since_ms: start_ms, max }
    }

    /// Records `batch`, seen at `now_ms`.
    pub fn record(&mut self, now_ms: u64, batch: &[Entry]) {
        for e in batch {
            self.entries.push_back((now_ms, e.clone()));
        }
        while self.entries.len() > self.max
            || self.entries.front().is_some_and(|(t, _)| now_ms.saturating_sub(*t) > MAX_AGE_MS)
        {
            if let Some((t, _)) = self.entries.pop_front() {
                self.covered_since_ms = self.covered_since_ms.max(t.saturating_add(1));
            }
        }
    }

    /// Events were lost at `now_ms` (an overflow): nothing before is known for sure.
    pub fn lost(&mut self, now_ms: u64) {
        self.entries.clear();
        self.covered_since_ms = now_ms;
    }

    /// The entries seen at or after `from_ms`, oldest first; the ring is emptied.
    pub fn since(&mut self, from_ms: u64) -> Vec<Entry> {
        let out = self.entries.iter().filter(|(t, _)| *t >= from_ms).map(|(_, e)| e.clone()).collect();
        self.entries.clear();
        out
    }

    pub fn covered_since_ms(&self) -> u64 {
        self.covered_since_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::Scope;

    fn e(p: &str) -> Entry {
        Entry::new(0, p, Scope::Path)
    }

    #[test]
    fn promotion_takes_what_was_seen_since_the_switch_and_old_entries_move_coverage() {
        let mut r = Ring::with_capacity(1000, 3);
        r.record(1000, &[e("a")]);
        r.record(2000, &[e("b"), e("c")]);
        assert_eq!(r.covered_since_ms(), 1000);
        r.record(3000, &[e("d")]);
        assert_eq!(r.covered_since_ms(), 1001, "a was dropped: the ring covers only what came after it");
        assert_eq!(r.since(2000), vec![e("b"), e("c"), e("d")]);
        assert!(r.since(0).is_empty(), "taken once");
        r.record(3000 + MAX_AGE_MS + 1, &[e("late")]);
        r.lost(9_999_999);
        assert_eq!(r.covered_since_ms(), 9_999_999);
        assert!(r.since(0).is_empty());
    }
}
