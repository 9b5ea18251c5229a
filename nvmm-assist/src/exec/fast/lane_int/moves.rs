//! The integer lane's moves: MOVSXD r, r/m32 (63, 64-bit mode) and MOVNTI
//! m, r (0F C3) with a memory operand, (64-bit mode) REX their only prefix.
//!
//! Why: through the lane's generic decoder and executor these paid its
//! opcode table, the packed `Form`/`Decoded` and the executor's dispatch
//! on the operation once more; here the operand size is a constant in each
//! copy ([`sized`]) and the move is one read or one write.
//!
//! Exactness: the lane's decode for these bytes (the same ModRM and
//! segment helpers, [`checked_linear`]: MOVSXD reads 4 bytes, MOVNTI writes
//! the operand size) and the full fast path's execution: MOVSXD one read,
//! then the register (sign-extended to 64 bits with REX.W, else a 32-bit
//! write that zero-extends); MOVNTI one write of the register (its
//! non-temporal hint means nothing to an emulated access). RF is cleared
//! and RIP written last; a failed access changes no register. LOCK on
//! either (`#UD`) is declined before this path. The lane's differential
//! tests (`lane_int_tests.rs`) cover both in every mode.

use super::super::operand::{self, Placed};
use super::super::retire;
use super::super::{byte, checked_linear, merged, read_reg};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::exec::{read_page, write_page};
use crate::flags::{self, RF};
use crate::mode::CpuMode;
use crate::state::CpuState;

/// MOVSXD (`load`, the opcode 63 in 64-bit mode) or MOVNTI (0F C3) of
/// `bytes`, whose ModRM byte is at `bytes[i]`, `rex` the REX prefix (0 for
/// none), in a mode whose default address size is `ADDR`: the copy for the
/// operand size (8 with REX.W, else 4: MOVNTI has no 16-bit form without
/// a 66 prefix, which the lane does not take). `None` (nothing done) as
/// the lane's [`run`](super::run) declines.
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
    rex: u8,
    load: bool,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (st, r, m) = (state, ram, mmio);
    if ADDR == 8 && rex & 8 != 0 {
        moves::<ADDR, 8, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, rex, load)
    } else {
        moves::<ADDR, 4, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, rex, load)
    }
}

/// [`sized`] for operand size `SIZE`: the decode, the checks and the move.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn moves<const ADDR: u8, const SIZE: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    mut i: usize,
    rex: u8,
    load: bool,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let modrm = byte(bytes, i)?;
    i += 1;
    let md = modrm >> 6;
    if md == 3 {
        return None;
    }
    let reg = ((modrm >> 3) & 7) | ((rex & 4) << 1);
    let address = operand::address::<ADDR, S>(state, bytes, &mut i, md, modrm & 7, rex)?;
    // REX, 0F C3, ModRM, SIB and disp32 are 9 bytes at most.
    let Placed { offset, next_rip } = address.place::<ADDR, S>(state, i);
    let segment = address.data_segment::<ADDR>();
    let (access, kind) = if load {
        (4, AccessType::Read)
    } else {
        (SIZE, AccessType::Write)
    };
    checked_linear::<ADDR, S>(state, mode, exit_gpa, segment, offset, access, kind)?;
    Some(execute::<SIZE, S, R, M>(
        state,
        ram,
        mmio,
        exit_gpa,
        reg,
        rex != 0,
        load,
        next_rip,
    ))
}

/// The move at `gpa` with the register `reg` (its encoding, 0-15): MOVSXD
/// (`load`) or MOVNTI; then RFLAGS (RF cleared) and RIP.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn execute<const SIZE: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    reg: u8,
    rex: bool,
    load: bool,
    next_rip: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let rflags = state.rflags();
    if load {
        let value = flags::sign_extend(read_page(ram, mmio, gpa, 4)?, 4);
        let (g, v) = merged(state, reg, SIZE, rex, value);
        state.set_gpr(g, v);
    } else {
        write_page(ram, mmio, gpa, SIZE, read_reg(state, reg, SIZE, rex))?;
    }
    retire(state, rflags, rflags & !RF, next_rip);
    Ok(Outcome::Done)
}
