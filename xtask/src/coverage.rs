//! `cargo xtask coverage [PACKAGE...]`: line coverage of a crate's own
//! tests, with LLVM's source-based coverage (`-C instrument-coverage`).
//!
//! For each package (default: `nvmm-assist`, then `nvmm`) it runs
//! `cargo test -p PACKAGE --release --all-features` instrumented, in its
//! own target directory (`target/coverage`, so that the normal builds keep
//! their artifacts), merges the raw profiles with `llvm-profdata` and
//! prints `llvm-cov report`'s table for the package's test executables.
//! It also writes every line that never ran to
//! `target/coverage/<package>-uncovered.txt` (`file: line| count| source`),
//! the list to read when looking for untested paths. Test code
//! (`tests/`, `*_tests.rs`, the shared test support) and the dependencies
//! are left out of the figures.
//!
//! The LLVM tools come with the toolchain's `llvm-tools` component, which
//! is installed with rustup when missing. Not part of `cargo xtask ci`:
//! the instrumented release build takes several minutes per crate.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fail;
use crate::util::{Result, cargo, program_exists, run, target_dir, workspace_root};

/// The packages measured when none is named, in this order.
const PACKAGES: [&str; 2] = ["nvmm-assist", "nvmm"];

/// Files left out of the figures: the dependencies and the standard
/// library, and test code (integration tests, `#[path]` test modules, the
/// shared test support and harnesses that live under `src/`).
const IGNORE: &str = "(/.cargo/|/rustc/|/tests/|_tests\\.rs|testutil|test_rng|lane_harness)";

pub fn run_all(args: &[String]) -> Result<()> {
    let packages = parse(args)?;
    let tools = llvm_tools()?;
    let root = target_dir().join("coverage");
    let mut summaries = Vec::new();
    for package in &packages {
        let paths = Paths::new(&root, package);
        println!("\n==> coverage: {package}");
        let objects = build_and_test(package, &paths)?;
        merge(&tools, &paths)?;
        let sources = workspace_root().join(package).join("src");
        let report = llvm_cov(&tools, "report", &objects, &paths, &sources)?;
        print!("{report}");
        let show = llvm_cov(&tools, "show", &objects, &paths, &sources)?;
        let uncovered = uncovered_lines(&show, &workspace_root());
        let mut listing = uncovered.join("\n");
        listing.push('\n');
        crate::util::write_atomically(&paths.uncovered, listing.as_bytes())?;
        summaries.push(format!(
            "{package}: {} ({} lines never ran, listed in {})",
            total_line(&report).unwrap_or_else(|| "no TOTAL line".to_owned()),
            uncovered.len(),
            paths.uncovered.display()
        ));
    }
    println!();
    for line in summaries {
        println!("coverage: {line}");
    }
    Ok(())
}

/// The packages to measure: the arguments, each one of [`PACKAGES`], or
/// all of them.
fn parse(args: &[String]) -> Result<Vec<String>> {
    if args.is_empty() {
        return Ok(PACKAGES.iter().map(|p| (*p).to_owned()).collect());
    }
    let mut packages: Vec<String> = Vec::new();
    for arg in args {
        if !PACKAGES.contains(&arg.as_str()) {
            return Err(fail!(
                "coverage: unknown package `{arg}` (one of: {})",
                PACKAGES.join(", ")
            ));
        }
        if !packages.contains(arg) {
            packages.push(arg.clone());
        }
    }
    Ok(packages)
}

/// Where one package's run keeps its files, under the coverage target
/// directory `root`.
#[derive(Debug, PartialEq, Eq)]
struct Paths {
    /// The cargo target directory of the instrumented build (shared by
    /// the packages, so that a common dependency is built once).
    target: PathBuf,
    /// The raw profiles of this package's test run.
    profiles: PathBuf,
    /// The merged profile.
    merged: PathBuf,
    /// The lines that never ran.
    uncovered: PathBuf,
}

impl Paths {
    fn new(root: &Path, package: &str) -> Paths {
        Paths {
            target: root.to_path_buf(),
            profiles: root.join("profiles").join(package),
            merged: root.join(format!("{package}.profdata")),
            uncovered: root.join(format!("{package}-uncovered.txt")),
        }
    }

    /// `LLVM_PROFILE_FILE`: one file per process and binary.
    fn profile_pattern(&self) -> PathBuf {
        self.profiles.join("%p-%m.profraw")
    }
}

/// The environment of the instrumented `cargo test`.
fn test_env(paths: &Paths) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("CARGO_TARGET_DIR", paths.target.clone()),
        ("RUSTFLAGS", PathBuf::from("-C instrument-coverage")),
        ("LLVM_PROFILE_FILE", paths.profile_pattern()),
    ]
}

/// The arguments of the instrumented `cargo test` (`extra`: `--no-run
/// --message-format=json` to list the executables).
fn test_args(package: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["test", "-p", package, "--release", "--all-features"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Builds the package's tests instrumented, lists their executables, then
/// runs them (fresh raw profiles). Returns the executables.
fn build_and_test(package: &str, paths: &Paths) -> Result<Vec<PathBuf>> {
    let mut list = cargo();
    list.args(test_args(package, &["--no-run", "--message-format=json"]));
    list.envs(test_env(paths));
    list.stderr(std::process::Stdio::inherit());
    let out = list
        .output()
        .map_err(|err| fail!("coverage: cannot run cargo test --no-run: {err}"))?;
    if !out.status.success() {
        return Err(fail!(
            "coverage: building the tests of {package} failed ({})",
            out.status
        ));
    }
    let objects = test_executables(&String::from_utf8_lossy(&out.stdout));
    if objects.is_empty() {
        return Err(fail!("coverage: {package} has no test executable"));
    }
    if paths.profiles.exists() {
        std::fs::remove_dir_all(&paths.profiles)
            .map_err(|err| fail!("cannot empty {}: {err}", paths.profiles.display()))?;
    }
    std::fs::create_dir_all(&paths.profiles)
        .map_err(|err| fail!("cannot create {}: {err}", paths.profiles.display()))?;
    let mut test = cargo();
    test.args(test_args(package, &[])).envs(test_env(paths));
    run(&mut test, "instrumented cargo test")?;
    Ok(objects)
}

/// The test executables in `cargo test --no-run --message-format=json`
/// output: the artifacts built with the test profile (unit tests,
/// integration tests, benches and examples built as tests), in order.
fn test_executables(json_lines: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for line in json_lines.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message.get("reason").and_then(|r| r.as_str()) != Some("compiler-artifact") {
            continue;
        }
        let is_test = message
            .get("profile")
            .and_then(|p| p.get("test"))
            .and_then(|t| t.as_bool())
            == Some(true);
        let Some(executable) = message.get("executable").and_then(|e| e.as_str()) else {
            continue;
        };
        let path = PathBuf::from(executable);
        if is_test && !found.contains(&path) {
            found.push(path);
        }
    }
    found
}

/// `llvm-profdata` and `llvm-cov` of the toolchain.
struct Tools {
    profdata: PathBuf,
    cov: PathBuf,
}

/// The toolchain's LLVM tools, installing the `llvm-tools` component with
/// rustup if they are missing.
fn llvm_tools() -> Result<Tools> {
    let dir = llvm_tools_dir()?;
    let tools = Tools {
        profdata: dir.join(exe("llvm-profdata")),
        cov: dir.join(exe("llvm-cov")),
    };
    if tools.profdata.exists() && tools.cov.exists() {
        return Ok(tools);
    }
    if !program_exists("rustup") {
        return Err(fail!(
            "coverage: {} missing and no rustup to install llvm-tools",
            tools.cov.display()
        ));
    }
    eprintln!("xtask: installing the llvm-tools component with rustup");
    let mut add = Command::new("rustup");
    add.args(["component", "add", "llvm-tools"])
        .current_dir(workspace_root());
    run(&mut add, "rustup component add llvm-tools")?;
    if tools.profdata.exists() && tools.cov.exists() {
        Ok(tools)
    } else {
        Err(fail!(
            "coverage: {} still missing after installing llvm-tools",
            tools.cov.display()
        ))
    }
}

/// `<sysroot>/lib/rustlib/<host>/bin` of the workspace's `rustc`.
fn llvm_tools_dir() -> Result<PathBuf> {
    let rustc = |arg: &str| -> Result<String> {
        let out = Command::new("rustc")
            .arg(arg)
            .current_dir(workspace_root())
            .output()
            .map_err(|err| fail!("coverage: cannot run rustc {arg}: {err}"))?;
        if !out.status.success() {
            return Err(fail!("coverage: rustc {arg} failed ({})", out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let sysroot = rustc("--print=sysroot")?;
    let version = rustc("-vV")?;
    let host = host_triple(&version)
        .ok_or_else(|| fail!("coverage: no host line in `rustc -vV` output"))?;
    Ok(tools_dir(Path::new(sysroot.trim()), host))
}

/// The `host:` triple of `rustc -vV` output.
fn host_triple(version: &str) -> Option<&str> {
    version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::trim)
}

fn tools_dir(sysroot: &Path, host: &str) -> PathBuf {
    sysroot.join("lib").join("rustlib").join(host).join("bin")
}

fn exe(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

/// Merges the run's raw profiles into `paths.merged`.
fn merge(tools: &Tools, paths: &Paths) -> Result<()> {
    let mut raw: Vec<PathBuf> = std::fs::read_dir(&paths.profiles)
        .map_err(|err| fail!("cannot list {}: {err}", paths.profiles.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "profraw"))
        .collect();
    raw.sort();
    if raw.is_empty() {
        return Err(fail!(
            "coverage: no raw profile in {}",
            paths.profiles.display()
        ));
    }
    let mut merge = Command::new(&tools.profdata);
    merge
        .args(["merge", "-sparse"])
        .args(&raw)
        .arg("-o")
        .arg(&paths.merged);
    run(&mut merge, "llvm-profdata merge")
}

/// The arguments of `llvm-cov <command>` (`report` or `show`) over
/// `objects` with the merged profile, for the files under `sources` (the
/// package's own: `nvmm`'s test executables hold `nvmm-assist`'s and
/// `nvmm-sys`'s code too, which their own tests measure).
fn cov_args(command: &str, objects: &[PathBuf], paths: &Paths, sources: &Path) -> Vec<String> {
    let mut args = vec![command.to_owned()];
    for object in objects {
        args.push("-object".to_owned());
        args.push(object.display().to_string());
    }
    args.push(format!("-instr-profile={}", paths.merged.display()));
    args.push(format!("--ignore-filename-regex={IGNORE}"));
    if command == "show" {
        args.push("-show-instantiations=false".to_owned());
    }
    args.push("-sources".to_owned());
    args.push(sources.display().to_string());
    args
}

/// Runs `llvm-cov` and returns its output.
fn llvm_cov(
    tools: &Tools,
    command: &str,
    objects: &[PathBuf],
    paths: &Paths,
    sources: &Path,
) -> Result<String> {
    let out = Command::new(&tools.cov)
        .args(cov_args(command, objects, paths, sources))
        .output()
        .map_err(|err| fail!("coverage: cannot run llvm-cov: {err}"))?;
    if !out.status.success() {
        return Err(fail!(
            "llvm-cov {command} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lines `llvm-cov show` counts as run 0 times, as `file: line|
/// count| source` with the file relative to `root`. `show` prints each
/// file's name on a line of its own ending in `:`, then `line| count|
/// source` lines (the count empty for lines that are not code).
fn uncovered_lines(show: &str, root: &Path) -> Vec<String> {
    let prefix = format!("{}/", root.display());
    let mut file = String::new();
    let mut found = Vec::new();
    for line in show.lines() {
        if !line.starts_with(' ') && line.ends_with(':') && !line.contains('|') {
            let name = line.trim_end_matches(':');
            file = name.strip_prefix(&prefix).unwrap_or(name).to_owned();
            continue;
        }
        let mut fields = line.splitn(3, '|');
        let (Some(number), Some(count), Some(source)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if count.trim() == "0" && number.trim().parse::<u32>().is_ok() {
            found.push(format!("{file}:{number}|{count}|{source}"));
        }
    }
    found
}

/// The line coverage of `llvm-cov report`'s `TOTAL` row, as
/// `covered/total lines (percent)`: the table's columns are regions
/// (total, missed, cover), functions (the same three), then lines.
fn total_line(report: &str) -> Option<String> {
    let total = report.lines().find(|l| l.starts_with("TOTAL"))?;
    let fields: Vec<&str> = total.split_whitespace().collect();
    let lines: u64 = fields.get(7)?.parse().ok()?;
    let missed: u64 = fields.get(8)?.parse().ok()?;
    let percent = fields.get(9)?;
    Some(format!(
        "{} of {lines} lines ran ({percent})",
        lines.saturating_sub(missed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn packages_default_to_both_and_reject_others() {
        assert_eq!(parse(&[]).unwrap(), strings(&["nvmm-assist", "nvmm"]));
        assert_eq!(parse(&strings(&["nvmm"])).unwrap(), strings(&["nvmm"]));
        assert_eq!(
            parse(&strings(&["nvmm", "nvmm-assist", "nvmm"])).unwrap(),
            strings(&["nvmm", "nvmm-assist"])
        );
        let err = parse(&strings(&["xtask"])).unwrap_err();
        assert!(err.0.contains("unknown package `xtask`"), "{err}");
    }

    #[test]
    fn paths_and_commands() {
        let paths = Paths::new(Path::new("/w/target/coverage"), "nvmm-assist");
        assert_eq!(
            paths,
            Paths {
                target: "/w/target/coverage".into(),
                profiles: "/w/target/coverage/profiles/nvmm-assist".into(),
                merged: "/w/target/coverage/nvmm-assist.profdata".into(),
                uncovered: "/w/target/coverage/nvmm-assist-uncovered.txt".into(),
            }
        );
        assert_eq!(
            test_env(&paths),
            [
                ("CARGO_TARGET_DIR", PathBuf::from("/w/target/coverage")),
                ("RUSTFLAGS", PathBuf::from("-C instrument-coverage")),
                (
                    "LLVM_PROFILE_FILE",
                    PathBuf::from("/w/target/coverage/profiles/nvmm-assist/%p-%m.profraw")
                ),
            ]
        );
        assert_eq!(
            test_args("nvmm", &["--no-run"]),
            strings(&[
                "test",
                "-p",
                "nvmm",
                "--release",
                "--all-features",
                "--no-run"
            ])
        );
        let objects = [PathBuf::from("/a/t1"), PathBuf::from("/a/t2")];
        let sources = Path::new("/w/nvmm-assist/src");
        assert_eq!(
            cov_args("report", &objects, &paths, sources),
            strings(&[
                "report",
                "-object",
                "/a/t1",
                "-object",
                "/a/t2",
                "-instr-profile=/w/target/coverage/nvmm-assist.profdata",
                &format!("--ignore-filename-regex={IGNORE}"),
                "-sources",
                "/w/nvmm-assist/src",
            ])
        );
        let show = cov_args("show", &objects[..1], &paths, sources);
        assert_eq!(
            show[show.len() - 3..],
            strings(&[
                "-show-instantiations=false",
                "-sources",
                "/w/nvmm-assist/src"
            ])
        );
    }

    #[test]
    fn finds_the_tools_of_the_host() {
        let version = "rustc 1.95.0 (abc 2026-01-01)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n";
        assert_eq!(host_triple(version), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(host_triple("rustc 1.95.0\n"), None);
        assert_eq!(
            tools_dir(Path::new("/r/tc"), "x86_64-unknown-linux-gnu"),
            PathBuf::from("/r/tc/lib/rustlib/x86_64-unknown-linux-gnu/bin")
        );
    }

    #[test]
    fn lists_only_test_executables() {
        let json = [
            r#"{"reason":"compiler-artifact","profile":{"test":false},"executable":null,"target":{"name":"libc"}}"#,
            r#"{"reason":"compiler-artifact","profile":{"test":true},"executable":"/t/deps/nvmm_assist-1","target":{"name":"nvmm_assist"}}"#,
            r#"{"reason":"compiler-artifact","profile":{"test":false},"executable":"/t/examples/explain","target":{"name":"explain"}}"#,
            "not json",
            r#"{"reason":"build-finished","success":true}"#,
            r#"{"reason":"compiler-artifact","profile":{"test":true},"executable":"/t/deps/suite-2","target":{"name":"suite"}}"#,
            r#"{"reason":"compiler-artifact","profile":{"test":true},"executable":"/t/deps/suite-2","target":{"name":"suite"}}"#,
        ]
        .join("\n");
        assert_eq!(
            test_executables(&json),
            [
                PathBuf::from("/t/deps/nvmm_assist-1"),
                PathBuf::from("/t/deps/suite-2")
            ]
        );
    }

    #[test]
    fn picks_the_lines_that_never_ran() {
        let show = "/w/nvmm-assist/src/a.rs:\n    1|       |//! doc\n    2|      5|fn a() {\n    3|      0|    return;\n   10|  1.20k|}\n\n/w/nvmm-assist/src/b.rs:\n   7|      0|x: y|z\n  ------------------\n  | Unexecuted instantiation: f\n  ------------------\n";
        assert_eq!(
            uncovered_lines(show, Path::new("/w")),
            [
                "nvmm-assist/src/a.rs:    3|      0|    return;",
                "nvmm-assist/src/b.rs:   7|      0|x: y|z",
            ]
        );
    }

    #[test]
    fn reads_the_total_line_coverage() {
        let report = "Filename Regions Missed Cover Functions Missed Executed Lines Missed Cover Branches\n---\nTOTAL 5000 300 94.00% 400 10 97.50% 4600 253 94.50% 0 0 -\n";
        assert_eq!(
            total_line(report).as_deref(),
            Some("4347 of 4600 lines ran (94.50%)")
        );
        assert_eq!(total_line("no table"), None);
    }
}
