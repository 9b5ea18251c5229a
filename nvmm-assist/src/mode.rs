//! The processor mode, which decides default operand and address sizes and
//! how segmentation applies.

use crate::state::{CpuState, Segment};

const CR0_PE: u64 = 1;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_VM: u64 = 1 << 17;

/// The x86 operating mode of the guest, from CR0.PE, EFER.LMA, RFLAGS.VM,
/// CS.L and CS.D (not from CS alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuMode {
    /// Real-address mode (CR0.PE = 0).
    Real,
    /// Virtual-8086 mode (protected mode with RFLAGS.VM = 1).
    Virtual8086,
    /// Protected mode with a 16-bit code segment.
    Protected16,
    /// Protected mode with a 32-bit code segment.
    Protected32,
    /// Compatibility mode (EFER.LMA = 1, CS.L = 0) with a 16-bit code segment.
    Compat16,
    /// Compatibility mode with a 32-bit code segment.
    Compat32,
    /// 64-bit mode (EFER.LMA = 1, CS.L = 1).
    Long64,
}

impl CpuMode {
    /// The mode of `state`.
    pub fn of<S: CpuState + ?Sized>(state: &S) -> CpuMode {
        let cs = state.segment(Segment::Cs).attributes;
        if state.cr0() & CR0_PE == 0 {
            CpuMode::Real
        } else if state.efer() & EFER_LMA != 0 {
            match (cs.l(), cs.db()) {
                // L=1 with D=1 is reserved; the CPU treats the segment as 64-bit.
                (true, _) => CpuMode::Long64,
                (false, true) => CpuMode::Compat32,
                (false, false) => CpuMode::Compat16,
            }
        } else if state.rflags() & RFLAGS_VM != 0 {
            CpuMode::Virtual8086
        } else if cs.db() {
            CpuMode::Protected32
        } else {
            CpuMode::Protected16
        }
    }

    /// The default operand and address size of code in this mode, in bytes
    /// (2 or 4; 64-bit mode has default operand size 4 and address size 8).
    pub const fn default_size(self) -> u8 {
        match self {
            CpuMode::Real | CpuMode::Virtual8086 | CpuMode::Protected16 | CpuMode::Compat16 => 2,
            CpuMode::Protected32 | CpuMode::Compat32 | CpuMode::Long64 => 4,
        }
    }

    /// The default address size in bytes (2, 4 or 8).
    pub const fn default_address_size(self) -> u8 {
        match self {
            CpuMode::Long64 => 8,
            m => m.default_size(),
        }
    }

    /// Whether this is 64-bit mode (REX prefixes, RIP-relative addressing,
    /// flat segmentation).
    pub const fn is_64bit(self) -> bool {
        matches!(self, CpuMode::Long64)
    }

    /// Whether EFER.LMA is set (64-bit or compatibility mode).
    pub const fn is_long(self) -> bool {
        matches!(
            self,
            CpuMode::Long64 | CpuMode::Compat16 | CpuMode::Compat32
        )
    }

    /// Whether segments are real-mode style (base = selector * 16, no
    /// descriptor checks beyond the cached limit).
    pub const fn is_real_or_v86(self) -> bool {
        matches!(self, CpuMode::Real | CpuMode::Virtual8086)
    }
}
