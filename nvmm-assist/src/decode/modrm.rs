//! ModRM, SIB and displacement: the r/m operand's register or address.

use super::cursor::{Cursor, sign_extend};
use super::prefix::Prefixes;
use super::{DecodeError, MemoryOperand};
use crate::state::{Gpr, Segment};

/// A decoded ModRM byte with its SIB and displacement.
#[derive(Debug, Clone, Copy)]
pub(super) struct ModRm {
    /// The raw ModRM byte.
    pub byte: u8,
    /// ModRM.reg extended by REX.R (0-15); the opcode extension of group
    /// opcodes is `byte >> 3 & 7`.
    pub reg: u8,
    /// What ModRM.rm designates.
    pub rm: Rm,
}

impl ModRm {
    /// The 3-bit ModRM.reg field (the group opcode extension).
    pub(super) fn ext(&self) -> u8 {
        (self.byte >> 3) & 7
    }
}

/// The r/m side of a ModRM byte.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rm {
    /// mod = 11: a register, extended by REX.B (0-15).
    Reg(u8),
    /// A memory operand, complete but for its access size (0 here; the
    /// opcode gives it).
    Mem(MemoryOperand),
}

/// The effective segment of a memory operand: the override if any, else SS
/// for rBP/rSP-based forms (`stack`), else DS.
#[inline(always)]
pub(super) fn segment(pfx: &Prefixes, stack: bool) -> Segment {
    match pfx.segment() {
        Some(s) => s,
        None if stack => Segment::Ss,
        None => Segment::Ds,
    }
}

/// Reads ModRM and, for memory forms, SIB and displacement, for address
/// size `addr_size` (2, 4 or 8) and `long` (64-bit mode: RIP-relative).
#[inline(always)]
pub(super) fn read(
    cur: &mut Cursor<'_>,
    pfx: &Prefixes,
    addr_size: u8,
    long: bool,
) -> Result<ModRm, DecodeError> {
    let byte = cur.byte()?;
    let md = byte >> 6;
    let reg = ((byte >> 3) & 7) | pfx.rex_r();
    let rm_bits = byte & 7;
    let rm = if md == 3 {
        Rm::Reg(rm_bits | pfx.rex_b())
    } else if addr_size == 2 {
        Rm::Mem(read16(cur, pfx, md, rm_bits)?)
    } else {
        Rm::Mem(read32(cur, pfx, md, rm_bits, long)?)
    };
    Ok(ModRm { byte, reg, rm })
}

/// The 16-bit forms by ModRM.rm: base, index.
const FORMS16: [(Option<Gpr>, Option<Gpr>); 8] = [
    (Some(Gpr::Rbx), Some(Gpr::Rsi)),
    (Some(Gpr::Rbx), Some(Gpr::Rdi)),
    (Some(Gpr::Rbp), Some(Gpr::Rsi)),
    (Some(Gpr::Rbp), Some(Gpr::Rdi)),
    (Some(Gpr::Rsi), None),
    (Some(Gpr::Rdi), None),
    (Some(Gpr::Rbp), None),
    (Some(Gpr::Rbx), None),
];

/// 16-bit addressing: BX+SI, BX+DI, BP+SI, BP+DI, SI, DI, BP/disp16, BX.
#[inline(always)]
fn read16(
    cur: &mut Cursor<'_>,
    pfx: &Prefixes,
    md: u8,
    rm: u8,
) -> Result<MemoryOperand, DecodeError> {
    let (mut base, index) = FORMS16[usize::from(rm & 7)];
    let disp = match md {
        0 if rm == 6 => {
            base = None;
            sign_extend(cur.le(2)?, 2)
        }
        0 => 0,
        1 => sign_extend(cur.le(1)?, 1),
        _ => sign_extend(cur.le(2)?, 2),
    };
    Ok(MemoryOperand {
        // BP+SI, BP+DI and BP+disp (rm 2, 3, 6) default to SS.
        segment: segment(pfx, matches!(base, Some(Gpr::Rbp))),
        base,
        index,
        scale: 1,
        disp,
        rip_relative: false,
        size: 0,
    })
}

/// 32/64-bit addressing with SIB and RIP-relative forms.
#[inline(always)]
fn read32(
    cur: &mut Cursor<'_>,
    pfx: &Prefixes,
    md: u8,
    rm: u8,
    long: bool,
) -> Result<MemoryOperand, DecodeError> {
    let mut base = None;
    let mut index = None;
    let mut scale = 1;
    let mut stack = false;
    let mut rip_relative = false;
    let mut disp32_only = false;
    if rm == 4 {
        let sib = cur.byte()?;
        let sib_index = ((sib >> 3) & 7) | pfx.rex_x();
        let sib_base = (sib & 7) | pfx.rex_b();
        scale = 1 << (sib >> 6);
        // Index 100 without REX.X means no index (R12 can be an index).
        if sib_index != 4 {
            index = Some(Gpr::from_index(sib_index));
        }
        if sib & 7 == 5 && md == 0 {
            disp32_only = true;
        } else {
            base = Some(Gpr::from_index(sib_base));
            // rSP or rBP as base (not R12/R13) defaults to SS.
            stack = matches!(sib_base, 4 | 5);
        }
    } else if rm == 5 && md == 0 {
        disp32_only = true;
        rip_relative = long;
    } else {
        let b = rm | pfx.rex_b();
        base = Some(Gpr::from_index(b));
        stack = b == 5;
    }
    let disp = match md {
        0 if disp32_only => sign_extend(cur.le(4)?, 4),
        0 => 0,
        1 => sign_extend(cur.le(1)?, 1),
        _ => sign_extend(cur.le(4)?, 4),
    };
    Ok(MemoryOperand {
        segment: segment(pfx, stack),
        base,
        index,
        scale,
        disp,
        rip_relative,
        size: 0,
    })
}
