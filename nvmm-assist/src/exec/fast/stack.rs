//! PUSH m (FF /6) and POP m (8F /0) on the fast path.
//!
//! The general executor (`exec/stack.rs`) is the reference: both operands
//! (the explicit one and the stack slot at SS:rSP) are translated through
//! the page walker ([`access::resolve`]), since the exit does not say which
//! of them is the device; the stack's address size and the rSP update are
//! its [`stack::address_size`] and [`stack::moved_sp`]. Once the form is
//! decoded, the checks and walks are the general path's, in its order, and
//! their errors are returned as it returns them. POP with an rSP- or
//! rBP-based destination (32/64-bit addressing: its address depends on
//! the incremented rSP), a 67 or F2/F3 prefix, are left to the general path.

use super::super::{alignment_faults, merge_sized, stack};
use super::prefix::{Prefixes, mem_operand};
use crate::Outcome;
use crate::access::{self, AccessType, PhysRange};
use crate::bus::{GuestRam, MmioBus};
use crate::error::{Error, Exception};
use crate::fetch_cache::FetchCache;
use crate::flags::{self, RF};
use crate::mode::CpuMode;
use crate::segment::linear_address;
use crate::state::{CpuState, Gpr, Segment};

/// Segmentation, translation and alignment check of `size` bytes at
/// `seg:offset`: the general path's `Exec::locate_offset` for an untrusted
/// operand, the same checks in the same order, with the same errors.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn locate<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    seg: Segment,
    offset: u64,
    size: u8,
    access: AccessType,
    range: &mut PhysRange,
) -> Result<(), Error> {
    let size64 = u64::from(size);
    let linear = linear_address(state, mode, seg, offset, size64, access)?;
    walk_into(state, ram, cache, linear, usize::from(size), access, range)?;
    if alignment_faults(state, state.rflags(), linear, size64.min(8)) {
        return Err(Exception::AlignmentCheck.into());
    }
    Ok(())
}

/// [`access::resolve`] into `range`, out of line, as the general path's
/// `Exec::walk`: a `Result<PhysRange, _>` passed up through `?` is copied
/// with narrow stores and read back with wide loads, a store-forwarding
/// stall per copy that measured as a large share of the whole assist.
#[inline(never)]
pub(super) fn walk_into<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    ram: &mut R,
    cache: &mut FetchCache,
    linear: u64,
    len: usize,
    access: AccessType,
    range: &mut PhysRange,
) -> Result<(), Error> {
    *range = access::resolve_cached(state, ram, cache, linear, len, access)?;
    Ok(())
}

/// Tries PUSH m or POP m, whose opcode (FF or 8F) is `bytes[i]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn try_exec<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    bytes: &[u8],
    p: &Prefixes,
    i: usize,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    if p.addrsize || p.rep != 0 {
        return None;
    }
    let push = match *bytes.get(i)? {
        0xFF => true,
        0x8F => false,
        _ => return None,
    };
    // /6 for PUSH, /0 for POP (8F with another reg field is XOP or #UD).
    let reg_field = (*bytes.get(i + 1)? >> 3) & 7;
    if reg_field != if push { 6 } else { 0 } {
        return None;
    }
    let m = mem_operand::<ADDR, S>(state, bytes, i + 1, p)?;
    if !push && ADDR != 2 && m.stack_based {
        return None;
    }
    // 64 bits by default in 64-bit mode (66 gives 16).
    let size = if ADDR == 8 && !p.opsize {
        8
    } else {
        p.v_size(ADDR)
    };
    let sas = stack::address_size(state, mode);
    let smask = flags::size_mask(sas);
    let sp = state.gpr(Gpr::Rsp) & smask;
    let new_sp = stack::moved_sp(sp, u64::from(size), smask, push);
    // From here on the fast path does what the general executor does, in
    // the same order: a fault, once an operand has been walked, is
    // reported here rather than left to the general path (which would walk
    // it again).
    let (first, second) = if push {
        (
            (m.segment, m.offset, AccessType::Read),
            (Segment::Ss, new_sp, AccessType::Write),
        )
    } else {
        (
            (Segment::Ss, sp, AccessType::Read),
            (m.segment, m.offset, AccessType::Write),
        )
    };
    let mut run = |state: &mut S, ram: &mut R, mmio: &mut M| -> Result<Outcome, Error> {
        let mut src = PhysRange::default();
        let mut dst = PhysRange::default();
        locate(
            state, mode, ram, cache, first.0, first.1, size, first.2, &mut src,
        )?;
        locate(
            state, mode, ram, cache, second.0, second.1, size, second.2, &mut dst,
        )?;
        exec(state, ram, mmio, &src, &dst, size, sas, new_sp, m.next_rip)
    };
    Some(run(state, ram, mmio))
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn exec<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    src: &PhysRange,
    dst: &PhysRange,
    size: u8,
    sas: u8,
    new_sp: u64,
    next_rip: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // Through a value, as the general path does: the device or RAM fills
    // a buffer of the access's width, one load takes it.
    let value = match size {
        2 => {
            let mut b = [0u8; 2];
            access::read_phys(ram, mmio, src, &mut b)?;
            u64::from(u16::from_le_bytes(b))
        }
        4 => {
            let mut b = [0u8; 4];
            access::read_phys(ram, mmio, src, &mut b)?;
            u64::from(u32::from_le_bytes(b))
        }
        _ => {
            let mut b = [0u8; 8];
            access::read_phys(ram, mmio, src, &mut b)?;
            u64::from_le_bytes(b)
        }
    };
    let data = value.to_le_bytes();
    access::write_phys(ram, mmio, dst, data.get(..usize::from(size)).unwrap_or(&[]))?;
    let rsp = state.gpr(Gpr::Rsp);
    state.set_gpr(Gpr::Rsp, merge_sized(rsp, sas, new_sp));
    let rflags = state.rflags();
    if rflags & RF != 0 {
        state.set_rflags(rflags & !RF);
    }
    state.set_rip(next_rip);
    Ok(Outcome::Done)
}
