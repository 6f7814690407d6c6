//! Replays every committed fuzz input through its target and asserts that none panics: the
//! seed corpus (`fuzz/corpus/<target>/`) and each reproducer a fuzzing run found
//! (`fuzz/regressions/<target>/`). The targets are `fuzz/src/targets.rs`, the same functions
//! the libFuzzer binaries run, so this needs no libFuzzer and runs under `cargo test`.

#[path = "../../fuzz/src/targets.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files_in(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn no_committed_fuzz_input_panics() {
    let names: Vec<&str> = targets::TARGETS.iter().map(|t| t.name).collect();
    for folder in ["corpus", "regressions"] {
        for path in files_in(&fuzz_dir().join(folder))
            .iter()
            .filter(|p| p.is_dir())
        {
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(
                names.contains(&&*name),
                "fuzz/{folder}/{name}: no target of that name (expected one of {names:?})"
            );
        }
    }
    let (mut replayed, mut panicked) = (0, Vec::new());
    for target in &targets::TARGETS {
        for folder in ["corpus", "regressions"] {
            for file in files_in(&fuzz_dir().join(folder).join(target.name)) {
                let entry = format!(
                    "{}/{}",
                    target.name,
                    file.file_name().unwrap().to_string_lossy()
                );
                let bytes = std::fs::read(&file).unwrap();
                replayed += 1;
                if catch_unwind(AssertUnwindSafe(|| (target.run)(&bytes))).is_err() {
                    panicked.push(format!("fuzz/{folder}/{entry}"));
                }
            }
        }
    }
    println!("replayed {replayed} fuzz inputs");
    assert!(
        panicked.is_empty(),
        "these fuzz inputs panic (the message is above each): {panicked:#?}"
    );
    assert!(
        replayed > 0,
        "found no fuzz inputs under {}",
        fuzz_dir().display()
    );
}
