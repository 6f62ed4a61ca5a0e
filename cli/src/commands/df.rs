//! `strata df`.

use std::process::ExitCode;

use anyhow::Result;

use crate::Globals;
use crate::output::{human_size, print_json, print_table};

/// Show disk usage: per image its size, the bytes only it uses and the bytes it shares with
/// other images (files are stored once, whatever layer or image they come from).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `df`.
///
/// # Errors
/// Store errors.
pub fn run(g: &Globals, _a: Args) -> Result<ExitCode> {
    let store = g.store()?;
    let rep = store.df()?;
    if g.json() {
        return print_json(&rep).map(|()| ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = rep
        .images
        .iter()
        .map(|i| {
            vec![
                i.id.short(),
                if i.tags.is_empty() {
                    "<none>".into()
                } else {
                    i.tags.join(", ")
                },
                human_size(i.size),
                human_size(i.unique),
                human_size(i.shared),
            ]
        })
        .collect();
    print_table(&["IMAGE ID", "TAGS", "SIZE", "UNIQUE", "SHARED"], &rows)?;
    println!();
    println!(
        "Objects: {} files, {} on disk (the layers as tars would take {}); index {}",
        rep.objects,
        human_size(rep.object_bytes),
        human_size(rep.layer_bytes),
        human_size(rep.index_bytes)
    );
    println!(
        "Reclaimable by 'strata gc': {}",
        human_size(rep.reclaimable)
    );
    Ok(ExitCode::SUCCESS)
}
