//! `strata fsck [--repair]`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use layerstore::blobs::{ExpectedBlob, LayerBlob};
use layerstore::repair::RepairReport;
use layerstore::{FsckReport, Store};

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
    let store = g.store()?;
    let workers = a.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let rep = store.fsck(workers)?;
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
        store.fsck(workers)?
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
