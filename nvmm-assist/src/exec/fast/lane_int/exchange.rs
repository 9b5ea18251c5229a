//! The integer lane's exchanges: XCHG r/m, reg (86/87), XADD (0F C0/C1)
//! and CMPXCHG (0F B0/B1) with a memory operand, LOCK and (64-bit mode)
//! REX their only prefixes.
//!
//! Why: through the lane's generic decoder and executor ([`run`](super::run))
//! these paid its opcode table, the packed `Form`/`Decoded` and the
//! executor's dispatch on the operation once more, about a third of the
//! assist. Here, as for INC/DEC/NOT/NEG (`unary.rs`), the operand size is
//! a constant in each copy ([`sized`]) and the operation is picked by one
//! jump, inline.
//!
//! Exactness: the lane's decode for these bytes (the same ModRM and
//! segment helpers, [`checked_linear`] with a write access), and the
//! execution of the full fast path with the semantics functions of
//! [`xchg`]: XCHG is locked with or without the prefix; XADD and CMPXCHG
//! unlocked are one read and one write (always made, CMPXCHG writing the
//! old value back when the comparison fails), locked the compare-and-write
//! rules of [`rmw_page`] (a lost race leaves everything unchanged,
//! [`Outcome::Resume`]). The register is written only once every access
//! succeeded, then RFLAGS (RF cleared) and RIP. The lane's differential
//! test (`lane_int_tests.rs`) covers these forms in every mode.

use super::super::families::write_sized;
use super::super::operand::{self, Placed};
use super::super::retire;
use super::super::{byte, checked_linear, merged, read_reg, read_sized};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::exec::{rmw_page, xchg};
use crate::flags::{self, RF};
use crate::mode::CpuMode;
use crate::state::{CpuState, Gpr};

/// XCHG (86/87).
pub(super) const XCHG: u8 = 0;
/// XADD (0F C0/C1).
const XADD: u8 = 1;
/// CMPXCHG (0F B0/B1).
const CMPXCHG: u8 = 2;

/// The operation of the byte after 0F, if it is one of this path's.
#[inline(always)]
pub(super) const fn secondary(op2: u8) -> Option<u8> {
    match op2 {
        0xC0 | 0xC1 => Some(XADD),
        0xB0 | 0xB1 => Some(CMPXCHG),
        _ => None,
    }
}

/// Whether a one-byte `opcode` is XCHG r/m, reg.
#[inline(always)]
pub(super) const fn is_xchg(opcode: u8) -> bool {
    opcode & 0xFE == 0x86
}

/// Operation `op` ([`XCHG`], [`XADD`] or [`CMPXCHG`]) of `bytes`, whose
/// opcode (`wide`: its low bit, the operand size not a byte) is followed
/// by its ModRM byte at `bytes[i]`, `rex` the REX prefix (0 for none),
/// `lock` whether LOCK came first, in a mode whose default address size is
/// `ADDR`: the copy for the operand size. `None` (nothing done) as the
/// lane's [`run`](super::run) declines.
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
    op: u8,
    wide: bool,
    rex: u8,
    lock: bool,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (st, r, m) = (state, ram, mmio);
    let at = At { i, op, rex, lock };
    if !wide {
        exchange::<ADDR, 1, S, R, M>(st, mode, r, m, exit_gpa, bytes, at)
    } else if ADDR == 8 && rex & 8 != 0 {
        exchange::<ADDR, 8, S, R, M>(st, mode, r, m, exit_gpa, bytes, at)
    } else if ADDR == 2 {
        exchange::<ADDR, 2, S, R, M>(st, mode, r, m, exit_gpa, bytes, at)
    } else {
        exchange::<ADDR, 4, S, R, M>(st, mode, r, m, exit_gpa, bytes, at)
    }
}

/// What [`sized`] passes on: the ModRM byte's index, the operation, the
/// REX prefix and LOCK.
#[derive(Clone, Copy)]
struct At {
    i: usize,
    op: u8,
    rex: u8,
    lock: bool,
}

/// [`sized`] for operand size `SIZE`: the decode, the checks and the
/// execution.
#[inline(always)]
fn exchange<const ADDR: u8, const SIZE: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    at: At,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let At {
        mut i,
        op,
        rex,
        lock,
    } = at;
    let modrm = byte(bytes, i)?;
    i += 1;
    let md = modrm >> 6;
    if md == 3 {
        return None;
    }
    let rm = modrm & 7;
    let reg = ((modrm >> 3) & 7) | ((rex & 4) << 1);
    let address = operand::address::<ADDR, S>(state, bytes, &mut i, md, rm, rex)?;
    // LOCK, REX, 0F op, ModRM, SIB and disp32 are 10 bytes at most.
    let Placed { offset, next_rip } = address.place::<ADDR, S>(state, i);
    let segment = address.data_segment::<ADDR>();
    checked_linear::<ADDR, S>(
        state,
        mode,
        exit_gpa,
        segment,
        offset,
        SIZE,
        AccessType::Write,
    )?;
    Some(execute::<SIZE, S, R, M>(
        state,
        ram,
        mmio,
        exit_gpa,
        op,
        reg,
        rex != 0,
        lock,
        next_rip,
    ))
}

/// Operation `op` on the `SIZE` bytes at `gpa` and the register `reg`
/// (its encoding, 0-15; `rex`: a REX prefix, SPL..DIL for 4-7 of a byte),
/// locked if `lock` (XCHG always); then the register, RFLAGS (RF cleared)
/// and RIP.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn execute<const SIZE: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    op: u8,
    reg: u8,
    rex: bool,
    lock: bool,
    next_rip: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let n = usize::from(SIZE);
    let rflags = state.rflags();
    let src = read_reg(state, reg, SIZE, rex);
    // (the value loaded into the register if any, with its encoding; the
    // new RFLAGS)
    let (load, new_flags) = match op {
        XCHG => {
            let old = match rmw_page(
                ram,
                mmio,
                gpa,
                SIZE,
                true,
                #[inline(always)]
                move |old| (src, old),
            )? {
                Some(old) => old,
                None => return Ok(Outcome::Resume),
            };
            (Some((reg, rex, old)), rflags)
        }
        XADD => {
            let (old, fl) = if lock {
                match rmw_page(
                    ram,
                    mmio,
                    gpa,
                    SIZE,
                    true,
                    #[inline(always)]
                    move |old| {
                        let (sum, fl) = xchg::xadd(old, src, SIZE, rflags);
                        (sum, (old, fl))
                    },
                )? {
                    Some(v) => v,
                    None => return Ok(Outcome::Resume),
                }
            } else {
                let old = read_sized(ram, mmio, gpa, n)?;
                let (sum, fl) = xchg::xadd(old, src, SIZE, rflags);
                write_sized(ram, mmio, gpa, n, sum)?;
                (old, fl)
            };
            (Some((reg, rex, old)), fl)
        }
        _ => {
            let acc = state.gpr(Gpr::Rax) & flags::size_mask(SIZE);
            let (fl, loaded) = if lock {
                match rmw_page(
                    ram,
                    mmio,
                    gpa,
                    SIZE,
                    true,
                    #[inline(always)]
                    move |old| {
                        let (new, fl, loaded) = xchg::cmpxchg(acc, old, src, SIZE, rflags);
                        (new, (fl, loaded))
                    },
                )? {
                    Some(v) => v,
                    None => return Ok(Outcome::Resume),
                }
            } else {
                let old = read_sized(ram, mmio, gpa, n)?;
                let (new, fl, loaded) = xchg::cmpxchg(acc, old, src, SIZE, rflags);
                write_sized(ram, mmio, gpa, n, new)?;
                (fl, loaded)
            };
            // A failed comparison loads the accumulator (AL, never AH).
            (loaded.map(|old| (0, false, old)), fl)
        }
    };
    if let Some((reg, rex, value)) = load {
        let (g, v) = merged(state, reg, SIZE, rex, value);
        state.set_gpr(g, v);
    }
    let new_flags = new_flags & !RF;
    retire(state, rflags, new_flags, next_rip);
    Ok(Outcome::Done)
}
