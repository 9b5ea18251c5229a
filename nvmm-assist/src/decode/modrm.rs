//! ModRM, SIB and displacement: the r/m operand's register or address.

use super::DecodeError;
use super::cursor::{Cursor, sign_extend};
use super::prefix::Prefixes;
use crate::state::Gpr;

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
    /// A memory address.
    Mem(Address),
}

/// An effective-address expression, without segment or access size.
#[derive(Debug, Clone, Copy)]
pub(super) struct Address {
    pub base: Option<Gpr>,
    pub index: Option<Gpr>,
    pub scale: u8,
    pub disp: i64,
    pub rip_relative: bool,
    /// The default segment is SS (rBP or rSP as base), not DS.
    pub stack: bool,
}

impl Address {
    fn new() -> Self {
        Address {
            base: None,
            index: None,
            scale: 1,
            disp: 0,
            rip_relative: false,
            stack: false,
        }
    }
}

/// Reads ModRM and, for memory forms, SIB and displacement, for address
/// size `addr_size` (2, 4 or 8) and `long` (64-bit mode: RIP-relative).
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
        Rm::Mem(read16(cur, md, rm_bits)?)
    } else {
        Rm::Mem(read32(cur, pfx, md, rm_bits, long)?)
    };
    Ok(ModRm { byte, reg, rm })
}

/// 16-bit addressing: BX+SI, BX+DI, BP+SI, BP+DI, SI, DI, BP/disp16, BX.
fn read16(cur: &mut Cursor<'_>, md: u8, rm: u8) -> Result<Address, DecodeError> {
    let mut a = Address::new();
    let (base, index) = match rm {
        0 => (Some(Gpr::Rbx), Some(Gpr::Rsi)),
        1 => (Some(Gpr::Rbx), Some(Gpr::Rdi)),
        2 => (Some(Gpr::Rbp), Some(Gpr::Rsi)),
        3 => (Some(Gpr::Rbp), Some(Gpr::Rdi)),
        4 => (Some(Gpr::Rsi), None),
        5 => (Some(Gpr::Rdi), None),
        6 if md == 0 => (None, None),
        6 => (Some(Gpr::Rbp), None),
        _ => (Some(Gpr::Rbx), None),
    };
    a.base = base;
    a.index = index;
    a.stack = base == Some(Gpr::Rbp);
    a.disp = match (md, base) {
        (0, None) => sign_extend(cur.le(2)?, 2),
        (0, _) => 0,
        (1, _) => sign_extend(cur.le(1)?, 1),
        _ => sign_extend(cur.le(2)?, 2),
    };
    Ok(a)
}

/// 32/64-bit addressing with SIB and RIP-relative forms.
fn read32(
    cur: &mut Cursor<'_>,
    pfx: &Prefixes,
    md: u8,
    rm: u8,
    long: bool,
) -> Result<Address, DecodeError> {
    let mut a = Address::new();
    let mut disp32_only = false;
    if rm == 4 {
        let sib = cur.byte()?;
        let index = ((sib >> 3) & 7) | pfx.rex_x();
        let base = (sib & 7) | pfx.rex_b();
        a.scale = 1 << (sib >> 6);
        // Index 100 without REX.X means no index (R12 can be an index).
        if index != 4 {
            a.index = Some(Gpr::from_index(index));
        }
        if sib & 7 == 5 && md == 0 {
            disp32_only = true;
        } else {
            a.base = Some(Gpr::from_index(base));
        }
    } else if rm == 5 && md == 0 {
        disp32_only = true;
        a.rip_relative = long;
    } else {
        a.base = Some(Gpr::from_index(rm | pfx.rex_b()));
    }
    a.stack = matches!(a.base, Some(Gpr::Rsp | Gpr::Rbp));
    a.disp = match md {
        0 if disp32_only => sign_extend(cur.le(4)?, 4),
        0 => 0,
        1 => sign_extend(cur.le(1)?, 1),
        _ => sign_extend(cur.le(4)?, 4),
    };
    Ok(a)
}
