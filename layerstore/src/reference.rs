//! Image references: parsing, validation and normalisation.
//!
//! This is a hand-written port of the Docker/distribution reference grammar
//! (`github.com/distribution/reference` v0.6: `reference.go`, `regexp.go`,
//! `normalize.go`, `helpers.go`), without a regex engine: every production of the
//! grammar is a small function below.
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] remote-name
//! domain           := host [':' port-number]
//! host             := domain-name | '[' IPv6address ']'
//! domain-name      := domain-component ['.' domain-component]*
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! port-number      := /[0-9]+/
//! remote-name      := path-component ['/' path-component]*
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! alpha-numeric    := /[a-z0-9]+/
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := algorithm ":" /[0-9a-fA-F]{32,}/
//! algorithm        := component [ /[+.-_]/ component ]*,  component := /[A-Za-z][A-Za-z0-9]*/
//! identifier       := /[a-f0-9]{64}/
//! ```
//!
//! [`ImageRef::parse`] behaves like docker's `ParseNormalizedNamed`: a familiar
//! name such as `ubuntu` becomes `docker.io/library/ubuntu`, `index.docker.io` is
//! rewritten to `docker.io`, and the first path component is a registry host only
//! if it contains `.` or `:`, is `localhost`, or contains uppercase letters.
//! Digests are checked like `go-digest`'s `Parse` (algorithms `sha256`, `sha384`
//! and `sha512`, lowercase hex of the exact length).
//!
//! Differences from docker, all on inputs docker itself cannot pull:
//! - an empty input reports [`ReferenceError::Empty`] (docker: "invalid reference format");
//! - a first component that looks like a host (contains `.`) but is not a valid
//!   host name, e.g. `foo_bar.com/app`, is rejected with
//!   [`ReferenceError::InvalidRegistry`]; docker returns a reference with an empty
//!   domain there.
//!
//! As in docker, [`ImageRef::familiar`] is not always unambiguous: a Docker Hub
//! repository whose first component looks like a host (`docker.io/localhost/app`,
//! `docker.io/foo.bar/app`) or a 64-hex official image name has a familiar form
//! that parses to something else. [`ImageRef`]'s `Display` form always round-trips.

use std::fmt;
use std::str::FromStr;

use rusqlite::params;

use crate::digest::Digest;
use crate::error::Error;
use crate::image::now_rfc3339;
use crate::store::{ImageRecord, Removal, Store};

/// The registry used when a reference names none (Docker Hub).
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The tag added by [`ImageRef::with_default_tag`] when a reference has neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// Legacy name of Docker Hub ("the Docker Index"); normalised to [`DEFAULT_REGISTRY`].
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";

/// Namespace of Docker Hub's official images; added to single-component Hub names.
const OFFICIAL_REPO_PREFIX: &str = "library/";

/// Host name that is always treated as a registry, even without `.` or `:`.
const LOCALHOST: &str = "localhost";

/// Maximum length of the full name (`registry/repository`), as in distribution/reference v0.6.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Maximum length of a tag.
const TAG_LENGTH_MAX: usize = 128;

/// Explanation of the reference syntax, appended to format errors.
const SYNTAX_HINT: &str = "expected [registry[:port]/]path[:tag][@algorithm:hex]";

/// Why a reference, tag or digest was rejected.
///
/// Every message names the offending input, says what is wrong and how to fix it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    /// The input was the empty string.
    #[error(
        "invalid reference \"\": an image reference must not be empty; give a name such as \
         \"ubuntu\", \"myorg/app:1.0\" or \"registry.example.com:5000/team/app\""
    )]
    Empty,

    /// The input does not follow the reference grammar; `detail` says which part is wrong.
    #[error("invalid reference {input:?}: invalid reference format: {detail}; {SYNTAX_HINT}")]
    InvalidFormat {
        /// The input as given.
        input: String,
        /// Which part of the reference is malformed and what it must look like.
        detail: &'static str,
    },

    /// The repository path contains uppercase letters.
    #[error(
        "invalid reference {input:?}: repository name must be lowercase; write the repository \
         path in lowercase letters (only the tag may contain uppercase letters)"
    )]
    Uppercase {
        /// The input as given.
        input: String,
    },

    /// The input is a bare 64-character hexadecimal string, which docker reserves for image IDs.
    #[error(
        "invalid reference {input:?}: cannot specify 64-byte hexadecimal strings as a repository \
         name; to pin an image by content write \"<name>@sha256:<hex>\""
    )]
    HexIdentifier {
        /// The input as given.
        input: String,
    },

    /// The full name `registry/repository` is longer than 255 characters.
    #[error(
        "invalid reference {input:?}: repository name must not be more than 255 characters, but \
         the full name is {length} characters long; use a shorter repository path"
    )]
    NameTooLong {
        /// The input as given.
        input: String,
        /// Length in bytes of the normalised `registry/repository`.
        length: usize,
    },

    /// A tag does not match `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error(
        "invalid tag {tag:?}: a tag must be 1 to 128 characters of letters, digits, '_', '.' or \
         '-', and must not start with '.' or '-'"
    )]
    InvalidTag {
        /// The rejected tag.
        tag: String,
    },

    /// The digest names an algorithm other than sha256, sha384 or sha512.
    #[error(
        "invalid reference {input:?}: unsupported digest algorithm {algorithm:?}; use sha256, \
         sha384 or sha512 (lowercase)"
    )]
    UnsupportedDigest {
        /// The input as given.
        input: String,
        /// The algorithm part of the digest.
        algorithm: String,
    },

    /// The digest's hex part has the wrong length for its algorithm.
    #[error(
        "invalid reference {input:?}: digest {digest:?} has {actual} hex digits but {algorithm} \
         needs {expected}; check that the digest was copied completely"
    )]
    DigestLength {
        /// The input as given.
        input: String,
        /// The digest part of the reference.
        digest: String,
        /// The digest algorithm.
        algorithm: String,
        /// Number of hex digits the algorithm requires.
        expected: usize,
        /// Number of hex digits found.
        actual: usize,
    },

    /// The digest's hex part is not lowercase hexadecimal.
    #[error(
        "invalid reference {input:?}: digest {digest:?} must be written in lowercase hexadecimal \
         digits"
    )]
    DigestFormat {
        /// The input as given.
        input: String,
        /// The digest part of the reference.
        digest: String,
    },

    /// The first component looks like a registry host (it contains a `.`) but is not a
    /// valid host name. Docker accepts these as names without a registry; we do not.
    #[error(
        "invalid reference {input:?}: {registry:?} looks like a registry host but is not a valid \
         host name (host names are letters, digits and inner '-', joined by '.', with an optional \
         \":port\"); fix the host, or drop the '.' if a Docker Hub namespace was meant"
    )]
    InvalidRegistry {
        /// The input as given.
        input: String,
        /// The rejected host.
        registry: String,
    },
}

/// A normalised image reference: registry (e.g. `docker.io`, `localhost:5000`),
/// repository path (e.g. `library/ubuntu`), optional tag and optional digest.
///
/// Values are only built by [`ImageRef::parse`] (or derived from a parsed value), so
/// every field is valid and the registry is never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses user input like docker's `ParseNormalizedNamed`.
    ///
    /// `ubuntu` becomes `docker.io/library/ubuntu`, `index.docker.io/x` becomes
    /// `docker.io/library/x`; `localhost:5000/a/b:t` and `ubuntu@sha256:<64 hex>` keep
    /// their registry, tag and digest. No default tag is added (see
    /// [`ImageRef::with_default_tag`]).
    ///
    /// # Errors
    ///
    /// Rejects empty input, a bare 64-hex string, uppercase repository paths, malformed
    /// names, tags and digests, unsupported digest algorithms, and full names
    /// (`registry/repository`) longer than 255 characters.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if is_identifier(s) {
            return Err(ReferenceError::HexIdentifier {
                input: s.to_owned(),
            });
        }
        let (domain, remainder) = split_docker_domain(s);
        // Like docker, everything before the first ':' of the remainder must be lowercase.
        let remote = remainder.split(':').next().unwrap_or_default();
        if remote.to_lowercase() != remote {
            return Err(ReferenceError::Uppercase {
                input: s.to_owned(),
            });
        }
        let raw = parse_raw(&format!("{domain}/{remainder}"), s)?;
        if raw.domain.is_empty() {
            return Err(ReferenceError::InvalidRegistry {
                input: s.to_owned(),
                registry: domain.to_owned(),
            });
        }
        Ok(ImageRef {
            registry: raw.domain,
            repository: raw.path,
            tag: raw.tag,
            digest: raw.digest,
        })
    }

    /// The registry host, with port if any (e.g. `docker.io`, `localhost:5000`, `[::1]:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry (e.g. `library/ubuntu`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (e.g. `sha256:<64 hex>`), if the reference has one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Adds the tag [`DEFAULT_TAG`] when there is neither a tag nor a digest
    /// (docker's `TagNameOnly`); otherwise returns the reference unchanged.
    #[must_use]
    pub fn with_default_tag(mut self) -> ImageRef {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_owned());
        }
        self
    }

    /// Returns a copy with the tag replaced by `tag`; a digest is kept (docker's `WithTag`).
    ///
    /// # Errors
    ///
    /// [`ReferenceError::InvalidTag`] if `tag` is not a valid tag.
    pub fn with_tag(&self, tag: &str) -> Result<ImageRef, ReferenceError> {
        validate_tag(tag)?;
        Ok(ImageRef {
            tag: Some(tag.to_owned()),
            ..self.clone()
        })
    }

    /// The canonical reference `registry/repository@digest` of this repository: the tag
    /// dropped, the digest set (docker's `WithDigest(TrimNamed(r), d)`). A repository digest.
    #[must_use]
    pub fn canonical(&self, digest: &Digest) -> ImageRef {
        ImageRef {
            tag: None,
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The full name without tag or digest: `registry/repository` (docker's `Name()`).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The familiar form, as docker's `FamiliarString`: `docker.io/` and an official
    /// image's `library/` are stripped, e.g. `ubuntu:latest`, `myorg/app:1`,
    /// `localhost:5000/a:b`, with `@digest` when present.
    pub fn familiar(&self) -> String {
        let mut out = self.familiar_name();
        push_tag_and_digest(&mut out, self.tag(), self.digest());
        out
    }

    /// The familiar name without tag or digest, as docker's `FamiliarName`: `ubuntu`,
    /// `myorg/app`, `localhost:5000/a`.
    pub fn familiar_name(&self) -> String {
        if self.registry != DEFAULT_REGISTRY {
            return self.name();
        }
        match self.repository.strip_prefix(OFFICIAL_REPO_PREFIX) {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            _ => self.repository.clone(),
        }
    }
}

impl fmt::Display for ImageRef {
    /// The fully qualified form: `registry/repository[:tag][@digest]`,
    /// e.g. `docker.io/library/ubuntu:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        push_tag_and_digest(&mut out, self.tag(), self.digest());
        f.write_str(&out)
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    /// Same as [`ImageRef::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// Validates a tag alone: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
///
/// # Errors
///
/// [`ReferenceError::InvalidTag`] naming the tag.
pub fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    if is_tag(tag) {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag {
            tag: tag.to_owned(),
        })
    }
}

/// Appends `:tag` and `@digest` when present.
fn push_tag_and_digest(out: &mut String, tag: Option<&str>, digest: Option<&str>) {
    if let Some(tag) = tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
}

// ---------------------------------------------------------------------------------------
// Normalisation (normalize.go)
// ---------------------------------------------------------------------------------------

/// Splits familiar input into registry and the rest (remote name plus any tag/digest),
/// like docker's `splitDockerDomain`. The input is not validated here.
fn split_docker_domain(s: &str) -> (&str, String) {
    let Some((maybe_domain, maybe_remote)) = s.split_once('/') else {
        // A single component ("ubuntu", "ubuntu:latest") is an official Hub image; it is
        // never read as "host:port".
        return (DEFAULT_REGISTRY, format!("{OFFICIAL_REPO_PREFIX}{s}"));
    };
    let (domain, remote) = if maybe_domain == LOCALHOST {
        (maybe_domain, maybe_remote)
    } else if maybe_domain == LEGACY_DEFAULT_REGISTRY {
        (DEFAULT_REGISTRY, maybe_remote)
    } else if maybe_domain.contains(['.', ':']) || maybe_domain.to_lowercase() != maybe_domain {
        // Looks like a host or IP ("example.com", "host:5000", "[::1]:5000"), or is not
        // lowercase, which a namespace never is.
        (maybe_domain, maybe_remote)
    } else {
        (DEFAULT_REGISTRY, s)
    };
    if domain == DEFAULT_REGISTRY && !remote.contains('/') {
        // "docker.io/ubuntu" => "docker.io/library/ubuntu", on Docker Hub only.
        return (domain, format!("{OFFICIAL_REPO_PREFIX}{remote}"));
    }
    (domain, remote.to_owned())
}

// ---------------------------------------------------------------------------------------
// Un-normalised parsing (reference.go `Parse`) and digest validation (go-digest `Parse`)
// ---------------------------------------------------------------------------------------

/// A syntactically valid reference as docker's `Parse` sees it: `domain` is empty when
/// the name has no registry part.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawReference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Parses `s` exactly as written (no normalisation), like docker's `Parse`.
/// `input` is what the user typed, used in error messages.
fn parse_raw(s: &str, input: &str) -> Result<RawReference, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let Some(caps) = match_reference(s) else {
        let lower = s.to_lowercase();
        if lower != s && match_reference(&lower).is_some() {
            return Err(ReferenceError::Uppercase {
                input: input.to_owned(),
            });
        }
        return Err(ReferenceError::InvalidFormat {
            input: input.to_owned(),
            detail: diagnose_format(s),
        });
    };
    if caps.name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::NameTooLong {
            input: input.to_owned(),
            length: caps.name.len(),
        });
    }
    let (domain, path) = split_name(caps.name).unwrap_or(("", caps.name));
    if let Some(digest) = caps.digest {
        validate_digest(digest, input)?;
    }
    Ok(RawReference {
        domain: domain.to_owned(),
        path: path.to_owned(),
        tag: caps.tag.map(str::to_owned),
        digest: caps.digest.map(str::to_owned),
    })
}

/// Checks a digest that already matches the digest pattern the way go-digest does:
/// the algorithm must be supported and the hex part lowercase and of the exact length.
fn validate_digest(digest: &str, input: &str) -> Result<(), ReferenceError> {
    let (algorithm, encoded) = digest.split_once(':').unwrap_or((digest, ""));
    let expected = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(ReferenceError::UnsupportedDigest {
                input: input.to_owned(),
                algorithm: algorithm.to_owned(),
            });
        }
    };
    if encoded.len() != expected {
        return Err(ReferenceError::DigestLength {
            input: input.to_owned(),
            digest: digest.to_owned(),
            algorithm: algorithm.to_owned(),
            expected,
            actual: encoded.len(),
        });
    }
    if !encoded.bytes().all(is_lower_hex) {
        return Err(ReferenceError::DigestFormat {
            input: input.to_owned(),
            digest: digest.to_owned(),
        });
    }
    Ok(())
}

/// Says which part of a reference that failed [`match_reference`] is malformed.
fn diagnose_format(s: &str) -> &'static str {
    let (rest, digest) = split_digest(s);
    if digest.is_some_and(|d| !is_digest_pattern(d)) {
        return "the digest after '@' must be <algorithm>:<hex digits>, e.g. sha256:<64 hex digits>";
    }
    if let (name, Some(tag)) = split_tag(rest)
        && split_name(name).is_some()
        && !is_tag(tag)
    {
        return "the tag after ':' must be 1 to 128 characters of letters, digits, '_', '.' or \
                '-', not starting with '.' or '-'";
    }
    "the name must be an optional registry host[:port] followed by '/'-separated path \
     components of lowercase letters and digits, joined by single '.', '_' or '__', or by \
     dashes, with no leading, trailing or empty components"
}

// ---------------------------------------------------------------------------------------
// Grammar (regexp.go), one function per production
// ---------------------------------------------------------------------------------------

/// The three capture groups of docker's `ReferenceRegexp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Captures<'a> {
    name: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// `reference := name [":" tag] ["@" digest]`, anchored at both ends.
///
/// Neither name nor tag can contain '@', so the digest starts after the first '@'.
/// A tag contains neither ':' nor '/', and every ':' inside a name (port, IPv6) is
/// followed by a '/', so the tag can only follow the last ':' and only when no '/'
/// comes after it: the split is unique, no backtracking is needed.
fn match_reference(s: &str) -> Option<Captures<'_>> {
    let (rest, digest) = split_digest(s);
    if digest.is_some_and(|d| !is_digest_pattern(d)) {
        return None;
    }
    let (name, tag) = split_tag(rest);
    if tag.is_some_and(|t| !is_tag(t)) {
        return None;
    }
    split_name(name)?;
    Some(Captures { name, tag, digest })
}

/// Splits off the part after the first '@' (the digest candidate).
fn split_digest(s: &str) -> (&str, Option<&str>) {
    match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    }
}

/// Splits off the part after the last ':' when it contains no '/' (the tag candidate).
fn split_tag(s: &str) -> (&str, Option<&str>) {
    match s.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (s, None),
    }
}

/// `name := [domain '/'] remote-name`, anchored; returns `(domain, remote-name)` with an
/// empty domain when there is none. Like the Go regexp (leftmost-first, greedy optional
/// group), the first component is taken as the domain whenever that yields a match.
fn split_name(name: &str) -> Option<(&str, &str)> {
    if let Some((first, rest)) = name.split_once('/')
        && is_domain_and_port(first)
        && is_remote_name(rest)
    {
        return Some((first, rest));
    }
    is_remote_name(name).then_some(("", name))
}

/// `remote-name := path-component ['/' path-component]*`.
fn is_remote_name(s: &str) -> bool {
    s.split('/').all(is_path_component)
}

/// `path-component := alpha-numeric [separator alpha-numeric]*` with
/// `alpha-numeric := [a-z0-9]+` and `separator := [_.] | __ | -+`.
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) if is_lower_alnum(first) && is_lower_alnum(last) => {}
        _ => return false,
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        if !is_separator(&b[start..i]) {
            return false;
        }
    }
    true
}

/// `separator := [_.] | __ | -+`.
fn is_separator(sep: &[u8]) -> bool {
    matches!(sep, b"." | b"_" | b"__") || (!sep.is_empty() && sep.iter().all(|&c| c == b'-'))
}

/// `domain := host [':' port-number]`, `host := domain-name | '[' IPv6address ']'`.
fn is_domain_and_port(s: &str) -> bool {
    let (host, port) = if s.starts_with('[') {
        match s.find(']') {
            Some(end) => s.split_at(end + 1),
            None => return false,
        }
    } else {
        match s.find(':') {
            Some(colon) => s.split_at(colon),
            None => (s, ""),
        }
    };
    let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(is_port_number);
    port_ok && (is_domain_name(host) || is_ipv6_literal(host))
}

/// `port-number := [0-9]+`.
fn is_port_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
}

/// `domain-name := domain-component ['.' domain-component]*`.
fn is_domain_name(s: &str) -> bool {
    s.split('.').all(is_domain_component)
}

/// `domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_domain_component(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last))
            if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() =>
        {
            b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        }
        _ => false,
    }
}

/// `\[[a-fA-F0-9:]+\]`: a bracketed IPv6 address, without zone identifier.
fn is_ipv6_literal(s: &str) -> bool {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .is_some_and(|inner| {
            !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_hexdigit() || c == b':')
        })
}

/// `tag := [\w][\w.-]{0,127}` with ASCII `\w = [A-Za-z0-9_]`.
fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    match b.first() {
        Some(&first) if is_word(first) && b.len() <= TAG_LENGTH_MAX => {
            b.iter().all(|&c| is_word(c) || c == b'.' || c == b'-')
        }
        _ => false,
    }
}

/// `digest := algorithm ':' [0-9a-fA-F]{32,}` with
/// `algorithm := [A-Za-z][A-Za-z0-9]* ([-_+.][A-Za-z][A-Za-z0-9]*)*`.
fn is_digest_pattern(s: &str) -> bool {
    let Some((algorithm, hex)) = s.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|component| {
        match component.as_bytes().split_first() {
            Some((first, rest)) => {
                first.is_ascii_alphabetic() && rest.iter().all(u8::is_ascii_alphanumeric)
            }
            None => false,
        }
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|c| c.is_ascii_hexdigit())
}

/// `identifier := [a-f0-9]{64}`: what docker treats as an image ID.
fn is_identifier(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

/// `[a-z0-9]`.
fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-f0-9]`.
fn is_lower_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
}

/// `\w` in Go's RE2 (ASCII only): `[0-9A-Za-z_]`.
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

// ## References a store holds
//
// The `tags` table holds both kinds of reference, as docker's reference store does: tags
// (`registry/repo:tag`, [`Store::tag`]) and repository digests (`registry/repo@sha256:…`, the
// digest of the manifest a registry serves the image under, recorded by pull and push).
// [`Store::resolve_image`] finds an image by either; `ImageRecord::tags` lists both, and
// [`ImageRecord::repo_tags`] / [`ImageRecord::repo_digests`] tell them apart.

impl ImageRecord {
    /// The tags of the image (docker's `RepoTags`): references without a digest.
    pub fn repo_tags(&self) -> impl Iterator<Item = &ImageRef> {
        self.tags.iter().filter(|t| t.digest().is_none())
    }

    /// The repository digests of the image (docker's `RepoDigests`): `registry/repo@digest`.
    pub fn repo_digests(&self) -> impl Iterator<Item = &ImageRef> {
        self.tags.iter().filter(|t| t.digest().is_some())
    }
}

/// Docker's `isSingleReference`: at most one tag, and every digest reference is of the tag's
/// repository (a `pull repo:tag` leaves exactly that). Such an image may be removed by ID
/// without `--force`.
fn is_single_reference(refs: &[ImageRef]) -> bool {
    let mut tags = refs.iter().filter(|r| r.digest().is_none());
    let single = match (tags.next(), tags.next()) {
        (_, Some(_)) => return false,
        (Some(t), None) => t,
        (None, None) => match refs.first() {
            Some(r) => r,
            None => return false,
        },
    };
    let mut repos: Vec<String> = refs
        .iter()
        .filter(|r| r.digest().is_some())
        .map(ImageRef::name)
        .collect();
    repos.sort();
    repos.dedup();
    if repos.is_empty() {
        return refs.len() == 1;
    }
    repos.len() == 1 && repos[0] == single.name()
}

impl Store {
    /// Records `reference` (`registry/repo@sha256:…`) as a repository digest of `image`, so
    /// every command finds the image by it. Recording it again is a no-op.
    ///
    /// # Errors
    /// A reference without a digest or with a tag; an unknown image.
    pub fn add_repo_digest(&self, image: &Digest, reference: &ImageRef) -> crate::Result<()> {
        if reference.digest().is_none() || reference.tag().is_some() {
            return Err(Error::Conflict(format!(
                "internal: {reference} is not a repository digest (registry/repo@sha256:…)"
            )));
        }
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO tags (name, image, added) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(name) DO UPDATE SET image = excluded.image",
                params![reference.to_string(), image.bytes(), now_rfc3339()],
            )
        })
        .map_err(crate::store::image_missing(image))?;
        Ok(())
    }

    /// [`Store::remove_image`] with docker's rules for repository digests (`docker rmi`):
    /// removing the last tag of a repository from an image removes that repository's digests
    /// too (then the image goes when nothing else refers to it), and an image whose references
    /// are one tag and digests of its repository is removed by ID without `force`.
    ///
    /// # Errors
    /// As [`Store::remove_image`].
    pub fn remove_image_and_digests(&self, s: &str, force: bool) -> crate::Result<Vec<Removal>> {
        let rec = self.resolve_image(s)?;
        let named = ImageRef::parse(s)
            .ok()
            .map(|r| {
                if r.digest().is_some() {
                    r
                } else {
                    r.with_default_tag()
                }
            })
            .filter(|r| rec.tags.contains(r));
        let single = is_single_reference(&rec.tags);
        let Some(r) = named else {
            // By ID.
            return self.remove_image(s, force || single);
        };
        if r.digest().is_some() {
            return self.remove_image(s, force);
        }
        let last_tag_of_repo = !rec.repo_tags().any(|t| t != &r && t.name() == r.name());
        let digests: Vec<ImageRef> = rec
            .repo_digests()
            .filter(|d| last_tag_of_repo && d.name() == r.name())
            .cloned()
            .collect();
        if digests.is_empty() {
            return self.remove_image(s, force);
        }
        let users = self.containers_of(&rec.id)?;
        if !force && single && !users.is_empty() {
            return Err(Error::Conflict(format!(
                "conflict: unable to remove repository reference {:?} (must force) - container \
                 {} is using its referenced image {}",
                r.familiar(),
                users.join(", "),
                rec.id.short()
            )));
        }
        // Untags `r`; the image stays, its digests still refer to it.
        let mut out = self.remove_image(s, force)?;
        for d in &digests {
            self.with_tx(|tx| tx.execute("DELETE FROM tags WHERE name = ?1", [d.to_string()]))?;
            out.push(Removal::Untagged(d.familiar()));
        }
        let children: i64 = self.with_conn(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM images WHERE parent = ?1",
                [rec.id.bytes()],
                |r| r.get(0),
            )
        })?;
        let now = self.resolve_image(&rec.id.to_string())?;
        if now.tags.is_empty() && children == 0 && users.is_empty() {
            out.extend(self.remove_image(&rec.id.to_string(), false)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_F: &str =
        "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    const SHA256_BE: &str =
        "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912";
    const SHA256_DB: &str =
        "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";
    const SHA256_86: &str =
        "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";
    const SHA256_E6: &str =
        "sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582";

    /// Error kinds, to compare errors without their messages.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Empty,
        Format,
        Uppercase,
        Hex,
        TooLong,
        Tag,
        DigestUnsupported,
        DigestLength,
        DigestFormat,
        Registry,
    }

    fn kind(e: &ReferenceError) -> Kind {
        match e {
            ReferenceError::Empty => Kind::Empty,
            ReferenceError::InvalidFormat { .. } => Kind::Format,
            ReferenceError::Uppercase { .. } => Kind::Uppercase,
            ReferenceError::HexIdentifier { .. } => Kind::Hex,
            ReferenceError::NameTooLong { .. } => Kind::TooLong,
            ReferenceError::InvalidTag { .. } => Kind::Tag,
            ReferenceError::UnsupportedDigest { .. } => Kind::DigestUnsupported,
            ReferenceError::DigestLength { .. } => Kind::DigestLength,
            ReferenceError::DigestFormat { .. } => Kind::DigestFormat,
            ReferenceError::InvalidRegistry { .. } => Kind::Registry,
        }
    }

    fn parse(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    // ----- regexp_test.go -----

    #[test]
    fn domain_regexp() {
        let cases: &[(&str, bool)] = &[
            ("test.com", true),
            ("test.com:10304", true),
            ("test.com:http", false),
            ("localhost", true),
            ("localhost:8080", true),
            ("a", true),
            ("a.b", true),
            ("ab.cd.com", true),
            ("a-b.com", true),
            ("-ab.com", false),
            ("ab-.com", false),
            ("ab.c-om", true),
            ("ab.-com", false),
            ("ab.com-", false),
            ("0101.com", true),
            ("001a.com", true),
            ("b.gbc.io:443", true),
            ("b.gbc.io", true),
            ("xn--n3h.com", true),
            ("Asdf.com", true),
            ("192.168.1.1:75050", true),
            ("192.168.1.1:750050", true),
            ("[fd00:1:2::3]:75050", true),
            ("[fd00:1:2::3]75050", false),
            ("[fd00:1:2::3]::75050", false),
            ("[fd00:1:2::3%eth0]:75050", false),
            ("[fd00123123123]:75050", true),
            ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050", true),
            ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:750505", true),
            ("fd00:1:2::3:75050", false),
            // Extra edge cases of the hand-written matcher.
            ("", false),
            ("[]", false),
            ("[::1]:", false),
            ("test.com:", false),
            ("test..com", false),
            ("test.com.", false),
        ];
        for &(input, want) in cases {
            assert_eq!(is_domain_and_port(input), want, "domain {input:?}");
        }
    }

    #[test]
    fn full_name_regexp() {
        let a128 = format!("{}a", "a/".repeat(128));
        let a127 = format!("{}a", "a/".repeat(127));
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("", None),
            ("short", Some(("", "short"))),
            ("simple/name", Some(("simple", "name"))),
            ("library/ubuntu", Some(("library", "ubuntu"))),
            ("docker/stevvooe/app", Some(("docker", "stevvooe/app"))),
            (
                "aa/aa/aa/aa/aa/aa/aa/aa/aa/bb/bb/bb/bb/bb/bb",
                Some(("aa", "aa/aa/aa/aa/aa/aa/aa/aa/bb/bb/bb/bb/bb/bb")),
            ),
            ("aa/aa/bb/bb/bb", Some(("aa", "aa/bb/bb/bb"))),
            ("a/a/a/a", Some(("a", "a/a/a"))),
            ("a/a/a/a/", None),
            ("a//a/a", None),
            ("a", Some(("", "a"))),
            ("a/aa", Some(("a", "aa"))),
            ("a/aa/a", Some(("a", "aa/a"))),
            ("foo.com", Some(("", "foo.com"))),
            ("foo.com/", None),
            ("foo.com:8080/bar", Some(("foo.com:8080", "bar"))),
            ("foo.com:http/bar", None),
            ("foo.com/bar", Some(("foo.com", "bar"))),
            ("foo.com/bar/baz", Some(("foo.com", "bar/baz"))),
            ("localhost:8080/bar", Some(("localhost:8080", "bar"))),
            (
                "sub-dom1.foo.com/bar/baz/quux",
                Some(("sub-dom1.foo.com", "bar/baz/quux")),
            ),
            ("blog.foo.com/bar/baz", Some(("blog.foo.com", "bar/baz"))),
            ("a^a", None),
            ("aa/asdf$$^/aa", None),
            ("asdf$$^/aa", None),
            ("aa-a/a", Some(("aa-a", "a"))),
            (&a128, Some(("a", &a127))),
            ("a-/a/a/a", None),
            ("foo.com/a-/a/a", None),
            ("-foo/bar", None),
            ("foo/bar-", None),
            ("foo-/bar", None),
            ("foo/-bar", None),
            ("_foo/bar", None),
            ("foo_bar", Some(("", "foo_bar"))),
            ("foo_bar.com", Some(("", "foo_bar.com"))),
            ("foo_bar.com:8080", None),
            ("foo_bar.com:8080/app", None),
            ("foo.com/foo_bar", Some(("foo.com", "foo_bar"))),
            ("____/____", None),
            ("_docker/_docker", None),
            ("docker_/docker_", None),
            (
                "b.gcr.io/test.example.com/my-app",
                Some(("b.gcr.io", "test.example.com/my-app")),
            ),
            ("xn--n3h.com/myimage", Some(("xn--n3h.com", "myimage"))),
            ("xn--7o8h.com/myimage", Some(("xn--7o8h.com", "myimage"))),
            (
                "example.com/xn--7o8h.com/myimage",
                Some(("example.com", "xn--7o8h.com/myimage")),
            ),
            (
                "example.com/some_separator__underscore/myimage",
                Some(("example.com", "some_separator__underscore/myimage")),
            ),
            ("example.com/__underscore/myimage", None),
            ("example.com/..dots/myimage", None),
            ("example.com/.dots/myimage", None),
            ("example.com/nodouble..dots/myimage", None),
            ("docker./docker", None),
            (".docker/docker", None),
            ("docker-/docker", None),
            ("-docker/docker", None),
            ("do..cker/docker", None),
            ("do__cker:8080/docker", None),
            ("do__cker/docker", Some(("", "do__cker/docker"))),
            (
                "registry.io/foo/project--id.module--name.ver---sion--name",
                Some((
                    "registry.io",
                    "foo/project--id.module--name.ver---sion--name",
                )),
            ),
            ("Asdf.com/foo/bar", Some(("Asdf.com", "foo/bar"))),
            ("Foo/FarB", None),
            // Extra separator edge cases.
            ("a___b", None),
            ("a_.b", None),
            ("a.-b", None),
            ("a-_b", None),
            ("a----b", Some(("", "a----b"))),
        ];
        for &(input, want) in cases {
            assert_eq!(split_name(input), want, "name {input:?}");
        }
    }

    #[test]
    fn reference_regexp() {
        type Want<'a> = Option<(&'a str, Option<&'a str>, Option<&'a str>)>;
        let cases: &[(String, Want<'_>)] = &[
            (
                "registry.com:8080/myapp:tag".into(),
                Some(("registry.com:8080/myapp", Some("tag"), None)),
            ),
            (
                format!("registry.com:8080/myapp@{SHA256_BE}"),
                Some(("registry.com:8080/myapp", None, Some(SHA256_BE))),
            ),
            (
                format!("registry.com:8080/myapp:tag2@{SHA256_BE}"),
                Some(("registry.com:8080/myapp", Some("tag2"), Some(SHA256_BE))),
            ),
            ("registry.com:8080/myapp@sha256:badbadbadbad".into(), None),
            ("registry.com:8080/myapp:invalid~tag".into(), None),
            ("bad_hostname.com:8080/myapp:tag".into(), None),
            (
                format!("localhost:8080@{SHA256_BE}"),
                Some(("localhost", Some("8080"), Some(SHA256_BE))),
            ),
            (
                format!("localhost:8080/name@{SHA256_BE}"),
                Some(("localhost:8080/name", None, Some(SHA256_BE))),
            ),
            (format!("localhost:http/name@{SHA256_BE}"), None),
            (
                format!("localhost@{SHA256_BE}"),
                Some(("localhost", None, Some(SHA256_BE))),
            ),
            ("registry.com:8080/myapp@bad".into(), None),
            ("registry.com:8080/myapp@2bad".into(), None),
            // Extra edge cases.
            ("name:".into(), None),
            ("name@".into(), None),
            (format!("name@{SHA256_BE}@{SHA256_BE}"), None),
        ];
        for (input, want) in cases {
            let got = match_reference(input).map(|c| (c.name, c.tag, c.digest));
            assert_eq!(got, *want, "reference {input:?}");
        }
        let t128 = "t".repeat(128);
        let with_long_tag = format!("name:{t128}");
        let got = match_reference(&with_long_tag).map(|c| (c.name, c.tag));
        assert_eq!(got, Some(("name", Some(t128.as_str()))));
        assert_eq!(match_reference(&format!("name:{t128}t")), None);
        assert_eq!(
            match_reference("name@sha256+b64.x-y_z:0123456789abcdefABCDEF0123456789")
                .map(|c| c.digest),
            Some(Some("sha256+b64.x-y_z:0123456789abcdefABCDEF0123456789"))
        );
        assert_eq!(
            match_reference("name@sha256++b64:0123456789abcdef0123456789abcdef"),
            None
        );
        assert_eq!(
            match_reference("name@1sha:0123456789abcdef0123456789abcdef"),
            None
        );
        assert_eq!(
            match_reference("name@sha256:0123456789abcdef0123456789abcde"),
            None
        );
    }

    #[test]
    fn identifier_regexp() {
        let cases: &[(&str, bool)] = &[
            (
                "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
                true,
            ),
            (
                "7EC43B381E5AEFE6E04EFB0B3F0693FF2A4A50652D64AEC573905F2DB5889A1C",
                false,
            ),
            (
                "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf",
                false,
            ),
            (
                "sha256:da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
                false,
            ),
            (
                "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf98218482",
                false,
            ),
        ];
        for &(input, want) in cases {
            assert_eq!(is_identifier(input), want, "identifier {input:?}");
        }
    }

    // ----- reference_test.go -----

    #[test]
    fn reference_parse_raw() {
        let sha512_f = format!("sha512:{}", "f".repeat(128));
        let sha384_a = format!("sha384:{}", "a".repeat(96));
        let long_ok = format!("{}a", "a/".repeat(127));
        // (input, Ok((domain, name, tag, digest)) | Err(kind))
        type Want<'a> = Result<(&'a str, &'a str, Option<&'a str>, Option<&'a str>), Kind>;
        let cases: Vec<(String, Want<'_>)> = vec![
            ("test_com".into(), Ok(("", "test_com", None, None))),
            ("test.com:tag".into(), Ok(("", "test.com", Some("tag"), None))),
            ("test.com:5000".into(), Ok(("", "test.com", Some("5000"), None))),
            ("test.com/repo:tag".into(), Ok(("test.com", "test.com/repo", Some("tag"), None))),
            ("test:5000/repo".into(), Ok(("test:5000", "test:5000/repo", None, None))),
            ("test:5000/repo:tag".into(), Ok(("test:5000", "test:5000/repo", Some("tag"), None))),
            (format!("test:5000/repo@{SHA256_F}"), Ok(("test:5000", "test:5000/repo", None, Some(SHA256_F)))),
            (
                format!("test:5000/repo:tag@{SHA256_F}"),
                Ok(("test:5000", "test:5000/repo", Some("tag"), Some(SHA256_F))),
            ),
            ("".into(), Err(Kind::Empty)),
            (":justtag".into(), Err(Kind::Format)),
            (format!("@{SHA256_F}"), Err(Kind::Format)),
            ("repo@sha256:ffffffffffffffffffffffffffffffffff".into(), Err(Kind::DigestLength)),
            (
                "validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
                    .into(),
                Err(Kind::DigestUnsupported),
            ),
            ("Uppercase:tag".into(), Err(Kind::Uppercase)),
            ("test:5000/Uppercase/lowercase:tag".into(), Err(Kind::Uppercase)),
            ("lowercase:Uppercase".into(), Ok(("", "lowercase", Some("Uppercase"), None))),
            (format!("{}a:tag", "a/".repeat(128)), Err(Kind::TooLong)),
            (
                format!("{long_ok}:tag-puts-this-over-max"),
                Ok(("a", &long_ok, Some("tag-puts-this-over-max"), None)),
            ),
            ("aa/asdf$$^/aa".into(), Err(Kind::Format)),
            ("sub-dom1.foo.com/bar/baz/quux".into(), Ok(("sub-dom1.foo.com", "sub-dom1.foo.com/bar/baz/quux", None, None))),
            (
                "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
                Ok(("sub-dom1.foo.com", "sub-dom1.foo.com/bar/baz/quux", Some("some-long-tag"), None)),
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com".into(),
                Ok(("b.gcr.io", "b.gcr.io/test.example.com/my-app", Some("test.example.com"), None)),
            ),
            (
                "xn--n3h.com/myimage:xn--n3h.com".into(),
                Ok(("xn--n3h.com", "xn--n3h.com/myimage", Some("xn--n3h.com"), None)),
            ),
            (
                format!("xn--7o8h.com/myimage:xn--7o8h.com@{sha512_f}"),
                Ok(("xn--7o8h.com", "xn--7o8h.com/myimage", Some("xn--7o8h.com"), Some(&sha512_f))),
            ),
            ("foo_bar.com:8080".into(), Ok(("", "foo_bar.com", Some("8080"), None))),
            ("foo/foo_bar.com:8080".into(), Ok(("foo", "foo/foo_bar.com", Some("8080"), None))),
            ("192.168.1.1".into(), Ok(("", "192.168.1.1", None, None))),
            ("192.168.1.1:tag".into(), Ok(("", "192.168.1.1", Some("tag"), None))),
            ("192.168.1.1:5000".into(), Ok(("", "192.168.1.1", Some("5000"), None))),
            ("192.168.1.1/repo".into(), Ok(("192.168.1.1", "192.168.1.1/repo", None, None))),
            ("192.168.1.1:5000/repo".into(), Ok(("192.168.1.1:5000", "192.168.1.1:5000/repo", None, None))),
            (
                "192.168.1.1:5000/repo:5050".into(),
                Ok(("192.168.1.1:5000", "192.168.1.1:5000/repo", Some("5050"), None)),
            ),
            ("[2001:db8::1]".into(), Err(Kind::Format)),
            ("[2001:db8::1]:5000".into(), Err(Kind::Format)),
            ("[2001:db8::1]:tag".into(), Err(Kind::Format)),
            ("[2001:db8::1]/repo".into(), Ok(("[2001:db8::1]", "[2001:db8::1]/repo", None, None))),
            (
                "[2001:db8:1:2:3:4:5:6]/repo:tag".into(),
                Ok(("[2001:db8:1:2:3:4:5:6]", "[2001:db8:1:2:3:4:5:6]/repo", Some("tag"), None)),
            ),
            ("[2001:db8::1]:5000/repo".into(), Ok(("[2001:db8::1]:5000", "[2001:db8::1]:5000/repo", None, None))),
            (
                "[2001:db8::1]:5000/repo:tag".into(),
                Ok(("[2001:db8::1]:5000", "[2001:db8::1]:5000/repo", Some("tag"), None)),
            ),
            (
                format!("[2001:db8::1]:5000/repo@{SHA256_F}"),
                Ok(("[2001:db8::1]:5000", "[2001:db8::1]:5000/repo", None, Some(SHA256_F))),
            ),
            (
                format!("[2001:db8::1]:5000/repo:tag@{SHA256_F}"),
                Ok(("[2001:db8::1]:5000", "[2001:db8::1]:5000/repo", Some("tag"), Some(SHA256_F))),
            ),
            ("[2001:db8::]:5000/repo".into(), Ok(("[2001:db8::]:5000", "[2001:db8::]:5000/repo", None, None))),
            ("[::1]:5000/repo".into(), Ok(("[::1]:5000", "[::1]:5000/repo", None, None))),
            ("[fe80::1%eth0]:5000/repo".into(), Err(Kind::Format)),
            ("[fe80::1%@invalidzone]:5000/repo".into(), Err(Kind::Format)),
            // go-digest checks beyond the reference grammar.
            (format!("repo@{}", SHA256_F.to_uppercase().replace("SHA256", "sha256")), Err(Kind::DigestFormat)),
            (format!("repo@{sha384_a}"), Ok(("", "repo", None, Some(&sha384_a)))),
            (format!("repo@sha384:{}", "a".repeat(64)), Err(Kind::DigestLength)),
        ];
        for (input, want) in &cases {
            let got = parse_raw(input, input);
            match (want, &got) {
                (Err(k), Err(e)) => assert_eq!(kind(e), *k, "{input:?}: {e}"),
                (Ok((domain, name, tag, digest)), Ok(raw)) => {
                    let full = if raw.domain.is_empty() {
                        raw.path.clone()
                    } else {
                        format!("{}/{}", raw.domain, raw.path)
                    };
                    assert_eq!(raw.domain, *domain, "domain of {input:?}");
                    assert_eq!(full, *name, "name of {input:?}");
                    assert_eq!(raw.tag.as_deref(), *tag, "tag of {input:?}");
                    assert_eq!(raw.digest.as_deref(), *digest, "digest of {input:?}");
                    let mut s = full;
                    push_tag_and_digest(&mut s, *tag, *digest);
                    assert_eq!(&s, input, "string form of {input:?}");
                }
                _ => panic!("{input:?}: expected {want:?}, got {got:?}"),
            }
        }
    }

    /// `WithName` failures (reference_test.go `TestWithNameFailure`): not a bare name.
    #[test]
    fn with_name_failure() {
        let too_long = format!("{}a:tag", "a/".repeat(128));
        let invalid_digest = "validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
        let cases = [
            "",
            ":justtag",
            &format!("@{SHA256_F}"),
            invalid_digest,
            &too_long,
            "aa/asdf$$^/aa",
        ];
        for input in cases {
            assert_eq!(split_name(input), None, "{input:?}");
        }
    }

    /// reference_test.go `TestDomainAndPath` (un-normalised split).
    #[test]
    fn domain_and_path() {
        let cases = [
            ("test.com/foo", "test.com", "foo"),
            ("test_com/foo", "", "test_com/foo"),
            ("test:8080/foo", "test:8080", "foo"),
            ("test.com:8080/foo", "test.com:8080", "foo"),
            ("test-com:8080/foo", "test-com:8080", "foo"),
            ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
        ];
        for (input, domain, path) in cases {
            assert_eq!(split_name(input), Some((domain, path)), "{input:?}");
        }
    }

    /// reference_test.go `TestSerialization`: parse and print back.
    #[test]
    fn serialization() {
        let d = "sha256:1234567890098765432112345667890098765432112345667890098765432112";
        let cases = [
            (
                "example.com:8000/named",
                "example.com:8000/named",
                None,
                None,
            ),
            (
                "example.com:8000/named:tagged",
                "example.com:8000/named",
                Some("tagged"),
                None,
            ),
            (
                &*format!("other.com/named@{d}"),
                "other.com/named",
                None,
                Some(d),
            ),
        ];
        for (input, name, tag, digest) in cases {
            let r = parse(input);
            assert_eq!(r.name(), name);
            assert_eq!(r.tag(), tag);
            assert_eq!(r.digest(), digest);
            assert_eq!(r.to_string(), input);
        }
        assert_eq!(ImageRef::parse(""), Err(ReferenceError::Empty));
    }

    /// reference_test.go `TestWithTag` (the Go digests are too short for go-digest, so a
    /// full sha256 is used for the tag-plus-digest row).
    #[test]
    fn with_tag() {
        let cases = [
            ("test.com/foo", "tag", "test.com/foo:tag"),
            ("foo", "tag2", "docker.io/library/foo:tag2"),
            ("test.com:8000/foo", "tag4", "test.com:8000/foo:tag4"),
            ("test.com:8000/foo", "TAG5", "test.com:8000/foo:TAG5"),
            (
                &*format!("test.com:8000/foo@{SHA256_F}"),
                "TAG5",
                &*format!("test.com:8000/foo:TAG5@{SHA256_F}"),
            ),
            ("test.com:8000/foo:old", "new", "test.com:8000/foo:new"),
        ];
        for (name, tag, combined) in cases {
            let tagged = parse(name).with_tag(tag).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(tagged.to_string(), combined);
        }
        let bad = [
            "",
            "-foo",
            ".foo",
            "a:b",
            "a/b",
            "a@b",
            "ta g",
            &"t".repeat(129),
        ];
        for tag in bad {
            let err = parse("foo").with_tag(tag).expect_err(tag);
            assert_eq!(
                err,
                ReferenceError::InvalidTag {
                    tag: tag.to_owned()
                }
            );
        }
    }

    /// reference_test.go `TestParseNamed`: canonical input prints back unchanged.
    #[test]
    fn parse_named_canonical() {
        let cases = [
            ("test.com/foo", Some(("test.com", "foo"))),
            ("test:8080/foo", Some(("test:8080", "foo"))),
            ("test_com/foo", None),
            ("test.com", None),
            ("foo", None),
            ("library/foo", None),
            ("docker.io/library/foo", Some(("docker.io", "library/foo"))),
            ("docker.io/foo", None),
        ];
        for (input, want) in cases {
            let r = parse(input);
            let canonical = r.to_string() == input;
            assert_eq!(canonical, want.is_some(), "{input:?} printed as {r}");
            if let Some((registry, repository)) = want {
                assert_eq!((r.registry(), r.repository()), (registry, repository));
            }
        }
    }

    // ----- normalize_test.go -----

    #[test]
    fn validate_reference_name() {
        let valid = [
            "docker/docker",
            "library/debian",
            "debian",
            "docker.io/docker/docker",
            "docker.io/library/debian",
            "docker.io/debian",
            "index.docker.io/docker/docker",
            "index.docker.io/library/debian",
            "index.docker.io/debian",
            "127.0.0.1:5000/docker/docker",
            "127.0.0.1:5000/library/debian",
            "127.0.0.1:5000/debian",
            "192.168.0.1",
            "192.168.0.1:80",
            "192.168.0.1:8/debian",
            "192.168.0.2:25000/debian",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "[fc00::1]:5000/docker",
            "[fc00::1]:5000/docker/docker",
            "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
            "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "Docker/docker",
            "DOCKER/docker",
        ];
        let invalid = [
            "https://github.com/docker/docker",
            "docker/Docker",
            "-docker",
            "-docker/docker",
            "-docker.io/docker/docker",
            "docker///docker",
            "docker.io/docker/Docker",
            "docker.io/docker///docker",
            "[fc00::1]",
            "[fc00::1]:5000",
            "fc00::1:5000/debian",
            "[fe80::1%eth0]:5000/debian",
            "[2001:db8:3:4::192.0.2.33]:5000/debian",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        ];
        for name in valid {
            parse(name);
        }
        for name in invalid {
            assert!(
                ImageRef::parse(name).is_err(),
                "{name:?} should be rejected"
            );
        }
    }

    #[test]
    fn validate_remote_name() {
        let valid = [
            "docker/docker",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "docker-rules/docker",
            "docker---rules/docker",
            "doc/docker",
            "d/docker",
            "jess/t",
            "dock__er/docker",
        ];
        let too_long_namespace = format!(
            "{}/docker",
            "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_".repeat(4)
        );
        let invalid = [
            "docker/Docker",
            "docker///docker",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "-docker/docker",
            "docker-/docker",
            "-docker-/docker",
            "____/____",
            "_docker/_docker",
            "dock..er/docker",
            "dock_.er/docker",
            "dock-.er/docker",
            "docker/",
            &too_long_namespace,
        ];
        for name in valid {
            parse(name);
        }
        for name in invalid {
            assert!(
                ImageRef::parse(name).is_err(),
                "{name:?} should be rejected"
            );
        }
    }

    #[test]
    fn parse_repository_info() {
        // (remote name, familiar name, full name, ambiguous name, domain)
        let cases = [
            (
                "fooo/bar",
                "fooo/bar",
                "docker.io/fooo/bar",
                "index.docker.io/fooo/bar",
                "docker.io",
            ),
            (
                "library/ubuntu",
                "ubuntu",
                "docker.io/library/ubuntu",
                "library/ubuntu",
                "docker.io",
            ),
            (
                "nonlibrary/ubuntu",
                "nonlibrary/ubuntu",
                "docker.io/nonlibrary/ubuntu",
                "",
                "docker.io",
            ),
            (
                "other/library",
                "other/library",
                "docker.io/other/library",
                "",
                "docker.io",
            ),
            (
                "private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "privatebase",
                "127.0.0.1:8000/privatebase",
                "127.0.0.1:8000/privatebase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "private/moonbase",
                "example.com/private/moonbase",
                "example.com/private/moonbase",
                "",
                "example.com",
            ),
            (
                "privatebase",
                "example.com/privatebase",
                "example.com/privatebase",
                "",
                "example.com",
            ),
            (
                "private/moonbase",
                "example.com:8000/private/moonbase",
                "example.com:8000/private/moonbase",
                "",
                "example.com:8000",
            ),
            (
                "privatebasee",
                "example.com:8000/privatebasee",
                "example.com:8000/privatebasee",
                "",
                "example.com:8000",
            ),
            (
                "library/ubuntu-12.04-base",
                "ubuntu-12.04-base",
                "docker.io/library/ubuntu-12.04-base",
                "index.docker.io/library/ubuntu-12.04-base",
                "docker.io",
            ),
            (
                "library/foo",
                "foo",
                "docker.io/library/foo",
                "docker.io/foo",
                "docker.io",
            ),
            (
                "library/foo/bar",
                "library/foo/bar",
                "docker.io/library/foo/bar",
                "",
                "docker.io",
            ),
            (
                "store/foo/bar",
                "store/foo/bar",
                "docker.io/store/foo/bar",
                "",
                "docker.io",
            ),
            ("bar", "Foo/bar", "Foo/bar", "", "Foo"),
            ("bar", "FOO/bar", "FOO/bar", "", "FOO"),
        ];
        for (remote, familiar, full, ambiguous, domain) in cases {
            for input in [familiar, full, ambiguous] {
                if input.is_empty() {
                    continue;
                }
                let r = parse(input);
                assert_eq!(r.familiar_name(), familiar, "familiar name of {input:?}");
                assert_eq!(r.name(), full, "full name of {input:?}");
                assert_eq!(r.to_string(), full, "string of {input:?}");
                assert_eq!(r.registry(), domain, "domain of {input:?}");
                assert_eq!(r.repository(), remote, "remote name of {input:?}");
            }
        }
    }

    #[test]
    fn parse_reference_with_tag_and_digest() {
        let short = format!("busybox:latest@{SHA256_86}");
        let r = parse(&short);
        assert_eq!(r.to_string(), format!("docker.io/library/{short}"));
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.digest(), Some(SHA256_86));
        assert_eq!(r.familiar(), short);
    }

    #[test]
    fn invalid_reference_components() {
        assert!(ImageRef::parse("-foo").is_err());
        assert!(parse("busybox").with_tag("-foo").is_err());
    }

    /// normalize_test.go `TestParseAnyReference`, rows that are names.
    #[test]
    fn parse_any_reference_named() {
        let hex = &SHA256_DB["sha256:".len()..];
        let cases = [
            ("redis", "docker.io/library/redis"),
            ("redis:latest", "docker.io/library/redis:latest"),
            (
                "docker.io/library/redis:latest",
                "docker.io/library/redis:latest",
            ),
            (
                &*format!("redis@{SHA256_DB}"),
                &*format!("docker.io/library/redis@{SHA256_DB}"),
            ),
            (
                &*format!("docker.io/library/redis@{SHA256_DB}"),
                &*format!("docker.io/library/redis@{SHA256_DB}"),
            ),
            ("dmcgowan/myapp", "docker.io/dmcgowan/myapp"),
            ("dmcgowan/myapp:latest", "docker.io/dmcgowan/myapp:latest"),
            (
                "docker.io/mcgowan/myapp:latest",
                "docker.io/mcgowan/myapp:latest",
            ),
            (
                &*format!("dmcgowan/myapp@{SHA256_DB}"),
                &*format!("docker.io/dmcgowan/myapp@{SHA256_DB}"),
            ),
            (
                &*format!("docker.io/dmcgowan/myapp@{SHA256_DB}"),
                &*format!("docker.io/dmcgowan/myapp@{SHA256_DB}"),
            ),
            (&hex[..63], &*format!("docker.io/library/{}", &hex[..63])),
            ("dbcc1", "docker.io/library/dbcc1"),
            // ParseNormalizedNamed reads a bare "sha256:<hex>" as image "sha256" with a tag.
            (SHA256_DB, &*format!("docker.io/library/{SHA256_DB}")),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).to_string(), want, "{input:?}");
        }
        let err = ImageRef::parse(hex).expect_err("64-hex must be rejected");
        assert_eq!(
            err,
            ReferenceError::HexIdentifier {
                input: hex.to_owned()
            }
        );
        assert!(
            err.to_string()
                .contains("cannot specify 64-byte hexadecimal strings")
        );
    }

    #[test]
    fn normalized_split_hostname() {
        let cases = [
            ("test.com/foo", "test.com", "foo"),
            ("test_com/foo", "docker.io", "test_com/foo"),
            ("docker/migrator", "docker.io", "docker/migrator"),
            ("test.com:8080/foo", "test.com:8080", "foo"),
            ("test-com:8080/foo", "test-com:8080", "foo"),
            ("foo", "docker.io", "library/foo"),
            ("xn--n3h.com/foo", "xn--n3h.com", "foo"),
            ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
            ("docker.io/foo", "docker.io", "library/foo"),
            ("docker.io/library/foo", "docker.io", "library/foo"),
            ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
            // Extra: localhost and the legacy index host.
            ("localhost/foo", "localhost", "foo"),
            ("localhost:5000/a/b:t", "localhost:5000", "a/b"),
            ("index.docker.io/x", "docker.io", "library/x"),
            ("localhost", "docker.io", "library/localhost"),
            ("localhost:5000", "docker.io", "library/localhost"),
        ];
        for (input, registry, repository) in cases {
            let r = parse(input);
            assert_eq!(
                (r.registry(), r.repository()),
                (registry, repository),
                "{input:?}"
            );
        }
    }

    /// normalize_test.go `TestParseDockerRef`, through `with_default_tag` (docker's
    /// `TagNameOnly`). Unlike `ParseDockerRef`, a tag next to a digest is kept.
    #[test]
    fn default_tag() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:latest", "docker.io/library/busybox:latest"),
            (
                &*format!("busybox@{SHA256_E6}"),
                &*format!("docker.io/library/busybox@{SHA256_E6}"),
            ),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            (
                "docker.io/busybox:latest",
                "docker.io/library/busybox:latest",
            ),
            ("library/busybox:latest", "docker.io/library/busybox:latest"),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
            ),
            ("gcr.io/library/busybox", "gcr.io/library/busybox:latest"),
            (
                &*format!("gcr.io/library/busybox:latest@{SHA256_E6}"),
                &*format!("gcr.io/library/busybox:latest@{SHA256_E6}"),
            ),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ];
        for (input, want) in cases {
            let out = parse(input).with_default_tag().to_string();
            assert_eq!(out, want, "{input:?}");
            assert_eq!(parse(&out).to_string(), out);
        }
    }

    // ----- this module's own API -----

    #[test]
    fn round_trip() {
        let cases = [
            "ubuntu",
            "ubuntu:latest",
            "ubuntu:22.04",
            "library/ubuntu",
            "docker.io/library/ubuntu:latest",
            "index.docker.io/ubuntu",
            "myorg/app:1",
            "myorg/sub/app:v1.0-rc_1",
            "library/foo/bar",
            "localhost/app",
            "localhost:5000/a:b",
            "localhost:5000/a/b:t",
            "registry.example.com/team/app",
            "registry.example.com:443/team/app:TAG",
            "192.168.0.1:5000/x",
            "[::1]:5000/repo:tag",
            "[2001:db8::1]/repo",
            "Foo/bar",
            "xn--n3h.com/myimage:xn--n3h.com",
            "docker---rules/do__cker.x-y",
            "localhost:8080",
            &format!("ubuntu@{SHA256_DB}"),
            &format!("ubuntu:22.04@{SHA256_DB}"),
            &format!("gcr.io/distroless/static@{SHA256_E6}"),
            &format!("quay.io/a/b@sha512:{}", "0".repeat(128)),
            &format!("x/{}", "a".repeat(243)),
        ];
        for input in cases {
            let r = parse(input);
            assert_eq!(
                ImageRef::parse(&r.to_string()),
                Ok(r.clone()),
                "display of {input:?}"
            );
            assert_eq!(
                ImageRef::parse(&r.familiar()),
                Ok(r.clone()),
                "familiar of {input:?}"
            );
            assert_eq!(
                input.parse::<ImageRef>(),
                Ok(r.clone()),
                "FromStr of {input:?}"
            );
            let tagged = r.clone().with_default_tag();
            assert_eq!(ImageRef::parse(&tagged.to_string()), Ok(tagged.clone()));
            assert_eq!(ImageRef::parse(&tagged.familiar()), Ok(tagged));
        }
    }

    #[test]
    fn familiar_forms() {
        let cases = [
            (
                "ubuntu",
                "ubuntu",
                "ubuntu:latest",
                "docker.io/library/ubuntu:latest",
            ),
            (
                "docker.io/myorg/app:1",
                "myorg/app",
                "myorg/app:1",
                "docker.io/myorg/app:1",
            ),
            (
                "localhost:5000/a:b",
                "localhost:5000/a",
                "localhost:5000/a:b",
                "localhost:5000/a:b",
            ),
            (
                "library/a/b",
                "library/a/b",
                "library/a/b:latest",
                "docker.io/library/a/b:latest",
            ),
            (
                "gcr.io/library/x",
                "gcr.io/library/x",
                "gcr.io/library/x:latest",
                "gcr.io/library/x:latest",
            ),
        ];
        for (input, familiar_name, familiar, full) in cases {
            let r = parse(input).with_default_tag();
            assert_eq!(r.familiar_name(), familiar_name, "{input:?}");
            assert_eq!(r.familiar(), familiar, "{input:?}");
            assert_eq!(r.to_string(), full, "{input:?}");
        }
        let d = parse(&format!("ubuntu@{SHA256_DB}"));
        assert_eq!(d.familiar(), format!("ubuntu@{SHA256_DB}"));
        assert_eq!(d.tag(), None);
        assert_eq!(d.clone().with_default_tag(), d);
    }

    #[test]
    fn tags() {
        let cases: &[(&str, bool)] = &[
            ("latest", true),
            ("1", true),
            ("_", true),
            ("UPPER.case-1_x", true),
            ("v1.0.0-rc.1", true),
            (&"t".repeat(128), true),
            (&"t".repeat(129), false),
            ("", false),
            (".x", false),
            ("-x", false),
            ("x:y", false),
            ("x/y", false),
            ("x~y", false),
            ("x+y", false),
            ("tàg", false),
        ];
        for &(tag, ok) in cases {
            assert_eq!(validate_tag(tag).is_ok(), ok, "tag {tag:?}");
            if !ok {
                assert_eq!(
                    validate_tag(tag),
                    Err(ReferenceError::InvalidTag {
                        tag: tag.to_owned()
                    })
                );
            }
        }
    }

    #[test]
    fn normalised_errors() {
        let too_long = format!("x/{}", "a".repeat(244));
        let cases: &[(&str, Kind)] = &[
            ("", Kind::Empty),
            ("Ubuntu", Kind::Uppercase),
            ("Ubuntu:latest", Kind::Uppercase),
            ("myorg/App", Kind::Uppercase),
            ("FOO/Bar", Kind::Uppercase),
            ("localhost:5000/App:tag", Kind::Uppercase),
            ("ubuntu@SHA256:abc", Kind::Uppercase),
            ("Foo_bar.com/x", Kind::Uppercase),
            ("ubuntu:-bad", Kind::Format),
            ("ubuntu:", Kind::Format),
            ("ubuntu@", Kind::Format),
            ("ubuntu@sha256:xyz", Kind::Format),
            ("ubuntu:a:b", Kind::Format),
            ("a b", Kind::Format),
            ("/ubuntu", Kind::Format),
            ("ubuntu/", Kind::Format),
            ("example.com/", Kind::Format),
            ("example.com:port/x", Kind::Format),
            (
                "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
                Kind::Hex,
            ),
            (&too_long, Kind::TooLong),
            (
                "ubuntu@md5:0123456789abcdef0123456789abcdef",
                Kind::DigestUnsupported,
            ),
            (
                "ubuntu@sha256:0123456789abcdef0123456789abcdef",
                Kind::DigestLength,
            ),
            (
                "ubuntu@sha256:DBCC1C35AC38DF41FD2F5E4130B32FFDB93EBAE8B3DBE638C23575912276FC9C",
                Kind::DigestFormat,
            ),
            ("foo_bar.com/x", Kind::Registry),
            ("a.b_c/x:1", Kind::Registry),
        ];
        for &(input, want) in cases {
            let err = ImageRef::parse(input).expect_err(input);
            assert_eq!(kind(&err), want, "{input:?}: {err}");
            if !input.is_empty() {
                assert!(
                    err.to_string().contains(&format!("{input:?}")),
                    "{err} names {input:?}"
                );
            }
        }
        // Exactly at the limit: "docker.io/" + 245 characters.
        parse(&format!("x/{}", "a".repeat(243)));
    }

    #[test]
    fn error_messages() {
        let msg = |s: &str| ImageRef::parse(s).expect_err(s).to_string();
        assert!(
            msg("Ubuntu")
                .starts_with("invalid reference \"Ubuntu\": repository name must be lowercase")
        );
        assert!(msg("ubuntu:-bad").contains("the tag after ':'"));
        assert!(msg("ubuntu@sha256:xyz").contains("the digest after '@'"));
        assert!(msg("ubu--/x").contains("the name must be"));
        assert!(msg("ubuntu@sha256:0123456789abcdef0123456789abcdef").contains("needs 64"));
        assert!(
            validate_tag("-x")
                .expect_err("-x")
                .to_string()
                .starts_with("invalid tag \"-x\"")
        );
    }

    #[test]
    fn ordering_and_hash_are_field_wise() {
        use std::collections::BTreeSet;
        let set: BTreeSet<ImageRef> = ["b", "a:2", "a:1", "a", "localhost/a"]
            .iter()
            .map(|s| parse(s))
            .collect();
        let out: Vec<String> = set.iter().map(ToString::to_string).collect();
        assert_eq!(
            out,
            [
                "docker.io/library/a",
                "docker.io/library/a:1",
                "docker.io/library/a:2",
                "docker.io/library/b",
                "localhost/a"
            ]
        );
    }

    /// Exhaustive small-input check (no proptest): parsing never panics, and whatever
    /// parses prints back to a string that parses to the same value.
    #[test]
    fn exhaustive_short_inputs_round_trip() {
        const ALPHABET: [char; 12] = ['a', 'B', '0', '.', '_', '-', ':', '/', '@', '[', ']', 'é'];
        let mut inputs = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for prefix in &frontier {
                for c in ALPHABET {
                    let mut s = prefix.clone();
                    s.push(c);
                    next.push(s);
                }
            }
            inputs.extend(next.iter().cloned());
            frontier = next;
        }
        let mut accepted = 0;
        for input in &inputs {
            if let Ok(r) = ImageRef::parse(input) {
                accepted += 1;
                assert_eq!(ImageRef::parse(&r.to_string()), Ok(r.clone()), "{input:?}");
                assert!(r.registry().len() + 1 + r.repository().len() <= 255);
            }
        }
        assert!(accepted > 100, "only {accepted} inputs accepted");
    }

    #[test]
    fn canonical_drops_the_tag_and_sets_the_digest() {
        let d: Digest = SHA256_BE.parse().unwrap();
        let r = ImageRef::parse("localhost:5000/a/b:1").unwrap();
        assert_eq!(
            r.canonical(&d).to_string(),
            format!("localhost:5000/a/b@{SHA256_BE}")
        );
    }

    #[test]
    fn a_tag_and_digests_of_its_repository_are_a_single_reference() {
        let refs = |v: &[&str]| -> Vec<ImageRef> {
            v.iter().map(|s| ImageRef::parse(s).unwrap()).collect()
        };
        let tag = "h:5000/a/b:1";
        let dig = format!("h:5000/a/b@{SHA256_BE}");
        let dig2 = format!("h:5000/a/b@{SHA256_DB}");
        let other = format!("h:5000/a/c@{SHA256_BE}");
        assert!(!is_single_reference(&[]));
        assert!(is_single_reference(&refs(&[tag])));
        assert!(is_single_reference(&refs(&[&dig])));
        assert!(is_single_reference(&refs(&[tag, &dig, &dig2])));
        assert!(is_single_reference(&refs(&[&dig, &dig2])));
        assert!(!is_single_reference(&refs(&[tag, "h:5000/a/b:2"])));
        assert!(!is_single_reference(&refs(&[tag, &other])));
        assert!(!is_single_reference(&refs(&[&dig, &other])));
    }
}
