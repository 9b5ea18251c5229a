//! The CI steps that keep the libraries publishable: `cargo package`, the
//! declared minimum Rust version, and the dependency policy (cargo-deny).

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fail;
use crate::util::{Result, cargo, program_exists, target_dir, workspace_root};

/// A step's result: `Ok(Ok(note))` passed, `Ok(Err(reason))` skipped.
pub type Optional = Result<std::result::Result<String, String>>;

/// A step of [`check`] with its name.
type NamedStep = (&'static str, fn() -> Optional);

/// The crates meant for the crate registry, dependencies first.
pub const LIBRARIES: [&str; 3] = ["nvmm-sys", "nvmm-assist", "nvmm"];

/// Where cargo-deny fetches its advisory database from.
const ADVISORY_HOST: &str = "github.com:443";

/// `cargo package` of every library. With several packages, cargo packages
/// them into a temporary local registry and verifies each one (builds the
/// packaged sources) against the packaged versions of the others, so `nvmm`
/// is verified with the `nvmm-sys` and `nvmm-assist` that would be
/// published, not the workspace paths. `--allow-dirty`: this checks what is
/// packaged, not whether the working tree is committed.
pub fn package() -> Result<Option<String>> {
    forget_stale_extractions()?;
    let mut command = cargo();
    command.args(["package", "--allow-dirty"]);
    for library in LIBRARIES {
        command.args(["-p", library]);
    }
    crate::util::run(&mut command, "cargo package")?;
    Ok(Some(format!(
        "{} packaged and verified (built from the .crate sources)",
        LIBRARIES.join(", ")
    )))
}

/// Removes cargo's earlier extractions of our own crates from temporary
/// local registries. Cargo unpacks each packaged crate into
/// `$CARGO_HOME/registry/src/-<hash of the registry path>/<crate>-<version>`
/// and reuses that directory on a later run from the same checkout path,
/// even though the `.crate` behind it changed: the verification build of
/// `nvmm` then compiled against an old `nvmm-assist` and failed. Local
/// registries are the source directories whose name starts with `-`
/// (crates.io's is `index.crates.io-<hash>`); only our crates are removed.
/// For the same reason (cargo takes a registry crate of a given version to
/// be immutable) a verification build in this target directory would reuse
/// an old build of them: their build fingerprints go too, so the
/// verification rebuilds them.
fn forget_stale_extractions() -> Result<()> {
    let fingerprints = target_dir().join("debug").join(".fingerprint");
    if let Ok(entries) = std::fs::read_dir(&fingerprints) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = LIBRARIES.iter().any(|library| {
                name.strip_prefix(library)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| {
                        hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())
                    })
            });
            if ours {
                std::fs::remove_dir_all(entry.path())
                    .map_err(|err| fail!("cannot remove {}: {err}", entry.path().display()))?;
            }
        }
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    let Some(cargo_home) = cargo_home else {
        return Ok(());
    };
    let Ok(registries) = std::fs::read_dir(cargo_home.join("registry").join("src")) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        for library in LIBRARIES {
            let stale = registry
                .path()
                .join(format!("{library}-{}", workspace_version()?));
            if stale.is_dir() {
                std::fs::remove_dir_all(&stale)
                    .map_err(|err| fail!("cannot remove {}: {err}", stale.display()))?;
            }
        }
    }
    Ok(())
}

/// The libraries' version (the workspace's `version`).
fn workspace_version() -> Result<String> {
    let path = workspace_root().join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|err| fail!("cannot read {}: {err}", path.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("version"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| fail!("no version in {}", path.display()))
}

/// The workspace's `rust-version`.
fn declared_msrv() -> Result<String> {
    let path = workspace_root().join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|err| fail!("cannot read {}: {err}", path.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("rust-version"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| fail!("no rust-version in {}", path.display()))
}

/// Builds the libraries (all features) with the declared minimum Rust
/// version, installing that toolchain with rustup when missing. `Ok(Err)`
/// is the reason to skip.
pub fn msrv() -> Optional {
    let version = declared_msrv()?;
    let toolchain_works = || {
        Command::new("rustup")
            .args(["run", &version, "cargo", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !program_exists("rustup") {
        return Ok(Err(format!("rustup not found, so no Rust {version}")));
    }
    if !toolchain_works() {
        eprintln!("xtask: installing Rust {version} (rustup toolchain install --profile minimal)");
        let installed = Command::new("rustup")
            .args(["toolchain", "install", &version, "--profile", "minimal"])
            .status()
            .is_ok_and(|s| s.success());
        if !installed || !toolchain_works() {
            return Ok(Err(format!("could not install Rust {version} with rustup")));
        }
    }
    // Its own target directory: artifacts of another compiler would only
    // be rebuilt (and replace the stable ones uplifted into target/debug).
    let mut command = Command::new("rustup");
    command
        .current_dir(workspace_root())
        .args(["run", &version, "cargo", "build", "--lib", "--all-features"])
        .arg("--target-dir")
        .arg(target_dir().join("msrv"));
    for library in LIBRARIES {
        command.args(["-p", library]);
    }
    crate::util::run(&mut command, &format!("cargo build with Rust {version}"))?;
    Ok(Ok(format!(
        "{} build with Rust {version} (all features)",
        LIBRARIES.join(", ")
    )))
}

fn cargo_deny_works() -> bool {
    cargo()
        .args(["deny", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the advisory database's host answers (a 5-second TCP connect).
fn advisory_host_reachable() -> bool {
    let Ok(addresses) = ADVISORY_HOST.to_socket_addrs() else {
        return false;
    };
    addresses
        .into_iter()
        .any(|address| TcpStream::connect_timeout(&address, Duration::from_secs(5)).is_ok())
}

/// cargo-deny over the workspace with `deny.toml`: licenses, bans and
/// sources always; advisories only when the database can be fetched.
/// `Ok(Err)` is the reason to skip.
pub fn deny() -> Optional {
    let mut installed_note = String::new();
    if !cargo_deny_works() {
        eprintln!("xtask: installing cargo-deny (cargo install cargo-deny --locked)");
        let start = Instant::now();
        let installed = cargo()
            .args(["install", "cargo-deny", "--locked"])
            .status()
            .is_ok_and(|s| s.success());
        if !installed || !cargo_deny_works() {
            return Ok(Err("cargo-deny could not be installed".to_owned()));
        }
        installed_note = format!(
            "; cargo-deny installed in {:.0}s",
            start.elapsed().as_secs_f64()
        );
    }
    let reachable = advisory_host_reachable();
    let mut command = cargo();
    command.args(["deny", "--all-features", "check"]);
    if !reachable {
        command.args(["licenses", "bans", "sources"]);
    }
    crate::util::run(&mut command, "cargo deny check")?;
    Ok(Ok(if reachable {
        format!("advisories, licenses, bans, sources ok{installed_note}")
    } else {
        format!(
            "licenses, bans, sources ok; advisories NOT checked: their database host \
             ({ADVISORY_HOST}) is unreachable from here{installed_note}"
        )
    }))
}

/// `cargo xtask publish-check`: the three steps above, each timed, as CI
/// runs them; fails if one fails.
pub fn check() -> Result<()> {
    let mut failed = Vec::new();
    let steps: [NamedStep; 3] = [
        ("package", || {
            package().map(|note| Ok(note.unwrap_or_default()))
        }),
        ("msrv", msrv),
        ("cargo-deny", deny),
    ];
    for (name, step) in steps {
        let start = Instant::now();
        let line = match step() {
            Ok(Ok(note)) => format!("ok       {note}"),
            Ok(Err(reason)) => format!("skipped  {reason}"),
            Err(err) => {
                failed.push(name);
                format!("FAILED   {err}")
            }
        };
        println!(
            "publish-check: {name:<10} {:>6.1}s  {line}",
            start.elapsed().as_secs_f64()
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(fail!("publish-check failed: {}", failed.join(", ")))
    }
}
