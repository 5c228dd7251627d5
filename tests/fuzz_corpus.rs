//! Replays the mesh-file fuzzer's inputs through the loader in the normal
//! test run: the seed corpus (`fuzz/corpus/mesh_yaml/`, including any
//! `seed-crash-*.yaml` kept from a fuzzer finding) and, when present, the
//! fuzzer's crash artifacts (`fuzz/artifacts/mesh_yaml/`). Each file must
//! pass the fuzz target's own check (`fuzz/common/mesh_check.rs`): no panic,
//! one-line errors, and the invariants of an accepted config. Fuzzing itself
//! is `fuzz/run.sh [SECONDS]`.

use std::fs;
use std::io::ErrorKind;
use std::panic;
use std::path::{Path, PathBuf};

#[path = "../fuzz/common/mesh_check.rs"]
mod mesh_check;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("read corpus directory").path())
        .filter(|path| path.is_file())
        .filter(|path| {
            !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&root.join("corpus/mesh_yaml"));
    assert!(
        corpus
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".yaml")),
        "no seed files in fuzz/corpus/mesh_yaml"
    );
    let artifacts = inputs(&root.join("artifacts/mesh_yaml"));

    let mut failed = Vec::new();
    for path in corpus.iter().chain(&artifacts) {
        let data = match fs::read(path) {
            Ok(data) => data,
            // A fuzzer running beside the test replaces corpus files as it
            // shrinks them; a file gone since the listing is no failure.
            Err(error) if error.kind() == ErrorKind::NotFound => continue,
            Err(error) => panic!("read {}: {error}", path.display()),
        };
        if panic::catch_unwind(|| mesh_check::check(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} fuzz inputs panicked (messages above): {failed:#?}",
        failed.len(),
        corpus.len() + artifacts.len()
    );
}
