//! The integer lane's conditional forms: SETcc of a memory byte (0F 90-9F)
//! and CMOVcc from memory (0F 40-4F), with no prefix but (64-bit mode)
//! REX.
//!
//! Why: through the lane's generic decoder and executor ([`run`](super::run))
//! these paid its opcode table, the packed `Form`/`Decoded` and the
//! executor's dispatch on the operation once more, nearly half of the
//! assist. Here, as for INC/DEC/NOT/NEG (`unary.rs`), the operand size is
//! a constant in each copy ([`sized`]: SETcc's is 1) and the condition is
//! evaluated inline.
//!
//! Exactness: the lane's decode for these bytes (the same ModRM and
//! segment helpers, [`checked_linear`] with a write access for SETcc and a
//! read one for CMOVcc; SETcc ignores ModRM.reg), and the execution of
//! the full fast path with the semantics functions of [`mov`]: SETcc one
//! write of 0 or 1; CMOVcc one read whether or not the condition holds,
//! the register written either way (a 32-bit one zero-extended). RF is
//! cleared, RIP written last; a failed access changes no register. LOCK is
//! `#UD` on both, the general path's. The lane's differential test
//! (`lane_int_tests.rs`) covers these forms in every mode.

use super::super::families::write_sized;
use super::super::operand::{self, Placed};
use super::super::{byte, checked_linear, merged, read_reg, read_sized};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::exec::mov;
use crate::flags::RF;
use crate::mode::CpuMode;
use crate::state::CpuState;

/// Whether `op2` (the byte after 0F) is SETcc or CMOVcc.
#[inline(always)]
pub(super) const fn is_secondary(op2: u8) -> bool {
    matches!(op2 & 0xF0, 0x40 | 0x90)
}

/// SETcc or CMOVcc (`op2`, the byte after 0F: see [`is_secondary`]) of
/// `bytes`, its ModRM byte at `bytes[i]`, `rex` the REX prefix (0 for
/// none), in a mode whose default address size is `ADDR`: the copy for
/// the operand size. `None` (nothing done) as the lane's
/// [`run`](super::run) declines.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn sized<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    i: usize,
    op2: u8,
    rex: u8,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (st, r, m) = (state, ram, mmio);
    if op2 & 0xF0 == 0x90 {
        conditional::<ADDR, 1, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, op2, rex)
    } else if ADDR == 8 && rex & 8 != 0 {
        conditional::<ADDR, 8, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, op2, rex)
    } else if ADDR == 2 {
        conditional::<ADDR, 2, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, op2, rex)
    } else {
        conditional::<ADDR, 4, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, op2, rex)
    }
}

/// [`sized`] for operand size `SIZE` (1: SETcc, else CMOVcc): the decode,
/// the checks and the execution.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn conditional<const ADDR: u8, const SIZE: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    mut i: usize,
    op2: u8,
    rex: u8,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let setcc = SIZE == 1;
    let modrm = byte(bytes, i)?;
    i += 1;
    let md = modrm >> 6;
    if md == 3 {
        return None;
    }
    let rm = modrm & 7;
    let reg = ((modrm >> 3) & 7) | ((rex & 4) << 1);
    let address = operand::address::<ADDR, S>(state, bytes, &mut i, md, rm, rex)?;
    // REX, 0F op, ModRM, SIB and disp32 are 9 bytes at most.
    let Placed { offset, next_rip } = address.place::<ADDR, S>(state, i);
    let segment = address.data_segment::<ADDR>();
    let access = if setcc {
        AccessType::Write
    } else {
        AccessType::Read
    };
    checked_linear::<ADDR, S>(state, mode, exit_gpa, segment, offset, SIZE, access)?;
    Some(execute::<SIZE, S, R, M>(
        state,
        ram,
        mmio,
        exit_gpa,
        op2 & 15,
        reg,
        rex != 0,
        next_rip,
    ))
}

/// SETcc (`SIZE` 1) or CMOVcc of condition `cc` at `gpa`, `reg` CMOVcc's
/// destination (its encoding; `rex`: a REX prefix); then RIP (RFLAGS
/// changes only if RF was set).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn execute<const SIZE: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    cc: u8,
    reg: u8,
    rex: bool,
    next_rip: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let rflags = state.rflags();
    if SIZE == 1 {
        write_sized(ram, mmio, gpa, 1, mov::setcc(cc, rflags))?;
    } else {
        // The memory is read whether or not the condition holds.
        let loaded = read_sized(ram, mmio, gpa, usize::from(SIZE))?;
        let current = read_reg(state, reg, SIZE, rex);
        let value = mov::cmov(cc, rflags, loaded, current);
        let (g, v) = merged(state, reg, SIZE, rex, value);
        state.set_gpr(g, v);
    }
    if rflags & RF != 0 {
        state.set_rflags(rflags & !RF);
    }
    state.set_rip(next_rip);
    Ok(Outcome::Done)
}
