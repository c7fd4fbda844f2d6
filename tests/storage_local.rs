//! Component tests of `nfs-guard storage` with the real binary and a real rsync daemon on loopback:
//! the file scenarios of the storage issue end with the remote equal to the source (content by
//! checksum, modes, owners, mtimes, symlinks, hard links, no extra files). Needs root (chown, daemon
//! running as root); panics otherwise. The fault scenarios run in the lab (`storage_lab*.rs`).
#![allow(clippy::unwrap_used)]

mod storage_common;

use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use storage_common::*;

/// [`site`] with `nfs-guard storage` running there, idle.
struct Running {
    d: tempfile::TempDir,
    daemon: Daemon,
    src: std::path::PathBuf,
    cfg: std::path::PathBuf,
    node: Node,
}

fn running() -> Running {
    require_root();
    let Site { d, daemon, src, state, cfg } = site();
    let node = Node::spawn(Command::new(BIN), &cfg, &d.path().join("node.log"));
    wait_idle(&state, &node, Duration::from_secs(20));
    Running { d, daemon, src, cfg, node }
}

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "storage component tests need root (chown, rsync daemon as root)");
}

#[test]
fn scenarios_replicate_exactly() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(d.path());
    let src = d.path().join("src");
    let outside = d.path().join("outside");
    let state = d.path().join("state");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&outside).unwrap();
    // Something already there before start: the start-up full sync must carry it.
    fs::write(src.join("preexisting"), "old").unwrap();
    let cfg = d.path().join("nfs-guard.toml");
    let hook_out = d.path().join("hook.out");
    // (`quiet` as long as `settle`: the half-written file below pauses between its writes)
    let extra = format!(
        "exclude = [\"*.swp\"]\nsettle = \"1s\"\nquiet = \"1s\"\n[storage.hook]\ncommand = [\"/bin/sh\", \"-c\", \"cat >> '{}'\"]\n",
        hook_out.display()
    );
    write_config(&cfg, &state, &src, "127.0.0.1", daemon.port, &extra, "");
    let mut node = Node::spawn(Command::new(BIN), &cfg, &d.path().join("node.log"));
    wait_idle(&state, &node, Duration::from_secs(20));
    assert_eq!(fs::read_to_string(daemon.root.join("preexisting")).unwrap(), "old");

    // A batch of only new subtrees goes as rsync arguments (rsync walks them): the filter still
    // applies inside them, and the log says which form was used.
    fs::create_dir_all(src.join("newtree/sub")).unwrap();
    fs::write(src.join("newtree/sub/keep"), "k").unwrap();
    fs::write(src.join("newtree/sub/skip.swp"), "s").unwrap();
    wait_for("a batch pushed as subtree roots", Duration::from_secs(20), || node.log_text().contains("roots=true"));
    assert!(daemon.root.join("newtree/sub/keep").exists());
    assert!(!daemon.root.join("newtree/sub/skip.swp").exists(), "excluded file inside a new subtree was pushed");
    // The post-sync hook still gets every path of the subtree (NUL-separated, absolute), not the root alone.
    let want = format!("{}\0", src.join("newtree/sub/keep").display());
    wait_for("the hook got the files of the new subtree", Duration::from_secs(10), || {
        fs::read(&hook_out).is_ok_and(|b| String::from_utf8_lossy(&b).contains(&want))
    });
    // Removing the excluded file changes its directory's mtime, which no event carries: rewrite a
    // kept file so the directory's attributes go along with it.
    fs::remove_file(src.join("newtree/sub/skip.swp")).unwrap();
    fs::write(src.join("newtree/sub/keep"), "k2").unwrap();

    // The tree root's own change (its mode) is pushed as `.`, and rsync then sends the root's
    // entries: an excluded one among them stays behind.
    fs::write(src.join("root-level.swp"), "excluded").unwrap();
    fs::write(src.join("root-marker"), "m").unwrap();
    wait_for("the root-level marker at the remote", Duration::from_secs(20), || {
        daemon.root.join("root-marker").exists()
    });
    fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    wait_for("the root's mode at the remote", Duration::from_secs(20), || {
        fs::metadata(&daemon.root)
            .is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777 == 0o750)
    });
    assert!(!daemon.root.join("root-level.swp").exists(), "an excluded file was pushed with the root's own change");
    fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::remove_file(src.join("root-level.swp")).unwrap();

    // A file still open for writing is not pushed half-written: its creation waits for the close,
    // while other batches go out (the marker's push starts after the creation was seen).
    let mut slow = fs::File::create(src.join("slow.bin")).unwrap();
    slow.write_all(b"first half").unwrap();
    fs::write(src.join("marker"), "m").unwrap();
    wait_for("the marker at the remote", Duration::from_secs(20), || daemon.root.join("marker").exists());
    assert!(!daemon.root.join("slow.bin").exists(), "a file still open for writing was pushed");
    slow.write_all(b", second half").unwrap();
    drop(slow);
    wait_for("slow.bin complete at the remote", Duration::from_secs(20), || {
        fs::read(daemon.root.join("slow.bin")).is_ok_and(|b| b == b"first half, second half")
    });
    // A creation that never gets a close_write (created read-only) is pushed when `settle` runs out.
    let fd = nix::fcntl::open(
        &src.join("created-readonly"),
        nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    drop(fd);
    wait_for("a never-closed-for-writing creation at the remote", Duration::from_secs(20), || {
        daemon.root.join("created-readonly").exists()
    });

    // A directory deleted and made again before its deletion was pushed (`rm -rf d && mkdir d`):
    // the remote loses the old contents too, not only gains the new ones.
    fs::create_dir_all(src.join("redo/sub")).unwrap();
    fs::write(src.join("redo/sub/old"), "old").unwrap();
    wait_for("redo/sub/old at the remote", Duration::from_secs(20), || daemon.root.join("redo/sub/old").exists());
    fs::remove_dir_all(src.join("redo")).unwrap();
    fs::create_dir(src.join("redo")).unwrap();
    fs::write(src.join("redo/new"), "new").unwrap();
    wait_for("redo/new at the remote", Duration::from_secs(20), || daemon.root.join("redo/new").exists());
    wait_for("the old contents of redo gone from the remote", Duration::from_secs(10), || {
        !daemon.root.join("redo/sub").exists()
    });

    all_scenarios(&src, &outside, 2000);
    fs::write(src.join("excluded.swp"), "never sent").unwrap();
    wait_same_except_swp(&src, &daemon.root, &node);
    deletes_second_half(&src);
    hostile_second_half(&src);
    wait_same_except_swp(&src, &daemon.root, &node);
    assert!(!daemon.root.join("excluded.swp").exists(), "excluded file was pushed");
    assert!(!daemon.root.join("del/tree").exists());

    let log = node.log_text();
    let batches = count_in_log(&log, "batch pushed");
    assert!(batches < 60, "expected batching, got {batches} rsync runs:\n{log}");
    assert!(!d.path().join("pwned").exists() && !std::path::Path::new("pwned").exists());

    let status = node.stop(Duration::from_secs(15));
    assert!(status.success(), "exit {status:?}\n{}", node.log_text());
    assert!(!state.join("storage/running").exists(), "clean stop removes the run marker");
    let s = status_json(&state).unwrap();
    assert!(s["remotes"][0]["files"].as_u64().unwrap() >= 2000, "{s}");
}

/// The excluded file exists only at the source; compare everything else.
fn wait_same_except_swp(src: &std::path::Path, dst: &std::path::Path, node: &Node) {
    let tmp = src.join("excluded.swp");
    let saved = fs::read(&tmp).ok();
    if saved.is_some() {
        fs::remove_file(&tmp).unwrap();
    }
    wait_same(src, dst, Duration::from_secs(30), Some(node));
    if let Some(data) = saved {
        fs::write(&tmp, data).unwrap();
    }
}

#[test]
fn once_pushes_safely_and_reports_failure() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(d.path());
    let src = d.path().join("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("a/f"), "new at source").unwrap();
    fs::write(src.join("older-here"), "stale").unwrap();
    // The remote holds a file the source never had and a newer version of another (after failover).
    fs::write(daemon.root.join("only-remote"), "keep me").unwrap();
    fs::write(daemon.root.join("older-here"), "newer on remote").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::options().write(true).open(src.join("older-here")).unwrap().set_modified(old).unwrap();
    let cfg = d.path().join("n.toml");
    let state = d.path().join("state");
    write_config(&cfg, &state, &src, "127.0.0.1", daemon.port, "", "");
    let out = Command::new(BIN).arg("--config").arg(&cfg).args(["storage", "--once"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read_to_string(daemon.root.join("a/f")).unwrap(), "new at source");
    assert_eq!(fs::read_to_string(daemon.root.join("only-remote")).unwrap(), "keep me", "no --delete by default");
    assert_eq!(fs::read_to_string(daemon.root.join("older-here")).unwrap(), "newer on remote", "--update by default");

    // A remote that refuses connections: exit 1 with the rsync error.
    let port = daemon.port;
    drop(daemon);
    write_config(&cfg, &state, &src, "127.0.0.1", port, "", "");
    let out = Command::new(BIN).arg("--config").arg(&cfg).args(["storage", "--once"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("full sync failed") && err.contains("-> backup"), "{err}");
}

#[test]
fn journal_survives_a_dead_remote_and_a_restart() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(d.path());
    let port = daemon.port;
    let remote_root = daemon.root.clone();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let state = d.path().join("state");
    let cfg = d.path().join("n.toml");
    write_config(&cfg, &state, &src, "127.0.0.1", port, "", "");
    let mut node = Node::spawn(Command::new(BIN), &cfg, &d.path().join("node.log"));
    wait_idle(&state, &node, Duration::from_secs(20));
    // A second replicator on the same state directory is refused (it would corrupt the journal).
    let second = Command::new(BIN).arg("--config").arg(&cfg).arg("storage").output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another nfs-guard storage runs with this state directory"), "{err}");
    // Remote dies; changes queue up (journaled) while pushes fail.
    drop(daemon);
    burst(&src, "queued", 5, 200);
    wait_for("retries against the dead remote", Duration::from_secs(20), || {
        status_json(&state).is_some_and(|s| s["remotes"][0]["retries"].as_u64().unwrap_or(0) >= 1)
    });
    // Clean stop with the remote still dead: the queue stays in the journal.
    assert!(node.stop(Duration::from_secs(15)).success(), "{}", node.log_text());
    // What the journal holds depends on how many files were created before their directory's watch
    // (a new directory is one recursive entry): the restart below proves it holds the queue.
    assert!(state.join("storage/backup.journal").exists());
    // Restart with the remote back (same directory, a new port: the old one may have gone to another
    // test meanwhile) and start-up full sync OFF: only the journal can bring the queued files over.
    let daemon = Daemon::serving(d.path(), &remote_root);
    let port = daemon.port;
    write_config(&cfg, &state, &src, "127.0.0.1", port, "[storage.full_sync]\nat_start = false", "");
    let mut node = Node::spawn(Command::new(BIN), &cfg, &d.path().join("node2.log"));
    wait_same(&src, &remote_root, Duration::from_secs(30), Some(&node));
    assert!(node.log_text().contains("journal replayed"), "{}", node.log_text());
    assert!(node.stop(Duration::from_secs(15)).success());
    drop(daemon);
}

/// A file rewritten with the same size within the second of its last push is pushed again:
/// rsync's quick check compares whole seconds by default, and used to call the file unchanged, so
/// the remote kept the old content for good (found by the chaos test's post-mortem).
#[test]
fn a_same_size_rewrite_in_the_same_second_replicates() {
    let Running { d: _d, daemon, src, cfg: _, mut node } = running();
    // Explicit mtimes make "the same second" certain on any machine.
    let second = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let put = |content: &str, nanos: u64| {
        let f = fs::File::create(src.join("counter")).unwrap();
        (&f).write_all(content.as_bytes()).unwrap();
        f.set_modified(second + Duration::from_nanos(nanos)).unwrap();
    };
    let remote = daemon.root.join("counter");
    put("0001", 100_000_000);
    wait_for("the first version on the remote", Duration::from_secs(20), || {
        fs::read_to_string(&remote).is_ok_and(|c| c == "0001")
    });
    put("0002", 600_000_000);
    wait_for("the rewrite (same size, same second) on the remote", Duration::from_secs(20), || {
        fs::read_to_string(&remote).is_ok_and(|c| c == "0002")
    });
    assert!(node.stop(Duration::from_secs(15)).success());
}

/// A burst of renames (issue 13, scenario e): more than the old 1,000-argument limit, hostile names
/// among them, in directories that also hold files only the remote has (written there during a
/// failover). The burst goes as arguments (`roots=true`: rsync reads a `--files-from` list one byte
/// per read, twice the CPU), every old name is deleted and every new one arrives, and the
/// remote-only files stay: deletions are exactly the journaled paths, never a `--delete` of a directory.
#[test]
fn a_rename_burst_goes_as_arguments_and_keeps_remote_only_files() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(d.path());
    let src = d.path().join("src");
    let state = d.path().join("state");
    let dirs = ["d0", "d1", "d2", "-d3 #"];
    let mut names: Vec<std::path::PathBuf> = (0..400).map(|i| format!("f{i:04}").into()).collect();
    names.extend(hostile_names());
    for dir in dirs {
        fs::create_dir_all(src.join(dir)).unwrap();
        for n in &names {
            fs::write(src.join(dir).join(n), b"x").unwrap();
        }
    }
    let cfg = d.path().join("nfs-guard.toml");
    write_config(&cfg, &state, &src, "127.0.0.1", daemon.port, "", "");
    let mut node = Node::spawn(Command::new(BIN), &cfg, &d.path().join("node.log"));
    wait_idle(&state, &node, Duration::from_secs(30));
    wait_same(&src, &daemon.root, Duration::from_secs(30), Some(&node));
    // Only the remote has these (clients wrote them there while it served).
    let remote_only = [std::ffi::OsString::from("written-on-backup"), std::ffi::OsString::from("f0000.old\n*")];
    for dir in dirs {
        for n in &remote_only {
            fs::write(daemon.root.join(dir).join(n), b"keep me").unwrap();
        }
    }
    let before = node.log_text().len();
    for dir in dirs {
        for n in &names {
            let mut to = std::ffi::OsString::from("r-");
            to.push(n.as_os_str());
            fs::rename(src.join(dir).join(n), src.join(dir).join(to)).unwrap();
        }
    }
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let d = differences(&src, &daemon.root);
        // What differs is exactly the remote-only files (checked by content below).
        let extra_only = d.lines().all(|l| l.starts_with("*deleting"));
        if extra_only && d.lines().count() == dirs.len() * remote_only.len() {
            break;
        }
        assert!(std::time::Instant::now() < end, "the renames did not replicate:\n{d}\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    for dir in dirs {
        for n in &remote_only {
            assert_eq!(fs::read(daemon.root.join(dir).join(n)).unwrap(), b"keep me", "{dir}/{n:?} was deleted");
        }
        for n in &names {
            assert!(!daemon.root.join(dir).join(n).exists(), "{dir}/{n:?}: the old name is still there");
        }
    }
    let log = node.log_text();
    let burst = &log[before..];
    assert!(count_in_log(burst, "batch pushed") >= 1, "{burst}");
    assert_eq!(count_in_log(burst, "roots=false"), 0, "a list was used:\n{burst}");
    assert!(node.stop(Duration::from_secs(15)).success());
}

/// The reverse-sync mode after `kill -9`: what changed while no replicator watched (here written
/// while it was down; at a real kill also what its batcher still held) is journaled at the restart,
/// so the failback guard keeps this server's version when the reverse sync replaces the file with
/// the backup's (found by the chaos test on the kernel client: appends acknowledged just before a
/// kill of the primary were lost at the failback). Without it the start-up full sync (`--update`)
/// skips the file, the backup's copy being newer, and nothing remembers it.
#[test]
fn after_a_kill_what_changed_unwatched_is_kept_at_failback() {
    let Running { d, daemon, src, cfg, mut node } = running();
    let remote = daemon.root.clone();
    fs::write(src.join("f"), "replicated\n").unwrap();
    wait_same(&src, &remote, Duration::from_secs(20), Some(&node));
    node.kill9();
    // Acknowledged on this server, never journaled; then the failover: a client appends on the
    // backup, whose copy is newer.
    fs::write(src.join("f"), "replicated\nprimary's append\n").unwrap();
    let backup_copy = "replicated\nbackup's append\n";
    fs::write(remote.join("f"), backup_copy).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(10);
    fs::File::options().write(true).open(remote.join("f")).unwrap().set_modified(later).unwrap();
    let mut node = Node::spawn(Command::new(BIN), &cfg, &d.path().join("node2.log"));
    // f is journaled at the start and goes cautiously: the backup's newer copy stays.
    wait_for("the restart's pushes", Duration::from_secs(30), || node.log_text().contains("caught up"));
    assert!(node.log_text().contains("journaled now paths=1"), "{}", node.log_text());
    assert_eq!(fs::read_to_string(remote.join("f")).unwrap(), backup_copy, "a cautious push keeps the newer copy");
    // The failback: the reverse sync raises the guard and replaces f with the backup's copy.
    let marker = src.join(nfs_guard::failback_guard::MARKER);
    fs::write(&marker, nfs_guard::failback_guard::encode(Duration::from_secs(120))).unwrap();
    wait_for("the failback guard on", Duration::from_secs(20), || node.log_text().contains("failback guard on"));
    let conflict_copy = || {
        fs::read_dir(&src)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("f.nfs-guard-conflict-"))
    };
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while conflict_copy().is_none() {
        assert!(std::time::Instant::now() < end, "this server's version was not kept:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::write(src.join(".f.tmp"), backup_copy).unwrap();
    fs::rename(src.join(".f.tmp"), src.join("f")).unwrap();
    fs::remove_file(&marker).unwrap();
    wait_for("the failback guard off", Duration::from_secs(20), || node.log_text().contains("failback guard off"));
    let kept = conflict_copy().expect("the conflict copy stays once the reverse sync replaced the file");
    assert_eq!(fs::read_to_string(&kept).unwrap(), "replicated\nprimary's append\n");
    let on_backup = remote.join(kept.file_name().unwrap());
    wait_for("the conflict copy pushed", Duration::from_secs(20), || on_backup.exists());
    assert_eq!(fs::read_to_string(remote.join("f")).unwrap(), backup_copy);
    assert!(node.stop(Duration::from_secs(15)).success(), "{}", node.log_text());
    drop(daemon);
}
