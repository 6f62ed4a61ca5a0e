//! `login`, `logout`, `push`, `pull` against real registries on 127.0.0.1: Debian's
//! `docker-registry` (plain, htpasswd, TLS with a CA made by openssl here), `skopeo` for
//! interop, and a small fake registry with a Bearer token realm written below (token expiry,
//! a 500 once, a blob with the wrong digest, a repository without push permission).
//!
//! Without `/usr/bin/docker-registry` the tests that need it print `skipped:` and pass, unless
//! `STRATA_REQUIRE_REGISTRY=1` (set it in CI).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

fn have(bin: &str) -> bool {
    Path::new(bin).exists()
        || Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// False (and a note) when `docker-registry` is missing and not required.
pub(crate) fn registry_available() -> bool {
    if Path::new(REGISTRY_BIN).exists() {
        return true;
    }
    assert!(
        std::env::var("STRATA_REQUIRE_REGISTRY").as_deref() != Ok("1"),
        "{REGISTRY_BIN} is missing (apt-get install docker-registry)"
    );
    eprintln!("skipped: {REGISTRY_BIN} is missing (apt-get install docker-registry)");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry serve` on 127.0.0.1 with its own root; killed on drop.
pub(crate) struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub(crate) fn start(htpasswd: Option<&str>, tls: Option<(&Path, &Path)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("strata-test-reg-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  \
             filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: \
             127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some(h) = htpasswd {
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {h}\n"
            ));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            _dir: dir,
        }
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs strata with HOME and the config dirs inside the test's temp dir, so credentials never
/// touch the real ones.
fn strata(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> Output {
    let home = env.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut c = env.cmd();
    c.args(args)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE");
    if let Some(s) = stdin {
        c.stdin(Stdio::piped());
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        return child.wait_with_output().unwrap();
    }
    c.output().unwrap()
}

fn ok(env: &TestEnv, args: &[&str]) -> String {
    let o = strata(env, args, None);
    assert!(
        o.status.success(),
        "strata {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--format", "json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(env, &a)).unwrap()
}

fn fails(env: &TestEnv, args: &[&str], needle: &str) -> String {
    let o = strata(env, args, None);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "strata {args:?} should fail: {err}"
    );
    assert!(
        err.contains(needle),
        "stderr of {args:?} lacks {needle:?}: {err}"
    );
    err
}

fn statuses(rep: &serde_json::Value) -> Vec<String> {
    rep["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["status"].as_str().unwrap().to_owned())
        .collect()
}

/// Two images sharing a base layer, tagged under `repo` (`:one` and `:two`).
fn two_images(env: &TestEnv, repo: &str) -> (String, String) {
    let base = rootfs_tar("");
    let big: Vec<u8> = (0..(36u32 << 20) / 4)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761) >> 7).to_le_bytes())
        .collect();
    let l2 = files_tar(&[
        ("app/", b""),
        ("app/one", b"first image"),
        ("app/big", &big),
    ]);
    let l3 = files_tar(&[("app/", b""), ("app/two", b"second image")]);
    let a = add_layered_image(env, &[base.clone(), l2], &format!("{repo}:one"));
    let b = add_layered_image(env, &[base, l3], &format!("{repo}:two"));
    (a, b)
}

fn layer_sha(env: &TestEnv, diff_id: &str) -> String {
    let out = env.path("layer.tar");
    ok(
        env,
        &["layer", "export", diff_id, "-o", out.to_str().unwrap()],
    );
    format!("sha256:{}", sha256_file(&out))
}

#[test]
fn registry_push_pull_round_trip_and_shared_base() {
    if !registry_available() {
        return;
    }
    let reg = Registry::start(None, None);
    let h = reg.host();
    let repo = format!("{h}/team/app");
    let src = TestEnv::new();
    let (id1, id2) = two_images(&src, &repo);

    let p1 = json(&src, &["push", &format!("{repo}:one")]);
    assert_eq!(statuses(&p1), ["pushed", "pushed"], "{p1}");
    // The big layer (~36 MiB of noise: a chunked upload) and the base go up; a re-push
    // finds everything and gives the same manifest (deterministic blobs).
    let again = json(&src, &["push", &format!("{repo}:one")]);
    assert_eq!(statuses(&again), ["already_exists", "already_exists"]);
    assert_eq!(again["manifest_digest"], p1["manifest_digest"]);
    // The second image shares the base: only its own layer is pushed.
    let p2 = json(&src, &["push", &format!("{repo}:two")]);
    assert_eq!(statuses(&p2), ["already_exists", "pushed"], "{p2}");

    // Pull into an empty store: same image IDs, same layers.
    let dst = TestEnv::new();
    let r1 = json(&dst, &["pull", &format!("{repo}:one")]);
    assert_eq!(r1["image_id"], id1.as_str());
    assert_eq!(r1["manifest_digest"], p1["manifest_digest"]);
    assert_eq!(statuses(&r1), ["pulled", "pulled"]);
    let r2 = json(&dst, &["pull", &format!("{repo}:two")]);
    assert_eq!(r2["image_id"], id2.as_str());
    assert_eq!(statuses(&r2), ["already_exists", "pulled"]);
    for l in r1["layers"].as_array().unwrap() {
        let d = l["diff_id"].as_str().unwrap();
        assert_eq!(layer_sha(&dst, d), d);
    }
    // By digest, verified.
    let by_digest = format!("{repo}@{}", p1["manifest_digest"].as_str().unwrap());
    let r3 = json(&dst, &["pull", &by_digest]);
    assert_eq!(r3["image_id"], id1.as_str());
    dst.fsck_clean();

    // A pulled image pushed elsewhere goes up byte-identical (kept blobs, same manifest),
    // its layers mounted from the repository they came from.
    ok(
        &dst,
        &[
            "tag",
            &format!("{repo}:one"),
            &format!("{h}/other/copy:one"),
        ],
    );
    let p4 = json(&dst, &["push", &format!("{h}/other/copy:one")]);
    assert_eq!(p4["manifest_digest"], p1["manifest_digest"], "{p4}");
    assert_eq!(statuses(&p4), ["mounted", "mounted"], "{p4}");

    // The issue's check: `strata pull` followed by `strata mount` shows the files.
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok()
    {
        let mnt = dst.path("mnt");
        let _m = StrataMount::start(&dst, &["mount", &format!("{repo}:two")], &mnt);
        assert_eq!(std::fs::read(mnt.join("app/two")).unwrap(), b"second image");
        assert!(
            std::fs::read_to_string(mnt.join("etc/os-release"))
                .unwrap()
                .contains("strata test")
        );
    }
}

fn skopeo_available() -> bool {
    if have("skopeo") {
        return true;
    }
    eprintln!("skipped: skopeo is missing");
    false
}

#[test]
fn registry_skopeo_interop() {
    if !registry_available() || !skopeo_available() {
        return;
    }
    let reg = Registry::start(None, None);
    let h = reg.host();
    let env = TestEnv::new();
    let (id1, _) = two_images(&env, &format!("{h}/interop/strata"));
    ok(&env, &["push", &format!("{h}/interop/strata:one")]);

    // skopeo pulls what strata pushed (it verifies every digest and diff_id).
    let oci = env.path("oci");
    let o = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{h}/interop/strata:one"))
        .arg(format!("oci:{}:x", oci.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // strata pulls what skopeo pushed (skopeo compresses the layers itself).
    let archive = env.path("img.tar");
    ok(
        &env,
        &[
            "save",
            "-o",
            archive.to_str().unwrap(),
            &format!("{h}/interop/strata:one"),
        ],
    );
    let o = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("docker://{h}/interop/skopeo:pushed"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fresh = TestEnv::new();
    let r = json(&fresh, &["pull", &format!("{h}/interop/skopeo:pushed")]);
    assert_eq!(r["image_id"], id1.as_str(), "{r}");
    fresh.fsck_clean();
    // Pushed back by strata: the kept blobs make the same layer digests skopeo made.
    ok(
        &fresh,
        &[
            "tag",
            &format!("{h}/interop/skopeo:pushed"),
            &format!("{h}/interop/back:1"),
        ],
    );
    let p = json(&fresh, &["push", &format!("{h}/interop/back:1")]);
    let pulled: Vec<&str> = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let pushed: Vec<&str> = p["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(pulled, pushed);
}

#[test]
fn registry_htpasswd_login_logout_and_wrong_password() {
    if !registry_available() || !have("htpasswd") {
        eprintln!("skipped: needs docker-registry and htpasswd (apache2-utils)");
        return;
    }
    let env = TestEnv::new();
    let pw = env.path("htpasswd");
    let o = Command::new("htpasswd")
        .args(["-Bbc", pw.to_str().unwrap(), "alice", "s3cret"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let reg = Registry::start(Some(pw.to_str().unwrap()), None);
    let h = reg.host();
    let name = format!("{h}/alice/app:1");
    add_layered_image(&env, &[rootfs_tar("")], &name);

    let err = fails(&env, &["push", &name], "unauthorized");
    assert!(err.contains(&format!("strata login {h}")), "{err}");
    let o = strata(
        &env,
        &["login", &h, "-u", "alice", "--password-stdin"],
        Some("wrong\n"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("wrong user or password"), "{err}");
    let auth = env.path("home/.config/strata/auth.json");
    assert!(!auth.exists());

    let o = strata(
        &env,
        &["login", &h, "-u", "alice", "--password-stdin"],
        Some("s3cret\n"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta = std::fs::metadata(&auth).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&auth).unwrap()).unwrap();
    assert_eq!(doc["auths"][&h]["auth"], "YWxpY2U6czNjcmV0"); // base64("alice:s3cret")

    let p = json(&env, &["push", &name]);
    assert_eq!(statuses(&p), ["pushed"]);
    let other = TestEnv::new();
    // Docker's config file is read too.
    let dc = other.path("home/.docker");
    std::fs::create_dir_all(&dc).unwrap();
    std::fs::write(dc.join("config.json"), std::fs::read(&auth).unwrap()).unwrap();
    let r = json(&other, &["pull", &name]);
    assert_eq!(r["manifest_digest"], p["manifest_digest"]);

    ok(&env, &["logout", &h]);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&auth).unwrap()).unwrap();
    assert!(doc["auths"].get(&h).is_none());
    fails(&env, &["pull", &name], "unauthorized");
}

#[test]
fn registry_tls_with_own_ca() {
    if !registry_available() || !have("openssl") {
        eprintln!("skipped: needs docker-registry and openssl");
        return;
    }
    let env = TestEnv::new();
    let d = env.path("pki");
    std::fs::create_dir_all(&d).unwrap();
    let sh = format!(
        "set -e; cd {}; \
         openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
           -subj /CN=strata-test-ca 2>/dev/null; \
         openssl req -newkey rsa:2048 -nodes -keyout reg.key -out reg.csr -subj /CN=127.0.0.1 \
           2>/dev/null; \
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext; \
         openssl x509 -req -in reg.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out reg.crt \
           -days 2 -extfile ext 2>/dev/null",
        d.display()
    );
    let o = Command::new("sh").args(["-c", &sh]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reg = Registry::start(None, Some((&d.join("reg.crt"), &d.join("reg.key"))));
    let h = reg.host();
    let name = format!("{h}/tls/app:1");
    let id = add_layered_image(&env, &[rootfs_tar("")], &name);
    // Unknown CA: refused, with what to do.
    fails(&env, &["push", &name], "--ca-file");
    let ca = d.join("ca.crt");
    ok(&env, &["push", "--ca-file", ca.to_str().unwrap(), &name]);
    let other = TestEnv::new();
    let r = json(&other, &["pull", "--cert-dir", d.to_str().unwrap(), &name]);
    assert_eq!(r["image_id"], id.as_str());
    let third = TestEnv::new();
    let r = json(&third, &["pull", "--tls-verify=false", &name]);
    assert_eq!(r["image_id"], id.as_str());
}

// ---------------------------------------------------------------------------------------------
// A fake registry with a Bearer token realm.

#[derive(Default)]
struct FakeState {
    blobs: HashMap<String, Vec<u8>>,
    manifests: HashMap<String, (String, Vec<u8>)>,
    uploads: HashMap<String, Vec<u8>>,
    /// token → registry requests it may still authorize (server-side expiry).
    tokens: HashMap<String, u32>,
    tokens_issued: u32,
    seq: u32,
}

#[derive(Default)]
struct Knobs {
    /// Answer the next manifest GET with 500 + Retry-After.
    fail_once: AtomicBool,
    /// Serve other bytes for every blob GET.
    corrupt_blobs: AtomicBool,
    /// Requests a token authorizes before the registry refuses it as expired.
    token_uses: AtomicU32,
    failures_sent: AtomicU32,
}

struct Fake {
    port: u16,
    state: Arc<Mutex<FakeState>>,
    knobs: Arc<Knobs>,
    stop: Arc<AtomicBool>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
    }
}

struct Req {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_req(s: &mut BufReader<TcpStream>) -> Option<Req> {
    let mut line = String::new();
    if s.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut l = String::new();
        s.read_line(&mut l).ok()?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ","),
            )
        })
        .collect();
    Some(Req {
        method,
        path: path.to_owned(),
        query,
        headers,
        body,
    })
}

fn respond(
    s: &mut TcpStream,
    head_only: bool,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) {
    let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Docker-Distribution-Api-Version: registry/2.0\r\nConnection: keep-alive\r\n\r\n");
    let _ = s.write_all(out.as_bytes());
    if !head_only {
        let _ = s.write_all(body);
    }
}

impl Fake {
    fn start(user: &str, password: &str) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let knobs = Arc::new(Knobs::default());
        knobs.token_uses.store(1000, Ordering::SeqCst);
        let stop = Arc::new(AtomicBool::new(false));
        let basic = format!(
            "Basic {}",
            base64_encode(format!("{user}:{password}").as_bytes())
        );
        let (st, kn, sp) = (state.clone(), knobs.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if sp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (st, kn, basic) = (st.clone(), kn.clone(), basic.clone());
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    while let Some(req) = read_req(&mut r) {
                        handle(&mut w, req, port, &st, &kn, &basic);
                    }
                });
            }
        });
        Fake {
            port,
            state,
            knobs,
            stop,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn errors(code: &str, msg: &str) -> Vec<u8> {
    format!(r#"{{"errors":[{{"code":"{code}","message":"{msg}"}}]}}"#).into_bytes()
}

fn handle(w: &mut TcpStream, req: Req, port: u16, st: &Mutex<FakeState>, kn: &Knobs, basic: &str) {
    let head = req.method == "HEAD";
    if req.path == "/token" {
        if req.headers.get("authorization").map(String::as_str) != Some(basic) {
            return respond(
                w,
                false,
                401,
                &[],
                &errors("UNAUTHORIZED", "bad credentials"),
            );
        }
        let mut s = st.lock().unwrap();
        s.tokens_issued += 1;
        let t = format!("tok{}", s.tokens_issued);
        s.tokens
            .insert(t.clone(), kn.token_uses.load(Ordering::SeqCst));
        let body = format!(r#"{{"token":"{t}","expires_in":3600}}"#);
        return respond(
            w,
            false,
            200,
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        );
    }
    let challenge =
        format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake-registry""#);
    let authed = {
        let mut s = st.lock().unwrap();
        match req
            .headers
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| s.tokens.get_mut(t))
        {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    if !authed {
        return respond(
            w,
            head,
            401,
            &[("WWW-Authenticate", challenge)],
            &errors("UNAUTHORIZED", "authentication required"),
        );
    }
    if req.path == "/v2/" {
        return respond(w, head, 200, &[], b"{}");
    }
    let p = req.path.strip_prefix("/v2/").unwrap_or("").to_owned();
    let (name, rest) = match ["/blobs/uploads/", "/blobs/", "/manifests/"]
        .iter()
        .find_map(|k| p.find(k).map(|i| (p[..i].to_owned(), p[i..].to_owned())))
    {
        Some(x) => x,
        None => return respond(w, head, 404, &[], &errors("NAME_UNKNOWN", "no")),
    };
    let write = matches!(req.method.as_str(), "POST" | "PUT" | "PATCH");
    if write && name.starts_with("forbidden/") {
        return respond(
            w,
            head,
            403,
            &[],
            &errors("DENIED", "requested access to the resource is denied"),
        );
    }
    let mut s = st.lock().unwrap();
    if let Some(id) = rest.strip_prefix("/blobs/uploads/") {
        match req.method.as_str() {
            "POST" => {
                s.seq += 1;
                let id = format!("u{}", s.seq);
                s.uploads.insert(id.clone(), Vec::new());
                let loc = format!("/v2/{name}/blobs/uploads/{id}?_state=x");
                respond(
                    w,
                    false,
                    202,
                    &[("Location", loc), ("Range", "0-0".into())],
                    b"",
                )
            }
            "PATCH" => {
                let Some(u) = s.uploads.get_mut(id) else {
                    return respond(w, false, 404, &[], &errors("BLOB_UPLOAD_UNKNOWN", "no"));
                };
                u.extend_from_slice(&req.body);
                let end = u.len().saturating_sub(1);
                let loc = format!("/v2/{name}/blobs/uploads/{id}?_state=y");
                respond(
                    w,
                    false,
                    202,
                    &[("Location", loc), ("Range", format!("0-{end}"))],
                    b"",
                )
            }
            "PUT" => {
                let Some(mut u) = s.uploads.remove(id) else {
                    return respond(w, false, 404, &[], &errors("BLOB_UPLOAD_UNKNOWN", "no"));
                };
                u.extend_from_slice(&req.body);
                let d = format!("sha256:{}", sha256_hex(&u));
                if req.query.get("digest") != Some(&d) {
                    return respond(w, false, 400, &[], &errors("DIGEST_INVALID", "digest"));
                }
                s.blobs.insert(d.clone(), u);
                respond(w, false, 201, &[("Docker-Content-Digest", d)], b"")
            }
            _ => respond(w, head, 405, &[], b""),
        }
    } else if let Some(d) = rest.strip_prefix("/blobs/") {
        match s.blobs.get(d) {
            Some(b) => {
                let body = if kn.corrupt_blobs.load(Ordering::SeqCst)
                    && !head
                    && b.starts_with(&[0x1f, 0x8b])
                {
                    // Another valid gzip layer: only the digest checks can refuse it.
                    flate2_gz(&files_tar(&[("evil", b"not the layer")]))
                } else {
                    b.clone()
                };
                respond(
                    w,
                    head,
                    200,
                    &[("Docker-Content-Digest", d.to_owned())],
                    &body,
                )
            }
            None => respond(w, head, 404, &[], &errors("BLOB_UNKNOWN", "no")),
        }
    } else if let Some(r) = rest.strip_prefix("/manifests/") {
        match req.method.as_str() {
            "PUT" => {
                let d = format!("sha256:{}", sha256_hex(&req.body));
                let ct = req.headers.get("content-type").cloned().unwrap_or_default();
                s.manifests
                    .insert(format!("{name}:{r}"), (ct.clone(), req.body.clone()));
                s.manifests.insert(format!("{name}:{d}"), (ct, req.body));
                respond(w, false, 201, &[("Docker-Content-Digest", d)], b"")
            }
            _ => {
                if kn.fail_once.swap(false, Ordering::SeqCst) {
                    kn.failures_sent.fetch_add(1, Ordering::SeqCst);
                    return respond(w, head, 500, &[("Retry-After", "1".into())], b"oops");
                }
                match s.manifests.get(&format!("{name}:{r}")) {
                    Some((ct, b)) => respond(
                        w,
                        head,
                        200,
                        &[
                            ("Content-Type", ct.clone()),
                            ("Docker-Content-Digest", format!("sha256:{}", sha256_hex(b))),
                        ],
                        b,
                    ),
                    None => respond(w, head, 404, &[], &errors("MANIFEST_UNKNOWN", "no")),
                }
            }
        }
    } else {
        respond(w, head, 404, &[], b"")
    }
}

/// gzip via the system's gzip (the tests have no flate2).
fn flate2_gz(data: &[u8]) -> Vec<u8> {
    let mut c = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = c.stdin.take().unwrap();
    let d = data.to_vec();
    let t = std::thread::spawn(move || i.write_all(&d).unwrap());
    let o = c.wait_with_output().unwrap();
    t.join().unwrap();
    o.stdout
}

fn login_fake(env: &TestEnv, fake: &Fake, password: &str) -> Output {
    strata(
        env,
        &["login", &fake.host(), "-u", "bob", "--password-stdin"],
        Some(password),
    )
}

#[test]
fn registry_token_auth_refresh_retry_and_errors() {
    let fake = Fake::start("bob", "hunter2");
    let h = fake.host();
    let env = TestEnv::new();
    let name = format!("{h}/bob/app:1");
    let id = add_layered_image(&env, &[rootfs_tar(""), files_tar(&[("x", b"y")])], &name);

    // Anonymous: the token realm refuses.
    fails(&env, &["push", &name], "unauthorized");
    // Wrong password: refused by the token server, nothing saved.
    let o = login_fake(&env, &fake, "nope");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("wrong user or password"), "{err}");
    assert!(login_fake(&env, &fake, "hunter2").status.success());

    // Tokens "expire" on the server after 3 requests: the client fetches new ones.
    fake.knobs.token_uses.store(3, Ordering::SeqCst);
    let p = json(&env, &["push", &name]);
    assert_eq!(statuses(&p), ["pushed", "pushed"]);
    assert!(
        fake.state.lock().unwrap().tokens_issued >= 3,
        "tokens were not refreshed"
    );

    // A 500 once (with Retry-After): the pull retries and succeeds.
    fake.knobs.fail_once.store(true, Ordering::SeqCst);
    let dst = TestEnv::new();
    dst.path("home");
    std::fs::create_dir_all(dst.path("home/.config/strata")).unwrap();
    std::fs::copy(
        env.path("home/.config/strata/auth.json"),
        dst.path("home/.config/strata/auth.json"),
    )
    .unwrap();
    let r = json(&dst, &["pull", &name]);
    assert_eq!(r["image_id"], id.as_str());
    assert_eq!(fake.knobs.failures_sent.load(Ordering::SeqCst), 1);

    // A blob that is not what the manifest says: refused, nothing stored, store clean.
    fake.knobs.corrupt_blobs.store(true, Ordering::SeqCst);
    let bad = TestEnv::new();
    std::fs::create_dir_all(bad.path("home/.config/strata")).unwrap();
    std::fs::copy(
        env.path("home/.config/strata/auth.json"),
        bad.path("home/.config/strata/auth.json"),
    )
    .unwrap();
    let err = fails(&bad, &["pull", &name], "layer");
    assert!(
        err.contains("not what the registry announced") || err.contains("digest mismatch"),
        "{err}"
    );
    let imgs = json(&bad, &["images"]);
    assert_eq!(imgs.as_array().unwrap().len(), 0, "{imgs}");
    bad.fsck_clean();
    let blobs_dir = bad.root().join("blobs/sha256");
    assert!(
        !blobs_dir.exists() || std::fs::read_dir(&blobs_dir).unwrap().count() == 0,
        "a refused blob was kept"
    );
    fake.knobs.corrupt_blobs.store(false, Ordering::SeqCst);

    // No permission to push to this name: a clear error.
    let forbidden = format!("{h}/forbidden/app:1");
    ok(&env, &["tag", &name, &forbidden]);
    let err = fails(&env, &["push", &forbidden], "denied");
    assert!(err.contains("no permission"), "{err}");
}

#[test]
fn registry_missing_image_and_platform_errors() {
    let fake = Fake::start("bob", "pw");
    let env = TestEnv::new();
    assert!(login_fake(&env, &fake, "pw").status.success());
    fails(
        &env,
        &["pull", &format!("{}/no/such:tag", fake.host())],
        "MANIFEST_UNKNOWN",
    );
    fails(
        &env,
        &["push", &format!("{}/not/local:1", fake.host())],
        "tag the image",
    );
}

/// `skopeo inspect --raw` of a pushed manifest: the layers' media types.
fn pushed_layer_types(reference: &str) -> Vec<String> {
    let o = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_owned())
        .collect()
}

/// A small two-layer image tagged `name`; returns its ID.
fn small_image(env: &TestEnv, name: &str) -> String {
    let base = rootfs_tar("");
    let top = files_tar(&[("app/", b""), ("app/file", b"small image\n")]);
    add_layered_image(env, &[base, top], name)
}

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

#[test]
fn rootless_registry_push_honours_an_explicit_compression() {
    if !registry_available() || !skopeo_available() {
        return;
    }
    let reg = Registry::start(None, None);
    let h = reg.host();
    let env = TestEnv::new();
    let id = small_image(&env, &format!("{h}/comp/app:gzip"));
    // Default: gzip.
    ok(&env, &["push", &format!("{h}/comp/app:gzip")]);
    assert_eq!(
        pushed_layer_types(&format!("{h}/comp/app:gzip")),
        [GZIP_LAYER; 2]
    );
    // The store now has gzip blobs of both layers: --compression zstd still makes zstd.
    for (tag, flag, want) in [
        ("zstd", "zstd", ZSTD_LAYER),
        ("gzip-again", "gzip", GZIP_LAYER),
    ] {
        let r = format!("{h}/comp/app:{tag}");
        ok(&env, &["tag", &format!("{h}/comp/app:gzip"), &r]);
        ok(&env, &["push", "--compression", flag, &r]);
        assert_eq!(pushed_layer_types(&r), [want; 2], "{flag}");
    }
    // Without the flag, a blob already made is reused (here: either kind is fine).
    let r = format!("{h}/comp/app:default");
    ok(&env, &["tag", &format!("{h}/comp/app:gzip"), &r]);
    ok(&env, &["push", &r]);
    // Docker manifests carry gzip only.
    fails(
        &env,
        &[
            "push",
            "--compression",
            "zstd",
            "--manifest-type",
            "docker",
            &r,
        ],
        "--compression zstd needs an OCI manifest",
    );

    // A pulled image keeps its gzip blobs; --compression zstd recompresses them, and what
    // went up pulls back as the same image.
    let pulled = TestEnv::new();
    ok(&pulled, &["pull", &format!("{h}/comp/app:gzip")]);
    let again = format!("{h}/other/app:zstd");
    ok(&pulled, &["tag", &format!("{h}/comp/app:gzip"), &again]);
    let p = json(&pulled, &["push", "--compression", "zstd", &again]);
    assert_eq!(statuses(&p), ["pushed", "pushed"], "{p}");
    assert_eq!(pushed_layer_types(&again), [ZSTD_LAYER; 2]);
    // A default push of the pulled image sends the kept gzip bytes as they came.
    let kept = format!("{h}/other/app:kept");
    ok(&pulled, &["tag", &format!("{h}/comp/app:gzip"), &kept]);
    ok(&pulled, &["push", &kept]);
    assert_eq!(pushed_layer_types(&kept), [GZIP_LAYER; 2]);
    let fresh = TestEnv::new();
    let r = json(&fresh, &["pull", &again]);
    assert_eq!(r["image_id"], id.as_str());
    fresh.fsck_clean();
}

/// The value after `prefix` on the line of `out` that starts with it.
fn line_value<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {out}"))
        .trim()
}

#[test]
fn rootless_registry_pull_by_digest_works_with_every_command() {
    if !registry_available() {
        return;
    }
    let reg = Registry::start(None, None);
    let h = reg.host();
    let repo = format!("{h}/dig/app");
    let src = TestEnv::new();
    let runnable = have_runtime_and_busybox();
    let id = match busybox_tar().filter(|_| runnable) {
        Some(bb) => add_layered_image(
            &src,
            &[
                bb,
                files_tar(&[("app/", b""), ("app/file", b"by digest\n")]),
            ],
            &format!("{repo}:1"),
        ),
        None => small_image(&src, &format!("{repo}:1")),
    };
    let pushed = json(&src, &["push", &format!("{repo}:1")]);
    let mdigest = pushed["manifest_digest"].as_str().unwrap().to_owned();
    // The pushing store knows the image by its digest in that repository too.
    let by_digest = format!("{repo}@{mdigest}");
    let insp = json(&src, &["inspect", &by_digest]);
    assert_eq!(insp["id"], id.as_str());
    assert_eq!(insp["repo_digests"][0], by_digest.as_str(), "{insp}");

    let env = TestEnv::new();
    let out = ok(&env, &["pull", &by_digest]);
    assert_eq!(line_value(&out, "Digest:"), mdigest, "{out}");
    assert_eq!(line_value(&out, "Image ID:"), id, "{out}");
    assert_eq!(out.lines().last().unwrap(), by_digest, "{out}");
    // Every reference the pull printed works with every command.
    for r in [
        by_digest.clone(),
        format!("{repo}@{}", line_value(&out, "Digest:")),
        id.clone(),
    ] {
        let insp = json(&env, &["inspect", &r]);
        assert_eq!(insp["id"], id.as_str(), "{r}");
        assert_eq!(insp["repo_tags"], serde_json::json!([]), "{r}");
        assert_eq!(insp["repo_digests"], serde_json::json!([by_digest]), "{r}");
        ok(&env, &["history", &r]);
        let saved = env.path("saved.tar");
        ok(&env, &["save", "-o", saved.to_str().unwrap(), &r]);
        ok(&env, &["container", "create", &r, "--name", "c1"]);
        ok(&env, &["container", "rm", "c1"]);
        if runnable {
            let o = ok(&env, &["run", "--rm", &r, "cat", "/app/file"]);
            assert_eq!(o, "by digest\n", "{r}");
        }
    }
    // Untagged, known by digest: docker's `images` rows.
    let rows = ok(&env, &["images", "--digests"]);
    assert!(rows.starts_with("REPOSITORY"), "{rows}");
    let row: Vec<&str> = rows.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..4],
        [repo.as_str(), "<none>", &mdigest, &id[7..19]],
        "{rows}"
    );
    let plain = ok(&env, &["images"]);
    let row: Vec<&str> = plain.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], [repo.as_str(), "<none>", &id[7..19]], "{plain}");
    let listed = json(&env, &["images"]);
    assert_eq!(listed[0]["repo_digests"], serde_json::json!([by_digest]));

    // tag from the digest reference, then the digest goes by name and the tag stays.
    ok(&env, &["tag", &by_digest, &format!("{repo}:copy")]);
    let rows = ok(&env, &["images", "--digests"]);
    assert!(
        rows.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq([repo.as_str(), "copy", &mdigest])),
        "{rows}"
    );
    let rm = ok(&env, &["rmi", &by_digest]);
    assert_eq!(rm, format!("Untagged: {by_digest}\n"));
    let insp = json(&env, &["inspect", &format!("{repo}:copy")]);
    assert_eq!(insp["repo_digests"], serde_json::json!([]));
    env.fails(&["inspect", &by_digest], "not found");

    // Pulled by digest again (its layers are there), then the last tag of the repository
    // takes the repository's digests with it, and the image goes (docker's rmi).
    let again = json(&env, &["pull", &by_digest]);
    assert_eq!(statuses(&again), ["already_exists", "already_exists"]);
    let rm = ok(&env, &["rmi", &format!("{repo}:copy")]);
    assert_eq!(
        rm,
        format!("Untagged: {repo}:copy\nUntagged: {by_digest}\nDeleted: {id}\n")
    );
    assert_eq!(json(&env, &["images"]), serde_json::json!([]));

    // Pulled by tag: the digest is recorded too, and one tag plus its repository's digest
    // is one reference, so rmi by ID needs no --force.
    let out = ok(&env, &["pull", &format!("{repo}:1")]);
    assert_eq!(line_value(&out, "Digest:"), mdigest);
    assert_eq!(out.lines().last().unwrap(), format!("{repo}:1"));
    let insp = json(&env, &["inspect", &format!("{repo}:1")]);
    assert_eq!(insp["repo_tags"], serde_json::json!([format!("{repo}:1")]));
    assert_eq!(insp["repo_digests"], serde_json::json!([by_digest]));
    let rows = ok(&env, &["images", "--digests"]);
    assert!(
        rows.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq([repo.as_str(), "1", &mdigest])),
        "{rows}"
    );
    // save by tag writes the tag (never the digest) into the archive.
    let saved = env.path("tagged.tar");
    ok(
        &env,
        &["save", "-o", saved.to_str().unwrap(), &format!("{repo}:1")],
    );
    let o = Command::new("tar")
        .arg("-xOf")
        .arg(&saved)
        .arg("manifest.json")
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!([format!("{repo}:1")])
    );
    let rm = ok(&env, &["rmi", &id[7..19]]);
    assert!(rm.contains(&format!("Untagged: {by_digest}")), "{rm}");
    assert!(rm.ends_with(&format!("Deleted: {id}\n")), "{rm}");
    env.fsck_clean();
}
