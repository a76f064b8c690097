//! Running a fuzz target's properties over its corpus, on stable: the corpus tests of the main
//! workspace (`crates/*/tests/fuzz_corpus.rs`) include this file.

use std::path::Path;

/// Runs `run` on every file of `fuzz/corpus/<target>/` (seeds, and crashes found so far), failing
/// with the file's name, and checks there are at least `min_inputs` of them.
pub fn replay(target: &str, min_inputs: usize, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(
            outcome.is_ok(),
            "fuzz/corpus/{target}/{} fails",
            path.file_name().unwrap().to_string_lossy()
        );
        inputs += 1;
    }
    assert!(inputs >= min_inputs, "only {inputs} inputs in {}", dir.display());
}
