//! Configuration: raw TOML (serde, `deny_unknown_fields` everywhere) -> validated [`Config`].
//!
//! Loading never falls back to defaults for a missing file, and reads at most 1 MiB from a regular
//! file (never a FIFO or a device). Syntax and type errors come from serde with their position; a
//! pass over the parsed document ([`scan`]) refuses NUL bytes, oversized strings and arrays in any
//! key; the validation pass then reports *every* semantic problem at once (required keys are
//! optional in the raw structs so that a missing one is reported with the rest), each as
//! `file:line:col: key.path: "value" message`, values escaped and shortened. Every duration is
//! bounded ([`duration`]). Each role's section lives in its own module and only converts its raw
//! form through a [`Ctx`], which collects problems instead of stopping at the first.

pub mod agent;
pub mod alert;
pub mod cluster;
pub mod duration;
pub mod filter;
pub mod metrics;
pub mod rsync;
mod scan;
pub mod storage;
pub mod web;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
pub use toml::Spanned;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/nfs-guard";
/// The largest config file read (1 MiB; a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The largest secret file (password, ssh key) accepted (64 KiB).
pub const MAX_SECRET_BYTES: u64 = 64 << 10;

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// Where journals, state, status files and the alert outbox live.
    pub state_dir: PathBuf,
    pub web: Option<web::WebConfig>,
    pub storage: Option<storage::StorageConfig>,
    pub alert: Option<alert::AlertConfig>,
    /// `[cluster]`: this web node is one of a farm agreeing through etcd (`farm`).
    pub cluster: Option<cluster::ClusterConfig>,
    /// Non-fatal findings (e.g. a secret file readable by others), already rendered with their location.
    pub warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<String>>,
    web: Option<Spanned<web::RawWeb>>,
    storage: Option<Spanned<storage::RawStorage>>,
    alert: Option<Spanned<alert::RawAlert>>,
    cluster: Option<Spanned<cluster::RawCluster>>,
}

/// One problem found in a config file, with everything needed to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line:col` (or just `file` when the position is unknown).
    pub location: String,
    /// Key path such as `web.servers[1].address`; empty for syntax errors.
    pub key: String,
    /// The offending value as written in TOML, when there is one.
    pub value: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        if let Some(v) = &self.value {
            write!(f, "{v} ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} in {}:\n{}", plural(problems.len()), path.display(), render(problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
    #[error("{path}: this node's config has no [{section}] section, which `{command}` needs")]
    MissingSection { path: PathBuf, section: &'static str, command: &'static str },
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 problem".to_owned()
    } else {
        format!("{n} problems")
    }
}

/// The most problems an error shows (a list of 1000 bad recipients needs no 1000 lines).
const MAX_SHOWN: usize = 100;

fn render(problems: &[Problem]) -> String {
    let mut lines: Vec<String> = problems.iter().take(MAX_SHOWN).map(|p| format!("  {p}")).collect();
    if problems.len() > MAX_SHOWN {
        lines.push(format!("  ... and {} more", problems.len() - MAX_SHOWN));
    }
    lines.join("\n")
}

impl Config {
    /// Reads and validates `path`. A missing or unreadable file is an error, never a fallback; so is
    /// anything but a regular file of at most [`MAX_CONFIG_BYTES`] (a FIFO would hang check-config,
    /// which systemd runs before every start; `/dev/zero` would eat all memory).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = crate::sys::fsutil::read_capped_string(path, MAX_CONFIG_BYTES)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (used by tests).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let invalid = |problems| ConfigError::Invalid { path: path.to_owned(), problems };
        let doc = toml::de::DeTable::parse(text).map_err(|e| invalid(vec![serde_problem(&file, text, &e)]))?;
        let mut ctx = Ctx::new(&file, text);
        let oversized = scan::table(&mut ctx, "", doc.get_ref());
        let raw = match RawConfig::deserialize(toml::de::Deserializer::from(doc)) {
            Ok(raw) if !oversized => raw,
            Ok(_) => return Err(invalid(ctx.problems)),
            Err(e) => {
                ctx.problems.push(serde_problem(&file, text, &e));
                return Err(invalid(ctx.problems));
            }
        };
        let state_dir = match &raw.state_dir {
            Some(s) => ctx.abs_path("state_dir", s).unwrap_or_default(),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        ctx.private_dir("state_dir", raw.state_dir.as_ref().map(Spanned::span), &state_dir);
        let web = raw.web.as_ref().map(|w| web::WebConfig::validate(w, &mut ctx));
        let storage = raw.storage.as_ref().map(|s| storage::StorageConfig::validate(s, &mut ctx));
        let alert = raw.alert.as_ref().map(|a| alert::AlertConfig::validate(a, &mut ctx));
        let cluster = raw.cluster.as_ref().map(|c| {
            cluster::ClusterConfig::check_with_web(c, web.as_ref().and_then(Option::as_ref), &mut ctx);
            cluster::ClusterConfig::validate(c, &mut ctx)
        });
        if raw.web.is_none() && raw.storage.is_none() && raw.alert.is_none() {
            ctx.problem("", None, None, "has no [web], [storage] or [alert] section: nothing to do");
        }
        if !ctx.problems.is_empty() {
            return Err(invalid(ctx.problems));
        }
        Ok(Config {
            path: path.to_owned(),
            state_dir,
            web: web.flatten(),
            storage: storage.flatten(),
            alert: alert.flatten(),
            cluster: cluster.flatten(),
            warnings: ctx.warnings,
        })
    }

    pub fn web(&self) -> Result<&web::WebConfig, ConfigError> {
        self.web.as_ref().ok_or_else(|| self.missing("web", "nfs-guard web"))
    }

    pub fn storage(&self) -> Result<&storage::StorageConfig, ConfigError> {
        self.storage.as_ref().ok_or_else(|| self.missing("storage", "nfs-guard storage"))
    }

    pub fn alert(&self) -> Result<&alert::AlertConfig, ConfigError> {
        self.alert.as_ref().ok_or_else(|| self.missing("alert", "nfs-guard alert-test"))
    }

    fn missing(&self, section: &'static str, command: &'static str) -> ConfigError {
        ConfigError::MissingSection { path: self.path.clone(), section, command }
    }
}

fn serde_problem(file: &str, text: &str, e: &toml::de::Error) -> Problem {
    let location = match e.span() {
        Some(span) => format!("{file}:{}", line_col(text, span.start)),
        None => file.to_owned(),
    };
    // The message can quote a key or value from the file: escape and shorten it like any value.
    let message = clean(e.message().trim());
    Problem { location, key: String::new(), value: None, message }
}

/// `s` as a message shows a value: quoted with control characters escaped, and past 80 bytes cut
/// to its start and its length (a 1 MiB value must not become a 1 MiB error).
pub fn quoted(s: &str) -> String {
    if s.len() <= 80 {
        format!("{s:?}")
    } else {
        format!("{:?}… ({} bytes)", &s[..char_floor(s, 60)], s.len())
    }
}

/// A message that may quote a path or value from the file, made safe to print and log: control
/// characters escaped (`\0`, `\n`), at most 1000 bytes.
fn clean(message: &str) -> String {
    let escaped: String =
        message.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect();
    shorten(&escaped, 1000)
}

/// `s` cut to at most `max` bytes (on a character boundary), marked with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        format!("{}…", &s[..char_floor(s, max)])
    }
}

fn char_floor(s: &str, i: usize) -> usize {
    (0..=i.min(s.len())).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// 1-based `line:col` of a byte offset (columns count characters).
pub fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{col}")
}

/// Collects problems and warnings while sections convert their raw form. Helpers return `None` after
/// recording a problem, so a section can keep going and report everything in one pass.
pub struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Ctx { file, text, problems: Vec::new(), warnings: Vec::new() }
    }

    fn location(&self, span: Option<Range<usize>>) -> String {
        match span {
            Some(s) => format!("{}:{}", self.file, line_col(self.text, s.start)),
            None => self.file.to_owned(),
        }
    }

    /// Records a problem at `span`; `value` is shown quoted as written.
    pub fn problem(&mut self, key: &str, span: Option<Range<usize>>, value: Option<String>, message: &str) {
        let location = self.location(span);
        self.problems.push(Problem { location, key: key.to_owned(), value, message: clean(message) });
    }

    /// Records a problem about a spanned string value.
    pub fn bad(&mut self, key: &str, v: &Spanned<String>, message: &str) {
        self.problem(key, Some(v.span()), Some(quoted(v.get_ref())), message);
    }

    /// Records a problem about any spanned value (rendered with Debug, shortened).
    pub fn bad_value<T: fmt::Debug>(&mut self, key: &str, v: &Spanned<T>, message: &str) {
        self.problem(key, Some(v.span()), Some(shorten(&format!("{:?}", v.get_ref()), 200)), message);
    }

    pub fn warn(&mut self, key: &str, span: Option<Range<usize>>, message: &str) {
        let loc = self.location(span);
        self.warnings.push(format!("{loc}: {key}: {}", clean(message)));
    }

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// An IP address or a DNS host name.
    pub fn host(&mut self, key: &str, v: &Spanned<String>) -> Option<String> {
        if is_host(v.get_ref()) {
            Some(v.get_ref().clone())
        } else {
            self.bad(key, v, "is not an IP address or host name");
            None
        }
    }

    /// An absolute path.
    pub fn abs_path(&mut self, key: &str, v: &Spanned<String>) -> Option<PathBuf> {
        let p = PathBuf::from(v.get_ref());
        if p.is_absolute() {
            Some(p)
        } else {
            self.bad(key, v, "must be an absolute path");
            None
        }
    }

    /// A file holding a secret: an absolute path to a small regular file that can be read now
    /// (read bounded and non-blocking, so a FIFO or `/dev/zero` is a problem, not a hang). A file
    /// that does not exist yet is only a warning (it may be installed after the config); so is a
    /// mode that lets group or others read it.
    pub fn secret_file(&mut self, key: &str, v: &Spanned<String>) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.abs_path(key, v)?;
        match crate::sys::fsutil::read_capped(&p, MAX_SECRET_BYTES).and_then(|_| std::fs::metadata(&p)) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => self.warn(
                key,
                Some(v.span()),
                &format!(
                    "secret file {} has mode {:04o}: readable by group or others; run `chmod 600 {}`",
                    p.display(),
                    m.permissions().mode() & 0o7777,
                    p.display()
                ),
            ),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.warn(key, Some(v.span()), &format!("secret file {}: {e}", p.display()));
            }
            Err(e) => {
                self.bad(key, v, &format!("cannot be read as a secret: {e}"));
                return None;
            }
        }
        Some(p)
    }

    /// Warns when `dir` exists and group or others can read or write it. (Roles create it 0700;
    /// one made by hand or by an older version may be open.)
    pub fn private_dir(&mut self, key: &str, span: Option<Range<usize>>, dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(m) = std::fs::metadata(dir) else { return };
        let mode = m.permissions().mode() & 0o7777;
        if mode & 0o066 != 0 {
            let d = dir.display();
            self.warn(
                key,
                span,
                &format!(
                    "{d} has mode {mode:04o}: group or others can read or write the journals, state and alert \
                     outbox in it; run `chmod 700 {d}`"
                ),
            );
        }
    }

    /// An integer within `range`.
    pub fn int_in(&mut self, key: &str, v: &Spanned<i64>, range: std::ops::RangeInclusive<i64>) -> Option<u64> {
        if range.contains(v.get_ref()) {
            u64::try_from(*v.get_ref()).ok()
        } else {
            self.problem(
                key,
                Some(v.span()),
                Some(v.get_ref().to_string()),
                &format!("must be between {} and {}", range.start(), range.end()),
            );
            None
        }
    }
}

/// True for an IPv4/IPv6 literal or a syntactically valid DNS name. A dotted-quad-looking string
/// that is not a valid IPv4 address (`10.0.0.300`) is rejected rather than taken as a name.
pub fn is_host(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    if s.is_empty() || s.len() > 253 || s.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(is_host("10.0.0.1"));
        assert!(is_host("::1"));
        assert!(is_host("nfs-1.example.com"));
        assert!(!is_host("10.0.0.300"));
        assert!(!is_host("bad_name"));
        assert!(!is_host(""));
        assert!(!is_host("-x"));
    }

    #[test]
    fn line_col_counts_from_one() {
        let t = "a = 1\nbb = \"x\"\n";
        assert_eq!(line_col(t, 0), "1:1");
        assert_eq!(line_col(t, 11), "2:6");
    }

    #[test]
    fn empty_config_is_an_error() {
        let e = Config::parse(Path::new("n.toml"), "").unwrap_err().to_string();
        assert!(e.contains("n.toml: has no [web], [storage] or [alert] section"), "{e}");
    }

    #[test]
    fn unknown_top_level_key_is_located() {
        let e = Config::parse(Path::new("n.toml"), "\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("n.toml:2:1: unknown field `bogus`"), "{e}");
    }

    const ALERT: &str =
        "[alert]\nsmtp_host = \"m.example.com\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\nuser = \"u\"\n";

    fn with_password_file(p: &Path) -> Result<Config, String> {
        let text = format!("{ALERT}password_file = \"{}\"\n", p.display());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Config::parse(Path::new("n.toml"), &text).map_err(|e| e.to_string()));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("check-config hung on password_file")
    }

    #[test]
    fn password_file_must_be_a_small_readable_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'x'; 100_000]).unwrap();
        for (p, why) in [
            (d.path().to_owned(), "is a directory, not a regular file"),
            (PathBuf::from("/dev/zero"), "is a device, not a regular file"),
            (fifo, "is a FIFO, not a regular file"),
            (big, "larger than 65536 bytes"),
        ] {
            let e = with_password_file(&p).unwrap_err();
            let want = format!("n.toml:6:17: alert.password_file: {:?} cannot be read as a secret: {why}", p.display());
            assert!(e.contains(&want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn missing_password_file_is_only_a_warning_and_a_good_one_passes() {
        let d = tempfile::tempdir().unwrap();
        let c = with_password_file(&d.path().join("absent")).unwrap();
        assert!(c.warnings.iter().any(|w| w.contains("No such file")), "{:?}", c.warnings);
        let pw = d.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let c = with_password_file(&pw).unwrap();
        assert!(!c.warnings.iter().any(|w| w.contains("password_file")), "{:?}", c.warnings);
    }

    #[test]
    fn every_missing_key_is_reported_with_every_other_problem() {
        let text = "[web]\nfall = 0\n[web.primary]\naddress = \"10.0.0.2\"\n[web.backup]\nexport = \"/srv/nfs\"\n\
                    [web.reverse_sync]\ndelete = true\n\
                    [storage]\nwindow = \"soon\"\n[[storage.trees]]\ndest = \"x\"\n[[storage.remotes]]\nmodule = \"data\"\n\
                    [alert]\nsecurity = \"ssl\"\n";
        let e = Config::parse(Path::new("n.toml"), text).unwrap_err().to_string();
        for want in [
            "n.toml:1:1: web.mount_point: is required",
            "n.toml:2:8: web.fall: 0 must be between 1 and 100",
            "n.toml:3:1: web.primary.export: is required",
            "n.toml:5:1: web.backup.address: is required",
            "n.toml:7:1: web.reverse_sync.target: is required",
            "n.toml:10:10: storage.window: \"soon\" is not a duration",
            "n.toml:11:1: storage.trees[0].path: is required",
            "n.toml:13:1: storage.remotes[0].host: is required",
            "n.toml:15:1: alert.smtp_host: is required",
            "n.toml:15:1: alert.from: is required",
            "n.toml:15:1: alert.to: is required",
            "n.toml:16:12: alert.security: \"ssl\" must be",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn state_dir_open_to_group_or_others_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let text = format!(
            "state_dir = \"{}\"\n[alert]\nsmtp_host = \"m\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\n",
            d.path().display()
        );
        let parse = || Config::parse(Path::new("n.toml"), &text).unwrap().warnings;
        for mode in [0o755, 0o770, 0o702] {
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let want = format!(
                "n.toml:1:13: state_dir: {} has mode {mode:04o}: group or others can read or write the journals, \
                 state and alert outbox in it; run `chmod 700 {}`",
                d.path().display(),
                d.path().display()
            );
            assert_eq!(parse(), [want]);
        }
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(parse().is_empty());
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(parse().is_empty(), "search-only access reveals nothing: the files in it are 0600");
    }

    #[test]
    fn a_flood_of_problems_is_cut_short() {
        let to = vec!["\"bad@\""; 300].join(", ");
        let text = format!("[alert]\nsmtp_host = \"m\"\nfrom = \"a@example.com\"\nto = [{to}]\n");
        let e = Config::parse(Path::new("n.toml"), &text).unwrap_err().to_string();
        assert!(e.starts_with("300 problems in n.toml:\n"), "{e}");
        assert!(e.contains("alert.to[99]: \"bad@\" is not a mail address"), "{e}");
        assert!(!e.contains("alert.to[100]"), "{e}");
        assert!(e.ends_with("\n  ... and 200 more"), "{e}");
    }

    #[test]
    fn messages_and_warnings_never_carry_raw_control_characters() {
        let text = format!("{ALERT}password_file = \"/nonexistent/a\\nb\"\nca_file = \"/srv/\\u0000nfs\"\n");
        let e = Config::parse(Path::new("n.toml"), &text).unwrap_err().to_string();
        assert!(e.contains("cannot read CA file /srv/\\0nfs: file name contained an unexpected NUL byte"), "{e:?}");
        assert!(!e.contains('\0'), "{e:?}");
        let c = Config::parse(Path::new("n.toml"), &text.replace("ca_file", "# ca_file")).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("secret file /nonexistent/a\\nb: No such file")),
            "{:?}",
            c.warnings
        );
        assert!(!c.warnings.iter().any(|w| w.contains('\n')), "{:?}", c.warnings);
    }

    #[test]
    fn relative_state_dir_is_rejected() {
        let e = Config::parse(Path::new("n.toml"), "state_dir = \"var\"\n[web]\n").unwrap_err().to_string();
        assert!(e.contains("n.toml:1:13: state_dir: \"var\" must be an absolute path"), "{e}");
    }
}
