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
                if m.get_ref().is_empty() || m.get_ref().contains('/') {
                    ctx.bad(&format!("{key}.module"), m, "must be a module name without '/'");
                    None
                } else {
                    Some(m.get_ref().clone())
                }
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
            user: self.user.as_ref().map(|u| u.get_ref().clone()),
            password_file,
            ssh_identity,
            ssh_known_hosts,
            connect_timeout: connect_timeout?,
            io_timeout: io_timeout?,
        })
    }
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
