//! Thin entry point: parse the command line, initialise logging, run, map the error to an exit code.

use std::process::ExitCode;

use clap::Parser;
use nfs_guard::{app, chain, cli::Cli, error, logging};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are successes; everything else is a usage error (exit 64).
            let code = if e.use_stderr() { error::EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    logging::init(cli.verbose, cli.quiet, cli.log_format);
    match app::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("nfs-guard: {}", chain::render_chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
