//! One pass over every raw value before it is typed: no string holds a NUL byte (a path with one
//! cannot reach a syscall, and a NUL in an argv or a mail header truncates it), no string is longer
//! than [`MAX_STRING_BYTES`] and no array has more than [`MAX_ITEMS`] entries. Done on the parsed
//! document, so every key of every section is covered, including keys added later.

use std::borrow::Cow;

use toml::de::{DeTable, DeValue};

use super::{Ctx, Spanned};

/// The longest string value (`PATH_MAX`; no key needs more).
pub const MAX_STRING_BYTES: usize = 4096;
/// The most entries in one array (excludes, recipients, remotes, ...).
pub const MAX_ITEMS: usize = 1024;

/// Checks every key and string value under `table`, whose key path is `prefix` (empty at the top).
/// Returns whether a size limit was exceeded: then the typed validation must not run, as it would
/// spend its time (compiling a thousand globs) and its messages on values already refused.
pub fn table(ctx: &mut Ctx, prefix: &str, table: &DeTable) -> bool {
    let mut oversized = false;
    for (k, v) in table {
        let key = join(prefix, k.get_ref());
        if k.get_ref().contains('\0') {
            ctx.problem(&key, Some(k.span()), None, "contains a NUL byte");
        } else if k.get_ref().len() > MAX_STRING_BYTES {
            ctx.problem(&key, Some(k.span()), None, &format!("is longer than {MAX_STRING_BYTES} bytes"));
            oversized = true;
        }
        oversized |= value(ctx, &key, v);
    }
    oversized
}

fn value(ctx: &mut Ctx, key: &str, v: &Spanned<DeValue>) -> bool {
    match v.get_ref() {
        DeValue::String(s) if s.len() > MAX_STRING_BYTES => {
            let message = format!("is longer than {MAX_STRING_BYTES} bytes");
            ctx.bad(key, &Spanned::new(v.span(), s.to_string()), &message);
            true
        }
        DeValue::String(s) => {
            if s.contains('\0') {
                ctx.bad(key, &Spanned::new(v.span(), s.to_string()), "contains a NUL byte");
            }
            false
        }
        DeValue::Array(items) if items.len() > MAX_ITEMS => {
            let n = items.len();
            ctx.problem(key, Some(v.span()), None, &format!("has {n} entries, more than {MAX_ITEMS}"));
            true
        }
        DeValue::Array(items) => {
            let mut oversized = false;
            for (i, item) in items.iter().enumerate() {
                oversized |= value(ctx, &format!("{key}[{i}]"), item);
            }
            oversized
        }
        DeValue::Table(t) => table(ctx, key, t),
        DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => false,
    }
}

/// `prefix.key`, the key quoted (escaped, shortened) when it is not a bare TOML key.
fn join(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key: Cow<str> = if bare { key.into() } else { super::quoted(key).into() };
    if prefix.is_empty() {
        key.into_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const WEB: &str = "[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n[web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n";

    fn err(text: &str) -> String {
        Config::parse(Path::new("n.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn nul_bytes_are_rejected_in_every_string() {
        let text = r#"state_dir = "/var/lib/\u0000x"
[web]
mount_point = "/mnt/\u0000"
restart_units = ["a\u0000.service"]
[web.primary]
address = "10.0.0.2"
export = "/srv/\u0000nfs"
[web.backup]
address = "10.0.0.3"
export = "/srv/nfs"
[storage]
[storage.hook]
command = ["/bin/true", "\u0000"]
[[storage.trees]]
path = "/srv/\u0000"
[[storage.remotes]]
host = "10.0.0.3"
module = "data"
user = "a\u0000"
"#;
        let e = err(text);
        for want in [
            r#"n.toml:1:13: state_dir: "/var/lib/\0x" contains a NUL byte"#,
            r#"n.toml:3:15: web.mount_point: "/mnt/\0" contains a NUL byte"#,
            r#"web.restart_units[0]: "a\0.service" contains a NUL byte"#,
            r#"web.primary.export: "/srv/\0nfs" contains a NUL byte"#,
            r#"storage.hook.command[1]: "\0" contains a NUL byte"#,
            r#"storage.trees[0].path: "/srv/\0" contains a NUL byte"#,
            r#"storage.remotes[0].user: "a\0" contains a NUL byte"#,
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn nul_in_a_key_is_rejected_and_shown_escaped() {
        let e = err(&format!("{WEB}\"a\\u0000b\" = 1\n"));
        assert!(e.contains(r#"web.backup."a\0b": contains a NUL byte"#), "{e}");
        assert!(!e.contains('\0'), "{e:?}");
    }

    #[test]
    fn very_long_values_are_rejected_and_shown_short() {
        let long = format!("/{}", "a".repeat(200_000));
        let e = err(&WEB.replace("/mnt/nfs", &long));
        assert!(e.contains("n.toml:2:15: web.mount_point: \"/aaaa"), "{}", &e[..e.len().min(500)]);
        assert!(e.contains("… (200001 bytes) is longer than 4096 bytes"), "{}", &e[..e.len().min(500)]);
        assert!(e.len() < 1000, "the error repeats the whole value: {} bytes", e.len());
    }

    #[test]
    fn huge_arrays_are_rejected() {
        let units = vec!["\"a.service\""; 5000].join(",");
        let e = err(&WEB.replace("[web.primary]", &format!("restart_units = [{units}]\n[web.primary]")));
        assert!(e.contains("n.toml:3:17: web.restart_units: has 5000 entries, more than 1024"), "{e}");
        assert!(e.len() < 1000, "{} bytes", e.len());
    }

    #[test]
    fn oversized_values_stop_before_typed_validation() {
        let to = vec!["\"bad@\""; 2000].join(",");
        let e = err(&format!("[alert]\nsmtp_host = \"m\"\nfrom = \"a@example.com\"\nto = [{to}]\n"));
        assert!(e.starts_with("1 problem in n.toml:\n  n.toml:4:6: alert.to: has 2000 entries, more than 1024"), "{e}");
    }
}
