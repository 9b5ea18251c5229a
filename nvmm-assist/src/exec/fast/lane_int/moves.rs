//! The integer lane's moves: MOVSXD r, r/m32 (63, 64-bit mode) and MOVNTI
//! m, r (0F C3) with a memory operand, (64-bit mode) REX their only prefix.
//!
//! Why: through the lane's generic decoder and executor these paid its
//! opcode table, the packed `Form`/`Decoded` and the executor's dispatch
//! on the operation once more; here the operand size is a constant in each
//! copy ([`Run::moves`]) and the move is one read or one write.
//!
//! Exactness: the lane's decode for these bytes (the lanes' shared
//! prologue [`Run::memory`]: the same ModRM and segment helpers,
//! `checked_linear`: MOVSXD reads 4 bytes, MOVNTI writes the operand size)
//! and the full fast path's execution: MOVSXD one read,
//! then the register (sign-extended to 64 bits with REX.W, else a 32-bit
//! write that zero-extends); MOVNTI one write of the register (its
//! non-temporal hint means nothing to an emulated access). RF is cleared
//! and RIP written last; a failed access changes no register. LOCK on
//! either (`#UD`) is declined before this path. The lane's differential
//! tests (`lane_int_tests.rs`) cover both in every mode.

use super::super::operand::{Run, Taken, operand_size};
use super::super::{read_reg, retire_flagless, set_reg};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::exec::{read_page, write_page};
use crate::flags;
use crate::state::CpuState;

impl<S: CpuState + ?Sized, R: GuestRam + ?Sized, M: MmioBus + ?Sized> Run<'_, S, R, M> {
    /// MOVSXD (`load`, the opcode 63 in 64-bit mode) or MOVNTI (0F C3),
    /// whose ModRM byte is at `bytes[i]`, `rex` the REX prefix (0 for
    /// none), in a mode whose default address size is `ADDR`: the copy for
    /// the operand size (8 with REX.W, else 4: MOVNTI has no 16-bit form
    /// without a 66 prefix, which the lane does not take). `None` (nothing
    /// done) as the lane's [`run`](super::run) declines.
    #[inline(always)]
    pub(super) fn moves<const ADDR: u8>(self, i: usize, rex: u8, load: bool) -> Taken {
        operand_size!(ADDR, rex, 8 or 4, |SIZE| self.moves_sized::<ADDR, SIZE>(i, rex, load))
    }

    /// [`Run::moves`] for operand size `SIZE`: the decode, the checks and
    /// the move.
    #[inline(always)]
    fn moves_sized<const ADDR: u8, const SIZE: u8>(
        self,
        mut i: usize,
        rex: u8,
        load: bool,
    ) -> Taken {
        let modrm = self.modrm(&mut i)?;
        let reg = ((modrm >> 3) & 7) | ((rex & 4) << 1);
        let (access, kind) = if load {
            (4, AccessType::Read)
        } else {
            (SIZE, AccessType::Write)
        };
        // REX, 0F C3, ModRM, SIB and disp32 are 9 bytes at most.
        let m = self.memory::<ADDR>(i, modrm, rex, 0, access, kind)?;
        Some(self.moves_execute::<SIZE>(reg, rex != 0, load, m.next_rip))
    }

    /// The move at the exit GPA with the register `reg` (its encoding,
    /// 0-15): MOVSXD (`load`) or MOVNTI; then RFLAGS (RF cleared) and RIP.
    #[inline(always)]
    fn moves_execute<const SIZE: u8>(
        self,
        reg: u8,
        rex: bool,
        load: bool,
        next_rip: u64,
    ) -> Result<Outcome, Error> {
        let (state, ram, mmio, gpa) = self.parts();
        let rflags = state.rflags();
        if load {
            let value = flags::sign_extend(read_page(ram, mmio, gpa, 4)?, 4);
            set_reg(state, reg, SIZE, rex, value);
        } else {
            write_page(ram, mmio, gpa, SIZE, read_reg(state, reg, SIZE, rex))?;
        }
        retire_flagless(state, rflags, next_rip);
        Ok(Outcome::Done)
    }
}
