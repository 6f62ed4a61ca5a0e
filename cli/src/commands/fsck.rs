//! `strata fsck [--repair]`.

use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use layerstore::blobs::{ExpectedBlob, LayerBlob};
use layerstore::repair::RepairReport;
use layerstore::{FsckReport, Problem, Store};

use crate::Globals;
use crate::output::print_json;
use crate::registry::client::{Client, ClientOptions, Payload};

use super::push::TlsArgs;

/// Verify the store: index integrity, every object's hash, every layer regenerated against
/// its DiffID, every image's config against its ID. Exit code 1 when damage is found (or, with
/// --repair, when some is left).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Threads that rehash objects (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Restore missing or damaged objects from the compressed layer blobs kept from pulls,
    /// else from the registry each layer was pulled from; remove the damaged files of those
    /// no copy restores (a read then fails instead of returning wrong bytes) and list the
    /// files and images that lost them. Importing the same tar again restores those.
    #[arg(long)]
    pub repair: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `--format json` output with `--repair`: the check, what the repair did, the check after.
#[derive(Debug, serde::Serialize)]
struct RepairOutput<'a> {
    before: &'a FsckReport,
    repair: &'a RepairReport,
    after: &'a FsckReport,
}

/// Runs `fsck`.
///
/// # Errors
/// The check could not run.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    if a.repair
        && let Some(code) = crate::runtime::enter_userns_for_container_files(&g.root)?
    {
        return Ok(code);
    }
    let store = g.store()?;
    let containers = check_containers(g, &store, a.repair)?;
    let workers = a.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let mut rep = store.fsck(workers)?;
    rep.errors.extend(containers);
    if !a.repair {
        if g.json() {
            print_json(&rep)?;
        } else {
            print_report(&rep);
        }
        return Ok(exit_code(&rep));
    }
    let opts = a.tls.options(g)?;
    let mut refetch = |b: &LayerBlob| refetch(&store, &opts, b).map_err(|e| format!("{e:#}"));
    let fixed = store.repair_objects(&rep.damaged_objects, &mut refetch)?;
    let after = if rep.ok() && fixed.restored.is_empty() && fixed.lost.is_empty() {
        rep.clone()
    } else {
        let mut after = store.fsck(workers)?;
        after.errors.extend(check_containers(g, &store, false)?);
        after
    };
    if g.json() {
        print_json(&RepairOutput {
            before: &rep,
            repair: &fixed,
            after: &after,
        })?;
    } else {
        print_repair(&rep, &fixed);
        print_report(&after);
    }
    Ok(exit_code(&after))
}

fn exit_code(rep: &FsckReport) -> ExitCode {
    if rep.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_report(rep: &FsckReport) {
    for p in &rep.errors {
        println!("error: {}: {}", p.subject, p.message);
    }
    for p in &rep.warnings {
        println!("warning: {}: {}", p.subject, p.message);
    }
    println!(
        "checked {} objects, {} layers, {} images: {} errors, {} warnings",
        rep.objects,
        rep.layers,
        rep.images,
        rep.errors.len(),
        rep.warnings.len()
    );
}

/// What was found, restored and lost, before the check that follows the repair.
fn print_repair(before: &FsckReport, fixed: &RepairReport) {
    if before.damaged_objects.is_empty() {
        println!("repair: no missing or damaged object");
        return;
    }
    println!(
        "repair: {} missing or damaged objects",
        before.damaged_objects.len()
    );
    for r in &fixed.restored {
        println!("restored: object {} from {}", r.object, r.from);
    }
    for f in &fixed.failed_sources {
        println!("repair: could not use {}: {}", f.subject, f.message);
    }
    for l in &fixed.lost {
        let what = if l.removed {
            "its damaged file was removed"
        } else {
            "its file is missing"
        };
        println!("lost: object {} ({} bytes): {what}", l.object, l.size);
        for u in &l.uses {
            let images = if u.images.is_empty() {
                "no image".to_owned()
            } else {
                u.images.join(", ")
            };
            println!("  /{} in layer {} ({images})", u.path, u.layer.short());
        }
    }
    if !fixed.lost.is_empty() {
        println!(
            "lost objects come back when the same tar is imported again ('strata import'); \
             for an image that came from 'load' or 'pull' (both skip layers the store has), \
             remove it ('strata rmi'), run 'strata gc', then load or pull it again"
        );
    }
}

/// Fetches `b` again from the registry it came from and ingests it (see
/// [`Store::repair_objects`]); `Ok(false)` when it records no source.
fn refetch(store: &Store, opts: &ClientOptions, b: &LayerBlob) -> Result<bool> {
    let Some((registry, repo)) = b.source.as_deref().and_then(|s| s.split_once('/')) else {
        return Ok(false);
    };
    let client = Client::new(registry, opts)?;
    let url = format!("{}/v2/{repo}/blobs/{}", client.base()?, b.digest);
    let scopes = vec![format!("repository:{repo}:pull")];
    let resp = client.request("GET", &url, &[], Payload::Empty, &scopes, true)?;
    if resp.status().as_u16() != 200 {
        return Err(client.error_of(resp, &format!("fetching blob {} of {repo}", b.digest)));
    }
    let expected = ExpectedBlob {
        digest: b.digest,
        size: b.size,
        media_type: b.media_type.clone(),
    };
    let source = format!("{registry}/{repo}");
    let body = resp.into_body().into_reader();
    if let Err(e) = store.pull_layer(body, &expected, &b.diff_id, &source, false) {
        bail!("{}", e.chain_text());
    }
    Ok(true)
}

/// Container leftovers: directories under `containers/` without a record (a crash between
/// the record and the directory) and mounts under it whose owner is gone (kill -9 of
/// `strata run`). With `repair`, the stale mounts are detached and the orphan directories
/// removed, and what could not be fixed is returned; else what was found.
fn check_containers(g: &Globals, store: &Store, repair: bool) -> Result<Vec<Problem>> {
    use crate::commands::container::{is_live, lazy_unmount, reap_dead};
    let mut problems = Vec::new();
    // Stale mounts of recorded containers.
    for c in store.containers()? {
        if is_live(&g.root, store, &c) {
            continue;
        }
        let mnt = c
            .dir
            .canonicalize()
            .map(|d| d.join("rootfs"))
            .unwrap_or_else(|_| c.dir.join("rootfs"));
        if !crate::union::is_mountpoint(&mnt)? {
            continue;
        }
        if repair {
            match reap_dead(&g.root, store, &c) {
                Ok(_) => println!("repaired: unmounted the stale mount {}", mnt.display()),
                Err(e) => problems.push(Problem {
                    subject: format!("container {}", c.name),
                    message: format!("{e:#}"),
                }),
            }
        } else {
            problems.push(Problem {
                subject: format!("container {}", c.name),
                message: format!(
                    "{} is a stale mount (the process that mounted it is gone); 'strata fsck \
                     --repair' or 'strata rm {}' detaches it",
                    mnt.display(),
                    c.name
                ),
            });
        }
    }
    // Orphan directories, and mounts left inside them.
    let _x = if repair {
        Some(store.lock_exclusive()?)
    } else {
        None
    };
    for d in store.orphan_container_dirs()? {
        let base = d.canonicalize().unwrap_or_else(|_| d.clone());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| PathBuf::from(m.replace("\\040", " ")))
            .filter(|m| m.starts_with(&base))
            .collect();
        mounts.sort();
        mounts.dedup();
        if !repair {
            for m in &mounts {
                problems.push(Problem {
                    subject: format!("mount {}", m.display()),
                    message: "a stale mount in a container directory without a record; \
                              'strata fsck --repair' detaches it"
                        .into(),
                });
            }
            problems.push(Problem {
                subject: format!("container directory {}", d.display()),
                message: "no container record names it (left by an interrupted rm or \
                          create); 'strata fsck --repair' removes it"
                    .into(),
            });
            continue;
        }
        let r = (|| -> Result<()> {
            for m in mounts.iter().rev() {
                lazy_unmount(m)?;
                println!("repaired: unmounted the stale mount {}", m.display());
            }
            std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
            println!(
                "repaired: removed the orphan container directory {}",
                d.display()
            );
            Ok(())
        })();
        if let Err(e) = r {
            problems.push(Problem {
                subject: format!("container directory {}", d.display()),
                message: format!("{e:#}"),
            });
        }
    }
    Ok(problems)
}
