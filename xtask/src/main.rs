//! nvmm-rs project automation: `cargo xtask <command>`.

mod bench;
mod ci;
mod coverage;
mod elf;
mod host_cpu;
mod netbsd;
mod publish;
mod regen;
mod test_layout;
mod util;
mod vmtest;
mod zig;

use std::path::PathBuf;
use std::process::ExitCode;

use util::Result;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  regen [--sysroot DIR] [--check]  regenerate nvmm-sys's bindings (or check them)
  netbsd                           build libraries, tests and examples for x86_64-unknown-netbsd
  ci                               the full test suite
  publish-check                    cargo package, MSRV build and cargo-deny (CI steps 7-9)
  bench                            run every benchmark of nvmm and nvmm-assist
  coverage [PACKAGE...]            line coverage of nvmm-assist and nvmm's tests (llvm-cov)
  vmtest [--local | --ssh USER@HOST] [--dry-run]
                                   run the test executables and toyvm with NVMM_VMTEST=1
                                   on a NetBSD host with /dev/nvmm (this one, or over ssh)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        return Err(fail!("no command given\n{USAGE}"));
    };
    match command.as_str() {
        "regen" => regen::run(&parse_regen(rest)?),
        "ci" => no_args("ci", rest).and_then(|()| ci::run()),
        "publish-check" => no_args("publish-check", rest).and_then(|()| publish::check()),
        "bench" => no_args("bench", rest).and_then(|()| bench::run_all()),
        "coverage" => coverage::run_all(rest),
        "vmtest" => vmtest::parse(rest).and_then(|o| vmtest::run(&o)),
        "netbsd" => no_args("netbsd", rest).and_then(|()| netbsd::run()),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(fail!("unknown command `{other}`\n{USAGE}")),
    }
}

fn no_args(command: &str, args: &[String]) -> Result<()> {
    match args.first() {
        Some(arg) => Err(fail!("{command}: unexpected argument `{arg}`")),
        None => Ok(()),
    }
}

fn parse_regen(args: &[String]) -> Result<regen::Options> {
    let mut options = regen::Options {
        sysroot: None,
        check: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => options.check = true,
            "--sysroot" => {
                let dir = args
                    .next()
                    .ok_or_else(|| fail!("--sysroot needs a directory"))?;
                options.sysroot = Some(PathBuf::from(dir));
            }
            other => match other.strip_prefix("--sysroot=") {
                Some(dir) => options.sysroot = Some(PathBuf::from(dir)),
                None => return Err(fail!("regen: unknown argument `{other}`")),
            },
        }
    }
    Ok(options)
}
