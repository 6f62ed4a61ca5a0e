//! `strata build`: Dockerfiles over a busybox image, built through the real binary (RUN steps
//! through runc), as root and rootless.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;

/// A store with the busybox image imported as `bb`, and an empty context dir.
fn setup() -> Option<(TestEnv, PathBuf)> {
    if !have_runtime_and_busybox() {
        return None;
    }
    let env = TestEnv::new();
    let f = env.write("bb.tar", &busybox_tar()?);
    env.ok(&["import", "-c", "ENV BASE=1", f.to_str().unwrap(), "bb"]);
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    Some((env, ctx))
}

fn write(dir: &Path, name: &str, data: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn build(env: &TestEnv, ctx: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["build"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    env.run(&args)
}

/// Builds, asserts success; returns (image id, stderr).
fn build_ok(env: &TestEnv, ctx: &Path, extra: &[&str]) -> (String, String) {
    let o = build(env, ctx, extra);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "build failed: {err}");
    let id = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("sha256:"), "stdout is the image id: {id:?}");
    (id, err)
}

/// Runs `strata ARGS`, asserts exit code 1 with `error: …` naming `needle` on stderr (after
/// the step lines).
fn fails(env: &TestEnv, args: &[&str], needle: &str) -> String {
    let o = env.run(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "strata {args:?} should fail: {err}"
    );
    let msg = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        msg.contains(needle),
        "the error of {args:?} lacks {needle:?}: {err}"
    );
    err
}

fn inspect(env: &TestEnv, image: &str) -> serde_json::Value {
    env.json(&["inspect", image])
}

fn run_out(env: &TestEnv, args: &[&str]) -> String {
    let mut a = vec!["run", "--rm"];
    a.extend_from_slice(args);
    env.ok(&a)
}

fn no_containers_or_mounts(env: &TestEnv) {
    assert_eq!(env.json(&["ps", "-a"]).as_array().unwrap().len(), 0);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let root = env.root().canonicalize().unwrap();
    assert!(!mounts.contains(root.to_str().unwrap()), "{mounts}");
}

/// Step lines of a build's stderr that were answered by the cache, by step number.
fn cached_steps(err: &str) -> Vec<bool> {
    let mut out = Vec::new();
    for l in err.lines() {
        if l.starts_with("STEP ") {
            out.push(false);
        } else if l.starts_with("--> CACHED")
            && let Some(last) = out.last_mut()
        {
            *last = true;
        }
    }
    out
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let tar = files_tar(files);
    let mut gz = Vec::new();
    let mut p = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(&tar).unwrap();
    p.stdout.take().unwrap().read_to_end(&mut gz).unwrap();
    assert!(p.wait().unwrap().success());
    gz
}

const EVERYTHING: &str = r#"# every instruction
ARG BASE_IMAGE=bb
FROM ${BASE_IMAGE} AS builder
RUN echo built-in-builder > /built.txt
FROM busybox-unused AS unused
RUN echo never
FROM ${BASE_IMAGE}
ARG GREETING=hello
ARG WHO
ENV APP_HOME=/app \
    MODE="two words"
ENV LEGACY some value
LABEL org.example.name="strata test" version=1
WORKDIR $APP_HOME
WORKDIR sub
RUN echo "$GREETING $WHO from $(pwd)" > greeting.txt && \
    echo run-output-line
RUN ["/bin/sh", "-c", "echo exec-form > /app/exec.txt"]
RUN true
COPY *.txt ./
COPY --chown=nobody:nogroup --chmod=755 conf/ /etc/myconf/
COPY one.cfg /etc/single.cfg
COPY --from=builder /built.txt /from-builder.txt
ADD archive.tar.gz /unpacked/
EXPOSE 18181/tcp
VOLUME /data
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --retries=3 CMD cat /app/sub/greeting.txt
SHELL ["/bin/sh", "-c"]
USER nobody
ENTRYPOINT ["ping"]
CMD ["-c","3","8.8.8.8"]
"#;

#[test]
fn rootless_build_every_instruction_config_layers_and_run() {
    let Some((env, ctx)) = setup() else { return };
    write(&ctx, "Dockerfile", EVERYTHING);
    write(&ctx, "a.txt", "A\n");
    write(&ctx, "b.txt", "B\n");
    write(&ctx, "conf/x.conf", "x=1\n");
    write(&ctx, "conf/deep/y.conf", "y=2\n");
    write(&ctx, "one.cfg", "single\n");
    std::fs::write(
        ctx.join("archive.tar.gz"),
        tar_gz(&[("pkg/", b""), ("pkg/data.txt", b"from the archive\n")]),
    )
    .unwrap();
    let (id, err) = build_ok(&env, &ctx, &["-t", "every:1", "--build-arg", "WHO=tester"]);
    assert!(err.contains("STEP 1/"), "{err}");
    assert!(
        err.contains("run-output-line"),
        "RUN output is shown: {err}"
    );
    assert!(!err.contains("never"), "the unused stage is skipped: {err}");
    assert!(err.contains("Successfully tagged every:1"), "{err}");
    let j = inspect(&env, "every:1");
    assert_eq!(j["id"], id);
    let c = &j["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["ping"]));
    assert_eq!(c["Cmd"], serde_json::json!(["-c", "3", "8.8.8.8"]));
    assert_eq!(c["User"], "nobody");
    assert_eq!(c["WorkingDir"], "/app/sub");
    assert_eq!(c["ExposedPorts"], serde_json::json!({"18181/tcp": {}}));
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(c["StopSignal"], "SIGTERM");
    assert_eq!(c["Shell"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Labels"]["org.example.name"], "strata test");
    assert_eq!(c["Labels"]["version"], "1");
    assert_eq!(
        c["Healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "cat /app/sub/greeting.txt"],
                           "Interval": 5_000_000_000u64, "Retries": 3})
    );
    let envs: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        envs,
        [
            "BASE=1",
            // As BuildKit: a base without PATH gets the default one.
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "APP_HOME=/app",
            "MODE=two words",
            "LEGACY=some value"
        ]
    );
    // History: BuildKit style; one non-empty entry per layer.
    let hist = j["history"].as_array().unwrap();
    let diff_ids = j["rootfs"]["diff_ids"].as_array().unwrap();
    let non_empty = hist
        .iter()
        .filter(|h| h["empty_layer"] != serde_json::json!(true))
        .count();
    assert_eq!(non_empty, diff_ids.len());
    let by: Vec<&str> = hist
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(by.contains(&"ENV LEGACY some value"), "{by:?}");
    assert!(by.contains(&"WORKDIR /app/sub"), "{by:?}");
    assert!(by.contains(&"COPY *.txt ./ # buildkit"), "{by:?}");
    assert!(
        by.contains(&"RUN /bin/sh -c echo \"$GREETING $WHO from $(pwd)\" > greeting.txt &&     echo run-output-line # buildkit")
            || by.iter().any(|b| b.starts_with("RUN /bin/sh -c echo \"$GREETING")),
        "{by:?}"
    );
    let run_true = hist
        .iter()
        .find(|h| h["created_by"] == "RUN /bin/sh -c true # buildkit")
        .unwrap();
    assert_eq!(
        run_true["empty_layer"], true,
        "a RUN that changes nothing makes no layer"
    );
    assert!(
        hist.iter()
            .filter(|h| h["created_by"]
                .as_str()
                .is_some_and(|b| b.ends_with("# buildkit")))
            .all(|h| h["comment"] == "buildkit.dockerfile.v0")
    );
    // layers: RUN greeting, RUN exec, 4 COPY, ADD, two WORKDIRs (missing dirs) + base = 10.
    assert_eq!(diff_ids.len(), 10, "{hist:?}");

    // What the image holds, seen from a container of it.
    let out = run_out(
        &env,
        &[
            // Root: a rootless user namespace maps no other uid.
            "-u",
            "0",
            "--entrypoint",
            "",
            "every:1",
            "/bin/sh",
            "-c",
            "cat greeting.txt /app/exec.txt a.txt b.txt /etc/single.cfg /from-builder.txt \
             /unpacked/pkg/data.txt /etc/myconf/x.conf /etc/myconf/deep/y.conf; \
             ls -ln /etc/myconf | grep x.conf; id -u; pwd; echo $MODE",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hello tester from /app/sub");
    assert_eq!(
        &lines[1..9],
        [
            "exec-form",
            "A",
            "B",
            "single",
            "built-in-builder",
            "from the archive",
            "x=1",
            "y=2"
        ]
    );
    assert!(lines[9].starts_with("-rwxr-xr-x"), "--chmod: {}", lines[9]);
    assert!(
        lines[9].contains("65534    65534"),
        "--chown names: {}",
        lines[9]
    );
    assert_eq!(&lines[10..], ["0", "/app/sub", "two words"]);
    no_containers_or_mounts(&env);
    env.fsck_clean();
}

#[test]
fn rootless_build_cache_hits_rebuilds_after_a_change_and_no_cache() {
    let Some((env, ctx)) = setup() else { return };
    write(
        &ctx,
        "Dockerfile",
        "FROM bb\nENV X=1\nRUN echo first > /first.txt\nCOPY first.txt /f1\n\
         COPY second.txt /f2\nRUN cat /f2 > /copy-of-second\nCMD [\"cat\", \"/copy-of-second\"]\n",
    );
    write(&ctx, "first.txt", "one\n");
    write(&ctx, "second.txt", "two\n");
    let (id1, err1) = build_ok(&env, &ctx, &["-t", "c:1"]);
    assert_eq!(cached_steps(&err1), [false; 7]);
    // Again: every step (but FROM) cached, the same image.
    let (id2, err2) = build_ok(&env, &ctx, &["-t", "c:1"]);
    assert_eq!(id1, id2);
    assert_eq!(
        cached_steps(&err2),
        [false, true, true, true, true, true, true]
    );
    // Touching a file without changing it keeps the cache (content, not mtime).
    let f = std::fs::File::options()
        .write(true)
        .open(ctx.join("second.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    drop(f);
    let (id3, _) = build_ok(&env, &ctx, &["-t", "c:1"]);
    assert_eq!(id3, id1);
    // Changing the second COPY's source: steps before it cached, it and later rebuilt.
    write(&ctx, "second.txt", "changed\n");
    let (id4, err4) = build_ok(&env, &ctx, &["-t", "c:1"]);
    assert_ne!(id4, id1);
    assert_eq!(
        cached_steps(&err4),
        [false, true, true, true, false, false, false],
        "{err4}"
    );
    assert_eq!(run_out(&env, &["c:1"]), "changed\n");
    // --no-cache runs everything again.
    let (_, err5) = build_ok(&env, &ctx, &["--no-cache"]);
    assert_eq!(cached_steps(&err5), [false; 7]);
    no_containers_or_mounts(&env);
}

#[test]
fn rootless_build_cache_survives_gc_while_used_and_goes_with_its_image() {
    let Some((env, ctx)) = setup() else { return };
    write(
        &ctx,
        "Dockerfile",
        "FROM bb\nRUN echo one > /one\nCOPY f /f\nLABEL x=1\n",
    );
    write(&ctx, "f", "content\n");
    let (id1, _) = build_ok(&env, &ctx, &["-t", "g"]);
    // The image holds the cached layers: gc keeps them and the cache answers.
    env.ok(&["gc"]);
    let (id2, err) = build_ok(&env, &ctx, &["-t", "g"]);
    assert_eq!(id1, id2);
    assert_eq!(cached_steps(&err), [false, true, true, true], "{err}");
    // Nothing refers to the build's layers any more: gc drops them and their cache rows.
    env.ok(&["rmi", "g"]);
    env.ok(&["gc"]);
    let (_, err) = build_ok(&env, &ctx, &["-t", "g"]);
    assert_eq!(cached_steps(&err), [false; 4], "{err}");
    assert_eq!(run_out(&env, &["g", "cat", "/one", "/f"]), "one\ncontent\n");
    env.fsck_clean();
}

#[test]
fn rootless_build_dockerignore_wildcards_and_trailing_slash() {
    let Some((env, ctx)) = setup() else { return };
    write(
        &ctx,
        "Dockerfile",
        "FROM bb\nCOPY . /ctx/\nCOPY src/*.c /csrc/\nCOPY src/main.c /renamed.c\n\
         COPY src/main.c /dir/\n",
    );
    write(
        &ctx,
        ".dockerignore",
        "# comment\n*.log\nsecret/\n!secret/public.txt\n",
    );
    write(&ctx, "keep.txt", "k\n");
    write(&ctx, "debug.log", "noise\n");
    write(&ctx, "secret/key", "hidden\n");
    write(&ctx, "secret/public.txt", "public\n");
    write(&ctx, "src/main.c", "int main;\n");
    write(&ctx, "src/util.c", "int util;\n");
    write(&ctx, "src/util.h", "int h;\n");
    build_ok(&env, &ctx, &["-t", "ign"]);
    let out = run_out(
        &env,
        &[
            "ign",
            "sh",
            "-c",
            "cd /ctx && ls -a . secret src; ls /csrc; cat /renamed.c /dir/main.c",
        ],
    );
    assert!(out.contains("keep.txt"), "{out}");
    assert!(!out.contains("debug.log"), "*.log is ignored: {out}");
    assert!(!out.contains("key"), "secret/ is ignored: {out}");
    assert!(out.contains("public.txt"), "! re-includes: {out}");
    assert!(
        out.contains("main.c\nutil.c\n"),
        "wildcard copies .c only: {out}"
    );
    assert!(out.ends_with("int main;\nint main;\n"), "{out}");
    // Wildcard into a destination without a trailing slash is refused.
    write(&ctx, "Dockerfile", "FROM bb\nCOPY src/*.c /csrc\n");
    fails(
        &env,
        &["build", ctx.to_str().unwrap()],
        "must be a directory and end with a /",
    );
}

#[test]
fn rootless_build_add_url_from_a_local_server() {
    let Some((env, ctx)) = setup() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            let body = "downloaded content\n";
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    });
    write(
        &ctx,
        "Dockerfile",
        &format!("FROM bb\nADD http://127.0.0.1:{port}/files/hello.txt /dl/\n"),
    );
    let (id1, _) = build_ok(&env, &ctx, &["-t", "dl"]);
    let out = run_out(&env, &["dl", "sh", "-c", "cat /dl/hello.txt; ls -l /dl"]);
    assert!(out.starts_with("downloaded content\n"), "{out}");
    assert!(
        out.contains("-rw-------"),
        "a URL file gets mode 0600: {out}"
    );
    // Same content again: cached, same image.
    let (id2, err) = build_ok(&env, &ctx, &["-t", "dl"]);
    assert_eq!(id1, id2, "{err}");
    server.join().unwrap();
    // Nothing listens there any more.
    fails(
        &env,
        &["build", ctx.to_str().unwrap()],
        "fetching it failed",
    );
}

#[test]
fn rootless_build_bad_input_is_refused_with_where_and_what() {
    let Some((env, ctx)) = setup() else { return };
    let c = ctx.to_str().unwrap();
    let df = |t: &str| write(&ctx, "Dockerfile", t);
    df("FROM bb\nRUN true\nFOO bar\n");
    fails(
        &env,
        &["build", c],
        "Dockerfile:3:1: unknown instruction 'FOO'",
    );
    df("RUN true\n");
    fails(&env, &["build", c], "Dockerfile:1:1: expected FROM");
    df("FROM bb\nCOPY\n");
    fails(&env, &["build", c], "Dockerfile:2:");
    df("FROM bb\nCOPY ../outside /x\n");
    fails(&env, &["build", c], "outside the build context");
    df("FROM bb\nCOPY nothing-*.txt /x/\n");
    fails(
        &env,
        &["build", c],
        "no such file or directory in the build context",
    );
    df("FROM bb\nCOPY --from=nostage /x /x\n");
    fails(&env, &["build", c], "--from=nostage");
    df("FROM no-such-image\n");
    fails(&env, &["build", c], "not in the store");
    df("FROM bb\nRUN echo partial > /p\nRUN exit 3\n");
    let err = fails(&env, &["build", "-t", "never", c], "exited with code 3");
    assert!(
        err.contains("step 3/3") && err.contains("Dockerfile:3"),
        "{err}"
    );
    assert!(
        env.run(&["inspect", "never"]).status.code() != Some(0),
        "no image is tagged"
    );
    no_containers_or_mounts(&env);
    // --target of an unknown stage.
    df("FROM bb AS one\n");
    fails(&env, &["build", "--target", "two", c], "--target two");
}

#[test]
fn rootless_build_target_stage_only() {
    let Some((env, ctx)) = setup() else { return };
    write(
        &ctx,
        "Dockerfile",
        "FROM bb AS base\nRUN echo base > /base.txt\nFROM base AS test\n\
         RUN echo in-test-stage\nFROM bb\nRUN echo in-final-stage\n",
    );
    let (_, err) = build_ok(&env, &ctx, &["--target", "base", "-t", "only-base"]);
    assert!(
        !err.contains("in-test-stage") && !err.contains("in-final-stage"),
        "{err}"
    );
    assert_eq!(run_out(&env, &["only-base", "cat", "/base.txt"]), "base\n");
    let (_, err) = build_ok(&env, &ctx, &["--target", "test"]);
    assert!(
        err.contains("in-test-stage") && !err.contains("in-final-stage"),
        "{err}"
    );
}

/// The Debian image debootstrap made (scripts/fixtures/debian-rootfs.sh).
const DEBIAN_TAR: &str = "/var/cache/strata-ci/debian-bookworm-minbase.tar";
/// python3's .debs beyond minbase (scripts/fixtures/build-debs.sh python).
const PYTHON_DEBS: &str = "/var/cache/strata-ci/debs-python";

/// The seed's Python-app Dockerfile, adapted: the base is the imported Debian image and python3
/// comes from .debs COPYed in (a build has no network), installed in dependency order.
const PYTHON_APP: &str = r#"FROM debian:bookworm
COPY debs/ /tmp/debs/
RUN cd /tmp/debs && dpkg -i lib*.deb media-types_*.deb readline-common_*.deb >/dev/null \
    && dpkg -i python3.11-minimal_*.deb >/dev/null && dpkg -i python3-minimal_*.deb >/dev/null \
    && dpkg -i *.deb >/dev/null && rm -rf /tmp/debs
WORKDIR /app
COPY main.py /app/
EXPOSE 80
CMD ["python3", "main.py"]
"#;

#[test]
fn rootless_build_seed_python_app_on_debian() {
    let have = Path::new(DEBIAN_TAR).exists()
        && std::fs::read_dir(PYTHON_DEBS).is_ok_and(|mut d| d.next().is_some());
    if !have || !have_runtime_and_busybox() {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "the Python-app fixtures are missing (scripts/test.sh fetches them)"
        );
        eprintln!(
            "skipped: needs {DEBIAN_TAR} and {PYTHON_DEBS} (scripts/fixtures/debian-rootfs.sh, \
             scripts/fixtures/build-debs.sh python)"
        );
        return;
    }
    let env = TestEnv::new();
    env.ok(&["import", DEBIAN_TAR, "debian:bookworm"]);
    let ctx = env.path("ctx");
    std::fs::create_dir_all(ctx.join("debs")).unwrap();
    for e in std::fs::read_dir(PYTHON_DEBS).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ctx.join("debs").join(e.file_name())).unwrap();
    }
    write(&ctx, "Dockerfile", PYTHON_APP);
    write(
        &ctx,
        "main.py",
        "import sys\nprint('hello from main.py, python', sys.version_info.major)\n",
    );
    let (id1, _) = build_ok(&env, &ctx, &["-t", "python-app"]);
    assert_eq!(
        run_out(&env, &["python-app"]),
        "hello from main.py, python 3\n"
    );
    let j = inspect(&env, "python-app");
    assert_eq!(
        j["config"]["Cmd"],
        serde_json::json!(["python3", "main.py"])
    );
    assert_eq!(j["config"]["WorkingDir"], "/app");
    assert_eq!(
        j["config"]["ExposedPorts"],
        serde_json::json!({"80/tcp": {}})
    );
    // Fully cached rebuild: same image.
    let (id2, err) = build_ok(&env, &ctx, &["-t", "python-app"]);
    assert_eq!(id1, id2);
    assert_eq!(
        cached_steps(&err),
        [false, true, true, true, true, true, true]
    );
    // A new main.py rebuilds only its COPY and what follows.
    write(&ctx, "main.py", "print('changed')\n");
    let (_, err) = build_ok(&env, &ctx, &["-t", "python-app"]);
    assert_eq!(
        cached_steps(&err),
        [false, true, true, true, false, false, false]
    );
    assert_eq!(run_out(&env, &["python-app"]), "changed\n");
    no_containers_or_mounts(&env);
}

/// gcc, libc6-dev and what they need beyond minbase (scripts/fixtures/build-debs.sh gcc).
const GCC_DEBS: &str = "/var/cache/strata-ci/debs-gcc";

/// The seed's multi-stage C program, adapted: the builder stage is the Debian image with gcc and
/// libc6-dev installed from .debs COPYed in (no network in a build); the binary is static, so the
/// final stage is `scratch` holding nothing but `/app/hello`.
const C_MULTI_STAGE: &str = r#"FROM debian:bookworm AS builder
COPY debs/ /tmp/debs/
RUN dpkg -i /tmp/debs/*.deb >/dev/null && rm -rf /tmp/debs
WORKDIR /src
COPY hello.c .
RUN mkdir -p /app && gcc -static -O2 -o /app/hello hello.c

FROM scratch
COPY --from=builder /app/hello /app/hello
CMD ["/app/hello"]
"#;

const HELLO_C: &str = r#"#include <stdio.h>

int main(void) {
    printf("hello from a multi-stage build\n");
    return 0;
}
"#;

/// The Debian image fixture and a .deb set are there (else: skip, or fail in CI).
fn have_debian_and(debs: &str) -> bool {
    let have = Path::new(DEBIAN_TAR).exists()
        && std::fs::read_dir(debs).is_ok_and(|mut d| d.next().is_some());
    if !have || !have_runtime_and_busybox() {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "the fixtures {DEBIAN_TAR} and {debs} are missing (scripts/test.sh fetches them)"
        );
        eprintln!(
            "skipped: needs {DEBIAN_TAR} and {debs} (scripts/fixtures/debian-rootfs.sh, \
             scripts/fixtures/build-debs.sh)"
        );
        return false;
    }
    true
}

/// A store with the Debian image as `debian:bookworm` and a context dir holding `debs/` (the
/// .deb files of the set), `file` and the Dockerfile.
fn debian_context(debs: &str, dockerfile: &str, file: (&str, &str)) -> (TestEnv, PathBuf) {
    let env = TestEnv::new();
    env.ok(&["import", DEBIAN_TAR, "debian:bookworm"]);
    let ctx = env.path("ctx");
    std::fs::create_dir_all(ctx.join("debs")).unwrap();
    for e in std::fs::read_dir(debs).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".deb") {
            std::fs::copy(e.path(), ctx.join("debs").join(e.file_name())).unwrap();
        }
    }
    write(&ctx, "Dockerfile", dockerfile);
    write(&ctx, file.0, file.1);
    (env, ctx)
}

/// Entry names of a layer tar (`strata layer export`), without a trailing `/`, sorted.
fn layer_names(env: &TestEnv, diff_id: &str) -> Vec<String> {
    let out = env.path(&format!("layer-{}.tar", &diff_id[7..19]));
    env.ok(&["layer", "export", diff_id, "-o", out.to_str().unwrap()]);
    tar_names(&std::fs::read(out).unwrap())
}

/// Entry names of a tar, without `./` or a trailing `/`, the root left out, sorted.
fn tar_names(data: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(data);
    let mut names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path().unwrap().to_string_lossy().into_owned();
            p.trim_start_matches("./").trim_end_matches('/').to_owned()
        })
        .filter(|p| !p.is_empty() && p != ".")
        .collect();
    names.sort();
    names
}

#[test]
fn rootless_build_seed_c_multi_stage_final_image_holds_only_the_binary() {
    if !have_debian_and(GCC_DEBS) {
        return;
    }
    let (env, ctx) = debian_context(GCC_DEBS, C_MULTI_STAGE, ("hello.c", HELLO_C));
    let (id1, err) = build_ok(&env, &ctx, &["-t", "hello"]);
    assert!(err.contains("STEP 9/9: CMD"), "{err}");
    assert_eq!(
        run_out(&env, &["hello"]),
        "hello from a multi-stage build\n"
    );
    let j = inspect(&env, "hello");
    assert_eq!(j["config"]["Cmd"], serde_json::json!(["/app/hello"]));
    // As BuildKit's and buildah's, the config of `FROM scratch` has the default PATH.
    assert_eq!(
        j["config"]["Env"],
        serde_json::json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    );
    // FROM scratch + one COPY: a single layer, holding /app and /app/hello only.
    let diff_ids = j["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), 1, "{j}");
    assert_eq!(
        layer_names(&env, diff_ids[0].as_str().unwrap()),
        ["app", "app/hello"]
    );
    let hist = j["history"].as_array().unwrap();
    assert_eq!(
        hist[0]["created_by"],
        "COPY --from=builder /app/hello /app/hello # buildkit"
    );
    // Only the final stage is an image with a name; the builder stage left no tag.
    let images = env.json(&["images"]);
    let images = images.as_array().unwrap();
    assert_eq!(images.len(), 2, "no intermediate image is left: {images:?}");
    let tags: Vec<String> = images
        .iter()
        .flat_map(|i| i["repo_tags"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    assert_eq!(tags.len(), 2, "debian:bookworm and hello only: {tags:?}");
    // Fully cached rebuild: every step but the two FROMs cached, the same image.
    let (id2, err) = build_ok(&env, &ctx, &["-t", "hello"]);
    assert_eq!(id1, id2);
    assert_eq!(
        cached_steps(&err),
        [false, true, true, true, true, true, false, true, true],
        "{err}"
    );
    // A changed source rebuilds the compile and the final COPY, not the gcc install.
    write(&ctx, "hello.c", &HELLO_C.replace("multi-stage", "changed"));
    let (_, err) = build_ok(&env, &ctx, &["-t", "hello"]);
    assert_eq!(
        cached_steps(&err),
        [false, true, true, true, false, false, false, false, false],
        "{err}"
    );
    assert_eq!(run_out(&env, &["hello"]), "hello from a changed build\n");
    no_containers_or_mounts(&env);
    env.fsck_clean();
}

/// `buildah` with its own vfs store under `dir`.
fn buildah(dir: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new("buildah")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "buildah {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// `path -> "type mode uid:gid size"` of a rootfs tar (size of regular files only; a hard link
/// counts as the file it links to).
fn tar_attrs(data: &[u8]) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut sizes = std::collections::BTreeMap::new();
    let clean = |p: &str| p.trim_start_matches("./").trim_end_matches('/').to_owned();
    for e in tar::Archive::new(data).entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        let path = clean(&e.path().unwrap().to_string_lossy());
        if path.is_empty() || path == "." {
            continue;
        }
        let (kind, size) = match h.entry_type() {
            tar::EntryType::Regular => ('f', h.size().unwrap().to_string()),
            tar::EntryType::Link => {
                let target = clean(&e.link_name().unwrap().unwrap().to_string_lossy());
                ('f', sizes.get(&target).cloned().unwrap_or_default())
            }
            tar::EntryType::Directory => ('d', "-".to_owned()),
            tar::EntryType::Symlink => ('l', "-".to_owned()),
            tar::EntryType::Char => ('c', "-".to_owned()),
            tar::EntryType::Block => ('b', "-".to_owned()),
            tar::EntryType::Fifo => ('p', "-".to_owned()),
            other => panic!("{path}: unexpected tar entry {other:?}"),
        };
        if kind == 'f' {
            sizes.insert(path.clone(), size.clone());
        }
        let attrs = format!(
            "{kind} {:o} {}:{} {size}",
            h.mode().unwrap() & 0o7777,
            h.uid().unwrap(),
            h.gid().unwrap()
        );
        out.insert(path, attrs);
    }
    out
}

/// The same as [`tar_attrs`] for a directory tree, through `find`.
fn dir_attrs(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let found = std::process::Command::new("find")
        .args([".", "-mindepth", "1", "-printf", "%P\\t%y %m %U:%G %s\\n"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(found.status.success());
    String::from_utf8(found.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (path, attrs) = l.split_once('\t').unwrap();
            let mut a: Vec<&str> = attrs.split(' ').collect();
            if a[0] != "f" {
                a[3] = "-";
            }
            (path.to_owned(), a.join(" "))
        })
        .collect()
}

/// Builds the context with strata and with `buildah bud` (vfs, chroot isolation; the base image
/// comes from `strata save`), and compares the two final rootfs, path by path (type, mode,
/// owner, size): strata's from `strata export` of a container of the image, buildah's from
/// `buildah mount`; and the run configs but for buildah's own label. Returns strata's paths.
fn same_files_as_buildah(env: &TestEnv, ctx: &Path) -> Vec<String> {
    build_ok(env, ctx, &["-t", "cmp"]);
    env.ok(&["container", "create", "--name", "cmp", "cmp"]);
    let rootfs = env.path("rootfs.tar");
    env.ok(&["export", "cmp", "-o", rootfs.to_str().unwrap()]);
    env.ok(&["rm", "cmp"]);
    let ours = tar_attrs(&std::fs::read(&rootfs).unwrap());

    let base = env.path("debian.tar");
    env.ok(&["save", "-o", base.to_str().unwrap(), "debian:bookworm"]);
    let dir = env.path("buildah");
    buildah(
        &dir,
        &["pull", "-q", &format!("docker-archive:{}", base.display())],
    );
    buildah(
        &dir,
        &[
            "bud",
            "--isolation",
            "chroot",
            "--pull-never",
            "-t",
            "cmp",
            ctx.to_str().unwrap(),
        ],
    );
    let c = buildah(&dir, &["from", "--pull-never", "cmp"]);
    let mnt = PathBuf::from(buildah(&dir, &["mount", &c]));
    let theirs = dir_attrs(&mnt);
    let only_ours: Vec<&String> = ours.keys().filter(|p| !theirs.contains_key(*p)).collect();
    let only_theirs: Vec<&String> = theirs.keys().filter(|p| !ours.contains_key(*p)).collect();
    // buildah's chroot isolation leaves the empty mount point it made for /etc/hosts in the image
    // (the base has none); strata drops such runtime mount points, as BuildKit does.
    for p in &only_theirs {
        assert!(
            p.as_str() == "etc/hosts" && theirs[*p].starts_with('f') && theirs[*p].ends_with(" 0"),
            "only in buildah's rootfs: {only_theirs:?}"
        );
    }
    assert!(
        only_ours.is_empty(),
        "only in strata's rootfs: {only_ours:?}"
    );
    let differ: Vec<String> = ours
        .iter()
        .filter(|(p, a)| theirs.get(*p).is_some_and(|b| b != *a))
        .map(|(p, a)| format!("{p}: strata {a}, buildah {}", theirs[p]))
        .collect();
    assert!(differ.is_empty(), "{differ:#?}");
    buildah(&dir, &["rm", "--all"]);

    // The run config: the same but for buildah's io.buildah.version label.
    let j: serde_json::Value =
        serde_json::from_str(&buildah(&dir, &["inspect", "--type", "image", "cmp"])).unwrap();
    let mut b = j["OCIv1"]["config"].clone();
    if let Some(labels) = b.get_mut("Labels").and_then(|l| l.as_object_mut()) {
        labels.remove("io.buildah.version");
        if labels.is_empty() {
            b.as_object_mut().unwrap().remove("Labels");
        }
    }
    assert_eq!(inspect(env, "cmp")["config"], b);
    ours.into_keys().collect()
}

/// buildah is there and we are root (its vfs store and chroot isolation need no more).
fn have_buildah_as_root() -> bool {
    let have = std::process::Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !strata::is_root() {
        eprintln!("skipped: the buildah comparison runs as root");
        return false;
    }
    if !have {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "buildah is missing (scripts/test.sh installs it)"
        );
        eprintln!("skipped: needs buildah");
        return false;
    }
    true
}

#[test]
fn build_seed_c_multi_stage_has_the_same_files_as_buildah_bud() {
    if !have_buildah_as_root() || !have_debian_and(GCC_DEBS) {
        return;
    }
    let (env, ctx) = debian_context(GCC_DEBS, C_MULTI_STAGE, ("hello.c", HELLO_C));
    assert_eq!(same_files_as_buildah(&env, &ctx), ["app", "app/hello"]);
    no_containers_or_mounts(&env);
}

#[test]
fn build_seed_python_app_has_the_same_files_as_buildah_bud() {
    if !have_buildah_as_root() || !have_debian_and(PYTHON_DEBS) {
        return;
    }
    let (env, ctx) = debian_context(PYTHON_DEBS, PYTHON_APP, ("main.py", "print('hello')\n"));
    let files = same_files_as_buildah(&env, &ctx);
    for p in ["app/main.py", "usr/bin/python3.11", "etc/resolv.conf"] {
        assert!(files.iter().any(|f| f == p), "{p} is in the image");
    }
    assert!(
        !files.iter().any(|f| f.starts_with("tmp/debs")),
        "the .debs were removed"
    );
    no_containers_or_mounts(&env);
}
