//! The integer lane's bit tests: BT, BTS, BTR and BTC of a memory operand
//! with a register bit offset (0F A3, AB, B3, BB) or an imm8 one (0F BA
//! /4-/7), LOCK (BTS/BTR/BTC) and (64-bit mode) REX their only prefixes.
//!
//! Why: through the lane's generic decoder and executor
//! ([`run`](super::run)) these paid its opcode table, the packed
//! `Form`/`Decoded` and the executor's dispatch on the operation once more,
//! some 90 instructions of an assist of about 300. Here, as for
//! INC/DEC/NOT/NEG (`unary.rs`), the operand size is a constant in each
//! copy ([`sized`]: 2 in 16-bit modes, 4, or 8 with REX.W) and the
//! operation (bits 4:3 of the opcode, or ModRM.reg) is picked by one jump,
//! inline.
//!
//! Exactness: the lane's decode for these bytes (the lanes' shared
//! prologue, [`Run::operand`] and [`Run::checked`]: the same ModRM and
//! segment helpers, `checked_linear` with a read access for BT and a write
//! one for the others, the register offset's signed displacement of the
//! address, wrapped at the address size), and the execution of the full
//! fast path: BT one read; BTS/BTR/BTC unlocked one read and one write of
//! the new value (always made), locked the compare-and-write rules of
//! [`rmw_page`](crate::exec::rmw_page) (a lost race leaves everything
//! unchanged, [`Outcome::Resume`]). CF is the old bit; RF is cleared, RIP
//! written last; a failed access changes no register. The lane's
//! differential test (`lane_int_tests.rs`) covers these forms in every
//! mode.

use super::super::operand::{Run, Taken, operand_size};
use super::super::{read_reg, read_sized, retire};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::exec::bits;
use crate::flags::{CF, RF};
use crate::mode::CpuMode;
use crate::state::CpuState;

/// Whether `op2` (the byte after 0F) is one of this path's opcodes (BA's
/// ModRM.reg is checked with the operand).
#[inline(always)]
pub(super) const fn is_secondary(op2: u8) -> bool {
    matches!(op2, 0xA3 | 0xAB | 0xB3 | 0xBB | 0xBA)
}

/// BT* of `bytes`, whose opcode 0F `op2` (see [`is_secondary`]) is
/// followed by its ModRM byte at `bytes[i]`, `rex` the REX prefix (0 for
/// none), `lock` whether LOCK came first, in a mode whose default address
/// size is `ADDR`: the copy for the operand size. `None` (nothing done) as
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
    op2: u8,
    rex: u8,
    lock: bool,
) -> Taken
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    operand_size!(ADDR, rex, |SIZE| {
        bit_test::<ADDR, SIZE, S, R, M>(state, mode, ram, mmio, exit_gpa, bytes, i, op2, rex, lock)
    })
}

/// [`sized`] for operand size `SIZE`: the decode, the checks and the
/// execution.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bit_test<const ADDR: u8, const SIZE: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    mut i: usize,
    op2: u8,
    rex: u8,
    lock: bool,
) -> Taken
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // (The arguments are a `Run` for the shared prologue only, as in the
    // ALU lane: passed on as one through the execution, they cost up to 6
    // instructions more per assist in 16-bit modes, measured (and saved 7
    // on 64-bit BTS/BTR/BTC): register allocation.)
    let run = Run::new(state, mode, ram, mmio, exit_gpa, bytes);
    let modrm = run.modrm(&mut i)?;
    let reg_field = (modrm >> 3) & 7;
    let imm_form = op2 == 0xBA;
    // The operation: 0 BT, 1 BTS, 2 BTR, 3 BTC (bits 4:3 of A3/AB/B3/BB,
    // ModRM.reg - 4 of BA, whose /0-/3 are undefined).
    let op = if imm_form {
        if reg_field < 4 {
            return None;
        }
        reg_field - 4
    } else {
        (op2 >> 3) & 3
    };
    // BT does not take LOCK (#UD, the general path's).
    if lock && op == 0 {
        return None;
    }
    // LOCK, REX, 0F op, ModRM, SIB, disp32 and imm8 are 10 bytes at most.
    let mut m = run.operand::<ADDR>(i, modrm, rex, u8::from(imm_form))?;
    let bit = if imm_form {
        (m.imm & (u64::from(SIZE) * 8 - 1)) as u32
    } else {
        // A register bit offset moves the access (the address-size wrap
        // applies to the sum).
        let reg = reg_field | ((rex & 4) << 1);
        let (b, displacement) = bits::register_offset(read_reg(&*run.state, reg, SIZE, true), SIZE);
        m.displace::<ADDR>(displacement as u64);
        b
    };
    let access = if op == 0 {
        AccessType::Read
    } else {
        AccessType::Write
    };
    run.checked::<ADDR>(&m, SIZE, access)?;
    let next_rip = m.next_rip;
    Some(execute::<SIZE, S, R, M>(
        state, ram, mmio, exit_gpa, op, bit, lock, next_rip,
    ))
}

/// Operation `op` (0 BT, 1 BTS, 2 BTR, 3 BTC) on bit `bit` of the `SIZE`
/// bytes at `gpa`, locked if `lock`; then RFLAGS (CF the old bit, RF
/// cleared) and RIP.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn execute<const SIZE: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    op: u8,
    bit: u32,
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
    let mask = 1u64 << (bit & 63);
    #[inline(always)]
    fn changed(op: u8, old: u64, mask: u64) -> u64 {
        match op {
            1 => old | mask,
            2 => old & !mask,
            _ => old ^ mask,
        }
    }
    let old = if op == 0 {
        read_sized(ram, mmio, gpa, n)?
    } else {
        read_modify_write!(ram, mmio, gpa, SIZE, lock, move |old| {
            (changed(op, old, mask), old)
        })
    };
    let new_flags = if old & mask != 0 {
        rflags | CF
    } else {
        rflags & !CF
    } & !RF;
    retire(state, new_flags, next_rip);
    Ok(Outcome::Done)
}
