//! Scripted guest execution: each RUN of the model pops one
//! [`ScriptedExit`]. **Model, not NetBSD.**

use nvmm::nvmm_sys as sys;

/// A guest effect: edits the model's "hardware" state during a run.
pub type GuestFn = Box<dyn FnMut(&mut sys::nvmm_x64_state) + Send>;

/// One scripted VCPU exit.
pub struct ScriptedExit {
    pub exit: sys::nvmm_x86_exit,
    pub guest: Option<GuestFn>,
    /// A signal arrives for the VCPU thread while the guest runs.
    pub signal: bool,
}

pub(super) fn zeroed_exit() -> sys::nvmm_x86_exit {
    // SAFETY: plain C data; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

impl ScriptedExit {
    pub fn reason(reason: u64) -> Self {
        let mut exit = zeroed_exit();
        exit.reason = reason;
        ScriptedExit {
            exit,
            guest: None,
            signal: false,
        }
    }
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
    pub fn rdmsr(msr: u32, npc: u64) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_RDMSR);
        s.exit.u.rdmsr = sys::nvmm_x86_exit_rdmsr { msr, npc };
        s
    }
    pub fn wrmsr(msr: u32, val: u64, npc: u64) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_WRMSR);
        s.exit.u.wrmsr = sys::nvmm_x86_exit_wrmsr { msr, val, npc };
        s
    }
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
