//! The `[web]` section: the mount point a web node keeps served, the two NFS servers, the health-check
//! layers and their timing, and the reverse-sync target used before failing back. Only converts and
//! validates config; the behaviour lives in `web/`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration::{days, hours, mins, ms, opt_duration_in, secs};
use super::rsync::RawRsyncTarget;
use super::{Ctx, Spanned};
use crate::sys::rsync::RsyncTarget;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    /// Required; optional here so a missing key is reported with every other problem.
    pub mount_point: Option<Spanned<String>>,
    pub fstype: Option<Spanned<String>>,
    pub options: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub fall: Option<Spanned<i64>>,
    pub fall_certain: Option<Spanned<i64>>,
    pub rise: Option<Spanned<i64>>,
    pub probe_timeout: Option<Spanned<String>>,
    pub probe_timeout_min: Option<Spanned<String>>,
    pub mount_timeout: Option<Spanned<String>>,
    pub hold_down: Option<Spanned<String>>,
    pub witness: Option<Spanned<String>>,
    #[serde(default)]
    pub restart_units: Vec<Spanned<String>>,
    pub restart_timeout: Option<Spanned<String>>,
    pub rsync: Option<Spanned<String>>,
    pub checks: Option<RawChecks>,
    pub primary: Option<Spanned<RawServer>>,
    pub backup: Option<Spanned<RawServer>>,
    pub reverse_sync: Option<Spanned<RawReverseSync>>,
    /// Drive the storage agents (see `config::agent`).
    pub agents: Option<Spanned<super::agent::RawWebAgents>>,
    /// Prometheus metrics (see `config::metrics`).
    pub metrics: Option<Spanned<super::metrics::RawMetrics>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChecks {
    pub icmp: Option<bool>,
    pub tcp: Option<bool>,
    pub rpc: Option<bool>,
    pub nfs_version: Option<Spanned<i64>>,
    pub canary: Option<Spanned<String>>,
    pub canary_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Required, like `export`; optional here so a missing key is reported with every other problem.
    pub address: Option<Spanned<String>>,
    pub export: Option<Spanned<String>>,
    pub nfs_port: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReverseSync {
    /// Required; optional here so a missing table is reported with every other problem.
    pub target: Option<RawRsyncTarget>,
    #[serde(default)]
    pub delete: bool,
    pub timeout: Option<Spanned<String>>,
    pub retry_initial: Option<Spanned<String>>,
    pub retry_max: Option<Spanned<String>>,
}

/// One NFS server as the web node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub address: String,
    pub export: String,
    pub nfs_port: u16,
}

impl ServerConfig {
    /// The mount source, `SERVER:EXPORT` (IPv6 in brackets), as mount(8) and /proc/self/mountinfo show it.
    pub fn source(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.export)
        } else {
            format!("{}:{}", self.address, self.export)
        }
    }
}

/// Which health-check layers run, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksConfig {
    pub icmp: bool,
    pub tcp: bool,
    pub rpc: bool,
    /// NFS program version used in the RPC NULL call (3 or 4).
    pub nfs_version: u32,
    /// A file under the mount point read through the current mount (relative path).
    pub canary: Option<PathBuf>,
    pub canary_timeout: Duration,
}

/// The address whose loss means "this node lost its network", not "the server died".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    pub host: String,
    /// `None`: ICMP echo; `Some(port)`: TCP connect.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseSyncConfig {
    pub target: RsyncTarget,
    /// `--delete` on the primary (opt-in; the default never deletes there).
    pub delete: bool,
    /// Deadline for one rsync run (it reads a network mount, so it must be abandonable).
    pub timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Mount options exactly as in fstab (comma-separated); empty means none.
    pub options: String,
    pub interval: Duration,
    /// Failed checks of any kind in a row that make a server DOWN.
    pub fall: u32,
    /// Certain failed checks in a row (refused, reset, RPC error) that make a server DOWN (<= `fall`).
    pub fall_certain: u32,
    pub rise: u32,
    /// The cap of the per-server check timeout (and the timeout before a server's first answer).
    pub probe_timeout: Duration,
    /// The least margin over a server's smoothed RTT in its check timeout (on a quiet LAN the whole
    /// timeout): `srtt + max(4 x rttvar, probe_timeout_min)`, capped at `probe_timeout`.
    pub probe_timeout_min: Duration,
    pub mount_timeout: Duration,
    /// How long the primary must stay UP before failback starts.
    pub hold_down: Duration,
    pub witness: Option<Witness>,
    pub restart_units: Vec<String>,
    pub restart_timeout: Duration,
    pub rsync: PathBuf,
    pub checks: ChecksConfig,
    pub primary: ServerConfig,
    pub backup: ServerConfig,
    /// `None`: no automatic failback (the primary's recovery is reported; switching back is manual).
    pub reverse_sync: Option<ReverseSyncConfig>,
    /// `Some`: failover promotes the backup's agent, failback drains its journal (no reverse sync).
    pub agents: Option<super::agent::WebAgents>,
    pub metrics: Option<super::metrics::MetricsConfig>,
}

fn no_space_string(ctx: &mut Ctx, key: &str, v: &Spanned<String>, what: &str) -> Option<String> {
    let s = v.get_ref();
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        ctx.bad(key, v, &format!("must be {what} without spaces"));
        None
    } else {
        Some(s.clone())
    }
}

fn count(ctx: &mut Ctx, key: &str, v: Option<&Spanned<i64>>, default: u32) -> Option<u32> {
    match v {
        Some(v) => ctx.int_in(key, v, 1..=100).and_then(|n| u32::try_from(n).ok()),
        None => Some(default),
    }
}

/// `web.fall_certain`: at most `web.fall` (default 2, or `fall` when that is smaller).
fn fall_certain(ctx: &mut Ctx, v: Option<&Spanned<i64>>, fall: Option<u32>) -> Option<u32> {
    let n = count(ctx, "web.fall_certain", v, fall.map_or(2, |f| f.min(2)))?;
    match (v, fall) {
        (Some(v), Some(fall)) if n > fall => {
            let msg = format!("must not be larger than web.fall ({fall})");
            ctx.problem("web.fall_certain", Some(v.span()), Some(n.to_string()), &msg);
            None
        }
        _ => Some(n),
    }
}

/// `web.probe_timeout` (the cap, default 1 s) and `web.probe_timeout_min` (the least margin over the
/// smoothed RTT, default 200 ms).
fn probe_timeouts(ctx: &mut Ctx, raw: &RawWeb) -> (Option<Duration>, Option<Duration>) {
    let cap = opt_duration_in(ctx, "web.probe_timeout", raw.probe_timeout.as_ref(), secs(1), &(ms(10)..=mins(5)));
    let floor =
        opt_duration_in(ctx, "web.probe_timeout_min", raw.probe_timeout_min.as_ref(), ms(200), &(ms(1)..=mins(5)));
    match (cap, floor) {
        (Some(cap), Some(floor)) if floor > cap => {
            let at = raw.probe_timeout_min.as_ref().or(raw.probe_timeout.as_ref());
            let key = if raw.probe_timeout_min.is_some() { "web.probe_timeout_min" } else { "web.probe_timeout" };
            match at {
                Some(v) => ctx.bad(key, v, "makes web.probe_timeout_min larger than web.probe_timeout (its cap)"),
                None => ctx.problem(key, None, None, "makes web.probe_timeout_min larger than web.probe_timeout"),
            }
            (None, None)
        }
        other => other,
    }
}

fn server(ctx: &mut Ctx, key: &str, raw: &Spanned<RawServer>) -> Option<ServerConfig> {
    let (span, raw) = (raw.span(), raw.get_ref());
    let address = if let Some(a) = &raw.address {
        ctx.host(&format!("{key}.address"), a)
    } else {
        ctx.problem(&format!("{key}.address"), Some(span.clone()), None, "is required (host name or IP address)");
        None
    };
    let export = match &raw.export {
        Some(e) if e.get_ref().chars().any(char::is_whitespace) => {
            ctx.bad(&format!("{key}.export"), e, "must not contain spaces (mount(8) source)");
            None
        }
        Some(e) => ctx.abs_path(&format!("{key}.export"), e).map(|p| p.display().to_string()),
        None => {
            ctx.problem(&format!("{key}.export"), Some(span), None, "is required (the exported directory)");
            None
        }
    };
    let nfs_port = match &raw.nfs_port {
        Some(p) => ctx.int_in(&format!("{key}.nfs_port"), p, 1..=65535).and_then(|p| u16::try_from(p).ok()),
        None => Some(2049),
    };
    Some(ServerConfig { address: address?, export: export?, nfs_port: nfs_port? })
}

#[allow(clippy::single_match_else, reason = "both arms are real work")]
fn required_server(
    ctx: &mut Ctx,
    key: &str,
    raw: Option<&Spanned<RawServer>>,
    web: &std::ops::Range<usize>,
) -> Option<ServerConfig> {
    match raw {
        Some(r) => server(ctx, key, r),
        None => {
            ctx.problem(
                key,
                Some(web.clone()),
                None,
                &format!("is required: add a [{key}] table with address and export"),
            );
            None
        }
    }
}

fn witness(ctx: &mut Ctx, v: &Spanned<String>) -> Option<Witness> {
    let s = v.get_ref();
    // "host" -> ICMP; "host:port" -> TCP; "[v6]:port" -> TCP; a bare IPv6 literal -> ICMP.
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once("]:") {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.trim_end_matches(']').to_owned(), None),
        }
    } else if s.matches(':').count() == 1 {
        let (h, p) = s.split_once(':').unwrap_or((s, ""));
        (h.to_owned(), Some(p))
    } else {
        (s.clone(), None)
    };
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => {
                ctx.bad("web.witness", v, "has a bad port (write \"HOST\" for ICMP or \"HOST:PORT\" for TCP)");
                return None;
            }
        },
        None => None,
    };
    if !crate::config::is_host(&host) {
        ctx.bad("web.witness", v, "is not an IP address or host name (optionally with :PORT)");
        return None;
    }
    Some(Witness { host, port })
}

#[allow(clippy::single_match_else, reason = "the default arm is a full value")]
fn checks(ctx: &mut Ctx, raw: Option<&RawChecks>) -> Option<ChecksConfig> {
    let Some(raw) = raw else {
        return Some(ChecksConfig {
            icmp: true,
            tcp: true,
            rpc: true,
            nfs_version: 3,
            canary: None,
            canary_timeout: Duration::from_secs(2),
        });
    };
    let nfs_version = match &raw.nfs_version {
        Some(v) if *v.get_ref() == 3 || *v.get_ref() == 4 => u32::try_from(*v.get_ref()).ok(),
        Some(v) => {
            ctx.problem("web.checks.nfs_version", Some(v.span()), Some(v.get_ref().to_string()), "must be 3 or 4");
            None
        }
        None => Some(3),
    };
    let canary = match &raw.canary {
        Some(c) => {
            let p = PathBuf::from(c.get_ref());
            if c.get_ref().is_empty()
                || p.is_absolute()
                || p.components().any(|c| matches!(c, std::path::Component::ParentDir))
            {
                ctx.bad("web.checks.canary", c, "must be a relative path under the mount point (no \"..\")");
                None
            } else {
                Some(Some(p))
            }
        }
        None => Some(None),
    };
    let canary_timeout =
        opt_duration_in(ctx, "web.checks.canary_timeout", raw.canary_timeout.as_ref(), secs(2), &(ms(10)..=mins(5)));
    let (icmp, tcp, rpc) = (raw.icmp.unwrap_or(true), raw.tcp.unwrap_or(true), raw.rpc.unwrap_or(true));
    if !icmp && !tcp && !rpc && canary.as_ref().is_some_and(Option::is_none) {
        ctx.problem("web.checks", None, None, "disables every check: enable at least one of icmp, tcp, rpc, canary");
        return None;
    }
    Some(ChecksConfig { icmp, tcp, rpc, nfs_version: nfs_version?, canary: canary?, canary_timeout: canary_timeout? })
}

fn reverse_sync(ctx: &mut Ctx, raw: &Spanned<RawReverseSync>) -> Option<ReverseSyncConfig> {
    let (span, raw) = (raw.span(), raw.get_ref());
    let target = if let Some(t) = &raw.target {
        t.validate("web.reverse_sync.target", ctx)
    } else {
        ctx.problem(
            "web.reverse_sync.target",
            Some(span),
            None,
            "is required: add a [web.reverse_sync.target] table (the primary's rsync daemon or ssh)",
        );
        None
    };
    let timeout =
        opt_duration_in(ctx, "web.reverse_sync.timeout", raw.timeout.as_ref(), hours(1), &(secs(1)..=days(7)));
    let retry_initial = opt_duration_in(
        ctx,
        "web.reverse_sync.retry_initial",
        raw.retry_initial.as_ref(),
        secs(30),
        &(ms(100)..=hours(1)),
    );
    let retry_max =
        opt_duration_in(ctx, "web.reverse_sync.retry_max", raw.retry_max.as_ref(), mins(10), &(ms(100)..=days(1)));
    if let (Some(i), Some(m), Some(v)) = (retry_initial, retry_max, raw.retry_max.as_ref()) {
        if m < i {
            ctx.bad("web.reverse_sync.retry_max", v, "must not be shorter than retry_initial");
            return None;
        }
    }
    Some(ReverseSyncConfig {
        target: target?,
        delete: raw.delete,
        timeout: timeout?,
        retry_initial: retry_initial?,
        retry_max: retry_max?,
    })
}

impl WebConfig {
    pub fn validate(raw: &Spanned<RawWeb>, ctx: &mut Ctx) -> Option<WebConfig> {
        let (span, raw) = (raw.span(), raw.get_ref());
        let mount_point = if let Some(m) = &raw.mount_point {
            ctx.abs_path("web.mount_point", m)
        } else {
            ctx.problem(
                "web.mount_point",
                Some(span.clone()),
                None,
                "is required (the directory the web node keeps mounted)",
            );
            None
        };
        let fstype = match &raw.fstype {
            Some(f) => no_space_string(ctx, "web.fstype", f, "a file system type such as \"nfs\" or \"nfs4\""),
            None => Some("nfs".to_owned()),
        };
        let options = match &raw.options {
            Some(o) if o.get_ref().is_empty() => Some(String::new()),
            Some(o) => no_space_string(ctx, "web.options", o, "comma-separated mount options (as in fstab)"),
            None => Some(String::new()),
        };
        let interval = opt_duration_in(ctx, "web.interval", raw.interval.as_ref(), ms(200), &(ms(10)..=hours(1)));
        let fall = count(ctx, "web.fall", raw.fall.as_ref(), 3);
        let fall_certain = fall_certain(ctx, raw.fall_certain.as_ref(), fall);
        let rise = count(ctx, "web.rise", raw.rise.as_ref(), 3);
        let (probe_timeout, probe_timeout_min) = probe_timeouts(ctx, raw);
        let mount_timeout =
            opt_duration_in(ctx, "web.mount_timeout", raw.mount_timeout.as_ref(), secs(15), &(ms(100)..=hours(1)));
        let hold_down = opt_duration_in(ctx, "web.hold_down", raw.hold_down.as_ref(), mins(1), &(ms(100)..=days(7)));
        let witness = match &raw.witness {
            Some(w) => witness(ctx, w).map(Some),
            None => Some(None),
        };
        let mut units_ok = true;
        for (i, u) in raw.restart_units.iter().enumerate() {
            let s = u.get_ref();
            if s.is_empty() || s.starts_with('-') || s.chars().any(|c| c.is_whitespace() || c == '/') {
                ctx.bad(&format!("web.restart_units[{i}]"), u, "is not a systemd unit name");
                units_ok = false;
            }
        }
        let restart_timeout =
            opt_duration_in(ctx, "web.restart_timeout", raw.restart_timeout.as_ref(), secs(30), &(ms(100)..=hours(1)));
        let rsync = raw.rsync.as_ref().map_or_else(|| Some(PathBuf::from("rsync")), |r| ctx.abs_path("web.rsync", r));
        let checks = checks(ctx, raw.checks.as_ref());
        let primary = required_server(ctx, "web.primary", raw.primary.as_ref(), &span);
        let backup = required_server(ctx, "web.backup", raw.backup.as_ref(), &span);
        if let (Some(p), Some(b), Some(a)) =
            (&primary, &backup, raw.backup.as_ref().and_then(|b| b.get_ref().address.as_ref()))
        {
            if p.source() == b.source() {
                ctx.bad("web.backup.address", a, "is the same server and export as web.primary");
                return None;
            }
        }
        let reverse_sync = match &raw.reverse_sync {
            Some(r) => reverse_sync(ctx, r).map(Some),
            None => Some(None),
        };
        let agents = match &raw.agents {
            Some(a) => super::agent::WebAgents::validate(a, ctx).map(Some),
            None => Some(None),
        };
        if let (Some(i), Some(t), Some(v)) = (interval, probe_timeout, raw.probe_timeout.as_ref()) {
            if t > i * 4 {
                ctx.warn(
                    "web.probe_timeout",
                    Some(v.span()),
                    "is much longer than web.interval: detection takes longer than fall x interval",
                );
            }
        }
        Some(WebConfig {
            mount_point: mount_point?,
            fstype: fstype?,
            options: options?,
            interval: interval?,
            fall: fall?,
            fall_certain: fall_certain?,
            rise: rise?,
            probe_timeout: probe_timeout?,
            probe_timeout_min: probe_timeout_min?,
            mount_timeout: mount_timeout?,
            hold_down: hold_down?,
            witness: witness?,
            restart_units: if units_ok {
                raw.restart_units.iter().map(|u| u.get_ref().clone()).collect()
            } else {
                return None;
            },
            restart_timeout: restart_timeout?,
            rsync: rsync?,
            checks: checks?,
            primary: primary?,
            backup: backup?,
            reverse_sync: reverse_sync?,
            agents: agents?,
            metrics: super::metrics::MetricsConfig::validate_opt(raw.metrics.as_ref(), "web", None, ctx)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::Config;

    const MIN: &str = "[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n[web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n";

    fn err(text: &str) -> String {
        Config::parse(Path::new("w.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(Path::new("w.toml"), MIN).unwrap();
        let w = c.web.unwrap();
        assert_eq!(w.fstype, "nfs");
        assert_eq!((w.fall, w.fall_certain, w.rise), (3, 2, 3));
        assert_eq!(w.interval, std::time::Duration::from_millis(200));
        assert_eq!((w.probe_timeout_min, w.probe_timeout), (Duration::from_millis(200), Duration::from_secs(1)));
        assert_eq!(w.primary.source(), "10.0.0.2:/srv/nfs");
        assert_eq!(w.primary.nfs_port, 2049);
        assert!(w.checks.icmp && w.checks.tcp && w.checks.rpc);
        assert!(w.reverse_sync.is_none());
    }

    #[test]
    fn bad_values_are_all_reported_with_location() {
        let text = MIN
            .replace("mount_point = \"/mnt/nfs\"", "mount_point = \"mnt\"\nfall = 0\nwitness = \"gw:x\"")
            .replace("export = \"/srv/nfs\"\n[web.backup]", "export = \"/srv/nfs\"\nnfs_port = 70000\n[web.backup]");
        let e = err(&text);
        assert!(e.contains("w.toml:2:15: web.mount_point: \"mnt\" must be an absolute path"), "{e}");
        assert!(e.contains("w.toml:3:8: web.fall: 0 must be between 1 and 100"), "{e}");
        assert!(e.contains("web.witness: \"gw:x\" has a bad port"), "{e}");
        assert!(e.contains("web.primary.nfs_port: 70000 must be between 1 and 65535"), "{e}");
    }

    #[test]
    fn missing_keys_are_reported_together() {
        let e = err("[web]\n");
        assert!(e.contains("w.toml:1:1: web.mount_point: is required"), "{e}");
        assert!(e.contains("w.toml:1:1: web.primary: is required: add a [web.primary] table"), "{e}");
        assert!(e.contains("w.toml:1:1: web.backup: is required"), "{e}");
    }

    #[test]
    fn same_server_twice_is_rejected() {
        let e = err(&MIN.replace("10.0.0.3", "10.0.0.2"));
        assert!(e.contains("web.backup.address: \"10.0.0.2\" is the same server and export as web.primary"), "{e}");
    }

    #[test]
    fn nfs_version_and_canary_are_checked() {
        let e = err(&format!("{MIN}[web.checks]\nnfs_version = 2\ncanary = \"../x\"\n"));
        assert!(e.contains("web.checks.nfs_version: 2 must be 3 or 4"), "{e}");
        assert!(e.contains("web.checks.canary: \"../x\" must be a relative path"), "{e}");
    }

    #[test]
    fn rsync_binary_must_be_absolute() {
        for v in ["", "rsync", "bin/rsync"] {
            let e = err(&MIN.replacen("[web]\n", &format!("[web]\nrsync = \"{v}\"\n"), 1));
            assert!(e.contains("web.rsync") && e.contains("must be an absolute path"), "{v:?}: {e}");
        }
    }

    #[test]
    fn reverse_sync_target_is_validated() {
        let e = err(&format!("{MIN}[web.reverse_sync]\n[web.reverse_sync.target]\nhost = \"10.0.0.2\"\n"));
        assert!(e.contains("web.reverse_sync.target.module"), "{e}");
        let ok = format!(
            "{MIN}[web.reverse_sync]\ndelete = true\n[web.reverse_sync.target]\nhost = \"10.0.0.2\"\nmodule = \"data\"\n"
        );
        let w = Config::parse(Path::new("w.toml"), &ok).unwrap().web.unwrap();
        let r = w.reverse_sync.unwrap();
        assert!(r.delete);
        assert_eq!(r.target.url(), "rsync://10.0.0.2:873/data/");
    }

    #[test]
    fn witness_forms() {
        let w = |s: &str| {
            Config::parse(
                Path::new("w.toml"),
                &MIN.replace("[web.primary]", &format!("witness = \"{s}\"\n[web.primary]")),
            )
            .unwrap()
            .web
            .unwrap()
            .witness
            .unwrap()
        };
        assert_eq!(w("10.0.0.1").port, None);
        assert_eq!(w("gw.example:53").port, Some(53));
        assert_eq!(w("[fe80::1]:22").host, "fe80::1");
        assert_eq!(w("fe80::1").port, None);
    }

    #[test]
    fn fall_certain_is_at_most_fall() {
        let e = err(&MIN.replacen("[web]\n", "[web]\nfall = 2\nfall_certain = 3\n", 1));
        assert!(e.contains("w.toml:3:16: web.fall_certain: 3 must not be larger than web.fall (2)"), "{e}");
        let w = |extra: &str| {
            Config::parse(Path::new("w.toml"), &MIN.replacen("[web]\n", &format!("[web]\n{extra}"), 1))
                .unwrap()
                .web
                .unwrap()
        };
        assert_eq!(w("fall = 1\n").fall_certain, 1, "the default follows a smaller fall");
        assert_eq!(w("fall = 5\nfall_certain = 5\n").fall_certain, 5);
    }

    #[test]
    fn the_timeout_floor_must_not_exceed_its_cap() {
        let e = err(&MIN.replacen("[web]\n", "[web]\nprobe_timeout = \"500ms\"\nprobe_timeout_min = \"1s\"\n", 1));
        assert!(
            e.contains("w.toml:3:21: web.probe_timeout_min: \"1s\" makes web.probe_timeout_min larger than web.probe_timeout (its cap)"),
            "{e}"
        );
        let e = err(&MIN.replacen("[web]\n", "[web]\nprobe_timeout = \"100ms\"\n", 1));
        assert!(e.contains("web.probe_timeout: \"100ms\" makes web.probe_timeout_min larger"), "{e}");
    }
}
