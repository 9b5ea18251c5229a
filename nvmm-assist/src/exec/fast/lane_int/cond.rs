//! The integer lane's conditional forms: SETcc of a memory byte (0F 90-9F)
//! and CMOVcc from memory (0F 40-4F), with no prefix but (64-bit mode)
//! REX.
//!
//! Why: through the lane's generic decoder and executor
//! ([`run`](super::run)) these paid its opcode table, the packed
//! `Form`/`Decoded` and the executor's dispatch on the operation once more,
//! nearly half of the assist. Here, as for INC/DEC/NOT/NEG (`unary.rs`),
//! the operand size is a constant in each copy ([`Run::conditional`]:
//! SETcc's is 1) and the condition is evaluated inline.
//!
//! Exactness: the lane's decode for these bytes (the lanes' shared
//! prologue [`Run::memory`]: the same ModRM and segment helpers,
//! `checked_linear` with a write access for SETcc and a read one for
//! CMOVcc; SETcc ignores ModRM.reg), and the execution of
//! the full fast path with the semantics functions of [`mov`]: SETcc one
//! write of 0 or 1; CMOVcc one read whether or not the condition holds,
//! the register written either way (a 32-bit one zero-extended). RF is
//! cleared, RIP written last; a failed access changes no register. LOCK is
//! `#UD` on both, the general path's. The lane's differential test
//! (`lane_int_tests.rs`) covers these forms in every mode.

use super::super::families::write_sized;
use super::super::operand::{Run, Taken, operand_size};
use super::super::{read_reg, read_sized, retire_flagless, set_reg};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::exec::mov;
use crate::state::CpuState;

/// Whether `op2` (the byte after 0F) is SETcc or CMOVcc.
#[inline(always)]
pub(super) const fn is_secondary(op2: u8) -> bool {
    matches!(op2 & 0xF0, 0x40 | 0x90)
}

impl<S: CpuState + ?Sized, R: GuestRam + ?Sized, M: MmioBus + ?Sized> Run<'_, S, R, M> {
    /// SETcc or CMOVcc (`op2`, the byte after 0F: see [`is_secondary`]),
    /// its ModRM byte at `bytes[i]`, `rex` the REX prefix (0 for none), in
    /// a mode whose default address size is `ADDR`: the copy for the
    /// operand size. `None` (nothing done) as the lane's
    /// [`run`](super::run) declines.
    #[inline(always)]
    pub(super) fn conditional<const ADDR: u8>(self, i: usize, op2: u8, rex: u8) -> Taken {
        operand_size!(byte if op2 & 0xF0 == 0x90, ADDR, rex, |SIZE| {
            self.conditional_sized::<ADDR, SIZE>(i, op2, rex)
        })
    }

    /// [`Run::conditional`] for operand size `SIZE` (1: SETcc, else
    /// CMOVcc): the decode, the checks and the execution.
    #[inline(always)]
    fn conditional_sized<const ADDR: u8, const SIZE: u8>(
        self,
        mut i: usize,
        op2: u8,
        rex: u8,
    ) -> Taken {
        let modrm = self.modrm(&mut i)?;
        let reg = ((modrm >> 3) & 7) | ((rex & 4) << 1);
        let access = if SIZE == 1 {
            AccessType::Write
        } else {
            AccessType::Read
        };
        // REX, 0F op, ModRM, SIB and disp32 are 9 bytes at most.
        let m = self.memory::<ADDR>(i, modrm, rex, 0, SIZE, access)?;
        Some(self.conditional_execute::<SIZE>(op2 & 15, reg, rex != 0, m.next_rip))
    }

    /// SETcc (`SIZE` 1) or CMOVcc of condition `cc` at the exit GPA, `reg`
    /// CMOVcc's destination (its encoding; `rex`: a REX prefix); then RIP
    /// (RFLAGS changes only if RF was set).
    #[inline(always)]
    fn conditional_execute<const SIZE: u8>(
        self,
        cc: u8,
        reg: u8,
        rex: bool,
        next_rip: u64,
    ) -> Result<Outcome, Error> {
        let (state, ram, mmio, gpa) = self.parts();
        let rflags = state.rflags();
        if SIZE == 1 {
            write_sized(ram, mmio, gpa, 1, mov::setcc(cc, rflags))?;
        } else {
            // The memory is read whether or not the condition holds.
            let loaded = read_sized(ram, mmio, gpa, usize::from(SIZE))?;
            let current = read_reg(state, reg, SIZE, rex);
            set_reg(
                state,
                reg,
                SIZE,
                rex,
                mov::cmov(cc, rflags, loaded, current),
            );
        }
        retire_flagless(state, rflags, next_rip);
        Ok(Outcome::Done)
    }
}
