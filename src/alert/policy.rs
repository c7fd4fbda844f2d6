//! Which alerts are mailed, and when: switched-off kinds are dropped, and repeats of one kind
//! within the flood period are folded into one digest sent when the period ends. Pure: time is
//! passed in; the outbox keeps the folded events on disk.
//!
//! Per kind: the first alert goes out at once and opens a period. Repeats inside the period are
//! folded; when it ends, one digest carries them and opens the next period. So a flapping server
//! produces at most one mail per kind per period, and nothing is silently lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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

#[derive(Debug, Clone, Copy)]
struct KindState {
    /// When the last mail of this kind (single or digest) was queued.
    last_sent: Instant,
    /// Set while repeats are being folded: when their digest is due.
    digest_due: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct FloodPolicy {
    period: Duration,
    disabled: Vec<AlertKind>,
    kinds: HashMap<AlertKind, KindState>,
}

impl FloodPolicy {
    pub fn new(period: Duration, disabled: Vec<AlertKind>) -> Self {
        FloodPolicy { period, disabled, kinds: HashMap::new() }
    }

    pub fn admit(&mut self, kind: AlertKind, now: Instant) -> Admit {
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
    pub fn due(&mut self, now: Instant) -> Vec<AlertKind> {
        let mut due: Vec<(Instant, AlertKind)> =
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

    /// Every open digest, whether due or not (on shutdown: send what was folded now).
    pub fn flush_all(&mut self, now: Instant) -> Vec<AlertKind> {
        let far = now + self.period * 2;
        self.due(far).into_iter().inspect(|k| self.mark_sent(*k, now)).collect()
    }

    fn mark_sent(&mut self, kind: AlertKind, now: Instant) {
        if let Some(st) = self.kinds.get_mut(&kind) {
            st.last_sent = now;
        }
    }

    /// When the next digest is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.kinds.values().filter_map(|st| st.digest_due).min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use AlertKind::{BothDown, FailoverStarted, OverflowRescan, PrimaryRecovered};

    const MIN: Duration = Duration::from_secs(60);

    fn policy() -> (FloodPolicy, Instant) {
        (FloodPolicy::new(10 * MIN, vec![OverflowRescan]), Instant::now())
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
    fn flush_all_releases_open_digests_early() {
        let (mut p, t0) = policy();
        p.admit(BothDown, t0);
        p.admit(BothDown, t0 + MIN);
        assert_eq!(p.flush_all(t0 + 2 * MIN), vec![BothDown]);
        assert_eq!(p.next_due(), None);
        assert_eq!(p.admit(BothDown, t0 + 3 * MIN), Admit::Fold, "the flushed digest counts as sent");
    }
}
