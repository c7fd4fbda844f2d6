//! File names are data: every name class reaches a real rsync daemon exactly, through the product's
//! push code (`push::plan` + `push::run`, `fullsync::once`), at every position where rsync parses a
//! name: `--files-from` list entries (where rsync skips lines starting with `#` or `;` as comments),
//! `-R` roots given as arguments (where a remote-looking `host:path` or a wildcard could be taken for
//! something else), deletions of both kinds, full syncs, and filter rules (`--exclude=- x` is an
//! exclude of `x` to rsync). Needs root (the daemon runs as root); panics otherwise.
#![allow(clippy::unwrap_used)]

mod storage_common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nfs_guard::config::storage::{StorageConfig, Tree};
use nfs_guard::config::Config;
use nfs_guard::storage::batch::{Entry, Scope};
use nfs_guard::storage::{fullsync, push};
use storage_common::*;
use tokio_util::sync::CancellationToken;

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "storage name tests need root (rsync daemon as root)");
}

fn os(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

/// Names beginning with every printable ASCII character (`/` aside), alone and followed by a
/// letter, plus the classes rsync or a shell could misread.
fn names() -> Vec<OsString> {
    let mut v = Vec::new();
    for c in 0x20..=0x7e_u8 {
        if c == b'/' {
            continue;
        }
        if c != b'.' {
            v.push(os(&[c]));
        }
        v.push(os(&[c, b'n']));
    }
    let special: [&[u8]; 21] = [
        b"new\nline",
        b"\nlead-newline",
        b"tab\there",
        b"\tlead-tab",
        b"back\\slash",
        b"\\#x",
        b"\xff",
        b"\xffinvalid\xfe",
        b"**",
        b"a*",
        b"[ab]c",
        b" -x",
        b"::",
        b"a::b",
        b"host:path",
        b"trail ",
        b"cr\r",
        b"--delete",
        b"-e",
        b"- x",
        b"+ y",
    ];
    v.extend(special.iter().map(|n| os(n)));
    v
}

/// Creates, under `src`, a file for each name, a directory `dirs/<name>` holding a file with the
/// same name, and `nest/<name>` files; returns the top-level entries and the `dirs/` children.
fn populate(src: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    fs::create_dir_all(src.join("dirs")).unwrap();
    fs::create_dir_all(src.join("nest")).unwrap();
    let mut top = Vec::new();
    let mut dirs = Vec::new();
    for n in names() {
        fs::write(src.join(&n), n.as_bytes()).unwrap();
        fs::write(src.join("nest").join(&n), n.as_bytes()).unwrap();
        let d = Path::new("dirs").join(&n);
        fs::create_dir_all(src.join(&d)).unwrap();
        fs::write(src.join(&d).join(&n), n.as_bytes()).unwrap();
        top.push(PathBuf::from(&n));
        dirs.push(d);
    }
    top.push("nest".into());
    (top, dirs)
}

/// Removes everything in `dir` except the entries named in `keep`.
fn clear(dir: &Path, keep: &[&str]) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if keep.iter().any(|k| e.file_name() == OsStr::new(k)) {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            fs::remove_dir_all(e.path()).unwrap();
        } else {
            fs::remove_file(e.path()).unwrap();
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    daemon: Daemon,
    src: PathBuf,
    cfg: StorageConfig,
}

fn setup(extra: &str) -> Setup {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(d.path());
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let cfg_path = d.path().join("nfs-guard.toml");
    write_config(&cfg_path, &d.path().join("state"), &src, "127.0.0.1", daemon.port, extra, "");
    let cfg = Config::load(&cfg_path).unwrap().storage.unwrap();
    Setup { _dir: d, daemon, src, cfg }
}

impl Setup {
    fn tree(&self) -> &Tree {
        &self.cfg.trees[0]
    }

    /// Plans `entries` as the replicator does, checks the plan's form, and pushes it.
    fn push(&self, entries: &[Entry], roots: bool) {
        let plan = push::plan(&self.src, entries, &self.cfg.filter);
        assert_eq!(matches!(plan, push::Plan::Roots(_)), roots, "unexpected plan form");
        let r = self.run(&plan, false);
        assert!(r.ok(), "push failed: {}", r.error_text());
    }

    fn run(&self, plan: &push::Plan, cautious: bool) -> nfs_guard::sys::rsync::RsyncReport {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = &self.cfg;
        rt.block_on(push::run(
            &c.rsync,
            &c.rsync_args,
            &c.remotes[0].target,
            self.tree(),
            plan,
            &c.filter,
            push::RunOpts { deadline: Duration::from_secs(60), cautious },
        ))
        .unwrap()
    }

    fn assert_same(&self, what: &str) {
        let d = differences(&self.src, &self.daemon.root);
        assert!(d.is_empty(), "{what}: the remote differs from the source:\n{d}");
    }
}

fn entries(paths: &[PathBuf], scope: impl Fn(&Path) -> Scope) -> Vec<Entry> {
    paths.iter().map(|p| Entry::new(0, p.clone(), scope(p))).collect()
}

#[test]
fn every_name_replicates_as_list_entries_roots_deletions_and_full_sync() {
    let s = setup("");
    let (top, dirs) = populate(&s.src);

    // 1. List entries: every file, every directory and every file inside them, one path each.
    let mut listed = top.clone();
    listed.push("dirs".into());
    for d in &dirs {
        listed.push(d.clone());
        listed.push(d.join(d.file_name().unwrap()));
    }
    for n in names() {
        listed.push(Path::new("nest").join(n));
    }
    s.push(&entries(&listed, |_| Scope::Path), false);
    s.assert_same("after pushing every name as a list entry");

    // 2. Deletions as list entries: files as Path, directories as Gone (beside the attributes of
    // `dirs`, which keep the batch a list: alone, deletions go as missing roots, step 4).
    clear(&s.src.join("dirs"), &[]);
    clear(&s.src, &["dirs"]);
    let mut gone = top.clone();
    gone.push("dirs".into());
    gone.extend(dirs.iter().cloned());
    s.push(
        &entries(&gone, |p| {
            if p != Path::new("dirs") && p.starts_with("dirs") || p == Path::new("nest") {
                Scope::Gone
            } else {
                Scope::Path
            }
        }),
        false,
    );
    s.assert_same("after deleting every name through the list");

    // 3. New subtrees as -R roots (arguments). A decoy that a globbed `*`, `?` or `[ab]c` root
    // would pick up must stay behind.
    populate(&s.src);
    fs::write(s.src.join("decoy-abc"), "must not be pushed").unwrap();
    let mut roots = top.clone();
    roots.extend(dirs.iter().cloned());
    s.push(&entries(&roots, |_| Scope::Tree), true);
    assert!(!s.daemon.root.join("decoy-abc").exists(), "a root argument was expanded as a wildcard");
    fs::remove_file(s.src.join("decoy-abc")).unwrap();
    s.assert_same("after pushing every name as a new subtree root");

    // 4. Deletions as missing roots (--delete-missing-args on arguments).
    clear(&s.src.join("dirs"), &[]);
    clear(&s.src, &["dirs"]);
    s.push(&entries(&roots, |_| Scope::Tree), true);
    s.assert_same("after deleting every name as a missing root");

    // 4b. Files as roots beside subtrees (a burst's later batches), then their deletions as missing
    // roots, files as Path and directories as Gone.
    populate(&s.src);
    let is_dir = |p: &Path| p.starts_with("dirs") || p == Path::new("nest");
    s.push(&entries(&roots, |p| if is_dir(p) { Scope::Tree } else { Scope::Path }), true);
    s.assert_same("after pushing every file name as a root beside the subtrees");
    clear(&s.src.join("dirs"), &[]);
    clear(&s.src, &["dirs"]);
    let mut gone = vec![Entry::new(0, "new-subtree", Scope::Tree)];
    gone.extend(entries(&roots, |p| if is_dir(p) { Scope::Gone } else { Scope::Path }));
    s.push(&gone, true);
    s.assert_same("after deleting every name as a missing root beside a subtree");

    // 5. Full sync of a fresh tree to an empty remote.
    clear(&s.daemon.root, &[]);
    populate(&s.src);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let failures = rt.block_on(fullsync::once(Arc::new(s.cfg.clone()), CancellationToken::new()));
    assert!(failures.is_empty(), "full sync failed: {failures:?}");
    s.assert_same("after a full sync");
}

/// Filter patterns naming hostile files mean the same to rsync (full syncs, subtree roots) as to
/// the real-time path (`Filter::excluded`): a pattern is a glob, never an rsync rule prefix.
#[test]
fn filter_rules_mean_the_same_to_rsync_as_to_the_realtime_path() {
    let s = setup(r"exclude = ['- x', '+ y', '!', 'foo\ba', '\[x\]', 'trail ', ' lead', 'a b', '#*', ';*', 'sub/\*']");
    let excluded = ["- x", "+ y", "!", "fooba", "[x]", "trail ", " lead", "a b", "#c", ";c"];
    let kept = ["x", "y", "foo\\ba", "trail", "lead", "b", "keep", "!!", "sub"];
    let check = |what: &str| {
        for n in excluded.iter().chain(&kept) {
            assert_eq!(s.cfg.filter.excluded(Path::new(n)), excluded.contains(n), "real-time filter on {n:?}");
            assert_eq!(
                s.daemon.root.join(n).exists(),
                kept.contains(n),
                "{what}: {n:?} must {}",
                if kept.contains(n) { "arrive" } else { "stay behind" }
            );
        }
        assert!(!s.daemon.root.join("sub/*").exists() && s.daemon.root.join("sub/star").exists(), "{what}: sub/");
    };
    for n in excluded.iter().chain(&kept).filter(|n| **n != "sub") {
        fs::write(s.src.join(n), n).unwrap();
    }
    fs::create_dir_all(s.src.join("sub")).unwrap();
    fs::write(s.src.join("sub/*"), "excluded").unwrap();
    fs::write(s.src.join("sub/star"), "kept").unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let failures = rt.block_on(fullsync::once(Arc::new(s.cfg.clone()), CancellationToken::new()));
    assert!(failures.is_empty(), "full sync failed: {failures:?}");
    check("full sync");

    clear(&s.daemon.root, &[]);
    let all: Vec<PathBuf> = excluded.iter().chain(&kept).map(PathBuf::from).collect();
    s.push(&entries(&all, |_| Scope::Tree), true);
    check("subtree roots");

    clear(&s.daemon.root, &[]);
    let mut listed = all.clone();
    listed.extend(["sub/*", "sub/star"].map(PathBuf::from));
    s.push(&entries(&listed, |_| Scope::Path), false);
    check("list");
}

/// A cautious push (after a failure or a replayed journal) never overwrites a file the remote holds
/// newer, and still delivers older ones and deletions.
#[test]
fn a_cautious_push_keeps_newer_remote_files() {
    let s = setup("");
    let dst = s.daemon.root.clone();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for (name, local_newer) in [("#kept newer", false), ("plain older", true)] {
        fs::write(s.src.join(name), "here").unwrap();
        fs::write(dst.join(name), "there").unwrap();
        let (older, newer) =
            if local_newer { (dst.join(name), s.src.join(name)) } else { (s.src.join(name), dst.join(name)) };
        fs::File::options().write(true).open(&older).unwrap().set_modified(old).unwrap();
        fs::File::options().write(true).open(&newer).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
    }
    fs::write(dst.join("gone here"), "x").unwrap();
    let entries: Vec<Entry> =
        ["#kept newer", "plain older", "gone here"].iter().map(|n| Entry::new(0, *n, Scope::Path)).collect();
    let plan = push::plan(&s.src, &entries, &s.cfg.filter);
    let r = s.run(&plan, true);
    assert!(r.ok(), "{}", r.error_text());
    assert_eq!(fs::read_to_string(dst.join("#kept newer")).unwrap(), "there", "the newer remote copy stays");
    assert_eq!(fs::read_to_string(dst.join("plain older")).unwrap(), "here", "an older remote copy is replaced");
    assert!(!dst.join("gone here").exists(), "deletions still go");
}
