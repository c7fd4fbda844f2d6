//! Status files: each role writes `<state_dir>/<role>.status.json` (atomically, without fsync: a crash
//! may lose the latest, readers never see a torn one) whenever its state
//! changes; `nfs-guard status` prints them without talking to the daemons, so it answers even while a
//! daemon is busy or a mount is hung.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sys::fsutil::{read_capped_string, write_atomic_nosync};

/// Larger status files are not ours.
const MAX_STATUS_BYTES: u64 = 1 << 20;

/// `farm`: the web farm's record, leader and every node's served epoch, as this node last read them.
pub const ROLES: [&str; 3] = ["web", "farm", "storage"];

pub fn path(state_dir: &Path, role: &str) -> PathBuf {
    state_dir.join(format!("{role}.status.json"))
}

/// Writes the status document of `role`. Failures are logged, never fatal: status is for humans.
pub fn write<T: Serialize>(state_dir: &Path, role: &str, status: &T) {
    let p = path(state_dir, role);
    let result = serde_json::to_vec_pretty(status)
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_atomic_nosync(&p, &bytes));
    if let Err(e) = result {
        tracing::warn!(path = %p.display(), error = %e, "cannot write status file");
    }
}

/// Renders every role's status found under `state_dir` as indented `key: value` lines (or raw JSON).
/// Returns `None` when no role has written a status yet.
pub fn render(state_dir: &Path, json: bool) -> Option<String> {
    let mut out = String::new();
    for role in ROLES {
        let p = path(state_dir, role);
        // bounded and non-blocking: a FIFO or /dev/zero planted here never hangs `nfs-guard status`
        let text = match read_capped_string(&p, MAX_STATUS_BYTES) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                let _ = writeln!(out, "[{role}]\n  (unreadable status file {}: {e})", p.display());
                continue;
            }
        };
        if json {
            out.push_str(&text);
            out.push('\n');
            continue;
        }
        let _ = writeln!(out, "[{role}]");
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => render_value(&v, 1, &mut out),
            Err(e) => {
                let _ = writeln!(out, "  (unreadable status file: {e})");
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn render_value(v: &serde_json::Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if v.is_object()
                    || (v.is_array() && v.as_array().is_some_and(|a| a.iter().any(serde_json::Value::is_object)))
                {
                    let _ = writeln!(out, "{pad}{k}:");
                    render_value(v, depth + 1, out);
                } else {
                    let _ = writeln!(out, "{pad}{k}: {}", scalar(v));
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let _ = writeln!(out, "{pad}- [{i}]");
                render_value(item, depth + 1, out);
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_nested_status() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "web",
            &serde_json::json!({"active": "backup", "servers": [{"name": "primary", "state": "down"}]}),
        );
        let text = render(d.path(), false).unwrap();
        assert!(
            text.contains("[web]\n  active: backup\n  servers:\n    - [0]\n      name: primary\n      state: down\n"),
            "{text}"
        );
        assert!(render(tempfile::tempdir().unwrap().path(), false).is_none());
    }

    #[test]
    fn a_farm_node_shows_the_farm_after_its_web_status() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "farm", &serde_json::json!({"leader": "w1", "record": {"active": "backup", "epoch": 2}}));
        write(d.path(), "web", &serde_json::json!({"active": "backup"}));
        let text = render(d.path(), false).unwrap();
        assert!(
            text.contains(
                "[web]\n  active: backup\n[farm]\n  leader: w1\n  record:\n    active: backup\n    epoch: 2\n"
            ),
            "{text}"
        );
    }
}
