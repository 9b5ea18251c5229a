//! The integer lane's LOCK-prefixed read-modify-writes of a memory operand
//! other than the exchanges: ADD, OR, ADC, SBB, AND, SUB, XOR r/m, reg
//! (00/01 ... 30/31) and r/m, imm (80/81/83 but /7 CMP), INC/DEC (FE/FF /0
//! /1) and NOT/NEG (F6/F7 /2 /3), after LOCK and (64-bit mode) REX.
//!
//! Why: through the lane's generic decoder and executor these paid its
//! opcode table, the packed `Form`/`Decoded` and the executor's dispatch on
//! the operation and then on the ALU mnemonic once more. Here, as for the
//! exchanges (`exchange.rs`), the operand size is a constant in each copy
//! ([`sized`]) and the operation is picked by one jump, its
//! read-modify-write inline.
//!
//! Exactness: the lane's decode for these bytes (the same ModRM and
//! segment helpers, [`checked_linear`] with a write access, the immediate
//! sign-extended as the generic path did, 16-bit ones zero-extended), and
//! the full fast path's execution with the semantics function
//! [`alu::compute`]: one locked read-modify-write under [`rmw_page`]'s rules
//! (on RAM one compare-and-write, a lost race retried and, if every
//! attempt lost, nothing changed, [`Outcome::Resume`]; on a device a read
//! then a write), then RFLAGS (RF cleared) and RIP. LOCK on a register
//! operand (`#UD`) and on a form that does not take it (CMP, TEST) is
//! declined, left to the general path. The lane's differential tests
//! (`lane_int_tests.rs`) cover these forms in every mode.

use super::super::operand::{self, Placed};
use super::super::retire;
use super::super::{alu, byte, checked_linear, read_reg, sized_field};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::exec::rmw_page;
use crate::flags::RF;
use crate::mode::CpuMode;
use crate::state::CpuState;

/// Whether `opcode` (after LOCK and REX) is one of this path's (the ModRM
/// `reg` field of the groups is checked once the operand size is known).
#[inline(always)]
pub(super) const fn is_opcode(opcode: u8) -> bool {
    // (A bit per opcode: one load and a shift, not a chain of compares.)
    OPCODES[(opcode >> 6) as usize] >> (opcode & 63) & 1 != 0
}

/// [`is_opcode`]'s answers, bit `opcode % 64` of word `opcode / 64`.
const OPCODES: [u64; 4] = {
    let mut bits = [0u64; 4];
    let mut op = 0usize;
    while op < 256 {
        let o = op as u8;
        if (o <= 0x31 && o & 6 == 0) || matches!(o, 0x80 | 0x81 | 0x83 | 0xF6 | 0xF7 | 0xFE | 0xFF)
        {
            bits[op / 64] |= 1 << (op % 64);
        }
        op += 1;
    }
    bits
};

/// The operations past the ALU ones (0-6, `alu_op`'s indexes): INC, DEC,
/// NOT, NEG are `UNARY` + their ModRM `reg` (0-3).
const UNARY: u8 = 8;

/// The LOCK-prefixed `opcode` (see [`is_opcode`]) of `bytes`, its ModRM
/// byte at `bytes[i]`, `rex` the REX prefix (0 for none), in a mode whose
/// default address size is `ADDR`: the copy for the operand size. `None`
/// (nothing done) as the lane's [`run`](super::run) declines.
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
    opcode: u8,
    rex: u8,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (st, r, m) = (state, ram, mmio);
    // (80 and 83 are the byte and the sign-extended imm8 forms: only 80
    // has an even opcode among the immediate ones.)
    if opcode & 1 == 0 {
        locked::<ADDR, 1, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, opcode, rex)
    } else if ADDR == 8 && rex & 8 != 0 {
        locked::<ADDR, 8, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, opcode, rex)
    } else if ADDR == 2 {
        locked::<ADDR, 2, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, opcode, rex)
    } else {
        locked::<ADDR, 4, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, opcode, rex)
    }
}

/// [`sized`] for operand size `SIZE`: the decode, the checks and the
/// execution.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn locked<const ADDR: u8, const SIZE: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    mut i: usize,
    opcode: u8,
    rex: u8,
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
    let reg_field = (modrm >> 3) & 7;
    // ALU r/m, reg (00/01 ... 30/31: ADD ... XOR, never CMP) first, the
    // most common; then the groups: (operation, immediate size).
    let reg_form = opcode <= 0x31;
    let (op, imm_size) = if reg_form {
        ((opcode >> 3) & 7, 0)
    } else {
        match opcode {
            // (CMP r/m, imm, /7, does not take LOCK.)
            0x80 | 0x81 | 0x83 if reg_field == 7 => return None,
            0x80 | 0x83 => (reg_field, 1),
            0x81 => (reg_field, if SIZE == 2 { 2 } else { 4 }),
            0xF6 | 0xF7 if matches!(reg_field, 2 | 3) => (UNARY + reg_field, 0),
            0xFE | 0xFF if reg_field < 2 => (UNARY + reg_field, 0),
            _ => return None,
        }
    };
    let reg = reg_field | ((rex & 4) << 1);
    let address = operand::address::<ADDR, S>(state, bytes, &mut i, md, modrm & 7, rex)?;
    // (No immediate: skip `sized_field`'s dispatch on its size.)
    let imm = if imm_size == 0 {
        0
    } else {
        sized_field(bytes, &mut i, imm_size)?
    };
    // LOCK, REX, opcode, ModRM, SIB, disp32 and imm32 are 12 bytes at most.
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
    // The second operand: the register of ALU r/m, reg, the immediate of
    // the 80-83 group (none for INC/DEC/NOT/NEG).
    let b = if reg_form {
        read_reg(state, reg, SIZE, rex != 0)
    } else {
        imm
    };
    Some(execute::<SIZE, S, R, M>(
        state, ram, mmio, exit_gpa, op, b, next_rip,
    ))
}

/// Operation `op` (an ALU index 0-6, or [`UNARY`] + 0-3) of the `SIZE`
/// bytes at `gpa` and `b`, locked; then RFLAGS (RF cleared) and RIP.
#[inline(always)]
fn execute<const SIZE: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    op: u8,
    b: u64,
    next_rip: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let rflags = state.rflags();
    // The locked read-modify-write of ALU operation `$m` (a constant in
    // each arm, so that its flags are inline), the new RFLAGS its result.
    // (The operation always inline: see `exchange.rs`.)
    macro_rules! locked {
        ($m:expr) => {
            match rmw_page(
                ram,
                mmio,
                gpa,
                SIZE,
                true,
                #[inline(always)]
                move |old| alu::compute($m, old, b, SIZE, rflags).unwrap_or((old, rflags)),
            )? {
                Some(flags) => flags,
                None => return Ok(Outcome::Resume),
            }
        };
    }
    let new_flags = match op {
        0 => locked!(Mnemonic::Add),
        1 => locked!(Mnemonic::Or),
        2 => locked!(Mnemonic::Adc),
        3 => locked!(Mnemonic::Sbb),
        4 => locked!(Mnemonic::And),
        5 => locked!(Mnemonic::Sub),
        6 => locked!(Mnemonic::Xor),
        8 => locked!(Mnemonic::Inc),
        9 => locked!(Mnemonic::Dec),
        10 => locked!(Mnemonic::Not),
        _ => locked!(Mnemonic::Neg),
    };
    retire(state, rflags, new_flags & !RF, next_rip);
    Ok(Outcome::Done)
}
