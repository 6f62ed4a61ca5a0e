//! The seed's "Method 1" end to end on a real Debian base: run a container that installs a
//! package with dpkg, `diff` lists its files, `commit` makes `my-debian`, `history` shows two
//! layers, and a new `run` of `my-debian` runs the installed program. As root, and again as the
//! unprivileged user in the rootless rerun.

use std::path::Path;

use crate::common::*;

const DEBIAN_TAR: &str = "/var/cache/strata-ci/debian-bookworm-minbase.tar";
const DEBS: &str = "/var/cache/strata-ci/debs";

fn fixtures() -> Option<String> {
    let deb = std::fs::read_dir(DEBS).ok().and_then(|rd| {
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("traceroute_") && n.ends_with(".deb"))
    });
    let ok = Path::new(DEBIAN_TAR).exists() && deb.is_some() && have_runtime_and_busybox();
    if !ok {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "needs {DEBIAN_TAR} and {DEBS}/traceroute_*.deb (scripts/fixtures/)"
        );
        eprintln!(
            "skipped: needs the Debian fixtures (scripts/fixtures/debian-rootfs.sh, debs.sh)"
        );
        return None;
    }
    deb
}

#[test]
fn rootless_seed_method1_install_diff_commit_history_run() {
    let Some(deb) = fixtures() else { return };
    let env = TestEnv::new();
    env.ok(&["import", DEBIAN_TAR, "debian:bookworm"]);
    let vol = format!("{DEBS}:/debs:ro");
    let install = format!("dpkg -i /debs/{deb}");
    let o = env.run(&[
        "run",
        "--name",
        "example",
        "-v",
        &vol,
        "debian:bookworm",
        "sh",
        "-c",
        &install,
    ]);
    assert!(
        o.status.success(),
        "dpkg failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    let diff = env.ok(&["diff", "example"]);
    let lines: Vec<&str> = diff.lines().collect();
    assert!(lines.contains(&"A /usr/bin/traceroute.db"), "{diff}");
    assert!(lines.contains(&"C /usr/bin"), "{diff}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("A /var/lib/dpkg/info/traceroute")),
        "{diff}"
    );
    assert!(!diff.contains(".wh."), "{diff}");

    let id = env.ok(&["commit", "-m", "install traceroute", "example", "my-debian"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let hist = env.json(&["history", "my-debian"]);
    let rows = hist.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{hist}");
    assert_eq!(rows[0]["comment"], "install traceroute");
    assert_eq!(rows[0]["image"], id.trim());
    assert!(
        rows[1]["image"].is_string(),
        "the base is a local parent: {hist}"
    );
    let text = env.ok(&["history", "my-debian"]);
    assert!(text.lines().count() == 3, "{text}");

    let o = env.run(&["run", "--rm", "my-debian", "traceroute", "--version"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.to_lowercase().contains("traceroute"), "{out}");

    // Bad input: a command the image does not have exits 127, like Docker.
    let o = env.run(&["run", "--rm", "my-debian", "no-such-command"]);
    assert_eq!(
        o.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("executable file not found"));
    env.ok(&["rm", "example"]);
    env.fsck_clean();
}
