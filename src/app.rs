//! Composition root: loads the config, builds the runtime and the real implementations, and runs the
//! chosen command. The only place that wires OS-facing pieces together.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::alert::{self, AlertSink, Alerts};
use crate::cli::{Cli, Command, Target, WebArgs};
use crate::config::Config;
use crate::domain::{Request, Server};
use crate::error::Error;
use crate::{status, storage, sys, web};

/// How long queued alerts get to go out when a one-shot command exits. Only spent when this run
/// queued something and the mail server's backoff (kept in the outbox across runs) allows an
/// attempt: while the server is dead, timer runs do not wait on it.
const ONCE_ALERT_GRACE: Duration = Duration::from_secs(5);
/// How long queued alerts get on a daemon's shutdown.
const SHUTDOWN_ALERT_GRACE: Duration = Duration::from_secs(3);

pub fn run(cli: Cli) -> Result<(), Error> {
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
            Ok(())
        }
        Command::Status(args) => {
            match status::render(&config.state_dir, args.json) {
                Some(text) => print!("{text}"),
                None => println!(
                    "no status yet under {} (is nfs-guard web or storage running?)",
                    config.state_dir.display()
                ),
            }
            Ok(())
        }
        Command::Web(args) => {
            config.web()?;
            let mode = web::Mode { once: args.once, request: request_of(&args) };
            let tell = |text: &str| println!("{text}");
            run_role(&config, args.once, |sink, shutdown| async {
                let farm = config.cluster.clone().map(crate::farm::starter);
                Ok(web::run(&config, mode, sink, shutdown, &tell, farm).await?)
            })
        }
        Command::Storage(args) => {
            config.storage()?;
            run_role(&config, args.once, |sink, shutdown| async {
                Ok(storage::run(&config, storage::Mode { once: args.once }, sink, shutdown).await?)
            })
        }
        Command::AlertTest => {
            let result = runtime()?.block_on(alert::test(config.alert()?));
            let sent = match &result {
                Ok(sent) | Err(alert::Error::Test { sent, .. }) => sent.as_deref(),
                Err(_) => None,
            };
            if let Some(sent) = sent {
                println!("{sent}");
            }
            result.map(|_| ()).map_err(Error::from)
        }
    }
}

/// Runs a role on a fresh runtime with signal handling and alert delivery; queued alerts get a grace
/// period to go out when the role returns (the rest stays in the outbox for the next run).
fn run_role<F, Fut>(config: &Config, once: bool, role: F) -> Result<(), Error>
where
    F: FnOnce(Arc<dyn AlertSink>, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    runtime()?.block_on(async {
        let shutdown = sys::shutdown::on_signals();
        let alerts = Alerts::start(config.alert.as_ref(), &config.state_dir, shutdown.clone())?;
        let result = role(alerts.sink.clone(), shutdown).await;
        alerts.drain(if once { ONCE_ALERT_GRACE } else { SHUTDOWN_ALERT_GRACE }).await;
        result
    })
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
