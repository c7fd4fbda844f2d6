//! nfs-guard: an NFS high-availability failover controller (`web`) and a watch-and-push rsync
//! replicator (`storage`), one binary and one TOML config.
//!
//! The library exists so that `tests/` can drive every layer; `main.rs` only parses the command line.

pub mod alert;
pub mod alert_kind;
pub mod app;
pub mod chain;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
pub mod failback_guard;
pub mod farm;
pub mod logging;
pub mod metrics;
pub mod status;
pub mod storage;
pub mod sys;
pub mod timing;
pub mod web;

pub use error::Error;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod layering_tests;
