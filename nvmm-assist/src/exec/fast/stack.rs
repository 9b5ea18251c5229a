//! PUSH m (FF /6) and POP m (8F /0) on the fast path.
//!
//! The general executor (`exec/stack.rs`) is the reference: both operands
//! (the explicit one and the stack slot at SS:rSP) are translated, since
//! the exit does not say which of them is the device, each within its
//! page as the general path's walk does ([`translate_pair`]; in the stack
//! lane [`probe_pair`], the warm case alone, the rest left to the full
//! fast path); the stack's
//! address size and the rSP update are its [`stack::address_size`] and
//! [`stack::moved_sp`]. The checks that change nothing (segmentation, the
//! page crossing and the alignment check of both operands) are made first:
//! if any of them fails, the general path takes the instruction and
//! reports the fault. Then the translations, in the general path's order
//! (the source, then the destination), whose errors are the general
//! path's errors too. POP with an rSP- or rBP-based destination (32/64-bit
//! addressing: its address depends on the incremented rSP), a 67 or F2/F3
//! prefix, are left to the general path.
//!
//! Two entries, as for the string forms: [`try_plain`] for an instruction
//! without a prefix, out of line with the prefixes constants, and
//! [`try_exec`] after parsed prefixes.

use super::super::{alignment_faults, merge_sized, stack};
use super::families::{probe_pair, translate_pair, within_page, write_sized};
use super::prefix::{Prefixes, mem_operand};
use super::{read_sized, retire_flagless};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::fetch_cache::FetchCache;
use crate::flags;
use crate::mode::CpuMode;
use crate::segment::{linear_address_common, linear_address_if_allowed, linear_address_in_page};
use crate::state::{CpuState, Gpr, Segment};

/// Tries PUSH m or POP m with no prefix, the opcode (FF or 8F) the first
/// of `bytes`. Out of line, one copy per default address size (64-bit and
/// real mode with the mode a constant too, as the string forms'
/// `try_plain`), in which the prefixes are constants: nearly every PUSH m
/// and POP m a guest runs has none, and the constants save the prefix
/// tests, the operand size's and the segment override's selection and the
/// families' second dispatch.
#[inline(never)]
pub(super) fn try_plain<S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let p = Prefixes::default();
    match mode {
        CpuMode::Long64 => {
            try_exec::<8, false, S, R, M>(state, CpuMode::Long64, ram, cache, mmio, bytes, &p, 0)
        }
        CpuMode::Real => {
            try_exec::<2, false, S, R, M>(state, CpuMode::Real, ram, cache, mmio, bytes, &p, 0)
        }
        _ if mode.default_address_size() == 4 => {
            try_exec::<4, false, S, R, M>(state, mode, ram, cache, mmio, bytes, &p, 0)
        }
        _ => try_exec::<2, false, S, R, M>(state, mode, ram, cache, mmio, bytes, &p, 0),
    }
}

/// Tries PUSH m or POP m, whose opcode (FF or 8F) is `bytes[i]`. With
/// `LANE` (the stack lane, which has the full fast path behind it, and
/// which only calls it with the bytes of a PUSH m or POP m: `i` is 0,
/// `bytes` start FF /6 or 8F /0, [`lane`](super::lane)'s `Lane::Stack`) an
/// operand that the segmentation's common cases do not prove allowed is
/// left to that path rather than checked in full here
/// ([`linear_address_in_page`]), and so is a pair of translations the data
/// cache's pair record does not serve.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn try_exec<const ADDR: u8, const LANE: bool, S, R, M>(
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
    let mode = narrow_mode::<ADDR>(mode)?;
    let push = if LANE {
        // The stack lane's choice ([`lane`](super::lane)) has checked the
        // opcode and the reg field: FF /6 is PUSH, the other 8F /0. (The
        // second check cost PUSH m and POP m 5-18 instructions, by mode.)
        *bytes.get(i)? == 0xFF
    } else {
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
        push
    };
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
    let s = u64::from(size);
    let sas = stack::address_size(state, mode);
    let smask = flags::size_mask(sas);
    let sp = state.gpr(Gpr::Rsp) & smask;
    let new_sp = stack::moved_sp(sp, s, smask, push);
    // The source, then the destination: PUSH reads the operand and writes
    // the slot below rSP, POP reads the slot at rSP and writes the operand.
    let (src, dst) = if push {
        (
            operand::<ADDR, LANE, S>(state, mode, m.segment, m.offset, s, AccessType::Read)?,
            operand::<ADDR, LANE, S>(state, mode, Segment::Ss, new_sp, s, AccessType::Write)?,
        )
    } else {
        (
            operand::<ADDR, LANE, S>(state, mode, Segment::Ss, sp, s, AccessType::Read)?,
            operand::<ADDR, LANE, S>(state, mode, m.segment, m.offset, s, AccessType::Write)?,
        )
    };
    let (src, dst) = if LANE {
        // The warm pair alone: anything else is the full fast path's.
        match probe_pair::<ADDR, S, R>(state, mode, ram, cache, src, dst, AccessType::Write)? {
            Ok(Ok(pair)) => pair,
            Ok(Err(_)) => return None,
            Err(e) => return Some(Err(e)),
        }
    } else {
        match translate_pair(state, mode, ram, cache, src, dst, AccessType::Write)? {
            Ok(pair) => pair,
            Err(e) => return Some(Err(e)),
        }
    };
    Some(exec(
        state, ram, mmio, src, dst, size, sas, new_sp, m.next_rip,
    ))
}

/// `mode` in a copy for the default address size `ADDR`, named by
/// constants where `ADDR` leaves two modes: 32 bits is protected or
/// compatibility mode, which the segmentation checks, the stack's address
/// size and the translations test only for being neither 64-bit, real nor
/// virtual-8086 mode. With the mode one of two constants those tests fold
/// (with it a runtime value they cost a 32-bit PUSH m about 12
/// instructions). `None` (left to the general path) for a mode that does
/// not have that default address size, which the callers do not pass.
#[inline(always)]
pub(super) fn narrow_mode<const ADDR: u8>(mode: CpuMode) -> Option<CpuMode> {
    match ADDR {
        4 => match mode {
            CpuMode::Compat32 => Some(CpuMode::Compat32),
            CpuMode::Protected32 => Some(CpuMode::Protected32),
            _ => None,
        },
        _ => Some(mode),
    }
}

/// The linear address of `size` bytes at `seg:offset`, if every check
/// that changes nothing passes: segmentation, within one page, no
/// alignment fault.
#[inline(always)]
fn operand<const ADDR: u8, const LANE: bool, S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    seg: Segment,
    offset: u64,
    size: u64,
    access: AccessType,
) -> Option<u64> {
    if LANE && ADDR == 8 && mode.is_64bit() {
        // The page test first, then the canonical test of the first byte
        // alone (measured: 10 instructions less than the test below in
        // 64-bit mode; outside it, 8-13 more, and a runtime test of the
        // mode cost the 16-bit copy 6-17).
        let linear = linear_address_in_page(state, mode, seg, offset, size, access)?;
        return (!alignment_faults(state, state.rflags(), linear, size)).then_some(linear);
    }
    let linear = if LANE {
        linear_address_common(state, mode, seg, offset, size, access)?
    } else {
        linear_address_if_allowed(state, mode, seg, offset, size, access)?
    };
    if !within_page(linear, size) || alignment_faults(state, state.rflags(), linear, size) {
        return None;
    }
    Some(linear)
}

/// Moves `size` bytes from `src` to `dst` (guest-physical, each within a
/// page) through a value of that width, as the general path does, then
/// commits rSP (`new_sp` at the stack's address size `sas`) and RIP.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn exec<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    src: u64,
    dst: u64,
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
    let n = usize::from(size);
    let value = read_sized(ram, mmio, src, n)?;
    write_sized(ram, mmio, dst, n, value)?;
    let rsp = state.gpr(Gpr::Rsp);
    state.set_gpr(Gpr::Rsp, merge_sized(rsp, sas, new_sp));
    retire_flagless(state, state.rflags(), next_rip);
    Ok(Outcome::Done)
}
