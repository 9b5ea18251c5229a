//! `cargo xtask ci`: the full test suite, one step after another. Every step
//! runs even when an earlier one failed, so one run shows every problem; each
//! prints one line with its time, and a summary closes the run. Its very last
//! line is a cargo-test-style summary over every test the run executed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fail;
use crate::util::{Result, cargo, program_exists, workspace_root};
use crate::{netbsd, publish, regen};

/// The total fuzzing time, shared among the fuzz targets.
const FUZZ_BUDGET: Duration = Duration::from_secs(60);
/// miri flags for the whole `nvmm` suite (every test that makes no real
/// syscall: all of them run over the in-process kernel model; the two that
/// need the OS, real signals and a real `open`, are `cfg(not(miri))`).
const MIRI_FLAGS: &str = "-Zmiri-strict-provenance";
/// The concurrency tests (`nvmm/tests/concurrency.rs`: threads racing on
/// guest RAM, page tables and stop flags) again, under more thread
/// schedules. Four seeds: each reruns the binary (about 10 s of miri on a
/// shared 2-core machine); the whole suite above already ran one.
const MIRI_SEEDS: &str = "-Zmiri-many-seeds=0..4";
/// A sanitizer the `nvmm` tests run under, with std rebuilt instrumented.
struct Sanitizer {
    /// The step's name.
    name: &'static str,
    /// The `-Zsanitizer=` value.
    flag: &'static str,
    /// Its own target directory, so that its instrumented std and crates
    /// never replace the ordinary build's.
    target_dir: &'static str,
    /// The runtime's options variable and its value.
    options: (&'static str, &'static str),
}

/// ThreadSanitizer: data races between VCPU, device and stopping threads
/// on the comm page, guest RAM and stop flags.
const TSAN: Sanitizer = Sanitizer {
    name: "thread sanitizer (nvmm)",
    flag: "thread",
    target_dir: "target/tsan",
    // A report fails the test binary, not only prints.
    options: ("TSAN_OPTIONS", "halt_on_error=1 abort_on_error=1"),
};

/// AddressSanitizer (with LeakSanitizer): the `unsafe` code's memory
/// accesses through mmap'd comm pages and guest RAM, raw pointers and
/// FFI, which miri cannot run (it has no mmap or ioctl), checked for
/// out-of-bounds and use-after-free accesses, and leaks at exit.
const ASAN: Sanitizer = Sanitizer {
    name: "address sanitizer (nvmm)",
    flag: "address",
    target_dir: "target/asan",
    options: (
        "ASAN_OPTIONS",
        "halt_on_error=1 abort_on_error=1 detect_leaks=1 detect_stack_use_after_return=1",
    ),
};

/// How a step ended.
enum Outcome {
    Passed(Option<String>),
    Failed(String),
    Skipped(String),
}

struct StepResult {
    name: &'static str,
    outcome: Outcome,
    time: Duration,
}

/// Test counts from libtest's `test result:` lines.
#[derive(Default, Clone, Copy)]
struct TestCounts {
    passed: u64,
    failed: u64,
    ignored: u64,
    measured: u64,
    filtered_out: u64,
}

impl TestCounts {
    fn add(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.measured += other.measured;
        self.filtered_out += other.filtered_out;
    }

    /// Parses "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; ...".
    fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let mut counts = Self::default();
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(number), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => counts.passed = number,
                "failed" => counts.failed = number,
                "ignored" => counts.ignored = number,
                "measured" => counts.measured = number,
                "filtered" => counts.filtered_out = number,
                _ => {}
            }
        }
        Some(counts)
    }
}

struct Ci {
    results: Vec<StepResult>,
    tests: TestCounts,
    test_time: Duration,
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    let mut ci = Ci {
        results: Vec::new(),
        tests: TestCounts::default(),
        test_time: Duration::ZERO,
    };

    ci.step("fmt", || {
        run_plain(cargo().args(["fmt", "--all", "--check"]))
    });
    ci.step("clippy (host, all targets)", || {
        run_plain(cargo().args([
            "clippy",
            "--workspace",
            "--all-features",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // `nvmm` without its default `assist` feature: the library and the
        // tests that do not need the assist still build and lint clean.
        run_plain(cargo().args([
            "clippy",
            "-p",
            "nvmm",
            "--no-default-features",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    ci.step("clippy (x86_64-unknown-netbsd)", || {
        netbsd::ensure_target()?;
        run_plain(
            cargo()
                .args(["clippy", "--all-features"])
                .args(netbsd::WORKSPACE_TARGETS)
                .args(["--target", netbsd::TARGET, "--", "-D", "warnings"]),
        )
    });
    ci.test_step(
        "test (debug)",
        cargo().args(["test", "--workspace", "--all-features", "--no-fail-fast"]),
    );
    // xtask's own tests ran in debug; building bindgen and regex optimised
    // would only cost minutes.
    ci.test_step(
        "test (release)",
        cargo().args([
            "test",
            "--workspace",
            "--all-features",
            "--exclude",
            "xtask",
            "--release",
            "--no-fail-fast",
        ]),
    );
    ci.step("doc (public, then private items)", || {
        let doc = |private: bool| {
            let mut command = cargo();
            command.args([
                "doc",
                "--workspace",
                "--all-features",
                "--exclude",
                "xtask",
                "--no-deps",
            ]);
            // The private pass keeps the internal module docs' links
            // (executors, walker, comm page) from rotting unnoticed.
            if private {
                command.arg("--document-private-items");
            }
            command.env("RUSTDOCFLAGS", "-D warnings");
            command
        };
        run_plain(&mut doc(false))?;
        run_plain(&mut doc(true))
    });
    ci.step("package (nvmm-sys, nvmm-assist, nvmm)", publish::package);
    ci.optional_step("msrv (libraries)", publish::msrv);
    ci.optional_step("cargo-deny", publish::deny);
    ci.step("regen --check", || {
        regen::run(&regen::Options {
            sysroot: None,
            check: true,
        })
        .map(|()| None)
    });
    ci.step("netbsd", || netbsd::run().map(|()| None));
    ci.miri();
    ci.sanitizer(&TSAN);
    ci.sanitizer(&ASAN);
    ci.fuzz();

    ci.summary(started.elapsed())
}

impl Ci {
    /// Runs one step; `Ok(Some(note))` adds a note to its line.
    fn step(&mut self, name: &'static str, body: impl FnOnce() -> Result<Option<String>>) {
        println!("\n==> ci: {name}");
        let start = Instant::now();
        let outcome = match body() {
            Ok(note) => Outcome::Passed(note),
            Err(err) => Outcome::Failed(err.to_string()),
        };
        self.finish(name, outcome, start.elapsed());
    }

    /// A step that may be skipped: `Ok(Err(reason))` skips it.
    fn optional_step(
        &mut self,
        name: &'static str,
        body: impl FnOnce() -> Result<std::result::Result<String, String>>,
    ) {
        println!("\n==> ci: {name}");
        let start = Instant::now();
        let outcome = match body() {
            Ok(Ok(note)) => Outcome::Passed(Some(note)),
            Ok(Err(reason)) => Outcome::Skipped(reason),
            Err(err) => Outcome::Failed(err.to_string()),
        };
        self.finish(name, outcome, start.elapsed());
    }

    fn finish(&mut self, name: &'static str, outcome: Outcome, time: Duration) {
        println!("{}", step_line(name, &outcome, time));
        self.results.push(StepResult {
            name,
            outcome,
            time,
        });
    }

    /// A step that runs libtest binaries: their `test result:` lines are counted.
    fn test_step(&mut self, name: &'static str, command: &mut Command) {
        println!("\n==> ci: {name}");
        let start = Instant::now();
        let outcome = self.counted(run_counting_tests(command), None, |counts| {
            Outcome::Passed(Some(format!(
                "{} passed, {} ignored",
                counts.passed, counts.ignored
            )))
        });
        self.finish_test_step(name, outcome, start);
    }

    /// Adds a test run's counts to the totals and turns it into the step's
    /// outcome: `passed` describes a successful run; with `empty` set, a
    /// run that passed no test fails with that message (and adds nothing),
    /// so such a step never passes vacuously.
    fn counted(
        &mut self,
        run: std::result::Result<TestCounts, (crate::util::Error, TestCounts)>,
        empty: Option<&str>,
        passed: impl FnOnce(TestCounts) -> Outcome,
    ) -> Outcome {
        match run {
            Ok(counts) => match empty {
                Some(message) if counts.passed == 0 => Outcome::Failed(message.to_owned()),
                _ => {
                    self.tests.add(counts);
                    passed(counts)
                }
            },
            Err((err, counts)) => {
                self.tests.add(counts);
                Outcome::Failed(err.to_string())
            }
        }
    }

    /// Ends a step that ran tests: its time counts as test time.
    fn finish_test_step(&mut self, name: &'static str, outcome: Outcome, start: Instant) {
        let time = start.elapsed();
        self.test_time += time;
        self.finish(name, outcome, time);
    }

    fn miri(&mut self) {
        let name = "miri (nvmm suite)";
        println!("\n==> ci: {name}");
        let start = Instant::now();
        if let Err(reason) = ensure_nightly(&["miri", "--version"], &["miri", "rust-src"]) {
            self.finish(name, Outcome::Skipped(reason), start.elapsed());
            return;
        }
        let mut whole = nightly_cargo();
        whole
            .args(["miri", "test", "-p", "nvmm", "--tests"])
            .env("MIRIFLAGS", MIRI_FLAGS);
        let run = run_counting_tests(&mut whole);
        let outcome = self.counted(run, Some("no nvmm test ran under miri"), |counts| {
            let whole_time = start.elapsed();
            // Each seed reruns the binaries; their results are not
            // counted again.
            let seeds = Instant::now();
            let flags = format!("{MIRI_FLAGS} {MIRI_SEEDS}");
            let concurrency = run_plain(
                nightly_cargo()
                    .args([
                        "miri",
                        "test",
                        "-p",
                        "nvmm",
                        "--test",
                        "suite",
                        "concurrency::",
                    ])
                    .env("MIRIFLAGS", &flags),
            );
            match concurrency {
                Ok(_) => Outcome::Passed(Some(format!(
                    "{} tests ({MIRI_FLAGS}) in {}; concurrency tests with {MIRI_SEEDS} in {}",
                    counts.passed,
                    seconds(whole_time),
                    seconds(seeds.elapsed())
                ))),
                Err(err) => Outcome::Failed(err.to_string()),
            }
        });
        self.finish_test_step(name, outcome, start);
    }

    /// The `nvmm` tests (library and integration tests, the concurrency
    /// stress test among them) under `sanitizer`, with std rebuilt
    /// instrumented (`-Zbuild-std`) in a target directory of its own.
    fn sanitizer(&mut self, sanitizer: &Sanitizer) {
        let name = sanitizer.name;
        println!("\n==> ci: {name}");
        let start = Instant::now();
        if let Err(reason) = ensure_nightly(&["--version"], &[]).and_then(|()| ensure_rust_src()) {
            self.finish(name, Outcome::Skipped(reason), start.elapsed());
            return;
        }
        let host = "x86_64-unknown-linux-gnu";
        if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            self.finish(
                name,
                Outcome::Skipped(format!("the sanitizers are run on {host} hosts only")),
                start.elapsed(),
            );
            return;
        }
        let mut command = nightly_cargo();
        command
            .args(["test", "-Zbuild-std", "--target", host, "-p", "nvmm"])
            .args(["--lib", "--tests"])
            .env("RUSTFLAGS", format!("-Zsanitizer={}", sanitizer.flag))
            // Optimised a little, as the sanitizers' authors advise: at
            // opt-level 0 the instrumentation covers every stack slot of
            // the assist's large inlined lanes, and the build alone took
            // 7.5 minutes of this 2-core machine (ASan); at 1 the whole
            // cold build, std included, costs half the CPU time the
            // crates alone did. Accesses that matter stay instrumented:
            // the optimiser removes no load or store the program needs.
            .env("CARGO_PROFILE_DEV_OPT_LEVEL", "1")
            .env(
                "CARGO_TARGET_DIR",
                workspace_root().join(sanitizer.target_dir),
            )
            .env(sanitizer.options.0, sanitizer.options.1);
        let run = run_counting_tests(&mut command);
        let empty = format!("no nvmm test ran under {name}");
        let outcome = self.counted(run, Some(&empty), |counts| {
            Outcome::Passed(Some(format!("{} tests, no report", counts.passed)))
        });
        self.finish_test_step(name, outcome, start);
    }

    fn fuzz(&mut self) {
        let name = "fuzz (nvmm-assist)";
        println!("\n==> ci: {name}");
        let start = Instant::now();
        let outcome = match fuzz() {
            Ok(Ok(note)) => Outcome::Passed(Some(note)),
            Ok(Err(skip)) => Outcome::Skipped(skip),
            Err(err) => Outcome::Failed(err.to_string()),
        };
        self.finish(name, outcome, start.elapsed());
    }

    fn summary(&self, total: Duration) -> Result<()> {
        println!("\n==> ci: summary");
        for result in &self.results {
            println!("{}", step_line(result.name, &result.outcome, result.time));
        }
        let failed: Vec<&str> = self
            .results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
            .map(|r| r.name)
            .collect();
        let skipped = self
            .results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Skipped(_)))
            .count();
        println!(
            "ci: {} of {} steps passed, {} skipped, {} failed; total {} (budget: 30 min on 2 cores); CPU: {}",
            self.results.len() - failed.len() - skipped,
            self.results.len(),
            skipped,
            failed.len(),
            minutes(total),
            crate::host_cpu::describe()
        );
        if !failed.is_empty() {
            println!("ci: FAILED steps: {}", failed.join(", "));
        }
        let t = self.tests;
        println!(
            "test result: {}. {} passed; {} failed; {} ignored; {} measured; {} filtered out; finished in {:.2}s",
            if failed.is_empty() { "ok" } else { "FAILED" },
            t.passed,
            t.failed,
            t.ignored,
            t.measured,
            t.filtered_out,
            self.test_time.as_secs_f64()
        );
        if failed.is_empty() {
            Ok(())
        } else {
            Err(fail!("ci failed: {}", failed.join(", ")))
        }
    }
}

fn step_line(name: &str, outcome: &Outcome, time: Duration) -> String {
    let (status, note) = match outcome {
        Outcome::Passed(note) => ("ok", note.clone().unwrap_or_default()),
        Outcome::Failed(err) => ("FAILED", err.clone()),
        Outcome::Skipped(reason) => ("skipped", reason.clone()),
    };
    format!("ci: {status:<8} {name:<36} {:>9}  {note}", seconds(time))
}

fn seconds(time: Duration) -> String {
    format!("{:.1}s", time.as_secs_f64())
}

fn minutes(time: Duration) -> String {
    let secs = time.as_secs();
    format!("{}m{:02}s", secs / 60, secs % 60)
}

fn run_plain(command: &mut Command) -> Result<Option<String>> {
    crate::util::run(command, &describe(command)).map(|()| None)
}

fn describe(command: &Command) -> String {
    let mut text = Path::new(command.get_program()).file_name().map_or_else(
        || "cargo".to_owned(),
        |name| name.to_string_lossy().into_owned(),
    );
    for arg in command.get_args().take_while(|arg| *arg != "--") {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs a test command, passing its stdout through and adding up the
/// `test result:` lines. On failure the counts so far come with the error.
fn run_counting_tests(
    command: &mut Command,
) -> std::result::Result<TestCounts, (crate::util::Error, TestCounts)> {
    let what = describe(command);
    let mut counts = TestCounts::default();
    let mut child = match command.stdout(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(err) => return Err((fail!("{what}: cannot start: {err}"), counts)),
    };
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            println!("{line}");
            if let Some(found) = TestCounts::parse(&line) {
                counts.add(found);
            }
        }
    }
    match child.wait() {
        Ok(status) if status.success() => Ok(counts),
        Ok(status) => Err((
            fail!("{what} failed ({status}); {} tests failed", counts.failed),
            counts,
        )),
        Err(err) => Err((fail!("{what}: {err}"), counts)),
    }
}

/// `cargo +nightly`, through the rustup proxy on PATH (the `cargo` running
/// this xtask may be a toolchain's own binary, which has no `+toolchain`).
fn nightly_cargo() -> Command {
    let mut command = Command::new("cargo");
    command.arg("+nightly").current_dir(workspace_root());
    command
}

/// Makes `cargo +nightly <probe>` work, installing the nightly toolchain
/// and `components` when missing. `Err` is the reason to skip.
fn ensure_nightly(probe: &[&str], components: &[&str]) -> std::result::Result<(), String> {
    let what = if components.is_empty() {
        "toolchain".to_owned()
    } else {
        components.join(" + ")
    };
    let works = || {
        nightly_cargo()
            .args(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works() {
        return Ok(());
    }
    if !program_exists("rustup") {
        return Err(format!("rustup not found, so no nightly {what}"));
    }
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut install = Command::new("rustup");
    if has_nightly {
        install
            .args(["component", "add", "--toolchain", "nightly"])
            .args(components);
    } else {
        install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        if !components.is_empty() {
            install.arg("--component").arg(components.join(","));
        }
    }
    let installed = install.status().is_ok_and(|s| s.success());
    if installed && works() {
        Ok(())
    } else {
        Err(format!("could not install nightly {what} with rustup"))
    }
}

/// Makes sure the nightly toolchain has `rust-src` (what `-Zbuild-std`
/// builds), installing it with rustup when missing. `Err` is the reason to
/// skip.
fn ensure_rust_src() -> std::result::Result<(), String> {
    let installed = || {
        Command::new("rustup")
            .args(["component", "list", "--toolchain", "nightly", "--installed"])
            .output()
            .is_ok_and(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.trim() == "rust-src")
            })
    };
    if installed() {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for nightly (rustup component add)");
    let added = Command::new("rustup")
        .args(["component", "add", "--toolchain", "nightly", "rust-src"])
        .status()
        .is_ok_and(|s| s.success());
    if added && installed() {
        Ok(())
    } else {
        Err("could not install the nightly rust-src component with rustup".to_owned())
    }
}

/// Runs every fuzz target of nvmm-assist for a share of [`FUZZ_BUDGET`].
/// `Ok(Err(reason))` means skipped.
fn fuzz() -> Result<std::result::Result<String, String>> {
    let crate_dir = workspace_root().join("nvmm-assist");
    if !crate_dir.join("fuzz/Cargo.toml").is_file() {
        return Ok(Err("nvmm-assist/fuzz does not exist".to_owned()));
    }
    if !program_exists("c++") && !program_exists("clang++") && !program_exists("g++") {
        return Ok(Err(
            "no C++ compiler (libFuzzer needs one: install g++ or clang)".to_owned(),
        ));
    }
    if let Err(reason) = ensure_nightly(&["--version"], &[]) {
        return Ok(Err(reason));
    }
    if !cargo_fuzz_installed() {
        eprintln!("xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        let installed = cargo()
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .is_ok_and(|s| s.success());
        if !installed || !cargo_fuzz_installed() {
            return Ok(Err("cargo-fuzz could not be installed".to_owned()));
        }
    }
    let listed = nightly_cargo()
        .current_dir(&crate_dir)
        .args(["fuzz", "list"])
        .output()
        .map_err(|err| fail!("cargo fuzz list: {err}"))?;
    if !listed.status.success() {
        return Err(fail!("cargo fuzz list failed ({})", listed.status));
    }
    let targets: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        return Ok(Err("nvmm-assist/fuzz declares no fuzz targets".to_owned()));
    }
    crate::util::run(
        nightly_cargo()
            .current_dir(&crate_dir)
            .args(["fuzz", "build"]),
        "cargo fuzz build",
    )?;
    let per_target = (FUZZ_BUDGET.as_secs() / targets.len() as u64).max(5);
    for target in &targets {
        println!("ci: fuzzing {target} for {per_target}s");
        crate::util::run(
            nightly_cargo()
                .current_dir(&crate_dir)
                .args(["fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={per_target}")),
            &format!("fuzz target {target} (a crash input is under nvmm-assist/fuzz/artifacts)"),
        )?;
    }
    Ok(Ok(format!(
        "{} targets, {per_target}s each, no crash",
        targets.len()
    )))
}

fn cargo_fuzz_installed() -> bool {
    nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        let counts = TestCounts::parse(
            "test result: ok. 12 passed; 1 failed; 3 ignored; 0 measured; 7 filtered out; finished in 0.01s",
        )
        .unwrap();
        assert_eq!(
            (
                counts.passed,
                counts.failed,
                counts.ignored,
                counts.measured,
                counts.filtered_out
            ),
            (12, 1, 3, 0, 7)
        );
        assert!(TestCounts::parse("running 3 tests").is_none());
    }
}
