//! Single (non-REP) string instructions on the fast path: MOVS, STOS,
//! LODS, CMPS and SCAS, every size, either direction, any address size
//! (67) and a source segment override.
//!
//! The general executor (`exec/string.rs`) is the reference and supplies
//! the semantics ([`string::operands`], [`string::advance`],
//! [`string::compare_flags`]): STOS, LODS and SCAS use the exit GPA for
//! their one memory operand; MOVS and CMPS translate both operands (the
//! exit does not say which of them is the device), each within its page,
//! as the general path's walk does ([`translate_pair`]; in the string lane
//! [`probe_pair`], the warm case alone, the rest left to the full fast
//! path).
//!
//! The checks that change nothing (segmentation, the page crossing, the
//! alignment check and, for one operand, the exit GPA's page offset) are
//! made first, for both operands: if any of them fails, the general path
//! takes the instruction and reports the fault. Then the translations, in
//! the general path's order (source, then destination), whose errors are
//! the general path's errors too. A REP/REPNE prefix is left to the general
//! path.
//!
//! Two entries: [`try_plain`] for an instruction without a prefix (nearly
//! all of them), out of line with the mode's sizes constants and one arm
//! per opcode, and [`try_exec`] after parsed prefixes, with the sizes
//! runtime values, which keeps that rarer path's code small.

use super::super::{alignment_faults, merge_sized, string};
use super::families::{probe_pair, translate_pair, within_page, write_sized};
use super::prefix::Prefixes;
use super::read_sized;
use super::stack::narrow_mode;
use super::{retire, retire_flagless};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::fetch_cache::FetchCache;
use crate::flags::{self, DF, RF};
use crate::mode::CpuMode;
use crate::segment::{linear_address_if_allowed, linear_address_in_page};
use crate::state::{CpuState, Gpr, Segment};

/// Tries the string instruction `opcode` (A4-A7, AA-AF) with no prefix,
/// the first byte of the exit's instruction. Out of line, one copy per
/// default address size and opcode, in which the element and address sizes
/// are constants: nearly every string instruction a guest runs has no
/// prefix, and the constant sizes save about 30 instructions of a STOSB.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub(super) fn try_plain<S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    exit_gpa: u64,
    opcode: u8,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // 64-bit and real mode (the BIOS, boot loaders) with the mode a
    // constant, which makes their segmentation checks simpler; the other
    // modes by their default address size.
    match mode {
        CpuMode::Long64 => {
            plain::<8, false, S, R, M>(state, CpuMode::Long64, ram, cache, mmio, exit_gpa, opcode)
        }
        CpuMode::Real => {
            plain::<2, false, S, R, M>(state, CpuMode::Real, ram, cache, mmio, exit_gpa, opcode)
        }
        _ if mode.default_address_size() == 4 => {
            plain::<4, false, S, R, M>(state, mode, ram, cache, mmio, exit_gpa, opcode)
        }
        _ => plain::<2, false, S, R, M>(state, mode, ram, cache, mmio, exit_gpa, opcode),
    }
}

/// [`try_plain`] for the memory assist's string lane (`lanes.rs`, an
/// out-of-line function of its own around it, one copy per default
/// address size `ADDR`, which is `mode`'s), inline. The mode is a
/// constant in each copy where `ADDR` leaves two that the segmentation
/// checks and the translations tell apart: 64-bit mode; compatibility or
/// protected mode ([`narrow_mode`]); real mode or another 16-bit one.
/// (With the mode a runtime value, each lane copy held all four of
/// [`try_plain`]'s and chose one by a jump on the mode.) In the lane,
/// which has the full fast path behind it, an operand that the
/// segmentation's common cases do not prove allowed is left to that path
/// rather than checked in full here ([`linear_address_in_page`]), and so
/// is a pair of translations the data cache's pair record does not serve.
#[inline(always)]
pub(super) fn lane<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    exit_gpa: u64,
    opcode: u8,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    match ADDR {
        8 if mode == CpuMode::Long64 => {
            plain::<8, true, S, R, M>(state, CpuMode::Long64, ram, cache, mmio, exit_gpa, opcode)
        }
        8 => None,
        4 => match narrow_mode::<4>(mode)? {
            CpuMode::Compat32 => plain::<4, true, S, R, M>(
                state,
                CpuMode::Compat32,
                ram,
                cache,
                mmio,
                exit_gpa,
                opcode,
            ),
            _ => plain::<4, true, S, R, M>(
                state,
                CpuMode::Protected32,
                ram,
                cache,
                mmio,
                exit_gpa,
                opcode,
            ),
        },
        _ if mode == CpuMode::Real => {
            plain::<2, true, S, R, M>(state, CpuMode::Real, ram, cache, mmio, exit_gpa, opcode)
        }
        _ => plain::<2, true, S, R, M>(state, mode, ram, cache, mmio, exit_gpa, opcode),
    }
}

/// [`try_plain`] in a mode whose default address size is `ADDR`: the
/// operand size is `ADDR`'s default one (2 with `ADDR` 2, else 4).
#[inline(always)]
fn plain<const ADDR: u8, const LANE: bool, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    exit_gpa: u64,
    opcode: u8,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let wide = if ADDR == 2 { 2 } else { 4 };
    let rflags = state.rflags();
    let step = |op, size| Step {
        op,
        size,
        asz: ADDR,
        rflags,
        len: 1,
        rip_mask: rip_mask::<ADDR>(),
        lane: LANE,
    };
    let ds = Segment::Ds;
    // One arm per opcode, so that each arm's mnemonic and size are
    // constants.
    match opcode {
        0xA4 => two::<ADDR, S, R, M>(state, mode, ram, cache, mmio, &step(Mnemonic::Movs, 1), ds),
        0xA5 => two::<ADDR, S, R, M>(
            state,
            mode,
            ram,
            cache,
            mmio,
            &step(Mnemonic::Movs, wide),
            ds,
        ),
        0xA6 => two::<ADDR, S, R, M>(state, mode, ram, cache, mmio, &step(Mnemonic::Cmps, 1), ds),
        0xA7 => two::<ADDR, S, R, M>(
            state,
            mode,
            ram,
            cache,
            mmio,
            &step(Mnemonic::Cmps, wide),
            ds,
        ),
        0xAA => one(
            state,
            mode,
            ram,
            mmio,
            exit_gpa,
            &step(Mnemonic::Stos, 1),
            ds,
        ),
        0xAB => one(
            state,
            mode,
            ram,
            mmio,
            exit_gpa,
            &step(Mnemonic::Stos, wide),
            ds,
        ),
        0xAC => one(
            state,
            mode,
            ram,
            mmio,
            exit_gpa,
            &step(Mnemonic::Lods, 1),
            ds,
        ),
        0xAD => one(
            state,
            mode,
            ram,
            mmio,
            exit_gpa,
            &step(Mnemonic::Lods, wide),
            ds,
        ),
        0xAE => one(
            state,
            mode,
            ram,
            mmio,
            exit_gpa,
            &step(Mnemonic::Scas, 1),
            ds,
        ),
        0xAF => one(
            state,
            mode,
            ram,
            mmio,
            exit_gpa,
            &step(Mnemonic::Scas, wide),
            ds,
        ),
        _ => None,
    }
}

/// Tries the string instruction whose opcode (A4-A7, AA-AF) is `opcode`,
/// after the prefixes `p`, and ends at `len` bytes.
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
    let rflags = state.rflags();
    let step = |op| Step {
        op,
        size,
        asz: p.address_size(ADDR),
        rflags,
        len: len as u64,
        rip_mask: rip_mask::<ADDR>(),
        lane: false,
    };
    let src_seg = p.segment.unwrap_or(Segment::Ds);
    // One arm per instruction, each with its mnemonic a constant: `two`,
    // `one` and `exec` are specialised for it (with the mnemonic a runtime
    // value, a MOVS costs about 30 instructions more). The size stays a
    // runtime value here, which keeps this rarer path's code small.
    match opcode {
        0xA4 | 0xA5 => two::<ADDR, S, R, M>(
            state,
            mode,
            ram,
            cache,
            mmio,
            &step(Mnemonic::Movs),
            src_seg,
        ),
        0xA6 | 0xA7 => two::<ADDR, S, R, M>(
            state,
            mode,
            ram,
            cache,
            mmio,
            &step(Mnemonic::Cmps),
            src_seg,
        ),
        0xAA | 0xAB => one(
            state,
            mode,
            ram,
            mmio,
            exit_gpa,
            &step(Mnemonic::Stos),
            src_seg,
        ),
        0xAC | 0xAD => one(
            state,
            mode,
            ram,
            mmio,
            exit_gpa,
            &step(Mnemonic::Lods),
            src_seg,
        ),
        0xAE | 0xAF => one(
            state,
            mode,
            ram,
            mmio,
            exit_gpa,
            &step(Mnemonic::Scas),
            src_seg,
        ),
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
    let linear = if step.lane {
        linear_address_in_page(state, mode, seg, offset, s, access)?
    } else {
        let linear = linear_address_if_allowed(state, mode, seg, offset, s, access)?;
        if !within_page(linear, s) {
            return None;
        }
        linear
    };
    if alignment_faults(state, step.rflags, linear, s) {
        return None;
    }
    Some(linear)
}

/// MOVS or CMPS: the checks that change nothing for both operands, then
/// the translations (source first) and the instruction.
#[inline(always)]
fn two<const ADDR: u8, S, R, M>(
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
    if step.lane {
        // The warm pair alone: anything else is the full fast path's.
        return Some(
            match probe_pair::<ADDR, S, R>(state, mode, ram, cache, src, dst, dst_access)? {
                Ok(Ok((src, dst))) => exec(state, ram, mmio, step, Some(src), Some(dst)),
                Ok(Err(_)) => return None,
                Err(e) => Err(e),
            },
        );
    }
    Some(
        match translate_pair(state, mode, ram, cache, src, dst, dst_access)? {
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
    /// The instruction's length, and the mask of RIP after it (the code
    /// size's): RIP is moved on at the end, where it is read, rather than
    /// carried from the start through the translations (the string lane
    /// spilled it, which cost the STOS, LODS and SCAS rows a store and a
    /// load too).
    len: u64,
    rip_mask: u64,
    /// In the string lane: see [`lane`].
    lane: bool,
}

/// The mask of RIP after an instruction in a mode whose default address
/// size is `ADDR` (what [`next_rip`](super::prefix::next_rip) wraps at).
#[inline(always)]
const fn rip_mask<const ADDR: u8>() -> u64 {
    match ADDR {
        8 => u64::MAX,
        4 => 0xFFFF_FFFF,
        _ => 0xFFFF,
    }
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
    // The flags of CMPS and SCAS; the moves leave them.
    let mut compared = None;
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
            compared = Some(string::compare_flags(a, b, size, rflags));
        }
        (Mnemonic::Scas, _, Some(dst)) => {
            let b = read_sized(ram, mmio, dst, n)?;
            compared = Some(string::compare_flags(rax, b, size, rflags));
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
    let next_rip = state.rip().wrapping_add(step.len) & step.rip_mask;
    // The operation, not the data, picks the tail.
    match compared {
        Some(new_flags) => retire(state, new_flags & !RF, next_rip),
        None => retire_flagless(state, rflags, next_rip),
    }
    Ok(Outcome::Done)
}
