//! Which alerts are mailed, and when: switched-off kinds are dropped, and repeats of one kind
//! within the flood period are folded into one digest sent when the period ends. Pure: time is
//! passed in; the outbox keeps the folded events on disk.
//!
//! Per kind: the first alert goes out at once and opens a period. Repeats inside the period are
//! folded; when it ends, one digest carries them and opens the next period. So a flapping server
//! produces at most one mail per kind per period, and nothing is silently lost.
//!
//! Times are wall-clock (`SystemTime`) so the state can be saved and restored across processes:
//! `web --once` runs as a new process every few seconds, and flood control must still hold there.
//! The caller derives "now" from a monotonic clock anchored at start, so a wall-clock jump during a
//! run does not disturb it, and [`FloodPolicy::restore`] clamps saved times against a clock that
//! went backwards between runs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::event::AlertKind;

/// What to do with a new alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The kind is switched off in `[alert] disabled`: log only.
    Drop,
    /// Queue it for mailing now.
    Send,
    /// Hold it for the kind's digest.
    Fold,
}

/// The flood state of one kind (saved in the outbox as `flood.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindState {
    /// When the last mail of this kind (single or digest) was queued.
    pub last_sent: SystemTime,
    /// Set while repeats are being folded: when their digest is due.
    pub digest_due: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct FloodPolicy {
    period: Duration,
    disabled: Vec<AlertKind>,
    kinds: BTreeMap<AlertKind, KindState>,
}

impl FloodPolicy {
    pub fn new(period: Duration, disabled: Vec<AlertKind>) -> Self {
        FloodPolicy { period, disabled, kinds: BTreeMap::new() }
    }

    /// Takes over the state a previous process saved. Times in the future (the clock went back)
    /// are clamped, so no kind is muted for longer than one period from `now`.
    pub fn restore(&mut self, saved: Vec<(AlertKind, KindState)>, now: SystemTime) {
        for (kind, mut st) in saved {
            st.last_sent = st.last_sent.min(now);
            st.digest_due = st.digest_due.map(|d| d.min(now + self.period));
            self.kinds.insert(kind, st);
        }
    }

    /// Folded alerts of `kind` exist (left by an earlier process) but no digest is scheduled for
    /// them: make it due at `now`.
    pub fn ensure_digest(&mut self, kind: AlertKind, now: SystemTime) {
        let st = self.kinds.entry(kind).or_insert(KindState { last_sent: now, digest_due: None });
        st.digest_due.get_or_insert(now);
    }

    /// The state to save.
    pub fn snapshot(&self) -> Vec<(AlertKind, KindState)> {
        self.kinds.iter().map(|(k, st)| (*k, *st)).collect()
    }

    /// The state of one kind, to tell whether an `admit` changed anything worth saving.
    pub fn kind_state(&self, kind: AlertKind) -> Option<KindState> {
        self.kinds.get(&kind).copied()
    }

    pub fn admit(&mut self, kind: AlertKind, now: SystemTime) -> Admit {
        if self.disabled.contains(&kind) {
            return Admit::Drop;
        }
        let period = self.period;
        match self.kinds.get_mut(&kind) {
            // first of its kind --> send, open a period
            None => {
                self.kinds.insert(kind, KindState { last_sent: now, digest_due: None });
                Admit::Send
            }
            // folding already --> fold
            Some(KindState { digest_due: Some(_), .. }) => Admit::Fold,
            // repeat within the period --> fold, digest due at the period's end
            Some(st) if now < st.last_sent + period => {
                st.digest_due = Some(st.last_sent + period);
                Admit::Fold
            }
            // period over --> send, open a new one
            Some(st) => {
                st.last_sent = now;
                Admit::Send
            }
        }
    }

    /// The kinds whose digest is due at `now`, earliest first; each counts as sent at its due time.
    pub fn due(&mut self, now: SystemTime) -> Vec<AlertKind> {
        let mut due: Vec<(SystemTime, AlertKind)> =
            self.kinds.iter().filter_map(|(k, st)| st.digest_due.filter(|d| *d <= now).map(|d| (d, *k))).collect();
        due.sort_by_key(|(d, k)| (*d, k.name()));
        for (d, k) in &due {
            if let Some(st) = self.kinds.get_mut(k) {
                st.last_sent = *d;
                st.digest_due = None;
            }
        }
        due.into_iter().map(|(_, k)| k).collect()
    }

    /// When the next digest is due, if any.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.kinds.values().filter_map(|st| st.digest_due).min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use AlertKind::{BothDown, FailoverStarted, OverflowRescan, PrimaryRecovered};

    const MIN: Duration = Duration::from_secs(60);

    fn policy() -> (FloodPolicy, SystemTime) {
        (FloodPolicy::new(10 * MIN, vec![OverflowRescan]), SystemTime::UNIX_EPOCH + 1000 * MIN)
    }

    #[test]
    fn disabled_kinds_are_dropped() {
        let (mut p, t0) = policy();
        assert_eq!(p.admit(OverflowRescan, t0), Admit::Drop);
        assert_eq!(p.admit(OverflowRescan, t0 + 20 * MIN), Admit::Drop);
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn first_of_a_kind_goes_out_and_repeats_fold_until_the_period_ends() {
        let (mut p, t0) = policy();
        assert_eq!(p.admit(PrimaryRecovered, t0), Admit::Send);
        assert_eq!(p.admit(PrimaryRecovered, t0 + MIN), Admit::Fold);
        assert_eq!(p.admit(PrimaryRecovered, t0 + 2 * MIN), Admit::Fold);
        assert_eq!(p.next_due(), Some(t0 + 10 * MIN));
        assert_eq!(p.due(t0 + 9 * MIN), vec![]);
        assert_eq!(p.due(t0 + 10 * MIN), vec![PrimaryRecovered]);
        assert_eq!(p.next_due(), None);
        // The digest opened a new period: a repeat soon after folds again, due 10 min after the digest.
        assert_eq!(p.admit(PrimaryRecovered, t0 + 11 * MIN), Admit::Fold);
        assert_eq!(p.next_due(), Some(t0 + 20 * MIN));
        // Quiet for a whole period after that digest: the next one goes out at once.
        assert_eq!(p.due(t0 + 20 * MIN), vec![PrimaryRecovered]);
        assert_eq!(p.admit(PrimaryRecovered, t0 + 31 * MIN), Admit::Send);
    }

    #[test]
    fn kinds_are_independent() {
        let (mut p, t0) = policy();
        assert_eq!(p.admit(FailoverStarted, t0), Admit::Send);
        assert_eq!(p.admit(BothDown, t0), Admit::Send);
        assert_eq!(p.admit(BothDown, t0 + MIN), Admit::Fold);
        assert_eq!(p.admit(FailoverStarted, t0 + 2 * MIN), Admit::Fold);
        assert_eq!(p.due(t0 + 10 * MIN), vec![BothDown, FailoverStarted]);
    }

    #[test]
    fn after_a_quiet_period_a_repeat_is_sent_at_once() {
        let (mut p, t0) = policy();
        assert_eq!(p.admit(BothDown, t0), Admit::Send);
        assert_eq!(p.admit(BothDown, t0 + 10 * MIN), Admit::Send);
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn state_carries_over_to_the_next_process() {
        let (mut p, t0) = policy();
        p.admit(BothDown, t0);
        p.admit(BothDown, t0 + MIN);
        let saved = p.snapshot();
        let mut next = FloodPolicy::new(10 * MIN, vec![]);
        next.restore(saved, t0 + 2 * MIN);
        assert_eq!(next.admit(BothDown, t0 + 3 * MIN), Admit::Fold, "still within the period");
        assert_eq!(next.next_due(), Some(t0 + 10 * MIN));
        assert_eq!(next.due(t0 + 10 * MIN), vec![BothDown]);
    }

    #[test]
    fn restore_clamps_times_from_a_clock_that_went_back() {
        let (mut p, t0) = policy();
        p.admit(BothDown, t0 + 500 * MIN);
        p.admit(BothDown, t0 + 501 * MIN);
        let mut next = FloodPolicy::new(10 * MIN, vec![]);
        next.restore(p.snapshot(), t0);
        assert_eq!(next.next_due(), Some(t0 + 10 * MIN), "muted for one period at most");
        assert_eq!(next.kind_state(BothDown).unwrap().last_sent, t0);
    }

    #[test]
    fn leftover_folds_get_a_digest_now() {
        let (mut p, t0) = policy();
        p.ensure_digest(BothDown, t0);
        assert_eq!(p.due(t0), vec![BothDown]);
        p.admit(FailoverStarted, t0);
        p.admit(FailoverStarted, t0 + MIN);
        p.ensure_digest(FailoverStarted, t0 + 2 * MIN);
        assert_eq!(p.next_due(), Some(t0 + 10 * MIN), "an already scheduled digest keeps its time");
    }
}
