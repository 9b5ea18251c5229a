//! `cargo xtask vmtest`: the test executables and toyvm on a NetBSD host
//! with `/dev/nvmm`, with `NVMM_VMTEST=1` so that the real-kernel tests
//! fail instead of skipping.
//!
//! - `--local` (the default): on the NetBSD host itself; builds the test
//!   executables and toyvm with cargo and runs each.
//! - `--ssh USER@HOST`: from another host; builds them for NetBSD as
//!   `cargo xtask netbsd` does, copies them to `~/nvmm-vmtest/` on the host
//!   with `scp` and runs each there with `ssh`.
//! - `--dry-run`: prints the command lines instead of running them.
//!
//! Prints each executable's result and a summary line; fails if any
//! executable failed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fail;
use crate::netbsd::{self, Executable};
use crate::util::{Result, cargo};

/// Where the executables go on the remote host (relative to its home).
pub const REMOTE_DIR: &str = "nvmm-vmtest";

/// Where vmtest runs the executables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// On this host.
    Local,
    /// On `destination` (`USER@HOST`) through ssh.
    Ssh {
        /// The ssh destination.
        destination: String,
    },
}

/// The parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Where to run.
    pub target: Target,
    /// Print the command lines only.
    pub dry_run: bool,
}

/// Parses `vmtest`'s arguments.
pub fn parse(args: &[String]) -> Result<Options> {
    let mut target = None;
    let mut dry_run = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let new = match arg.as_str() {
            "--dry-run" => {
                dry_run = true;
                continue;
            }
            "--local" => Target::Local,
            "--ssh" => {
                let destination = args
                    .next()
                    .ok_or_else(|| fail!("vmtest: --ssh needs USER@HOST"))?;
                ssh_target(destination)?
            }
            other => match other.strip_prefix("--ssh=") {
                Some(destination) => ssh_target(destination)?,
                None => return Err(fail!("vmtest: unknown argument `{other}`")),
            },
        };
        if target.replace(new).is_some() {
            return Err(fail!("vmtest: give one of --local and --ssh USER@HOST"));
        }
    }
    Ok(Options {
        target: target.unwrap_or(Target::Local),
        dry_run,
    })
}

fn ssh_target(destination: &str) -> Result<Target> {
    // A destination that starts with '-' would be read by ssh as an
    // option; one with whitespace or quotes is a mistake.
    let valid = !destination.is_empty()
        && !destination.starts_with('-')
        && !destination
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '`' | '$' | ';'));
    if !valid {
        return Err(fail!(
            "vmtest: `{destination}` is not a USER@HOST ssh destination"
        ));
    }
    Ok(Target::Ssh {
        destination: destination.to_owned(),
    })
}

/// One executable to run: a name for the report and its local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// `kind-name` (e.g. `test-vcpu`, `example-toyvm`): unique, and the
    /// file name on the remote host.
    pub name: String,
    /// The executable on this host.
    pub path: PathBuf,
}

/// The executables vmtest runs: every test executable and toyvm.
fn jobs_of(executables: Vec<Executable>) -> Vec<Job> {
    executables
        .into_iter()
        .filter(|e| e.kind != "example" || e.name == "toyvm")
        .map(|e| Job {
            name: format!("{}-{}", e.kind, e.name),
            path: e.path,
        })
        .collect()
}

/// The command lines of a run, in order: setup, then one per job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Commands before the jobs (making the remote directory, copying).
    pub setup: Vec<Vec<String>>,
    /// `(job name, command)` in order.
    pub runs: Vec<(String, Vec<String>)>,
}

fn s(v: &str) -> String {
    v.to_owned()
}

/// The commands that run `jobs` on `target`.
pub fn plan(target: &Target, jobs: &[Job]) -> Plan {
    match target {
        Target::Local => Plan {
            setup: Vec::new(),
            runs: jobs
                .iter()
                .map(|j| {
                    (
                        j.name.clone(),
                        vec![s("env"), s("NVMM_VMTEST=1"), j.path.display().to_string()],
                    )
                })
                .collect(),
        },
        Target::Ssh { destination } => {
            let ssh = |remote: String| {
                vec![
                    s("ssh"),
                    s("-o"),
                    s("BatchMode=yes"),
                    destination.clone(),
                    remote,
                ]
            };
            let mut copy = vec![s("scp"), s("-q"), s("-o"), s("BatchMode=yes")];
            // Each file is copied under its job name: cargo's hashed file
            // names are not unique across the workspace's crates.
            let mut setup = vec![ssh(format!("rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR}"))];
            let mut staged = Vec::new();
            for j in jobs {
                staged.push(
                    Path::new("target/vmtest")
                        .join(&j.name)
                        .display()
                        .to_string(),
                );
            }
            copy.extend(staged);
            copy.push(format!("{destination}:{REMOTE_DIR}/"));
            if !jobs.is_empty() {
                setup.push(copy);
            }
            Plan {
                setup,
                runs: jobs
                    .iter()
                    .map(|j| {
                        (
                            j.name.clone(),
                            ssh(format!("cd {REMOTE_DIR} && NVMM_VMTEST=1 ./{}", j.name)),
                        )
                    })
                    .collect(),
            }
        }
    }
}

/// Builds the executables (for this host or for NetBSD).
fn build(target: &Target) -> Result<Vec<Job>> {
    let executables = match target {
        Target::Local => build_local()?,
        Target::Ssh { .. } => {
            let linker = netbsd::prepare_linker()?;
            println!("linker: {}", linker.display());
            netbsd::build(&linker)?
        }
    };
    Ok(jobs_of(executables))
}

/// The test executables (`cargo test --no-run`) and the examples
/// (`cargo build --examples`: built by `cargo test` they would be test
/// harnesses), for this host.
fn build_local() -> Result<Vec<Executable>> {
    let mut executables = cargo_executables(&[
        "test",
        "--workspace",
        "--exclude",
        "xtask",
        "--lib",
        "--bins",
        "--tests",
        "--no-run",
    ])?;
    executables.extend(cargo_executables(&[
        "build",
        "--workspace",
        "--exclude",
        "xtask",
        "--examples",
    ])?);
    netbsd::sort(&mut executables);
    Ok(executables)
}

/// Runs cargo with `args` and JSON messages; the executables it built.
fn cargo_executables(args: &[&str]) -> Result<Vec<Executable>> {
    let what = format!("cargo {}", args.join(" "));
    let (executables, status) = netbsd::run_for_executables(
        cargo()
            .args(args)
            .arg("--message-format=json-render-diagnostics"),
        &what,
    )?;
    if !status.success() {
        return Err(fail!("{what} failed ({status})"));
    }
    Ok(executables)
}

/// Copies the jobs' executables to `target/vmtest/<job name>` for scp.
fn stage(jobs: &[Job]) -> Result<()> {
    let dir = crate::util::workspace_root().join("target/vmtest");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| fail!("cannot create {}: {e}", dir.display()))?;
    for j in jobs {
        std::fs::copy(&j.path, dir.join(&j.name))
            .map_err(|e| fail!("cannot stage {}: {e}", j.path.display()))?;
    }
    Ok(())
}

fn command_of(argv: &[String]) -> Option<Command> {
    let (program, args) = argv.split_first()?;
    let mut c = Command::new(program);
    c.args(args).current_dir(crate::util::workspace_root());
    Some(c)
}

fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=@:+,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The dry run's job list: the workspace's test targets and toyvm, with
/// the paths a build would produce left symbolic.
fn dry_run_jobs() -> Result<Vec<Job>> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .map_err(|e| fail!("cannot run cargo metadata: {e}"))?;
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| fail!("cargo metadata output: {e}"))?;
    let mut jobs = Vec::new();
    for package in meta["packages"].as_array().into_iter().flatten() {
        if package["name"] == "xtask" {
            continue;
        }
        for t in package["targets"].as_array().into_iter().flatten() {
            let name = t["name"].as_str().unwrap_or_default();
            let kind = match t["kind"][0].as_str().unwrap_or_default() {
                "lib" => "unittest",
                "test" => "test",
                "example" if name == "toyvm" => "example",
                _ => continue,
            };
            jobs.push(Job {
                name: format!("{kind}-{name}"),
                path: PathBuf::from(format!("<{kind} {name}, as built>")),
            });
        }
    }
    jobs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(jobs)
}

/// Runs vmtest.
pub fn run(options: &Options) -> Result<()> {
    if options.dry_run {
        let jobs = dry_run_jobs()?;
        match &options.target {
            Target::Local => println!(
                "would build: cargo test --workspace --exclude xtask --lib --bins --tests --no-run; \
                 cargo build --workspace --exclude xtask --examples"
            ),
            Target::Ssh { .. } => println!(
                "would build: cargo build --workspace --exclude xtask --lib --bins --tests --examples --target {} (as cargo xtask netbsd)",
                netbsd::TARGET
            ),
        }
        let p = plan(&options.target, &jobs);
        for c in &p.setup {
            println!("would run: {}", shell_line(c));
        }
        for (_, c) in &p.runs {
            println!("would run: {}", shell_line(c));
        }
        println!("({} executables)", p.runs.len());
        return Ok(());
    }
    if options.target == Target::Local {
        let on_netbsd_amd64 = cfg!(all(target_os = "netbsd", target_arch = "x86_64"));
        if !on_netbsd_amd64 || !Path::new("/dev/nvmm").exists() {
            return Err(fail!(
                "vmtest --local needs a NetBSD/x86_64 host with the nvmm module loaded \
                 (/dev/nvmm; `modload nvmm`); this host is {}/{}; from another host use \
                 --ssh USER@HOST",
                std::env::consts::OS,
                std::env::consts::ARCH
            ));
        }
    }
    let jobs = build(&options.target)?;
    if jobs.is_empty() {
        return Err(fail!("the build produced no executables"));
    }
    if matches!(options.target, Target::Ssh { .. }) {
        stage(&jobs)?;
    }
    let p = plan(&options.target, &jobs);
    for c in &p.setup {
        println!("+ {}", shell_line(c));
        let status = command_of(c)
            .ok_or_else(|| fail!("empty command"))?
            .status()
            .map_err(|e| fail!("cannot run {}: {e}", shell_line(c)))?;
        if !status.success() {
            return Err(fail!("{} failed ({status})", shell_line(c)));
        }
    }
    let mut failed = Vec::new();
    for (name, c) in &p.runs {
        println!("+ {}", shell_line(c));
        let status = command_of(c)
            .ok_or_else(|| fail!("empty command"))?
            .status()
            .map_err(|e| fail!("cannot run {}: {e}", shell_line(c)))?;
        if status.success() {
            println!("vmtest: PASS {name}");
        } else {
            println!("vmtest: FAIL {name} ({status})");
            failed.push(name.clone());
        }
    }
    println!("\nvmtest summary:");
    println!(
        "{} passed, {} failed",
        p.runs.len() - failed.len(),
        failed.len()
    );
    for f in &failed {
        println!("  failed: {f}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(fail!(
            "{} of {} executables failed",
            failed.len(),
            p.runs.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse(&[]).unwrap(),
            Options {
                target: Target::Local,
                dry_run: false
            }
        );
        assert_eq!(
            parse(&args(&["--local", "--dry-run"])).unwrap(),
            Options {
                target: Target::Local,
                dry_run: true
            }
        );
        let ssh = Target::Ssh {
            destination: "me@netbsd".into(),
        };
        assert_eq!(parse(&args(&["--ssh", "me@netbsd"])).unwrap().target, ssh);
        assert_eq!(parse(&args(&["--ssh=me@netbsd"])).unwrap().target, ssh);
        for bad in [
            &["--ssh"][..],
            &["--ssh", "-oProxyCommand=x"],
            &["--ssh", "me@host; rm -rf /"],
            &["--local", "--ssh", "me@h"],
            &["--remote"],
            &["local"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    fn jobs() -> Vec<Job> {
        vec![
            Job {
                name: "test-vcpu".into(),
                path: "target/x86_64-unknown-netbsd/debug/deps/vcpu-0123".into(),
            },
            Job {
                name: "example-toyvm".into(),
                path: "target/x86_64-unknown-netbsd/debug/examples/toyvm".into(),
            },
        ]
    }

    #[test]
    fn local_plan_runs_each_executable_with_nvmm_vmtest() {
        let p = plan(&Target::Local, &jobs());
        assert!(p.setup.is_empty());
        let lines: Vec<String> = p.runs.iter().map(|(_, c)| shell_line(c)).collect();
        assert_eq!(
            lines,
            [
                "env NVMM_VMTEST=1 target/x86_64-unknown-netbsd/debug/deps/vcpu-0123",
                "env NVMM_VMTEST=1 target/x86_64-unknown-netbsd/debug/examples/toyvm",
            ]
        );
    }

    #[test]
    fn ssh_plan_copies_then_runs_each_remotely() {
        let target = Target::Ssh {
            destination: "me@netbsd".into(),
        };
        let p = plan(&target, &jobs());
        let setup: Vec<String> = p.setup.iter().map(|c| shell_line(c)).collect();
        assert_eq!(
            setup,
            [
                "ssh -o BatchMode=yes me@netbsd 'rm -rf nvmm-vmtest && mkdir -p nvmm-vmtest'",
                "scp -q -o BatchMode=yes target/vmtest/test-vcpu target/vmtest/example-toyvm me@netbsd:nvmm-vmtest/",
            ]
        );
        let runs: Vec<(String, String)> = p
            .runs
            .iter()
            .map(|(n, c)| (n.clone(), shell_line(c)))
            .collect();
        assert_eq!(
            runs,
            [
                (
                    "test-vcpu".to_string(),
                    "ssh -o BatchMode=yes me@netbsd 'cd nvmm-vmtest && NVMM_VMTEST=1 ./test-vcpu'"
                        .to_string()
                ),
                (
                    "example-toyvm".to_string(),
                    "ssh -o BatchMode=yes me@netbsd 'cd nvmm-vmtest && NVMM_VMTEST=1 ./example-toyvm'"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn only_toyvm_among_the_examples() {
        let exe = |kind: &str, name: &str| Executable {
            kind: kind.into(),
            name: name.into(),
            path: PathBuf::from(name),
        };
        let names: Vec<String> = jobs_of(vec![
            exe("example", "tiny_vmm"),
            exe("example", "toyvm"),
            exe("test", "kernel_capabilities"),
            exe("unittest", "nvmm"),
        ])
        .into_iter()
        .map(|j| j.name)
        .collect();
        assert_eq!(
            names,
            ["example-toyvm", "test-kernel_capabilities", "unittest-nvmm"]
        );
    }
}
