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

/// The new value of the operand after `op` on bit `bit`.
fn apply(op: Mnemonic, value: u64, bit: u32) -> u64 {
    let mask = 1u64 << (bit & 63);
    match op {
        Mnemonic::Bts => value | mask,
        Mnemonic::Btr => value & !mask,
        Mnemonic::Btc => value ^ mask,
        _ => value,
    }
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
    let log2 = bits.trailing_zeros();
    let (bit, displacement) = match &insn.operands[1] {
        Operand::Imm(v) => ((v & (bits - 1)) as u32, 0i64),
        Operand::Reg(r) => {
            let raw = x.read_reg(*r);
            if matches!(insn.operands[0], Operand::Mem(_)) {
                let signed = flags::sign_extend(raw, size) as i64;
                // |signed >> log2| < 2^60, so the product cannot overflow.
                (
                    (raw & (bits - 1)) as u32,
                    (signed >> log2).wrapping_mul(i64::from(size)),
                )
            } else {
                ((raw & (bits - 1)) as u32, 0)
            }
        }
        _ => return Err(x.unsupported()),
    };
    let rflags = x.rflags();
    let with_cf = |old: u64| {
        if (old >> bit) & 1 != 0 {
            rflags | CF
        } else {
            rflags & !CF
        }
    };
    match &insn.operands[0] {
        Operand::Mem(m) => {
            if op == Mnemonic::Bt {
                let mut range = PhysRange::default();
                x.locate(m, displacement, size, AccessType::Read, true, &mut range)?;
                let old = x.read_mem(&range, size)? as u64;
                x.set_rflags(with_cf(old));
            } else {
                let mut range = PhysRange::default();
                x.locate(m, displacement, size, AccessType::Write, true, &mut range)?;
                let res = x.rmw(&range, size, insn.lock, |old| {
                    let old = old as u64;
                    (u128::from(apply(op, old, bit)), with_cf(old))
                })?;
                match res {
                    Some(f) => x.set_rflags(f),
                    None => return Ok(Outcome::Resume),
                }
            }
        }
        Operand::Reg(d) => {
            let old = x.read_reg(*d);
            if op != Mnemonic::Bt {
                x.write_reg(*d, apply(op, old, bit));
            }
            x.set_rflags(with_cf(old));
        }
        _ => return Err(x.unsupported()),
    }
    Ok(Outcome::Done)
}
