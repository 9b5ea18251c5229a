//! The ALU lane ([`Lane::Alu`](super::Lane::Alu)): the two-operand ALU
//! forms with one memory operand and no prefix but (64-bit mode) REX,
//! decoded and executed here:
//! - ADD, OR, ADC, SBB, AND, SUB, XOR, CMP r/m, reg and reg, r/m (00-3B,
//!   the opcodes whose low three bits are 0-3);
//! - the immediate group 80/81/83 (its eight operations by ModRM.reg);
//! - TEST r/m, reg (84/85) and TEST r/m, imm (F6/F7 /0 and its alias /1).
//!
//! Why: these forms went through the full fast path ([`run_mode`]), one
//! large function whose MOV/ALU decoder parses prefixes, dispatches on the
//! opcode, packs a `Fast` and dispatches on its kind again. Here the
//! opcode fixes the direction, the operand-size class and the immediate's
//! size at once, with no prefix to parse, and the execution is the
//! executor's ALU arm for those constants.
//!
//! Exactness: for the bytes it takes, [`run_alu`] is the full fast path's
//! MOV/ALU decoder (the same effective address, segment, address checks
//! (`checked_linear`) and next RIP, through the prologue the lanes share,
//! [`Run::operand`] and [`Run::checked`]) and its executor's ALU arm (one
//! read, [`alu::compute`], then one write of the memory operand or of the
//! register, none for CMP and TEST, RF cleared, RIP last). It declines
//! (`None`, nothing done) anything else: a register operand, bytes that
//! end early, F6/F7 other than /0 /1, and whatever the full path would
//! leave to the general one (a fault, a page crossing, a mismatching exit
//! GPA, a possible `#AC`). Prefixes other than REX (66, LOCK, segment
//! overrides) never pick this lane.
//!
//! [`run_mode`]: super::run_mode

use super::operand::{Run, operand_size};
use super::retire;
use super::{alu, merged, read_reg, read_sized, rex_and_opcode};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::flags::RF;
use crate::mode::CpuMode;
use crate::state::CpuState;

/// [`modrm_alu`]'s `KIND`: ALU r/m, reg (the x0/x1 forms of 00-39, TEST
/// 84/85).
const TO_MEM: u8 = 0;
/// [`modrm_alu`]'s `KIND`: ALU reg, r/m (the x2/x3 forms of 02-3B).
const TO_REG: u8 = 1;
/// [`modrm_alu`]'s `KIND`: ALU r/m, imm8 (80, 83, TEST F6 /0 /1).
const IMM8: u8 = 2;
/// [`modrm_alu`]'s `KIND`: ALU r/m, imm16/32 (81, TEST F7 /0 /1).
const IMM: u8 = 3;

/// Whether `first` is an opcode of this lane (F6/F7 only with ModRM.reg 0
/// or 1, which [`lane`](super::lane) checks).
#[inline(always)]
pub(super) const fn is_opcode(first: u8) -> bool {
    matches!(first, 0x00..=0x3B if first & 4 == 0)
        || matches!(first, 0x80 | 0x81 | 0x83 | 0x84 | 0x85 | 0xF6 | 0xF7)
}

/// The ALU lane: the forms of this module with no prefix but (64-bit mode)
/// REX, in a mode whose default address size is `ADDR`. `None` (nothing
/// done) for other bytes and for any case the full fast path would leave
/// to the general one. Bit 0 of every opcode here is the operand-size bit
/// (byte, or the mode's size).
#[inline(always)]
pub(crate) fn run_alu<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (rex, b, i) = rex_and_opcode::<ADDR>(bytes)?;
    let (st, r, m) = (state, ram, mmio);
    let at = Operands {
        exit_gpa,
        i,
        opcode: b,
        rex,
    };
    match b {
        0x00..=0x3B if b & 6 == 0 => sized::<ADDR, TO_MEM, S, R, M>(st, mode, r, m, bytes, at),
        0x00..=0x3B if b & 6 == 2 => sized::<ADDR, TO_REG, S, R, M>(st, mode, r, m, bytes, at),
        0x84 | 0x85 => sized::<ADDR, TO_MEM, S, R, M>(st, mode, r, m, bytes, at),
        0x80 | 0x83 | 0xF6 => sized::<ADDR, IMM8, S, R, M>(st, mode, r, m, bytes, at),
        0x81 | 0xF7 => sized::<ADDR, IMM, S, R, M>(st, mode, r, m, bytes, at),
        _ => None,
    }
}

/// What [`run_alu`] passes on: the exit GPA, the index of the ModRM byte,
/// the opcode and the REX prefix (0 for none).
#[derive(Clone, Copy)]
struct Operands {
    exit_gpa: u64,
    i: usize,
    opcode: u8,
    rex: u8,
}

/// [`modrm_alu`] for the operand size of the opcode and REX.W, a
/// constant in each copy (so are then the size's masks, the immediate's
/// size and the access's width).
#[inline(always)]
fn sized<const ADDR: u8, const KIND: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    bytes: &[u8],
    at: Operands,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // (81 and F7 are never byte forms.)
    operand_size!(byte if KIND != IMM && at.opcode & 1 == 0, ADDR, at.rex, |SIZE| {
        modrm_alu::<ADDR, KIND, SIZE, S, R, M>(state, mode, ram, mmio, bytes, at)
    })
}

/// [`run_alu`] once the opcode is known, its ModRM byte at
/// `bytes[at.i]`: `KIND` [`TO_MEM`], [`TO_REG`], [`IMM8`] or [`IMM`], of
/// operand size `SIZE`.
#[inline(always)]
fn modrm_alu<const ADDR: u8, const KIND: u8, const SIZE: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    bytes: &[u8],
    at: Operands,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let Operands {
        exit_gpa,
        mut i,
        opcode,
        rex,
    } = at;
    // (The arguments are a `Run` for the shared prologue only: passed on as
    // one through the execution too, as in the integer lane, they cost up
    // to 9 instructions more per assist in 16- and 32-bit modes, measured,
    // where they crowd the registers.)
    let run = Run::new(state, mode, ram, mmio, exit_gpa, bytes);
    let modrm = run.modrm(&mut i)?;
    let reg_field = (modrm >> 3) & 7;
    // The operation: its index in the ALU opcodes' order (00 ADD ... 38
    // CMP), or [`TEST`].
    let op = if KIND == IMM8 || KIND == IMM {
        if opcode & 0xF0 == 0xF0 {
            // Group 3: TEST is /0 (and its alias /1); NOT, NEG, MUL, ...
            // are not this lane's.
            if reg_field >= 2 {
                return None;
            }
            TEST
        } else {
            reg_field
        }
    } else if opcode & 0xF0 == 0x80 {
        TEST
    } else {
        (opcode >> 3) & 7
    };
    // A full immediate is 16 bits at operand size 2, else 32
    // (sign-extended at size 8).
    let imm_size = match KIND {
        IMM8 => 1,
        IMM if SIZE == 2 => 2,
        IMM => 4,
        _ => 0,
    };
    // REX, opcode, ModRM, SIB, disp32 and imm32 are 12 bytes at most.
    let m = run.operand::<ADDR>(i, modrm, rex, imm_size)?;
    // CMP and TEST only read their memory operand, and so does every
    // reg, r/m form; the others read and write it.
    let access = if KIND == TO_REG || op >= CMP {
        AccessType::Read
    } else {
        AccessType::Write
    };
    run.checked::<ADDR>(&m, SIZE, access)?;
    let (imm, next_rip) = (m.imm, m.next_rip);
    let reg = reg_field | ((rex & 4) << 1);
    Some(execute::<KIND, SIZE, S, R, M>(
        state,
        ram,
        mmio,
        exit_gpa,
        op,
        reg,
        rex != 0,
        imm,
        next_rip,
    ))
}

/// The index of CMP among the ALU operations (ADD, OR, ADC, SBB, AND, SUB,
/// XOR, CMP: bits 5:3 of the opcode, or ModRM.reg of group 1).
const CMP: u8 = 7;
/// [`modrm_alu`]'s operation index of TEST.
const TEST: u8 = 8;

/// The result and flags of operation `op` (an index: [`CMP`], [`TEST`])
/// at operand size `SIZE`: [`alu::compute`] with each operation a
/// constant in its own arm, so that one jump picks the operation.
#[inline(always)]
fn compute<const SIZE: u8>(op: u8, a: u64, b: u64, rflags: u64) -> (u64, u64) {
    let c = |m: Mnemonic| alu::compute(m, a, b, SIZE, rflags).unwrap_or((a, rflags));
    match op {
        0 => c(Mnemonic::Add),
        1 => c(Mnemonic::Or),
        2 => c(Mnemonic::Adc),
        3 => c(Mnemonic::Sbb),
        4 => c(Mnemonic::And),
        5 => c(Mnemonic::Sub),
        6 => c(Mnemonic::Xor),
        CMP => c(Mnemonic::Cmp),
        _ => c(Mnemonic::Test),
    }
}

/// The executor's ALU arm for `KIND` and `SIZE`: one read of the memory
/// operand at `gpa`, [`alu::compute`], the result written back to memory
/// (`KIND` [`TO_MEM`], [`IMM8`], [`IMM`]) or to register `reg`
/// ([`TO_REG`]) unless `op` is CMP or TEST, then RFLAGS (RF cleared) and
/// RIP. A failed access changes no register.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn execute<const KIND: u8, const SIZE: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    op: u8,
    reg: u8,
    rex: bool,
    imm: u64,
    next_rip: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let n = usize::from(SIZE);
    let rflags = state.rflags();
    let flags_in = rflags & !RF;
    let mem = read_sized(ram, mmio, gpa, n)?;
    let (a, b) = match KIND {
        IMM8 | IMM => (mem, imm),
        TO_MEM => (mem, read_reg(state, reg, SIZE, rex)),
        _ => (read_reg(state, reg, SIZE, rex), mem),
    };
    let (result, new_flags) = compute::<SIZE>(op, a, b, flags_in);
    if op < CMP {
        if KIND == TO_REG {
            let (g, v) = merged(state, reg, SIZE, rex, result);
            state.set_gpr(g, v);
        } else {
            super::families::write_sized(ram, mmio, gpa, n, result)?;
        }
    }
    retire(state, new_flags, next_rip);
    Ok(Outcome::Done)
}

#[cfg(test)]
#[path = "lane_alu_tests.rs"]
mod tests;
