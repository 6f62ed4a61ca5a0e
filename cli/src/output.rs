//! Output: the JSON schema of every command (the stable contract; snake_case keys, fields are
//! only ever added) and the helpers that print tables and sizes as Docker does.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

/// Prints a value as JSON (pretty, one document) on stdout.
///
/// # Errors
/// Writing to stdout failed.
pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// `strata images`: one per image.
#[derive(Debug, Serialize)]
pub struct ImageJson {
    /// `sha256:…`.
    pub id: String,
    /// Fully qualified references (`docker.io/library/x:latest`).
    pub repo_tags: Vec<String>,
    /// Repository digests (`registry/repo@sha256:…`), recorded by pull and push.
    pub repo_digests: Vec<String>,
    /// RFC 3339, from the config.
    pub created: Option<String>,
    /// Sum of the layers' uncompressed sizes.
    pub size: u64,
    /// Number of layers.
    pub layers: usize,
}

/// `strata import`.
#[derive(Debug, Serialize)]
pub struct ImportJson {
    /// The new image's ID.
    pub id: String,
    /// Its layer.
    pub diff_id: String,
    /// Bytes of the uncompressed tar.
    pub size: u64,
    /// Entries in the layer.
    pub entries: u64,
    /// The tag given, fully qualified.
    pub tags: Vec<String>,
}

/// `strata inspect`: the store's view plus the config's fields at top level.
#[derive(Debug, Serialize)]
pub struct InspectJson {
    /// `sha256:…`.
    pub id: String,
    /// Fully qualified tags.
    pub repo_tags: Vec<String>,
    /// Repository digests (`registry/repo@sha256:…`), recorded by pull and push.
    pub repo_digests: Vec<String>,
    /// The local parent image, if any.
    pub parent: Option<String>,
    /// When it entered this store.
    pub added: String,
    /// Sum of the layers' uncompressed sizes.
    pub size: u64,
    /// ChainIDs, base first.
    pub chain_ids: Vec<String>,
    /// The config as stored (architecture, os, created, config, rootfs, history, …).
    #[serde(flatten)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// Docker's human size: decimal units, three significant digits (`74.8MB`, `0B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    // Go's %.3g: three significant digits, trailing zeros dropped.
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    format!("{s}{}", UNITS[i])
}

/// "3 days ago", as Docker's `units.HumanDuration` + " ago".
pub fn time_ago(rfc3339: Option<&str>) -> String {
    let Some(t) = rfc3339.and_then(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    }) else {
        return "N/A".to_owned();
    };
    let secs = (time::OffsetDateTime::now_utc() - t).whole_seconds();
    if secs < 0 {
        return "Less than a second from now".to_owned();
    }
    let s = secs as f64;
    let hours = s / 3600.0;
    let d = if secs < 1 {
        "Less than a second".to_owned()
    } else if secs == 1 {
        "1 second".to_owned()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if s / 60.0 < 2.0 {
        "About a minute".to_owned()
    } else if s < 3600.0 {
        format!("{} minutes", (s / 60.0) as i64)
    } else if hours.round() == 1.0 {
        "About an hour".to_owned()
    } else if hours < 48.0 {
        format!("{} hours", hours.round() as i64)
    } else if hours < 24.0 * 7.0 * 2.0 {
        format!("{} days", (hours / 24.0) as i64)
    } else if hours < 24.0 * 30.0 * 2.0 {
        format!("{} weeks", (hours / 24.0 / 7.0) as i64)
    } else if hours < 24.0 * 365.0 * 2.0 {
        format!("{} months", (hours / 24.0 / 30.0) as i64)
    } else {
        format!("{} years", (hours / 24.0 / 365.0) as i64)
    };
    format!("{d} ago")
}

/// Shortens to `max` characters with a trailing `…`, as Docker's `TruncateWithEllipsis`.
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// Prints rows as columns separated by at least three spaces (Docker's tabwriter settings).
///
/// # Errors
/// Writing to stdout failed.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>, out: &mut std::io::StdoutLock<'_>| -> Result<()> {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i + 1 < cells.len() {
                s.extend(std::iter::repeat_n(' ', widths[i] - c.chars().count() + 3));
            }
        }
        writeln!(out, "{}", s.trim_end())?;
        Ok(())
    };
    line(header.to_vec(), &mut out)?;
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_size_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(74_800_000), "74.8MB");
        assert_eq!(human_size(7_480_000), "7.48MB");
        assert_eq!(human_size(1_000), "1kB");
        assert_eq!(human_size(1_234), "1.23kB");
    }

    #[test]
    fn ellipsis_truncates() {
        assert_eq!(ellipsis("abcdef", 4), "abc…");
        assert_eq!(ellipsis("abc", 4), "abc");
    }
}

/// `strata diff`: one per change, sorted by path (Docker's `A`/`C`/`D`).
#[derive(Debug, Serialize)]
pub struct DiffJson {
    /// `A` (added), `C` (changed) or `D` (deleted).
    pub kind: String,
    /// Absolute path in the container (`/etc/passwd`).
    pub path: String,
}

/// `strata commit`.
#[derive(Debug, Serialize)]
pub struct CommitJson {
    /// The new image's ID.
    pub id: String,
    /// The image it extends.
    pub parent: String,
    /// The new layer.
    pub diff_id: String,
    /// Bytes of the new layer's uncompressed tar.
    pub size: u64,
    /// Entries in the new layer.
    pub entries: u64,
    /// The tag given, fully qualified.
    pub tags: Vec<String>,
}
