//! `strata images`.

use std::process::ExitCode;

use anyhow::Result;
use layerstore::{ImageRecord, ImageRef};

use crate::Globals;
use crate::output::{ImageJson, human_size, print_json, print_table, time_ago};

/// Placeholder of an unknown repository, tag or digest (as docker prints it).
const NONE: &str = "<none>";

/// List images: one row per tag, `<none>` for untagged images.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only show image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// Show repository digests (column DIGEST; `<none>` where none was recorded). Pull and
    /// push record them.
    #[arg(long)]
    pub digests: bool,
}

/// The (repository, tag, digest) rows of one image, as `docker images` makes them: one row
/// per tag (with `digests`: per tag and digest of its repository), then a `<none>`-tag row per
/// repository known only by digest, and one `<none>` row for an image with no reference.
fn name_rows(img: &ImageRecord, digests: bool) -> Vec<(String, String, String)> {
    // Repositories in the order of the image's references (sorted by full name).
    fn group<'a>(
        refs: impl Iterator<Item = &'a ImageRef>,
        part: fn(&ImageRef) -> Option<&str>,
    ) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in refs {
            let repo = r.familiar_name();
            let v = part(r).unwrap_or(NONE).to_owned();
            match out.iter_mut().find(|(n, _)| *n == repo) {
                Some((_, vs)) => vs.push(v),
                None => out.push((repo, vec![v])),
            }
        }
        out
    }
    let tags = group(img.repo_tags(), ImageRef::tag);
    let mut by_repo = group(img.repo_digests(), ImageRef::digest);
    let mut rows = Vec::new();
    for (repo, repo_tags) in &tags {
        let ds = match by_repo.iter().position(|(n, _)| n == repo) {
            Some(i) => by_repo.remove(i).1,
            None => Vec::new(),
        };
        let ds = if digests { ds } else { Vec::new() };
        for tag in repo_tags {
            if ds.is_empty() {
                rows.push((repo.clone(), tag.clone(), NONE.to_owned()));
            }
            for d in &ds {
                rows.push((repo.clone(), tag.clone(), d.clone()));
            }
        }
    }
    for (repo, ds) in by_repo {
        if digests {
            for d in ds {
                rows.push((repo.clone(), NONE.to_owned(), d));
            }
        } else {
            rows.push((repo, NONE.to_owned(), NONE.to_owned()));
        }
    }
    if rows.is_empty() {
        rows.push((NONE.to_owned(), NONE.to_owned(), NONE.to_owned()));
    }
    rows
}

/// Runs `images`.
///
/// # Errors
/// Store errors.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let store = g.store()?;
    let images = store.images()?;
    if g.json() {
        let mut out = Vec::new();
        for img in &images {
            out.push(ImageJson {
                id: img.id.to_string(),
                repo_tags: img.repo_tags().map(ToString::to_string).collect(),
                repo_digests: img.repo_digests().map(ToString::to_string).collect(),
                created: img.created.clone(),
                size: store.image_size(&img.id)?,
                layers: store.chain_ids(img)?.len(),
            });
        }
        return print_json(&out).map(|()| ExitCode::SUCCESS);
    }
    let id_text = |d: &layerstore::Digest| if a.no_trunc { d.to_string() } else { d.short() };
    if a.quiet || g.quiet {
        for img in &images {
            println!("{}", id_text(&img.id));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    for img in &images {
        let size = human_size(store.image_size(&img.id)?);
        let created = time_ago(img.created.as_deref());
        for (repo, tag, digest) in name_rows(img, a.digests) {
            let mut row = vec![repo, tag];
            if a.digests {
                row.push(digest);
            }
            row.extend([id_text(&img.id), created.clone(), size.clone()]);
            rows.push(row);
        }
    }
    let mut head = vec!["REPOSITORY", "TAG"];
    if a.digests {
        head.push("DIGEST");
    }
    head.extend(["IMAGE ID", "CREATED", "SIZE"]);
    print_table(&head, &rows)?;
    Ok(ExitCode::SUCCESS)
}
