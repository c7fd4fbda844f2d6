//! The Debian package (issue 15): `scripts/package.sh --dev` packages the debug binary this test run
//! built (cargo-deb `--no-build`: no release build, so it costs seconds), `dpkg-deb -x` installs it
//! into a scratch root, and the installed binary prints its version and accepts every installed
//! example config. The units are installed but not enabled; the man page and completions are where
//! Debian's tools look for them. Needs cargo-deb (package.sh installs it once if missing).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_deb_installs_a_working_binary_the_units_and_the_examples() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = run(Command::new(repo.join("scripts/package.sh")).arg("--dev").current_dir(repo));
    let deb = repo.join(built.lines().last().expect("package.sh names the .deb").trim());
    assert!(deb.extension().is_some_and(|e| e == "deb"), "{}", deb.display());

    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: nfs-guard") && info.contains("Section: admin"), "{info}");
    let files = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for want in [
        "./usr/bin/nfs-guard",
        "./lib/systemd/system/nfs-guard-web.service",
        "./lib/systemd/system/nfs-guard-storage.service",
        "./lib/systemd/system/nfs-guard-web-check.timer",
        "./usr/share/doc/nfs-guard/examples/web.toml",
        "./usr/share/doc/nfs-guard/copyright",
        "./usr/share/doc/nfs-guard/changelog.Debian.gz",
        "./usr/share/man/man1/nfs-guard.1.gz",
        "./usr/share/bash-completion/completions/nfs-guard",
        "./usr/share/zsh/vendor-completions/_nfs-guard",
        "./usr/share/fish/vendor_completions.d/nfs-guard.fish",
    ] {
        assert!(files.lines().any(|l| l.ends_with(want)), "{want} missing from the package:\n{files}");
    }

    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root.path()));
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(control.path()));
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(postinst.contains("install -d -m 0700 /var/lib/nfs-guard"), "{postinst}");
    assert!(
        !postinst.contains("systemctl") && !postinst.contains("deb-systemd-helper"),
        "the units must not be enabled or started by the package:\n{postinst}"
    );

    let bin = root.path().join("usr/bin/nfs-guard");
    let version = run(Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("nfs-guard {}", env!("CARGO_PKG_VERSION")));
    let examples = root.path().join("usr/share/doc/nfs-guard/examples");
    let mut checked = 0;
    for e in std::fs::read_dir(&examples).unwrap() {
        let p = e.unwrap().path();
        let out = run(Command::new(&bin).arg("--config").arg(&p).arg("check-config"));
        assert!(out.contains(": valid"), "{}: {out}", p.display());
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} examples installed");
    let man = run(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {} | head -5", root.path().join("usr/share/man/man1/nfs-guard.1.gz").display())));
    assert!(man.contains(".TH nfs-guard 1"), "{man}");
}
