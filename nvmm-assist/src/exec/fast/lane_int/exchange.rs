//! The integer lane's exchanges: XCHG r/m, reg (86/87), XADD (0F C0/C1)
//! and CMPXCHG (0F B0/B1) with a memory operand, LOCK and (64-bit mode)
//! REX their only prefixes.
//!
//! Why: through the lane's generic decoder and executor
//! ([`run`](super::run)) these paid its opcode table, the packed
//! `Form`/`Decoded` and the executor's dispatch on the operation once more,
//! about a third of the assist. Here, as for INC/DEC/NOT/NEG (`unary.rs`),
//! the operand size is a constant in each copy ([`Run::exchange`]) and the
//! operation is picked by one jump, inline.
//!
//! Exactness: the lane's decode for these bytes (the lanes' shared prologue
//! [`Run::memory`]: the same ModRM and segment helpers, `checked_linear`
//! with a write access), and the execution of the full fast path with the
//! semantics functions of [`xchg`]: XCHG is locked with or without the
//! prefix; XADD and CMPXCHG unlocked are one read and one write (always
//! made, CMPXCHG writing the old value back when the comparison fails),
//! locked the compare-and-write rules of
//! [`rmw_page`](crate::exec::rmw_page) (a lost race leaves everything
//! unchanged, [`Outcome::Resume`]). The register is written only once every
//! access succeeded, then RFLAGS (RF cleared) and RIP. The lane's
//! differential test (`lane_int_tests.rs`) covers these forms in every
//! mode.

use super::super::operand::{Run, Taken, operand_size};
use super::super::{read_reg, retire, retire_flagless, set_reg};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::exec::xchg;
use crate::flags::{self, RF};
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

impl<S: CpuState + ?Sized, R: GuestRam + ?Sized, M: MmioBus + ?Sized> Run<'_, S, R, M> {
    /// Operation `op` ([`XCHG`], [`XADD`] or [`CMPXCHG`]), whose opcode
    /// (`wide`: its low bit, the operand size not a byte) is followed by
    /// its ModRM byte at `bytes[i]`, `rex` the REX prefix (0 for none),
    /// `lock` whether LOCK came first, in a mode whose default address
    /// size is `ADDR`: the copy for the operand size. `None` (nothing
    /// done) as the lane's [`run`](super::run) declines.
    #[inline(always)]
    pub(super) fn exchange<const ADDR: u8>(
        self,
        i: usize,
        op: u8,
        wide: bool,
        rex: u8,
        lock: bool,
    ) -> Taken {
        operand_size!(byte if !wide, ADDR, rex, |SIZE| {
            self.exchange_sized::<ADDR, SIZE>(i, op, rex, lock)
        })
    }

    /// [`Run::exchange`] for operand size `SIZE`: the decode, the checks
    /// and the execution.
    #[inline(always)]
    fn exchange_sized<const ADDR: u8, const SIZE: u8>(
        self,
        mut i: usize,
        op: u8,
        rex: u8,
        lock: bool,
    ) -> Taken {
        let modrm = self.modrm(&mut i)?;
        let reg = ((modrm >> 3) & 7) | ((rex & 4) << 1);
        // LOCK, REX, 0F op, ModRM, SIB and disp32 are 10 bytes at most.
        let m = self.memory::<ADDR>(i, modrm, rex, 0, SIZE, AccessType::Write)?;
        Some(self.exchange_execute::<SIZE>(op, reg, rex != 0, lock, m.next_rip))
    }

    /// Operation `op` on the `SIZE` bytes at the exit GPA and the register
    /// `reg` (its encoding, 0-15; `rex`: a REX prefix, SPL..DIL for 4-7 of
    /// a byte), locked if `lock` (XCHG always); then the register, RFLAGS
    /// (RF cleared) and RIP.
    #[inline(always)]
    fn exchange_execute<const SIZE: u8>(
        self,
        op: u8,
        reg: u8,
        rex: bool,
        lock: bool,
        next_rip: u64,
    ) -> Result<Outcome, Error> {
        let (state, ram, mmio, gpa) = self.parts();
        let rflags = state.rflags();
        let src = read_reg(state, reg, SIZE, rex);
        // (the value loaded into the register if any, with its encoding; the
        // new RFLAGS, None for XCHG, which sets no flag)
        let (load, new_flags) = match op {
            XCHG => {
                let old = read_modify_write!(ram, mmio, gpa, SIZE, true, move |old| (src, old));
                (Some((reg, rex, old)), None)
            }
            XADD => {
                let (old, fl) = read_modify_write!(ram, mmio, gpa, SIZE, lock, move |old| {
                    let (sum, fl) = xchg::xadd(old, src, SIZE, rflags);
                    (sum, (old, fl))
                });
                (Some((reg, rex, old)), Some(fl))
            }
            _ => {
                let acc = state.gpr(Gpr::Rax) & flags::size_mask(SIZE);
                let (fl, loaded) = read_modify_write!(ram, mmio, gpa, SIZE, lock, move |old| {
                    let (new, fl, loaded) = xchg::cmpxchg(acc, old, src, SIZE, rflags);
                    (new, (fl, loaded))
                });
                // A failed comparison loads the accumulator (AL, never AH).
                (loaded.map(|old| (0, false, old)), Some(fl))
            }
        };
        if let Some((reg, rex, value)) = load {
            set_reg(state, reg, SIZE, rex, value);
        }
        // XCHG leaves the flags: as the other moves, RFLAGS is written only
        // to clear RF (the choice is by operation, never by data).
        match new_flags {
            Some(new_flags) => retire(state, new_flags & !RF, next_rip),
            None => retire_flagless(state, rflags, next_rip),
        }
        Ok(Outcome::Done)
    }
}
