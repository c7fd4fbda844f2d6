//! The failback guard: how a web node doing a reverse sync tells the primary's replicator not to
//! echo what the reverse sync writes.
//!
//! Without it, a failback loses writes: reverse-sync pass 1 copies a file from the backup into the
//! primary's export; the primary's `nfs-guard storage` sees the change and pushes that copy back to
//! the backup, over a newer version a client wrote through the backup mount meanwhile; the catch-up
//! pass then finds nothing newer, and the client's write is gone from both servers.
//!
//! Protocol (no new port, no new credentials: the reverse sync's own rsync module):
//! 1. before pass 1 the web node uploads [`MARKER`] into the root of the module (the export root);
//!    its content is a lease (`lease-secs=N`), renewed by each attempt;
//! 2. the primary's replicator sees the marker's creation in the event stream of the tree rooted
//!    there and, from that event on, drops the changes of that tree: they are copies of what the
//!    backup holds already (or older);
//! 3. after pass 1 (success or failure) the web node deletes the marker; its deletion event comes
//!    after every event of pass 1 in the same inotify queue, so the end is exact, with no timing.
//!    A web node that dies in between leaves a marker whose lease runs out; the replicator then
//!    queues a full sync of the tree (its configured full-sync policy, `--update` by default).
//!
//! The marker never replicates (excluded from pushes, full syncs and the reverse sync itself).

use std::time::Duration;

/// File name of the marker, at the root of the reverse-sync module (= a tree root on the primary).
pub const MARKER: &str = ".nfs-guard-failback";

/// Used when the marker cannot be read (already deleted, or damaged).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(600);
/// No marker holds the guard longer than this.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The marker's content for a lease of `lease`.
pub fn encode(lease: Duration) -> Vec<u8> {
    format!("nfs-guard failback in progress; do not delete\nlease-secs={}\n", lease.as_secs()).into_bytes()
}

/// The lease a marker's content asks for, capped at [`MAX_LEASE`]; `None` when unreadable.
pub fn decode(content: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(content).ok()?;
    let secs: u64 = text.lines().find_map(|l| l.strip_prefix("lease-secs="))?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_LEASE))
}

/// Is this name (relative to a tree root, one component) the marker or one of rsync's temporary
/// files for it (`.MARKER.XXXXXX`)?
pub fn is_marker_name(name: &[u8]) -> bool {
    let m = MARKER.as_bytes();
    name == m || (name.starts_with(b".") && name[1..].starts_with(m) && name.get(m.len() + 1) == Some(&b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_round_trips_and_is_capped() {
        assert_eq!(decode(&encode(Duration::from_secs(3660))), Some(Duration::from_secs(3660)));
        assert_eq!(decode(b"lease-secs=99999999999999\n"), Some(MAX_LEASE));
        assert_eq!(decode(b"lease-secs=18446744073709551616\n"), None);
        assert_eq!(decode(b"\xff"), None);
        assert_eq!(decode(b""), None);
    }

    #[test]
    fn marker_names() {
        assert!(is_marker_name(b".nfs-guard-failback"));
        assert!(is_marker_name(b"..nfs-guard-failback.Ab12Cd"));
        assert!(!is_marker_name(b".nfs-guard-failback2"));
        assert!(!is_marker_name(b"x.nfs-guard-failback"));
        assert!(!is_marker_name(b"."));
    }
}
