//! `cargo xtask netbsd`: builds the workspace libraries, test binaries and
//! examples for `x86_64-unknown-netbsd`, links them with `zig cc` and checks
//! that each executable really is a NetBSD/amd64 ELF file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::elf;
use crate::fail;
use crate::util::{Result, cargo, target_dir, write_atomically};
use crate::zig;

/// The Rust target.
pub const TARGET: &str = "x86_64-unknown-netbsd";

/// zig's name for the same target (zig picks the NetBSD release it ships).
const ZIG_TARGET: &str = "x86_64-netbsd";

/// Makes sure the NetBSD standard library is installed for the active toolchain.
pub fn ensure_target() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(crate::util::workspace_root())
        .output()
        .map_err(|err| fail!("cannot run rustc: {err}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
    {
        return Ok(());
    }
    if !crate::util::program_exists("rustup") {
        return Err(fail!(
            "rustup not found: the {TARGET} standard library comes from `rustup target add {TARGET}`; \
             install Rust with rustup"
        ));
    }
    eprintln!("xtask: installing the {TARGET} standard library (rustup target add {TARGET})");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .current_dir(crate::util::workspace_root())
        .status();
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(fail!("rustup target add {TARGET} failed ({status})")),
        Err(_) => Err(fail!(
            "rustup not found: the {TARGET} standard library comes from `rustup target add {TARGET}`; \
             install Rust with rustup"
        )),
    }
}

/// Writes the linker wrapper that cargo calls for the NetBSD target.
fn write_linker(ziglang: &zig::Ziglang) -> Result<PathBuf> {
    let python = ziglang.python.display().to_string();
    if python.contains('\'') {
        return Err(fail!(
            "the ziglang virtualenv path {python} contains a quote"
        ));
    }
    let script = format!(
        "#!/bin/sh\n\
         # Written by `cargo xtask netbsd`: links (and compiles C) for {TARGET}\n\
         # with zig cc from the pinned ziglang=={} package.\n\
         exec '{python}' -m ziglang cc -target {ZIG_TARGET} \"$@\"\n",
        zig::ZIGLANG_VERSION
    );
    let path = target_dir().join("xtask").join("netbsd-cc");
    write_atomically(&path, script.as_bytes())?;
    set_executable(&path)?;
    Ok(path)
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|err| fail!("cannot make {} executable: {err}", path.display()))
}

/// One executable cargo produced.
pub(crate) struct Executable {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) path: PathBuf,
}

/// Installs what the cross build needs and writes the linker script.
pub(crate) fn prepare_linker() -> Result<PathBuf> {
    ensure_target()?;
    let ziglang = zig::ensure()?;
    write_linker(&ziglang)
}

pub fn run() -> Result<()> {
    let linker = prepare_linker()?;
    // Users cross-build their own crates with the same linker.
    println!(
        "linker: {} (zig cc, ziglang {}, -target {ZIG_TARGET})\n\
         to cross-build another crate: CARGO_TARGET_X86_64_UNKNOWN_NETBSD_LINKER={} \
         cargo build --target {TARGET}",
        linker.display(),
        zig::ZIGLANG_VERSION,
        linker.display()
    );
    let executables = build(&linker)?;
    if executables.is_empty() {
        return Err(fail!("the NetBSD build produced no executables"));
    }
    println!("NetBSD/amd64 executables ({}):", executables.len());
    let mut bad = Vec::new();
    for exe in &executables {
        let data = std::fs::read(&exe.path)
            .map_err(|err| fail!("cannot read {}: {err}", exe.path.display()))?;
        match elf::parse_netbsd(&data) {
            Ok(info) => println!(
                "  {:<8} {:<28} {}  [NetBSD {} ELF, {}]",
                exe.kind,
                exe.name,
                exe.path.display(),
                info.version_string(),
                info.interpreter.as_deref().unwrap_or("static")
            ),
            Err(err) => {
                println!(
                    "  {:<8} {:<28} {}  [NOT NetBSD: {err}]",
                    exe.kind,
                    exe.name,
                    exe.path.display()
                );
                bad.push(exe.path.display().to_string());
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(fail!(
            "{} of the executables are not NetBSD ELF files: {}",
            bad.len(),
            bad.join(", ")
        ))
    }
}

/// What the NetBSD build (and `cargo xtask ci`'s NetBSD clippy) covers:
/// every package but xtask (a host tool), every kind of target that links.
pub(crate) const WORKSPACE_TARGETS: [&str; 7] = [
    "--workspace",
    "--exclude",
    "xtask",
    "--lib",
    "--bins",
    "--tests",
    "--examples",
];

/// Builds libraries, binaries, test binaries and examples, returning the
/// executables cargo reports.
pub(crate) fn build(linker: &Path) -> Result<Vec<Executable>> {
    let mut command = cargo();
    command
        .arg("build")
        .args(WORKSPACE_TARGETS)
        .args([
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .env("CARGO_TARGET_X86_64_UNKNOWN_NETBSD_LINKER", linker)
        .env("CC_x86_64_unknown_netbsd", linker);
    let (mut executables, status) = run_for_executables(&mut command, "cargo build")?;
    if !status.success() {
        return Err(fail!("cargo build --target {TARGET} failed ({status})"));
    }
    sort(&mut executables);
    Ok(executables)
}

/// Runs `command`, a cargo command with JSON messages, to its end; the
/// executables its messages report and how it exited. `what` names it in
/// errors.
pub(crate) fn run_for_executables(
    command: &mut Command,
    what: &str,
) -> Result<(Vec<Executable>, ExitStatus)> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| fail!("cannot run {what}: {err}"))?;
    let mut executables = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|err| fail!("reading cargo's output: {err}"))?;
            if let Some(exe) = executable_of(&line) {
                executables.push(exe);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|err| fail!("waiting for {what}: {err}"))?;
    Ok((executables, status))
}

/// Sorts executables by kind, then name (the order they are reported in).
pub(crate) fn sort(executables: &mut [Executable]) {
    executables.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
}

/// The executable of a `compiler-artifact` message, if it has one.
pub(crate) fn executable_of(line: &str) -> Option<Executable> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let path = PathBuf::from(message.get("executable")?.as_str()?);
    let target = message.get("target")?;
    let test = message.get("profile")?.get("test")?.as_bool()?;
    let kind = target.get("kind")?.get(0)?.as_str()?;
    let kind = match (kind, test) {
        ("lib" | "rlib" | "proc-macro", true) => "unittest",
        ("bin", true) => "bintest",
        (other, _) => other,
    };
    let name = target.get("name")?.as_str()?.to_owned();
    Some(Executable {
        kind: kind.to_owned(),
        name,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The collector keeps the executables of the artifact messages,
    /// passes over every other line, and hands a failed exit back to the
    /// caller (which words the error); a command that cannot start is an
    /// error naming it.
    #[test]
    fn run_for_executables_collects_artifacts_and_the_exit_status() {
        let artifact = r#"{"reason":"compiler-artifact","executable":"/t/suite-1","target":{"kind":["test"],"name":"suite"},"profile":{"test":true}}"#;
        let script = format!(
            "echo '{artifact}'; echo 'not json'; echo '{{\"reason\":\"build-finished\"}}'; exit 3"
        );
        let (executables, status) =
            run_for_executables(Command::new("sh").args(["-c", &script]), "sh").unwrap();
        assert_eq!(executables.len(), 1);
        let e = &executables[0];
        assert_eq!((e.kind.as_str(), e.name.as_str()), ("test", "suite"));
        assert_eq!(e.path, PathBuf::from("/t/suite-1"));
        assert_eq!(status.code(), Some(3));

        let missing = run_for_executables(&mut Command::new("/nonexistent/cargo"), "cargo x");
        assert!(missing.is_err_and(|e| e.0.starts_with("cannot run cargo x: ")));
    }
}
