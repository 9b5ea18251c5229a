//! SSE moves: MOVD, MOVQ, MOVDQA, MOVDQU, MOVAPS, MOVUPS, MOVAPD, MOVUPD,
//! MOVNTDQ, MOVNTPS, MOVNTPD.
//!
//! The XMM registers come from [`CpuState::xmm`]; a state without them makes
//! these instructions unsupported (before any access). Loads into XMM
//! zero-extend MOVD/MOVQ values to 128 bits. The aligned forms raise
//! `#GP(0)` when the linear address is not 16-byte aligned. The unaligned
//! 128-bit forms never raise `#AC` (the SDM leaves it to the implementation
//! for addresses not 8-byte aligned; this assist chooses not to).

use super::Exec;
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::decode::{MemoryOperand, Mnemonic, Operand};
use crate::error::{Error, Exception};
use crate::flags;
use crate::state::CpuState;

/// The bytes an SSE move accesses in memory.
#[inline(always)]
pub(crate) const fn width(op: Mnemonic) -> u8 {
    match op {
        Mnemonic::Movd => 4,
        Mnemonic::Movq => 8,
        _ => 16,
    }
}

/// The forms that raise `#GP(0)` on a linear address not 16-byte aligned.
#[inline(always)]
pub(crate) const fn aligned(op: Mnemonic) -> bool {
    matches!(
        op,
        Mnemonic::Movdqa
            | Mnemonic::Movaps
            | Mnemonic::Movapd
            | Mnemonic::Movntdq
            | Mnemonic::Movntps
            | Mnemonic::Movntpd
    )
}

/// The bits of an XMM register a move of `size` bytes transfers (the
/// rest of a load's destination is zeroed).
#[inline(always)]
pub(crate) fn value_mask(size: u8) -> u128 {
    if size == 16 {
        u128::MAX
    } else {
        u128::from(flags::size_mask(size))
    }
}

/// Locates an SSE memory operand with the alignment rules above.
fn locate<S, R, M>(
    x: &mut Exec<'_, S, R, M>,
    m: &MemoryOperand,
    size: u8,
    access: AccessType,
) -> Result<crate::access::PhysRange, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let offset = x.effective_offset(m);
    let linear = x.linear(m.segment, offset, u64::from(size), access)?;
    if aligned(x.insn.mnemonic) && linear & 15 != 0 {
        return Err(Exception::GeneralProtection(0).into());
    }
    let range = x.physical(linear, u64::from(size), access, true)?;
    if size <= 8 {
        x.check_alignment(linear, u64::from(size))?;
    }
    Ok(range)
}

pub(super) fn exec<S, R, M>(x: &mut Exec<'_, S, R, M>) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let insn = x.insn;
    let op = insn.mnemonic;
    let size = width(op);
    let vmask = value_mask(size);
    match (&insn.operands[0], &insn.operands[1]) {
        (Operand::Xmm(i), Operand::Mem(m)) => {
            x.state.xmm(*i).ok_or_else(|| x.unsupported())?;
            if matches!(
                op,
                Mnemonic::Movntdq | Mnemonic::Movntps | Mnemonic::Movntpd
            ) {
                // Non-temporal forms are stores only.
                return Err(x.unsupported());
            }
            let range = locate(x, m, size, AccessType::Read)?;
            let value = x.read_mem(&range, size)? & vmask;
            x.regs.set_xmm(*i, value);
        }
        (Operand::Mem(m), Operand::Xmm(i)) => {
            let value = x.state.xmm(*i).ok_or_else(|| x.unsupported())? & vmask;
            let range = locate(x, m, size, AccessType::Write)?;
            x.write_mem(&range, size, value)?;
        }
        (Operand::Xmm(i), Operand::Reg(r)) if size <= 8 => {
            x.state.xmm(*i).ok_or_else(|| x.unsupported())?;
            let value = x.read_reg(*r);
            x.regs.set_xmm(*i, u128::from(value) & vmask);
        }
        (Operand::Reg(r), Operand::Xmm(i)) if size <= 8 => {
            let value = x.state.xmm(*i).ok_or_else(|| x.unsupported())?;
            x.write_reg(*r, value as u64);
        }
        _ => return Err(x.unsupported()),
    }
    Ok(Outcome::Done)
}
