//! Health-check layers against one NFS server, each with its own timeout: ICMP echo, TCP connect to
//! the NFS port, an ONC-RPC NULL call to the NFS program (hand-written: record marking over TCP), and a
//! canary read through the current mount on a thread that is abandoned at its deadline. A probe never
//! blocks its caller past the sum of its layer timeouts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// ONC-RPC program number of NFS.
pub const NFS_PROGRAM: u32 = 100_003;

/// Which layer of a check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layer {
    Resolve,
    Icmp,
    Tcp,
    Rpc,
    Canary,
}

/// A failed check: which layer, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{layer:?} check of {target} failed: {reason}")]
pub struct ProbeError {
    pub layer: Layer,
    pub target: String,
    pub reason: String,
    /// The target's host itself said no: connection refused or reset, the RPC connection closed
    /// mid-call, an RPC error or garbage reply. A timeout, an unreachable route or a local error is
    /// never certain (it may be load, the path, or this node).
    pub certain: bool,
}

fn fail(layer: Layer, target: &str, reason: impl Into<String>) -> ProbeError {
    ProbeError { layer, target: target.to_owned(), reason: reason.into(), certain: false }
}

fn refused(layer: Layer, target: &str, reason: impl Into<String>) -> ProbeError {
    ProbeError { certain: true, ..fail(layer, target, reason) }
}

/// True for the socket errors that only the peer's host can cause (it answered with a RST, or closed
/// the connection).
pub fn is_answer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe
    )
}

fn io_fail(layer: Layer, target: &str, what: &str, e: &std::io::Error) -> ProbeError {
    let reason = if what.is_empty() { e.to_string() } else { format!("{what}: {e}") };
    ProbeError { certain: is_answer(e), ..fail(layer, target, reason) }
}

/// Resolves `host` (IP literal or DNS name) within `timeout`.
pub async fn resolve(host: &str, timeout: Duration) -> Result<IpAddr, ProbeError> {
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, 0))).await {
        Ok(Ok(mut addrs)) => addrs.next().map(|a| a.ip()).ok_or_else(|| fail(Layer::Resolve, host, "no address")),
        Ok(Err(e)) => Err(fail(Layer::Resolve, host, e.to_string())),
        Err(_) => Err(fail(Layer::Resolve, host, format!("no answer within {timeout:?}"))),
    }
}

/// ICMP echo, when a socket could be opened (raw sockets need root or `CAP_NET_RAW`; unprivileged ICMP
/// sockets need `net.ipv4.ping_group_range`). Without one the layer is skipped, never failed.
pub struct Icmp {
    v4: Option<surge_ping::Client>,
    v6: Option<surge_ping::Client>,
}

impl Icmp {
    /// Opens the sockets (must run inside the tokio runtime). Logs once when ICMP is unavailable.
    pub fn open() -> Icmp {
        let open = |kind| {
            let cfg = surge_ping::Config::builder().kind(kind).build();
            // surge-ping tries an unprivileged ICMP datagram socket first, then a raw one.
            surge_ping::Client::new(&cfg)
                .map_err(|e| tracing::warn!(error = %e, "ICMP echo unavailable (needs root or CAP_NET_RAW): ping layer skipped"))
                .ok()
        };
        Icmp { v4: open(surge_ping::ICMP::V4), v6: open(surge_ping::ICMP::V6) }
    }

    /// No ICMP at all (the layer is disabled in the config).
    pub fn none() -> Icmp {
        Icmp { v4: None, v6: None }
    }

    pub fn available(&self) -> bool {
        self.v4.is_some()
    }

    /// `Ok(None)`: skipped (no ICMP socket). `Ok(Some(rtt))`: echo reply.
    pub async fn ping(&self, ip: IpAddr, timeout: Duration) -> Result<Option<Duration>, ProbeError> {
        let client = match ip {
            IpAddr::V4(_) => self.v4.as_ref(),
            IpAddr::V6(_) => self.v6.as_ref(),
        };
        let Some(client) = client else { return Ok(None) };
        let ident = surge_ping::PingIdentifier(fastrand::u16(..));
        let mut pinger = client.pinger(ip, ident).await;
        pinger.timeout(timeout);
        match pinger.ping(surge_ping::PingSequence(0), &[0u8; 16]).await {
            Ok((_, rtt)) => Ok(Some(rtt)),
            Err(surge_ping::SurgeError::Timeout { .. }) => {
                Err(fail(Layer::Icmp, &ip.to_string(), format!("no echo reply within {timeout:?}")))
            }
            Err(e) => Err(fail(Layer::Icmp, &ip.to_string(), e.to_string())),
        }
    }
}

/// TCP connect within `timeout`.
pub async fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProbeError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(io_fail(Layer::Tcp, &addr.to_string(), "", &e)),
        Err(_) => Err(fail(Layer::Tcp, &addr.to_string(), format!("no connection within {timeout:?}"))),
    }
}

/// A NULL call (procedure 0, `AUTH_NONE`) to `program`/`version`, framed with an RPC record mark.
pub fn rpc_null_call(xid: u32, program: u32, version: u32) -> Vec<u8> {
    let words: [u32; 10] =
        [xid, 0 /* CALL */, 2 /* RPC v2 */, program, version, 0 /* NULL */, 0, 0, 0, 0];
    let mut out = Vec::with_capacity(44);
    out.extend_from_slice(&(0x8000_0000u32 | 0x28).to_be_bytes());
    for w in words {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out
}

/// What an RPC server answered to the NULL call. Any well-formed reply proves the service is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcReply {
    Success,
    /// The program runs but not this version (e.g. v4-only server asked for v3): alive.
    ProgMismatch {
        low: u32,
        high: u32,
    },
    /// Accepted with another status (e.g. `PROG_UNAVAIL` = 1: no NFS behind this port).
    Accepted(u32),
    /// `MSG_DENIED` (RPC version mismatch or auth error): an RPC server answered.
    Denied(u32),
}

impl RpcReply {
    /// True when the NFS service answered as NFS (program available).
    pub fn alive(self) -> bool {
        matches!(self, RpcReply::Success | RpcReply::ProgMismatch { .. } | RpcReply::Denied(_))
    }
}

/// Parses a reply body (after the record mark) to the call with `xid`.
pub fn parse_rpc_reply(xid: u32, body: &[u8]) -> Result<RpcReply, String> {
    let word = |i: usize| -> Result<u32, String> {
        body.get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| format!("reply too short ({} bytes)", body.len()))
    };
    if word(0)? != xid {
        return Err(format!("reply xid {:#x} does not match call {xid:#x}", word(0)?));
    }
    if word(1)? != 1 {
        return Err("not an RPC reply".to_owned());
    }
    match word(2)? {
        0 => {
            // verifier: flavor, length, opaque body padded to 4 bytes
            let verf_len = word(4)? as usize;
            let at = 5 + verf_len.div_ceil(4);
            match word(at)? {
                0 => Ok(RpcReply::Success),
                2 => Ok(RpcReply::ProgMismatch { low: word(at + 1)?, high: word(at + 2)? }),
                other => Ok(RpcReply::Accepted(other)),
            }
        }
        1 => Ok(RpcReply::Denied(word(3)?)),
        other => Err(format!("bad reply_stat {other}")),
    }
}

/// Sends the NULL call on `stream` and reads one reply record, all within `timeout`.
pub async fn rpc_null(
    stream: &mut TcpStream,
    target: &str,
    program: u32,
    version: u32,
    timeout: Duration,
) -> Result<RpcReply, ProbeError> {
    let xid = fastrand::u32(..);
    let exchange = async {
        stream
            .write_all(&rpc_null_call(xid, program, version))
            .await
            .map_err(|e| io_fail(Layer::Rpc, target, "sending the call", &e))?;
        let mut body = Vec::new();
        loop {
            let mut mark = [0u8; 4];
            stream.read_exact(&mut mark).await.map_err(|e| io_fail(Layer::Rpc, target, "reading reply", &e))?;
            let mark = u32::from_be_bytes(mark);
            let len = (mark & 0x7fff_ffff) as usize;
            if len > 64 * 1024 {
                return Err(refused(Layer::Rpc, target, format!("reply fragment of {len} bytes is not a NULL reply")));
            }
            let start = body.len();
            body.resize(start + len, 0);
            stream
                .read_exact(&mut body[start..])
                .await
                .map_err(|e| io_fail(Layer::Rpc, target, "reading reply", &e))?;
            if mark & 0x8000_0000 != 0 {
                break;
            }
        }
        parse_rpc_reply(xid, &body).map_err(|e| refused(Layer::Rpc, target, e))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(r)) if r.alive() => Ok(r),
        Ok(Ok(r)) => Err(refused(Layer::Rpc, target, format!("NFS program {program} v{version} not available: {r:?}"))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(fail(Layer::Rpc, target, format!("no RPC reply within {timeout:?}"))),
    }
}

/// Reads up to 4 KiB of `path` on a thread; gives up at `timeout`. `busy` keeps at most one read in
/// flight: while an earlier read is still stuck in the kernel, the check fails without starting another.
pub async fn canary(path: PathBuf, timeout: Duration, busy: Arc<AtomicBool>) -> Result<(), ProbeError> {
    let target = path.display().to_string();
    if busy.swap(true, Ordering::SeqCst) {
        return Err(fail(Layer::Canary, &target, "an earlier canary read is still hung"));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let b = busy.clone();
    let spawned = std::thread::Builder::new().name("nfs-guard-canary".into()).spawn(move || {
        use std::io::Read;
        let r = std::fs::File::open(&path).and_then(|f| f.take(4096).read_to_end(&mut Vec::new()));
        b.store(false, Ordering::SeqCst);
        let _ = tx.send(r);
    });
    if let Err(e) = spawned {
        busy.store(false, Ordering::SeqCst);
        return Err(fail(Layer::Canary, &target, format!("cannot start reader thread: {e}")));
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(e))) => Err(fail(Layer::Canary, &target, e.to_string())),
        Ok(Err(_)) => Err(fail(Layer::Canary, &target, "reader thread died")),
        Err(_) => Err(fail(Layer::Canary, &target, format!("read did not finish within {timeout:?}"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn null_call_is_framed_as_one_record() {
        let c = rpc_null_call(0x1234_5678, NFS_PROGRAM, 3);
        assert_eq!(c.len(), 44);
        assert_eq!(&c[..4], &[0x80, 0, 0, 40]);
        assert_eq!(&c[4..8], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(&c[16..20], &100_003u32.to_be_bytes());
        assert_eq!(&c[20..24], &3u32.to_be_bytes());
    }

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn replies_are_classified() {
        // xid, REPLY, MSG_ACCEPTED, verf AUTH_NONE len 0, SUCCESS
        assert_eq!(parse_rpc_reply(7, &words(&[7, 1, 0, 0, 0, 0])), Ok(RpcReply::Success));
        let mismatch = parse_rpc_reply(7, &words(&[7, 1, 0, 0, 0, 2, 4, 4])).unwrap();
        assert_eq!(mismatch, RpcReply::ProgMismatch { low: 4, high: 4 });
        assert!(mismatch.alive());
        let unavail = parse_rpc_reply(7, &words(&[7, 1, 0, 0, 0, 1])).unwrap();
        assert!(!unavail.alive());
        assert!(parse_rpc_reply(7, &words(&[7, 1, 1, 1])).unwrap().alive());
        assert!(parse_rpc_reply(8, &words(&[7, 1, 0, 0, 0, 0])).unwrap_err().contains("does not match"));
        assert!(parse_rpc_reply(7, &words(&[7, 1])).unwrap_err().contains("too short"));
        // a verifier with a body of 5 bytes is padded to 8
        assert_eq!(parse_rpc_reply(7, &words(&[7, 1, 0, 1, 5, 0, 0, 0])), Ok(RpcReply::Success));
    }

    /// A fake NFS server on loopback: reads one NULL call, answers `answer(xid)`.
    async fn fake_server(answer: impl FnOnce(u32) -> Vec<u8> + Send + 'static) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut call = [0u8; 44];
            s.read_exact(&mut call).await.unwrap();
            let xid = u32::from_be_bytes(call[4..8].try_into().unwrap());
            s.write_all(&answer(xid)).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn rpc_null_against_a_fake_server() {
        let addr = fake_server(|xid| {
            let mut out = (0x8000_0000u32 | 32).to_be_bytes().to_vec();
            out.extend(words(&[xid, 1, 0, 0, 0, 2, 4, 4]));
            out
        })
        .await;
        let mut s = tcp_connect(addr, Duration::from_secs(2)).await.unwrap();
        let r = rpc_null(&mut s, "t", NFS_PROGRAM, 3, Duration::from_secs(2)).await.unwrap();
        assert_eq!(r, RpcReply::ProgMismatch { low: 4, high: 4 });
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut s = tcp_connect(addr, Duration::from_secs(2)).await.unwrap();
        let e = rpc_null(&mut s, "t", NFS_PROGRAM, 3, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(e.layer, Layer::Rpc);
        assert!(e.reason.contains("no RPC reply"), "{e}");
        drop(l);
    }

    #[tokio::test]
    async fn canary_reads_and_reports_missing_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("c"), "x").unwrap();
        let busy = Arc::new(AtomicBool::new(false));
        canary(d.path().join("c"), Duration::from_secs(2), busy.clone()).await.unwrap();
        let e = canary(d.path().join("nope"), Duration::from_secs(2), busy).await.unwrap_err();
        assert_eq!(e.layer, Layer::Canary);
    }

    #[tokio::test]
    async fn a_refused_connection_is_certain_and_a_silent_server_is_not() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = tcp_connect(addr, Duration::from_secs(2)).await.unwrap_err();
        assert!(e.certain, "{e}");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = tcp_connect(l.local_addr().unwrap(), Duration::from_secs(2)).await.unwrap();
        let e = rpc_null(&mut s, "t", NFS_PROGRAM, 3, Duration::from_millis(50)).await.unwrap_err();
        assert!(!e.certain, "{e}");
    }

    #[tokio::test]
    async fn a_server_that_closes_mid_call_or_answers_garbage_is_certain() {
        for answer in [&b""[..], &[0x80, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0][..]] {
            let addr = fake_server(move |_| answer.to_vec()).await;
            let mut s = tcp_connect(addr, Duration::from_secs(2)).await.unwrap();
            let e = rpc_null(&mut s, "t", NFS_PROGRAM, 3, Duration::from_secs(2)).await.unwrap_err();
            assert!(e.certain, "{answer:?}: {e}");
        }
    }
}
