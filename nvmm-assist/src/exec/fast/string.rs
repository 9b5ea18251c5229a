//! Single (non-REP) string instructions on the fast path: MOVS, STOS,
//! LODS, CMPS and SCAS, every size, either direction, any address size
//! (67) and a source segment override.
//!
//! The general executor (`exec/string.rs`) is the reference and supplies
//! the semantics ([`string::operands`], [`string::advance`],
//! [`string::compare_flags`]): STOS, LODS and SCAS use the exit GPA for
//! their one memory operand; MOVS and CMPS translate both operands through
//! the page walker ([`access::resolve`]), as the general path does, since
//! the exit does not say which of them is the device. A REP/REPNE prefix,
//! and anything that would fault or needs the walker for a one-operand
//! form (a page crossing), is left to the general path.

use super::super::{alignment_faults, merge_sized, string};
use super::prefix::Prefixes;
use super::{read_sized, write};
use crate::Outcome;
use crate::access::{self, AccessType, PhysRange};
use crate::bus::{GuestRam, MmioBus};
use crate::decode::Mnemonic;
use crate::error::{Error, Exception};
use crate::fetch_cache::FetchCache;
use crate::flags::{self, DF, RF};
use crate::mode::CpuMode;
use crate::segment::linear_address;
use crate::state::{CpuState, Gpr, Segment};

/// Where one operand's element is.
#[derive(Clone, Copy)]
enum Place {
    /// At the exit GPA (the one operand of STOS, LODS, SCAS).
    Exit(u64),
    /// Translated through the page walker (MOVS, CMPS).
    Walked(PhysRange),
}

/// Reads `n` (1, 2, 4 or 8) bytes at `place`, in a buffer of that width.
#[inline(always)]
fn load<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    place: &Place,
    n: usize,
) -> Result<u64, Error> {
    match place {
        Place::Exit(gpa) => read_sized(ram, mmio, *gpa, n),
        Place::Walked(range) => {
            let mut buf = [0u8; 8];
            match n {
                1 => {
                    let mut b = [0u8; 1];
                    access::read_phys(ram, mmio, range, &mut b)?;
                    buf[0] = b[0];
                }
                2 => {
                    let mut b = [0u8; 2];
                    access::read_phys(ram, mmio, range, &mut b)?;
                    buf[..2].copy_from_slice(&b);
                }
                4 => {
                    let mut b = [0u8; 4];
                    access::read_phys(ram, mmio, range, &mut b)?;
                    buf[..4].copy_from_slice(&b);
                }
                _ => access::read_phys(ram, mmio, range, &mut buf)?,
            }
            Ok(u64::from_le_bytes(buf))
        }
    }
}

/// Writes the low `n` bytes of `value` at `place`.
#[inline(always)]
fn store<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    place: &Place,
    n: usize,
    value: u64,
) -> Result<(), Error> {
    let data = value.to_le_bytes();
    let data = data.get(..n).unwrap_or(&[]);
    match place {
        Place::Exit(gpa) => write(ram, mmio, *gpa, data),
        Place::Walked(range) => access::write_phys(ram, mmio, range, data),
    }
}

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
    let op = match opcode {
        0xA4 | 0xA5 => Mnemonic::Movs,
        0xA6 | 0xA7 => Mnemonic::Cmps,
        0xAA | 0xAB => Mnemonic::Stos,
        0xAC | 0xAD => Mnemonic::Lods,
        0xAE | 0xAF => Mnemonic::Scas,
        _ => return None,
    };
    let (has_src, has_dst, dst_access) = string::operands(op)?;
    let size = if opcode & 1 == 0 { 1 } else { p.v_size(ADDR) };
    let s = u64::from(size);
    let asz = p.address_size(ADDR);
    let amask = flags::size_mask(asz);
    let rflags = state.rflags();
    // Segmentation of both operands first, as the general path does.
    let src = if has_src {
        let seg = p.segment.unwrap_or(Segment::Ds);
        let offset = state.gpr(Gpr::Rsi) & amask;
        Some(linear_address(state, mode, seg, offset, s, AccessType::Read).ok()?)
    } else {
        None
    };
    let dst = if has_dst {
        let offset = state.gpr(Gpr::Rdi) & amask;
        Some(linear_address(state, mode, Segment::Es, offset, s, dst_access).ok()?)
    } else {
        None
    };
    // Then each operand's translation and alignment check, in the same
    // order: a page-walk error is the general path's error too.
    let mut place =
        |state: &S, ram: &mut R, linear: u64, access: AccessType| -> Result<Option<Place>, Error> {
            let place = if has_src && has_dst {
                {
                    let mut range = PhysRange::default();
                    let len = usize::from(size);
                    super::stack::walk_into(state, ram, cache, linear, len, access, &mut range)?;
                    Place::Walked(range)
                }
            } else {
                if (linear & 0xFFF) + s > 0x1000 || exit_gpa & 0xFFF != linear & 0xFFF {
                    return Ok(None);
                }
                Place::Exit(exit_gpa)
            };
            if alignment_faults(state, rflags, linear, s) {
                // A walked operand faults here as on the general path
                // (which would walk it again); a one-operand form bails.
                return if has_src && has_dst {
                    Err(Exception::AlignmentCheck.into())
                } else {
                    Ok(None)
                };
            }
            Ok(Some(place))
        };
    let mut places = [None, None];
    for (slot, (linear, access)) in places
        .iter_mut()
        .zip([(src, AccessType::Read), (dst, dst_access)])
    {
        if let Some(linear) = linear {
            match place(state, ram, linear, access) {
                Ok(Some(p)) => *slot = Some(p),
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
    let [src, dst] = places;
    let next_rip = super::prefix::next_rip::<ADDR, S>(state, len);
    Some(exec(
        state, ram, mmio, op, size, asz, rflags, src, dst, next_rip,
    ))
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn exec<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    op: Mnemonic,
    size: u8,
    asz: u8,
    rflags: u64,
    src: Option<Place>,
    dst: Option<Place>,
    next_rip: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let n = usize::from(size);
    let mask = flags::size_mask(size);
    let rax = state.gpr(Gpr::Rax) & mask;
    let mut new_flags = rflags;
    let mut loaded = None;
    match (op, &src, &dst) {
        (Mnemonic::Movs, Some(src), Some(dst)) => {
            let v = load(ram, mmio, src, n)?;
            store(ram, mmio, dst, n, v)?;
        }
        (Mnemonic::Stos, _, Some(dst)) => store(ram, mmio, dst, n, rax)?,
        (Mnemonic::Lods, Some(src), _) => loaded = Some(load(ram, mmio, src, n)?),
        (Mnemonic::Cmps, Some(src), Some(dst)) => {
            let a = load(ram, mmio, src, n)?;
            let b = load(ram, mmio, dst, n)?;
            new_flags = string::compare_flags(a, b, size, rflags);
        }
        (Mnemonic::Scas, _, Some(dst)) => {
            let b = load(ram, mmio, dst, n)?;
            new_flags = string::compare_flags(rax, b, size, rflags);
        }
        _ => return Err(Error::InconsistentExit),
    }
    // Commit: rSI/rDI one element on, at the address size.
    let backwards = rflags & DF != 0;
    let s = u64::from(size);
    if src.is_some() {
        let v = string::advance(state.gpr(Gpr::Rsi), s, backwards);
        state.set_gpr(Gpr::Rsi, merge_sized(state.gpr(Gpr::Rsi), asz, v));
    }
    if dst.is_some() {
        let v = string::advance(state.gpr(Gpr::Rdi), s, backwards);
        state.set_gpr(Gpr::Rdi, merge_sized(state.gpr(Gpr::Rdi), asz, v));
    }
    if let Some(v) = loaded {
        state.set_gpr(Gpr::Rax, merge_sized(state.gpr(Gpr::Rax), size, v));
    }
    let new_flags = new_flags & !RF;
    if new_flags != rflags {
        state.set_rflags(new_flags);
    }
    state.set_rip(next_rip);
    Ok(Outcome::Done)
}
