//! `[web.metrics]` and `[storage.metrics]`: the Prometheus metrics of a role (off without the table).
//! Only converts config; the metrics module records and serves them.
//!
//! One HTTP listener per process: a storage host that runs an agent serves `/metrics` on the
//! agent's listener (`[storage.agent] listen`), so `[storage.metrics] listen` is refused there unless
//! it is that same address.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Ctx, Spanned};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Serve `GET /metrics` on this address, e.g. "127.0.0.1:9469".
    pub listen: Option<Spanned<String>>,
    /// `--once` runs write the metrics here (atomically) for `node_exporter`'s textfile collector.
    pub textfile: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served; `None` with an agent: on the agent's listener; otherwise: not served.
    pub listen: Option<SocketAddr>,
    pub textfile: Option<PathBuf>,
}

impl MetricsConfig {
    /// [`MetricsConfig::validate`] of an optional table: `Some(None)` without it, `None` if invalid.
    pub fn validate_opt(
        raw: Option<&Spanned<RawMetrics>>,
        section: &str,
        agent_listen: Option<SocketAddr>,
        ctx: &mut Ctx,
    ) -> Option<Option<MetricsConfig>> {
        match raw {
            None => Some(None),
            Some(r) => MetricsConfig::validate(r, section, agent_listen, ctx).map(Some),
        }
    }

    /// `section` is `web` or `storage`; `agent_listen` the storage agent's address, if any.
    pub fn validate(
        raw: &Spanned<RawMetrics>,
        section: &str,
        agent_listen: Option<SocketAddr>,
        ctx: &mut Ctx,
    ) -> Option<MetricsConfig> {
        let raw = raw.get_ref();
        let key = format!("{section}.metrics.listen");
        let listen = match &raw.listen {
            None => Some(None),
            Some(v) => match v.get_ref().parse::<SocketAddr>() {
                Err(_) => {
                    ctx.bad(&key, v, "must be IP:PORT, e.g. \"127.0.0.1:9469\"");
                    None
                }
                Ok(a) if agent_listen.is_some_and(|l| l != a) => {
                    let l = agent_listen.map(|l| l.to_string()).unwrap_or_default();
                    ctx.bad(
                        &key,
                        v,
                        &format!(
                            "differs from storage.agent.listen ({l}): with an agent, /metrics is served on the \
                             agent's listener (one listener per process); remove this key"
                        ),
                    );
                    None
                }
                Ok(a) => Some(Some(a)),
            },
        };
        let textfile = match &raw.textfile {
            None => Some(None),
            Some(v) => {
                let p = ctx.abs_path(&format!("{section}.metrics.textfile"), v);
                if p.as_ref().is_some_and(|p| p.extension().is_none_or(|e| e != "prom")) {
                    ctx.bad(
                        &format!("{section}.metrics.textfile"),
                        v,
                        "must end in .prom (node_exporter's textfile collector reads only those)",
                    );
                    return None;
                }
                p.map(Some)
            }
        };
        Some(MetricsConfig { listen: listen?, textfile: textfile? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const WEB: &str = "[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n[web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n";
    const STORAGE: &str = "[storage]\n[[storage.trees]]\npath = \"/srv/nfs\"\n[[storage.remotes]]\nname = \"backup\"\nhost = \"10.0.0.3\"\nmodule = \"data\"\n";

    fn err(text: &str) -> String {
        Config::parse(Path::new("a.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn metrics_are_off_without_the_table_and_validated_with_it() {
        let c = Config::parse(Path::new("a.toml"), WEB).unwrap();
        assert!(c.web.unwrap().metrics.is_none());
        let c = Config::parse(
            Path::new("a.toml"),
            &format!("{WEB}[web.metrics]\nlisten = \"127.0.0.1:9469\"\ntextfile = \"/var/lib/node/nfs.prom\"\n"),
        )
        .unwrap();
        let m = c.web.unwrap().metrics.unwrap();
        assert_eq!(m.listen.unwrap().to_string(), "127.0.0.1:9469");
        assert_eq!(m.textfile.unwrap(), Path::new("/var/lib/node/nfs.prom"));
        let e = err(&format!("{WEB}[web.metrics]\nlisten = \"localhost\"\ntextfile = \"/tmp/x.txt\"\n"));
        assert!(e.contains("web.metrics.listen: \"localhost\" must be IP:PORT, e.g. \"127.0.0.1:9469\""), "{e}");
        assert!(e.contains("web.metrics.textfile: \"/tmp/x.txt\" must end in .prom"), "{e}");
        let e = err(&format!("{WEB}[web.metrics]\nport = 1\n"));
        assert!(e.contains("unknown field `port`"), "{e}");
    }

    #[test]
    fn an_agent_host_serves_metrics_on_the_agent_listener_only() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("s");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let agent = format!(
            "[storage.agent]\nserver = \"primary\"\nlisten = \"10.0.0.2:7451\"\nsecret_file = \"{}\"\npeer = \"backup\"\npeer_api = \"http://10.0.0.3:7451\"\n",
            secret.display()
        );
        let e = err(&format!("{STORAGE}{agent}[storage.metrics]\nlisten = \"10.0.0.2:9469\"\n"));
        assert!(
            e.contains("storage.metrics.listen: \"10.0.0.2:9469\" differs from storage.agent.listen (10.0.0.2:7451)"),
            "{e}"
        );
        let c = Config::parse(Path::new("a.toml"), &format!("{STORAGE}{agent}[storage.metrics]\n")).unwrap();
        assert_eq!(c.storage.unwrap().metrics.unwrap().listen, None);
    }
}
