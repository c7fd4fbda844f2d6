//! Command-line interface (clap derive). Global flags select the config file and verbosity; each
//! subcommand is one role or tool.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_CONFIG: &str = "/etc/nfs-guard/nfs-guard.toml";

#[derive(Debug, Parser)]
#[command(
    name = "nfs-guard",
    version,
    about = "NFS high-availability: fail web servers over to a backup NFS server and replicate storage with rsync",
    long_about = "nfs-guard keeps a web farm's shared NFS storage available.\n\n\
On NFS hosts, `nfs-guard storage` watches the export tree and pushes every change to one or more \
backup hosts with rsync, in batches, with a durable retry journal.\n\n\
On web servers, `nfs-guard web` health-checks the primary NFS server (ICMP, TCP and an NFS RPC call), \
remounts the backup when the primary fails, and before moving back copies everything written during \
the failover to the primary. Every transition is logged and mailed.\n\n\
One TOML file configures every role; run `nfs-guard check-config` after editing it.",
    after_help = "Examples:\n  \
nfs-guard check-config                    validate /etc/nfs-guard/nfs-guard.toml\n  \
nfs-guard --config ./site.toml storage     run the replicator in the foreground\n  \
nfs-guard web --once                      one health-check cycle (timer mode)\n  \
nfs-guard web --failover-to backup        switch by hand and hold there\n  \
nfs-guard status                          show the state of every role on this node\n\n\
Exit codes: 0 ok, 1 runtime failure, 64 usage error, 78 configuration error;\n\
`status`: 0 healthy, 1 degraded, 2 failed over or down.\n\
Logging: -v/-q change the level; RUST_LOG (e.g. RUST_LOG=nfs_guard=debug) overrides both."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, value_name = "FILE", default_value = DEFAULT_CONFIG, env = "NFS_GUARD_CONFIG")]
    pub config: PathBuf,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,
    /// Log format; `auto` is human on a terminal and plain (no time, no colour) under journald.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Web node: health-check the NFS servers, fail over to the backup, fail back after a reverse sync.
    Web(WebArgs),
    /// Storage node: watch the export trees and push every change to the remotes with rsync.
    Storage(StorageArgs),
    /// Validate the configuration file and exit (0 valid, 78 invalid).
    CheckConfig,
    /// Summarize this node's roles from their status files; exit 0 healthy, 1 degraded, 2 failed over or down.
    Status(StatusArgs),
    /// Send a test alert email and report exactly what failed.
    AlertTest,
    /// Write the man page or a shell completion script to stdout (for packagers; no config read).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generated,
    },
}

/// What `generate` writes, from these very definitions (so they never drift from the CLI).
#[derive(Debug, Subcommand)]
pub enum Generated {
    /// The man page nfs-guard(1), in roff.
    Man,
    /// A completion script for `shell`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct WebArgs {
    /// Run one check cycle, act on it, persist the state and exit (for systemd timers).
    #[arg(long)]
    pub once: bool,
    /// Switch the mount(s) to this server now and hold there until `--release`.
    #[arg(long, value_enum, value_name = "SERVER", conflicts_with_all = ["hold", "release"])]
    pub failover_to: Option<Target>,
    /// Stay on the current server: no automatic failover or failback until `--release`.
    #[arg(long, conflicts_with = "release")]
    pub hold: bool,
    /// Release a hold or a manual failover; automatic control resumes.
    #[arg(long)]
    pub release: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Primary,
    Backup,
}

#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Run one full sync of every tree to every remote, then exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON document for scripts (versioned: "schema": 1; see README), instead of the summary.
    #[arg(long)]
    pub json: bool,
}
