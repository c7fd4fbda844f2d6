//! Turns alert events into a mail subject and a plain-text body meant to be read on a phone: short
//! lines, the facts first (what, when, why), then details, every server's state and what to do.
//! Pure: the host name and the local time offset are passed in, so tests assert the full text.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset, Utc};

use super::event::AlertEvent;

/// A digest lists at most this many alerts (the first and the last half).
const DIGEST_LIST_MAX: usize = 20;

/// What rendering needs besides the events.
#[derive(Debug, Clone)]
pub struct RenderContext {
    /// The node's name as shown in the subject (config `hostname` or the system host name).
    pub hostname: String,
    /// The node's local UTC offset, for the second time line.
    pub offset: FixedOffset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub body: String,
}

/// Renders one message: a single alert, or a digest when `events` holds several repeats of one kind
/// (the newest last). `seq` is the outbox sequence number, shown in the footer so a reader can tell
/// whether a message is missing.
pub fn render(events: &[AlertEvent], seq: u64, cx: &RenderContext) -> Rendered {
    match events {
        [] => Rendered { subject: format!("[nfs-guard] {}: empty alert", cx.hostname), body: String::new() },
        [one] => single(one, seq, cx),
        [.., latest] => digest(events, latest, seq, cx),
    }
}

fn single(e: &AlertEvent, seq: u64, cx: &RenderContext) -> Rendered {
    let subject = format!("[nfs-guard] {} {}: {}", cx.hostname, e.role.name(), e.title);
    let mut body = format!("{} ({} role): {}\n\n", cx.hostname, e.role.name(), e.title);
    facts(&mut body, e, cx);
    footer(&mut body, e, seq, cx);
    Rendered { subject, body }
}

fn digest(events: &[AlertEvent], latest: &AlertEvent, seq: u64, cx: &RenderContext) -> Rendered {
    let n = events.len();
    let kind = latest.kind.name();
    let subject =
        format!("[nfs-guard] {} {}: {n} x {kind} (digest), latest: {}", cx.hostname, latest.role.name(), latest.title);
    let mut body = format!(
        "{} ({} role): {n} \"{kind}\" alerts came in quick succession and were folded into this digest.\n\n",
        cx.hostname,
        latest.role.name()
    );
    let _ = writeln!(body, "Latest: {}", latest.title);
    facts(&mut body, latest, cx);
    body.push_str("All folded alerts (UTC):\n");
    // A long flap would make an endless list on a phone: show its start and its end.
    let (head, tail) = if n > DIGEST_LIST_MAX { (DIGEST_LIST_MAX / 2, DIGEST_LIST_MAX / 2) } else { (n, 0) };
    for (i, e) in events.iter().enumerate() {
        if i == head && tail > 0 {
            let _ = writeln!(body, "  ... {} more ...", n - head - tail);
        }
        if i >= head && i < n - tail {
            continue;
        }
        let _ = writeln!(body, "  {}  {}", utc(e).format("%Y-%m-%d %H:%M:%S"), e.title);
        if !e.reason.is_empty() {
            let _ = writeln!(body, "    {}", e.reason);
        }
    }
    body.push('\n');
    footer(&mut body, latest, seq, cx);
    Rendered { subject, body }
}

/// Time, reason, details, servers and next steps of one event.
fn facts(body: &mut String, e: &AlertEvent, cx: &RenderContext) {
    let at = utc(e);
    let _ = writeln!(body, "Time:   {}", at.format("%Y-%m-%d %H:%M:%S UTC"));
    let _ = writeln!(body, "        {} local", at.with_timezone(&cx.offset).format("%Y-%m-%d %H:%M:%S %:z"));
    if !e.reason.is_empty() {
        let _ = writeln!(body, "Reason: {}", e.reason);
    }
    body.push('\n');
    section(body, "Details", &e.details);
    section(body, "Servers", &e.servers);
    if !e.next_steps.is_empty() {
        body.push_str("What to do next:\n");
        for line in e.next_steps.lines() {
            let _ = writeln!(body, "  {line}");
        }
        body.push('\n');
    }
}

fn section(body: &mut String, title: &str, rows: &[(String, String)]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(body, "{title}:");
    for (k, v) in rows {
        let _ = writeln!(body, "  {k}: {v}");
    }
    body.push('\n');
}

fn footer(body: &mut String, e: &AlertEvent, seq: u64, cx: &RenderContext) {
    let _ = writeln!(
        body,
        "-- \nnfs-guard {} on {}, alert #{seq} ({})",
        env!("CARGO_PKG_VERSION"),
        cx.hostname,
        e.kind.name()
    );
}

fn utc(e: &AlertEvent) -> DateTime<Utc> {
    DateTime::<Utc>::from(e.at)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::alert::event::{AlertKind, Role};

    /// 2026-11-21 06:40:12 UTC.
    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_243_212)
    }

    fn cx() -> RenderContext {
        RenderContext { hostname: "web01".into(), offset: FixedOffset::east_opt(3600).unwrap() }
    }

    /// The event each role would raise for `kind`, as in the roles' code.
    fn sample(kind: AlertKind) -> AlertEvent {
        use AlertKind as K;
        let role = match kind {
            K::RemoteUnreachable | K::RemoteRecovered | K::OverflowRescan | K::JournalGrowing | K::Conflict => {
                Role::Storage
            }
            K::Test => Role::Test,
            K::OutboxDamaged => Role::Alert,
            _ => Role::Web,
        };
        let (title, reason) = match kind {
            K::FailoverStarted => (
                "failover to backup (10.0.0.3) started",
                "primary 10.0.0.2 failed 3 checks in a row: nfs rpc null: timed out after 2s",
            ),
            K::FailoverCompleted => ("failover to backup (10.0.0.3) completed", "primary 10.0.0.2 is down"),
            K::BothDown => ("both NFS servers are down", "primary: connection refused; backup: timed out after 2s"),
            K::NetworkLost => ("this node lost its network", "witness 10.0.0.1 unreachable: no switch was made"),
            K::PrimaryRecovered => ("primary (10.0.0.2) recovered", "passed 5 checks in a row"),
            K::ReverseSyncStarted => {
                ("reverse sync backup -> primary started", "primary is back; copying writes made during the failover")
            }
            K::ReverseSyncFailed => ("reverse sync failed (attempt 2)", "rsync exit 30: timeout in data send/receive"),
            K::ReverseSyncSucceeded => {
                ("reverse sync succeeded", "all writes made during the failover are on the primary")
            }
            K::FailbackCompleted => ("failback to primary (10.0.0.2) completed", "reverse sync succeeded"),
            K::ManualOverride => ("manual failover to backup, holding", "nfs-guard web --failover-to backup"),
            K::SwitchFailed => (
                "mounting backup (10.0.0.3:/srv/nfs) FAILED: the mount point is empty",
                "mount -t nfs 10.0.0.3:/srv/nfs /mnt/nfs: exit 32: access denied by server",
            ),
            K::StateQuarantined => (
                "web state /var/lib/nfs-guard/web.state.json unusable: rebuilt from the mount table",
                "not valid web state JSON: EOF while parsing an object at line 1 column 1",
            ),
            K::RemoteUnreachable => {
                ("remote backup (10.0.0.3) unreachable for 5m", "rsync exit 10: connection refused")
            }
            K::RemoteRecovered => ("remote backup (10.0.0.3) reachable again", "journal flushed"),
            K::OverflowRescan => ("event queue overflow: full rescan of /srv/nfs", "inotify queue overflowed"),
            K::JournalGrowing => ("pending journal holds 12000 paths", "remote backup unreachable"),
            K::Conflict => ("1 conflicting write kept under a conflict name", "both servers changed a.jpg"),
            K::AgentUnreachable => ("the backup's agent did not take epoch 4", "connection refused"),
            K::PrimaryUnreachableHere => (
                "primary unreachable from this node only (web-2): not switching",
                "2 of 2 other live nodes see the primary up",
            ),
            K::FarmUnreachable => {
                ("web-2 lost etcd: keeping the current mount", "etcd http://10.0.0.2:2379: connection refused")
            }
            K::OutboxDamaged => (
                "1 damaged file in the alert outbox moved aside",
                "- /var/lib/nfs-guard/outbox/queue/00000000000000000007.json: is a FIFO, not a regular file",
            ),
            K::Test => ("test message", "nfs-guard alert-test"),
        };
        AlertEvent::new(kind, role, title, reason)
            .at_time(at())
            .detail("elapsed", "4.2s")
            .server("primary 10.0.0.2", "down")
            .server("backup 10.0.0.3", "up, mounted")
            .next_steps("Check the primary.\nThen run: nfs-guard status")
    }

    fn expected(role: &str, title: &str, reason: &str, kind: &str) -> String {
        format!(
            "web01 ({role} role): {title}\n\n\
             Time:   2026-11-21 06:40:12 UTC\n        2026-11-21 07:40:12 +01:00 local\n\
             Reason: {reason}\n\n\
             Details:\n  elapsed: 4.2s\n\n\
             Servers:\n  primary 10.0.0.2: down\n  backup 10.0.0.3: up, mounted\n\n\
             What to do next:\n  Check the primary.\n  Then run: nfs-guard status\n\n\
             -- \nnfs-guard {} on web01, alert #7 ({kind})\n",
            env!("CARGO_PKG_VERSION")
        )
    }

    #[test]
    fn every_kind_renders_subject_and_full_body() {
        for kind in AlertKind::ALL {
            let e = sample(kind);
            let r = render(std::slice::from_ref(&e), 7, &cx());
            let role = e.role.name();
            assert_eq!(r.subject, format!("[nfs-guard] web01 {role}: {}", e.title), "{kind:?}");
            assert_eq!(r.body, expected(role, &e.title, &e.reason, kind.name()), "{kind:?}");
            assert!(r.body.is_ascii() && r.body.lines().all(|l| l.len() <= 100), "{kind:?}: phone-friendly lines");
        }
    }

    #[test]
    fn failover_completed_full_text() {
        let r = render(&[sample(AlertKind::FailoverCompleted)], 7, &cx());
        assert_eq!(r.subject, "[nfs-guard] web01 web: failover to backup (10.0.0.3) completed");
        assert_eq!(
            r.body,
            format!(
                "web01 (web role): failover to backup (10.0.0.3) completed

Time:   2026-11-21 06:40:12 UTC
        2026-11-21 07:40:12 +01:00 local
Reason: primary 10.0.0.2 is down

Details:
  elapsed: 4.2s

Servers:
  primary 10.0.0.2: down
  backup 10.0.0.3: up, mounted

What to do next:
  Check the primary.
  Then run: nfs-guard status

-- 
nfs-guard {} on web01, alert #7 (failover-completed)
",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn switch_failed_names_the_server_the_error_and_what_to_do() {
        let e = AlertEvent::new(
            AlertKind::SwitchFailed,
            Role::Web,
            "mounting backup (10.0.0.3:/srv/nfs) FAILED: the mount point is empty",
            "mount -t nfs 10.0.0.3:/srv/nfs /mnt/nfs: exit 32: access denied by server",
        )
        .at_time(at())
        .detail("switching to", "backup (10.0.0.3:/srv/nfs)")
        .server("primary (10.0.0.2:/srv/nfs)", "down")
        .server("backup (10.0.0.3:/srv/nfs)", "up")
        .next_steps("nfs-guard retries at the next check interval. Check the mount options.");
        let r = render(&[e], 9, &cx());
        assert_eq!(
            r.subject,
            "[nfs-guard] web01 web: mounting backup (10.0.0.3:/srv/nfs) FAILED: the mount point is empty"
        );
        assert_eq!(
            r.body,
            format!(
                "web01 (web role): mounting backup (10.0.0.3:/srv/nfs) FAILED: the mount point is empty

Time:   2026-11-21 06:40:12 UTC
        2026-11-21 07:40:12 +01:00 local
Reason: mount -t nfs 10.0.0.3:/srv/nfs /mnt/nfs: exit 32: access denied by server

Details:
  switching to: backup (10.0.0.3:/srv/nfs)

Servers:
  primary (10.0.0.2:/srv/nfs): down
  backup (10.0.0.3:/srv/nfs): up

What to do next:
  nfs-guard retries at the next check interval. Check the mount options.

-- 
nfs-guard {} on web01, alert #9 (switch-failed)
",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(AlertKind::from_name("switch-failed"), Some(AlertKind::SwitchFailed));
        assert_eq!(AlertKind::SwitchFailed.name(), "switch-failed");
    }

    #[test]
    fn empty_sections_are_left_out() {
        let e = AlertEvent::new(AlertKind::Test, Role::Test, "test message", "").at_time(at());
        let r = render(&[e], 1, &cx());
        assert_eq!(
            r.body,
            format!(
                "web01 (test role): test message\n\nTime:   2026-11-21 06:40:12 UTC\n        2026-11-21 07:40:12 +01:00 local\n\n-- \nnfs-guard {} on web01, alert #1 (test)\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn long_digest_lists_its_start_and_end() {
        let events: Vec<AlertEvent> = (0..25)
            .map(|i| {
                AlertEvent::new(AlertKind::BothDown, Role::Web, format!("down {i}"), "")
                    .at_time(at() + Duration::from_secs(i))
            })
            .collect();
        let r = render(&events, 3, &cx());
        let list = r.body.split("All folded alerts (UTC):\n").nth(1).unwrap().split("\n-- ").next().unwrap();
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 10 + 1 + 10, "{list}");
        assert_eq!(lines[0], "  2026-11-21 06:40:12  down 0");
        assert_eq!(lines[9], "  2026-11-21 06:40:21  down 9");
        assert_eq!(lines[10], "  ... 5 more ...");
        assert_eq!(lines[11], "  2026-11-21 06:40:27  down 15");
        assert_eq!(lines[20], "  2026-11-21 06:40:36  down 24");
    }

    #[test]
    fn digest_lists_every_folded_alert() {
        let mk = |s: u64, title: &str| {
            AlertEvent::new(AlertKind::PrimaryRecovered, Role::Web, title, format!("check {s}"))
                .at_time(at() + Duration::from_secs(s))
        };
        let events =
            [mk(0, "primary recovered"), mk(60, "primary recovered again"), mk(125, "primary recovered once more")];
        let r = render(&events, 9, &cx());
        assert_eq!(
            r.subject,
            "[nfs-guard] web01 web: 3 x primary-recovered (digest), latest: primary recovered once more"
        );
        assert_eq!(
            r.body,
            format!(
                "web01 (web role): 3 \"primary-recovered\" alerts came in quick succession and were folded into this digest.

Latest: primary recovered once more
Time:   2026-11-21 06:42:17 UTC
        2026-11-21 07:42:17 +01:00 local
Reason: check 125

All folded alerts (UTC):
  2026-11-21 06:40:12  primary recovered
    check 0
  2026-11-21 06:41:12  primary recovered again
    check 60
  2026-11-21 06:42:17  primary recovered once more
    check 125

-- 
nfs-guard {} on web01, alert #9 (primary-recovered)
",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}
