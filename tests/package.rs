//! The Debian package (tools/package/build-deb.sh, cargo-deb), unpacked
//! with dpkg into a scratch root: every file where docs/operations.md
//! says, the binaries run, the man pages and completions are real, the
//! configuration is a commented sample kept as a conffile, and the
//! hardened unit passes `systemd-analyze verify` without a warning.
//!
//! tests/run.sh builds the package first and names it in LEASEHOLD_DEB;
//! without it this test builds it (a release build: minutes).

use leasehold_tests::Scratch;
use std::path::{Path, PathBuf};
use std::process::Command;

const FILES: &[&str] = &[
    "usr/bin/leasehold",
    "usr/sbin/leaseholdd",
    "usr/lib/x86_64-linux-gnu/libvirt/lock-driver/leasehold.so",
    "lib/systemd/system/leaseholdd.service",
    "etc/leasehold/leasehold.toml",
    "usr/share/man/man1/leasehold.1.gz",
    "usr/share/man/man1/leasehold-format.1.gz",
    "usr/share/man/man1/leasehold-vm-add.1.gz",
    "usr/share/man/man8/leaseholdd.8.gz",
    "usr/share/bash-completion/completions/leasehold",
    "usr/share/bash-completion/completions/leaseholdd",
    "usr/share/zsh/vendor-completions/_leasehold",
    "usr/share/zsh/vendor-completions/_leaseholdd",
    "usr/share/doc/leasehold/operations.md",
    "usr/share/doc/leasehold/safety.md",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn the_deb() -> PathBuf {
    if let Some(deb) = std::env::var_os("LEASEHOLD_DEB").filter(|d| !d.is_empty()) {
        return workspace().join(deb);
    }
    let out = Command::new(workspace().join("tools/package/build-deb.sh"))
        .output()
        .expect("run tools/package/build-deb.sh");
    assert!(
        out.status.success(),
        "build-deb.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    workspace().join(stdout.lines().last().expect("the .deb's path").trim())
}

fn run(command: &mut Command) -> (bool, String, String) {
    let out = command.output().expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_debian_package_puts_every_file_where_the_docs_say() {
    let deb = the_deb();
    let scratch = Scratch::new("package");
    let root = Path::new(&scratch.path).join("root");
    let control = Path::new(&scratch.path).join("control");
    let (ok, _, err) = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    assert!(ok, "dpkg-deb -x {}: {err}", deb.display());
    let (ok, _, err) = run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert!(ok, "dpkg-deb -e: {err}");

    let operations =
        std::fs::read_to_string(workspace().join("docs/operations.md")).expect("operations.md");
    for file in FILES {
        let path = root.join(file);
        assert!(path.is_file(), "{file} is not in the package");
        if !file.starts_with("usr/share/") {
            assert!(
                operations.contains(&format!("/{file}")),
                "docs/operations.md does not say where /{file} goes"
            );
        }
    }

    // The binaries run from where they landed.
    for (binary, name) in [
        ("usr/bin/leasehold", "leasehold"),
        ("usr/sbin/leaseholdd", "leaseholdd"),
    ] {
        let (ok, out, err) = run(Command::new(root.join(binary)).arg("--version"));
        assert!(
            ok && out.starts_with(name),
            "{binary} --version: {out}{err}"
        );
    }
    let plugin = std::fs::read(root.join(FILES[2])).expect("the plugin");
    assert!(
        plugin.starts_with(b"\x7fELF"),
        "the plugin is a shared object"
    );
    assert!(
        plugin.windows(17).any(|w| w == b"virLockDriverImpl"),
        "the plugin exports libvirt's lock-driver entry point"
    );

    // Man pages render their command; completions register with bash.
    for (page, title) in [
        ("usr/share/man/man1/leasehold.1.gz", ".TH leasehold 1"),
        (
            "usr/share/man/man1/leasehold-format.1.gz",
            ".TH leasehold-format 1",
        ),
        ("usr/share/man/man8/leaseholdd.8.gz", ".TH leaseholdd 8"),
    ] {
        let (ok, text, err) = run(Command::new("zcat").arg(root.join(page)));
        assert!(ok, "zcat {page}: {err}");
        assert!(text.contains(title), "{page} has no {title:?}: {text}");
    }
    let completion = root.join("usr/share/bash-completion/completions/leasehold");
    let (ok, out, err) = run(Command::new("bash").arg("-c").arg(format!(
        "source {} && complete -p leasehold",
        completion.display()
    )));
    assert!(
        ok && out.contains("leasehold"),
        "bash completion: {out}{err}"
    );

    // The configuration: a commented sample, kept across upgrades.
    let config =
        std::fs::read_to_string(root.join("etc/leasehold/leasehold.toml")).expect("config");
    assert!(
        config.lines().all(|l| l.is_empty() || l.starts_with('#')),
        "the packaged configuration activates nothing"
    );
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/leasehold/leasehold.toml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("addgroup --system"), "{postinst}");

    // The unit, with systemd's own checker: no warning either (an unknown
    // or misspelled directive is only a warning).
    let units = root.join("lib/systemd/system");
    for entry in std::fs::read_dir("/lib/systemd/system").expect("the host's units") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "target") {
            if let Some(name) = path.file_name() {
                let _ = std::fs::copy(&path, units.join(name));
            }
        }
    }
    let unit = units.join("leaseholdd.service");
    let (ok, out, err) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(&unit));
    assert!(
        ok && err.trim().is_empty(),
        "systemd-analyze verify: {out}{err}"
    );
    let text = std::fs::read_to_string(&unit).expect("unit");
    assert!(text.contains("ExecStart=/usr/sbin/leaseholdd "), "{text}");
    for hardening in [
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ProtectKernelTunables=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
    ] {
        assert!(text.contains(hardening), "the unit lacks {hardening}");
    }
}
