//! `[cluster]`: this web node is one of a farm that agrees on the active server through etcd
//! (see `farm` and docs/farm.md). Only converts config. Without the section a web node decides
//! alone, exactly as before.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration::{mins, opt_duration_in, secs};
use super::{Ctx, Spanned};

/// The most etcd endpoints accepted (a real cluster has 3 or 5 members).
const MAX_ENDPOINTS: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// etcd v3 client URLs, e.g. `["http://10.0.0.2:2379", "http://10.0.0.3:2379"]`. Required.
    pub endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    /// This node's name in the farm (unique per node): letters, digits, `.`, `_`, `-`. Required.
    pub name: Option<Spanned<String>>,
    /// Client TLS (for `https://` endpoints).
    pub tls: Option<Spanned<RawTls>>,
    /// etcd user (role-based access), with `password_file`.
    pub user: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    /// TTL of this node's lease: its observations and its leadership vanish this long after it
    /// stops renewing (5s).
    pub lease_ttl: Option<Spanned<String>>,
    /// How the leader weighs the live nodes' observations: "majority" (default) or "any".
    pub policy: Option<Spanned<String>>,
    /// A node that lost etcd decides alone (true) or keeps its current mount (false, default).
    pub autonomy: Option<Spanned<bool>>,
    /// The key prefix of this farm (default "/nfs-guard").
    pub prefix: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// CA bundle that signed the etcd members' certificates. Required in `[cluster.tls]`.
    pub ca_file: Option<Spanned<String>>,
    /// Client certificate and key (both or neither).
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}

/// How the leader turns the live nodes' observations into a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// More than half of the live nodes must see the primary down (and the backup up) to fail over.
    #[default]
    Majority,
    /// One live node seeing the primary down (and the backup up) is enough.
    Any,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Majority => "majority",
            Policy::Any => "any",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub ca_file: PathBuf,
    /// Client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    pub name: String,
    pub tls: Option<Tls>,
    /// User and the file holding its password.
    pub auth: Option<(String, PathBuf)>,
    pub lease_ttl: Duration,
    pub policy: Policy,
    pub autonomy: bool,
    /// Without a trailing slash, e.g. `/nfs-guard`.
    pub prefix: String,
}

/// `http://HOST:PORT` or `https://HOST:PORT`; returns whether it is https.
fn endpoint(ctx: &mut Ctx, key: &str, v: &Spanned<String>) -> Option<bool> {
    let s = v.get_ref();
    let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else {
        ctx.bad(key, v, "must be an http://HOST:PORT or https://HOST:PORT URL of an etcd member");
        return None;
    };
    let ok = rest.rsplit_once(':').is_some_and(|(h, p)| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        super::is_host(h) && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !ok {
        ctx.bad(key, v, "must be http(s)://HOST:PORT with a host name or IP address and a port (no path)");
        return None;
    }
    Some(https)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl ClusterConfig {
    #[allow(clippy::too_many_lines, reason = "one key after the other, each with its message")]
    pub fn validate(raw: &Spanned<RawCluster>, ctx: &mut Ctx) -> Option<ClusterConfig> {
        let (span, raw) = (raw.span(), raw.get_ref());
        let mut ok = true;
        let mut https = Vec::new();
        let mut endpoints = Vec::new();
        match &raw.endpoints {
            None => {
                ctx.problem(
                    "cluster.endpoints",
                    Some(span.clone()),
                    None,
                    "is required (the etcd members' client URLs)",
                );
                ok = false;
            }
            Some(list) if list.get_ref().is_empty() || list.get_ref().len() > MAX_ENDPOINTS => {
                ctx.problem(
                    "cluster.endpoints",
                    Some(list.span()),
                    Some(list.get_ref().len().to_string()),
                    &format!("must list 1 to {MAX_ENDPOINTS} etcd client URLs"),
                );
                ok = false;
            }
            Some(list) => {
                for (i, v) in list.get_ref().iter().enumerate() {
                    let key = format!("cluster.endpoints[{i}]");
                    match endpoint(ctx, &key, v) {
                        Some(h) => {
                            if endpoints.contains(v.get_ref()) {
                                ctx.bad(&key, v, "is listed twice");
                                ok = false;
                            }
                            https.push(h);
                            endpoints.push(v.get_ref().clone());
                        }
                        None => ok = false,
                    }
                }
            }
        }
        let name = match &raw.name {
            None => {
                ctx.problem(
                    "cluster.name",
                    Some(span.clone()),
                    None,
                    "is required (this node's unique name in the farm)",
                );
                None
            }
            Some(v) if !valid_name(v.get_ref()) => {
                ctx.bad("cluster.name", v, "must be 1 to 64 letters, digits, '.', '_' or '-'");
                None
            }
            Some(v) => Some(v.get_ref().clone()),
        };
        let tls = raw.tls.as_ref().and_then(|t| {
            let tspan = t.span();
            let t = t.get_ref();
            let ca = if let Some(v) = &t.ca_file {
                ctx.abs_path("cluster.tls.ca_file", v)
            } else {
                ctx.problem("cluster.tls.ca_file", Some(tspan.clone()), None, "is required in [cluster.tls]");
                None
            };
            let cert = t.cert_file.as_ref().map(|v| ctx.abs_path("cluster.tls.cert_file", v));
            let key = t.key_file.as_ref().map(|v| ctx.secret_file("cluster.tls.key_file", v));
            let identity = match (cert, key) {
                (None, None) => Some(None),
                (Some(Some(c)), Some(Some(k))) => Some(Some((c, k))),
                (Some(_), None) | (None, Some(_)) => {
                    ctx.problem(
                        "cluster.tls",
                        Some(tspan),
                        None,
                        "cert_file and key_file go together (a client certificate needs its key)",
                    );
                    None
                }
                _ => None,
            };
            Some(Tls { ca_file: ca?, identity: identity? })
        });
        if raw.tls.is_some() && tls.is_none() {
            ok = false;
        }
        if let Some(t) = &raw.tls {
            if !https.is_empty() && !https.iter().any(|h| *h) {
                ctx.problem("cluster.tls", Some(t.span()), None, "is set but no endpoint is https://");
                ok = false;
            }
        } else if https.iter().any(|h| *h) {
            ctx.problem(
                "cluster.endpoints",
                raw.endpoints.as_ref().map(Spanned::span),
                None,
                "has https:// endpoints: [cluster.tls] with ca_file is required",
            );
            ok = false;
        }
        let auth = match (&raw.user, &raw.password_file) {
            (None, None) => Some(None),
            (Some(u), Some(p)) => {
                let user = if u.get_ref().is_empty() || u.get_ref().chars().any(char::is_control) {
                    ctx.bad("cluster.user", u, "must be a non-empty etcd user name without control characters");
                    None
                } else {
                    Some(u.get_ref().clone())
                };
                let file = ctx.secret_file("cluster.password_file", p);
                user.zip(file).map(Some)
            }
            (Some(u), None) => {
                ctx.bad("cluster.user", u, "needs cluster.password_file (the file holding its password)");
                None
            }
            (None, Some(p)) => {
                ctx.bad("cluster.password_file", p, "needs cluster.user");
                None
            }
        };
        let lease_ttl =
            opt_duration_in(ctx, "cluster.lease_ttl", raw.lease_ttl.as_ref(), secs(5), &(secs(2)..=mins(5)));
        let policy = match &raw.policy {
            None => Some(Policy::Majority),
            Some(v) => match v.get_ref().as_str() {
                "majority" => Some(Policy::Majority),
                "any" => Some(Policy::Any),
                _ => {
                    ctx.bad("cluster.policy", v, "must be \"majority\" or \"any\"");
                    None
                }
            },
        };
        let prefix = match &raw.prefix {
            None => Some("/nfs-guard".to_owned()),
            Some(v) => {
                let p = v.get_ref().trim_end_matches('/');
                let fine = p.starts_with('/')
                    && p.len() <= 200
                    && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
                if fine {
                    Some(p.to_owned())
                } else {
                    ctx.bad(
                        "cluster.prefix",
                        v,
                        "must start with '/' and hold only letters, digits, '/', '.', '_' or '-' (at most 200)",
                    );
                    None
                }
            }
        };
        if !ok {
            return None;
        }
        Some(ClusterConfig {
            endpoints,
            name: name?,
            tls,
            auth: auth?,
            lease_ttl: lease_ttl?,
            policy: policy?,
            autonomy: raw.autonomy.as_ref().is_some_and(|v| *v.get_ref()),
            prefix: prefix?,
        })
    }

    /// `[cluster]` only means something for a web node that drives the storage agents: the farm's
    /// leader is the one decider of the storage cluster, and its failback drains the backup's
    /// journal once for every node.
    pub fn check_with_web(raw: &Spanned<RawCluster>, web: Option<&super::web::WebConfig>, ctx: &mut Ctx) {
        match web {
            None => ctx.problem(
                "cluster",
                Some(raw.span()),
                None,
                "is for web nodes: this config has no [web] section (storage hosts run only the etcd members)",
            ),
            Some(w) if w.agents.is_none() => ctx.problem(
                "cluster",
                Some(raw.span()),
                None,
                "needs [web.agents]: the farm's leader drives the storage agents (one drain per failback for all nodes)",
            ),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const WEB: &str = "[web]\nmount_point = \"/mnt/nfs\"\n[web.primary]\naddress = \"10.0.0.2\"\nexport = \"/srv/nfs\"\n\
        [web.backup]\naddress = \"10.0.0.3\"\nexport = \"/srv/nfs\"\n\
        [web.agents]\nprimary = \"http://10.0.0.2:7451\"\nbackup = \"http://10.0.0.3:7451\"\nsecret_file = \"/etc/s\"\n";

    fn parse(cluster: &str) -> Result<Config, String> {
        Config::parse(Path::new("farm.toml"), &format!("{WEB}[cluster]\n{cluster}")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_minimal_section_takes_the_defaults() {
        let c = parse("endpoints = [\"http://10.0.0.2:2379\"]\nname = \"web-1\"\n").unwrap().cluster.unwrap();
        assert_eq!(c.endpoints, ["http://10.0.0.2:2379"]);
        assert_eq!(
            (c.name.as_str(), c.lease_ttl, c.policy, c.autonomy, c.prefix.as_str()),
            ("web-1", secs(5), Policy::Majority, false, "/nfs-guard")
        );
        assert_eq!((c.tls, c.auth), (None, None));
    }

    #[test]
    fn without_the_section_a_web_node_has_no_cluster() {
        assert!(Config::parse(Path::new("w.toml"), WEB).unwrap().cluster.is_none());
    }

    #[test]
    fn every_bad_key_is_named_with_its_value() {
        let e = parse(
            "endpoints = [\"10.0.0.2:2379\", \"http://10.0.0.3\"]\nname = \"web 1\"\nlease_ttl = \"1s\"\n\
             policy = \"most\"\nprefix = \"nfs\"\nuser = \"root\"\n",
        )
        .unwrap_err();
        for want in [
            "farm.toml:",
            "cluster.endpoints[0]: \"10.0.0.2:2379\" must be an http://HOST:PORT or https://HOST:PORT URL of an etcd member",
            "cluster.endpoints[1]: \"http://10.0.0.3\" must be http(s)://HOST:PORT with a host name or IP address and a port (no path)",
            "cluster.name: \"web 1\" must be 1 to 64 letters, digits, '.', '_' or '-'",
            "cluster.lease_ttl: \"1s\" must be at least 2s (allowed: 2s to 5m)",
            "cluster.policy: \"most\" must be \"majority\" or \"any\"",
            "cluster.prefix: \"nfs\" must start with '/'",
            "cluster.user: \"root\" needs cluster.password_file (the file holding its password)",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn required_keys_tls_and_https_go_together() {
        let e = parse("autonomy = true\n").unwrap_err();
        assert!(e.contains("cluster.endpoints: is required (the etcd members' client URLs)"), "{e}");
        assert!(e.contains("cluster.name: is required"), "{e}");
        let e = parse("endpoints = [\"https://10.0.0.2:2379\"]\nname = \"a\"\n").unwrap_err();
        assert!(e.contains("cluster.endpoints: has https:// endpoints: [cluster.tls] with ca_file is required"), "{e}");
        let e = parse(
            "endpoints = [\"https://10.0.0.2:2379\"]\nname = \"a\"\n[cluster.tls]\nca_file = \"/etc/ca.pem\"\ncert_file = \"/etc/c.pem\"\n",
        )
        .unwrap_err();
        assert!(e.contains("cluster.tls: cert_file and key_file go together"), "{e}");
        let e = parse("endpoints = [\"http://10.0.0.2:2379\", \"http://10.0.0.2:2379\"]\nname = \"a\"\n").unwrap_err();
        assert!(e.contains("cluster.endpoints[1]: \"http://10.0.0.2:2379\" is listed twice"), "{e}");
        let c = parse(
            "endpoints = [\"https://10.0.0.2:2379\"]\nname = \"a\"\npolicy = \"any\"\nprefix = \"/farm/a/\"\n[cluster.tls]\nca_file = \"/etc/ca.pem\"\n",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!((c.policy, c.prefix.as_str()), (Policy::Any, "/farm/a"));
        assert_eq!(c.tls.unwrap().ca_file, PathBuf::from("/etc/ca.pem"));
    }

    #[test]
    fn the_section_needs_a_web_node_that_drives_the_agents() {
        let no_agents = WEB.split("[web.agents]").next().unwrap();
        let e = Config::parse(
            Path::new("farm.toml"),
            &format!("{no_agents}[cluster]\nendpoints = [\"http://10.0.0.2:2379\"]\nname = \"a\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cluster: needs [web.agents]: the farm's leader drives the storage agents"), "{e}");
        let e = Config::parse(
            Path::new("farm.toml"),
            "[alert]\n[cluster]\nendpoints = [\"http://10.0.0.2:2379\"]\nname = \"a\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cluster: is for web nodes: this config has no [web] section"), "{e}");
    }
}
