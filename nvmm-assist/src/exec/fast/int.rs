//! The fast path's integer forms beyond MOV and the two-operand ALU group,
//! each with one memory operand (the one at the exit GPA): INC/DEC
//! (FE/FF /0 /1), NOT/NEG (F6/F7 /2 /3), XCHG r/m,r (86/87), XADD
//! (0F C0/C1), CMPXCHG (0F B0/B1), CMPXCHG8B/16B (0F C7 /1), BT/BTS/BTR/BTC
//! with a register (0F A3/AB/B3/BB) or imm8 (0F BA /4-/7) bit offset,
//! SETcc (0F 90-9F), CMOVcc (0F 40-4F), MOVSXD (63, 64-bit mode), MOVNTI
//! (0F C3), and the LOCK prefix on every lockable form (these and the ALU
//! read-modify-writes).
//!
//! The semantics are the general executors' own functions
//! ([`alu::compute`], [`bits::compute`], [`xchg::cmpxchg`], [`mov::cmov`],
//! ...), and every read-modify-write goes through [`rmw_page`] (or
//! [`rmw`] for CMPXCHG8B/16B), the general
//! path's implementation of the locking rules: a compare-and-write with
//! bounded retries on RAM ([`Outcome::Resume`] when they run out), a read
//! then a write on MMIO.

use super::retire;
use super::{Fast, Kind, merged, read_reg};
use crate::Outcome;
use crate::access::PhysRange;
use crate::bus::{GuestRam, MmioBus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::exec::{alu, bits, mov, read_page, rmw, rmw_page, rmw_range, write_page, xchg};
use crate::flags::{self, RF};
use crate::state::{CpuState, Gpr};

/// The shape of an integer form (the operation itself, where a shape has
/// several, is the [`Fast::op`] mnemonic).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// FE/FF before the ModRM byte: /0 INC, /1 DEC.
    GroupIncDec,
    /// 0F BA before the ModRM byte: /4-/7 BT, BTS, BTR, BTC.
    GroupBt,
    /// 0F C7 before the ModRM byte: /1 CMPXCHG8B/16B.
    GroupCmpxchgWide,
    /// INC, DEC, NOT, NEG r/m.
    Unary,
    /// LOCK ALU r/m, imm (group 1).
    LockedAluImm,
    /// LOCK ALU r/m, reg.
    LockedAluReg,
    Xchg,
    Xadd,
    Cmpxchg,
    /// CMPXCHG8B (8 bytes accessed) or CMPXCHG16B (16).
    CmpxchgWide,
    /// BT* r/m, imm8: the bit offset is in [`Fast::imm`].
    BtImm,
    /// BT* r/m, reg: the register's signed offset also moves the address.
    BtReg,
    /// SETcc r/m8 (its condition in [`Fast::cc`]).
    Setcc,
    /// CMOVcc reg, r/m (its condition in [`Fast::cc`]).
    Cmovcc,
    Movsxd,
    Movnti,
}

/// A decoded opcode: what `decode_form`'s table needs.
pub(super) struct Shape {
    pub kind: Kind,
    pub op: Mnemonic,
    /// Operand size.
    pub size: u8,
    /// Size of the immediate that follows the ModRM operand.
    pub imm_size: u8,
    /// Bytes accessed in memory.
    pub access_size: u8,
    /// The condition of SETcc and CMOVcc (the opcode's low four bits).
    pub cc: u8,
}

fn shape(form: Form, op: Mnemonic, size: u8, imm_size: u8, access_size: u8) -> Option<Shape> {
    Some(Shape {
        kind: Kind::Int(form),
        op,
        size,
        imm_size,
        access_size,
        cc: 0,
    })
}

/// The one-byte opcodes of this module: 63 (MOVSXD, 64-bit mode only;
/// elsewhere ARPL), 86/87 (XCHG), FE/FF (INC/DEC, refined by
/// [`refine`]). `vsize` is the operand size of the prefixes.
#[inline(always)]
pub(super) fn primary(opcode: u8, vsize: u8, long: bool) -> Option<Shape> {
    match opcode {
        0x63 if long => shape(
            Form::Movsxd,
            Mnemonic::Movsxd,
            vsize,
            0,
            if vsize == 2 { 2 } else { 4 },
        ),
        0x86 => shape(Form::Xchg, Mnemonic::Xchg, 1, 0, 1),
        0x87 => shape(Form::Xchg, Mnemonic::Xchg, vsize, 0, vsize),
        0xFE => shape(Form::GroupIncDec, Mnemonic::Inc, 1, 0, 1),
        0xFF => shape(Form::GroupIncDec, Mnemonic::Inc, vsize, 0, vsize),
        _ => None,
    }
}

/// The 0F opcodes of this module. `rex_w`: REX.W is set; `osz16`: a 66
/// prefix is present.
#[inline(always)]
pub(super) fn secondary(opcode: u8, vsize: u8, rex_w: bool, osz16: bool) -> Option<Shape> {
    match opcode {
        0x40..=0x4F => shape(Form::Cmovcc, Mnemonic::Cmovcc, vsize, 0, vsize).map(|s| Shape {
            cc: opcode & 15,
            ..s
        }),
        0x90..=0x9F => shape(Form::Setcc, Mnemonic::Setcc, 1, 0, 1).map(|s| Shape {
            cc: opcode & 15,
            ..s
        }),
        0xA3 => shape(Form::BtReg, Mnemonic::Bt, vsize, 0, vsize),
        0xAB => shape(Form::BtReg, Mnemonic::Bts, vsize, 0, vsize),
        0xB3 => shape(Form::BtReg, Mnemonic::Btr, vsize, 0, vsize),
        0xBB => shape(Form::BtReg, Mnemonic::Btc, vsize, 0, vsize),
        0xBA => shape(Form::GroupBt, Mnemonic::Bt, vsize, 1, vsize),
        0xB0 => shape(Form::Cmpxchg, Mnemonic::Cmpxchg, 1, 0, 1),
        0xB1 => shape(Form::Cmpxchg, Mnemonic::Cmpxchg, vsize, 0, vsize),
        0xC0 => shape(Form::Xadd, Mnemonic::Xadd, 1, 0, 1),
        0xC1 => shape(Form::Xadd, Mnemonic::Xadd, vsize, 0, vsize),
        // MOVNTI with 66 (or F2/F3, which the fast path never takes) is
        // #UD: the general decoder reports it.
        0xC3 if !osz16 => {
            let size = if rex_w { 8 } else { 4 };
            shape(Form::Movnti, Mnemonic::Movnti, size, 0, size)
        }
        0xC7 => {
            let (op, width) = if rex_w {
                (Mnemonic::Cmpxchg16b, 16)
            } else {
                (Mnemonic::Cmpxchg8b, 8)
            };
            shape(Form::GroupCmpxchgWide, op, width, 0, width)
        }
        _ => None,
    }
}

/// Whether [`secondary`] takes the 0F opcode `opcode` (for some
/// prefixes).
#[inline(always)]
pub(super) const fn is_secondary(opcode: u8) -> bool {
    // Bit n % 64 of word n / 64: 40-4F, 90-9F, A3, AB, B0, B1, B3, BA, BB,
    // C0, C1, C3, C7.
    const TAKEN: [u64; 4] = [
        0,
        0xFFFF,
        (0xFFFF << 0x10)
            | (1 << 0x23)
            | (1 << 0x2B)
            | (1 << 0x30)
            | (1 << 0x31)
            | (1 << 0x33)
            | (1 << 0x3A)
            | (1 << 0x3B),
        (1 << 0x00) | (1 << 0x01) | (1 << 0x03) | (1 << 0x07),
    ];
    TAKEN[(opcode >> 6) as usize] >> (opcode & 63) & 1 != 0
}

/// The form and operation once the ModRM `reg` field is known: the
/// groups' members, `None` for the ones the fast path leaves to the
/// general path (FF /2-/7, 0F BA /0-/3, 0F C7 other than /1).
#[inline(always)]
pub(super) fn refine(form: Form, op: Mnemonic, reg_field: u8) -> Option<(Form, Mnemonic)> {
    Some(match form {
        Form::GroupIncDec => match reg_field {
            0 => (Form::Unary, Mnemonic::Inc),
            1 => (Form::Unary, Mnemonic::Dec),
            _ => return None,
        },
        Form::GroupBt => match reg_field {
            4 => (Form::BtImm, Mnemonic::Bt),
            5 => (Form::BtImm, Mnemonic::Bts),
            6 => (Form::BtImm, Mnemonic::Btr),
            7 => (Form::BtImm, Mnemonic::Btc),
            _ => return None,
        },
        Form::GroupCmpxchgWide if reg_field == 1 => (Form::CmpxchgWide, op),
        Form::GroupCmpxchgWide => return None,
        other => (other, op),
    })
}

/// The kind of a LOCK-prefixed form: the ALU read-modify-writes become
/// their locked forms here; `None` (the general decoder's `#UD`) for a
/// form that does not accept LOCK (MOV, CMP, TEST, BT, SETcc, ...).
#[inline(always)]
pub(super) fn locked(kind: Kind, op: Mnemonic) -> Option<Kind> {
    let alu_rmw = !matches!(op, Mnemonic::Cmp | Mnemonic::Test);
    match kind {
        Kind::Alu if alu_rmw => Some(Kind::Int(Form::LockedAluImm)),
        Kind::AluToMem if alu_rmw => Some(Kind::Int(Form::LockedAluReg)),
        Kind::Int(Form::Unary | Form::Xchg | Form::Xadd | Form::Cmpxchg | Form::CmpxchgWide) => {
            Some(kind)
        }
        Kind::Int(Form::BtImm | Form::BtReg) if op != Mnemonic::Bt => Some(kind),
        _ => None,
    }
}

/// Whether the form only reads its memory operand (the segment checks
/// then check a read).
pub(super) fn reads_only(form: Form, op: Mnemonic) -> bool {
    match form {
        Form::Cmovcc | Form::Movsxd => true,
        Form::BtImm | Form::BtReg => op == Mnemonic::Bt,
        _ => false,
    }
}

/// The byte displacement a BT* register bit offset adds to the operand's
/// effective address (0 for every other form).
#[inline(always)]
pub(super) fn displacement<S: CpuState + ?Sized>(state: &S, f: &Fast) -> i64 {
    if matches!(f.kind, Kind::Int(Form::BtReg)) {
        bits::register_offset(read_reg(state, f.reg, f.size, f.rex), f.size).1
    } else {
        0
    }
}

/// Executes an integer form on the access at `gpa` (within one page, its
/// page offset the instruction's). Every access comes first; the
/// registers, RFLAGS (RF cleared) and RIP are written only once they all
/// succeeded, so an error or a [`Outcome::Resume`] changes nothing.
#[inline(always)]
pub(super) fn exec<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    f: &Fast,
    form: Form,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let size = f.size;
    let width = f.access_size;
    let rflags = state.rflags();
    let mut new_flags = rflags;
    // Up to two register writes, applied after every access succeeded.
    let mut writes: [Option<(Gpr, u64)>; 2] = [None, None];
    // A locked read-modify-write that lost every race: nothing changes.
    macro_rules! or_resume {
        ($e:expr) => {
            match $e {
                Some(v) => v,
                None => return Ok(Outcome::Resume),
            }
        };
    }
    match form {
        Form::Unary | Form::LockedAluImm | Form::LockedAluReg => {
            let b = match form {
                Form::LockedAluImm => f.imm,
                Form::LockedAluReg => read_reg(state, f.reg, size, f.rex),
                _ => 0,
            };
            let op = f.op;
            new_flags = or_resume!(rmw_page(ram, mmio, gpa, size, f.lock, move |old| {
                alu::compute(op, old, b, size, rflags).unwrap_or((old, rflags))
            })?);
        }
        Form::Xchg => {
            let value = read_reg(state, f.reg, size, f.rex);
            // Locked with or without the prefix.
            let old = or_resume!(rmw_page(ram, mmio, gpa, size, true, move |old| (
                value, old
            ))?);
            writes[0] = Some(merged(state, f.reg, size, f.rex, old));
        }
        Form::Xadd => {
            let src = read_reg(state, f.reg, size, f.rex);
            let (old, fl) = or_resume!(rmw_page(ram, mmio, gpa, size, f.lock, move |old| {
                let (sum, fl) = xchg::xadd(old, src, size, rflags);
                (sum, (old, fl))
            })?);
            new_flags = fl;
            writes[0] = Some(merged(state, f.reg, size, f.rex, old));
        }
        Form::Cmpxchg => {
            let src = read_reg(state, f.reg, size, f.rex);
            let acc = state.gpr(Gpr::Rax) & flags::size_mask(size);
            let (fl, loaded) = or_resume!(rmw_page(ram, mmio, gpa, size, f.lock, move |old| {
                let (new, fl, loaded) = xchg::cmpxchg(acc, old, src, size, rflags);
                (new, (fl, loaded))
            })?);
            new_flags = fl;
            if let Some(old) = loaded {
                writes[0] = Some(merged(state, 0, size, false, old));
            }
        }
        Form::CmpxchgWide => {
            let half = width / 2;
            let expected = xchg::pair(state.gpr(Gpr::Rax), state.gpr(Gpr::Rdx), half);
            let replacement = xchg::pair(state.gpr(Gpr::Rbx), state.gpr(Gpr::Rcx), half);
            // 8 or 16 bytes: the general `rmw` on a one-page range (16 bytes:
            // straight to its 128-bit part).
            let range = PhysRange {
                parts: [(gpa, usize::from(width)), (0, 0)],
                count: 1,
            };
            let op = move |old| xchg::cmpxchg_wide(old, expected, replacement);
            let loaded = or_resume!(if width == 16 {
                rmw_range(ram, mmio, &range, width, f.lock, op)
            } else {
                rmw(ram, mmio, &range, width, f.lock, op)
            }?);
            new_flags = xchg::cmpxchg_wide_flags(rflags, loaded.is_none());
            if let Some(old) = loaded {
                let shift = u32::from(half) * 8;
                writes[0] = Some(merged(state, 0, half, false, old as u64));
                writes[1] = Some(merged(state, 2, half, false, (old >> shift) as u64));
            }
        }
        Form::BtImm | Form::BtReg => {
            let bit = if form == Form::BtImm {
                (f.imm & (u64::from(size) * 8 - 1)) as u32
            } else {
                bits::register_offset(read_reg(state, f.reg, size, f.rex), size).0
            };
            let op = f.op;
            new_flags = if op == Mnemonic::Bt {
                let old = read_page(ram, mmio, gpa, size)?;
                bits::compute(op, old, bit, rflags).1
            } else {
                or_resume!(rmw_page(ram, mmio, gpa, size, f.lock, move |old| {
                    bits::compute(op, old, bit, rflags)
                })?)
            };
        }
        Form::Setcc => {
            let value = mov::setcc(f.cc, rflags);
            write_page(ram, mmio, gpa, 1, value)?;
        }
        Form::Movnti => {
            let value = read_reg(state, f.reg, size, f.rex);
            write_page(ram, mmio, gpa, size, value)?;
        }
        Form::Cmovcc => {
            // The memory is read whether or not the condition holds.
            let loaded = read_page(ram, mmio, gpa, size)?;
            let current = read_reg(state, f.reg, size, f.rex);
            let value = mov::cmov(f.cc, rflags, loaded, current);
            writes[0] = Some(merged(state, f.reg, size, f.rex, value));
        }
        Form::Movsxd => {
            let raw = read_page(ram, mmio, gpa, width)?;
            let value = flags::sign_extend(raw, width);
            writes[0] = Some(merged(state, f.reg, size, f.rex, value));
        }
        // Resolved by `refine` before execution.
        Form::GroupIncDec | Form::GroupBt | Form::GroupCmpxchgWide => {
            return Err(Error::InconsistentExit);
        }
    }
    // (Two tests, not a loop over the flattened array: that cost a few
    // instructions per call.)
    let [first, second] = writes;
    if let Some((g, v)) = first {
        state.set_gpr(g, v);
    }
    if let Some((g, v)) = second {
        state.set_gpr(g, v);
    }
    let new_flags = new_flags & !RF;
    retire(state, new_flags, f.next_rip);
    Ok(Outcome::Done)
}
