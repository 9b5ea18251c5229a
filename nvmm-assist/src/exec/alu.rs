//! ADD, ADC, SUB, SBB, AND, OR, XOR, CMP, TEST, INC, DEC, NEG, NOT.
//!
//! Memory destinations are read-modify-write (checked as writes), locked
//! when the instruction has a LOCK prefix; CMP and TEST only read.

use super::Exec;
use crate::Outcome;
use crate::access::{AccessType, PhysRange};
use crate::bus::{GuestRam, MmioBus};
use crate::decode::{Mnemonic, Operand};
use crate::error::Error;
use crate::flags::{self, CF};
use crate::state::CpuState;

/// The result and new RFLAGS of `op` on `a` (destination) and `b` (source).
#[inline(always)]
pub(crate) fn compute(op: Mnemonic, a: u64, b: u64, size: u8, rflags: u64) -> Option<(u64, u64)> {
    let carry = rflags & CF != 0;
    let m = flags::size_mask(size);
    Some(match op {
        Mnemonic::Add => flags::add(a, b, false, size, rflags),
        Mnemonic::Adc => flags::add(a, b, carry, size, rflags),
        Mnemonic::Sub | Mnemonic::Cmp => flags::sub(a, b, false, size, rflags),
        Mnemonic::Sbb => flags::sub(a, b, carry, size, rflags),
        Mnemonic::And | Mnemonic::Test => {
            let r = a & b & m;
            (r, flags::logic(r, size, rflags))
        }
        Mnemonic::Or => {
            let r = (a | b) & m;
            (r, flags::logic(r, size, rflags))
        }
        Mnemonic::Xor => {
            let r = (a ^ b) & m;
            (r, flags::logic(r, size, rflags))
        }
        Mnemonic::Inc => flags::inc(a, size, rflags),
        Mnemonic::Dec => flags::dec(a, size, rflags),
        Mnemonic::Neg => flags::neg(a, size, rflags),
        Mnemonic::Not => (!a & m, rflags),
        _ => return None,
    })
}

/// Whether `op` is one [`compute`] handles.
fn is_alu(op: Mnemonic) -> bool {
    matches!(
        op,
        Mnemonic::Add
            | Mnemonic::Adc
            | Mnemonic::Sub
            | Mnemonic::Sbb
            | Mnemonic::And
            | Mnemonic::Or
            | Mnemonic::Xor
            | Mnemonic::Cmp
            | Mnemonic::Test
            | Mnemonic::Inc
            | Mnemonic::Dec
            | Mnemonic::Neg
            | Mnemonic::Not
    )
}

fn is_unary(op: Mnemonic) -> bool {
    matches!(
        op,
        Mnemonic::Inc | Mnemonic::Dec | Mnemonic::Neg | Mnemonic::Not
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
    let writes = !matches!(op, Mnemonic::Cmp | Mnemonic::Test);
    match &insn.operands[0] {
        Operand::Mem(m) => {
            let b = if is_unary(op) {
                0
            } else {
                x.read_value_operand(&insn.operands[1])?
            };
            let rflags = x.rflags();
            if !writes {
                let mut range = PhysRange::default();
                x.locate(m, 0, size, AccessType::Read, true, &mut range)?;
                let a = x.read_mem(&range, size)? as u64;
                let (_, f) = compute(op, a, b, size, rflags).ok_or_else(|| x.unsupported())?;
                x.set_rflags(f);
                return Ok(Outcome::Done);
            }
            // Fail before any access if the operation is not one of ours.
            if !is_alu(op) {
                return Err(x.unsupported());
            }
            let mut range = PhysRange::default();
            x.locate(m, 0, size, AccessType::Write, true, &mut range)?;
            let result = x.rmw(&range, size, insn.lock, |old| {
                let (r, f) =
                    compute(op, old as u64, b, size, rflags).unwrap_or((old as u64, rflags));
                (u128::from(r), f)
            })?;
            match result {
                Some(f) => x.set_rflags(f),
                None => return Ok(Outcome::Resume),
            }
        }
        Operand::Reg(d) => {
            let a = x.read_reg(*d);
            let b = if is_unary(op) {
                0
            } else {
                x.read_operand(&insn.operands[1], size)?
            };
            let (r, f) = compute(op, a, b, size, x.rflags()).ok_or_else(|| x.unsupported())?;
            if writes {
                x.write_reg(*d, r);
            }
            x.set_rflags(f);
        }
        _ => return Err(x.unsupported()),
    }
    Ok(Outcome::Done)
}
