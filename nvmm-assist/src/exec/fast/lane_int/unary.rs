//! The integer lane's plain read-modify-writes: INC/DEC (FE/FF /0 /1) and
//! NOT/NEG (F6/F7 /2 /3) of a memory operand, with no prefix but (64-bit
//! mode) REX.
//!
//! Why: through the lane's generic decoder and executor these cost about
//! 100 instructions more than an ALU form of the ALU lane (`lane_alu.rs`):
//! the operation and its size were run-time values, so the flags were a
//! call to a closure generic over both, and the decoded form was packed
//! into a `Decoded` and dispatched on again. Here, as in the ALU lane, the
//! operand size is a constant in each copy ([`Run::unary`]), the operation
//! is picked by one jump, and the flags are computed inline.
//!
//! Exactness: the same decode as the lane's [`run`](super::run) for these
//! bytes (the lanes' shared prologue [`Run::memory`]: the same ModRM and
//! segment helpers, `checked_linear` with a write access, the same next
//! RIP), and the same execution as its
//! unlocked read-modify-write ([`rmw_page`](crate::exec::rmw_page) without
//! LOCK: one read, then one write of the new value, always made), with the
//! semantics functions of [`flags`]. RF is cleared, RIP written last; a
//! failed access changes no register. LOCK-prefixed forms are not taken
//! here (the lane's generic path keeps them). The lane's differential test
//! (`lane_int_tests.rs`) covers these forms in every mode.

use super::super::families::write_sized;
use super::super::operand::{Run, Taken, operand_size};
use super::super::{read_sized, retire};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::flags::{self, RF};
use crate::state::CpuState;

/// Whether `opcode` is one of this path's (the ModRM `reg` field is
/// checked once the operand size is known).
#[inline(always)]
pub(super) const fn is_opcode(opcode: u8) -> bool {
    matches!(opcode, 0xFE | 0xFF | 0xF6 | 0xF7)
}

impl<S: CpuState + ?Sized, R: GuestRam + ?Sized, M: MmioBus + ?Sized> Run<'_, S, R, M> {
    /// INC, DEC, NOT or NEG (no LOCK), whose opcode `opcode` (see
    /// [`is_opcode`]) is followed by its ModRM byte at `bytes[i]`, `rex`
    /// the REX prefix (0 for none), in a mode whose default address size
    /// is `ADDR`: the copy for the operand size. `None` (nothing done) as
    /// the lane's [`run`](super::run) declines.
    #[inline(always)]
    pub(super) fn unary<const ADDR: u8>(self, i: usize, opcode: u8, rex: u8) -> Taken {
        operand_size!(byte if opcode & 1 == 0, ADDR, rex, |SIZE| {
            self.unary_sized::<ADDR, SIZE>(i, opcode, rex)
        })
    }

    /// [`Run::unary`] for operand size `SIZE`: the decode, the checks and
    /// the execution.
    #[inline(always)]
    fn unary_sized<const ADDR: u8, const SIZE: u8>(
        self,
        mut i: usize,
        opcode: u8,
        rex: u8,
    ) -> Taken {
        let modrm = self.modrm(&mut i)?;
        // The operation is ModRM.reg: INC /0 and DEC /1 of FE/FF, NOT /2
        // and NEG /3 of F6/F7; the rest of these groups are not this
        // lane's.
        let op = (modrm >> 3) & 7;
        let group3 = opcode & 0xFE == 0xF6;
        if (group3 && !(2..4).contains(&op)) || (!group3 && op >= 2) {
            return None;
        }
        // REX, opcode, ModRM, SIB and disp32 are 8 bytes at most.
        let m = self.memory::<ADDR>(i, modrm, rex, 0, SIZE, AccessType::Write)?;
        Some(self.unary_execute::<SIZE>(op, m.next_rip))
    }

    /// The read-modify-write of operation `op` (ModRM.reg: 0 INC, 1 DEC, 2
    /// NOT, 3 NEG) on `SIZE` bytes at the exit GPA: one read, the result
    /// written back (always, as the CPU does), then RFLAGS (RF cleared)
    /// and RIP. A failed access changes no register.
    #[inline(always)]
    fn unary_execute<const SIZE: u8>(self, op: u8, next_rip: u64) -> Result<Outcome, Error> {
        let (state, ram, mmio, gpa) = self.parts();
        let n = usize::from(SIZE);
        let rflags = state.rflags();
        let flags_in = rflags & !RF;
        let old = read_sized(ram, mmio, gpa, n)?;
        let (result, new_flags) = match op {
            0 => flags::inc(old, SIZE, flags_in),
            1 => flags::dec(old, SIZE, flags_in),
            // NOT changes no flag.
            2 => (!old & flags::size_mask(SIZE), flags_in),
            _ => flags::neg(old, SIZE, flags_in),
        };
        write_sized(ram, mmio, gpa, n, result)?;
        retire(state, new_flags, next_rip);
        Ok(Outcome::Done)
    }
}
