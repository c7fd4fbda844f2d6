//! Composition root: loads the config, builds the runtime and the real implementations, and runs the
//! chosen command. The only place that wires OS-facing pieces together.

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::alert::{self, AlertSink, Alerts};
use crate::cli::{Cli, Command, Generated, Target, WebArgs};
use crate::config::metrics::MetricsConfig;
use crate::config::Config;
use crate::domain::{Request, Server};
use crate::error::Error;
use crate::{metrics, status, storage, sys, web};

/// How long queued alerts get to go out when a one-shot command exits. Only spent when this run
/// queued something and the mail server's backoff (kept in the outbox across runs) allows an
/// attempt: while the server is dead, timer runs do not wait on it.
const ONCE_ALERT_GRACE: Duration = Duration::from_secs(5);
/// How long queued alerts get on a daemon's shutdown.
const SHUTDOWN_ALERT_GRACE: Duration = Duration::from_secs(3);

/// Runs the command; `Ok` carries the exit code (non-zero only for `status`: 1 degraded, 2 down).
pub fn run(cli: Cli) -> Result<u8, Error> {
    if let Command::Generate { what } = &cli.command {
        generate(what).map_err(|source| Error::Io { what: "cannot write", path: "stdout".into(), source })?;
        return Ok(0);
    }
    let config = Config::load(&cli.config)?;
    // check-config prints its findings itself; every other command logs them.
    if !matches!(cli.command, Command::CheckConfig) {
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
    }
    match cli.command {
        Command::CheckConfig => {
            check_config(&config);
            Ok(0)
        }
        Command::Status(args) => {
            let docs = status::gather(&config.state_dir);
            let now = status::now_ms();
            if args.json {
                print!("{}", status::render_json(&docs, now));
            } else {
                let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                print!("{}", status::render_human(&docs, now, color));
            }
            Ok(status::assess(&docs, now).level.exit_code())
        }
        Command::Web(args) => {
            let plan = MetricsPlan::of(metrics::Role::Web, config.web()?.metrics.as_ref(), false);
            let mode = web::Mode { once: args.once, request: request_of(&args) };
            let tell = |text: &str| println!("{text}");
            run_role(&config, args.once, plan.as_ref(), |sink, shutdown| async {
                let farm = config.cluster.clone().map(crate::farm::starter);
                Ok(web::run(&config, mode, sink, shutdown, &tell, farm).await?)
            })?;
            Ok(0)
        }
        Command::Storage(args) => {
            let s = config.storage()?;
            let plan = MetricsPlan::of(metrics::Role::Storage, s.metrics.as_ref(), s.agent.is_some());
            run_role(&config, args.once, plan.as_ref(), |sink, shutdown| async {
                Ok(storage::run(&config, storage::Mode { once: args.once }, sink, shutdown).await?)
            })?;
            Ok(0)
        }
        Command::Generate { .. } => Ok(0),
        Command::AlertTest => {
            let result = runtime()?.block_on(alert::test(config.alert()?));
            let sent = match &result {
                Ok(sent) | Err(alert::Error::Test { sent, .. }) => sent.as_deref(),
                Err(_) => None,
            };
            if let Some(sent) = sent {
                println!("{sent}");
            }
            result.map(|_| 0).map_err(Error::from)
        }
    }
}

/// Where a role's metrics go (`[web.metrics]`, `[storage.metrics]`); `None` when they are off.
struct MetricsPlan {
    role: metrics::Role,
    /// Served by this process's own listener (not the storage agent's).
    listen: Option<SocketAddr>,
    textfile: Option<PathBuf>,
}

impl MetricsPlan {
    fn of(role: metrics::Role, cfg: Option<&MetricsConfig>, agent: bool) -> Option<MetricsPlan> {
        cfg.map(|m| MetricsPlan { role, listen: m.listen.filter(|_| !agent), textfile: m.textfile.clone() })
    }
}

/// Runs a role on a fresh runtime with signal handling, alert delivery and its metrics; queued
/// alerts get a grace period to go out when the role returns (the rest stays in the outbox for the
/// next run). A daemon serves `/metrics`; a `--once` run writes its metrics file at the end.
fn run_role<F, Fut>(config: &Config, once: bool, plan: Option<&MetricsPlan>, role: F) -> Result<(), Error>
where
    F: FnOnce(Arc<dyn AlertSink>, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    runtime()?.block_on(async {
        let shutdown = sys::shutdown::on_signals();
        if let Some(p) = plan {
            metrics::init(p.role);
            if let (Some(addr), false) = (p.listen, once) {
                metrics::serve(addr, shutdown.clone()).await?;
            }
        }
        let alerts = Alerts::start(config.alert.as_ref(), &config.state_dir, shutdown.clone())?;
        let result = role(alerts.sink.clone(), shutdown).await;
        alerts.drain(if once { ONCE_ALERT_GRACE } else { SHUTDOWN_ALERT_GRACE }).await;
        if let Some(path) = plan.and_then(|p| p.textfile.as_ref()).filter(|_| once) {
            if let Err(e) = metrics::write_textfile(path) {
                tracing::error!(path = %path.display(), error = %e, "cannot write the metrics file");
            }
        }
        result
    })
}

/// The man page or a completion script, generated from the clap definitions.
fn generate(what: &Generated) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut out = std::io::stdout().lock();
    let mut cmd = Cli::command();
    match what {
        Generated::Man => clap_mangen::Man::new(cmd).render(&mut out),
        Generated::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "nfs-guard", &mut out);
            Ok(())
        }
    }
}

fn check_config(config: &Config) {
    let roles: Vec<&str> = [
        config.web.as_ref().map(|_| "web"),
        config.storage.as_ref().map(|_| "storage"),
        config.alert.as_ref().map(|_| "alert"),
        config.cluster.as_ref().map(|_| "cluster"),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!("{}: valid (sections: {})", config.path.display(), roles.join(", "));
    for w in &config.warnings {
        println!("warning: {w}");
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(Error::Runtime)
}

/// The operator request `web` was given, if any.
fn request_of(args: &WebArgs) -> Option<Request> {
    match (args.failover_to, args.hold, args.release) {
        (Some(Target::Primary), _, _) => Some(Request::FailoverTo(Server::Primary)),
        (Some(Target::Backup), _, _) => Some(Request::FailoverTo(Server::Backup)),
        (None, true, _) => Some(Request::Hold),
        (None, false, true) => Some(Request::Release),
        (None, false, false) => None,
    }
}
