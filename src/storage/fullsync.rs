//! Full syncs outside the real-time path: `nfs-guard storage --once` (every tree to every remote,
//! remotes in parallel) and the decision of which full syncs a daemon start needs.
//!
//! Safe by default (see `push`): `--update` and no `--delete` unless `[storage.full_sync]` opts in,
//! because after a failover the backup holds data newer than the primary's.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::push;
use crate::config::storage::StorageConfig;
use crate::sys::rsync;

/// One failed full sync: `remote`, `tree`, and rsync's error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub remote: String,
    pub tree: String,
    pub error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}: {}", self.tree, self.remote, self.error)
    }
}

/// Runs a full sync of every tree to every remote; returns the failures (empty = success). When
/// `stop` is cancelled (SIGTERM, SIGINT), the rsyncs under way are killed with their process
/// groups, and every remote not done yet is a failure.
pub async fn once(cfg: Arc<StorageConfig>, stop: CancellationToken) -> Vec<Failure> {
    let mut set = JoinSet::new();
    let mut unfinished: Vec<Option<String>> = cfg.remotes.iter().map(|r| Some(r.name.clone())).collect();
    for ri in 0..cfg.remotes.len() {
        let cfg = Arc::clone(&cfg);
        set.spawn(async move {
            let remote = &cfg.remotes[ri];
            let mut failures = Vec::new();
            for tree in &cfg.trees {
                let args = push::full_sync_args(&cfg.rsync_args, &remote.target, tree, &cfg.full_sync, &cfg.filter);
                let result = rsync::run(&cfg.rsync, &args, None, cfg.full_sync.timeout).await;
                crate::metrics::storage().pushed(&remote.name, crate::metrics::storage::PushKind::FullSync, &result);
                let error = match result {
                    Ok(r) if r.ok() => {
                        tracing::info!(remote = %remote.name, tree = %tree.path.display(), files = r.files,
                            bytes = r.bytes, elapsed_ms = u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX), "full sync done");
                        continue;
                    }
                    Ok(r) => r.error_text(),
                    Err(e) => crate::chain::render_chain(&e),
                };
                tracing::error!(remote = %remote.name, tree = %tree.path.display(), error = %error, "full sync failed");
                failures.push(Failure { remote: remote.name.clone(), tree: tree.path.display().to_string(), error });
            }
            (ri, failures)
        });
    }
    let mut all = Vec::new();
    loop {
        let joined = tokio::select! {
            r = set.join_next() => r,
            () = stop.cancelled() => {
                // Wait for the aborted tasks: their rsyncs are killed when their futures drop.
                set.abort_all();
                while set.join_next().await.is_some() {}
                let error = "stopped by a signal before it finished".to_owned();
                for remote in unfinished.into_iter().flatten() {
                    tracing::error!(remote = %remote, "full sync stopped by a signal");
                    all.push(Failure { remote, tree: "every tree not yet done".into(), error: error.clone() });
                }
                return all;
            }
        };
        match joined {
            None => return all,
            Some(Ok((ri, f))) => {
                unfinished[ri] = None;
                all.extend(f);
            }
            Some(Err(e)) => all.push(Failure { remote: "?".into(), tree: "?".into(), error: e.to_string() }),
        }
    }
}

/// Whether a daemon start must fully sync every tree: when configured, or when the previous run did
/// not shut down cleanly (events between its last journal write and the crash were only in memory).
pub fn needed_at_start(at_start: bool, previous_run_was_clean: bool) -> bool {
    at_start || !previous_run_was_clean
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unclean_stop_forces_a_full_sync() {
        assert!(needed_at_start(true, true));
        assert!(needed_at_start(false, false));
        assert!(!needed_at_start(false, true));
    }
}
