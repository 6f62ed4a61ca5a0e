//! `strata commit [-m MSG] [-a AUTHOR] [-c INSTRUCTION]… CONTAINER [IMAGE[:TAG]]`: the
//! container's changes become one new layer (`layerstore::commit`) and a new image whose config
//! and history extend its image's.
//!
//! A mounted container is refused: the upper dir could change while it is read, and the layer
//! must be a consistent snapshot. Unmount it (`strata umount DIR`) and commit again.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use layerstore::commit::{CommitEntry, CommitKind, Content};
use layerstore::image::{History, ImageConfig, now_rfc3339};
use unionfs::LowerTree;
use unionfs::changes::{self, Change, ChangeKind, LinkKey};

use crate::output::{CommitJson, print_json};
use crate::union::{RunState, image_lowers};
use crate::{Globals, change};

/// The only xattr a committed layer records (what Docker keeps: file capabilities).
const KEPT_XATTRS: &[&str] = &["security.capability"];

/// Create a new image from a container's changes (one new layer on top of its image).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Commit message, recorded as the history entry's comment.
    #[arg(short, long)]
    pub message: Option<String>,
    /// Author, recorded in the config and the history entry (e.g. `Name <mail>`).
    #[arg(short, long)]
    pub author: Option<String>,
    /// Apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
    /// ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR); repeatable.
    #[arg(short, long = "change", value_name = "INSTRUCTION")]
    pub changes: Vec<String>,
    /// Container name or ID.
    pub container: String,
    /// Name for the new image, `[registry/][org/]name[:tag]` (tag defaults to `latest`).
    pub reference: Option<String>,
}

/// Runs `commit`.
///
/// # Errors
/// Invalid name or instruction (before any work), unknown or mounted container, I/O.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    if let Some(code) = crate::runtime::enter_userns_for_container(&g.root, &a.container)? {
        return Ok(code);
    }
    let reference = crate::target_name(a.reference.as_deref())?;
    // Check the instructions before reading anything.
    let mut probe = layerstore::RunConfig::default();
    for c in &a.changes {
        change::apply(&mut probe, c)?;
    }
    let store = g.store()?;
    // Holds the new layer and the parent's layers until the image is recorded.
    let _lease = store.lease("commit")?;
    let ctr = store.resolve_container(&a.container)?;
    if let Some(s) = RunState::list(&g.root)
        .into_iter()
        .find(|s| s.container.as_deref() == Some(&ctr.id))
    {
        bail!(
            "container {} is mounted at {}: a commit needs a consistent snapshot of its \
             changes; unmount it first ('strata umount {}') and commit again",
            ctr.name,
            s.mountpoint.display(),
            s.mountpoint.display()
        );
    }
    let parent = store
        .resolve_image(&ctr.image.to_string())
        .with_context(|| format!("the image of container {}", ctr.name))?;
    store.hold_image(&parent.id)?;
    let mut cfg = ImageConfig::parse(&parent.config)
        .with_context(|| format!("the config of image {}", parent.id))?;
    let entries = container_entries(&store, &ctr, &parent, g.verbose)?;
    let info = store
        .commit_layer(entries)
        .with_context(|| format!("writing the layer of container {}", ctr.name))?;

    let created = now_rfc3339();
    if cfg.history.is_empty() {
        // Keep history and layers aligned: one entry per existing layer first.
        cfg.history = cfg
            .rootfs
            .diff_ids
            .iter()
            .map(|_| History {
                created: cfg.created.clone(),
                ..Default::default()
            })
            .collect();
    }
    cfg.rootfs.diff_ids.push(info.diff_id);
    cfg.created = Some(created.clone());
    if a.author.is_some() {
        cfg.author.clone_from(&a.author);
    }
    cfg.history.push(History {
        created: Some(created),
        author: a.author.clone(),
        created_by: None,
        comment: a.message.clone(),
        empty_layer: false,
    });
    for c in &a.changes {
        change::apply(cfg.run_config_mut(), c)?;
    }
    let id = store.add_image(&cfg.to_bytes(), Some(&parent.id))?;
    let mut tags = Vec::new();
    if let Some(r) = reference {
        tags.push(store.tag(&id, &r)?.to_string());
    }
    if g.json() {
        print_json(&CommitJson {
            id: id.to_string(),
            parent: parent.id.to_string(),
            diff_id: info.diff_id.to_string(),
            size: info.tar_size,
            entries: info.entries,
            tags,
        })?;
    } else {
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The changes in a container's upper over `parent` (its image) as the store's plain commit
/// entries, ready for [`layerstore::Store::commit_layer`]; empty when nothing changed. Used by
/// `commit` and the RUN steps of `build`.
///
/// # Errors
/// The upper cannot be read, names that are not UTF-8.
pub(crate) fn container_entries(
    store: &layerstore::Store,
    ctr: &layerstore::ContainerRecord,
    parent: &layerstore::ImageRecord,
    verbose: bool,
) -> Result<Vec<CommitEntry>> {
    let lowers = image_lowers(store, parent)?;
    let found = changes::scan_upper(&ctr.upper(), &lowers)
        .with_context(|| format!("reading the changes of container {}", ctr.name))?;
    commit_entries(found, &lowers, verbose)
}

/// glibc's `major()`/`minor()` of a `dev_t`.
fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    (major as u32, minor as u32)
}

/// Converts the union's changes into the store's plain commit entries.
fn commit_entries(
    found: Vec<Change>,
    lowers: &[Arc<dyn LowerTree>],
    verbose: bool,
) -> Result<Vec<CommitEntry>> {
    let mut groups: HashMap<LinkKey, u64> = HashMap::new();
    let mut out = Vec::with_capacity(found.len());
    for c in found {
        let path = c
            .path
            .to_str()
            .with_context(|| {
                format!(
                    "{:?} is not valid UTF-8; layer tars written by strata need UTF-8 names: \
                     rename it in the container",
                    String::from_utf8_lossy(c.path.as_os_str().as_bytes())
                )
            })?
            .to_owned();
        let Some(e) = c.entry else {
            if c.kind == ChangeKind::Deleted && !c.implied {
                out.push(CommitEntry {
                    path,
                    kind: CommitKind::Whiteout,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    xattrs: Vec::new(),
                    link_group: None,
                });
            }
            continue;
        };
        let kind = match e.kind {
            unionfs::EntryKind::File => {
                let content = match e.content {
                    changes::Content::None => Content::Empty,
                    changes::Content::Upper(p) => Content::Path(p),
                    lower @ changes::Content::Lower { .. } => {
                        let lowers = lowers.to_vec();
                        Content::Open(Box::new(move || {
                            changes::open_content(&lowers, &lower)?.ok_or_else(|| {
                                std::io::Error::other("a lower file without content")
                            })
                        }))
                    }
                };
                CommitKind::File {
                    size: e.size,
                    content,
                }
            }
            unionfs::EntryKind::Dir => CommitKind::Dir { opaque: e.opaque },
            unionfs::EntryKind::Symlink => CommitKind::Symlink {
                target: e
                    .symlink
                    .as_deref()
                    .and_then(|t| t.to_str())
                    .with_context(|| {
                        format!("the target of symlink /{path} is not valid UTF-8; change it")
                    })?
                    .to_owned(),
            },
            unionfs::EntryKind::CharDev => {
                let (major, minor) = split_dev(e.rdev);
                CommitKind::CharDev { major, minor }
            }
            unionfs::EntryKind::BlockDev => {
                let (major, minor) = split_dev(e.rdev);
                CommitKind::BlockDev { major, minor }
            }
            unionfs::EntryKind::Fifo => CommitKind::Fifo,
            unionfs::EntryKind::Socket | unionfs::EntryKind::Whiteout => {
                if verbose {
                    eprintln!("skipping socket /{path}: a tar cannot hold sockets (as Docker)");
                }
                continue;
            }
        };
        let n = groups.len() as u64;
        let link_group = e.link.map(|k| *groups.entry(k).or_insert(n));
        let xattrs = e
            .xattrs
            .into_iter()
            .filter_map(|(k, v)| {
                let k = String::from_utf8(k).ok()?;
                KEPT_XATTRS.contains(&k.as_str()).then_some((k, v))
            })
            .collect();
        out.push(CommitEntry {
            path,
            kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            xattrs,
            link_group,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_dev_matches_libc() {
        for (ma, mi) in [(1u32, 3u32), (8, 1), (259, 65536), (4095, 255)] {
            let dev = libc::makedev(ma, mi);
            assert_eq!(split_dev(dev), (ma, mi));
        }
    }
}
