//! The `ziglang` PyPI package, installed on demand into a cached virtualenv
//! under `target/`: it supplies the NetBSD headers (for `regen`) and
//! `zig cc`, the cross linker (for `netbsd`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fail;
use crate::util::{Result, apt_install, program_exists, target_dir};

/// The pinned package version. Bumping it changes the provenance header of the
/// committed bindings, so run `cargo xtask regen` afterwards.
pub const ZIGLANG_VERSION: &str = "0.17.1";

/// An installed `ziglang` package.
pub struct Ziglang {
    /// The virtualenv's Python interpreter (runs `python -m ziglang cc`).
    pub python: PathBuf,
    /// The package directory (`site-packages/ziglang`).
    pub package_dir: PathBuf,
}

impl Ziglang {
    /// Include directories holding the NetBSD/amd64 headers, most specific first.
    pub fn netbsd_include_dirs(&self) -> Vec<PathBuf> {
        let base = self.package_dir.join("lib/libc/include");
        vec![base.join("x86_64-netbsd-none"), base.join("generic-netbsd")]
    }
}

/// Returns the cached package, installing it first when needed.
pub fn ensure() -> Result<Ziglang> {
    let venv = target_dir()
        .join("xtask")
        .join(format!("ziglang-{ZIGLANG_VERSION}"));
    if let Some(found) = find_installed(&venv) {
        return Ok(found);
    }
    install(&venv)?;
    find_installed(&venv).ok_or_else(|| {
        fail!(
            "ziglang=={ZIGLANG_VERSION} was installed into {} but its package directory is missing",
            venv.display()
        )
    })
}

/// The package in `venv`, if a previous run completed its installation.
fn find_installed(venv: &Path) -> Option<Ziglang> {
    if !venv.join("installed").is_file() {
        return None;
    }
    let python = venv.join("bin/python3");
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    for entry in lib.flatten() {
        let package_dir = entry.path().join("site-packages/ziglang");
        if package_dir.join("lib/libc/include").is_dir() && python.exists() {
            return Some(Ziglang {
                python,
                package_dir,
            });
        }
    }
    None
}

/// Creates the virtualenv in a private directory and moves it into place, so
/// concurrent runs and interrupted installs never see a half-made one.
fn install(venv: &Path) -> Result<()> {
    let parent = venv.parent().unwrap_or(venv);
    std::fs::create_dir_all(parent)
        .map_err(|err| fail!("cannot create {}: {err}", parent.display()))?;
    let mut staging_name = venv.file_name().unwrap_or_default().to_os_string();
    staging_name.push(format!(".tmp{}", std::process::id()));
    let staging = venv.with_file_name(staging_name);
    let _ = std::fs::remove_dir_all(&staging);
    eprintln!(
        "xtask: installing ziglang=={ZIGLANG_VERSION} (NetBSD headers and zig cc) into {}",
        venv.display()
    );
    let result = create_venv(&staging).and_then(|()| pip_install(&staging));
    if let Err(err) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(err);
    }
    std::fs::write(staging.join("installed"), ZIGLANG_VERSION)
        .map_err(|err| fail!("cannot write to {}: {err}", staging.display()))?;
    if std::fs::rename(&staging, venv).is_err() {
        // Another run finished first; use its copy.
        let _ = std::fs::remove_dir_all(&staging);
        if !venv.join("installed").is_file() {
            return Err(fail!(
                "cannot move the ziglang virtualenv into {}",
                venv.display()
            ));
        }
    }
    Ok(())
}

fn create_venv(dir: &Path) -> Result<()> {
    let attempt = || {
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(dir)
            .output()
    };
    let needs = "python3 with the venv module is needed to fetch the ziglang package: \
                 install python3 and python3-venv (Debian/Ubuntu) or python3 (other systems)";
    // Debian's python3 lacks ensurepip unless python3-venv is installed.
    let lacks_venv =
        |stderr: &str| stderr.contains("ensurepip") || stderr.contains("No module named venv");
    let mut out = attempt();
    let retry = match &out {
        Ok(o) => !o.status.success() && lacks_venv(&String::from_utf8_lossy(&o.stderr)),
        Err(_) => true,
    };
    if retry {
        let _ = std::fs::remove_dir_all(dir);
        if apt_install(&["python3", "python3-venv"])? {
            out = attempt();
        }
    }
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            if lacks_venv(&stderr) {
                Err(fail!("{needs} (python3 -m venv said: {last})"))
            } else {
                Err(fail!("python3 -m venv {} failed: {last}", dir.display()))
            }
        }
        Err(_) if !program_exists("python3") => Err(fail!("python3 not found; {needs}")),
        Err(err) => Err(fail!("cannot run python3: {err}; {needs}")),
    }
}

fn pip_install(venv: &Path) -> Result<()> {
    let out = Command::new(venv.join("bin/python3"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--retries",
            "2",
            "--timeout",
            "30",
        ])
        .arg(format!("ziglang=={ZIGLANG_VERSION}"))
        .output()
        .map_err(|err| fail!("cannot run pip in {}: {err}", venv.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let unreachable = [
        "NewConnectionError",
        "ConnectTimeout",
        "ReadTimeout",
        "Temporary failure in name resolution",
        "Name or service not known",
        "ProxyError",
        "SSLError",
        "(from versions: none)",
    ]
    .iter()
    .any(|needle| stderr.contains(needle));
    if unreachable {
        return Err(fail!(
            "cannot reach the Python package index to download ziglang=={ZIGLANG_VERSION} \
             (NetBSD headers and cross linker): check the network or PIP_INDEX_URL, \
             or pass --sysroot DIR with a NetBSD sysroot to regen"
        ));
    }
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(fail!(
        "pip install ziglang=={ZIGLANG_VERSION} failed: {}",
        last.trim()
    ))
}
