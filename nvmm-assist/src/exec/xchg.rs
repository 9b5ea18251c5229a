//! XCHG, XADD, CMPXCHG, CMPXCHG8B and CMPXCHG16B: the read-modify-write
//! instructions that return the old memory value to a register.
//!
//! XCHG with memory is locked whether or not it has a LOCK prefix; the
//! others are locked with the prefix. Locked forms to RAM use the
//! compare-and-write callback and retry; to MMIO they are a read then a
//! write (a device cannot be locked). CMPXCHG* always write memory, the old
//! value when the comparison fails, as the CPU does.

use super::Exec;
use crate::Outcome;
use crate::access::{AccessType, PhysRange};
use crate::bus::{GuestRam, MmioBus};
use crate::decode::{Mnemonic, Operand};
use crate::error::{Error, Exception};
use crate::flags::{self, ZF};
use crate::state::{CpuState, Gpr};

/// XADD: the new memory value and RFLAGS from the old memory value and
/// the source register (which receives the old value). Shared with the
/// fast path.
#[inline(always)]
pub(crate) fn xadd(old: u64, src: u64, size: u8, rflags: u64) -> (u64, u64) {
    flags::add(old, src, false, size, rflags)
}

/// CMPXCHG: the value written to memory (the source when the accumulator
/// `acc` equals `old`, else `old` itself: the destination is always
/// written), the new RFLAGS (as CMP accumulator, destination), and the
/// value to load into the accumulator when the comparison failed.
#[inline(always)]
pub(crate) fn cmpxchg(
    acc: u64,
    old: u64,
    src: u64,
    size: u8,
    rflags: u64,
) -> (u64, u64, Option<u64>) {
    let (_, f) = flags::sub(acc, old, false, size, rflags);
    if acc == old {
        (src, f, None)
    } else {
        (old, f, Some(old))
    }
}

/// The `2 * half`-byte value of the register pair `hi:lo` (EDX:EAX,
/// ECX:EBX, or their 64-bit forms), each register's low `half` bytes.
#[inline(always)]
pub(crate) fn pair(lo: u64, hi: u64, half: u8) -> u128 {
    let hmask = flags::size_mask(half);
    u128::from(lo & hmask) | (u128::from(hi & hmask) << (u32::from(half) * 8))
}

/// CMPXCHG8B/16B: the value written to memory (`replacement` when `old`
/// equals `expected`, else `old`: always written), and the value to load
/// into rDX:rAX when the comparison failed. ZF is set exactly when it
/// succeeded ([`cmpxchg_wide_flags`]).
#[inline(always)]
pub(crate) fn cmpxchg_wide(old: u128, expected: u128, replacement: u128) -> (u128, Option<u128>) {
    if old == expected {
        (replacement, None)
    } else {
        (old, Some(old))
    }
}

/// The RFLAGS after CMPXCHG8B/16B: ZF set on success, cleared on failure,
/// the rest unchanged.
#[inline(always)]
pub(crate) fn cmpxchg_wide_flags(rflags: u64, succeeded: bool) -> u64 {
    if succeeded { rflags | ZF } else { rflags & !ZF }
}

pub(super) fn exec<S, R, M>(x: &mut Exec<'_, S, R, M>) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let insn = x.insn;
    let size = insn.operand_size;
    match insn.mnemonic {
        Mnemonic::Xchg => {
            let (m, r) = match (&insn.operands[0], &insn.operands[1]) {
                (Operand::Mem(m), Operand::Reg(r)) | (Operand::Reg(r), Operand::Mem(m)) => (m, r),
                _ => return Err(x.unsupported()),
            };
            let value = x.read_reg(*r);
            let mut range = PhysRange::default();
            x.locate(m, 0, size, AccessType::Write, true, &mut range)?;
            match x.rmw(&range, size, true, |old| (u128::from(value), old as u64))? {
                Some(old) => x.write_reg(*r, old),
                None => return Ok(Outcome::Resume),
            }
        }
        Mnemonic::Xadd => {
            let (Operand::Mem(m), Operand::Reg(r)) = (&insn.operands[0], &insn.operands[1]) else {
                return Err(x.unsupported());
            };
            let src = x.read_reg(*r);
            let rflags = x.rflags();
            let mut range = PhysRange::default();
            x.locate(m, 0, size, AccessType::Write, true, &mut range)?;
            let res = x.rmw(&range, size, insn.lock, |old| {
                let (sum, f) = xadd(old as u64, src, size, rflags);
                (u128::from(sum), (old as u64, f))
            })?;
            match res {
                Some((old, f)) => {
                    x.write_reg(*r, old);
                    x.set_rflags(f);
                }
                None => return Ok(Outcome::Resume),
            }
        }
        Mnemonic::Cmpxchg => {
            let (Operand::Mem(m), Operand::Reg(r)) = (&insn.operands[0], &insn.operands[1]) else {
                return Err(x.unsupported());
            };
            let src = x.read_reg(*r);
            let acc = x.gpr(Gpr::Rax) & flags::size_mask(size);
            let rflags = x.rflags();
            let mut range = PhysRange::default();
            x.locate(m, 0, size, AccessType::Write, true, &mut range)?;
            let res = x.rmw(&range, size, insn.lock, |old| {
                let (new, f, loaded) = cmpxchg(acc, old as u64, src, size, rflags);
                (u128::from(new), (f, loaded))
            })?;
            match res {
                Some((f, loaded)) => {
                    x.set_rflags(f);
                    if let Some(old) = loaded {
                        x.write_gpr_sized(Gpr::Rax, size, old);
                    }
                }
                None => return Ok(Outcome::Resume),
            }
        }
        Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b => {
            let Operand::Mem(m) = &insn.operands[0] else {
                return Err(x.unsupported());
            };
            let wide = insn.mnemonic == Mnemonic::Cmpxchg16b;
            let (half, width): (u8, u8) = if wide { (8, 16) } else { (4, 8) };
            let hmask = flags::size_mask(half);
            let shift = u32::from(half) * 8;
            let expected = pair(x.gpr(Gpr::Rax), x.gpr(Gpr::Rdx), half);
            let replacement = pair(x.gpr(Gpr::Rbx), x.gpr(Gpr::Rcx), half);
            let offset = x.effective_offset(m);
            let linear = x.linear(m.segment, offset, u64::from(width), AccessType::Write)?;
            if wide && linear & 15 != 0 {
                return Err(Exception::GeneralProtection(0).into());
            }
            let range = x.physical(linear, u64::from(width), AccessType::Write, true)?;
            x.check_alignment(linear, 8)?;
            let res = x.rmw(&range, width, insn.lock, |old| {
                cmpxchg_wide(old, expected, replacement)
            })?;
            match res {
                Some(loaded) => {
                    x.set_rflags(cmpxchg_wide_flags(x.rflags(), loaded.is_none()));
                    if let Some(old) = loaded {
                        x.write_gpr_sized(Gpr::Rax, half, (old as u64) & hmask);
                        x.write_gpr_sized(Gpr::Rdx, half, ((old >> shift) as u64) & hmask);
                    }
                }
                None => return Ok(Outcome::Resume),
            }
        }
        _ => return Err(x.unsupported()),
    }
    Ok(Outcome::Done)
}
