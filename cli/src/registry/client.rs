//! The HTTP side of the distribution API: scheme probing, auth (Basic, Bearer tokens cached
//! per realm/service/scope and refetched when expired or refused), retries on 5xx/429 that
//! honour `Retry-After`, and readable errors from the registry's `{"errors":[…]}` bodies.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use parking_lot::Mutex;
use ureq::http::{HeaderMap, Response};

use super::auth::{self, Challenge, Credentials};

/// Attempts per request on 5xx, 429 and connection errors.
const MAX_ATTEMPTS: u32 = 4;
/// First backoff; doubles per attempt.
const BACKOFF: Duration = Duration::from_millis(250);
/// Longest `Retry-After` honoured: a registry asking for more is treated as down.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// A token is refetched this long before it expires (clock skew, slow uploads).
const TOKEN_MARGIN: Duration = Duration::from_secs(5);
/// Token lifetime when the server gives none (distribution's token spec default).
const DEFAULT_TOKEN_SECS: u64 = 60;
/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest JSON document (manifest, token, error) read into memory. Registries accept
/// manifests of at least 4 MiB; allow more.
pub const MAX_DOC: u64 = 16 << 20;
/// Docker Hub's API host.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// False: accept any certificate, and fall back to plain http (`--tls-verify=false`).
    pub insecure: bool,
    /// Extra CA certificates (PEM files) to trust.
    pub ca_files: Vec<PathBuf>,
    /// Log requests to stderr.
    pub verbose: bool,
}

/// A request body that can be sent again on retry.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// No body.
    Empty,
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// `len` bytes of a file from `offset`.
    File {
        /// The file.
        file: &'a File,
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
    },
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    expires: Instant,
}

/// A client of one registry.
#[derive(Debug)]
pub struct Client {
    registry: String,
    host: String,
    agent: ureq::Agent,
    creds: Option<Credentials>,
    creds_from: Option<PathBuf>,
    insecure: bool,
    verbose: bool,
    base: Mutex<Option<String>>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<(String, String, String), Token>>,
}

/// True for hosts that are this machine (Docker treats these as insecure registries).
pub fn is_loopback(host: &str) -> bool {
    let h = host
        .rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Seconds of a `Retry-After` header (delta-seconds form; HTTP dates fall back to backoff).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    header(h, "retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl Client {
    /// A client for `registry` (as in references: `docker.io`, `127.0.0.1:5000`), with the
    /// credentials found for it, if any.
    ///
    /// # Errors
    /// An unreadable CA file.
    pub fn new(registry: &str, opts: &ClientOptions) -> Result<Client> {
        let registry = auth::normalize_registry(registry);
        let host = if registry == auth::DOCKER_HUB {
            DOCKER_HUB_API.to_owned()
        } else {
            registry.clone()
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if opts.insecure {
            tls = tls.disable_verification(true);
        } else if !opts.ca_files.is_empty() {
            let mut certs = Vec::new();
            for f in &opts.ca_files {
                let pem = std::fs::read(f)
                    .with_context(|| format!("reading CA certificates {}", f.display()))?;
                for item in ureq::tls::parse_pem(&pem) {
                    if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                        certs.push(c);
                    }
                }
            }
            if certs.is_empty() {
                bail!(
                    "no PEM certificate found in {}",
                    opts.ca_files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls.build())
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .max_redirects(10)
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(16)
            .build()
            .into();
        let (creds, creds_from) = match auth::lookup(&registry) {
            Some((c, p)) => (Some(c), Some(p)),
            None => (None, None),
        };
        Ok(Client {
            registry,
            host,
            agent,
            creds,
            creds_from,
            insecure: opts.insecure,
            verbose: opts.verbose,
            base: Mutex::new(None),
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the credentials (login checks new ones before saving them).
    pub fn set_credentials(&mut self, c: Option<Credentials>) {
        self.creds = c;
        self.creds_from = None;
    }

    /// The registry name.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Whether credentials are known.
    pub fn has_credentials(&self) -> bool {
        self.creds.is_some()
    }

    fn log(&self, msg: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("registry: {}", msg());
        }
    }

    fn login_hint(&self) -> String {
        format!("run 'strata login {}'", self.registry)
    }

    /// `scheme://host`, probing https first (`GET /v2/`), then http for `--tls-verify=false`
    /// and loopback registries. The probe's challenge is remembered.
    ///
    /// # Errors
    /// The registry cannot be reached.
    pub fn base(&self) -> Result<String> {
        if let Some(b) = self.base.lock().clone() {
            return Ok(b);
        }
        let https = format!("https://{}", self.host);
        let first = self.probe(&https);
        let base = match first {
            Ok(()) => https,
            Err(e) if self.insecure || is_loopback(&self.host) => {
                let http = format!("http://{}", self.host);
                self.log(|| format!("https failed ({e:#}); trying {http}"));
                match self.probe(&http) {
                    Ok(()) => http,
                    Err(e2) => {
                        return Err(e2.context(format!(
                            "cannot reach registry {} over https ({e:#}) nor plain http; for a \
                             private CA give --ca-file FILE (or --tls-verify=false)",
                            self.registry
                        )));
                    }
                }
            }
            Err(e) => {
                return Err(e.context(format!(
                    "cannot reach registry {} over https; for a plain-http registry add \
                     --tls-verify=false, for a private CA give --ca-file FILE",
                    self.registry
                )));
            }
        };
        *self.base.lock() = Some(base.clone());
        Ok(base)
    }

    fn probe(&self, base: &str) -> Result<()> {
        let url = format!("{base}/v2/");
        let mut attempt = 0;
        loop {
            match self.agent.get(&url).call() {
                Ok(r) => {
                    let st = r.status().as_u16();
                    if (st == 429 || st >= 500) && attempt + 1 < MAX_ATTEMPTS {
                        attempt += 1;
                        std::thread::sleep(
                            retry_after(r.headers())
                                .unwrap_or(BACKOFF * 2u32.pow(attempt))
                                .min(MAX_RETRY_AFTER),
                        );
                        continue;
                    }
                    if st == 401
                        && let Some(h) = header(r.headers(), "www-authenticate")
                    {
                        *self.challenge.lock() = Some(auth::parse_challenge(h)?);
                    }
                    let is_registry = st == 200
                        || st == 401
                        || header(r.headers(), "docker-distribution-api-version").is_some();
                    if !is_registry {
                        bail!(
                            "{url} answered HTTP {st}: not a registry (distribution API v2) \
                             on this scheme"
                        );
                    }
                    return Ok(());
                }
                Err(e) => return Err(anyhow!(e).context(format!("GET {url}"))),
            }
        }
    }

    /// Checks that the registry accepts the client's credentials (or anonymous access):
    /// `GET /v2/`, answering its challenge.
    ///
    /// # Errors
    /// Wrong credentials ("unauthorized: …"), an unreachable registry.
    pub fn check_login(&self) -> Result<()> {
        let base = self.base()?;
        let r = self.request(
            "GET",
            &format!("{base}/v2/"),
            &[],
            Payload::Empty,
            &[],
            true,
        )?;
        let st = r.status().as_u16();
        if st == 200 {
            return Ok(());
        }
        Err(self.error_of(r, &format!("checking the login at {}", self.registry)))
    }

    fn token_key(
        realm: &str,
        service: &Option<String>,
        scopes: &[String],
    ) -> (String, String, String) {
        (
            realm.to_owned(),
            service.clone().unwrap_or_default(),
            scopes.join(" "),
        )
    }

    /// The `Authorization` value for a request, fetching a token if needed. Returns it and
    /// whether a cached token was used (so a 401 may mean it expired).
    fn authorization(&self, scopes: &[String], force_new: bool) -> Result<Option<(String, bool)>> {
        let ch = self.challenge.lock().clone();
        match ch {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self
                .creds
                .as_ref()
                .map(|c| (format!("Basic {}", c.basic()), false))),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let mut all: Vec<String> = scopes.to_vec();
                if let Some(s) = scope
                    && !all.contains(&s)
                    && scopes.is_empty()
                {
                    all.push(s);
                }
                let key = Self::token_key(&realm, &service, &all);
                if !force_new
                    && let Some(t) = self.tokens.lock().get(&key)
                    && t.expires > Instant::now() + TOKEN_MARGIN
                {
                    return Ok(Some((format!("Bearer {}", t.value), true)));
                }
                let t = self.fetch_token(&realm, service.as_deref(), &all)?;
                let v = format!("Bearer {}", t.value);
                self.tokens.lock().insert(key, t);
                Ok(Some((v, false)))
            }
        }
    }

    fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<Token> {
        let build = || {
            let mut req = self.agent.get(realm);
            if let Some(s) = service {
                req = req.query("service", s);
            }
            for s in scopes {
                req = req.query("scope", s);
            }
            if let Some(c) = &self.creds {
                req = req.header("Authorization", &format!("Basic {}", c.basic()));
            }
            req
        };
        self.log(|| format!("GET {realm} (token for {scopes:?})"));
        let mut attempt = 0;
        let mut r = loop {
            let r = build()
                .call()
                .map_err(|e| anyhow!(e).context(format!("fetching a token from {realm}")))?;
            let st = r.status().as_u16();
            if (st == 429 || st >= 500) && attempt + 1 < MAX_ATTEMPTS {
                attempt += 1;
                std::thread::sleep(
                    retry_after(r.headers())
                        .unwrap_or(BACKOFF * 2u32.pow(attempt))
                        .min(MAX_RETRY_AFTER),
                );
                continue;
            }
            break r;
        };
        let st = r.status().as_u16();
        if st == 401 || st == 403 {
            if self.creds.is_some() {
                bail!(
                    "unauthorized: wrong user or password for {} (token server {realm} refused \
                     them{}); {}",
                    self.registry,
                    self.creds_from
                        .as_ref()
                        .map(|p| format!(", credentials from {}", p.display()))
                        .unwrap_or_default(),
                    self.login_hint()
                );
            }
            bail!(
                "unauthorized: the token server {realm} of {} refuses anonymous access; {}",
                self.registry,
                self.login_hint()
            );
        }
        if st != 200 {
            bail!("token server {realm} answered HTTP {st}");
        }
        #[derive(serde::Deserialize)]
        struct Resp {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let body = r
            .body_mut()
            .with_config()
            .limit(MAX_DOC)
            .read_to_vec()
            .with_context(|| format!("reading the token from {realm}"))?;
        let resp: Resp = serde_json::from_slice(&body)
            .with_context(|| format!("the token server {realm} sent no JSON"))?;
        let value = resp
            .token
            .or(resp.access_token)
            .filter(|t| !t.is_empty())
            .with_context(|| format!("the token server {realm} sent no token"))?;
        let secs = resp.expires_in.unwrap_or(DEFAULT_TOKEN_SECS);
        Ok(Token {
            value,
            expires: Instant::now() + Duration::from_secs(secs),
        })
    }

    fn send_once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        payload: Payload<'_>,
        authz: Option<&str>,
    ) -> Result<Response<ureq::Body>, ureq::Error> {
        let mut b = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(a) = authz {
            b = b.header("Authorization", a);
        }
        match payload {
            Payload::Empty => {
                if matches!(method, "PUT" | "POST" | "PATCH") {
                    b = b.header("Content-Length", "0");
                }
                let req = b.body(()).map_err(ureq::Error::from)?;
                self.agent.run(req)
            }
            Payload::Bytes(data) => {
                let req = b.body(data).map_err(ureq::Error::from)?;
                self.agent.run(req)
            }
            Payload::File { file, offset, len } => {
                let mut f = file.try_clone()?;
                f.seek(SeekFrom::Start(offset))?;
                let mut r = std::io::BufReader::with_capacity(1 << 20, f).take(len);
                b = b.header("Content-Length", len.to_string());
                let req = b
                    .body(ureq::SendBody::from_reader(&mut r))
                    .map_err(ureq::Error::from)?;
                self.agent.run(req)
            }
        }
    }

    /// Sends a request with auth: answers a 401 challenge (once with fresh credentials or
    /// token, once more when a cached token may have expired) and, with `retry`, retries
    /// 5xx/429 (after `Retry-After` or a backoff) and connection errors. Other statuses are
    /// returned for the caller to judge.
    ///
    /// # Errors
    /// Connection errors after retries, a 401 that credentials cannot answer.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        payload: Payload<'_>,
        scopes: &[String],
        retry: bool,
    ) -> Result<Response<ureq::Body>> {
        let mut attempt = 0u32;
        let mut auth_rounds = 0u32;
        let mut force_new = false;
        loop {
            let authz = self.authorization(scopes, force_new)?;
            force_new = false;
            self.log(|| format!("{method} {url}"));
            let r = self.send_once(
                method,
                url,
                headers,
                payload,
                authz.as_ref().map(|a| a.0.as_str()),
            );
            let r = match r {
                Ok(r) => r,
                Err(e) if retry && attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    self.log(|| format!("{method} {url}: {e}; retrying"));
                    std::thread::sleep(BACKOFF * 2u32.pow(attempt));
                    continue;
                }
                Err(e) => {
                    return Err(anyhow!(e).context(format!("{method} {url}")));
                }
            };
            let st = r.status().as_u16();
            if st == 401 && auth_rounds < 3 {
                let h = header(r.headers(), "www-authenticate").map(str::to_owned);
                let prev = self.challenge.lock().clone();
                if let Some(h) = h {
                    *self.challenge.lock() = Some(auth::parse_challenge(&h)?);
                }
                let now = self.challenge.lock().clone();
                let retry_auth = match (&authz, &now) {
                    // We sent nothing, or the challenge changed: answer it.
                    (None, Some(_)) => true,
                    (Some(_), Some(_)) if prev != now => true,
                    // A token was refused: it may have expired (or been used up by the
                    // server); fetch a new one.
                    (Some(_), Some(Challenge::Bearer { .. })) => {
                        force_new = true;
                        true
                    }
                    _ => false,
                };
                if retry_auth {
                    auth_rounds += 1;
                    if matches!(now, Some(Challenge::Basic)) && self.creds.is_none() {
                        return Ok(r);
                    }
                    continue;
                }
                return Ok(r);
            }
            if retry && (st == 429 || st >= 500) && attempt + 1 < MAX_ATTEMPTS {
                attempt += 1;
                let wait = retry_after(r.headers())
                    .unwrap_or(BACKOFF * 2u32.pow(attempt))
                    .min(MAX_RETRY_AFTER);
                self.log(|| format!("{method} {url}: HTTP {st}; retrying in {wait:?}"));
                std::thread::sleep(wait);
                continue;
            }
            return Ok(r);
        }
    }

    /// An error for an unexpected response: the registry's error codes and messages, with
    /// what to do for auth failures.
    pub fn error_of(&self, mut r: Response<ureq::Body>, what: &str) -> anyhow::Error {
        let st = r.status().as_u16();
        let body = r
            .body_mut()
            .with_config()
            .limit(MAX_DOC)
            .read_to_vec()
            .unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct E {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        #[derive(serde::Deserialize)]
        struct Es {
            #[serde(default)]
            errors: Vec<E>,
        }
        let errs: Vec<E> = serde_json::from_slice::<Es>(&body)
            .map(|e| e.errors)
            .unwrap_or_default();
        let detail = if errs.is_empty() {
            let t = String::from_utf8_lossy(&body);
            let t = t.trim();
            if t.is_empty() || t.len() > 200 {
                String::new()
            } else {
                format!(": {t}")
            }
        } else {
            format!(
                ": {}",
                errs.iter()
                    .map(|e| format!("{} ({})", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        let codes: Vec<&str> = errs.iter().map(|e| e.code.as_str()).collect();
        match st {
            401 if self.creds.is_some() => anyhow!(
                "unauthorized: wrong user or password for {}, or no access{detail}, while \
                 {what}; {}",
                self.registry,
                self.login_hint()
            ),
            401 => anyhow!(
                "unauthorized: {} needs a login{detail}, while {what}; {}",
                self.registry,
                self.login_hint()
            ),
            403 => anyhow!(
                "denied: no permission{detail}, while {what}; log in as a user who has access \
                 ({})",
                self.login_hint()
            ),
            _ if codes.contains(&"DENIED") => anyhow!(
                "denied: no permission{detail}, while {what}; log in as a user who has access \
                 ({})",
                self.login_hint()
            ),
            _ => anyhow!(
                "registry {} answered HTTP {st}{detail}, while {what}",
                self.registry
            ),
        }
    }

    /// Reads a small document body (manifest, config) with a size cap.
    ///
    /// # Errors
    /// I/O, a body over [`MAX_DOC`].
    pub fn read_doc(r: &mut Response<ureq::Body>, limit: u64) -> Result<Vec<u8>> {
        Ok(r.body_mut().with_config().limit(limit).read_to_vec()?)
    }

    /// Resolves a `Location` header against the registry's base URL.
    pub fn absolute(&self, base: &str, loc: &str) -> String {
        if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_owned()
        } else if loc.starts_with('/') {
            format!("{base}{loc}")
        } else {
            format!("{base}/{loc}")
        }
    }
}

/// A header's value.
pub fn get_header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    header(h, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "127.0.0.2",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["docker.io", "registry.example.com:5000", "10.0.0.1:5000"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
