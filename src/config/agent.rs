//! The storage agents: `[storage.agent]` (this storage host is an agent of the cluster) and
//! `[web.agents]` (the web role drives both agents instead of reverse-syncing the whole tree).
//! Only converts config; the agent lives in `storage::agent`, the decider in `web::agents`.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration::{days, mins, ms, opt_duration_in, secs};
use super::{Ctx, Spanned};
use crate::domain::Server;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorageAgent {
    /// Which server of the pair this host is: "primary" or "backup". Required.
    pub server: Option<Spanned<String>>,
    /// Address of the agent's HTTP API, e.g. "10.0.0.2:7451". Required.
    pub listen: Option<Spanned<String>>,
    /// The shared secret (mode 0600) that authorizes role changes. Required.
    pub secret_file: Option<Spanned<String>>,
    /// Name of the `[[storage.remotes]]` entry that is the other server. Required.
    pub peer: Option<Spanned<String>>,
    /// The other server's agent API, e.g. `"http://10.0.0.3:7451"`. Required.
    pub peer_api: Option<Spanned<String>>,
    /// Deadline of one call to the peer's agent, and of the health check (2s).
    pub timeout: Option<Spanned<String>>,
    /// The export counts as full (the web role fails over from it) below this much free space (64MiB)
    /// or this many free inodes (1000).
    pub min_free_mb: Option<Spanned<i64>>,
    pub min_free_inodes: Option<Spanned<i64>>,
    /// Serve the API over TLS: this certificate chain (PEM, leaf first) and key (PEM, mode 0600).
    /// Both or neither.
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    /// The CA bundle (PEM) the peer's `https://` API must chain to. Required with an https `peer_api`.
    pub tls_ca: Option<Spanned<String>>,
    /// Where this host's NFS server and rsync daemon listen (IP:PORT), for the health report.
    pub nfs_address: Option<Spanned<String>>,
    pub rsyncd_address: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageAgent {
    pub server: Server,
    pub listen: SocketAddr,
    pub secret_file: PathBuf,
    pub peer: String,
    pub peer_api: String,
    pub timeout: Duration,
    pub min_free_bytes: u64,
    pub min_free_inodes: u64,
    /// Certificate chain and key of the API's TLS, when it speaks https.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub tls_ca: Option<PathBuf>,
    pub nfs_address: Option<SocketAddr>,
    pub rsyncd_address: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebAgents {
    /// The primary's agent API, e.g. `"http://10.0.0.2:7451"`. Required.
    pub primary: Option<Spanned<String>>,
    /// The backup's agent API. Required.
    pub backup: Option<Spanned<String>>,
    /// The shared secret (mode 0600), the same file content as the agents'. Required.
    pub secret_file: Option<Spanned<String>>,
    /// Deadline of one call (2s). A failover never waits longer than this for the backup's agent.
    pub timeout: Option<Spanned<String>>,
    /// How long a failback waits for the backup's journal to the primary to drain (30m).
    pub drain_timeout: Option<Spanned<String>>,
    /// The CA bundle (PEM) `https://` agents must chain to. Required with an https URL.
    pub tls_ca: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebAgents {
    pub primary: String,
    pub backup: String,
    pub secret_file: PathBuf,
    pub timeout: Duration,
    pub drain_timeout: Duration,
    pub tls_ca: Option<PathBuf>,
}

impl WebAgents {
    pub fn url(&self, s: Server) -> &str {
        match s {
            Server::Primary => &self.primary,
            Server::Backup => &self.backup,
        }
    }
}

fn required<'a>(
    ctx: &mut Ctx,
    key: &str,
    v: Option<&'a Spanned<String>>,
    section: &Range<usize>,
    what: &str,
) -> Option<&'a Spanned<String>> {
    if v.is_none() {
        ctx.problem(key, Some(section.clone()), None, &format!("is required ({what})"));
    }
    v
}

/// `http://HOST:PORT` or `https://HOST:PORT` (no path).
fn api_url(ctx: &mut Ctx, key: &str, v: &Spanned<String>) -> Option<String> {
    let s = v.get_ref().trim_end_matches('/');
    let Some(rest) = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://")) else {
        ctx.bad(key, v, "must be an http://HOST:PORT or https://HOST:PORT URL");
        return None;
    };
    let ok = rest.rsplit_once(':').is_some_and(|(h, p)| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        super::is_host(h) && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !ok {
        ctx.bad(key, v, "must be http(s)://HOST:PORT with a host name or IP address and a port");
        return None;
    }
    Some(s.to_owned())
}

/// The CA bundle `ca_key` names, required when any of `urls` (key, value) is https: the secret
/// must not go to an https agent nobody can verify, nor to one verified against the web's CAs.
fn tls_ca(
    ctx: &mut Ctx,
    ca_key: &str,
    ca: Option<&Spanned<String>>,
    urls: &[(&str, Option<&Spanned<String>>)],
) -> Result<Option<PathBuf>, ()> {
    let path = match ca {
        Some(v) => Some(ctx.abs_path(ca_key, v).ok_or(())?),
        None => None,
    };
    if path.is_none() {
        for (key, url) in urls {
            if let Some(u) = url.filter(|u| u.get_ref().starts_with("https://")) {
                ctx.bad(key, u, &format!("is https: {ca_key} must name the CA bundle (PEM) its certificate chains to"));
                return Err(());
            }
        }
    }
    Ok(path)
}

impl StorageAgent {
    /// `remotes`: the names of the configured remotes that take real-time pushes.
    pub fn validate(raw: &Spanned<RawStorageAgent>, realtime_remotes: &[&str], ctx: &mut Ctx) -> Option<StorageAgent> {
        let (span, raw) = (raw.span(), raw.get_ref());
        let k = "storage.agent";
        let server = required(ctx, &format!("{k}.server"), raw.server.as_ref(), &span, "\"primary\" or \"backup\"")
            .and_then(|v| match v.get_ref().as_str() {
                "primary" => Some(Server::Primary),
                "backup" => Some(Server::Backup),
                _ => {
                    ctx.bad(&format!("{k}.server"), v, "must be \"primary\" or \"backup\"");
                    None
                }
            });
        let listen = required(ctx, &format!("{k}.listen"), raw.listen.as_ref(), &span, "the API address, IP:PORT")
            .and_then(|v| {
                let a = v.get_ref().parse::<SocketAddr>().ok();
                if a.is_none() {
                    ctx.bad(&format!("{k}.listen"), v, "must be IP:PORT, e.g. \"10.0.0.2:7451\"");
                }
                a
            });
        let secret_file = required(ctx, &format!("{k}.secret_file"), raw.secret_file.as_ref(), &span, "mode 0600")
            .and_then(|v| ctx.secret_file(&format!("{k}.secret_file"), v));
        let peer = required(ctx, &format!("{k}.peer"), raw.peer.as_ref(), &span, "the remote that is the other server")
            .and_then(|v| {
                if realtime_remotes.contains(&v.get_ref().as_str()) {
                    Some(v.get_ref().clone())
                } else {
                    ctx.bad(
                        &format!("{k}.peer"),
                        v,
                        &format!(
                            "must name a [[storage.remotes]] entry with real-time pushes (configured: {})",
                            if realtime_remotes.is_empty() { "none".to_owned() } else { realtime_remotes.join(", ") }
                        ),
                    );
                    None
                }
            });
        let peer_api = required(ctx, &format!("{k}.peer_api"), raw.peer_api.as_ref(), &span, "http://HOST:PORT")
            .and_then(|v| api_url(ctx, &format!("{k}.peer_api"), v));
        let timeout = opt_duration_in(ctx, &format!("{k}.timeout"), raw.timeout.as_ref(), secs(2), &(ms(50)..=mins(5)));
        let min_free_mb =
            raw.min_free_mb.as_ref().map_or(Some(64), |v| ctx.int_in(&format!("{k}.min_free_mb"), v, 0..=1 << 40));
        let min_free_inodes = raw
            .min_free_inodes
            .as_ref()
            .map_or(Some(1000), |v| ctx.int_in(&format!("{k}.min_free_inodes"), v, 0..=1 << 40));
        let tls = match (raw.tls_cert.as_ref(), raw.tls_key.as_ref()) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                match (ctx.abs_path(&format!("{k}.tls_cert"), cert), ctx.secret_file(&format!("{k}.tls_key"), key)) {
                    (Some(cert), Some(key)) => Ok(Some((cert, key))),
                    _ => Err(()),
                }
            }
            (Some(v), None) | (None, Some(v)) => {
                ctx.bad(
                    &format!("{k}.tls_cert"),
                    v,
                    &format!("{k}.tls_cert and {k}.tls_key go together (both or neither)"),
                );
                Err(())
            }
        };
        let ca = tls_ca(
            ctx,
            &format!("{k}.tls_ca"),
            raw.tls_ca.as_ref(),
            &[(&format!("{k}.peer_api"), raw.peer_api.as_ref())],
        );
        let addr = |ctx: &mut Ctx, key: &str, v: Option<&Spanned<String>>| -> Result<Option<SocketAddr>, ()> {
            let Some(v) = v else { return Ok(None) };
            v.get_ref()
                .parse::<SocketAddr>()
                .map(Some)
                .map_err(|_| ctx.bad(&format!("{k}.{key}"), v, "must be IP:PORT, e.g. \"10.0.0.2:2049\""))
        };
        let nfs_address = addr(ctx, "nfs_address", raw.nfs_address.as_ref());
        let rsyncd_address = addr(ctx, "rsyncd_address", raw.rsyncd_address.as_ref());
        Some(StorageAgent {
            tls: tls.ok()?,
            tls_ca: ca.ok()?,
            nfs_address: nfs_address.ok()?,
            rsyncd_address: rsyncd_address.ok()?,
            server: server?,
            listen: listen?,
            secret_file: secret_file?,
            peer: peer?,
            peer_api: peer_api?,
            timeout: timeout?,
            min_free_bytes: min_free_mb?.saturating_mul(1 << 20),
            min_free_inodes: min_free_inodes?,
        })
    }
}

impl WebAgents {
    pub fn validate(raw: &Spanned<RawWebAgents>, ctx: &mut Ctx) -> Option<WebAgents> {
        let (span, raw) = (raw.span(), raw.get_ref());
        let k = "web.agents";
        let primary = required(ctx, &format!("{k}.primary"), raw.primary.as_ref(), &span, "http://HOST:PORT")
            .and_then(|v| api_url(ctx, &format!("{k}.primary"), v));
        let backup = required(ctx, &format!("{k}.backup"), raw.backup.as_ref(), &span, "http://HOST:PORT")
            .and_then(|v| api_url(ctx, &format!("{k}.backup"), v));
        let secret_file = required(ctx, &format!("{k}.secret_file"), raw.secret_file.as_ref(), &span, "mode 0600")
            .and_then(|v| ctx.secret_file(&format!("{k}.secret_file"), v));
        let timeout = opt_duration_in(ctx, &format!("{k}.timeout"), raw.timeout.as_ref(), secs(2), &(ms(50)..=mins(5)));
        let drain_timeout = opt_duration_in(
            ctx,
            &format!("{k}.drain_timeout"),
            raw.drain_timeout.as_ref(),
            mins(30),
            &(secs(1)..=days(7)),
        );
        if let (Some(p), Some(b), Some(v)) = (&primary, &backup, raw.backup.as_ref()) {
            if p == b {
                ctx.bad(&format!("{k}.backup"), v, "is the same agent as web.agents.primary");
                return None;
            }
        }
        let ca = tls_ca(
            ctx,
            &format!("{k}.tls_ca"),
            raw.tls_ca.as_ref(),
            &[(&format!("{k}.primary"), raw.primary.as_ref()), (&format!("{k}.backup"), raw.backup.as_ref())],
        );
        Some(WebAgents {
            tls_ca: ca.ok()?,
            primary: primary?,
            backup: backup?,
            secret_file: secret_file?,
            timeout: timeout?,
            drain_timeout: drain_timeout?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const STORAGE: &str = "[storage]\n[[storage.trees]]\npath = \"/srv/nfs\"\n[[storage.remotes]]\nname = \"backup\"\nhost = \"10.0.0.3\"\nmodule = \"data\"\n";

    fn err(text: &str) -> String {
        Config::parse(Path::new("a.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn every_bad_agent_key_is_named_with_its_value() {
        let e = err(&format!(
            "{STORAGE}[storage.agent]\nserver = \"tertiary\"\nlisten = \"10.0.0.2\"\nsecret_file = \"rel\"\npeer = \"nope\"\npeer_api = \"https://10.0.0.3:7451\"\n"
        ));
        for want in [
            "storage.agent.server: \"tertiary\" must be \"primary\" or \"backup\"",
            "storage.agent.listen: \"10.0.0.2\" must be IP:PORT",
            "storage.agent.secret_file: \"rel\" must be an absolute path",
            "storage.agent.peer: \"nope\" must name a [[storage.remotes]] entry with real-time pushes (configured: backup)",
            "storage.agent.peer_api: \"https://10.0.0.3:7451\" is https: storage.agent.tls_ca must name the CA bundle",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        let e = err(&format!(
            "{STORAGE}[storage.agent]\nserver = \"primary\"\npeer_api = \"ftp://10.0.0.3:7451\"\ntls_key = \"/etc/k\"\n"
        ));
        assert!(
            e.contains(
                "storage.agent.peer_api: \"ftp://10.0.0.3:7451\" must be an http://HOST:PORT or https://HOST:PORT URL"
            ),
            "{e}"
        );
        assert!(
            e.contains(
                "storage.agent.tls_cert: \"/etc/k\" storage.agent.tls_cert and storage.agent.tls_key go together"
            ),
            "{e}"
        );
        let e = err(&format!("{STORAGE}[storage.agent]\nserver = \"primary\"\n"));
        assert!(e.contains("storage.agent.listen: is required"), "{e}");
        assert!(e.contains("storage.agent.peer_api: is required"), "{e}");
    }

    #[test]
    fn web_agents_are_validated_and_optional() {
        let web = "[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n[web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n";
        let c = Config::parse(Path::new("a.toml"), web).unwrap();
        assert!(c.web.unwrap().agents.is_none());
        let e = err(&format!(
            "{web}[web.agents]\nprimary = \"http://10.0.0.2:7451\"\nbackup = \"http://10.0.0.2:7451/\"\nsecret_file = \"/etc/s\"\ndrain_timeout = \"0s\"\n"
        ));
        assert!(e.contains("web.agents.drain_timeout"), "{e}");
        let e = err(&format!(
            "{web}[web.agents]\nprimary = \"http://10.0.0.2:7451\"\nbackup = \"http://10.0.0.2:7451/\"\nsecret_file = \"/etc/s\"\n"
        ));
        assert!(
            e.contains("web.agents.backup: \"http://10.0.0.2:7451/\" is the same agent as web.agents.primary"),
            "{e}"
        );
        let ok = format!("{web}[web.agents]\nprimary = \"http://10.0.0.2:7451\"\nbackup = \"http://[fd00::3]:7451\"\nsecret_file = \"/etc/s\"\n");
        let a = Config::parse(Path::new("a.toml"), &ok).unwrap().web.unwrap().agents.unwrap();
        assert_eq!((a.backup.as_str(), a.timeout.as_secs()), ("http://[fd00::3]:7451", 2));
        let https =
            "primary = \"https://10.0.0.2:7451\"\nbackup = \"https://10.0.0.3:7451\"\nsecret_file = \"/etc/s\"\n";
        let e = err(&format!("{web}[web.agents]\n{https}"));
        assert!(
            e.contains("web.agents.primary: \"https://10.0.0.2:7451\" is https: web.agents.tls_ca must name"),
            "{e}"
        );
        let ok = format!("{web}[web.agents]\n{https}tls_ca = \"/etc/nfs-guard/ca.pem\"\n");
        let a = Config::parse(Path::new("a.toml"), &ok).unwrap().web.unwrap().agents.unwrap();
        assert_eq!(a.tls_ca.as_deref(), Some(Path::new("/etc/nfs-guard/ca.pem")));
    }
}
