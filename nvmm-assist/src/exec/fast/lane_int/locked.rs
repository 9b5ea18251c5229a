//! The integer lane's LOCK-prefixed read-modify-writes of a memory operand
//! other than the exchanges: ADD, OR, ADC, SBB, AND, SUB, XOR r/m, reg
//! (00/01 ... 30/31) and r/m, imm (80/81/83 but /7 CMP), INC/DEC (FE/FF /0
//! /1) and NOT/NEG (F6/F7 /2 /3), after LOCK and (64-bit mode) REX.
//!
//! Why: through the lane's generic decoder and executor these paid its
//! opcode table, the packed `Form`/`Decoded` and the executor's dispatch on
//! the operation and then on the ALU mnemonic once more. Here, as for the
//! exchanges (`exchange.rs`), the operand size is a constant in each copy
//! ([`Run::locked`]) and the operation is picked by one jump, its
//! read-modify-write inline.
//!
//! Exactness: the lane's decode for these bytes (the lanes' shared prologue
//! [`Run::memory`]: the same ModRM and segment helpers, `checked_linear`
//! with a write access, the immediate sign-extended as the generic path
//! did, 16-bit ones zero-extended), and the full fast path's execution with
//! the semantics function [`alu::compute`]: one locked read-modify-write
//! under [`rmw_page`](crate::exec::rmw_page)'s rules (on RAM one
//! compare-and-write, a lost race retried and, if every attempt lost,
//! nothing changed, [`Outcome::Resume`]; on a device a read then a write),
//! then RFLAGS (RF cleared) and RIP. LOCK on a register operand (`#UD`) and
//! on a form that does not take it (CMP, TEST) is declined, left to the
//! general path. The lane's differential tests (`lane_int_tests.rs`) cover
//! these forms in every mode.

use super::super::operand::{Run, Taken, operand_size};
use super::super::{alu, read_reg, retire};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::flags::RF;
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

impl<S: CpuState + ?Sized, R: GuestRam + ?Sized, M: MmioBus + ?Sized> Run<'_, S, R, M> {
    /// The LOCK-prefixed `opcode` (see [`is_opcode`]), its ModRM byte at
    /// `bytes[i]`, `rex` the REX prefix (0 for none), in a mode whose
    /// default address size is `ADDR`: the copy for the operand size.
    /// `None` (nothing done) as the lane's [`run`](super::run) declines.
    #[inline(always)]
    pub(super) fn locked<const ADDR: u8>(self, i: usize, opcode: u8, rex: u8) -> Taken {
        // (80 and 83 are the byte and the sign-extended imm8 forms: only
        // 80 has an even opcode among the immediate ones.)
        operand_size!(byte if opcode & 1 == 0, ADDR, rex, |SIZE| {
            self.locked_sized::<ADDR, SIZE>(i, opcode, rex)
        })
    }

    /// [`Run::locked`] for operand size `SIZE`: the decode, the checks and
    /// the execution.
    #[inline(always)]
    fn locked_sized<const ADDR: u8, const SIZE: u8>(
        self,
        mut i: usize,
        opcode: u8,
        rex: u8,
    ) -> Taken {
        let modrm = self.modrm(&mut i)?;
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
        // LOCK, REX, opcode, ModRM, SIB, disp32 and imm32 are 12 bytes at
        // most.
        let m = self.memory::<ADDR>(i, modrm, rex, imm_size, SIZE, AccessType::Write)?;
        // The second operand: the register of ALU r/m, reg, the immediate
        // of the 80-83 group (none for INC/DEC/NOT/NEG).
        let b = if reg_form {
            let reg = reg_field | ((rex & 4) << 1);
            read_reg(&*self.state, reg, SIZE, rex != 0)
        } else {
            m.imm
        };
        Some(self.locked_execute::<SIZE>(op, b, m.next_rip))
    }

    /// Operation `op` (an ALU index 0-6, or [`UNARY`] + 0-3) of the `SIZE`
    /// bytes at the exit GPA and `b`, locked; then RFLAGS (RF cleared) and
    /// RIP.
    #[inline(always)]
    fn locked_execute<const SIZE: u8>(
        self,
        op: u8,
        b: u64,
        next_rip: u64,
    ) -> Result<Outcome, Error> {
        let (state, ram, mmio, gpa) = self.parts();
        let rflags = state.rflags();
        // The locked read-modify-write of ALU operation `$m` (a constant in
        // each arm, so that its flags are inline), the new RFLAGS its result.
        macro_rules! locked {
            ($m:expr) => {
                read_modify_write!(ram, mmio, gpa, SIZE, true, move |old| {
                    alu::compute($m, old, b, SIZE, rflags).unwrap_or((old, rflags))
                })
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
        retire(state, new_flags & !RF, next_rip);
        Ok(Outcome::Done)
    }
}
