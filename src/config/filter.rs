//! Exclude/include filters with ONE syntax for real-time pushes and full syncs.
//!
//! A pattern is a glob (`*` and `?` never cross `/`, `**` does, `[...]` classes, `\` escapes):
//! - without `/` it matches the name of a file or directory at any depth (`*.swp`, `.nfs*`);
//! - with `/` it matches the path relative to the tree root (`cache/*`, `/tmp` = `tmp` at the root).
//!
//! Excluding a directory excludes everything beneath it; an `include` pattern makes an exception
//! for what it matches (but cannot reach inside an excluded directory). This is exactly what rsync
//! does with `--include=P` rules placed before `--exclude=P` rules, so full syncs get the same
//! result from [`Filter::rsync_args`] that real-time pushes get from [`Filter::excluded`].
//! Forms whose meaning differs between globset and rsync (a trailing `/`, `{a,b}`, `**` without
//! `/`, `\` inside `[...]`) are rejected by validation.
//!
//! rsync reads a pattern differently from a glob in two ways that [`rsync_pattern`] undoes:
//! `--exclude=- x` is an exclude of `x` (`+ `/`- ` prefixes, `!` clears the list), so rules go as
//! `--filter=- PATTERN`, where the pattern is the rest of the argument, spaces and all; and a
//! pattern without `*?[` is taken literally, backslashes included, so escapes are rewritten.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::{Ctx, Spanned};

#[derive(Debug, Clone, Default)]
struct Rules {
    /// Matched against one path component.
    names: Option<GlobSet>,
    /// Matched against the path relative to the tree root.
    paths: Option<GlobSet>,
    /// The patterns as rsync filter rules (anchored ones with a leading `/`).
    rsync: Vec<String>,
}

impl Rules {
    fn is_empty(&self) -> bool {
        self.rsync.is_empty()
    }

    /// Does `prefix` (a relative path whose last component is `name`) match?
    fn matches(&self, prefix: &Path, name: &[u8]) -> bool {
        self.names.as_ref().is_some_and(|s| s.is_match(Path::new(std::ffi::OsStr::from_bytes(name))))
            || self.paths.as_ref().is_some_and(|s| s.is_match(prefix))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    exclude: Rules,
    include: Rules,
}

/// Why a pattern is refused, or `None` when it is fine.
fn pattern_problem(p: &str) -> Option<&'static str> {
    let body = p.strip_prefix('/').unwrap_or(p);
    if body.is_empty() {
        Some("is empty")
    } else if body.ends_with('/') {
        Some("must not end with '/' (a pattern matches files and directories alike)")
    } else if body.contains('{') || body.contains('}') {
        Some("must not use {a,b} alternatives (rsync does not know them); write one pattern per entry")
    } else if body.contains("**") && !body.contains('/') {
        Some("uses '**' without '/': write e.g. \"**/x\" or a plain name pattern")
    } else if backslash_in_class(body) {
        Some("must not hold '\\' inside [...] (rsync reads it differently); match a backslash with \\\\")
    } else {
        None
    }
}

/// Splits `p` (just past a `[`) into the class body through its closing `]` and the rest; a `]`
/// right after `[`, `[!` or `[^` is a member. `None` when the class never closes.
fn class_body(p: &str) -> Option<(&str, &str)> {
    let skip = usize::from(p.starts_with(['!', '^']));
    let from = skip + usize::from(p[skip..].starts_with(']'));
    let close = from + p[from..].find(']')?;
    Some((&p[..=close], &p[close + 1..]))
}

/// Does a `[...]` class of glob `p` hold a backslash (which globset and rsync read differently)?
fn backslash_in_class(mut p: &str) -> bool {
    while let Some(i) = p.find(['\\', '[']) {
        if p[i..].starts_with('\\') {
            let escaped = &p[i + 1..];
            p = escaped.chars().next().map_or("", |c| &escaped[c.len_utf8()..]);
        } else if let Some((class, rest)) = class_body(&p[i + 1..]) {
            if class.contains('\\') {
                return true;
            }
            p = rest;
        } else {
            return false;
        }
    }
    false
}

/// The rsync pattern matching what glob `body` matches: wildcards and classes as they are, literal
/// characters that rsync would read as wildcards escaped, and a literal backslash as the class
/// `[\\]` (so the pattern is always one rsync reads with escapes, never literally).
fn rsync_pattern(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '\\' => {
                let Some(e) = rest.chars().next() else { break };
                rest = &rest[e.len_utf8()..];
                match e {
                    '\\' => out.push_str("[\\\\]"),
                    '*' | '?' | '[' => {
                        out.push('\\');
                        out.push(e);
                    }
                    _ => out.push(e),
                }
            }
            '[' => {
                out.push('[');
                if let Some((class, after)) = class_body(rest) {
                    out.push_str(class);
                    rest = after;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn build(patterns: &[&str]) -> Result<Rules, (usize, String)> {
    let mut names = GlobSetBuilder::new();
    let mut paths = GlobSetBuilder::new();
    let (mut n_names, mut n_paths) = (0, 0);
    let mut rsync = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        if let Some(why) = pattern_problem(p) {
            return Err((i, why.to_owned()));
        }
        let anchored = p.contains('/');
        let body = p.strip_prefix('/').unwrap_or(p);
        let glob = GlobBuilder::new(body)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| (i, format!("is not a valid glob: {}", e.kind())))?;
        if anchored {
            paths.add(glob);
            n_paths += 1;
            rsync.push(format!("/{}", rsync_pattern(body)));
        } else {
            names.add(glob);
            n_names += 1;
            rsync.push(rsync_pattern(body));
        }
    }
    let finish = |b: GlobSetBuilder, n: usize| -> Result<Option<GlobSet>, (usize, String)> {
        if n == 0 {
            return Ok(None);
        }
        b.build().map(Some).map_err(|e| (0, e.to_string()))
    };
    Ok(Rules { names: finish(names, n_names)?, paths: finish(paths, n_paths)?, rsync })
}

impl Filter {
    /// Builds a filter from plain pattern lists (tests, benchmarks).
    pub fn new(exclude: &[&str], include: &[&str]) -> Result<Filter, String> {
        let e = build(exclude).map_err(|(i, m)| format!("exclude[{i}] {m}"))?;
        let i = build(include).map_err(|(i, m)| format!("include[{i}] {m}"))?;
        Ok(Filter { exclude: e, include: i })
    }

    /// Validates `<section>.exclude` and `<section>.include`, reporting every bad pattern.
    pub fn validate(
        ctx: &mut Ctx,
        section: &str,
        exclude: Option<&[Spanned<String>]>,
        include: Option<&[Spanned<String>]>,
    ) -> Option<Filter> {
        let check = |ctx: &mut Ctx, key: &str, list: Option<&[Spanned<String>]>| -> Option<Rules> {
            let list = list.unwrap_or_default();
            let mut ok = true;
            for (i, p) in list.iter().enumerate() {
                if let Err((_, why)) = build(&[p.get_ref().as_str()]) {
                    ctx.bad(&format!("{section}.{key}[{i}]"), p, &why);
                    ok = false;
                }
            }
            let v: Vec<&str> = list.iter().map(|p| p.get_ref().as_str()).collect();
            if ok {
                build(&v).ok()
            } else {
                None
            }
        };
        let exclude = check(ctx, "exclude", exclude);
        let include = check(ctx, "include", include);
        Some(Filter { exclude: exclude?, include: include? })
    }

    /// Is `rel` (relative to the tree root) excluded, itself or through an excluded ancestor?
    pub fn excluded(&self, rel: &Path) -> bool {
        if self.exclude.is_empty() {
            return false;
        }
        Self::any_prefix(rel, |prefix, name| self.exclude.matches(prefix, name) && !self.include.matches(prefix, name))
    }

    /// For an include-only filter (hooks): does `rel` or an ancestor match? True when there are no patterns.
    pub fn included(&self, rel: &Path) -> bool {
        self.include.is_empty() || Self::any_prefix(rel, |prefix, name| self.include.matches(prefix, name))
    }

    fn any_prefix(rel: &Path, mut f: impl FnMut(&Path, &[u8]) -> bool) -> bool {
        let bytes = rel.as_os_str().as_bytes();
        let mut start = 0;
        loop {
            let end = bytes[start..].iter().position(|&b| b == b'/').map_or(bytes.len(), |p| start + p);
            let name = &bytes[start..end];
            if !name.is_empty() && f(Path::new(std::ffi::OsStr::from_bytes(&bytes[..end])), name) {
                return true;
            }
            if end >= bytes.len() {
                return false;
            }
            start = end + 1;
        }
    }

    /// The same filter as rsync arguments for a recursive full sync: `--filter=+ P` / `--filter=- P`
    /// (never `--exclude=P`, where a pattern `- x` would be an exclude of `x`).
    pub fn rsync_args(&self) -> Vec<OsString> {
        let inc = self.include.rsync.iter().map(|p| OsString::from(format!("--filter=+ {p}")));
        let exc = self.exclude.rsync.iter().map(|p| OsString::from(format!("--filter=- {p}")));
        inc.chain(exc).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.exclude.is_empty() && self.include.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn f(e: &[&str], i: &[&str]) -> Filter {
        Filter::new(e, i).unwrap()
    }

    #[test]
    fn name_patterns_match_at_any_depth_and_exclude_subtrees() {
        let f = f(&["*.swp", ".nfs*", "cache"], &[]);
        assert!(f.excluded(Path::new("a.swp")));
        assert!(f.excluded(Path::new("x/y/.b.swp")));
        assert!(f.excluded(Path::new("x/.nfs0001")));
        assert!(f.excluded(Path::new("x/cache/deep/file")));
        assert!(!f.excluded(Path::new("x/cachet/file")));
        assert!(!f.excluded(Path::new("swp")));
    }

    #[test]
    fn path_patterns_are_anchored_at_the_root() {
        let f = f(&["tmp/*", "/logs"], &[]);
        assert!(f.excluded(Path::new("tmp/a")));
        assert!(f.excluded(Path::new("tmp/a/b")));
        assert!(!f.excluded(Path::new("x/tmp/a")));
        assert!(!f.excluded(Path::new("tmp")));
        assert!(f.excluded(Path::new("logs/today")));
        assert!(!f.excluded(Path::new("a/logs")));
        assert_eq!(f.rsync_args(), [OsString::from("--filter=- /tmp/*"), "--filter=- /logs".into()]);
    }

    #[test]
    fn includes_are_exceptions_but_not_inside_excluded_dirs() {
        let f = f(&["*.tmp", "build"], &["keep.tmp", "build/keep"]);
        assert!(!f.excluded(Path::new("a/keep.tmp")));
        assert!(f.excluded(Path::new("a/other.tmp")));
        assert!(f.excluded(Path::new("build/keep")), "rsync does not descend into an excluded dir either");
        assert_eq!(
            f.rsync_args(),
            [
                OsString::from("--filter=+ keep.tmp"),
                "--filter=+ /build/keep".into(),
                "--filter=- *.tmp".into(),
                "--filter=- build".into()
            ]
        );
    }

    #[test]
    fn hostile_names_are_matched_as_bytes() {
        let f = f(&["\\[x\\]"], &[]);
        assert!(f.excluded(Path::new("a/[x]")));
        assert!(!f.excluded(Path::new("a/x")));
        let raw = Path::new(std::ffi::OsStr::from_bytes(b"d/\xff\n-x"));
        assert!(!f.excluded(raw));
        assert!(super::Filter::new(&["*"], &[]).unwrap().excluded(raw));
    }

    #[test]
    fn rsync_patterns_keep_the_glob_meaning() {
        let cases = [
            ("- x", "- x"),
            ("!", "!"),
            (r"foo\ba", "fooba"),
            (r"a\\b", r"a[\\]b"),
            (r"\[x\]", r"\[x]"),
            (r"\*", r"\*"),
            ("[!a]*", "[!a]*"),
            ("[]x]?", "[]x]?"),
            (" lead ", " lead "),
        ];
        for (glob, rsync) in cases {
            assert_eq!(rsync_pattern(glob), rsync, "{glob}");
        }
        let f = f(&["- x", "+ y"], &["!"]);
        assert_eq!(f.rsync_args(), [OsString::from("--filter=+ !"), "--filter=- - x".into(), "--filter=- + y".into()]);
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        assert!(Filter::new(&[r"[\]]"], &[]).unwrap_err().contains("inside [...]"));
        assert!(Filter::new(&[r"[a\b]"], &[]).unwrap_err().contains("inside [...]"));
        assert!(Filter::new(&[r"\[a\b", r"\é[ab]\\"], &[]).is_ok());
        assert!(Filter::new(&[r"\é[\\]"], &[]).unwrap_err().contains("inside [...]"));
        assert!(Filter::new(&["dir/"], &[]).unwrap_err().contains("must not end with '/'"));
        assert!(Filter::new(&["{a,b}"], &[]).unwrap_err().contains("alternatives"));
        assert!(Filter::new(&["**x"], &[]).unwrap_err().contains("'**' without '/'"));
        assert!(Filter::new(&[], &["["]).unwrap_err().contains("include[0] is not a valid glob"));
    }

    #[test]
    fn include_only_filters_for_hooks() {
        assert!(f(&[], &[]).included(Path::new("x")));
        let h = f(&[], &["*.html", "static/**"]);
        assert!(h.included(Path::new("a/b.html")));
        assert!(h.included(Path::new("static/css/x.css")));
        assert!(!h.included(Path::new("a/b.css")));
    }
}
