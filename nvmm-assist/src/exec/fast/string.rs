//! Single (non-REP) string instructions on the fast path: MOVS, STOS,
//! LODS, CMPS and SCAS, every size, either direction, any address size
//! (67) and a source segment override.
//!
//! The general executor (`exec/string.rs`) is the reference and supplies
//! the semantics ([`string::operands`], [`string::advance`],
//! [`string::compare_flags`]): STOS, LODS and SCAS use the exit GPA for
//! their one memory operand; MOVS and CMPS translate both operands (the
//! exit does not say which of them is the device), each within its page,
//! as the general path's walk does ([`translate_pair`]).
//!
//! The checks that change nothing (segmentation, the page crossing, the
//! alignment check and, for one operand, the exit GPA's page offset) are
//! made first, for both operands: if any of them fails, the general path
//! takes the instruction and reports the fault. Then the translations, in
//! the general path's order (source, then destination), whose errors are
//! the general path's errors too. A REP/REPNE prefix is left to the general
//! path.

use super::super::{alignment_faults, merge_sized, string};
use super::families::{translate_pair, within_page, write_sized};
use super::prefix::{Prefixes, next_rip};
use super::read_sized;
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::fetch_cache::FetchCache;
use crate::flags::{self, DF, RF};
use crate::mode::CpuMode;
use crate::segment::linear_address_if_allowed;
use crate::state::{CpuState, Gpr, Segment};

/// Tries the string instruction whose opcode (A4-A7, AA-AF) is `opcode`
/// and ends at `len` bytes.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn try_exec<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    exit_gpa: u64,
    p: &Prefixes,
    opcode: u8,
    len: usize,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    if p.rep != 0 {
        return None;
    }
    let size = if opcode & 1 == 0 { 1 } else { p.v_size(ADDR) };
    let step = Step {
        op: Mnemonic::Movs,
        size,
        asz: p.address_size(ADDR),
        rflags: state.rflags(),
        next_rip: next_rip::<ADDR, S>(state, len),
    };
    let src_seg = p.segment.unwrap_or(Segment::Ds);
    // One arm per instruction, each with its mnemonic a constant: `two`,
    // `one` and `exec` are specialised for it (with the mnemonic a runtime
    // value, a MOVS costs about 30 instructions more).
    match opcode {
        0xA4 | 0xA5 => two(state, mode, ram, cache, mmio, &step, src_seg),
        0xA6 | 0xA7 => {
            let step = Step {
                op: Mnemonic::Cmps,
                ..step
            };
            two(state, mode, ram, cache, mmio, &step, src_seg)
        }
        0xAA | 0xAB => {
            let step = Step {
                op: Mnemonic::Stos,
                ..step
            };
            one(state, mode, ram, mmio, exit_gpa, &step, src_seg)
        }
        0xAC | 0xAD => {
            let step = Step {
                op: Mnemonic::Lods,
                ..step
            };
            one(state, mode, ram, mmio, exit_gpa, &step, src_seg)
        }
        0xAE | 0xAF => {
            let step = Step {
                op: Mnemonic::Scas,
                ..step
            };
            one(state, mode, ram, mmio, exit_gpa, &step, src_seg)
        }
        _ => None,
    }
}

/// The linear address of the element at `seg:reg`, if every check that
/// changes nothing passes: segmentation, the element within one page, no
/// alignment fault.
#[inline(always)]
fn operand<S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    step: &Step,
    seg: Segment,
    reg: Gpr,
    access: AccessType,
) -> Option<u64> {
    let s = u64::from(step.size);
    let offset = state.gpr(reg) & flags::size_mask(step.asz);
    let linear = linear_address_if_allowed(state, mode, seg, offset, s, access)?;
    if !within_page(linear, s) || alignment_faults(state, step.rflags, linear, s) {
        return None;
    }
    Some(linear)
}

/// MOVS or CMPS: the checks that change nothing for both operands, then
/// the translations (source first) and the instruction.
#[inline(always)]
fn two<S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    step: &Step,
    src_seg: Segment,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (_, _, dst_access) = string::operands(step.op)?;
    let src = operand(state, mode, step, src_seg, Gpr::Rsi, AccessType::Read)?;
    let dst = operand(state, mode, step, Segment::Es, Gpr::Rdi, dst_access)?;
    Some(
        match translate_pair(state, ram, cache, src, dst, dst_access) {
            Ok((src, dst)) => exec(state, ram, mmio, step, Some(src), Some(dst)),
            Err(e) => Err(e),
        },
    )
}

/// STOS, LODS or SCAS: the one operand is the exit's.
#[inline(always)]
fn one<S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    step: &Step,
    src_seg: Segment,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (has_src, _, dst_access) = string::operands(step.op)?;
    let linear = if has_src {
        operand(state, mode, step, src_seg, Gpr::Rsi, AccessType::Read)?
    } else {
        operand(state, mode, step, Segment::Es, Gpr::Rdi, dst_access)?
    };
    if exit_gpa & 0xFFF != linear & 0xFFF {
        return None;
    }
    let (src, dst) = if has_src {
        (Some(exit_gpa), None)
    } else {
        (None, Some(exit_gpa))
    };
    Some(exec(state, ram, mmio, step, src, dst))
}

/// What a string instruction does besides its operands' addresses.
#[derive(Clone, Copy)]
struct Step {
    op: Mnemonic,
    /// The element size.
    size: u8,
    /// The address size.
    asz: u8,
    rflags: u64,
    next_rip: u64,
}

/// Runs one iteration of `step.op` on the source and destination at the
/// given guest-physical addresses (each within a page), then commits.
#[inline(always)]
fn exec<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    step: &Step,
    src: Option<u64>,
    dst: Option<u64>,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let size = step.size;
    let rflags = step.rflags;
    let n = usize::from(size);
    let rax = state.gpr(Gpr::Rax) & flags::size_mask(size);
    let mut new_flags = rflags;
    let mut loaded = None;
    match (step.op, src, dst) {
        (Mnemonic::Movs, Some(src), Some(dst)) => {
            let v = read_sized(ram, mmio, src, n)?;
            write_sized(ram, mmio, dst, n, v)?;
        }
        (Mnemonic::Stos, _, Some(dst)) => write_sized(ram, mmio, dst, n, rax)?,
        (Mnemonic::Lods, Some(src), _) => loaded = Some(read_sized(ram, mmio, src, n)?),
        (Mnemonic::Cmps, Some(src), Some(dst)) => {
            let a = read_sized(ram, mmio, src, n)?;
            let b = read_sized(ram, mmio, dst, n)?;
            new_flags = string::compare_flags(a, b, size, rflags);
        }
        (Mnemonic::Scas, _, Some(dst)) => {
            let b = read_sized(ram, mmio, dst, n)?;
            new_flags = string::compare_flags(rax, b, size, rflags);
        }
        _ => return Err(Error::InconsistentExit),
    }
    // Commit: rSI/rDI one element on, at the address size.
    let backwards = rflags & DF != 0;
    let s = u64::from(size);
    if src.is_some() {
        let rsi = state.gpr(Gpr::Rsi);
        let v = string::advance(rsi, s, backwards);
        state.set_gpr(Gpr::Rsi, merge_sized(rsi, step.asz, v));
    }
    if dst.is_some() {
        let rdi = state.gpr(Gpr::Rdi);
        let v = string::advance(rdi, s, backwards);
        state.set_gpr(Gpr::Rdi, merge_sized(rdi, step.asz, v));
    }
    if let Some(v) = loaded {
        state.set_gpr(Gpr::Rax, merge_sized(state.gpr(Gpr::Rax), size, v));
    }
    let new_flags = new_flags & !RF;
    if new_flags != rflags {
        state.set_rflags(new_flags);
    }
    state.set_rip(step.next_rip);
    Ok(Outcome::Done)
}
