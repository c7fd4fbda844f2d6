//! The web role's vocabulary, shared by its state machine (`web::fsm`) and the alert texts that
//! describe it (`alert::notice`): which server, what health verdict, what the operator asked for.
//! A leaf: it imports nothing from the crate, so both sides can use it without a cycle.

use std::ops::{Index, IndexMut};

use serde::{Deserialize, Serialize};

/// One of the two NFS servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    Primary,
    Backup,
}

impl Server {
    pub const BOTH: [Server; 2] = [Server::Primary, Server::Backup];

    pub fn name(self) -> &'static str {
        match self {
            Server::Primary => "primary",
            Server::Backup => "backup",
        }
    }

    #[must_use]
    pub fn other(self) -> Server {
        match self {
            Server::Primary => Server::Backup,
            Server::Backup => Server::Primary,
        }
    }
}

/// One value per server, indexed by [`Server`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerServer<T> {
    pub primary: T,
    pub backup: T,
}

impl<T> PerServer<T> {
    /// Built from a function of the server.
    pub fn from_fn(mut f: impl FnMut(Server) -> T) -> Self {
        PerServer { primary: f(Server::Primary), backup: f(Server::Backup) }
    }
}

impl<T> Index<Server> for PerServer<T> {
    type Output = T;
    fn index(&self, s: Server) -> &T {
        match s {
            Server::Primary => &self.primary,
            Server::Backup => &self.backup,
        }
    }
}

impl<T> IndexMut<Server> for PerServer<T> {
    fn index_mut(&mut self, s: Server) -> &mut T {
        match s {
            Server::Primary => &mut self.primary,
            Server::Backup => &mut self.backup,
        }
    }
}

/// What the state machine knows about a server (after hysteresis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// No verdict yet (just started and not enough checks).
    #[default]
    Unknown,
    Up,
    Down,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Up => "up",
            Status::Down => "down",
        }
    }
}

/// What the operator asked for (`web --failover-to/--hold/--release`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    FailoverTo(Server),
    Hold,
    Release,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_server_is_indexed_by_server() {
        let mut p = PerServer::from_fn(Server::name);
        assert_eq!((p[Server::Primary], p[Server::Backup]), ("primary", "backup"));
        p[Server::Backup] = "b";
        assert_eq!(p.backup, "b");
        assert_eq!(Server::BOTH.map(Server::other), [Server::Backup, Server::Primary]);
    }
}
