//! MOV (all forms), MOVZX, MOVSX, MOVSXD, MOVNTI, SETcc and CMOVcc.

use super::Exec;
use crate::Outcome;
use crate::access::{AccessType, PhysRange};
use crate::bus::{GuestRam, MmioBus};
use crate::decode::{Mnemonic, Operand};
use crate::error::Error;
use crate::flags;
use crate::state::CpuState;

/// SETcc: the byte stored for condition `cc` under `rflags`. Shared with
/// the fast path.
#[inline(always)]
pub(crate) fn setcc(cc: u8, rflags: u64) -> u64 {
    u64::from(flags::condition(cc, rflags))
}

/// CMOVcc: the value written to the destination register, `loaded` (read
/// from memory whether or not the condition holds) when condition `cc`
/// holds under `rflags`, else the register's own value `current`: the
/// destination is written either way (a 32-bit one is zero-extended in
/// 64-bit mode even when the condition is false).
#[inline(always)]
pub(crate) fn cmov(cc: u8, rflags: u64, loaded: u64, current: u64) -> u64 {
    if flags::condition(cc, rflags) {
        loaded
    } else {
        current
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
    match (&insn.operands[0], &insn.operands[1]) {
        // Stores: MOV/MOVNTI from a register or immediate, SETcc.
        (Operand::Mem(m), src) => {
            let value = match op {
                Mnemonic::Mov | Mnemonic::Movnti => x.read_value_operand(src)?,
                Mnemonic::Setcc => {
                    let cc = insn.condition.ok_or_else(|| x.unsupported())?;
                    setcc(cc.0, x.rflags())
                }
                _ => return Err(x.unsupported()),
            };
            let width = if op == Mnemonic::Setcc { 1 } else { m.size };
            let mut range = PhysRange::default();
            x.locate(m, 0, width, AccessType::Write, true, &mut range)?;
            x.write_mem(&range, width, u128::from(value))?;
        }
        // Loads into a register.
        (Operand::Reg(d), Operand::Mem(m)) => {
            let mut range = PhysRange::default();
            x.locate(m, 0, m.size, AccessType::Read, true, &mut range)?;
            let raw = x.read_mem(&range, m.size)? as u64;
            let value = match op {
                Mnemonic::Mov | Mnemonic::Movzx => raw,
                Mnemonic::Movsx | Mnemonic::Movsxd => flags::sign_extend(raw, m.size),
                Mnemonic::Cmovcc => {
                    let cc = insn.condition.ok_or_else(|| x.unsupported())?;
                    // The memory is read even when the condition is false.
                    cmov(cc.0, x.rflags(), raw, x.read_reg(*d))
                }
                _ => return Err(x.unsupported()),
            };
            x.write_reg(*d, value);
        }
        // Register-only forms never cause a memory exit, but are cheap to
        // get right: SETcc r8, MOV r, imm / r, r.
        (Operand::Reg(d), src) => {
            let value = match op {
                Mnemonic::Setcc => {
                    let cc = insn.condition.ok_or_else(|| x.unsupported())?;
                    setcc(cc.0, x.rflags())
                }
                Mnemonic::Mov => x.read_value_operand(src)?,
                _ => return Err(x.unsupported()),
            };
            x.write_reg(*d, value);
        }
        _ => return Err(x.unsupported()),
    }
    Ok(Outcome::Done)
}
