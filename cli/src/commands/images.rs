//! `strata images`.

use std::process::ExitCode;

use anyhow::Result;

use crate::Globals;
use crate::output::{ImageJson, human_size, print_json, print_table, time_ago};

/// List images: one row per tag, `<none>` for untagged images.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only show image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full IDs.
    #[arg(long)]
    pub no_trunc: bool,
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
                repo_tags: img.tags.iter().map(ToString::to_string).collect(),
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
        let names: Vec<(String, String)> = if img.tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            img.tags
                .iter()
                .map(|t| (t.familiar_name(), t.tag().unwrap_or("<none>").to_owned()))
                .collect()
        };
        for (repo, tag) in names {
            rows.push(vec![
                repo,
                tag,
                id_text(&img.id),
                created.clone(),
                size.clone(),
            ]);
        }
    }
    print_table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows)?;
    Ok(ExitCode::SUCCESS)
}
