//! Parsing /proc/self/mountinfo (from an injectable path), to verify what is mounted where without
//! ever touching the mounted file system itself. Reading mountinfo never blocks on a dead server.

use std::path::{Path, PathBuf};

/// One line of mountinfo (the fields nfs-guard needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// `SERVER:/export` for NFS; for the lab's stand-in the same string.
    pub source: String,
    /// Optional fields such as `shared:1` (propagation).
    pub optional: Vec<String>,
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u32::from(b[i + 1] - b'0') * 64 + u32::from(b[i + 2] - b'0') * 8 + u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let id = l.next()?.parse().ok()?;
    let parent = l.next()?.parse().ok()?;
    let _devno = l.next()?;
    let _root = l.next()?;
    let mount_point = PathBuf::from(unescape(l.next()?));
    let _opts = l.next()?;
    let optional = l.filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let mut r = right.split(' ');
    let fstype = r.next()?.to_owned();
    let source = unescape(r.next()?);
    Some(MountEntry { id, parent, mount_point, fstype, source, optional })
}

/// Reads and parses a mountinfo file.
pub fn read(path: &Path) -> std::io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(path)?))
}

/// The mount currently visible at `mount_point` (the top of the stack: the last one listed).
pub fn top_at<'a>(entries: &'a [MountEntry], mount_point: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == mount_point)
}

/// True when the visible mount at `mount_point` comes from `source` (`SERVER:EXPORT`). The fstype is
/// deliberately not compared: nfs, nfs4 and test stand-ins (fuse.sshfs) all show the same source.
pub fn serves(entries: &[MountEntry], mount_point: &Path, source: &str) -> bool {
    top_at(entries, mount_point).is_some_and(|e| same_source(&e.source, source))
}

/// Compares mount sources, ignoring a trailing slash on the export.
pub fn same_source(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 22 0:35 / /mnt/nfs rw,relatime shared:20 - nfs4 10.0.0.2:/srv/nfs rw,vers=4.2
41 22 0:36 / /mnt/nfs rw,relatime - fuse.sshfs 10.0.0.3:/srv/nfs/ rw,user_id=0
42 22 0:37 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_fields_and_escapes() {
        let e = parse_mountinfo(SAMPLE);
        assert_eq!(e.len(), 4);
        assert_eq!(e[1].id, 40);
        assert_eq!(e[1].parent, 22);
        assert_eq!(e[1].fstype, "nfs4");
        assert_eq!(e[1].source, "10.0.0.2:/srv/nfs");
        assert_eq!(e[1].optional, vec!["shared:20".to_owned()]);
        assert_eq!(e[3].mount_point, PathBuf::from("/mnt/with space"));
        assert!(e[2].optional.is_empty());
    }

    #[test]
    fn the_top_of_the_stack_wins() {
        let e = parse_mountinfo(SAMPLE);
        assert!(serves(&e, Path::new("/mnt/nfs"), "10.0.0.3:/srv/nfs"));
        assert!(!serves(&e, Path::new("/mnt/nfs"), "10.0.0.2:/srv/nfs"));
        assert!(!serves(&e, Path::new("/mnt/other"), "10.0.0.3:/srv/nfs"));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_mountinfo("garbage\n1 2 3\n").is_empty());
    }
}
