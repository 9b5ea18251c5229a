//! Errors, paths and process helpers shared by every xtask command.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A failure reported to the user as one line (no backtrace).
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an [`Error`] from a format string.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        $crate::util::Error(format!($($arg)*))
    };
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// The target directory cargo uses for this workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The `cargo` that runs this xtask (so toolchain overrides carry over), in
/// the workspace root.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root());
    command
}

/// Whether `program` can be started at all (it exists on `PATH`).
pub fn program_exists(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs `command` with inherited stdio; an error names `what` when it fails.
pub fn run(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .map_err(|err| fail!("{what}: cannot start {:?}: {err}", command.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(fail!("{what} failed ({status})"))
    }
}

/// Whether this process runs as root (used to decide whether we may install
/// system packages in CI).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == b"0")
}

/// Installs Debian packages when running as root on a system with apt-get
/// (a fresh CI machine). Returns `Ok(false)` when that is not possible here.
pub fn apt_install(packages: &[&str]) -> Result<bool> {
    if !is_root() || !program_exists("apt-get") {
        return Ok(false);
    }
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    let quiet = |command: &mut Command| {
        command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null());
    };
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    quiet(&mut update);
    run(&mut update, "apt-get update")?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages);
    quiet(&mut install);
    run(&mut install, "apt-get install")?;
    Ok(true)
}

/// Writes `contents` to `path` through a temporary file in the same directory
/// and a rename, so a failure never leaves a half-written file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| fail!("{} is not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, contents).map_err(|err| fail!("cannot write {}: {err}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|err| {
        let _ = std::fs::remove_file(&tmp);
        fail!(
            "cannot rename {} to {}: {err}",
            tmp.display(),
            path.display()
        )
    })
}
