//! `strata history IMAGE`.

use std::process::ExitCode;

use anyhow::Result;

use crate::Globals;
use crate::output::{ellipsis, human_size, print_json, print_table, time_ago};

/// Width of the CREATED BY column without `--no-trunc` (Docker's).
const CREATED_BY_WIDTH: usize = 45;

/// Show the history of an image, newest first (Docker's columns and `<missing>` rule).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: `name[:tag]`, ID or ID prefix.
    pub image: String,
    /// Do not truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Only show image IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs `history`.
///
/// # Errors
/// Unknown image, store errors.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let store = g.store()?;
    let img = store.resolve_image(&a.image)?;
    let rows = store.history(&img)?;
    if g.json() {
        return print_json(&rows).map(|()| ExitCode::SUCCESS);
    }
    let id_text = |d: Option<&layerstore::Digest>| match d {
        Some(d) if a.no_trunc => d.to_string(),
        Some(d) => d.short(),
        None => "<missing>".to_owned(),
    };
    if a.quiet || g.quiet {
        for r in &rows {
            println!("{}", id_text(r.image.as_ref()));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let by = r.created_by.replace('\t', " ");
            vec![
                id_text(r.image.as_ref()),
                time_ago(r.created.as_deref()),
                if a.no_trunc {
                    by
                } else {
                    ellipsis(&by, CREATED_BY_WIDTH)
                },
                human_size(r.size),
                r.comment.clone(),
            ]
        })
        .collect();
    print_table(
        &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        &table,
    )?;
    Ok(ExitCode::SUCCESS)
}
