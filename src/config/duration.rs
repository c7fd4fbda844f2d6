//! Durations in the config (`"2s"`, `"500ms"`, `"1h 30m"`), each bounded when it is loaded.
//!
//! Why bounds: a duration goes into `Instant + d`, `d * n` and backoff arithmetic, which panic on
//! overflow; `"18446744073709551615s"` parses, so an unbounded value is a crash at start (or in
//! check-config itself). Every key has its own sensible range; [`Ctx::duration`] also caps any
//! duration at [`MAX_DURATION`], so a key validated elsewhere can never overflow either.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::{Ctx, Spanned};

/// The longest duration any key accepts (365 days).
pub const MAX_DURATION: Duration = days(365);

pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub const fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

pub const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

pub const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// `d` in the syntax the config takes, in the largest unit that divides it exactly (`"10ms"`,
/// `"5m"`, `"7d"`).
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{ms}ms")
    } else {
        format!("{d:?}")
    }
}

impl Ctx<'_> {
    /// A duration such as `"2s"`, `"500ms"` or `"1h 30m"`, at most [`MAX_DURATION`].
    pub fn duration(&mut self, key: &str, v: &Spanned<String>) -> Option<Duration> {
        let Ok(d) = humantime::parse_duration(v.get_ref()) else {
            self.bad(key, v, "is not a duration (write e.g. \"2s\", \"500ms\", \"5m\")");
            return None;
        };
        if d > MAX_DURATION {
            self.bad(key, v, &format!("must be at most {}", show(MAX_DURATION)));
            return None;
        }
        Some(d)
    }

    /// Like [`Ctx::duration`] but rejects zero.
    pub fn positive_duration(&mut self, key: &str, v: &Spanned<String>) -> Option<Duration> {
        let d = self.duration(key, v)?;
        if d.is_zero() {
            self.bad(key, v, "must be greater than zero");
            return None;
        }
        Some(d)
    }

    /// A duration within `range` (the message names both ends, so the fix is obvious).
    pub fn duration_in(
        &mut self,
        key: &str,
        v: &Spanned<String>,
        range: &RangeInclusive<Duration>,
    ) -> Option<Duration> {
        let d = self.duration(key, v)?;
        if range.contains(&d) {
            return Some(d);
        }
        let (lo, hi) = (show(*range.start()), show(*range.end()));
        if d < *range.start() {
            self.bad(key, v, &format!("must be at least {lo} (allowed: {lo} to {hi})"));
        } else {
            self.bad(key, v, &format!("must be at most {hi} (allowed: {lo} to {hi})"));
        }
        None
    }
}

/// An optional duration key: `default` when absent, else within `range`.
pub fn opt_duration_in(
    ctx: &mut Ctx,
    key: &str,
    v: Option<&Spanned<String>>,
    default: Duration,
    range: &RangeInclusive<Duration>,
) -> Option<Duration> {
    debug_assert!(range.contains(&default), "{key}: default {default:?} outside {range:?}");
    match v {
        Some(v) => ctx.duration_in(key, v, range),
        None => Some(default),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    /// Every section, with every table that holds a duration key, valid as it stands.
    const ALL: &str = r#"[web]
mount_point = "/mnt/nfs"
[web.checks]
[web.primary]
address = "10.0.0.2"
export = "/srv/nfs"
[web.backup]
address = "10.0.0.3"
export = "/srv/nfs"
[web.reverse_sync]
[web.reverse_sync.target]
host = "10.0.0.2"
module = "data"
[storage]
[storage.full_sync]
[storage.hook]
url = "http://127.0.0.1/x"
[[storage.trees]]
path = "/srv/nfs"
[[storage.remotes]]
host = "10.0.0.3"
module = "data"
[alert]
smtp_host = "mail.example.com"
from = "a@example.com"
to = ["b@example.com"]
"#;

    /// Every duration key in the config: (table header, key path).
    const KEYS: [(&str, &str); 27] = [
        ("[web]", "web.interval"),
        ("[web]", "web.probe_timeout"),
        ("[web]", "web.mount_timeout"),
        ("[web]", "web.hold_down"),
        ("[web]", "web.restart_timeout"),
        ("[web.checks]", "web.checks.canary_timeout"),
        ("[web.reverse_sync]", "web.reverse_sync.timeout"),
        ("[web.reverse_sync]", "web.reverse_sync.retry_initial"),
        ("[web.reverse_sync]", "web.reverse_sync.retry_max"),
        ("[web.reverse_sync.target]", "web.reverse_sync.target.connect_timeout"),
        ("[web.reverse_sync.target]", "web.reverse_sync.target.io_timeout"),
        ("[storage]", "storage.window"),
        ("[storage]", "storage.max_delay"),
        ("[storage]", "storage.settle"),
        ("[storage]", "storage.retry_min"),
        ("[storage]", "storage.retry_max"),
        ("[storage]", "storage.alert_after"),
        ("[storage]", "storage.batch_timeout"),
        ("[storage.full_sync]", "storage.full_sync.interval"),
        ("[storage.full_sync]", "storage.full_sync.timeout"),
        ("[storage.hook]", "storage.hook.timeout"),
        ("[[storage.remotes]]", "storage.remotes[0].connect_timeout"),
        ("[[storage.remotes]]", "storage.remotes[0].io_timeout"),
        ("[alert]", "alert.connect_timeout"),
        ("[alert]", "alert.command_timeout"),
        ("[alert]", "alert.flood_period"),
        ("[alert]", "alert.retry_max"),
    ];

    fn with(header: &str, key: &str, value: &str) -> String {
        let name = key.rsplit('.').next().unwrap();
        let at = ALL.find(&format!("{header}\n")).unwrap() + header.len() + 1;
        format!("{}{name} = \"{value}\"\n{}", &ALL[..at], &ALL[at..])
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("d.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_base_document_is_valid() {
        parse(ALL).unwrap();
    }

    #[test]
    fn huge_durations_are_rejected_naming_key_value_and_bound() {
        for (header, key) in KEYS {
            for huge in ["18446744073709551615s", "200000000000y", "400d"] {
                let e = parse(&with(header, key, huge)).err().unwrap_or_else(|| panic!("{key} = {huge:?} accepted"));
                let want = format!("{key}: \"{huge}\" must be at most ");
                assert!(e.contains(&want) || e.contains(&format!("{key}: \"{huge}\" is not a duration")), "{e}");
            }
        }
    }

    #[test]
    fn huge_interval_with_probe_timeout_does_not_panic() {
        let text = ALL.replace("[web]\n", "[web]\ninterval = \"200000000000y\"\nprobe_timeout = \"1s\"\n");
        assert!(parse(&text).is_err());
        let text = ALL.replace("[web]\n", "[web]\ninterval = \"18446744073709551615s\"\nprobe_timeout = \"1s\"\n");
        assert!(parse(&text).is_err());
    }

    #[test]
    fn out_of_range_messages_name_both_bounds() {
        let e = parse(&with("[web]", "web.interval", "2h")).unwrap_err();
        assert!(e.contains("d.toml:2:12: web.interval: \"2h\" must be at most 1h (allowed: 10ms to 1h)"), "{e}");
        let e = parse(&with("[web]", "web.interval", "1ms")).unwrap_err();
        assert!(e.contains("d.toml:2:12: web.interval: \"1ms\" must be at least 10ms (allowed: 10ms to 1h)"), "{e}");
        let e = parse(&with("[storage]", "storage.retry_max", "2d")).unwrap_err();
        assert!(e.contains("storage.retry_max: \"2d\" must be at most 1d (allowed: 10ms to 1d)"), "{e}");
    }

    #[test]
    fn zero_is_rejected_where_it_makes_no_sense_and_means_off_for_full_sync() {
        for (header, key) in KEYS {
            let r = parse(&with(header, key, "0s"));
            if key == "storage.full_sync.interval" {
                assert_eq!(r.unwrap().storage.unwrap().full_sync.interval, None);
            } else {
                let e = r.err().unwrap_or_else(|| panic!("{key} = \"0s\" accepted"));
                assert!(e.contains(&format!("{key}: \"0s\" must be")), "{e}");
            }
        }
    }

    #[test]
    fn bounds_are_shown_in_config_syntax() {
        assert_eq!(show(ms(10)), "10ms");
        assert_eq!(show(ms(1500)), "1500ms");
        assert_eq!(show(secs(90)), "90s");
        assert_eq!(show(mins(5)), "5m");
        assert_eq!(show(hours(12)), "12h");
        assert_eq!(show(days(365)), "365d");
        assert_eq!(show(Duration::ZERO), "0ms");
    }
}
