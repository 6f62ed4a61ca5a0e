//! The build context: a directory, minus what `.dockerignore` excludes, walked once.
//!
//! `.dockerignore` follows Docker's rules: one pattern per line, `#` comments, blank lines
//! ignored, a leading `/` dropped, `!` re-includes, the last matching pattern wins, and a
//! pattern that matches a directory excludes everything below it. Patterns are globs where `*`
//! and `?` stay inside one path component and `**` spans any number of them.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use globset::{GlobBuilder, GlobMatcher};

/// The ignore file in the context's root.
pub const DOCKERIGNORE: &str = ".dockerignore";

/// One file, directory or symlink of the context.
#[derive(Debug, Clone)]
pub struct CtxEntry {
    /// Absolute path on the host.
    pub host: PathBuf,
    /// Its metadata (not following symlinks).
    pub mode: u32,
    /// Size of a regular file.
    pub size: u64,
    /// Modification time, whole seconds.
    pub mtime: i64,
    /// Kind.
    pub kind: CtxKind,
}

/// What a context entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtxKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink and its target.
    Symlink(String),
}

/// The walked context: relative paths (`a/b`, never empty) to entries, sorted.
#[derive(Debug)]
pub struct Context {
    /// The context directory (canonical).
    pub root: PathBuf,
    /// Every entry not excluded.
    pub entries: BTreeMap<String, CtxEntry>,
}

/// A compiled `.dockerignore` pattern.
#[derive(Debug)]
struct Pattern {
    matcher: GlobMatcher,
    exclude: bool,
}

/// Compiles `.dockerignore` text.
fn patterns(text: &str) -> Result<Vec<Pattern>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (exclude, p) = match t.strip_prefix('!') {
            Some(rest) => (false, rest.trim()),
            None => (true, t),
        };
        let p = p.trim_start_matches('/').trim_end_matches('/');
        let p = clean(p);
        if p.is_empty() {
            continue;
        }
        let glob = GlobBuilder::new(&p)
            .literal_separator(true)
            .build()
            .with_context(|| format!("{DOCKERIGNORE} line {}: bad pattern {t:?}", i + 1))?;
        out.push(Pattern {
            matcher: glob.compile_matcher(),
            exclude,
        });
    }
    Ok(out)
}

/// True when `rel` is excluded: the last pattern matching it or one of its parents decides.
fn excluded(pats: &[Pattern], rel: &str) -> bool {
    let mut ex = false;
    for p in pats {
        let mut hit = p.matcher.is_match(rel);
        if !hit {
            let mut cur = rel;
            while let Some((parent, _)) = cur.rsplit_once('/') {
                if p.matcher.is_match(parent) {
                    hit = true;
                    break;
                }
                cur = parent;
            }
        }
        if hit {
            ex = p.exclude;
        }
    }
    ex
}

/// Normalises a relative path: no `.`, `..` resolved lexically (never above the start), no
/// empty components. `""` for the root.
pub fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// True when a relative path would leave its root (`../x`, `a/../../x`).
pub fn escapes(p: &str) -> bool {
    let mut depth: i64 = 0;
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

impl Context {
    /// Walks `root` (without following symlinks), leaving out what `.dockerignore` excludes.
    ///
    /// # Errors
    /// A missing or unreadable context, a bad `.dockerignore`.
    pub fn open(root: &Path) -> Result<Context> {
        let root = root.canonicalize().with_context(|| {
            format!(
                "the build context {} does not exist; give a directory",
                root.display()
            )
        })?;
        if !root.is_dir() {
            bail!("the build context {} is not a directory", root.display());
        }
        let ignore = match std::fs::read_to_string(root.join(DOCKERIGNORE)) {
            Ok(t) => patterns(&t)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading {}", root.join(DOCKERIGNORE).display()));
            }
        };
        let mut entries = BTreeMap::new();
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            let abs = if dir.is_empty() {
                root.clone()
            } else {
                root.join(&dir)
            };
            let rd =
                std::fs::read_dir(&abs).with_context(|| format!("reading {}", abs.display()))?;
            for e in rd {
                let e = e.with_context(|| format!("reading {}", abs.display()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let host = e.path();
                let md = std::fs::symlink_metadata(&host)
                    .with_context(|| format!("reading {}", host.display()))?;
                let ft = md.file_type();
                let kind = if ft.is_dir() {
                    CtxKind::Dir
                } else if ft.is_file() {
                    CtxKind::File
                } else if ft.is_symlink() {
                    let t = std::fs::read_link(&host)
                        .with_context(|| format!("reading {}", host.display()))?;
                    CtxKind::Symlink(t.to_string_lossy().into_owned())
                } else {
                    // Sockets, fifos and devices are not copied (as Docker).
                    continue;
                };
                if kind == CtxKind::Dir {
                    // Walk excluded dirs too: a `!` pattern may bring a child back.
                    stack.push(rel.clone());
                }
                if excluded(&ignore, &rel) {
                    continue;
                }
                entries.insert(
                    rel,
                    CtxEntry {
                        host,
                        mode: md.mode() & 0o7777,
                        size: if kind == CtxKind::File { md.len() } else { 0 },
                        mtime: md.mtime(),
                        kind,
                    },
                );
            }
        }
        Ok(Context { root, entries })
    }

    /// The root directory as an entry.
    ///
    /// # Errors
    /// The root cannot be read.
    pub fn root_entry(&self) -> Result<CtxEntry> {
        let md = std::fs::metadata(&self.root)
            .with_context(|| format!("reading {}", self.root.display()))?;
        Ok(CtxEntry {
            host: self.root.clone(),
            mode: md.mode() & 0o7777,
            size: 0,
            mtime: md.mtime(),
            kind: CtxKind::Dir,
        })
    }
}

/// True when a source has wildcard characters.
pub fn has_wildcard(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// A matcher for a COPY source pattern (wildcards stay inside one component, as Go's
/// `filepath.Match`).
///
/// # Errors
/// A bad pattern.
pub fn source_matcher(pattern: &str) -> Result<GlobMatcher> {
    Ok(GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .with_context(|| format!("bad source pattern {pattern:?}"))?
        .compile_matcher())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() {
        let p = patterns("# c\n*.log\n/build\n!build/keep\nsub/**/x\n").unwrap();
        assert!(excluded(&p, "a.log"));
        assert!(!excluded(&p, "d/a.log"), "* stays in one component");
        assert!(excluded(&p, "build"));
        assert!(excluded(&p, "build/out"), "a dir excludes its children");
        assert!(!excluded(&p, "build/keep"));
        assert!(excluded(&p, "sub/a/b/x"));
        assert!(!excluded(&p, "src/main.c"));
    }

    #[test]
    fn clean_and_escape() {
        assert_eq!(clean("./a//b/../c/"), "a/c");
        assert_eq!(clean("."), "");
        assert!(escapes("../x"));
        assert!(escapes("a/../../x"));
        assert!(!escapes("a/../x"));
    }
}
