//! The `[storage]` section: which trees to watch, where to push them, and how to batch, retry and
//! full-sync. Only converts config; the replicator lives in `storage`.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration::{days, hours, mins, ms, opt_duration_in, secs, MAX_DURATION};
use super::rsync::{plain_name, rsync_option_problem, RawRsyncTarget};
use super::{Ctx, Spanned};
use crate::config::filter::Filter;
use crate::sys::rsync::RsyncTarget;

/// rsync options every push uses unless `rsync_args` replaces them: archive mode, hard links,
/// numeric ids (NFS servers share uids; names may map differently on the remote), and whole files:
/// between two servers on one LAN the delta algorithm reads both copies of a changed file to save
/// network bytes that cost less than the reads (rsync's own default for local copies).
pub const DEFAULT_RSYNC_ARGS: [&str; 4] = ["-a", "-H", "--numeric-ids", "--whole-file"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// The rsync binary. Default `rsync` from PATH.
    pub rsync: Option<Spanned<String>>,
    pub trees: Option<Vec<Spanned<RawTree>>>,
    pub remotes: Option<Vec<Spanned<RawRemote>>>,
    /// Coalescing window, per path: a path goes out this long after ITS last event (default 20ms).
    /// Short on purpose: batching across paths is the remote's group commit (a free push slot takes
    /// what is queued; while every slot is busy, new paths pile up and go as the next batch), so
    /// bursts coalesce anyway and a steady stream never holds back its first files.
    pub window: Option<Spanned<String>>,
    /// Cap: a path that keeps changing goes out at most this long after its first event (500ms).
    pub max_delay: Option<Spanned<String>>,
    /// Paths per rsync run (10000).
    pub max_batch: Option<Spanned<i64>>,
    /// How long a file being written (a creation, or `modify` events) waits for its `close_write`
    /// before it is pushed anyway (5s).
    pub settle: Option<Spanned<String>>,
    /// A file being written is also pushed once this long passed without a write (200ms): an NFS
    /// server (nfs-ganesha) keeps the files it writes open, so their `close_write` may never come.
    pub quiet: Option<Spanned<String>>,
    /// rsync runs under way at once per remote, on non-overlapping paths (2). A full sync runs alone.
    pub push_concurrency: Option<Spanned<i64>>,
    /// Pending paths per remote before the queue collapses into "full sync needed" (200000).
    pub max_pending: Option<Spanned<i64>>,
    /// Options given to every rsync (replaces the default `["-a", "-H", "--numeric-ids", "--whole-file"]`).
    pub rsync_args: Option<Vec<Spanned<String>>>,
    /// Glob patterns excluded from real-time pushes and full syncs.
    pub exclude: Option<Vec<Spanned<String>>>,
    /// Exceptions to `exclude`.
    pub include: Option<Vec<Spanned<String>>>,
    pub events: Option<RawEvents>,
    pub full_sync: Option<RawFullSync>,
    /// First retry delay after a failed push (1s); doubles up to `retry_max` (60s), with jitter.
    pub retry_min: Option<Spanned<String>>,
    pub retry_max: Option<Spanned<String>>,
    /// Alert `remote-unreachable` after a remote has failed for this long (2m).
    pub alert_after: Option<Spanned<String>>,
    /// Deadline for one real-time rsync run (10m).
    pub batch_timeout: Option<Spanned<String>>,
    pub hook: Option<RawHook>,
    /// This host is a storage agent (see `config::agent`).
    pub agent: Option<Spanned<super::agent::RawStorageAgent>>,
    /// Prometheus metrics (see `config::metrics`).
    pub metrics: Option<Spanned<super::metrics::RawMetrics>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTree {
    /// Required; optional here so a missing key is reported with every other problem.
    pub path: Option<Spanned<String>>,
    /// Directory under each remote's root that receives this tree (default: the root itself).
    pub dest: Option<Spanned<String>>,
}

/// A remote: a name plus the fields of an rsync target (see `config::rsync`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    pub name: Option<Spanned<String>>,
    pub transport: Option<Spanned<String>>,
    /// Required; optional here so a missing key is reported with every other problem.
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub module: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub ssh_identity: Option<Spanned<String>>,
    pub ssh_known_hosts: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub io_timeout: Option<Spanned<String>>,
    /// `false`: only full syncs go to this remote (e.g. a backup pushing back to the primary).
    pub realtime: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    pub create: Option<bool>,
    pub close_write: Option<bool>,
    pub modify: Option<bool>,
    pub attrib: Option<bool>,
    pub delete: Option<bool>,
    #[serde(rename = "move")]
    pub moves: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawFullSync {
    /// Full sync of every tree to every remote at start (true).
    pub at_start: Option<bool>,
    /// Periodic full sync ("0s" or absent: never).
    pub interval: Option<Spanned<String>>,
    /// `--update`: never overwrite a file that is newer on the remote (true).
    pub update: Option<bool>,
    /// `--delete`: remove remote files missing here (false).
    pub delete: Option<bool>,
    /// Deadline for one full sync (12h).
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    /// argv run after each successful batch; changed paths arrive NUL-separated on stdin.
    pub command: Option<Vec<Spanned<String>>>,
    /// URL that receives a JSON POST `{"remote":..,"paths":[..]}` after each successful batch.
    pub url: Option<Spanned<String>>,
    /// Only paths matching one of these globs are passed (all when empty).
    pub include: Option<Vec<Spanned<String>>>,
    /// Deadline for the command or the POST (10s).
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub path: PathBuf,
    /// Relative directory on the remote; empty for the root.
    pub dest: String,
}

#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    pub target: RsyncTarget,
    pub realtime: bool,
}

/// Which inotify event kinds trigger a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct Events {
    pub create: bool,
    pub close_write: bool,
    pub modify: bool,
    pub attrib: bool,
    pub delete: bool,
    pub moves: bool,
}

impl Default for Events {
    /// Everything on, `modify` included: an NFS server is the writer here, and it closes a file when
    /// it likes (nfs-ganesha keeps its descriptor open for as long as the file is in use: overwrites
    /// and appends through NFS bring `modify` events and no `close_write` for minutes). A file being
    /// written waits for its close, or `quiet` without a write, or `settle` (see `storage::batch`).
    fn default() -> Self {
        Events { create: true, close_write: true, modify: true, attrib: true, delete: true, moves: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullSync {
    pub at_start: bool,
    pub interval: Option<Duration>,
    pub update: bool,
    pub delete: bool,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Hook {
    pub command: Vec<String>,
    pub url: Option<String>,
    pub include: Filter,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub rsync: PathBuf,
    pub trees: Vec<Tree>,
    pub remotes: Vec<Remote>,
    pub window: Duration,
    pub max_delay: Duration,
    pub max_batch: usize,
    pub settle: Duration,
    pub quiet: Duration,
    pub push_concurrency: usize,
    pub max_pending: usize,
    pub rsync_args: Vec<String>,
    pub filter: Filter,
    pub events: Events,
    pub full_sync: FullSync,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub alert_after: Duration,
    pub batch_timeout: Duration,
    pub hook: Option<Hook>,
    pub agent: Option<super::agent::StorageAgent>,
    pub metrics: Option<super::metrics::MetricsConfig>,
}

impl StorageConfig {
    pub fn validate(raw: &Spanned<RawStorage>, ctx: &mut Ctx) -> Option<StorageConfig> {
        let (span, raw) = (raw.span(), raw.get_ref());
        let rsync =
            raw.rsync.as_ref().map_or_else(|| Some(PathBuf::from("rsync")), |r| ctx.abs_path("storage.rsync", r));
        let trees = validate_trees(raw.trees.as_deref().unwrap_or_default(), &span, ctx);
        let remotes = validate_remotes(raw.remotes.as_deref().unwrap_or_default(), &span, ctx);
        let window = opt_duration_in(ctx, "storage.window", raw.window.as_ref(), ms(20), &(ms(1)..=mins(1)));
        let max_delay = opt_duration_in(ctx, "storage.max_delay", raw.max_delay.as_ref(), ms(500), &(ms(1)..=mins(10)));
        let settle = opt_duration_in(ctx, "storage.settle", raw.settle.as_ref(), secs(5), &(ms(1)..=hours(1)));
        let quiet = opt_duration_in(ctx, "storage.quiet", raw.quiet.as_ref(), ms(200), &(ms(1)..=hours(1)));
        let max_batch =
            raw.max_batch.as_ref().map_or(Some(10_000), |v| ctx.int_in("storage.max_batch", v, 1..=1_000_000));
        let push_concurrency =
            raw.push_concurrency.as_ref().map_or(Some(2), |v| ctx.int_in("storage.push_concurrency", v, 1..=16));
        let max_pending =
            raw.max_pending.as_ref().map_or(Some(200_000), |v| ctx.int_in("storage.max_pending", v, 1..=100_000_000));
        let rsync_args = match &raw.rsync_args {
            None => DEFAULT_RSYNC_ARGS.iter().map(|s| (*s).to_owned()).collect(),
            Some(args) => {
                for (i, a) in args.iter().enumerate() {
                    if let Some(why) = rsync_option_problem(a.get_ref()) {
                        ctx.bad(&format!("storage.rsync_args[{i}]"), a, &why);
                    }
                }
                args.iter().map(|a| a.get_ref().clone()).collect()
            }
        };
        let filter = Filter::validate(ctx, "storage", raw.exclude.as_deref(), raw.include.as_deref());
        let e = raw.events.as_ref();
        let d = Events::default();
        let events = Events {
            create: e.and_then(|e| e.create).unwrap_or(d.create),
            close_write: e.and_then(|e| e.close_write).unwrap_or(d.close_write),
            modify: e.and_then(|e| e.modify).unwrap_or(d.modify),
            attrib: e.and_then(|e| e.attrib).unwrap_or(d.attrib),
            delete: e.and_then(|e| e.delete).unwrap_or(d.delete),
            moves: e.and_then(|e| e.moves).unwrap_or(d.moves),
        };
        let full_sync = validate_full_sync(raw.full_sync.as_ref(), ctx);
        let retry_min =
            opt_duration_in(ctx, "storage.retry_min", raw.retry_min.as_ref(), secs(1), &(ms(10)..=hours(1)));
        let retry_max = opt_duration_in(ctx, "storage.retry_max", raw.retry_max.as_ref(), mins(1), &(ms(10)..=days(1)));
        let alert_after =
            opt_duration_in(ctx, "storage.alert_after", raw.alert_after.as_ref(), mins(2), &(ms(100)..=days(7)));
        let batch_timeout =
            opt_duration_in(ctx, "storage.batch_timeout", raw.batch_timeout.as_ref(), mins(10), &(secs(1)..=days(7)));
        let hook = raw.hook.as_ref().map(|h| validate_hook(h, ctx));
        let realtime: Vec<&str> = remotes.iter().flatten().filter(|r| r.realtime).map(|r| r.name.as_str()).collect();
        let agent = raw.agent.as_ref().map(|a| super::agent::StorageAgent::validate(a, &realtime, ctx));
        let agent_listen = raw.agent.as_ref().and_then(|a| a.get_ref().listen.as_ref()?.get_ref().parse().ok());
        let metrics = super::metrics::MetricsConfig::validate_opt(raw.metrics.as_ref(), "storage", agent_listen, ctx);
        if let (Some(w), Some(m), Some(v)) = (window, max_delay, raw.max_delay.as_ref()) {
            if m < w {
                ctx.bad("storage.max_delay", v, "must not be shorter than storage.window");
            }
        }
        if let (Some(a), Some(b), Some(v)) = (retry_min, retry_max, raw.retry_max.as_ref()) {
            if b < a {
                ctx.bad("storage.retry_max", v, "must not be shorter than storage.retry_min");
            }
        }
        Some(StorageConfig {
            rsync: rsync?,
            trees: trees?,
            remotes: remotes?,
            window: window?,
            max_delay: max_delay?,
            max_batch: usize::try_from(max_batch?).ok()?,
            settle: settle?,
            quiet: quiet?,
            push_concurrency: usize::try_from(push_concurrency?).ok()?,
            max_pending: usize::try_from(max_pending?).ok()?,
            rsync_args,
            filter: filter?,
            events,
            full_sync: full_sync?,
            retry_min: retry_min?,
            retry_max: retry_max?,
            alert_after: alert_after?,
            batch_timeout: batch_timeout?,
            hook: match hook {
                None => None,
                Some(h) => Some(h?),
            },
            agent: match agent {
                None => None,
                Some(a) => Some(a?),
            },
            metrics: metrics?,
        })
    }
}

fn validate_trees(raw: &[Spanned<RawTree>], storage: &Range<usize>, ctx: &mut Ctx) -> Option<Vec<Tree>> {
    if raw.is_empty() {
        ctx.problem(
            "storage.trees",
            Some(storage.clone()),
            None,
            "is required: at least one [[storage.trees]] with a path",
        );
        return None;
    }
    let mut ok = true;
    let mut out = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let key = format!("storage.trees[{i}]");
        let (span, t) = (t.span(), t.get_ref());
        let Some(raw_path) = &t.path else {
            ctx.problem(&format!("{key}.path"), Some(span), None, "is required (the directory to watch)");
            ok = false;
            continue;
        };
        let path = ctx.abs_path(&format!("{key}.path"), raw_path);
        let dest = match &t.dest {
            None => Some(String::new()),
            Some(d) => {
                let s = d.get_ref().trim_matches('/');
                // It goes into the rsync URL: plain names only (no spaces, '#', '::', leading '-').
                let component_ok = |c: &str| {
                    c != "."
                        && c != ".."
                        && !c.is_empty()
                        && !c.starts_with('-')
                        && c.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
                };
                if !s.is_empty() && !s.split('/').all(component_ok) {
                    ctx.bad(
                        &format!("{key}.dest"),
                        d,
                        "must be a relative directory of names made of letters, digits, '.', '_' and '-' \
                         (no '.' or '..' component, none starting with '-')",
                    );
                    None
                } else {
                    Some(s.to_owned())
                }
            }
        };
        if let (Some(path), Some(dest)) = (path, dest) {
            if let Some(prev) = out.iter().find(|p: &&Tree| p.path.starts_with(&path) || path.starts_with(&p.path)) {
                ctx.bad(
                    &format!("{key}.path"),
                    raw_path,
                    &format!("overlaps tree {}: a path would be watched twice", prev.path.display()),
                );
                ok = false;
            }
            out.push(Tree { path, dest });
        } else {
            ok = false;
        }
    }
    ok.then_some(out)
}

fn validate_remotes(raw: &[Spanned<RawRemote>], storage: &Range<usize>, ctx: &mut Ctx) -> Option<Vec<Remote>> {
    if raw.is_empty() {
        ctx.problem("storage.remotes", Some(storage.clone()), None, "is required: at least one [[storage.remotes]]");
        return None;
    }
    let mut ok = true;
    let mut out: Vec<Remote> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("storage.remotes[{i}]");
        let (span, r) = (r.span(), r.get_ref());
        if r.host.is_none() {
            ctx.problem(
                &format!("{key}.host"),
                Some(span.clone()),
                None,
                "is required (the remote's name or IP address)",
            );
            ok = false;
        }
        // Without a host the other fields are still checked, against a stand-in that is never used.
        let host = r.host.clone().unwrap_or_else(|| Spanned::new(span.clone(), "localhost".to_owned()));
        let target = RawRsyncTarget {
            transport: r.transport.clone(),
            host: host.clone(),
            port: r.port.clone(),
            module: r.module.clone(),
            path: r.path.clone(),
            user: r.user.clone(),
            password_file: r.password_file.clone(),
            ssh_identity: r.ssh_identity.clone(),
            ssh_known_hosts: r.ssh_known_hosts.clone(),
            connect_timeout: r.connect_timeout.clone(),
            io_timeout: r.io_timeout.clone(),
        }
        .validate(&key, ctx);
        let name = match &r.name {
            Some(n) => {
                if plain_name(n.get_ref(), 64) {
                    Some(n.get_ref().clone())
                } else {
                    ctx.bad(
                        &format!("{key}.name"),
                        n,
                        "must be 1-64 characters from [A-Za-z0-9._-], not starting with '.' or '-'",
                    );
                    None
                }
            }
            None => Some(host.get_ref().replace(':', "_")),
        };
        match (name, target) {
            (Some(name), Some(target)) => {
                if out.iter().any(|o| o.name == name) {
                    let span = r.name.as_ref().map_or_else(|| host.span(), Spanned::span);
                    ctx.problem(
                        &format!("{key}.name"),
                        Some(span),
                        Some(format!("{name:?}")),
                        "is used by another remote: names must be unique (they name the journals)",
                    );
                    ok = false;
                }
                out.push(Remote { name, target, realtime: r.realtime.unwrap_or(true) });
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn validate_full_sync(raw: Option<&RawFullSync>, ctx: &mut Ctx) -> Option<FullSync> {
    let d = RawFullSync::default();
    let raw = raw.unwrap_or(&d);
    let interval = match &raw.interval {
        None => Some(None),
        // "0s" turns periodic full syncs off.
        Some(v) => ctx
            .duration_in("storage.full_sync.interval", v, &(Duration::ZERO..=MAX_DURATION))
            .map(|d| (!d.is_zero()).then_some(d)),
    };
    let timeout =
        opt_duration_in(ctx, "storage.full_sync.timeout", raw.timeout.as_ref(), hours(12), &(secs(1)..=days(30)));
    Some(FullSync {
        at_start: raw.at_start.unwrap_or(true),
        interval: interval?,
        update: raw.update.unwrap_or(true),
        delete: raw.delete.unwrap_or(false),
        timeout: timeout?,
    })
}

fn validate_hook(raw: &RawHook, ctx: &mut Ctx) -> Option<Hook> {
    let command: Vec<String> = raw.command.iter().flatten().map(|a| a.get_ref().clone()).collect();
    let mut ok = true;
    if let Some(first) = raw.command.as_ref().and_then(|c| c.first()) {
        ok &= ctx.abs_path("storage.hook.command[0]", first).is_some();
    } else if raw.command.is_some() {
        ctx.problem("storage.hook.command", None, None, "must not be empty (argv: program first)");
        ok = false;
    }
    let url = match &raw.url {
        Some(u) if u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://") => {
            Some(u.get_ref().clone())
        }
        Some(u) => {
            ctx.bad("storage.hook.url", u, "must start with http:// or https://");
            ok = false;
            None
        }
        None => None,
    };
    if command.is_empty() && url.is_none() && ok {
        ctx.problem("storage.hook", None, None, "needs a command or a url");
        ok = false;
    }
    let include = Filter::validate(ctx, "storage.hook", None, raw.include.as_deref());
    let timeout = opt_duration_in(ctx, "storage.hook.timeout", raw.timeout.as_ref(), secs(10), &(ms(10)..=hours(1)));
    ok.then_some(())?;
    Some(Hook { command, url, include: include?, timeout: timeout? })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const OK: &str = r#"
[storage]
[[storage.trees]]
path = "/srv/nfs"
[[storage.remotes]]
name = "backup"
host = "10.0.0.3"
module = "data"
"#;

    /// OK with `extra` lines right under `[storage]` (line 3 onwards).
    fn with(extra: &str) -> String {
        OK.replacen("[storage]\n", &format!("[storage]\n{extra}\n"), 1)
    }

    fn err(text: &str) -> String {
        Config::parse(Path::new("s.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = Config::parse(Path::new("s.toml"), OK).unwrap();
        let s = c.storage.unwrap();
        assert_eq!(s.remotes[0].name, "backup");
        assert!(s.full_sync.update && !s.full_sync.delete && s.full_sync.at_start);
        assert_eq!(s.rsync_args, ["-a", "-H", "--numeric-ids", "--whole-file"]);
        assert!(s.events.modify && s.events.close_write);
        assert_eq!(s.window, std::time::Duration::from_millis(20));
    }

    #[test]
    fn problems_name_file_key_and_value() {
        let e = err(&with("window = \"fast\""));
        assert!(e.contains("s.toml:3:10: storage.window: \"fast\" is not a duration"), "{e}");
        let e = err(&OK.replace("/srv/nfs", "srv"));
        assert!(e.contains("s.toml:4:8: storage.trees[0].path: \"srv\" must be an absolute path"), "{e}");
        let e = err(&with("rsync_args = [\"-a\", \"--delete\"]"));
        assert!(e.contains("storage.rsync_args[1]: \"--delete\" is not an option rsync_args allows"), "{e}");
        let e = err(&with("exclude = [\"cache/\"]"));
        assert!(e.contains("storage.exclude[0]: \"cache/\""), "{e}");
    }

    #[test]
    fn tree_dest_is_plain_names_only() {
        for bad in ["a b", "x#y", "a::b", "-x", "a/../b", "./a", "a/-b", "a@b"] {
            let e = err(&OK.replacen("path = \"/srv/nfs\"\n", &format!("path = \"/srv/nfs\"\ndest = \"{bad}\"\n"), 1));
            assert!(e.contains("storage.trees[0].dest"), "{bad:?}: {e}");
        }
        for good in ["uploads", "site/static", "a.b_c-d/", ""] {
            let t = OK.replacen("path = \"/srv/nfs\"\n", &format!("path = \"/srv/nfs\"\ndest = \"{good}\"\n"), 1);
            assert!(Config::parse(Path::new("s.toml"), &t).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn rsync_args_take_only_allowed_options() {
        for bad in [
            "-n",
            "--dry-run",
            "-an",
            "--rsh=/bin/true",
            "--del",
            "--delete-after",
            "--max-size=1",
            "--size-only",
            "--bwlimit",
            "--bwlimit=",
            "--iconv=utf8,latin1",
            "-h",
            "--timeout=0",
        ] {
            let e = err(&with(&format!("rsync_args = [\"-a\", {bad:?}]")));
            assert!(
                e.contains(&format!("s.toml:3:21: storage.rsync_args[1]: {bad:?} is not an option rsync_args allows")),
                "{e}"
            );
        }
        let e = err(&with("rsync_args = [\"-a\", \"--chmod=D755\\u0000\"]"));
        assert!(e.contains("storage.rsync_args[1]: \"--chmod=D755\\0\" must not contain a NUL byte"), "{e}");
        let e = err(&with("rsync_args = [\"-a\", \"100\"]"));
        assert!(e.contains("storage.rsync_args[1]: \"100\" must be an option starting with '-'"), "{e}");
        let good = "rsync_args = [\"-aHAXSz\", \"--numeric-ids\", \"--bwlimit=10m\", \"--chmod=D755,F644\", \
                    \"--compress-level=3\", \"--no-whole-file\", \"-c\", \"--fsync\"]";
        assert!(Config::parse(Path::new("s.toml"), &with(good)).is_ok());
    }

    #[test]
    fn missing_trees_and_duplicate_names() {
        let e = err("[storage]\n[[storage.remotes]]\nhost = \"a\"\nmodule = \"m\"\n[[storage.remotes]]\nhost = \"a\"\nmodule = \"n\"\n");
        assert!(e.contains("storage.trees: is required"), "{e}");
        assert!(e.contains("s.toml:6:8: storage.remotes[1].name: \"a\" is used by another remote"), "{e}");
    }

    #[test]
    fn overlapping_trees_are_rejected() {
        let e =
            err(&OK.replace("path = \"/srv/nfs\"", "path = \"/srv/nfs\"\n[[storage.trees]]\npath = \"/srv/nfs/a\""));
        assert!(e.contains("storage.trees[1].path: \"/srv/nfs/a\" overlaps tree /srv/nfs"), "{e}");
    }
}
