//! BT, BTS, BTR, BTC.
//!
//! Immediate bit offsets are taken modulo the operand width. A register bit
//! offset is a signed value of the operand size that may address memory
//! beyond the operand: the access is at `ea + size * (offset >> log2(bits))`
//! (arithmetic shift) and the bit is `offset mod bits`.
//!
//! Flags: CF is the selected bit. OF, SF, AF and PF are undefined and ZF is
//! unaffected; all five are left unchanged, as Intel CPUs do.

use super::Exec;
use crate::Outcome;
use crate::access::{AccessType, PhysRange};
use crate::bus::{GuestRam, MmioBus};
use crate::decode::{Mnemonic, Operand};
use crate::error::Error;
use crate::flags::{self, CF};
use crate::state::CpuState;

/// The new value of the operand and the new RFLAGS after `op` (BT, BTS,
/// BTR or BTC) on bit `bit` of `old`: CF is the selected bit, the other
/// flags are unchanged (rows 4-5 of the vendor table, the same on both
/// vendors). Shared with the fast path.
#[inline(always)]
pub(crate) fn compute(op: Mnemonic, old: u64, bit: u32, rflags: u64) -> (u64, u64) {
    let mask = 1u64 << (bit & 63);
    let new = match op {
        Mnemonic::Bts => old | mask,
        Mnemonic::Btr => old & !mask,
        Mnemonic::Btc => old ^ mask,
        _ => old,
    };
    let f = if old & mask != 0 {
        rflags | CF
    } else {
        rflags & !CF
    };
    (new, f)
}

/// A register bit offset `raw` on a memory operand of `size` (2, 4 or 8)
/// bytes: the bit within the operand-sized word, and the byte displacement
/// of that word from the operand's address (the offset is signed).
#[inline(always)]
pub(crate) fn register_offset(raw: u64, size: u8) -> (u32, i64) {
    let bits = u64::from(size) * 8;
    let log2 = bits.trailing_zeros();
    let signed = flags::sign_extend(raw, size) as i64;
    // |signed >> log2| < 2^60, so the product cannot overflow.
    (
        (raw & (bits - 1)) as u32,
        (signed >> log2).wrapping_mul(i64::from(size)),
    )
}

pub(super) fn exec<S, R, M>(x: &mut Exec<'_, S, R, M>) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let insn = x.insn;
    let op = insn.mnemonic;
    let size = insn.operand_size;
    if !matches!(size, 2 | 4 | 8) {
        return Err(x.unsupported());
    }
    let bits = u64::from(size) * 8;
    let (bit, displacement) = match &insn.operands[1] {
        Operand::Imm(v) => ((v & (bits - 1)) as u32, 0i64),
        Operand::Reg(r) => {
            let raw = x.read_reg(*r);
            if matches!(insn.operands[0], Operand::Mem(_)) {
                register_offset(raw, size)
            } else {
                ((raw & (bits - 1)) as u32, 0)
            }
        }
        _ => return Err(x.unsupported()),
    };
    let rflags = x.rflags();
    match &insn.operands[0] {
        Operand::Mem(m) => {
            if op == Mnemonic::Bt {
                let mut range = PhysRange::default();
                x.locate(m, displacement, size, AccessType::Read, true, &mut range)?;
                let old = x.read_mem(&range, size)? as u64;
                x.set_rflags(compute(op, old, bit, rflags).1);
            } else {
                let mut range = PhysRange::default();
                x.locate(m, displacement, size, AccessType::Write, true, &mut range)?;
                let res = x.rmw(&range, size, insn.lock, |old| {
                    let (new, f) = compute(op, old as u64, bit, rflags);
                    (u128::from(new), f)
                })?;
                match res {
                    Some(f) => x.set_rflags(f),
                    None => return Ok(Outcome::Resume),
                }
            }
        }
        Operand::Reg(d) => {
            let (new, f) = compute(op, x.read_reg(*d), bit, rflags);
            if op != Mnemonic::Bt {
                x.write_reg(*d, new);
            }
            x.set_rflags(f);
        }
        _ => return Err(x.unsupported()),
    }
    Ok(Outcome::Done)
}
