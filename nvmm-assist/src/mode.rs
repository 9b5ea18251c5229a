//! The processor mode, which decides default operand and address sizes and
//! how segmentation applies.

use crate::error::Error;
use crate::state::{CpuState, Segment};

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_LMSLE: u64 = 1 << 13;
const RFLAGS_VM: u64 = 1 << 17;

/// A combination of CR0, CR4, EFER and RFLAGS that no CPU can be in. The
/// assist refuses such a state ([`Error::InconsistentState`]) instead of
/// guessing a mode, which could compute wrong (for example truncated)
/// addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InconsistentState {
    /// CR0.PG = 1 with CR0.PE = 0: MOV to CR0 raises `#GP` (SDM vol. 3A
    /// §2.5, APM vol. 2 §3.1.1).
    PagingWithoutProtection,
    /// EFER.LMA = 1 with CR0.PG = 0: the CPU sets LMA only when paging is
    /// enabled with EFER.LME = 1 and clears it when paging is disabled
    /// (SDM vol. 3A §10.8.5, APM vol. 2 §14.6.1).
    LongModeWithoutPaging,
    /// EFER.LMA = 1 with EFER.LME = 0 (LMA is LME and PG together; VMX
    /// refuses the entry, SDM vol. 3C §27.3.1.1).
    LongModeWithoutLme,
    /// EFER.LME = 1 and CR0.PG = 1 with EFER.LMA = 0 (enabling paging with
    /// LME set activates long mode).
    LmeWithoutLongMode,
    /// EFER.LMA = 1 with CR4.PAE = 0: enabling long mode without PAE raises
    /// `#GP`, and so does clearing PAE in long mode.
    LongModeWithoutPae,
    /// EFER.LMA = 1 with RFLAGS.VM = 1: there is no virtual-8086 mode in
    /// long mode (VMX refuses the entry, SDM vol. 3C §27.3.1.4).
    Virtual8086InLongMode,
    /// EFER bit 13 set: AMD's long-mode segment-limit enable (LMSLE), which
    /// only older AMD CPUs have and NVMM never lets a guest set
    /// (`sys/dev/nvmm/x86/nvmm_x86_svm.c`, `EFER_VALID`); reserved on Intel.
    /// The assist does not emulate it (see [`crate::vendor`], row 8).
    LongModeSegmentLimits,
}

impl core::fmt::Display for InconsistentState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            InconsistentState::PagingWithoutProtection => "CR0.PG = 1 with CR0.PE = 0",
            InconsistentState::LongModeWithoutPaging => "EFER.LMA = 1 with CR0.PG = 0",
            InconsistentState::LongModeWithoutLme => "EFER.LMA = 1 with EFER.LME = 0",
            InconsistentState::LmeWithoutLongMode => {
                "EFER.LME = 1 and CR0.PG = 1 with EFER.LMA = 0"
            }
            InconsistentState::LongModeWithoutPae => "EFER.LMA = 1 with CR4.PAE = 0",
            InconsistentState::Virtual8086InLongMode => "EFER.LMA = 1 with RFLAGS.VM = 1",
            InconsistentState::LongModeSegmentLimits => "EFER.LMSLE (bit 13) set",
        })
    }
}

/// Checks that `state`'s CR0, CR4, EFER and RFLAGS are a combination a CPU
/// can be in (see [`InconsistentState`]).
///
/// CS.L = 1 outside long mode is not an error: the bit is ignored there
/// (SDM vol. 3A §3.4.5), as [`CpuMode::of`] ignores it.
pub fn check_control_state<S: CpuState + ?Sized>(state: &S) -> Result<(), Error> {
    let cr0 = state.cr0();
    let efer = state.efer();
    let lma = efer & EFER_LMA != 0;
    let problem = if cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0 {
        Some(InconsistentState::PagingWithoutProtection)
    } else if efer & EFER_LMSLE != 0 {
        Some(InconsistentState::LongModeSegmentLimits)
    } else if lma && cr0 & CR0_PG == 0 {
        Some(InconsistentState::LongModeWithoutPaging)
    } else if lma && efer & EFER_LME == 0 {
        Some(InconsistentState::LongModeWithoutLme)
    } else if !lma && efer & EFER_LME != 0 && cr0 & CR0_PG != 0 {
        Some(InconsistentState::LmeWithoutLongMode)
    } else if lma && state.cr4() & CR4_PAE == 0 {
        Some(InconsistentState::LongModeWithoutPae)
    } else if lma && state.rflags() & RFLAGS_VM != 0 {
        Some(InconsistentState::Virtual8086InLongMode)
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::InconsistentState(p)),
        None => Ok(()),
    }
}

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
    /// The mode of `state`, after [`check_control_state`]: an impossible
    /// combination of control registers is an [`Error::InconsistentState`].
    /// The assist's entry points use this.
    // Inlined: every assist starts here, and a call returning the
    // `Result` through memory cost a plain IN/OUT about a tenth of its time;
    // the rare full check stays out of line.
    #[inline(always)]
    pub fn try_of<S: CpuState + ?Sized>(state: &S) -> Result<CpuMode, Error> {
        match Self::common_of(state) {
            Some(mode) => Ok(mode),
            None => Self::checked_of(state),
        }
    }

    /// The mode of `state` if it has one of the two shapes nearly every
    /// state has, decided from one read of each register: long mode
    /// (LME|LMA, PG|PE, PAE, no VM) and legacy mode (no LME/LMA/LMSLE, no
    /// PG without PE). `None` for anything else, consistent or not: the
    /// full check ([`CpuMode::try_of`]) decides it and names the problem.
    #[inline(always)]
    pub(crate) fn common_of<S: CpuState + ?Sized>(state: &S) -> Option<CpuMode> {
        let cr0 = state.cr0();
        let efer = state.efer();
        let long = EFER_LME | EFER_LMA;
        match efer & (long | EFER_LMSLE) {
            e if e == long
                && cr0 & (CR0_PG | CR0_PE) == CR0_PG | CR0_PE
                && state.cr4() & CR4_PAE != 0
                && state.rflags() & RFLAGS_VM == 0 =>
            {
                let cs = state.segment(Segment::Cs).attributes;
                // Branches rather than a computed value, so that the
                // caller's dispatch on the mode can follow them.
                if cs.l() {
                    return Some(CpuMode::Long64);
                }
                if cs.db() {
                    return Some(CpuMode::Compat32);
                }
                Some(CpuMode::Compat16)
            }
            0 if cr0 & CR0_PE != 0 => Some(if state.rflags() & RFLAGS_VM != 0 {
                CpuMode::Virtual8086
            } else if state.segment(Segment::Cs).attributes.db() {
                CpuMode::Protected32
            } else {
                CpuMode::Protected16
            }),
            0 if cr0 & CR0_PG == 0 => Some(CpuMode::Real),
            _ => None,
        }
    }

    /// [`CpuMode::try_of`] past its two common shapes: the full check,
    /// which names the problem.
    #[inline(never)]
    fn checked_of<S: CpuState + ?Sized>(state: &S) -> Result<CpuMode, Error> {
        check_control_state(state)?;
        Ok(CpuMode::of(state))
    }

    /// The mode of `state`, assuming a consistent control state (see
    /// [`CpuMode::try_of`]; an inconsistent one gives an arbitrary mode).
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
