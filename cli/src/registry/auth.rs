//! Credentials and auth challenges.
//!
//! strata's own file is `$XDG_CONFIG_HOME/strata/auth.json` (default `~/.config/strata/`),
//! in the `{"auths":{"<host>":{"auth":"<base64(user:password)>"}}}` format Docker and the
//! containers tools share; it is written atomically (temp file, fsync, rename) with mode 0600,
//! in a directory of mode 0700, and other keys in it are kept. Every change is a
//! read-modify-write under an exclusive `flock` of `auth.json.lock` beside it, so concurrent
//! `login`s and `logout`s all land (without it one of two concurrent logins was lost). Lookups also read `$REGISTRY_AUTH_FILE`, containers'
//! `$XDG_RUNTIME_DIR/containers/auth.json` and Docker's `$DOCKER_CONFIG/config.json`
//! (default `~/.docker/config.json`), in that order after our own file. Keys may be a bare
//! host, a URL (`https://host/v1/`) or, for Docker Hub, `https://index.docker.io/v1/`.
//! Credential helpers (`credsStore`, `credHelpers`) are not run.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Docker Hub's registry name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The key Docker's `config.json` uses for Docker Hub.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
/// Mode of the credentials file (and its lock file): it holds passwords.
const AUTH_FILE_MODE: u32 = 0o600;
/// Mode of strata's config directory when strata creates it: only its owner lists it.
const AUTH_DIR_MODE: u32 = 0o700;
/// Suffix of the lock file beside the credentials file (`auth.json.lock`).
const LOCK_SUFFIX: &str = ".lock";

/// A user name and password (or token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
}

impl Credentials {
    /// `base64(user:password)`.
    pub fn basic(&self) -> String {
        B64.encode(format!("{}:{}", self.user, self.password))
    }
}

/// strata's credentials file.
///
/// # Errors
/// Neither `XDG_CONFIG_HOME` nor `HOME` is set.
pub fn auth_file() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("strata/auth.json"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("neither XDG_CONFIG_HOME nor HOME is set: cannot locate the credentials file")?;
    Ok(PathBuf::from(home).join(".config/strata/auth.json"))
}

/// Every file credentials are read from, strata's first.
fn read_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(p) = auth_file() {
        v.push(p);
    }
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        v.push(PathBuf::from(p));
    }
    if let Some(r) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        v.push(PathBuf::from(r).join("containers/auth.json"));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        v.push(PathBuf::from(d).join("config.json"));
    } else if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        v.push(PathBuf::from(h).join(".docker/config.json"));
    }
    v
}

/// The registry part of an auths key: `https://host/v1/` → `host`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Normalises a registry name for lookups: Docker Hub's aliases become `docker.io`.
pub fn normalize_registry(r: &str) -> String {
    let h = key_host(r);
    match h {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => h.to_owned(),
    }
}

fn decode_entry(v: &serde_json::Value) -> Option<Credentials> {
    if let Some(a) = v
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|s| !s.is_empty())
    {
        let raw = B64.decode(a.trim()).ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        return Some(Credentials {
            user: u.to_owned(),
            password: p.to_owned(),
        });
    }
    let u = v.get("username")?.as_str()?;
    let p = v.get("password")?.as_str()?;
    Some(Credentials {
        user: u.to_owned(),
        password: p.to_owned(),
    })
}

fn lookup_in(doc: &serde_json::Value, registry: &str) -> Option<Credentials> {
    let auths = doc.get("auths")?.as_object()?;
    let want = normalize_registry(registry);
    // An exact key first, then any key naming the same host.
    if let Some(c) = auths.get(registry).and_then(decode_entry) {
        return Some(c);
    }
    auths
        .iter()
        .find(|(k, _)| normalize_registry(k) == want)
        .and_then(|(_, v)| decode_entry(v))
}

/// Credentials for `registry` from the first file that has them, with the file's path.
pub fn lookup(registry: &str) -> Option<(Credentials, PathBuf)> {
    for p in read_files() {
        let Ok(bytes) = fs::read(&p) else { continue };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if let Some(c) = lookup_in(&doc, registry) {
            return Some((c, p));
        }
    }
    None
}

fn read_doc(p: &Path) -> Result<serde_json::Value> {
    match fs::read(p) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(serde_json::json!({})),
        Ok(b) => serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is not valid JSON; fix or remove it, then log in again",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({})),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Creates the credentials file's directory: parents as usual, the directory itself 0700.
fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(AUTH_DIR_MODE).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r.with_context(|| format!("creating {}", dir.display())),
    }
}

/// Runs `change` on the credentials file's document under an exclusive lock, and writes the
/// result when `change` returns true: no other strata reads the file between the read and the
/// write, so concurrent changes all land. Returns what `change` returned.
fn update(p: &Path, change: impl FnOnce(&mut serde_json::Value) -> Result<bool>) -> Result<bool> {
    let dir = p
        .parent()
        .context("credentials file has no parent directory")?;
    create_dir(dir)?;
    let mut lock_name = p.as_os_str().to_owned();
    lock_name.push(LOCK_SUFFIX);
    let lock_path = PathBuf::from(lock_name);
    let lock = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(AUTH_FILE_MODE)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let mut doc = read_doc(p)?;
    let changed = change(&mut doc)?;
    if changed {
        write_doc(p, &doc)?;
    }
    drop(lock); // closing the file releases the lock
    Ok(changed)
}

fn write_doc(p: &Path, doc: &serde_json::Value) -> Result<()> {
    let dir = p
        .parent()
        .context("credentials file has no parent directory")?;
    let tmp = dir.join(format!(".auth.json.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(AUTH_FILE_MODE)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // The mode given to open is masked by the umask; set it explicitly.
    f.set_permissions(fs::Permissions::from_mode(AUTH_FILE_MODE))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    let mut bytes = serde_json::to_vec_pretty(doc)?;
    bytes.push(b'\n');
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, p)
        .with_context(|| format!("renaming {} to {}", tmp.display(), p.display()))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all(); // the rename is durable on most filesystems anyway
    }
    Ok(())
}

/// Saves credentials for `registry` in strata's file (replacing any entry for that host).
/// Returns the file's path.
///
/// # Errors
/// I/O, an existing file that is not JSON.
pub fn save(registry: &str, c: &Credentials) -> Result<PathBuf> {
    let p = auth_file()?;
    update(&p, |doc| {
        let obj = doc
            .as_object_mut()
            .with_context(|| format!("{} is not a JSON object; fix or remove it", p.display()))?;
        let auths = obj
            .entry("auths")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .with_context(|| format!("\"auths\" in {} is not an object", p.display()))?;
        let want = normalize_registry(registry);
        auths.retain(|k, _| normalize_registry(k) != want);
        auths.insert(want, serde_json::json!({ "auth": c.basic() }));
        Ok(true)
    })?;
    Ok(p)
}

/// Removes the entry for `registry` from strata's file. Returns whether there was one.
///
/// # Errors
/// I/O, an existing file that is not JSON.
pub fn remove(registry: &str) -> Result<bool> {
    let p = auth_file()?;
    if !p.exists() {
        return Ok(false);
    }
    update(&p, |doc| {
        let want = normalize_registry(registry);
        let Some(auths) = doc.get_mut("auths").and_then(|a| a.as_object_mut()) else {
            return Ok(false);
        };
        let before = auths.len();
        auths.retain(|k, _| normalize_registry(k) != want);
        Ok(auths.len() != before)
    })
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`.
    Basic,
    /// `Bearer realm=…,service=…,scope=…`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter.
        service: Option<String>,
        /// `scope` the registry asked for, if any.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (one challenge; quoted or bare parameters).
///
/// # Errors
/// An unknown scheme or a Bearer challenge without realm.
pub fn parse_challenge(h: &str) -> Result<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = std::collections::HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((k, after)) = s.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(k, v);
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Ok(Challenge::Basic),
        "bearer" => {
            let realm = params
                .remove("realm")
                .filter(|r| !r.is_empty())
                .context("the registry's Bearer challenge has no realm")?;
            Ok(Challenge::Bearer {
                realm,
                service: params.remove("service"),
                scope: params.remove("scope"),
            })
        }
        other => bail!("the registry asks for auth scheme {other:?}, which strata does not speak"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#).unwrap(),
            Challenge::Basic
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#
            )
            .unwrap(),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            }
        );
        assert!(parse_challenge("Bearer service=x").is_err());
    }

    #[test]
    fn keys_match_hosts() {
        let doc = serde_json::json!({"auths":{
            "https://index.docker.io/v1/":{"auth":B64.encode("a:b")},
            "localhost:5000":{"auth":B64.encode("u:p:q")}
        }});
        assert_eq!(lookup_in(&doc, "docker.io").unwrap().user, "a");
        let c = lookup_in(&doc, "localhost:5000").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("u", "p:q"));
        assert!(lookup_in(&doc, "127.0.0.1:5000").is_none());
    }
}
