//! A ModRM memory operand's address, decoded one way for every lane and
//! for the fast path's full decoder: the ModRM addressing forms
//! ([`modrm16`], [`modrm32`]), the displacement ([`address`]), then, once
//! the instruction's length is known, the offset, next RIP and default
//! segment ([`Address::place`]). Everything here is `#[inline(always)]`:
//! it is the hot prologue of every lane, and each caller's constants
//! (address size, immediate size) fold into it.
//!
//! The integer and ALU lanes (`lane_int/*.rs`, `lane_alu.rs`) share more:
//! their arguments as one [`Run`], whose [`Run::modrm`] and [`Run::memory`]
//! ([`Run::operand`], then [`Run::checked`]: a caller may move the operand
//! or pick the access in between) are the whole prologue of a form with no
//! prefix but LOCK and REX (ModRM, address, immediate, next RIP, data
//! segment and [`checked_linear`]), and [`operand_size!`](operand_size) is
//! their operand-size dispatch, which makes the size a constant in each
//! copy. (The integer families are methods of `Run`; BT* and the ALU lane
//! build one for the prologue only: there, the bundle carried through the
//! execution cost instructions, as their docs say.)

use super::{address_mask, byte, checked_linear, prefix, sized_field};
use crate::Outcome;
use crate::access::AccessType;
use crate::error::Error;
use crate::mode::CpuMode;
use crate::state::{CpuState, Gpr, Segment};

/// Expands to `$call` with `$size` a `const u8` of the operand size, one
/// copy per size, so that the size's masks, immediate and access width are
/// constants in each: `byte if $byte` 1 when `$byte` holds; then 8 with
/// REX.W (`$rex` bit 3) in 64-bit mode (`$addr` 8), 2 in 16-bit modes,
/// else 4; or, with `$wide or $narrow`, `$wide` with REX.W in 64-bit mode,
/// else `$narrow`.
macro_rules! operand_size {
    (byte if $byte:expr, $addr:ident, $rex:expr, |$size:ident| $call:expr) => {
        if $byte {
            const $size: u8 = 1;
            $call
        } else {
            $crate::exec::fast::operand::operand_size!($addr, $rex, |$size| $call)
        }
    };
    ($addr:ident, $rex:expr, |$size:ident| $call:expr) => {
        if $addr == 8 && $rex & 8 != 0 {
            const $size: u8 = 8;
            $call
        } else if $addr == 2 {
            const $size: u8 = 2;
            $call
        } else {
            const $size: u8 = 4;
            $call
        }
    };
    ($addr:ident, $rex:expr, $wide:literal or $narrow:literal, |$size:ident| $call:expr) => {
        if $addr == 8 && $rex & 8 != 0 {
            const $size: u8 = $wide;
            $call
        } else {
            const $size: u8 = $narrow;
            $call
        }
    };
}
pub(super) use operand_size;

/// One call of a lane: the vCPU state and the mode, the buses, the exit's
/// GPA and the instruction's bytes, passed on as one value from the lane's
/// entry to the copy for the operand size and its execution (all inline:
/// the fields stay in registers).
pub(super) struct Run<'a, S: ?Sized, R: ?Sized, M: ?Sized> {
    pub(super) state: &'a mut S,
    pub(super) mode: CpuMode,
    pub(super) ram: &'a mut R,
    pub(super) mmio: &'a mut M,
    pub(super) exit_gpa: u64,
    pub(super) bytes: &'a [u8],
}

/// What a lane's path returns: `None` (nothing done) when it declines the
/// bytes, else the assist's result.
pub(super) type Taken = Option<Result<Outcome, Error>>;

/// A memory operand that passed [`Run::memory`]'s checks.
pub(super) struct Memory {
    /// The immediate after the addressing bytes (0 if none).
    pub(super) imm: u64,
    /// The operand's linear address (its page offset the exit GPA's).
    pub(super) linear: u64,
    /// The RIP of the next instruction.
    pub(super) next_rip: u64,
}

impl<'a, S: CpuState + ?Sized, R: ?Sized, M: ?Sized> Run<'a, S, R, M> {
    /// A lane's arguments as one.
    #[inline(always)]
    pub(super) fn new(
        state: &'a mut S,
        mode: CpuMode,
        ram: &'a mut R,
        mmio: &'a mut M,
        exit_gpa: u64,
        bytes: &'a [u8],
    ) -> Self {
        Run {
            state,
            mode,
            ram,
            mmio,
            exit_gpa,
            bytes,
        }
    }

    /// The state, the buses and the exit GPA (the operand's address once
    /// checked), for a path's execution.
    #[inline(always)]
    pub(super) fn parts(self) -> (&'a mut S, &'a mut R, &'a mut M, u64) {
        (self.state, self.ram, self.mmio, self.exit_gpa)
    }

    /// The ModRM byte at `bytes[*i]`, moving `*i` past it: `None` if the
    /// bytes end there or it names a register (mod 3), which none of the
    /// lanes' forms take.
    #[inline(always)]
    pub(super) fn modrm(&self, i: &mut usize) -> Option<u8> {
        let modrm = byte(self.bytes, *i)?;
        *i += 1;
        if modrm >> 6 == 3 {
            return None;
        }
        Some(modrm)
    }

    /// The memory operand of `modrm` (mod 0-2) in a mode whose default
    /// address size is `ADDR`, its addressing bytes from `bytes[i]` on:
    /// [`Run::operand`], then [`Run::checked`] for an access of `size`
    /// bytes. `None` (nothing done) if the bytes end early or the access
    /// is the general path's.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn memory<const ADDR: u8>(
        &self,
        i: usize,
        modrm: u8,
        rex: u8,
        imm_size: u8,
        size: u8,
        access: AccessType,
    ) -> Option<Memory> {
        let operand = self.operand::<ADDR>(i, modrm, rex, imm_size)?;
        let linear = self.checked::<ADDR>(&operand, size, access)?;
        Some(Memory {
            imm: operand.imm,
            linear,
            next_rip: operand.next_rip,
        })
    }

    /// [`Run::memory`] up to its checks: [`address`], then an immediate of
    /// `imm_size` bytes, the offset, the next RIP and the data segment.
    /// `None` if the bytes end early.
    #[inline(always)]
    pub(super) fn operand<const ADDR: u8>(
        &self,
        mut i: usize,
        modrm: u8,
        rex: u8,
        imm_size: u8,
    ) -> Option<Operand> {
        let state = &*self.state;
        let address = address::<ADDR, S>(state, self.bytes, &mut i, modrm >> 6, modrm & 7, rex)?;
        // (No immediate: skip `sized_field`'s dispatch on its size.)
        let imm = if imm_size == 0 {
            0
        } else {
            sized_field(self.bytes, &mut i, imm_size)?
        };
        let Placed { offset, next_rip } = address.place::<ADDR, S>(state, i);
        Some(Operand {
            imm,
            offset,
            next_rip,
            segment: address.data_segment::<ADDR>(),
        })
    }

    /// The linear address of `operand` for an access of `size` bytes
    /// ([`checked_linear`]), `None` if the access is the general path's.
    #[inline(always)]
    pub(super) fn checked<const ADDR: u8>(
        &self,
        operand: &Operand,
        size: u8,
        access: AccessType,
    ) -> Option<u64> {
        checked_linear::<ADDR, S>(
            self.state,
            self.mode,
            self.exit_gpa,
            operand.segment,
            operand.offset,
            size,
            access,
        )
    }
}

/// A memory operand placed by [`Run::operand`], before its checks.
pub(super) struct Operand {
    /// The immediate after the addressing bytes (0 if none).
    pub(super) imm: u64,
    /// The offset in its segment, masked to the address size.
    offset: u64,
    /// The RIP of the next instruction.
    pub(super) next_rip: u64,
    /// The segment of a data access with no override.
    segment: Segment,
}

impl Operand {
    /// Moves the operand by `displacement` bytes (BT*'s register bit
    /// offset), wrapped at the address size `ADDR`.
    #[inline(always)]
    pub(super) fn displace<const ADDR: u8>(&mut self, displacement: u64) {
        self.offset = self.offset.wrapping_add(displacement) & address_mask(ADDR);
    }
}

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

/// The displacement's size in 16-bit addressing by `mod` (0-2; 3 is a
/// register), as [`DISP32_BYTES`] for 32/64-bit addressing. `[disp16]`
/// (mod 0, r/m 6) is the exception, taken before the lookup.
const DISP16_BYTES: [u8; 4] = [0, 1, 2, 0];

/// 16-bit ModRM addressing (mod 0-2).
#[inline(always)]
fn modrm16<S: CpuState + ?Sized>(state: &S, md: u8, rm: u8) -> EffectiveAddress {
    let g = |r: Gpr| state.gpr(r);
    if md == 0 && rm == 6 {
        return EffectiveAddress {
            sum: 0,
            rip_relative: false,
            stack: false,
            disp_bytes: 2,
        };
    }
    let disp_bytes = DISP16_BYTES[usize::from(md & 3)];
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

/// The displacement's size in 32/64-bit addressing by `mod` (0-2; 3 is a
/// register): one load where the `match` was a compare, a set and a
/// conditional move (about 5 instructions more in every lane's 32- and
/// 64-bit prologue).
const DISP32_BYTES: [u8; 4] = [0, 1, 4, 0];

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
    let disp_bytes = DISP32_BYTES[usize::from(md & 3)];
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
