//! PUSH m and POP m.
//!
//! Two memory operands: the explicit one and the stack slot at SS:rSP. The
//! exit does not say which of them is MMIO, so both are translated through
//! the page walker. The stack address size is 8 in 64-bit mode, else 4 with
//! SS.B, else 2; rSP is updated within that size (a 16-bit stack keeps
//! `RSP[63:16]`). POP computes an rSP-based destination address after the
//! increment, as the CPU does.

use super::Exec;
use crate::Outcome;
use crate::access::{AccessType, PhysRange};
use crate::bus::{GuestRam, MmioBus};
use crate::data_cache::DataSlots;
use crate::decode::{Mnemonic, Operand};
use crate::error::Error;
use crate::flags;
use crate::mode::CpuMode;
use crate::state::{CpuState, Gpr, Segment};

/// The stack's address size: 8 in 64-bit mode, else 4 with SS.B, else 2.
#[inline(always)]
pub(crate) fn address_size<S: CpuState + ?Sized>(state: &S, mode: CpuMode) -> u8 {
    if mode.is_64bit() {
        8
    } else if state.segment(Segment::Ss).attributes.db() {
        4
    } else {
        2
    }
}

/// rSP after pushing (`push`) or popping `step` bytes, within the stack's
/// address size (`smask`), from the masked `sp`.
#[inline(always)]
pub(crate) fn moved_sp(sp: u64, step: u64, smask: u64, push: bool) -> u64 {
    if push {
        sp.wrapping_sub(step) & smask
    } else {
        sp.wrapping_add(step) & smask
    }
}

impl<S, R, M> Exec<'_, S, R, M>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    /// Runs `f`, which translates the operands of a two-operand
    /// instruction (MOVS, CMPS, PUSH m, POP m) and makes no memory access,
    /// with consecutive walks sharing the entries they read in common:
    /// [`DataSlots::share_walks`](crate::data_cache::DataSlots::share_walks),
    /// as the fast path's pair translation does (both paths must make the
    /// same guest-RAM reads).
    #[inline(always)]
    pub(crate) fn sharing_walks<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        DataSlots::share_walks(self, |x| &mut x.cache.data, f)
    }
}

pub(super) fn exec<S, R, M>(x: &mut Exec<'_, S, R, M>) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let insn = x.insn;
    let size = insn.operand_size;
    if !matches!(size, 2 | 4 | 8) {
        return Err(x.unsupported());
    }
    let Operand::Mem(m) = &insn.operands[0] else {
        return Err(x.unsupported());
    };
    let sas = x.stack_address_size();
    let smask = flags::size_mask(sas);
    let sp = x.gpr(Gpr::Rsp) & smask;
    let step = u64::from(size);
    match insn.mnemonic {
        Mnemonic::Push => {
            // The source address uses rSP before the decrement.
            let new_sp = moved_sp(sp, step, smask, true);
            let (mut src, mut dst) = (PhysRange::default(), PhysRange::default());
            x.sharing_walks(|x| {
                x.locate(m, 0, size, AccessType::Read, false, &mut src)?;
                x.locate_offset(
                    Segment::Ss,
                    new_sp,
                    size,
                    AccessType::Write,
                    false,
                    &mut dst,
                )
            })?;
            let value = x.read_mem(&src, size)?;
            x.write_mem(&dst, size, value)?;
            x.write_addr_reg(Gpr::Rsp, sas, new_sp);
        }
        Mnemonic::Pop => {
            let new_sp = moved_sp(sp, step, smask, false);
            let (mut src, mut dst) = (PhysRange::default(), PhysRange::default());
            x.sharing_walks(|x| {
                x.locate_offset(Segment::Ss, sp, size, AccessType::Read, false, &mut src)?;
                // Stage the incremented rSP first: an rSP-based destination
                // address is computed from it (a staged register, no
                // memory access).
                x.write_addr_reg(Gpr::Rsp, sas, new_sp);
                x.locate(m, 0, size, AccessType::Write, false, &mut dst)
            })?;
            let value = x.read_mem(&src, size)?;
            x.write_mem(&dst, size, value)?;
        }
        _ => return Err(x.unsupported()),
    }
    Ok(Outcome::Done)
}
