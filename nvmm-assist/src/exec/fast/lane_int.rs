//! The integer lane's decoder and executor ([`run`]): the integer forms of
//! [`int`](super::int) (INC/DEC, NOT/NEG, XCHG, XADD, CMPXCHG,
//! CMPXCHG8B/16B, BT*, SETcc, CMOVcc, MOVSXD, MOVNTI) and the LOCK
//! prefixed read-modify-writes (those and the ALU ones), with no prefix
//! but LOCK and (64-bit mode) REX, in that order.
//!
//! Why: the full decoder ([`decode_with`](super::decode_with) with `INT`)
//! parses any prefixes, walks the MOV/ALU opcodes first, packs a `Fast`
//! and the executor dispatches on its form again, then runs the operation
//! in a read-modify-write closure that dispatches on the mnemonic once
//! more (and is too large to inline, as the locked retries are its second
//! caller). Here the opcode picks the operation once, the memory operand
//! is decoded by one small piece of code shared by every form, and each
//! operation's read-modify-write has its operation constant, so that its
//! closure is a few instructions and inline.
//!
//! BT*, XCHG/XADD/CMPXCHG, SETcc/CMOVcc and the plain INC/DEC/NOT/NEG go
//! further: [`run`] hands them, after LOCK and REX, to a path of their own
//! (`lane_int/bits.rs`, `exchange.rs`, `cond.rs`, `unary.rs`), the operand
//! size a constant in each copy and nothing packed for a second dispatch
//! (some 70 to 85 instructions less). What follows [`run`]'s hand-off is
//! the generic path of the other forms (LOCK INC/DEC/NOT/NEG and ALU,
//! CMPXCHG8B/16B, MOVSXD, MOVNTI).
//!
//! Exactness: these are the full fast path's forms with its decode (the
//! same ModRM and segment helpers, [`checked_linear`]), its checks (LOCK
//! only on the lockable forms, CMPXCHG16B aligned, the BT* register
//! offset's displacement) and its executor's semantics functions and
//! read-modify-write rules ([`rmw_page`], [`rmw`](crate::exec::rmw), [`rmw_range`]); a case
//! the full fast path leaves to the general one is declined (`None`,
//! nothing done), and the caller then runs the full fast path. A
//! differential test (`lane_int_tests.rs`) holds the lane to the full fast
//! path in every mode.

use super::families::write_sized;
use super::operand::{self, Placed};
use super::retire;
use super::{alu_op, read_sized, sized_field};
use super::{byte, checked_linear, merged, read_reg};
use crate::Outcome;
use crate::access::{AccessType, PhysRange};
use crate::bus::{GuestRam, MmioBus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::exec::{alu, read_page, rmw_page, rmw_range, write_page, xchg};
use crate::flags::{self, RF};
use crate::mode::CpuMode;
use crate::state::{CpuState, Gpr};

mod bits;
mod cond;
mod exchange;
mod unary;

/// The operation of a form, picked by its opcode (and ModRM `reg` for the
/// groups).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Inc,
    Dec,
    Not,
    Neg,
    /// CMPXCHG8B (8 bytes accessed) or CMPXCHG16B (16).
    CmpxchgWide,
    Movsxd,
    Movnti,
    /// LOCK ALU r/m, reg (the operation).
    LockedAluReg(Mnemonic),
    /// LOCK ALU r/m, imm (the operation).
    LockedAluImm(Mnemonic),
}

impl Op {
    /// Whether the form takes a LOCK prefix (without one the CPU raises
    /// `#UD`, which the general path reports).
    #[inline(always)]
    fn lockable(self) -> bool {
        !matches!(self, Op::Movsxd | Op::Movnti)
    }

    /// The access the segment and page checks see: MOVSXD reads its
    /// memory operand, the others write it (MOVNTI) or read and write it.
    #[inline(always)]
    fn access(self) -> AccessType {
        if self == Op::Movsxd {
            AccessType::Read
        } else {
            AccessType::Write
        }
    }
}

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
        return unary::sized::<ADDR, S, R, M>(state, mode, ram, mmio, exit_gpa, bytes, i, b, rex);
    }
    // XCHG/XADD/CMPXCHG, BT* and SETcc/CMOVcc: theirs too (`exchange.rs`,
    // `bits.rs`, `cond.rs`), for the same reason.
    let (st, r, m) = (state, ram, mmio);
    if b == 0x0F {
        let op2 = byte(bytes, i)?;
        let j = i + 1;
        if bits::is_secondary(op2) {
            return bits::sized::<ADDR, S, R, M>(
                st, mode, r, m, exit_gpa, bytes, j, op2, rex, lock,
            );
        }
        if let Some(op) = exchange::secondary(op2) {
            let wide = op2 & 1 != 0;
            return exchange::sized::<ADDR, S, R, M>(
                st, mode, r, m, exit_gpa, bytes, j, op, wide, rex, lock,
            );
        }
        if cond::is_secondary(op2) {
            // (LOCK: #UD, the general path's.)
            if lock {
                return None;
            }
            return cond::sized::<ADDR, S, R, M>(st, mode, r, m, exit_gpa, bytes, j, op2, rex);
        }
    } else if exchange::is_xchg(b) {
        let wide = b & 1 != 0;
        return exchange::sized::<ADDR, S, R, M>(
            st,
            mode,
            r,
            m,
            exit_gpa,
            bytes,
            i,
            exchange::XCHG,
            wide,
            rex,
            lock,
        );
    }
    let (state, ram, mmio) = (st, r, m);
    let rex_w = rex & 8 != 0;
    let vsize = if rex_w {
        8
    } else if ADDR == 2 {
        2
    } else {
        4
    };
    // The opcode's byte after 0F, and with it the ModRM byte.
    let op2 = if b == 0x0F {
        let o = byte(bytes, i)?;
        i += 1;
        o
    } else {
        0
    };
    let modrm = byte(bytes, i)?;
    let reg_field = (modrm >> 3) & 7;
    // (operation, operand size, bytes accessed, immediate size)
    let (op, size, access, imm_size) = match b {
        0xFE | 0xFF => {
            let size = if b & 1 == 0 { 1 } else { vsize };
            match reg_field {
                0 => (Op::Inc, size, size, 0),
                1 => (Op::Dec, size, size, 0),
                _ => return None,
            }
        }
        0xF6 | 0xF7 => {
            let size = if b & 1 == 0 { 1 } else { vsize };
            match reg_field {
                2 => (Op::Not, size, size, 0),
                3 => (Op::Neg, size, size, 0),
                _ => return None,
            }
        }
        // MOVSXD (64-bit mode; elsewhere 63 is ARPL): 4 bytes read
        // without a 66 prefix, which this lane does not take.
        0x63 if long => (Op::Movsxd, vsize, 4, 0),
        0x0F => secondary(op2, reg_field, rex_w)?,
        // LOCK ALU r/m, reg: the even forms 00/01, 08/09, ... 30/31 (CMP
        // does not take LOCK).
        0x00..=0x31 if lock && b & 6 == 0 => {
            let size = if b & 1 == 0 { 1 } else { vsize };
            (Op::LockedAluReg(alu_op(b >> 3)), size, size, 0)
        }
        // LOCK ALU r/m, imm (group 1 but /7 CMP).
        0x80 | 0x81 | 0x83 if lock && reg_field != 7 => {
            let (size, imm) = match b {
                0x80 => (1, 1),
                0x83 => (vsize, 1),
                _ => (vsize, if vsize == 2 { 2 } else { 4 }),
            };
            (Op::LockedAluImm(alu_op(reg_field)), size, size, imm)
        }
        _ => return None,
    };
    if lock && !op.lockable() {
        return None;
    }
    // The rest in a copy per operand size, a constant there (so are the
    // size's masks and the flags' shifts, and the read-modify-writes'
    // operations are small enough to be inline). CMPXCHG8B is the 8-byte
    // copy's, CMPXCHG16B the 16-byte one's; outside 64-bit mode the
    // operand size is 1, 2 (16-bit modes) or 4.
    let at = Form {
        op,
        access,
        imm_size,
        modrm,
        i,
        rex,
        lock,
    };
    let (st, r, m) = (state, ram, mmio);
    match size {
        1 => operand::<ADDR, 1, S, R, M>(st, mode, r, m, exit_gpa, bytes, at),
        2 if ADDR == 2 => operand::<ADDR, 2, S, R, M>(st, mode, r, m, exit_gpa, bytes, at),
        4 => operand::<ADDR, 4, S, R, M>(st, mode, r, m, exit_gpa, bytes, at),
        8 => operand::<ADDR, 8, S, R, M>(st, mode, r, m, exit_gpa, bytes, at),
        16 if ADDR == 8 => operand::<ADDR, 16, S, R, M>(st, mode, r, m, exit_gpa, bytes, at),
        _ => None,
    }
}

/// What [`run`] passes on to [`operand()`]: the operation, the bytes
/// accessed, the immediate's size, the ModRM byte and its index, the REX
/// prefix (0 for none) and LOCK.
#[derive(Clone, Copy)]
struct Form {
    op: Op,
    access: u8,
    imm_size: u8,
    modrm: u8,
    i: usize,
    rex: u8,
    lock: bool,
}

/// [`run`] once the form is known, for operand size `SIZE`: the memory
/// operand, its checks, and [`exec`].
#[inline(always)]
fn operand<const ADDR: u8, const SIZE: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    at: Form,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let Form {
        op,
        access,
        imm_size,
        modrm,
        mut i,
        rex,
        lock,
    } = at;
    let reg_field = (modrm >> 3) & 7;
    // The memory operand (a register operand is the general path's).
    let md = modrm >> 6;
    if md == 3 {
        return None;
    }
    let rm = modrm & 7;
    let reg = reg_field | ((rex & 4) << 1);
    i += 1;
    let address = operand::address::<ADDR, S>(state, bytes, &mut i, md, rm, rex)?;
    let imm = sized_field(bytes, &mut i, imm_size)?;
    // LOCK, REX, 0F op, ModRM, SIB, disp32 and imm32 are 12 bytes at most.
    let Placed { offset, next_rip } = address.place::<ADDR, S>(state, i);
    let segment = address.data_segment::<ADDR>();
    let linear =
        checked_linear::<ADDR, S>(state, mode, exit_gpa, segment, offset, access, op.access())?;
    // Leave CMPXCHG16B's #GP (a misaligned operand) to the general path.
    if access == 16 && linear & 15 != 0 {
        return None;
    }
    Some(exec::<ADDR, SIZE, S, R, M>(
        state,
        ram,
        mmio,
        exit_gpa,
        &Decoded {
            op,
            access,
            reg,
            rex: rex != 0,
            lock,
            imm,
            next_rip,
        },
    ))
}

/// The 0F opcodes of the lane's generic path (the others are taken before
/// it), with the ModRM `reg` field for the groups: (operation, operand
/// size, bytes accessed, immediate size).
#[inline(always)]
fn secondary(op2: u8, reg_field: u8, rex_w: bool) -> Option<(Op, u8, u8, u8)> {
    Some(match op2 {
        0xC3 => {
            let size = if rex_w { 8 } else { 4 };
            (Op::Movnti, size, size, 0)
        }
        0xC7 if reg_field == 1 => {
            let width = if rex_w { 16 } else { 8 };
            (Op::CmpxchgWide, width, width, 0)
        }
        _ => return None,
    })
}

/// A decoded form of the lane, its memory operand at the exit GPA.
struct Decoded {
    op: Op,
    /// Bytes accessed in memory.
    access: u8,
    /// The register operand's encoding (0-15).
    reg: u8,
    /// A REX prefix is present (SPL..DIL instead of AH..BH).
    rex: bool,
    lock: bool,
    /// The immediate, sign-extended to 64 bits (16-bit ones zero-extended).
    imm: u64,
    /// The RIP after the instruction.
    next_rip: u64,
}

/// Executes `d` on the access at `gpa` (within one page, its page offset
/// the instruction's), as the full fast path's executor (`int::exec`)
/// does: every access comes first, the registers, RFLAGS (RF cleared) and
/// RIP are written only once they all succeeded, so an error or a
/// [`Outcome::Resume`] changes nothing.
#[inline(always)]
fn exec<const ADDR: u8, const SIZE: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    d: &Decoded,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let size = SIZE;
    // CMPXCHG8B/16B are the only forms of their copies outside 64-bit
    // mode (8 bytes) and in it (16).
    if SIZE == 16 || (ADDR != 8 && SIZE == 8) || d.op == Op::CmpxchgWide {
        return cmpxchg_wide(state, ram, mmio, gpa, d);
    }
    let rflags = state.rflags();
    // A locked read-modify-write that lost every race: nothing changes.
    macro_rules! or_resume {
        ($e:expr) => {
            match $e? {
                Some(v) => v,
                None => return Ok(Outcome::Resume),
            }
        };
    }
    // A read-modify-write of `size` bytes at `gpa`, `$body` mapping the
    // old value `$old` to the new one and a result (`rmw_page`'s rules),
    // locked if the instruction is. Two copies, the lock a constant in
    // each: the unlocked one has no retries, so its operation is inline
    // (with the retries as a second caller it was a call, some 30
    // instructions).
    //
    // Unlocked, `rmw_page`'s rules are one read, the operation, one write:
    // written out here with the ALU lane's accesses. Locked, the operation
    // is a closure marked always-inline: without that the closure (which
    // is not generic over anything of its own) is instantiated once, in
    // another codegen unit than this function maybe, and stays a call
    // (some 50 instructions for XADD with its arguments and results in
    // memory).
    macro_rules! rmw {
        (|$old:ident| $body:expr) => {
            if d.lock {
                or_resume!(rmw_page(
                    ram,
                    mmio,
                    gpa,
                    size,
                    true,
                    #[inline(always)]
                    move |$old: u64| $body
                ))
            } else {
                let $old = read_sized(ram, mmio, gpa, usize::from(SIZE))?;
                let (new, out) = $body;
                write_sized(ram, mmio, gpa, usize::from(SIZE), new)?;
                out
            }
        };
    }
    // A read-modify-write whose flags are the ALU operation `$m`'s on the
    // old value and `$b` (the operation a constant in each copy).
    macro_rules! alu_rmw {
        ($m:expr, $b:expr) => {{
            let b = $b;
            rmw!(|old| alu::compute($m, old, b, size, rflags).unwrap_or((old, rflags)))
        }};
    }
    // Each arm's register write (at most one, CMPXCHG8B/16B's two
    // excepted) and new RFLAGS.
    let (write, new_flags) = match d.op {
        Op::Inc => (None, alu_rmw!(Mnemonic::Inc, 0)),
        Op::Dec => (None, alu_rmw!(Mnemonic::Dec, 0)),
        Op::Not => (None, alu_rmw!(Mnemonic::Not, 0)),
        Op::Neg => (None, alu_rmw!(Mnemonic::Neg, 0)),
        Op::LockedAluReg(m) | Op::LockedAluImm(m) => {
            let b = if let Op::LockedAluImm(_) = d.op {
                d.imm
            } else {
                read_reg(state, d.reg, size, d.rex)
            };
            let fl = match m {
                Mnemonic::Add => alu_rmw!(Mnemonic::Add, b),
                Mnemonic::Or => alu_rmw!(Mnemonic::Or, b),
                Mnemonic::Adc => alu_rmw!(Mnemonic::Adc, b),
                Mnemonic::Sbb => alu_rmw!(Mnemonic::Sbb, b),
                Mnemonic::And => alu_rmw!(Mnemonic::And, b),
                Mnemonic::Sub => alu_rmw!(Mnemonic::Sub, b),
                _ => alu_rmw!(Mnemonic::Xor, b),
            };
            (None, fl)
        }
        // (Taken above.)
        Op::CmpxchgWide => return cmpxchg_wide(state, ram, mmio, gpa, d),
        Op::Movnti => {
            write_page(ram, mmio, gpa, size, read_reg(state, d.reg, size, d.rex))?;
            (None, rflags)
        }
        Op::Movsxd => {
            let raw = read_page(ram, mmio, gpa, d.access)?;
            let value = flags::sign_extend(raw, d.access);
            (Some(merged(state, d.reg, size, d.rex, value)), rflags)
        }
    };
    if let Some((g, v)) = write {
        state.set_gpr(g, v);
    }
    commit(state, rflags, new_flags, d.next_rip);
    Ok(Outcome::Done)
}

/// CMPXCHG8B/16B: 8 or 16 bytes, through the general `rmw` on a one-page
/// range (16 bytes: straight to its 128-bit part), as `int::exec` does.
#[inline(always)]
fn cmpxchg_wide<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    d: &Decoded,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let width = d.access;
    let half = width / 2;
    let rflags = state.rflags();
    let expected = xchg::pair(state.gpr(Gpr::Rax), state.gpr(Gpr::Rdx), half);
    let replacement = xchg::pair(state.gpr(Gpr::Rbx), state.gpr(Gpr::Rcx), half);
    // (Each operation always inline: see `exec`'s `rmw!`. CMPXCHG8B is
    // `rmw`'s one-page case, `rmw_page` on 64-bit values, called directly.)
    let result = if width == 16 {
        let range = PhysRange {
            parts: [(gpa, usize::from(width)), (0, 0)],
            count: 1,
        };
        rmw_range(
            ram,
            mmio,
            &range,
            width,
            d.lock,
            #[inline(always)]
            move |old| xchg::cmpxchg_wide(old, expected, replacement),
        )
    } else {
        rmw_page(
            ram,
            mmio,
            gpa,
            width,
            d.lock,
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
        let (g, v) = merged(state, 0, half, false, old as u64);
        state.set_gpr(g, v);
        let (g, v) = merged(state, 2, half, false, (old >> shift) as u64);
        state.set_gpr(g, v);
    }
    let new_flags = xchg::cmpxchg_wide_flags(rflags, loaded.is_none());
    commit(state, rflags, new_flags, d.next_rip);
    Ok(Outcome::Done)
}

/// A completed instruction: RFLAGS `new_flags` with RF cleared (written
/// only if that changes `rflags`), RIP at `next_rip`.
#[inline(always)]
fn commit<S: CpuState + ?Sized>(state: &mut S, rflags: u64, new_flags: u64, next_rip: u64) {
    let new_flags = new_flags & !RF;
    retire(state, rflags, new_flags, next_rip);
}

#[cfg(test)]
#[path = "lane_int_tests.rs"]
mod tests;
