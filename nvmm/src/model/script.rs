//! Scripted guest execution: each RUN of the model pops one
//! [`ScriptedExit`]. **Model, not NetBSD**: no guest code runs; the script
//! says what exit the "hardware" produced and what the guest changed.

use crate::nvmm_sys as sys;

/// A guest effect: edits the model's "hardware" state during a run.
pub type GuestFn = Box<dyn FnMut(&mut sys::nvmm_x64_state) + Send>;

/// One scripted VCPU exit: what the next `NVMM_IOC_VCPU_RUN` of its VCPU
/// returns (see [`KernelModel::push_exit`](super::KernelModel::push_exit)).
///
/// The model treats it as the backend's exit (nvmm_x86_svm.c
/// `svm_vcpu_run`, nvmm_x86_vmx.c `vmx_vcpu_run`): it provides the state
/// the kernel provides with that exit reason, answers CPUID exits with its
/// own leaf values first, and replaces the reason by NONE or STOPPED when
/// a signal or a stop request is pending at the end of the run
/// (nvmm_internal.h `nvmm_return_needed`); an exit that userland completes
/// (I/O, memory, MSR, CPUID, MONITOR, MWAIT: the kernel leaves RIP on the
/// instruction) is then taken again by the next run, without its guest
/// closure, while a HLT is lost. A run with an empty script
/// returns an all-zero exit (reason `NVMM_VCPU_EXIT_NONE`).
pub struct ScriptedExit {
    /// The exit as the kernel fills `nvmm_ioc_vcpu_run::exit` (its
    /// `exitstate` is overwritten from the VCPU's state).
    pub exit: sys::nvmm_x86_exit,
    /// The guest's effect during the run, applied before the exit.
    pub guest: Option<GuestFn>,
    /// A signal arrives for the VCPU thread while the guest runs.
    pub signal: bool,
}

pub(super) fn zeroed_exit() -> sys::nvmm_x86_exit {
    // SAFETY: plain C data; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

impl ScriptedExit {
    /// An exit with only `reason` set (`NVMM_VCPU_EXIT_*`), e.g. HALTED.
    pub fn reason(reason: u64) -> Self {
        let mut exit = zeroed_exit();
        exit.reason = reason;
        ScriptedExit {
            exit,
            guest: None,
            signal: false,
        }
    }
    /// An I/O exit (`NVMM_VCPU_EXIT_IO`) at `port` of `size` bytes, in or
    /// out, with `npc` the address of the next instruction.
    pub fn io(port: u16, is_in: bool, size: u8, npc: u64) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_IO);
        s.exit.u.io = sys::nvmm_x86_exit_io {
            in_: is_in,
            port,
            seg: -1,
            address_size: 8,
            operand_size: size,
            rep: false,
            str_: false,
            npc,
        };
        s
    }
    /// A memory exit (`NVMM_VCPU_EXIT_MEMORY`) at `gpa`, a write or a
    /// read, with up to 15 bytes of the faulting instruction (as SVM's
    /// decode assist provides them; VMX provides none: pass `&[]`).
    pub fn memory(gpa: u64, write: bool, bytes: &[u8]) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_MEMORY);
        let mut inst = [0u8; 15];
        let n = bytes.len().min(15);
        inst[..n].copy_from_slice(&bytes[..n]);
        s.exit.u.mem = sys::nvmm_x86_exit_memory {
            prot: if write { 2 } else { 1 },
            gpa,
            inst_len: n as u8,
            inst_bytes: inst,
        };
        s
    }
    /// An RDMSR exit of `msr`.
    pub fn rdmsr(msr: u32, npc: u64) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_RDMSR);
        s.exit.u.rdmsr = sys::nvmm_x86_exit_rdmsr { msr, npc };
        s
    }
    /// A WRMSR exit of `val` to `msr`.
    pub fn wrmsr(msr: u32, val: u64, npc: u64) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_WRMSR);
        s.exit.u.wrmsr = sys::nvmm_x86_exit_wrmsr { msr, val, npc };
        s
    }
    /// An instruction exit (`reason` among MONITOR, MWAIT, CPUID, ...)
    /// with its `npc`.
    pub fn insn(reason: u64, npc: u64) -> Self {
        let mut s = Self::reason(reason);
        s.exit.u.insn = sys::nvmm_x86_exit_insn { npc };
        s
    }
    /// A CPUID exit; the model's kernel replaces RAX-RDX with its own
    /// answer for the leaf in RAX before returning it.
    pub fn cpuid(npc: u64) -> Self {
        Self::insn(sys::NVMM_VCPU_EXIT_CPUID, npc)
    }
    /// An INVALID exit with the hardware exit code `hwcode`.
    pub fn invalid(hwcode: u64) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_INVALID);
        s.exit.u.inv = sys::nvmm_x86_exit_invalid { hwcode };
        s
    }
    /// Runs `f` on the hardware state when this exit is taken (the guest).
    pub fn with_guest(mut self, f: impl FnMut(&mut sys::nvmm_x64_state) + Send + 'static) -> Self {
        self.guest = Some(Box::new(f));
        self
    }
    /// A signal for the VCPU thread arrives while the guest runs.
    pub fn with_signal(mut self) -> Self {
        self.signal = true;
        self
    }
}
