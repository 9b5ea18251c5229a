//! `cargo xtask bench`: every `[[bench]]` target that `nvmm` and
//! `nvmm-assist` declare, found through `cargo metadata` so that new
//! benchmarks need no change here.

use crate::fail;
use crate::util::{Result, cargo, run};

/// The crates whose benchmarks are run.
const PACKAGES: [&str; 2] = ["nvmm", "nvmm-assist"];

pub fn run_all() -> Result<()> {
    let benches = discover()?;
    if benches.is_empty() {
        println!(
            "bench: neither {} declares a bench target",
            PACKAGES.join(" nor ")
        );
        return Ok(());
    }
    let mut failed = Vec::new();
    for (package, bench) in &benches {
        println!("\n==> bench: cargo bench -p {package} --bench {bench}");
        if let Err(err) = run(
            cargo().args(["bench", "-p", package, "--bench", bench]),
            "cargo bench",
        ) {
            println!("bench: {package}/{bench}: {err}");
            failed.push(format!("{package}/{bench}"));
        }
    }
    println!(
        "\nbench: ran {} bench targets, {} failed",
        benches.len(),
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(fail!("benchmarks failed: {}", failed.join(", ")))
    }
}

/// `(package, bench target)` pairs, in declaration order.
fn discover() -> Result<Vec<(String, String)>> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .map_err(|err| fail!("cannot run cargo metadata: {err}"))?;
    if !out.status.success() {
        return Err(fail!("cargo metadata failed ({})", out.status));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|err| fail!("cargo metadata output: {err}"))?;
    Ok(bench_targets(&metadata))
}

fn bench_targets(metadata: &serde_json::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let packages = metadata
        .get("packages")
        .and_then(|p| p.as_array())
        .map_or(&[][..], Vec::as_slice);
    for package in packages {
        let Some(name) = package.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        if !PACKAGES.contains(&name) {
            continue;
        }
        let targets = package
            .get("targets")
            .and_then(|t| t.as_array())
            .map_or(&[][..], Vec::as_slice);
        for target in targets {
            let is_bench = target
                .get("kind")
                .and_then(|k| k.as_array())
                .is_some_and(|kinds| kinds.iter().any(|k| k.as_str() == Some("bench")));
            if let (true, Some(bench)) = (is_bench, target.get("name").and_then(|n| n.as_str())) {
                found.push((name.to_owned(), bench.to_owned()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_only_bench_targets_of_the_two_crates() {
        let metadata = serde_json::json!({
            "packages": [
                {"name": "nvmm", "targets": [
                    {"name": "nvmm", "kind": ["lib"]},
                    {"name": "run_loop", "kind": ["bench"]},
                ]},
                {"name": "nvmm-assist", "targets": [{"name": "decode", "kind": ["bench"]}]},
                {"name": "xtask", "targets": [{"name": "other", "kind": ["bench"]}]},
            ]
        });
        assert_eq!(
            bench_targets(&metadata),
            [
                ("nvmm".to_owned(), "run_loop".to_owned()),
                ("nvmm-assist".to_owned(), "decode".to_owned())
            ]
        );
    }
}
