//! The integer lane's decoder and executor ([`run`]): the integer forms of
//! [`int`](super::int) (INC/DEC, NOT/NEG, XCHG, XADD, CMPXCHG,
//! CMPXCHG8B/16B, BT*, SETcc, CMOVcc, MOVSXD, MOVNTI) and the LOCK
//! prefixed read-modify-writes (those and the ALU ones), with no prefix
//! but LOCK and (64-bit mode) REX, in that order.
//!
//! Why: the full decoder ([`decode_with`](super::decode_with) with `INT`)
//! parses any prefixes, walks the MOV/ALU opcodes first, packs a `Fast` and
//! the executor dispatches on its form again, then runs the operation in a
//! read-modify-write closure that dispatches on the mnemonic once more (and
//! is too large to inline, as the locked retries are its second caller).
//! Here [`run`] reads LOCK and REX, then hands each family to a path of its
//! own: the plain INC/DEC/NOT/NEG (`lane_int/unary.rs`), XCHG/XADD/CMPXCHG
//! (`exchange.rs`), CMPXCHG8B/16B (`wide.rs`), BT* (`bits.rs`),
//! SETcc/CMOVcc (`cond.rs`), the other LOCK read-modify-writes
//! (`locked.rs`) and MOVSXD/MOVNTI (`moves.rs`), each a method of the
//! lane's arguments bundled as one [`Run`] (but BT*, whose arguments stay
//! apart past the prologue, as the ALU lane's: there the bundle cost up to
//! 6 instructions per assist in 16-bit modes). Each decodes its memory
//! operand with the prologue the lanes share ([`Run::modrm`],
//! [`Run::memory`]), has its operand size a constant in each copy
//! ([`operand_size!`](super::operand::operand_size)), picks its operation
//! with one jump and has that operation's read-modify-write inline
//! (`read_modify_write!`), with nothing packed for a second dispatch.
//!
//! Exactness: these are the full fast path's forms with its decode (the
//! same ModRM and segment helpers, `checked_linear`), its checks (LOCK
//! only on the lockable forms, CMPXCHG16B aligned, the BT* register
//! offset's displacement) and its executor's semantics functions and
//! read-modify-write rules ([`rmw_page`](crate::exec::rmw_page),
//! [`rmw`](crate::exec::rmw)); a case the full fast path leaves to the
//! general one is declined (`None`, nothing done), and the caller then runs
//! the full fast path. Differential tests (`lane_int_tests.rs`) hold the
//! lane to the general path in every mode.

use super::byte;
use super::operand::Run;
use crate::Outcome;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::mode::CpuMode;
use crate::state::CpuState;

/// The read-modify-write `$op` (a closure: old value -> (new value,
/// result)) of the `$size` bytes at `$gpa`, evaluating to its result:
/// locked (`$lock`), [`rmw_page`](crate::exec::rmw_page)'s compare-and-write
/// with the operation always inline, returning [`Outcome::Resume`] from the
/// enclosing function if every attempt lost its race (nothing changed);
/// unlocked, one read and one write of the new value, always made.
macro_rules! read_modify_write {
    ($ram:ident, $mmio:ident, $gpa:ident, $size:expr, $lock:expr, $op:expr) => {
        if $lock {
            match $crate::exec::rmw_page(
                $ram,
                $mmio,
                $gpa,
                $size,
                true,
                #[inline(always)]
                $op,
            )? {
                Some(v) => v,
                None => return Ok($crate::Outcome::Resume),
            }
        } else {
            let n = usize::from($size);
            let (new, v) = ($op)($crate::exec::fast::read_sized($ram, $mmio, $gpa, n)?);
            $crate::exec::fast::families::write_sized($ram, $mmio, $gpa, n, new)?;
            v
        }
    };
}

mod bits;
mod cond;
mod exchange;
mod locked;
mod moves;
mod unary;
mod wide;

/// The integer lane: the forms of this module's documentation in a mode
/// whose default address size is `ADDR`, decoded and executed here.
/// `None` (nothing done) for other bytes and for any case the full fast
/// path would leave to the general one (a register operand, LOCK on a form
/// that does not take it, a fault, a page crossing, a mismatching exit
/// GPA, a possible `#AC`, a misaligned CMPXCHG16B, bytes that end early).
#[inline(always)]
pub(crate) fn run<const ADDR: u8, S, R, M>(
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
    let run = Run::new(state, mode, ram, mmio, exit_gpa, bytes);
    let long = ADDR == 8;
    let mut b = byte(bytes, 0)?;
    let mut i = 1;
    let lock = b == 0xF0;
    if lock {
        b = byte(bytes, 1)?;
        i = 2;
    }
    // REX (64-bit mode only, directly before the opcode; elsewhere 40-4F
    // are INC/DEC of a register).
    let rex = if long && b & 0xF0 == 0x40 {
        let r = b;
        b = byte(bytes, i)?;
        i += 1;
        r
    } else {
        0
    };
    // The plain INC/DEC/NOT/NEG: their own path, the operand size a
    // constant in each copy (see `unary.rs`).
    if !lock && unary::is_opcode(b) {
        return run.unary::<ADDR>(i, b, rex);
    }
    // BT*, XCHG/XADD/CMPXCHG, CMPXCHG8B/16B and SETcc/CMOVcc: theirs too
    // (`bits.rs`, `exchange.rs`, `wide.rs`, `cond.rs`), for the same reason.
    if b == 0x0F {
        let op2 = byte(bytes, i)?;
        let j = i + 1;
        if bits::is_secondary(op2) {
            let Run {
                state,
                mode,
                ram,
                mmio,
                exit_gpa,
                bytes,
            } = run;
            return bits::sized::<ADDR, S, R, M>(
                state, mode, ram, mmio, exit_gpa, bytes, j, op2, rex, lock,
            );
        }
        if let Some(op) = exchange::secondary(op2) {
            return run.exchange::<ADDR>(j, op, op2 & 1 != 0, rex, lock);
        }
        if cond::is_secondary(op2) {
            // (LOCK: #UD, the general path's.)
            if lock {
                return None;
            }
            return run.conditional::<ADDR>(j, op2, rex);
        }
        if wide::is_secondary(op2) {
            return run.wide::<ADDR>(j, rex, lock);
        }
    } else if exchange::is_xchg(b) {
        return run.exchange::<ADDR>(i, exchange::XCHG, b & 1 != 0, rex, lock);
    }
    // The LOCK-prefixed ALU and INC/DEC/NOT/NEG forms: theirs
    // (`locked.rs`). LOCK on anything else (MOVSXD, MOVNTI, the forms
    // that are not the lane's) is left to the general path (#UD).
    if lock {
        return if locked::is_opcode(b) {
            run.locked::<ADDR>(i, b, rex)
        } else {
            None
        };
    }
    // MOVSXD (64-bit mode; elsewhere 63 is ARPL) and MOVNTI (0F C3):
    // theirs (`moves.rs`).
    if long && b == 0x63 {
        return run.moves::<ADDR>(i, rex, true);
    }
    if b == 0x0F && byte(bytes, i)? == 0xC3 {
        return run.moves::<ADDR>(i + 1, rex, false);
    }
    None
}

/// The lane of the byte after 0F for the families of this lane with an
/// entry of their own ([`run_exchange`], [`run_bits`], [`run_cond`]; INC/DEC
/// and NOT/NEG, [`run_unary`], have no 0F opcode), for
/// [`lane`](super::lane)'s table; `None` for the rest of the lane's (all
/// of them [`run`]'s).
pub(super) const fn secondary_lane(op2: u8) -> Option<super::Lane> {
    if exchange::secondary(op2).is_some() {
        Some(super::Lane::Exchange)
    } else if bits::is_secondary(op2) {
        Some(super::Lane::Bits)
    } else if cond::is_secondary(op2) {
        Some(super::Lane::Cond)
    } else {
        None
    }
}

/// The exchanges' own entry ([`Lane::Exchange`](super::Lane::Exchange)):
/// XCHG (86/87), XADD and CMPXCHG (0F C0/C1/B0/B1) with no prefix but
/// (64-bit mode) REX, which [`lane`](super::lane) picks for them by their
/// first bytes. [`run`] takes the same bytes to the same code
/// (`exchange.rs`) after its chain of tests of the other families (LOCK,
/// INC/DEC/NOT/NEG, 0F, BT*), which cost these forms some 15
/// instructions. `None` (nothing done) for anything else, as [`run`].
#[inline(always)]
pub(crate) fn run_exchange<const ADDR: u8, S, R, M>(
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
    let (rex, b, i) = super::rex_and_opcode::<ADDR>(bytes)?;
    let run = Run::new(state, mode, ram, mmio, exit_gpa, bytes);
    if exchange::is_xchg(b) {
        return run.exchange::<ADDR>(i, exchange::XCHG, b & 1 != 0, rex, false);
    }
    let op2 = byte(bytes, i)?;
    match exchange::secondary(op2) {
        Some(op) if b == 0x0F => run.exchange::<ADDR>(i + 1, op, op2 & 1 != 0, rex, false),
        _ => None,
    }
}

/// INC/DEC's and NOT/NEG's own entry ([`Lane::Unary`](super::Lane::Unary)):
/// FE/FF /0 /1 and F6/F7 /2 /3 with no prefix but (64-bit mode) REX, as
/// [`run_exchange`] for the exchanges: the code of `unary.rs` without
/// [`run`]'s tests of LOCK and REX apart (REX is [`rex_and_opcode`]'s
/// one test here). `None` (nothing done) for anything else, as [`run`]
/// (the reg field is `unary.rs`'s to check).
///
/// [`rex_and_opcode`]: super::rex_and_opcode
#[inline(always)]
pub(crate) fn run_unary<const ADDR: u8, S, R, M>(
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
    let (rex, b, i) = super::rex_and_opcode::<ADDR>(bytes)?;
    if !unary::is_opcode(b) {
        return None;
    }
    Run::new(state, mode, ram, mmio, exit_gpa, bytes).unary::<ADDR>(i, b, rex)
}

/// BT*'s own entry ([`Lane::Bits`](super::Lane::Bits)): 0F A3/AB/B3/BB/BA
/// with no prefix but (64-bit mode) REX, as [`run_exchange`] for the
/// exchanges: the code of `bits.rs` without [`run`]'s chain of tests.
#[inline(always)]
pub(crate) fn run_bits<const ADDR: u8, S, R, M>(
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
    let (rex, b, i) = super::rex_and_opcode::<ADDR>(bytes)?;
    let op2 = byte(bytes, i)?;
    if b != 0x0F || !bits::is_secondary(op2) {
        return None;
    }
    bits::sized::<ADDR, S, R, M>(
        state,
        mode,
        ram,
        mmio,
        exit_gpa,
        bytes,
        i + 1,
        op2,
        rex,
        false,
    )
}

/// SETcc's and CMOVcc's own entry ([`Lane::Cond`](super::Lane::Cond)): 0F
/// 4x and 9x with no prefix but (64-bit mode) REX, as [`run_exchange`] for
/// the exchanges: the code of `cond.rs` without [`run`]'s chain of tests.
#[inline(always)]
pub(crate) fn run_cond<const ADDR: u8, S, R, M>(
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
    let (rex, b, i) = super::rex_and_opcode::<ADDR>(bytes)?;
    let op2 = byte(bytes, i)?;
    if b != 0x0F || !cond::is_secondary(op2) {
        return None;
    }
    Run::new(state, mode, ram, mmio, exit_gpa, bytes).conditional::<ADDR>(i + 1, op2, rex)
}

#[cfg(test)]
#[path = "lane_int_tests.rs"]
mod tests;
