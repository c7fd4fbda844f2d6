//! `nfs-guard storage` replicating what clients write THROUGH the NFS server, as in production: the
//! writer is Linux's own NFS client in the lab's user-mode-linux web guest, the server nfs-ganesha on
//! the primary. ganesha keeps a file's descriptor open while the file is in use, so an overwrite or an
//! append made through NFS brings the storage host `modify` events and no `close_write` (for minutes).
//! With the defaults, each change is on the backup within seconds, on NFS v3 and v4.1.
//! Root only; a lab (or guest) that cannot come up fails the test.

#![allow(clippy::unwrap_used)]

#[path = "common/lab.rs"]
mod lab;
mod storage_common;

use std::fs;
use std::time::Duration;

use lab::{Host, Lab, WebKind};
use storage_common::{wait_for, wait_idle, write_config, Node, BIN};

/// How long a change may take to reach the backup (the creation `settle` is 5 s; a change pushed on
/// its event takes well under a second).
const WITHIN: Duration = Duration::from_secs(4);

/// Runs a python snippet in the web guest (bounded), panicking with its output when it fails.
fn guest_python(lab: &Lab, code: &str) {
    let out = lab.exec_timeout(Host::Web, &["python3", "-c", code], Duration::from_secs(30)).expect("guest hung");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// One write through the mount: `mode` "w" (create or overwrite) or "a" (append, never creates),
/// flushed to the server (`fsync`) before the file is closed.
fn write(lab: &Lab, name: &str, mode: &str, data: &str) {
    let flags = if mode == "a" { "os.O_WRONLY | os.O_APPEND" } else { "os.O_WRONLY | os.O_CREAT | os.O_TRUNC" };
    guest_python(
        lab,
        &format!(
            "import os\nfd = os.open({path:?}, {flags}, 0o644)\nos.write(fd, {data:?}.encode())\nos.fsync(fd)\nos.close(fd)",
            path = format!("{}/{name}", Lab::WEB_MOUNT)
        ),
    );
}

#[test]
fn changes_written_through_the_nfs_server_replicate_at_once() {
    let lab = Lab::up_with("snfs", WebKind::Uml);
    let (p, b) = (lab.data_dir(Host::Primary), lab.data_dir(Host::Backup));
    fs::write(p.join("old.txt"), "old\n").unwrap();
    fs::write(b.join("old.txt"), "old\n").unwrap();
    let dir = tempfile::tempdir_in(lab.state_dir()).unwrap();
    let (cfg, state, log) = (dir.path().join("s.toml"), dir.path().join("state"), dir.path().join("s.log"));
    write_config(
        &cfg,
        &state,
        std::path::Path::new(Lab::EXPORT),
        &lab.ip(Host::Backup),
        873,
        "",
        &lab.rsync_auth_toml(),
    );
    let node = Node::spawn(lab.command(Host::Primary, BIN), &cfg, &log);
    wait_idle(&state, &node, Duration::from_secs(30));

    for vers in ["3", "4.1"] {
        let src = lab.nfs_source(Host::Primary);
        let out = lab
            .exec_timeout(
                Host::Web,
                &["mount", "-t", "nfs", "-o", &format!("vers={vers},hard,timeo=50,retrans=2"), &src, Lab::WEB_MOUNT],
                Duration::from_secs(30),
            )
            .expect("mount hung");
        assert!(out.status.success(), "mount v{vers}: {}", String::from_utf8_lossy(&out.stderr));
        let expect = |name: &str, content: &str, what: &str| {
            wait_for(&format!("v{vers}: {what} on the backup"), WITHIN, || {
                fs::read_to_string(b.join(name)).is_ok_and(|t| t == content)
            });
        };
        let new = format!("new-v{vers}.txt");
        write(&lab, &new, "w", "one\n");
        expect(&new, "one\n", "a file created through NFS");
        write(&lab, &new, "a", "two\n");
        expect(&new, "one\ntwo\n", "an append through NFS");
        write(&lab, &new, "w", "three\n");
        expect(&new, "three\n", "an overwrite through NFS");
        write(&lab, "old.txt", "a", &format!("v{vers}\n"));
        let old = fs::read_to_string(p.join("old.txt")).unwrap();
        expect("old.txt", &old, "an append to a file that existed before");
        let out =
            lab.exec_timeout(Host::Web, &["umount", Lab::WEB_MOUNT], Duration::from_secs(30)).expect("umount hung");
        assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(node.log_text().contains("batch pushed"), "{}", node.log_text());
}
