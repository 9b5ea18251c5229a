//! A ModRM memory operand's address, decoded one way for every lane and
//! for the fast path's full decoder: the ModRM addressing forms
//! ([`modrm16`], [`modrm32`]), the displacement ([`address`]), then, once
//! the instruction's length is known, the offset, next RIP and default
//! segment ([`Address::place`]). Everything here is `#[inline(always)]`:
//! it is the hot prologue of every lane, and each caller's constants
//! (address size, immediate size) fold into it.

use super::{byte, prefix, sized_field};
use crate::state::{CpuState, Gpr, Segment};

/// A ModRM memory operand's address fields, read up to the end of its
/// displacement: what is left to know is the instruction's length (an
/// immediate may follow), which RIP-relative addressing adds.
pub(super) struct Address {
    /// base + scaled index (unmasked; 0 when RIP-relative).
    sum: u64,
    /// The displacement, sign-extended.
    disp: u64,
    /// `[rip + disp32]` (64-bit mode).
    rip_relative: bool,
    /// rBP/rSP-based: SS is the default segment.
    pub(super) stack: bool,
}

/// Where a memory operand is once the instruction's length is known.
pub(super) struct Placed {
    /// The offset in its segment, masked to the address size.
    pub(super) offset: u64,
    /// The RIP of the next instruction (masked to the address size).
    pub(super) next_rip: u64,
}

/// Decodes the addressing bytes of a ModRM memory operand (`md` 0-2) of
/// address size `ADDR`: the SIB byte if any and the displacement, from
/// `*i` on, moving `*i` past them. `None` if the bytes end first.
#[inline(always)]
pub(super) fn address<const ADDR: u8, S: CpuState + ?Sized>(
    state: &S,
    bytes: &[u8],
    i: &mut usize,
    md: u8,
    rm: u8,
    rex: u8,
) -> Option<Address> {
    let ea = if ADDR == 2 {
        modrm16(state, md, rm)
    } else {
        modrm32(state, bytes, i, md, rm, rex, ADDR == 8)?
    };
    let disp = sized_field(bytes, i, ea.disp_bytes)?;
    Some(Address {
        sum: ea.sum,
        disp,
        rip_relative: ea.rip_relative,
        stack: ea.stack,
    })
}

impl Address {
    /// The operand's offset and the next RIP, for an instruction `len`
    /// bytes long (its immediate, if any, included).
    #[inline(always)]
    pub(super) fn place<const ADDR: u8, S: CpuState + ?Sized>(
        &self,
        state: &S,
        len: usize,
    ) -> Placed {
        let next_rip = prefix::next_rip::<ADDR, S>(state, len);
        // (The sum and displacement are added here, not before: the RIP
        // is selected as the base in their place, one addition fewer.)
        let base = if self.rip_relative {
            next_rip
        } else {
            self.sum
        };
        Placed {
            offset: base.wrapping_add(self.disp) & super::address_mask(ADDR),
            next_rip,
        }
    }

    /// The segment of a data access with no override: SS for the
    /// rBP/rSP-based forms, DS otherwise; in 64-bit mode always DS, whose
    /// base and limit count no more than SS's (a non-canonical stack
    /// address, #SS rather than #GP, is declined by the lanes' checks and
    /// left to the general path).
    #[inline(always)]
    pub(super) fn data_segment<const ADDR: u8>(&self) -> Segment {
        if self.stack && ADDR != 8 {
            Segment::Ss
        } else {
            Segment::Ds
        }
    }
}

/// A ModRM memory operand before its displacement.
struct EffectiveAddress {
    /// base + scaled index (unmasked).
    pub(super) sum: u64,
    /// `[rip + disp32]`: the base is the next RIP, known once the length is.
    pub(super) rip_relative: bool,
    /// SS is the default segment (rBP/rSP-based forms).
    pub(super) stack: bool,
    /// Size of the displacement that follows: 0, 1, 2 or 4.
    pub(super) disp_bytes: u8,
}

/// 16-bit ModRM addressing (mod 0-2).
#[inline(always)]
fn modrm16<S: CpuState + ?Sized>(state: &S, md: u8, rm: u8) -> EffectiveAddress {
    let g = |r: Gpr| state.gpr(r);
    let disp_bytes = match md {
        0 if rm == 6 => {
            return EffectiveAddress {
                sum: 0,
                rip_relative: false,
                stack: false,
                disp_bytes: 2,
            };
        }
        0 => 0,
        1 => 1,
        _ => 2,
    };
    let (sum, stack) = match rm {
        0 => (g(Gpr::Rbx).wrapping_add(g(Gpr::Rsi)), false),
        1 => (g(Gpr::Rbx).wrapping_add(g(Gpr::Rdi)), false),
        2 => (g(Gpr::Rbp).wrapping_add(g(Gpr::Rsi)), true),
        3 => (g(Gpr::Rbp).wrapping_add(g(Gpr::Rdi)), true),
        4 => (g(Gpr::Rsi), false),
        5 => (g(Gpr::Rdi), false),
        6 => (g(Gpr::Rbp), true),
        _ => (g(Gpr::Rbx), false),
    };
    EffectiveAddress {
        sum,
        rip_relative: false,
        stack,
        disp_bytes,
    }
}

/// 32/64-bit ModRM addressing (mod 0-2), reading a SIB byte at `*i` if
/// there is one.
#[inline(always)]
fn modrm32<S: CpuState + ?Sized>(
    state: &S,
    bytes: &[u8],
    i: &mut usize,
    md: u8,
    rm: u8,
    rex: u8,
    long: bool,
) -> Option<EffectiveAddress> {
    let ea = |sum, rip_relative, stack, disp_bytes| EffectiveAddress {
        sum,
        rip_relative,
        stack,
        disp_bytes,
    };
    let rex_b = (rex & 1) << 3;
    let disp_bytes = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = byte(bytes, *i)?;
        *i += 1;
        let index = ((sib >> 3) & 7) | ((rex & 2) << 2);
        let mut sum = 0u64;
        if index != 4 {
            sum = state.gpr(Gpr::from_index(index)) << (sib >> 6);
        }
        let base = sib & 7;
        if base == 5 && md == 0 {
            return Some(ea(sum, false, false, 4));
        }
        let base = base | rex_b;
        sum = sum.wrapping_add(state.gpr(Gpr::from_index(base)));
        // rSP/rBP as the base default to SS (R12/R13 do not).
        return Some(ea(sum, false, base == 4 || base == 5, disp_bytes));
    }
    if rm == 5 && md == 0 {
        // 64-bit mode: RIP-relative; elsewhere an absolute disp32.
        return Some(ea(0, long, false, 4));
    }
    let base = rm | rex_b;
    let sum = state.gpr(Gpr::from_index(base));
    Some(ea(sum, false, base == 5, disp_bytes))
}
