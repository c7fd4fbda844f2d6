//! The `[alert]` section: where alert mail goes (SMTP server, sender, recipients), which kinds are
//! switched off, and how repeats are folded. Only converts config; delivery lives in `alert` and
//! `sys::smtp`.

use std::time::Duration;

use lettre::message::Mailbox;
use serde::Deserialize;

use super::duration::{days, mins, ms, opt_duration_in, secs};
use super::{Ctx, Spanned};
use crate::alert_kind::AlertKind;
use crate::sys::smtp::{self, Security, SmtpSettings};

const DEFAULT_CONNECT_TIMEOUT: Duration = secs(10);
const DEFAULT_COMMAND_TIMEOUT: Duration = secs(30);
const DEFAULT_FLOOD_PERIOD: Duration = mins(15);
const DEFAULT_RETRY_MAX: Duration = mins(5);
/// Per-step SMTP deadlines; a whole send is cut off at 2 x connect + 6 x command.
const SMTP_TIMEOUTS: std::ops::RangeInclusive<Duration> = ms(100)..=mins(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {
    /// SMTP server (name or IP). Required, like `from` and `to`; optional here so a missing key is
    /// reported with every other problem.
    pub smtp_host: Option<Spanned<String>>,
    /// Default: 587 for starttls, 465 for tls, 25 for none.
    pub smtp_port: Option<Spanned<i64>>,
    /// `starttls` (default), `tls` (implicit TLS) or `none`.
    pub security: Option<Spanned<String>>,
    /// AUTH user; needs `password_file`.
    pub user: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    /// Extra CA certificate (PEM) to trust besides the built-in roots.
    pub ca_file: Option<Spanned<String>>,
    pub from: Option<Spanned<String>>,
    pub to: Option<Spanned<Vec<Spanned<String>>>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub command_timeout: Option<Spanned<String>>,
    /// Alert kinds not to mail (still logged), by name, e.g. `["overflow-rescan"]`.
    pub disabled: Option<Vec<Spanned<String>>>,
    /// Repeats of one kind within this period are folded into one digest.
    pub flood_period: Option<Spanned<String>>,
    /// Longest wait between delivery attempts while the SMTP server is down.
    pub retry_max: Option<Spanned<String>>,
    /// Host name shown in subjects and bodies; default: the system host name.
    pub hostname: Option<Spanned<String>>,
}

#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub smtp: SmtpSettings,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub disabled: Vec<AlertKind>,
    pub flood_period: Duration,
    pub retry_max: Duration,
    pub hostname: Option<String>,
}

impl AlertConfig {
    pub fn validate(raw: &Spanned<RawAlert>, ctx: &mut Ctx) -> Option<AlertConfig> {
        let (span, raw) = (raw.span(), raw.get_ref());
        for (key, present, what) in [
            ("alert.smtp_host", raw.smtp_host.is_some(), "the SMTP server's name or IP address"),
            ("alert.from", raw.from.is_some(), "the sender address"),
            ("alert.to", raw.to.is_some(), "the list of recipient addresses"),
        ] {
            if !present {
                ctx.problem(key, Some(span.clone()), None, &format!("is required ({what})"));
            }
        }
        let host = raw.smtp_host.as_ref().and_then(|h| ctx.host("alert.smtp_host", h));
        let security = match raw.security.as_ref().map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "starttls")) => Some(Security::StartTls),
            Some((_, "tls")) => Some(Security::Tls),
            Some((_, "none")) => Some(Security::None),
            Some((s, _)) => {
                ctx.bad("alert.security", s, "must be \"starttls\", \"tls\" (implicit TLS) or \"none\"");
                None
            }
        };
        let port = match &raw.smtp_port {
            Some(p) => ctx.int_in("alert.smtp_port", p, 1..=65535).and_then(|p| u16::try_from(p).ok()),
            None => security.map(Security::default_port),
        };
        let password_file = raw.password_file.as_ref().and_then(|p| ctx.secret_file("alert.password_file", p));
        match (&raw.user, &raw.password_file) {
            (Some(u), None) => ctx.bad("alert.user", u, "needs alert.password_file (the SMTP password, mode 0600)"),
            (None, Some(p)) => ctx.bad("alert.password_file", p, "needs alert.user"),
            (Some(u), Some(_)) if u.get_ref().is_empty() => ctx.bad("alert.user", u, "must not be empty"),
            _ => {}
        }
        if let (Some(Security::None), Some(u)) = (security, &raw.user) {
            ctx.warn(
                "alert.user",
                Some(u.span()),
                "security = \"none\" sends the SMTP password in clear text; use \"starttls\" or \"tls\"",
            );
        }
        let ca_file = raw.ca_file.as_ref().and_then(|c| ca_file(ctx, c));
        let from = raw.from.as_ref().and_then(|f| mailbox(ctx, "alert.from", f));
        let to = raw.to.as_ref().and_then(|t| recipients(ctx, t));
        let connect_timeout = opt_duration_in(
            ctx,
            "alert.connect_timeout",
            raw.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
            &SMTP_TIMEOUTS,
        );
        let command_timeout = opt_duration_in(
            ctx,
            "alert.command_timeout",
            raw.command_timeout.as_ref(),
            DEFAULT_COMMAND_TIMEOUT,
            &SMTP_TIMEOUTS,
        );
        let flood_period = opt_duration_in(
            ctx,
            "alert.flood_period",
            raw.flood_period.as_ref(),
            DEFAULT_FLOOD_PERIOD,
            &(secs(1)..=days(7)),
        );
        let retry_max =
            opt_duration_in(ctx, "alert.retry_max", raw.retry_max.as_ref(), DEFAULT_RETRY_MAX, &(secs(1)..=days(1)));
        let disabled = disabled_kinds(ctx, raw.disabled.as_deref().unwrap_or_default());
        let hostname = raw.hostname.as_ref().and_then(|h| ctx.host("alert.hostname", h));
        Some(AlertConfig {
            smtp: SmtpSettings {
                host: host?,
                port: port?,
                security: security?,
                user: raw.user.as_ref().map(|u| u.get_ref().clone()),
                password_file: match (&raw.user, &raw.password_file) {
                    (Some(_), Some(_)) => Some(password_file?),
                    (None, None) => None,
                    _ => return None,
                },
                ca_file: match &raw.ca_file {
                    Some(_) => Some(ca_file?),
                    None => None,
                },
                connect_timeout: connect_timeout?,
                command_timeout: command_timeout?,
            },
            from: from?,
            to: to?,
            disabled,
            flood_period: flood_period?,
            retry_max: retry_max?,
            hostname: match &raw.hostname {
                Some(_) => Some(hostname?),
                None => None,
            },
        })
    }
}

/// `alert.ca_file`: an absolute path to a PEM certificate that loads now.
fn ca_file(ctx: &mut Ctx, v: &Spanned<String>) -> Option<std::path::PathBuf> {
    let path = ctx.abs_path("alert.ca_file", v)?;
    match smtp::read_ca_file(&path) {
        Ok(_) => Some(path),
        Err(message) => {
            ctx.bad("alert.ca_file", v, &message);
            None
        }
    }
}

/// `alert.to`: at least one address, every one valid.
fn recipients(ctx: &mut Ctx, raw: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<Mailbox>> {
    if raw.get_ref().is_empty() {
        ctx.problem("alert.to", Some(raw.span()), None, "must list at least one recipient");
        return None;
    }
    let to: Vec<Mailbox> =
        raw.get_ref().iter().enumerate().filter_map(|(i, t)| mailbox(ctx, &format!("alert.to[{i}]"), t)).collect();
    (to.len() == raw.get_ref().len()).then_some(to)
}

/// `alert.disabled`: alert kinds by name; unknown names are problems.
fn disabled_kinds(ctx: &mut Ctx, raw: &[Spanned<String>]) -> Vec<AlertKind> {
    let mut disabled = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        match AlertKind::from_name(d.get_ref()) {
            Some(k) => disabled.push(k),
            None => ctx.bad(
                &format!("alert.disabled[{i}]"),
                d,
                &format!(
                    "is not an alert kind (one of: {})",
                    AlertKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                ),
            ),
        }
    }
    disabled
}

/// An address such as `ops@example.com` or `Ops <ops@example.com>`.
fn mailbox(ctx: &mut Ctx, key: &str, v: &Spanned<String>) -> Option<Mailbox> {
    if let Ok(m) = v.get_ref().parse::<Mailbox>() {
        Some(m)
    } else {
        ctx.bad(key, v, "is not a mail address (write e.g. \"ops@example.com\" or \"Ops <ops@example.com>\")");
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn problems(text: &str) -> String {
        Config::parse(Path::new("a.toml"), text).unwrap_err().to_string()
    }

    const MINIMAL: &str =
        "[alert]\nsmtp_host = \"mail.example.com\"\nfrom = \"ng@example.com\"\nto = [\"ops@example.com\"]\n";

    #[test]
    fn minimal_section_gets_defaults() {
        let c = Config::parse(Path::new("a.toml"), MINIMAL).unwrap();
        let a = c.alert.unwrap();
        assert_eq!(a.smtp.port, 587);
        assert_eq!(a.smtp.security, crate::sys::smtp::Security::StartTls);
        assert_eq!(a.smtp.user, None);
        assert_eq!(a.flood_period, std::time::Duration::from_secs(900));
        assert_eq!(a.to.len(), 1);
    }

    #[test]
    fn implicit_tls_defaults_to_port_465() {
        let c = Config::parse(Path::new("a.toml"), &format!("{MINIMAL}security = \"tls\"\n")).unwrap();
        assert_eq!(c.alert.unwrap().smtp.port, 465);
    }

    #[test]
    fn every_problem_is_reported_with_location() {
        let e = problems(
            "[alert]\nsmtp_host = \"mail_x\"\nsecurity = \"ssl\"\nfrom = \"nobody\"\nto = [\"ok@example.com\", \"bad@\"]\n\
             user = \"alert\"\ndisabled = [\"failover-started\", \"fail-over\"]\nflood_period = \"soon\"\n",
        );
        assert!(e.contains("a.toml:2:13: alert.smtp_host: \"mail_x\" is not an IP address or host name"), "{e}");
        assert!(
            e.contains("a.toml:3:12: alert.security: \"ssl\" must be \"starttls\", \"tls\" (implicit TLS) or \"none\""),
            "{e}"
        );
        assert!(e.contains("a.toml:4:8: alert.from: \"nobody\" is not a mail address"), "{e}");
        assert!(e.contains("a.toml:5:25: alert.to[1]: \"bad@\" is not a mail address"), "{e}");
        assert!(e.contains("a.toml:6:8: alert.user: \"alert\" needs alert.password_file"), "{e}");
        assert!(
            e.contains("a.toml:7:33: alert.disabled[1]: \"fail-over\" is not an alert kind (one of: failover-started,"),
            "{e}"
        );
        assert!(e.contains("a.toml:8:16: alert.flood_period: \"soon\" is not a duration"), "{e}");
    }

    #[test]
    fn empty_recipient_list_is_an_error() {
        let e = problems("[alert]\nsmtp_host = \"m\"\nfrom = \"ng@example.com\"\nto = []\n");
        assert!(e.contains("a.toml:4:6: alert.to: must list at least one recipient"), "{e}");
    }

    #[test]
    fn unreadable_ca_file_is_an_error() {
        let e = problems(&format!("{MINIMAL}ca_file = \"/nonexistent/ca.pem\"\n"));
        assert!(
            e.contains("a.toml:5:11: alert.ca_file: \"/nonexistent/ca.pem\" cannot read CA file /nonexistent/ca.pem"),
            "{e}"
        );
    }

    /// Parses on a thread and gives up after a deadline, so a hang is a failure, not a stuck test.
    fn problems_within_deadline(text: String) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(problems(&text)));
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("check-config hung")
    }

    #[test]
    fn ca_file_that_is_a_fifo_or_device_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("ca.pem");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = problems_within_deadline(format!("{MINIMAL}ca_file = \"{}\"\n", fifo.display()));
        assert!(e.contains(&format!("cannot read CA file {}: is a FIFO, not a regular file", fifo.display())), "{e}");
        let e = problems_within_deadline(format!("{MINIMAL}ca_file = \"/dev/zero\"\n"));
        assert!(e.contains("cannot read CA file /dev/zero: is a device, not a regular file"), "{e}");
    }

    #[test]
    fn password_over_plain_smtp_warns() {
        let d = tempfile::tempdir().unwrap();
        let pw = d.path().join("pw");
        std::fs::write(&pw, "x").unwrap();
        let text = format!("{MINIMAL}security = \"none\"\nuser = \"u\"\npassword_file = \"{}\"\n", pw.display());
        let c = Config::parse(Path::new("a.toml"), &text).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("alert.user: security = \"none\" sends the SMTP password")),
            "{:?}",
            c.warnings
        );
        assert_eq!(c.alert.unwrap().smtp.port, 25);
    }
}
