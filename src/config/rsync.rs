//! An rsync target (daemon module or ssh), shared by `[[storage.remotes]]` and the web node's
//! reverse-sync target. Only converts config; running rsync lives in `sys::rsync`.

use std::time::Duration;

use serde::Deserialize;

use super::{Ctx, Spanned};
use crate::sys::rsync::{RsyncTarget, Transport};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRsyncTarget {
    /// `daemon` (rsync://, default) or `ssh`.
    pub transport: Option<Spanned<String>>,
    pub host: Spanned<String>,
    pub port: Option<Spanned<i64>>,
    /// Daemon module name (transport = "daemon").
    pub module: Option<Spanned<String>>,
    /// Directory on the remote host (transport = "ssh").
    pub path: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    /// rsync daemon password file (mode 0600).
    pub password_file: Option<Spanned<String>>,
    /// ssh private key (transport = "ssh").
    pub ssh_identity: Option<Spanned<String>>,
    /// `known_hosts` file holding the remote's host key (transport = "ssh"); default: ssh's own.
    pub ssh_known_hosts: Option<Spanned<String>>,
    /// Deadline for connecting (rsync `--contimeout`, ssh `ConnectTimeout`). Default 5s.
    pub connect_timeout: Option<Spanned<String>>,
    /// rsync `--timeout`: abort when no data moves for this long. Default 30s.
    pub io_timeout: Option<Spanned<String>>,
}

impl RawRsyncTarget {
    /// Validates this target; `key` is its path in the file, e.g. `storage.remotes[0]`.
    pub fn validate(&self, key: &str, ctx: &mut Ctx) -> Option<RsyncTarget> {
        let transport = match self.transport.as_ref().map(|t| (t, t.get_ref().as_str())) {
            None | Some((_, "daemon")) => Some(Transport::Daemon),
            Some((_, "ssh")) => Some(Transport::Ssh),
            Some((t, _)) => {
                ctx.bad(&format!("{key}.transport"), t, "must be \"daemon\" or \"ssh\"");
                None
            }
        };
        let host = ctx.host(&format!("{key}.host"), &self.host);
        let port = match &self.port {
            Some(p) => ctx.int_in(&format!("{key}.port"), p, 1..=65535).and_then(|p| u16::try_from(p).ok()),
            None => Some(match transport {
                Some(Transport::Ssh) => 22,
                _ => 873,
            }),
        };
        let location = match (transport, &self.module, &self.path) {
            (Some(Transport::Daemon), Some(m), _) => {
                plain_name(m.get_ref(), 64).then(|| m.get_ref().clone()).or_else(|| {
                    ctx.bad(
                        &format!("{key}.module"),
                        m,
                        "must be a module name of 1-64 characters from [A-Za-z0-9._-], not starting with '.' or '-'",
                    );
                    None
                })
            }
            (Some(Transport::Ssh), _, Some(p)) if p.get_ref().contains('\0') => {
                ctx.bad(&format!("{key}.path"), p, "must not contain a NUL byte");
                None
            }
            (Some(Transport::Ssh), _, Some(p)) => {
                ctx.abs_path(&format!("{key}.path"), p).map(|p| p.display().to_string())
            }
            (Some(Transport::Daemon), None, _) => {
                ctx.problem(
                    &format!("{key}.module"),
                    Some(self.host.span()),
                    None,
                    "is required for transport = \"daemon\"",
                );
                None
            }
            (Some(Transport::Ssh), _, None) => {
                ctx.problem(
                    &format!("{key}.path"),
                    Some(self.host.span()),
                    None,
                    "is required for transport = \"ssh\"",
                );
                None
            }
            (None, _, _) => None,
        };
        // The user goes into rsync's argv as `user@host:...` or `rsync://user@host...`: an option
        // (`--rsh=...`) or another host (`evil@other:873/x/#`) must never get through.
        let user = match &self.user {
            Some(u) if !plain_name(u.get_ref(), 32) => {
                ctx.bad(
                    &format!("{key}.user"),
                    u,
                    "must be 1-32 characters from [A-Za-z0-9._-], not starting with '.' or '-'",
                );
                None
            }
            u => Some(u.as_ref().map(|u| u.get_ref().clone())),
        };
        let password_file =
            self.password_file.as_ref().and_then(|p| ctx.secret_file(&format!("{key}.password_file"), p));
        let ssh_identity = self.ssh_identity.as_ref().and_then(|p| {
            let k = format!("{key}.ssh_identity");
            ssh_arg_path(ctx, &k, p).and_then(|_| ctx.secret_file(&k, p))
        });
        let ssh_known_hosts =
            self.ssh_known_hosts.as_ref().and_then(|p| ssh_arg_path(ctx, &format!("{key}.ssh_known_hosts"), p));
        let connect_timeout =
            opt_duration(ctx, &format!("{key}.connect_timeout"), self.connect_timeout.as_ref(), Duration::from_secs(5));
        let io_timeout =
            opt_duration(ctx, &format!("{key}.io_timeout"), self.io_timeout.as_ref(), Duration::from_secs(30));
        Some(RsyncTarget {
            transport: transport?,
            host: host?,
            port: port?,
            location: location?,
            user: user?,
            password_file,
            ssh_identity,
            ssh_known_hosts,
            connect_timeout: connect_timeout?,
            io_timeout: io_timeout?,
        })
    }
}

/// A name that rsync and ssh can only read as a name: 1-`max` characters from `[A-Za-z0-9._-]`, not
/// starting with `.` (`..`) or `-` (an option).
pub fn plain_name(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && !s.starts_with(['.', '-'])
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Short options `rsync_args` may use, alone or bundled (`-aHAX`): archive mode and its parts,
/// hard links, ACLs, xattrs, sparse files, executability, access/creation times, compression,
/// checksums, whole files, IPv4/IPv6.
const ALLOWED_SHORT: &str = "arlptgoDHAXSEUNzcW46";

/// Long options `rsync_args` may use as they are.
const ALLOWED_FLAGS: [&str; 31] = [
    "--archive",
    "--recursive",
    "--links",
    "--perms",
    "--times",
    "--group",
    "--owner",
    "--devices",
    "--specials",
    "--hard-links",
    "--acls",
    "--xattrs",
    "--sparse",
    "--executability",
    "--atimes",
    "--crtimes",
    "--open-noatime",
    "--omit-dir-times",
    "--omit-link-times",
    "--numeric-ids",
    "--whole-file",
    "--no-whole-file",
    "--no-W",
    "--compress",
    "--no-compress",
    "--checksum",
    "--fsync",
    "--ipv4",
    "--ipv6",
    "--no-motd",
    "--stats",
];

/// Long options `rsync_args` may use with a non-empty `=VALUE`.
const ALLOWED_VALUED: [&str; 9] = [
    "--bwlimit",
    "--compress-level",
    "--compress-choice",
    "--zc",
    "--checksum-choice",
    "--cc",
    "--skip-compress",
    "--chmod",
    "--block-size",
];

/// Why `arg` may not go into `rsync_args`, or `None` when it may. An ALLOW-list: everything else
/// could skip files while rsync exits 0 (`-n`, `--max-size`, `--size-only`, `--existing`), change
/// names or links (`--iconv`, `-L`), redirect the transfer (`--rsh`), fight nfs-guard's own file
/// lists, deletions, transport and timeouts, or change the `--stats` output it parses (`-h`).
pub fn rsync_option_problem(arg: &str) -> Option<String> {
    if arg.contains('\0') {
        return Some("must not contain a NUL byte".to_owned());
    }
    if !arg.starts_with('-') {
        return Some("must be an option starting with '-'".to_owned());
    }
    let allowed = if let Some(long) = arg.strip_prefix("--") {
        match long.split_once('=') {
            Some((name, value)) => !value.is_empty() && ALLOWED_VALUED.iter().any(|v| v[2..] == *name),
            None => ALLOWED_FLAGS.iter().any(|f| f[2..] == *long),
        }
    } else {
        let bundle = &arg[1..];
        !bundle.is_empty() && bundle.chars().all(|c| ALLOWED_SHORT.contains(c))
    };
    (!allowed).then(|| {
        let short: String = ALLOWED_SHORT.chars().flat_map(|c| [' ', '-', c]).collect();
        format!(
            "is not an option rsync_args allows (nfs-guard sets file lists, deletions, transport and timeouts \
             itself, and refuses options that could skip or alter what is copied); allowed:{short} {} {}",
            ALLOWED_FLAGS.join(" "),
            ALLOWED_VALUED.map(|v| format!("{v}=VALUE")).join(" ")
        )
    })
}

/// A path that goes into rsync's `-e` ssh command, which rsync splits on whitespace: absolute and
/// without whitespace.
fn ssh_arg_path(ctx: &mut Ctx, key: &str, v: &Spanned<String>) -> Option<std::path::PathBuf> {
    if v.get_ref().chars().any(char::is_whitespace) {
        ctx.bad(key, v, "must not contain whitespace (rsync splits its ssh command on it)");
        return None;
    }
    ctx.abs_path(key, v)
}

/// A positive duration with a default when the key is absent.
pub fn opt_duration(ctx: &mut Ctx, key: &str, v: Option<&Spanned<String>>, default: Duration) -> Option<Duration> {
    match v {
        Some(v) => ctx.positive_duration(key, v),
        None => Some(default),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    /// A storage config whose one remote has `fields` (line 5 onwards).
    fn remote(fields: &str) -> String {
        format!("[storage]\n[[storage.trees]]\npath = \"/srv/nfs\"\n[[storage.remotes]]\n{fields}\n")
    }

    fn err(text: &str) -> String {
        Config::parse(Path::new("r.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn user_is_a_plain_name() {
        const WHY: &str = "must be 1-32 characters from [A-Za-z0-9._-], not starting with '.' or '-'";
        for value in [
            "--rsh=/bin/true",
            "evil@127.0.0.9:873/other/#",
            "",
            "a\\u0000b",
            "a b",
            "a:b",
            "-l",
            "abcdefghijabcdefghijabcdefghijabc",
        ] {
            let shown = format!("{:?}", value.replace("\\u0000", "\0"));
            for target in ["host = \"b\"\nmodule = \"m\"", "transport = \"ssh\"\nhost = \"b\"\npath = \"/x\""] {
                let e = err(&remote(&format!("user = \"{value}\"\n{target}")));
                assert!(e.contains(&format!("r.toml:5:8: storage.remotes[0].user: {shown} {WHY}")), "{e}");
            }
        }
        let ok = remote("host = \"b\"\nmodule = \"m\"\nuser = \"nfs_guard-1.x\"");
        assert!(Config::parse(Path::new("r.toml"), &ok).is_ok());
    }

    #[test]
    fn module_is_a_plain_name() {
        const WHY: &str = "must be a module name of 1-64 characters from [A-Za-z0-9._-], not starting with '.' or '-'";
        for value in ["a b", "a\\nb", "a@b", "a::b", "-x", "", "a/b", "#m", ".."] {
            let e = err(&remote(&format!("host = \"b\"\nmodule = \"{value}\"")));
            let shown = format!("{:?}", value.replace("\\n", "\n"));
            assert!(e.contains(&format!("r.toml:6:10: storage.remotes[0].module: {shown} {WHY}")), "{e}");
        }
    }

    #[test]
    fn host_and_ssh_path_cannot_become_options_or_other_hosts() {
        let e = err(&remote("host = \"-oProxyCommand=x\"\nmodule = \"m\""));
        assert!(e.contains("r.toml:5:8: storage.remotes[0].host: \"-oProxyCommand=x\" is not an IP address"), "{e}");
        let e = err(&remote("host = \"a@b\"\nmodule = \"m\""));
        assert!(e.contains("storage.remotes[0].host: \"a@b\" is not an IP address"), "{e}");
        let e = err(&remote("transport = \"ssh\"\nhost = \"b\"\npath = \"/x\\u0000y\""));
        assert!(e.contains("r.toml:7:8: storage.remotes[0].path: \"/x\\0y\" must not contain a NUL byte"), "{e}");
    }
}
