//! Mounted tests: one per section of docs/SEMANTICS.md, plus differential and layer-rotation
//! tests against kernel overlayfs. Each mounts for real under a `strata-test-*` temp dir and
//! always unmounts.

// Fixture helpers outside #[test] fns panic on setup errors by design; clippy's
// allow-unwrap-in-tests only covers the test fns themselves.
#![allow(clippy::unwrap_used)]

mod common;
mod differential;
mod mounting;
mod rotation;
mod semantics;

/// Every test that docs/SEMANTICS.md names exists (so the doc cannot drift from the suite).
#[test]
fn semantics_doc_names_real_tests() {
    let doc = include_str!("../../../docs/SEMANTICS.md");
    let sources = [
        include_str!("semantics.rs"),
        include_str!("differential.rs"),
        include_str!("mounting.rs"),
        include_str!("rotation.rs"),
        // Unit tests of the merge logic without FUSE.
        include_str!("../../src/fs/tests.rs"),
        // The drop-in's end-to-end tests (the CLI's), for its sections.
        include_str!("../../../tests/e2e/overlayfs_cli.rs"),
    ]
    .concat();
    let mut named = Vec::new();
    let mut in_tests_line = false;
    for line in doc.lines() {
        if line.starts_with("Test: ") || line.starts_with("Tests: ") {
            in_tests_line = true;
        } else if line.is_empty() || line.starts_with('-') || line.starts_with('#') {
            in_tests_line = false;
        }
        if in_tests_line {
            // test names are snake_case sentences; other code spans (`st_nlink`) are not
            let is_test_name = |w: &&str| {
                w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    && w.matches('_').count() >= 2
            };
            named.extend(
                line.split('`')
                    .skip(1)
                    .step_by(2)
                    .filter(is_test_name)
                    .map(str::to_owned),
            );
        }
    }
    assert!(named.len() >= 25, "found only {named:?}");
    for name in named {
        assert!(
            sources.contains(&format!("fn {name}(")),
            "SEMANTICS.md names a missing test `{name}`"
        );
    }
}
