//! Shared by the real-kernel tests (`tests/kernel_*.rs`): they need
//! `/dev/nvmm` (NetBSD/x86_64 with the nvmm module loaded). Where it
//! cannot be opened they skip, saying so, unless `NVMM_VMTEST=1` (set by
//! `cargo xtask vmtest`), where they fail instead: on a NetBSD test host a
//! skip would hide a broken setup.
#![allow(dead_code)]

use std::io::Write as _;

/// An error and its sources, `a: b` (toyvm's, whose VMM reports errors
/// the same way).
pub(crate) use crate::toyvm::chain;
use nvmm::nvmm_assist::{MmioBus, PortIo};
use nvmm::{Exit, Machine, Nvmm, Prot, Vcpu};

/// Prints past libtest's capture, so skips show in `cargo test` output.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Whether a skip must be a failure (`NVMM_VMTEST=1`).
pub fn vmtest_required() -> bool {
    std::env::var_os("NVMM_VMTEST").is_some_and(|v| v == "1")
}

/// Opens `/dev/nvmm` for `test`, or returns `None` after printing why it
/// is skipped; panics instead where `NVMM_VMTEST=1`.
pub fn open(test: &str) -> Option<Nvmm> {
    decide(test, Nvmm::open())
}

/// Like [`open`], as the root owner (`O_WRONLY`: machine info of any
/// machine); needs root.
pub fn open_root(test: &str) -> Option<Nvmm> {
    decide(test, Nvmm::open_root())
}

fn decide(test: &str, r: nvmm::Result<Nvmm>) -> Option<Nvmm> {
    match r {
        Ok(n) => Some(n),
        Err(e) if vmtest_required() => {
            panic!("{test}: NVMM_VMTEST=1 but /dev/nvmm cannot be used: {e}")
        }
        Err(e) => {
            say(&format!("{test}: skipped (needs NVMM): {e}"));
            None
        }
    }
}

/// A machine with one VCPU and 64 KiB of RAM mapped page by page.
pub struct Vm {
    pub machine: Machine,
    pub vcpu: Vcpu,
    pub ram: nvmm::HostMapping,
}

/// The RAM size of [`Vm`].
pub const RAM: usize = 0x10000;

impl Vm {
    /// Maps guest-physical `[0, RAM)` except the pages in `holes` (left
    /// unmapped: MMIO), writes `pieces`, and creates VCPU 0.
    pub fn new(nvmm: &Nvmm, holes: &[u64], pieces: &[(u64, &[u8])]) -> nvmm::Result<Vm> {
        let machine = nvmm.create_machine()?;
        let ram = machine.hva_map(RAM)?;
        for page in (0..RAM as u64).step_by(0x1000) {
            if !holes.contains(&page) {
                machine.gpa_map(&ram, page as usize, page, 0x1000, Prot::ALL)?;
            }
        }
        for (gpa, bytes) in pieces {
            machine.write_guest(*gpa, bytes)?;
        }
        let vcpu = machine.create_vcpu(0)?;
        Ok(Vm { machine, vcpu, ram })
    }
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The RDMSR of `msr`.
    Rdmsr(u32),
    /// HLT.
    Halted,
}

/// Runs `vcpu` until an RDMSR or HLT exit, completing port I/O on
/// `ports` and MMIO on `mmio` with the assists; `Exit::None` and
/// `Exit::Stopped` run again. Any other exit is an error with the dump.
pub fn run_to_end(
    vcpu: &mut Vcpu,
    mmio: &mut dyn MmioBus,
    ports: &mut dyn PortIo,
) -> Result<End, String> {
    for _ in 0..100_000 {
        let exit = vcpu.run().map_err(|e| e.to_string())?;
        match exit {
            Exit::Io(_) => {
                vcpu.assist_io(mmio, ports).map_err(|e| chain(&e))?;
            }
            Exit::Memory(_) => {
                vcpu.assist_mem(mmio).map_err(|e| chain(&e))?;
            }
            Exit::Rdmsr(r) => return Ok(End::Rdmsr(r.msr)),
            Exit::Halted => return Ok(End::Halted),
            Exit::None | Exit::Stopped => {}
            other => {
                let what = format!("{other:?}");
                let dump = vcpu
                    .dump()
                    .map(|d| format!("{d:?}"))
                    .unwrap_or_else(|e| e.to_string());
                return Err(format!("unexpected exit {what}\n{dump}"));
            }
        }
    }
    Err("no end after 100000 exits".into())
}
