//! Durable file writes and bounded reads: journals, state, status and the alert outbox all go
//! through here.
//!
//! Writes are private (0600) and atomic. Reads never block and never eat memory: a FIFO, a device
//! (`/dev/zero`), a directory or a file larger than the caller's cap is an error naming the path,
//! not a hang or an out-of-memory kill.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Writes `data` to `path` atomically and durably: temp file (mode 0600) in the same directory,
/// fsync, rename, fsync of the directory. A crash leaves either the old or the new content, never a
/// torn file.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_with(path, data, true)
}

/// Like [`write_atomic`] without the fsyncs: for status files a crash may lose (readers only need
/// a whole file, which the rename gives).
pub fn write_atomic_nosync(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_with(path, data, false)
}

fn write_atomic_with(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    {
        // A leftover temp file (or something planted under its name) is replaced, never followed.
        remove_if_present(&tmp)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, path)?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a whole regular file of at most `max` bytes without ever blocking: opened with
/// `O_NONBLOCK` (a FIFO cannot stall the open), then checked to be a regular file (a FIFO, socket,
/// device or directory is `InvalidInput`), and read with a cap (larger is `InvalidData`). Symlinks
/// are followed; the checks apply to the target.
pub fn read_capped(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(path)?;
    let ft = f.metadata()?.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("is {kind}, not a regular file")));
    }
    let mut out = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(out)
}

/// [`read_capped`] for text: invalid UTF-8 is `InvalidData`.
pub fn read_capped_string(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, max)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not valid UTF-8: {e}")))
}

/// Removes `path`; one that is not there is no error.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Persists `value` as JSON at `path`, atomically and durably, or removes the file when `None`.
pub fn store_json<T: serde::Serialize>(path: &Path, value: Option<&T>) -> io::Result<()> {
    match value {
        Some(v) => write_atomic(path, &serde_json::to_vec(v).map_err(io::Error::other)?),
        None => remove_if_present(path),
    }
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_content_privately() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic_nosync(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temp files left");
    }

    #[test]
    fn capped_read_refuses_fifos_devices_dirs_and_big_files() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_capped(&fifo, 10).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert!(read_capped(Path::new("/dev/zero"), 10).unwrap_err().to_string().contains("device"));
        assert!(read_capped(d.path(), 10).unwrap_err().to_string().contains("directory"));
        let big = d.path().join("big");
        fs::write(&big, [b'x'; 11]).unwrap();
        assert_eq!(read_capped(&big, 10).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(read_capped(&big, 11).unwrap().len(), 11);
        fs::write(&big, b"\xff").unwrap();
        assert!(read_capped_string(&big, 11).is_err());
    }
}
