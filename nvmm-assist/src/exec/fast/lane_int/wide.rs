//! The integer lane's CMPXCHG8B and CMPXCHG16B (0F C7 /1) with a memory
//! operand, LOCK and (64-bit mode) REX their only prefixes.
//!
//! Why: through the lane's generic decoder and executor
//! ([`run`](super::run)) these paid its opcode table, the packed
//! `Form`/`Decoded`, the executor's dispatch on the operation once more
//! and, for CMPXCHG16B, the general fragment-wise read-modify-write on a
//! `PhysRange`: the slowest integer rows against iced-x86's decode. Here,
//! as for CMPXCHG (`exchange.rs`), the width is a constant in each copy
//! ([`Run::wide`]: 8 bytes, or 16 with REX.W in 64-bit mode) and the whole
//! operation is one straight path.
//!
//! Exactness: the lane's decode for these bytes (the lanes' shared
//! prologue [`Run::memory`]: the same ModRM and segment helpers,
//! `checked_linear` with a write access of the width, a misaligned
//! CMPXCHG16B, `#GP`, left to the general path), and the
//! execution of the full fast path with the semantics functions of
//! [`xchg`]: one read-modify-write of the whole operand under
//! [`rmw_page`]'s rules ([`rmw_page_wide`] for 16 bytes, the same rules on
//! a 128-bit value): unlocked one read and one write, always made (the old
//! value written back when the comparison fails, as both vendors do);
//! locked, on RAM, one compare-and-write of the whole operand (atomic),
//! a lost race retried and, if every attempt lost, nothing changed
//! ([`Outcome::Resume`]). rDX:rAX (zero-extended halves) is written only
//! on a failed comparison and only once every access succeeded, then
//! RFLAGS (ZF; RF cleared) and RIP. The lane's differential tests
//! (`lane_int_tests.rs`) cover both widths in every mode.

use super::super::operand::{Run, Taken, operand_size};
use super::super::{retire, set_reg};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::exec::{rmw_page, rmw_page_wide, xchg};
use crate::flags::RF;
use crate::state::{CpuState, Gpr};

/// Whether the byte after 0F is CMPXCHG8B/16B's group (C7; [`Run::wide`]
/// checks ModRM `reg` = 1 and declines the group's other members).
#[inline(always)]
pub(super) const fn is_secondary(op2: u8) -> bool {
    op2 == 0xC7
}

impl<S: CpuState + ?Sized, R: GuestRam + ?Sized, M: MmioBus + ?Sized> Run<'_, S, R, M> {
    /// CMPXCHG8B/16B, whose ModRM byte is at `bytes[i]`, `rex` the REX
    /// prefix (0 for none), `lock` whether LOCK came first, in a mode whose
    /// default address size is `ADDR`: the copy for the width (16 bytes
    /// with REX.W in 64-bit mode, else 8). `None` (nothing done) as the
    /// lane's [`run`](super::run) declines.
    #[inline(always)]
    pub(super) fn wide<const ADDR: u8>(self, i: usize, rex: u8, lock: bool) -> Taken {
        operand_size!(ADDR, rex, 16 or 8, |WIDTH| self.wide_sized::<ADDR, WIDTH>(i, rex, lock))
    }

    /// [`Run::wide`] for width `WIDTH` (8 or 16): the decode, the checks
    /// and the execution.
    #[inline(always)]
    fn wide_sized<const ADDR: u8, const WIDTH: u8>(
        self,
        mut i: usize,
        rex: u8,
        lock: bool,
    ) -> Taken {
        let modrm = self.modrm(&mut i)?;
        // /1 only (the group's others are not the lane's; a register
        // operand, #UD, is the general path's).
        if (modrm >> 3) & 7 != 1 {
            return None;
        }
        // LOCK, REX, 0F C7, ModRM, SIB and disp32 are 10 bytes at most.
        let m = self.memory::<ADDR>(i, modrm, rex, 0, WIDTH, AccessType::Write)?;
        // Leave CMPXCHG16B's #GP (a misaligned operand) to the general
        // path.
        if WIDTH == 16 && m.linear & 15 != 0 {
            return None;
        }
        Some(self.wide_execute::<WIDTH>(lock, m.next_rip))
    }

    /// CMPXCHG8B (`WIDTH` 8: EDX:EAX against the 8 bytes at the exit GPA,
    /// ECX:EBX the replacement) or CMPXCHG16B (16: RDX:RAX, RCX:RBX),
    /// locked if `lock`; then rDX:rAX on a failed comparison, RFLAGS (RF
    /// cleared) and RIP.
    #[inline(always)]
    fn wide_execute<const WIDTH: u8>(self, lock: bool, next_rip: u64) -> Result<Outcome, Error> {
        let (state, ram, mmio, gpa) = self.parts();
        let half = WIDTH / 2;
        let rflags = state.rflags();
        let expected = xchg::pair(state.gpr(Gpr::Rax), state.gpr(Gpr::Rdx), half);
        let replacement = xchg::pair(state.gpr(Gpr::Rbx), state.gpr(Gpr::Rcx), half);
        // (The operation always inline, as in `read_modify_write!`.)
        let result = if WIDTH == 16 {
            rmw_page_wide(
                ram,
                mmio,
                gpa,
                lock,
                #[inline(always)]
                move |old| xchg::cmpxchg_wide(old, expected, replacement),
            )
        } else {
            rmw_page(
                ram,
                mmio,
                gpa,
                WIDTH,
                lock,
                #[inline(always)]
                move |old| {
                    let (new, loaded) = xchg::cmpxchg_wide(u128::from(old), expected, replacement);
                    (new as u64, loaded)
                },
            )
        }?;
        let Some(loaded) = result else {
            return Ok(Outcome::Resume);
        };
        if let Some(old) = loaded {
            let shift = u32::from(half) * 8;
            set_reg(state, 0, half, false, old as u64);
            set_reg(state, 2, half, false, (old >> shift) as u64);
        }
        let new_flags = xchg::cmpxchg_wide_flags(rflags, loaded.is_none()) & !RF;
        retire(state, new_flags, next_rip);
        Ok(Outcome::Done)
    }
}
