//! Everything that touches the OS, the network, child processes or files on disk. Decision logic
//! elsewhere stays pure and talks to these through small traits or plain functions.

pub mod child;
pub mod fsutil;
pub mod lockfile;
pub mod mount;
pub mod mountinfo;
pub mod probe;
pub mod receivers;
pub mod rsync;
pub mod shutdown;
pub mod smtp;
pub mod systemd;
pub mod tcp_abort;
