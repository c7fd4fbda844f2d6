//! rsync argument vectors for real-time batches and full syncs, and the expansion of a batch into
//! the NUL-separated file list rsync reads on stdin. Pure apart from [`plan`] and [`expand`], which
//! walk the local directories of recursive entries (never following symlinks).
//!
//! Why these options:
//! - `--files-from=- --from0`: names are raw bytes on stdin, never parsed by a shell or as rsync
//!   wildcards (`*?[]`, a leading `-`, newlines all arrive literally), each behind `./` because rsync
//!   takes a line starting with `#` or `;` for a comment; it implies `-R` and no recursion,
//!   so a listed directory carries only its own attributes and the walk decides what goes with it.
//! - `--delete-missing-args --force`: a listed path that no longer exists here is deleted on the
//!   remote in the same run; `--force` lets that delete a non-empty directory (without it rsync
//!   3.x refuses "cannot delete non-empty directory" and still exits 0).
//! - A batch of new or moved-in subtrees (the common burst: `mkdir` and files inside) and of paths
//!   that are not directories (files, symlinks, deleted paths) goes as source ARGUMENTS `SRC/./rel`
//!   with `-R -r`, and rsync walks the subtrees itself: rsync 3.4+ opens every component of every
//!   `--files-from` path on its own, which makes a list of the files of a deep tree ~2x slower than
//!   a recursive transfer, and it reads the list one byte per read(2): 10,000 paths as a list cost
//!   the client twice the CPU they cost as arguments. A non-directory argument is sent as in a list
//!   (recursion does not apply to it); a missing one is deleted by `--delete-missing-args` as in a
//!   list (a rename burst is exactly that: its old names, its new names). Only a directory's own
//!   `Path` entry (its attributes, not its contents) needs the list. Past [`MAX_ROOTS`] or
//!   [`MAX_ROOT_BYTES`] of arguments, the list is used.
//! - `Replace` entries (a directory deleted and made again) go as roots too, in batches of their own
//!   (see `remote::Queue::next`), with `--delete`: what the remote has beneath them and the source
//!   no longer has goes. `--delete` never reaches outside the roots (not even their parents, which
//!   `-R` only creates). New subtrees never get `--delete`: while a reverse sync fills a new
//!   directory on the primary, the backup still holds files it has not copied yet.
//! - `--stats`: files and bytes for the status file.
//! - `--sockopts=TCP_NODELAY` (daemon transport): each push is a short protocol exchange of small
//!   writes; with Nagle's algorithm two of them wait for the daemon's delayed ACK (2 x 40 ms), which
//!   was most of a small batch's time.
//! - Full syncs are recursive and SAFE by default: `--update` (never overwrite a newer remote file) and
//!   no `--delete`. After a failover the backup took writes the primary never saw; a careless full sync
//!   from the primary would overwrite or delete them.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use super::batch::{cmp_rel, Entry, Scope};
use crate::config::filter::Filter;
use crate::config::storage::{FullSync, Tree};
use crate::sys::rsync::{self, RsyncReport, RsyncTarget, SpawnError, Transport};

/// `SRC/` for a tree root.
fn source(tree: &Tree) -> OsString {
    let mut s = tree.path.clone().into_os_string();
    if !s.to_string_lossy().ends_with('/') {
        s.push("/");
    }
    s
}

/// The destination URL of `tree` on `target`.
pub fn dest_url(target: &RsyncTarget, tree: &Tree) -> String {
    if tree.dest.is_empty() {
        target.url()
    } else {
        format!("{}{}/", target.url(), tree.dest)
    }
}

fn common(base: &[String], target: &RsyncTarget, tree: &Tree) -> Vec<OsString> {
    let mut a: Vec<OsString> = base.iter().map(OsString::from).collect();
    a.push("--stats".into());
    // The failback guard's marker (and rsync's temporary file for it) never replicates.
    a.push(format!("--exclude=/{}", crate::failback_guard::MARKER).into());
    a.push(format!("--exclude=/.{}.*", crate::failback_guard::MARKER).into());
    // Nor does a storage agent's drain barrier.
    a.push(format!("--exclude=/{}", super::agent::duty::BARRIER).into());
    a.push(format!("--exclude=/{}", super::agent::health::CANARY).into());
    if !tree.dest.is_empty() {
        // Create the tree's directory on the remote the first time.
        a.push("--mkpath".into());
    }
    if matches!(target.transport, Transport::Daemon) {
        // Without it, Nagle's algorithm holds the client's small protocol writes (the arguments after
        // the greeting, the closing messages) until the daemon's delayed ACK, 40 ms each: 80 of the
        // ~95 ms a one-file push to the lab's daemon took (`strace -tt`); with it, 8-19 ms.
        a.push("--sockopts=TCP_NODELAY".into());
    }
    a.extend(target.transport_args());
    a
}

/// At most this many roots go as arguments, and at most this many bytes of them (each with its
/// `SRC/./` prefix, its NUL and its pointer: half of Linux's 2 MiB `ARG_MAX`, which also holds the
/// options and the environment). About 25,000 paths of 30 bytes.
pub const MAX_ROOTS: usize = 100_000;
pub const MAX_ROOT_BYTES: usize = 1024 * 1024;
/// Replaced directories per batch (`remote::Queue::next`): a batch of them that does not fit as
/// roots would lose its `--delete`.
pub const MAX_REPLACE_ROOTS: usize = 1000;

/// How one batch of one tree goes to rsync.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Subtrees, files and deleted paths: these roots as arguments, rsync recursing into the subtrees.
    Roots(Vec<PathBuf>),
    /// Only replaced directories: roots as arguments, with `--delete` inside them.
    Replace(Vec<PathBuf>),
    /// The expanded list, on stdin.
    List(Vec<PathBuf>),
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Roots or listed paths.
    pub fn len(&self) -> usize {
        match self {
            Plan::Roots(v) | Plan::Replace(v) | Plan::List(v) => v.len(),
        }
    }
}

/// argv (without the program) for one real-time batch of `tree`; for [`Plan::List`] the list goes
/// on stdin. `filter` applies inside the roots rsync walks (the list is filtered already).
pub fn batch_args(base: &[String], target: &RsyncTarget, tree: &Tree, plan: &Plan, filter: &Filter) -> Vec<OsString> {
    let mut a = common(base, target, tree);
    match plan {
        Plan::List(_) => {
            a.extend(["--files-from=-", "--from0", "--delete-missing-args", "--force"].map(OsString::from));
            a.push(source(tree));
        }
        Plan::Roots(roots) | Plan::Replace(roots) => {
            a.extend(["-R", "-r", "--delete-missing-args", "--force"].map(OsString::from));
            if matches!(plan, Plan::Replace(_)) {
                a.push("--delete".into());
            }
            a.extend(filter.rsync_args());
            // `SRC/./rel`: `-R` keeps what follows `/./`. Absolute, so never taken for an option
            // or a host; rsync does not glob local arguments.
            for r in roots {
                let mut arg = source(tree);
                arg.push("./");
                if r != Path::new(".") {
                    arg.push(r);
                }
                a.push(arg);
            }
        }
    }
    a.push(dest_url(target, tree).into());
    a
}

/// How one batch is pushed.
#[derive(Debug, Clone, Copy)]
pub struct RunOpts {
    pub deadline: std::time::Duration,
    /// The remote may have been written by others since this batch was queued (a push failed, or
    /// the journal was replayed: the backup may have served clients meanwhile): `--update`, so a
    /// newer file there is never overwritten. (Which files it left alone cannot be told: a daemon
    /// or ssh receiver does not report `--info=skip` to the sender.)
    pub cautious: bool,
}

/// Pushes one planned batch of `tree` to `target`: the argv of [`batch_args`] (with `--update`
/// first when cautious), and for [`Plan::List`] the list on stdin ([`rsync::nul_list`]).
pub async fn run(
    rsync: &Path,
    base: &[String],
    target: &RsyncTarget,
    tree: &Tree,
    plan: &Plan,
    filter: &Filter,
    opts: RunOpts,
) -> Result<RsyncReport, SpawnError> {
    let batch = |plan: &Plan| (batch_args(base, target, tree, plan, filter), list_of(plan));
    // A listed `.` (the root's own change) would make rsync send every entry of the root, half-
    // written files included: the list goes without it, then the root's attributes alone.
    if let Plan::List(l) = plan {
        if l.iter().any(|p| p == Path::new(".")) {
            let rest: Vec<PathBuf> = l.iter().filter(|p| *p != Path::new(".")).cloned().collect();
            let mut listed = None;
            if !rest.is_empty() {
                let (args, stdin) = batch(&Plan::List(rest));
                let r = spawn(rsync, args, stdin, opts).await?;
                if !r.ok() {
                    return Ok(r);
                }
                listed = Some(r);
            }
            let mut args = common(base, target, tree);
            args.extend(["-d", "--exclude=/*"].map(OsString::from));
            args.push(source(tree));
            args.push(dest_url(target, tree).into());
            let mut r = spawn(rsync, args, None, opts).await?;
            if let Some(l) = listed {
                r.files += l.files;
                r.bytes += l.bytes;
                r.elapsed += l.elapsed;
            }
            return Ok(r);
        }
    }
    let (args, stdin) = batch(plan);
    spawn(rsync, args, stdin, opts).await
}

/// A list plan's paths for rsync's stdin.
fn list_of(plan: &Plan) -> Option<Vec<u8>> {
    match plan {
        Plan::List(l) => Some(rsync::nul_list(l.iter().map(PathBuf::as_path))),
        Plan::Roots(_) | Plan::Replace(_) => None,
    }
}

/// Runs rsync with `args` (`--update` first when cautious) under the batch deadline.
async fn spawn(
    rsync: &Path,
    mut args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    opts: RunOpts,
) -> Result<RsyncReport, SpawnError> {
    if opts.cautious {
        args.insert(0, "--update".into());
    }
    precise_times(&mut args);
    rsync::run(rsync, &args, stdin, opts.deadline).await
}

/// Adds `--modify-window=-1` (mtimes compared to the nanosecond) unless `args` has `--update`. By
/// default rsync's quick check compares whole seconds: a file rewritten with the same size in the
/// same second as its last push looked unchanged and was never pushed again (found by the chaos
/// test's post-mortem; `storage_local::a_same_size_rewrite_in_the_same_second_replicates`). But
/// rsync's `--update` test subtracts the window from the difference in whole seconds: with -1 it
/// overwrote a remote file one second newer, so cautious pushes keep the default window.
fn precise_times(args: &mut Vec<OsString>) {
    if !args.iter().any(|a| a == "--update") {
        args.insert(0, "--modify-window=-1".into());
    }
}

/// argv for a recursive full sync of `tree`.
pub fn full_sync_args(
    base: &[String],
    target: &RsyncTarget,
    tree: &Tree,
    policy: &FullSync,
    filter: &Filter,
) -> Vec<OsString> {
    let mut a = common(base, target, tree);
    if policy.update {
        a.push("--update".into());
    }
    if policy.delete {
        a.push("--delete".into());
    }
    a.extend(filter.rsync_args());
    precise_times(&mut a);
    a.push(source(tree));
    a.push(dest_url(target, tree).into());
    a
}

/// A dry run that lists (`deleting PATH` on stdout, see `rsync::deleted_paths`) what `target`
/// holds of `tree` and this host does not; excluded paths are neither listed nor touched.
pub fn deletion_list_args(base: &[String], target: &RsyncTarget, tree: &Tree, filter: &Filter) -> Vec<OsString> {
    let mut a = common(base, target, tree);
    // after the configured arguments: no file names on stdout but the deletions, whatever -v they hold
    a.extend(["--dry-run", "--delete", "--info=del1,name0", "--out-format="].map(OsString::from));
    a.extend(filter.rsync_args());
    a.push(source(tree));
    a.push(dest_url(target, tree).into());
    a
}

/// How to push `entries` (all of one tree rooted at `root`): [`Plan::Roots`] when every entry that
/// no recursive entry of the batch covers can go as a root ([`as_root`]) and they fit in an argv, [`Plan::Replace`] when all
/// are `Replace` entries, else [`Plan::List`] (which never deletes beneath a replaced directory: a
/// warning says so).
pub fn plan(root: &Path, entries: &[Entry], filter: &Filter) -> Plan {
    let covered = coverage(entries);
    let top: Vec<&Entry> = entries.iter().filter(|e| !filter.excluded(&e.path) && !covered(&e.path)).collect();
    let roots = sorted(top.iter().map(|e| e.path.clone()).collect());
    let bytes: usize = roots.iter().map(|r| r.as_os_str().len() + root.as_os_str().len() + 4 + 8).sum();
    let fits = roots.len() <= MAX_ROOTS && bytes <= MAX_ROOT_BYTES;
    if fits && !top.is_empty() && top.iter().all(|e| as_root(root, e)) {
        return Plan::Roots(roots);
    }
    if fits && top.iter().all(|e| e.scope == Scope::Replace) {
        return Plan::Replace(roots);
    }
    if top.iter().any(|e| e.scope == Scope::Replace) {
        tracing::warn!(
            tree = %root.display(),
            "replaced directories pushed as a list: files the source no longer has beneath them stay on the remote until a full sync with delete"
        );
    }
    Plan::List(expand(root, entries, filter))
}

/// Can `e` go as a root argument, rsync recursing into it? A subtree, and any other path that is not
/// a directory now: a file or symlink is sent as in a list, a missing path is deleted as in a list.
/// A directory's `Path` entry stands for its attributes only (recursing would send its contents,
/// half-written files included), and `Replace` needs `--delete`: both need other plans. (A path that
/// becomes a directory between this look and rsync's is walked: its creation pushes it so anyway.)
fn as_root(root: &Path, e: &Entry) -> bool {
    match e.scope {
        Scope::Tree => true,
        Scope::Replace => false,
        Scope::Path | Scope::Gone => {
            e.path != Path::new(".") && !std::fs::symlink_metadata(root.join(&e.path)).is_ok_and(|m| m.is_dir())
        }
    }
}

/// Is a path beneath a recursive entry of `entries` (so a walk of that entry covers it)?
fn coverage(entries: &[Entry]) -> impl Fn(&Path) -> bool + '_ {
    let trees: HashSet<&Path> = entries.iter().filter(|e| e.scope.recursive()).map(|e| e.path.as_path()).collect();
    move |p: &Path| {
        p.ancestors().skip(1).any(|a| trees.contains(a)) || (p != Path::new(".") && trees.contains(Path::new(".")))
    }
}

/// The relative paths to list for `entries` (all of one tree rooted at `root`): `Path` entries as
/// they are, `Tree` entries with everything beneath them that the filter keeps. Sorted, no duplicates.
pub fn expand(root: &Path, entries: &[Entry], filter: &Filter) -> Vec<PathBuf> {
    let mut out = Vec::with_capacity(entries.len());
    // A tree inside another tree of the same batch is covered by the outer walk (a burst of nested
    // mkdirs would otherwise walk the same chain once per level).
    let covered = coverage(entries);
    for e in entries {
        if filter.excluded(&e.path) {
            continue;
        }
        out.push(e.path.clone());
        // lstat: a symlink to a directory is listed as the link, never walked through.
        if e.scope.recursive()
            && !covered(&e.path)
            && std::fs::symlink_metadata(root.join(&e.path)).is_ok_and(|m| m.is_dir())
        {
            walk(root, &e.path, filter, &mut out);
        }
    }
    sorted(out)
}

/// `paths` sorted as `Path` sorts them (component-wise, by [`cmp_rel`]: cheaper), without duplicates.
fn sorted(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort_unstable_by(|a, b| cmp_rel(a, b));
    paths.dedup();
    paths
}

/// Adds everything beneath `root/rel` (a directory, not a symlink) to `out`. Errors (a directory
/// vanishing mid-walk) end that branch: the vanished part is someone else's event.
fn walk(root: &Path, rel: &Path, filter: &Filter, out: &mut Vec<PathBuf>) {
    let mut stack = vec![rel.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&dir)) else { continue };
        for de in rd.flatten() {
            let child = if dir.as_os_str() == "." { PathBuf::from(de.file_name()) } else { dir.join(de.file_name()) };
            if filter.excluded(&child) {
                continue;
            }
            if de.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(child.clone());
            }
            out.push(child);
        }
    }
}

/// Counts the directories under `root` (not following symlinks): one inotify watch each.
pub fn count_dirs(root: &Path) -> io::Result<u64> {
    let mut n = 1;
    let mut stack = vec![root.to_path_buf()];
    let mut first = true;
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if first => return Err(e),
            Err(_) => continue,
        };
        first = false;
        for de in rd.flatten() {
            if de.file_type().is_ok_and(|t| t.is_dir()) {
                n += 1;
                stack.push(de.path());
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::time::Duration;

    use super::*;

    fn target() -> RsyncTarget {
        RsyncTarget::example()
    }

    fn strs(a: &[OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    /// Daemon pushes turn Nagle off (two delayed ACKs, 80 ms, per push otherwise); over ssh the
    /// option would mean nothing (ssh owns the socket) and is left out.
    #[test]
    fn daemon_pushes_disable_nagle_and_ssh_pushes_do_not_ask() {
        let tree = Tree { path: "/srv/nfs".into(), dest: String::new() };
        let plan = Plan::List(vec!["x".into()]);
        let nodelay = |t: &RsyncTarget| {
            strs(&batch_args(&[], t, &tree, &plan, &Filter::default())).contains(&"--sockopts=TCP_NODELAY".to_owned())
        };
        assert!(nodelay(&target()));
        let ssh = RsyncTarget { transport: Transport::Ssh, ..target() };
        assert!(!nodelay(&ssh));
        let policy =
            FullSync { at_start: true, interval: None, update: true, delete: false, timeout: Duration::from_secs(1) };
        let full = full_sync_args(&[], &target(), &tree, &policy, &Filter::default());
        assert!(strs(&full).contains(&"--sockopts=TCP_NODELAY".to_owned()));
    }

    #[test]
    fn mtimes_are_precise_unless_update_compares_them() {
        let mut a: Vec<OsString> = vec!["-a".into()];
        precise_times(&mut a);
        assert_eq!(strs(&a), ["--modify-window=-1", "-a"]);
        let mut a: Vec<OsString> = vec!["--update".into(), "-a".into()];
        precise_times(&mut a);
        assert_eq!(strs(&a), ["--update", "-a"]);
    }

    #[test]
    fn batch_argv_lists_on_stdin_and_deletes_missing_args() {
        let tree = Tree { path: "/srv/nfs".into(), dest: String::new() };
        let plan = Plan::List(vec!["x".into()]);
        let a = batch_args(&["-a".into(), "-H".into()], &target(), &tree, &plan, &Filter::default());
        assert_eq!(
            strs(&a),
            [
                "-a",
                "-H",
                "--stats",
                "--exclude=/.nfs-guard-failback",
                "--exclude=/..nfs-guard-failback.*",
                "--exclude=/.nfs-guard-barrier",
                "--exclude=/.nfs-guard-agent-canary",
                "--sockopts=TCP_NODELAY",
                "--timeout=30",
                "--contimeout=5",
                "--password-file=/etc/nfs-guard/rsync.pass",
                "--files-from=-",
                "--from0",
                "--delete-missing-args",
                "--force",
                "/srv/nfs/",
                "rsync://nfsguard@10.0.0.3:873/data/"
            ]
        );
    }

    #[test]
    fn subtree_roots_go_as_arguments_with_the_filter() {
        let tree = Tree { path: "/srv/nfs".into(), dest: String::new() };
        let weird = PathBuf::from(std::ffi::OsStr::from_bytes(b"-\n\xff*"));
        let plan = Plan::Roots(vec![".".into(), "a/new".into(), weird]);
        let f = Filter::new(&["*.swp"], &[]).unwrap();
        let a = batch_args(&["-a".into()], &target(), &tree, &plan, &f);
        let tail: Vec<&[u8]> = a[a.len() - 9..].iter().map(|s| s.as_bytes()).collect();
        assert_eq!(
            tail,
            [
                &b"-R"[..],
                b"-r",
                b"--delete-missing-args",
                b"--force",
                b"--filter=- *.swp",
                b"/srv/nfs/./",
                b"/srv/nfs/./a/new",
                b"/srv/nfs/./-\n\xff*",
                b"rsync://nfsguard@10.0.0.3:873/data/"
            ]
        );
        assert!(!a.iter().any(|s| s == "--files-from=-"));
    }

    #[test]
    fn plan_uses_roots_when_every_uncovered_entry_is_a_subtree_or_no_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("new/a")).unwrap();
        std::fs::write(root.join("new/a/f"), "x").unwrap();
        std::fs::write(root.join("plain"), "x").unwrap();
        let filter = Filter::new(&["*.swp"], &[]).unwrap();
        // Files inside a new directory are covered by it; excluded entries do not count.
        let burst = [
            Entry::new(0, "new", Scope::Tree),
            Entry::new(0, "new/a", Scope::Tree),
            Entry::new(0, "new/a/f", Scope::Path),
            Entry::new(0, "gone", Scope::Tree),
            Entry::new(0, "x.swp", Scope::Path),
        ];
        assert_eq!(plan(root, &burst, &filter), Plan::Roots(vec!["gone".into(), "new".into()]));
        // Files and deleted paths outside every subtree go as roots too (a burst's later batches:
        // files closed after their directory's walk began, beside the directories made since).
        let mixed = [
            Entry::new(0, "new", Scope::Tree),
            Entry::new(0, "plain", Scope::Path),
            Entry::new(0, "deleted", Scope::Path),
            Entry::new(0, "gone-dir", Scope::Gone),
        ];
        assert_eq!(
            plan(root, &mixed, &filter),
            Plan::Roots(vec!["deleted".into(), "gone-dir".into(), "new".into(), "plain".into()])
        );
        // A directory's own change (its attributes, not its contents) needs the list (which walks
        // the subtrees); so does the tree root's.
        for dir in ["new/a", "."] {
            let attrs = [Entry::new(0, "plain", Scope::Tree), Entry::new(0, dir, Scope::Path)];
            assert!(matches!(plan(root, &attrs, &filter), Plan::List(_)), "{dir}");
        }
        // Without a subtree too: files and deletions go as arguments. rsync reads a `--files-from`
        // list one byte per read(2) (and a poll(2) each): a list of 10,000 paths cost the client
        // twice the CPU of the same paths as arguments (0.27 s vs 0.11 s, lab, docs/bench-storage.md).
        let files = [
            Entry::new(0, "plain", Scope::Path),
            Entry::new(0, "deleted", Scope::Path),
            Entry::new(0, "gone-dir", Scope::Gone),
        ];
        assert_eq!(plan(root, &files, &filter), Plan::Roots(vec!["deleted".into(), "gone-dir".into(), "plain".into()]));
        // A burst of 5,000 renames (moved_from: Gone, moved_to: Tree) goes as 10,000 arguments.
        let renames: Vec<Entry> = (0..5000)
            .flat_map(|i| {
                [
                    Entry::new(0, format!("e/d{}/f{i:05}", i % 50), Scope::Gone),
                    Entry::new(0, format!("e/d{}/rf{i:05}", i % 50), Scope::Tree),
                ]
            })
            .collect();
        assert!(matches!(plan(root, &renames, &filter), Plan::Roots(r) if r.len() == 10_000));
        // Replaced directories alone: roots with --delete inside them; mixed with others: the list.
        let replaced = [Entry::new(0, "new", Scope::Replace), Entry::new(0, "new/a/f", Scope::Gone)];
        let replace_plan = plan(root, &replaced, &filter);
        assert_eq!(replace_plan, Plan::Replace(vec!["new".into()]));
        let tree = Tree { path: "/srv/nfs".into(), dest: String::new() };
        let argv = strs(&batch_args(&["-a".into()], &target(), &tree, &replace_plan, &filter));
        assert!(argv.contains(&"--delete".to_owned()) && argv.contains(&"/srv/nfs/./new".to_owned()));
        let argv = strs(&batch_args(&["-a".into()], &target(), &tree, &plan(root, &burst, &filter), &filter));
        assert!(!argv.contains(&"--delete".to_owned()), "new subtrees never get --delete");
        let mixed = [Entry::new(0, "new", Scope::Replace), Entry::new(0, "plain", Scope::Path)];
        assert!(matches!(plan(root, &mixed, &filter), Plan::List(l) if l.len() == 4));
        // Too many bytes of roots for an argument vector: the list.
        let long = "x".repeat(60);
        let many: Vec<Entry> = (0..15_000).map(|i| Entry::new(0, format!("d{i}{long}"), Scope::Tree)).collect();
        assert!(matches!(plan(root, &many, &filter), Plan::List(l) if l.len() == 15_000));
    }

    #[test]
    fn full_sync_is_safe_by_default_and_filters_match() {
        let tree = Tree { path: "/srv/nfs/".into(), dest: "web".into() };
        let f = Filter::new(&["*.swp"], &[]).unwrap();
        let safe =
            FullSync { at_start: true, interval: None, update: true, delete: false, timeout: Duration::from_secs(1) };
        let a = strs(&full_sync_args(&["-a".into()], &target(), &tree, &safe, &f));
        assert!(a.contains(&"--update".to_owned()) && !a.contains(&"--delete".to_owned()));
        assert!(a.contains(&"--mkpath".to_owned()));
        assert_eq!(&a[a.len() - 3..], ["--filter=- *.swp", "/srv/nfs/", "rsync://nfsguard@10.0.0.3:873/data/web/"]);
        let opt_in = FullSync { update: false, delete: true, ..safe };
        let a = strs(&full_sync_args(&["-a".into()], &target(), &tree, &opt_in, &f));
        assert!(!a.contains(&"--update".to_owned()) && a.contains(&"--delete".to_owned()));
    }

    #[test]
    fn expand_walks_new_trees_and_applies_the_filter() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("new/a/b")).unwrap();
        std::fs::write(root.join("new/a/b/f"), "x").unwrap();
        std::fs::write(root.join("new/x.swp"), "x").unwrap();
        std::fs::write(root.join("plain"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("new/link")).unwrap();
        let weird = PathBuf::from(std::ffi::OsStr::from_bytes(b"-\n\xff*"));
        let f = Filter::new(&["*.swp"], &[]).unwrap();
        let entries = [
            Entry::new(0, "new", Scope::Tree),
            Entry::new(0, "plain", Scope::Tree),
            Entry::new(0, weird.clone(), Scope::Path),
            Entry::new(0, "new/a/b/f", Scope::Path),
            Entry::new(0, "gone.swp", Scope::Path),
        ];
        let got = expand(root, &entries, &f);
        let want: Vec<PathBuf> =
            ["new", "new/a", "new/a/b", "new/a/b/f", "new/link", "plain"].iter().map(PathBuf::from).collect();
        let mut want = want;
        want.insert(0, weird);
        assert_eq!(got, want, "symlinks are listed, not followed");
        // A symlink to a directory moved into the tree is a Tree entry: listed, not walked through.
        let linked = expand(root, &[Entry::new(0, "new/link", Scope::Tree)], &f);
        assert_eq!(linked, [PathBuf::from("new/link")]);
        // Nested trees in one batch: the inner one is covered by the outer walk (same result).
        let nested = expand(root, &[Entry::new(0, "new/a", Scope::Tree), Entry::new(0, "new", Scope::Tree)], &f);
        assert_eq!(nested.len(), 5);
        assert_eq!(count_dirs(root).unwrap(), 4);
    }
}
