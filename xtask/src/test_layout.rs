//! The integration-test layout: `nvmm` and `nvmm-assist` set
//! `autotests = false` and build their `tests/*.rs` files as modules of one
//! binary, `tests/suite.rs` (its module doc says why). Cargo no longer
//! finds a new file by itself, so a file nobody declares would silently
//! never build or run: this test fails instead.

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs;

    use crate::util::workspace_root;

    /// The `path = "..."` values of a manifest's `[[test]]` tables.
    fn manifest_test_paths(manifest: &str) -> BTreeSet<String> {
        let mut paths = BTreeSet::new();
        let mut in_test = false;
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_test = line == "[[test]]";
            } else if in_test && let Some(value) = line.strip_prefix("path = ") {
                paths.insert(value.trim_matches('"').to_string());
            }
        }
        paths
    }

    /// The files `tests/suite.rs` loads with `#[path = "x.rs"]`.
    fn suite_modules(suite: &str) -> BTreeSet<String> {
        suite
            .lines()
            .filter_map(|line| line.trim().strip_prefix("#[path = \""))
            .filter_map(|rest| rest.strip_suffix("\"]"))
            .map(|path| format!("tests/{path}"))
            .collect()
    }

    #[test]
    fn every_integration_test_file_is_built() {
        for krate in ["nvmm", "nvmm-assist"] {
            let dir = workspace_root().join(krate);
            let manifest = fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
            assert!(
                manifest.contains("\nautotests = false\n"),
                "{krate}: this check assumes autotests = false"
            );
            let suite = fs::read_to_string(dir.join("tests/suite.rs")).expect("tests/suite.rs");
            let mut built = manifest_test_paths(&manifest);
            built.extend(suite_modules(&suite));
            let mut files: Vec<String> = fs::read_dir(dir.join("tests"))
                .expect("tests/")
                .filter_map(|entry| {
                    let name = entry.ok()?.file_name().into_string().ok()?;
                    name.ends_with(".rs").then(|| format!("tests/{name}"))
                })
                .collect();
            files.sort();
            assert!(files.len() > 5, "{krate}: {files:?}");
            for file in &files {
                assert!(
                    built.contains(file),
                    "{krate}/{file} is neither a module of tests/suite.rs nor a [[test]] \
                     of Cargo.toml: it would never build or run"
                );
            }
        }
    }
}
