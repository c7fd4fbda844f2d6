//! Status files: each role writes `<state_dir>/<role>.status.json` (atomically) whenever its state
//! changes; `nfs-guard status` prints them without talking to the daemons, so it answers even while a
//! daemon is busy or a mount is hung.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sys::fsutil::write_atomic;

pub const ROLES: [&str; 2] = ["web", "storage"];

pub fn path(state_dir: &Path, role: &str) -> PathBuf {
    state_dir.join(format!("{role}.status.json"))
}

/// Writes the status document of `role`. Failures are logged, never fatal: status is for humans.
pub fn write<T: Serialize>(state_dir: &Path, role: &str, status: &T) {
    let p = path(state_dir, role);
    let result =
        serde_json::to_vec_pretty(status).map_err(std::io::Error::other).and_then(|bytes| write_atomic(&p, &bytes));
    if let Err(e) = result {
        tracing::warn!(path = %p.display(), error = %e, "cannot write status file");
    }
}

/// Renders every role's status found under `state_dir` as indented `key: value` lines (or raw JSON).
/// Returns `None` when no role has written a status yet.
pub fn render(state_dir: &Path, json: bool) -> Option<String> {
    let mut out = String::new();
    for role in ROLES {
        let Ok(text) = std::fs::read_to_string(path(state_dir, role)) else { continue };
        if json {
            out.push_str(&text);
            out.push('\n');
            continue;
        }
        out.push_str(&format!("[{role}]\n"));
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => render_value(&v, 1, &mut out),
            Err(e) => out.push_str(&format!("  (unreadable status file: {e})\n")),
        }
    }
    (!out.is_empty()).then_some(out)
}

fn render_value(v: &serde_json::Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if v.is_object() || (v.is_array() && v.as_array().is_some_and(|a| a.iter().any(|x| x.is_object()))) {
                    out.push_str(&format!("{pad}{k}:\n"));
                    render_value(v, depth + 1, out);
                } else {
                    out.push_str(&format!("{pad}{k}: {}\n", scalar(v)));
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                out.push_str(&format!("{pad}- [{i}]\n"));
                render_value(item, depth + 1, out);
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
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
}
