//! Parsing /proc/self/mountinfo (from an injectable path), to verify what is mounted where without
//! ever touching the mounted file system itself. Reading mountinfo never blocks on a dead server.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// One line of mountinfo (the fields nfs-guard needs). Paths and sources are bytes, exactly as the
/// kernel has them (file names are data: invalid UTF-8 included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// `SERVER:/export` for NFS; for the lab's stand-in the same string.
    pub source: OsString,
    /// Optional fields such as `shared:1` (propagation).
    pub optional: Vec<String>,
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
fn unescape(b: &[u8]) -> OsString {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |c: &u8| (b'0'..=b'7').contains(c);
        if b[i] == b'\\' && i + 3 < b.len() && (b'0'..=b'3').contains(&b[i + 1]) && b[i + 2..i + 4].iter().all(octal) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// Parses mountinfo content; malformed lines are skipped.
pub fn parse_mountinfo(text: impl AsRef<[u8]>) -> Vec<MountEntry> {
    text.as_ref().split(|b| *b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let (left, right) = (&line[..sep], &line[sep + 3..]);
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    let mut l = left.split(|b| *b == b' ');
    let id = text(l.next()?)?.parse().ok()?;
    let parent = text(l.next()?)?.parse().ok()?;
    let _devno = l.next()?;
    let _root = l.next()?;
    let mount_point = PathBuf::from(unescape(l.next()?));
    let _opts = l.next()?;
    let optional = l.filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    let mut r = right.split(|b| *b == b' ');
    let fstype = String::from_utf8_lossy(r.next()?).into_owned();
    let source = unescape(r.next()?);
    Some(MountEntry { id, parent, mount_point, fstype, source, optional })
}

/// Reads and parses a mountinfo file.
pub fn read(path: &Path) -> std::io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(std::fs::read(path)?))
}

/// The mount currently visible at `mount_point` (the top of the stack: the last one listed).
/// `mount_point` must be canonical, as the kernel lists it (see [`canonical_mount_point`]).
pub fn top_at<'a>(entries: &'a [MountEntry], mount_point: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == mount_point)
}

/// True when the visible mount at `mount_point` comes from `source` (`SERVER:EXPORT`). The fstype is
/// deliberately not compared: nfs, nfs4 and test stand-ins (fuse.sshfs) all show the same source.
pub fn serves(entries: &[MountEntry], mount_point: &Path, source: &str) -> bool {
    top_at(entries, mount_point).is_some_and(|e| same_source(&e.source, source))
}

/// Compares a listed mount source with a configured one byte for byte, ignoring a trailing slash on
/// the export.
pub fn same_source(listed: &OsStr, configured: &str) -> bool {
    let trim = |b: &[u8]| -> usize { b.len() - b.iter().rev().take_while(|c| **c == b'/').count() };
    let (a, b) = (listed.as_bytes(), configured.as_bytes());
    a[..trim(a)] == b[..trim(b)]
}

/// The path the kernel lists for the mount point `path`: its PARENT is resolved (symlinks, `..`), the
/// last component is kept as is, so the mount point itself (maybe a dead NFS mount) is never stat'ed.
pub fn canonical_mount_point(path: &Path) -> Result<PathBuf, String> {
    let (Some(parent), Some(Component::Normal(name))) = (path.parent(), path.components().next_back()) else {
        return Err(format!("{} must name the mount point directory itself (no trailing `..`)", path.display()));
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    std::fs::canonicalize(parent).map(|p| p.join(name)).map_err(|e| format!("cannot resolve {}: {e}", parent.display()))
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

    /// File names are data: a mount point with invalid UTF-8, spaces, tabs, newlines or backslashes is
    /// found byte-exact, and one invalid entry anywhere never hides the others.
    #[test]
    fn mount_points_are_bytes_not_text() {
        use std::os::unix::ffi::OsStrExt;
        let text: &[u8] = b"22 1 0:21 / / rw - ext4 /dev/vda1 rw\n\
            30 22 0:30 / /srv/caf\xe9 rw - ext4 /dev/vdb1 rw\n\
            40 22 0:35 / /mnt/\xff\\040a\\011b\\012c\\134d rw shared:2 - nfs4 10.0.0.3:/srv/\xfe rw\n";
        let e = parse_mountinfo(text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e[1].mount_point.as_os_str().as_bytes(), b"/srv/caf\xe9");
        let mp = Path::new(std::ffi::OsStr::from_bytes(b"/mnt/\xff a\tb\nc\\d"));
        assert_eq!(top_at(&e, mp).map(|m| m.id), Some(40));
        assert_eq!(e[2].source.as_bytes(), b"10.0.0.3:/srv/\xfe");
        // a lossy decoding would make these two different paths equal
        assert!(top_at(&e, Path::new("/mnt/\u{fffd} a\tb\nc\\d")).is_none());
        assert!(!same_source(&e[2].source, "10.0.0.3:/srv/\u{fffd}"));
        assert!(same_source(std::ffi::OsStr::new("10.0.0.3:/srv/nfs/"), "10.0.0.3:/srv/nfs"));
    }

    /// The configured path is compared with the kernel's canonical one: symlinks and `..` in the
    /// directories above the mount point are resolved (the mount point itself is never stat'ed).
    #[test]
    fn mount_points_are_canonicalized_through_their_parent() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(d.path()).unwrap().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("link")).unwrap();
        // the mount point itself need not exist (it is never looked at)
        let mp = canonical_mount_point(&d.path().join("link/sub/../nfs")).unwrap();
        assert_eq!(mp, real.join("nfs"));
        let odd = std::ffi::OsStr::from_bytes(b"\xff name");
        assert_eq!(canonical_mount_point(&d.path().join("link").join(odd)).unwrap(), real.join(odd));
        let e = canonical_mount_point(&d.path().join("link/..")).unwrap_err();
        assert_eq!(
            e,
            format!("{}/link/.. must name the mount point directory itself (no trailing `..`)", d.path().display())
        );
        let e = canonical_mount_point(&d.path().join("missing/nfs")).unwrap_err();
        assert!(e.starts_with(&format!("cannot resolve {}/missing: ", d.path().display())), "{e}");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_mountinfo("garbage\n1 2 3\n").is_empty());
    }
}
