//! The SSE moves with a memory operand at the exit GPA on the fast path:
//! MOVD/MOVQ (66 0F 6E/7E, 66 REX.W 0F 6E/7E, F3 0F 7E, 66 0F D6),
//! MOVDQA/MOVDQU (66/F3 0F 6F/7F), MOVAPS/MOVUPS (0F 28/29, 0F 10/11),
//! MOVAPD/MOVUPD (66 0F 28/29, 66 0F 10/11) and MOVNTDQ/MOVNTPS/MOVNTPD
//! (66 0F E7, 0F 2B, 66 0F 2B).
//!
//! The mandatory prefix is the general decoder's (the last of F2/F3, else
//! 66); the width, the alignment rule and the transferred bits are the
//! general executor's ([`sse::width`], [`sse::aligned`],
//! [`sse::value_mask`]). Anything that would fault (segment, alignment
//! `#GP`, `#AC`), a page-crossing access, a mismatching exit GPA, a 67
//! prefix, a state without XMM registers: `None`, the general path's.

use super::super::{alignment_faults, sse};
use super::prefix::{Prefixes, mem_operand};
use super::{read, read_sized, write};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::flags::RF;
use crate::mode::CpuMode;
use crate::segment::linear_address;
use crate::state::CpuState;

/// The SSE move selected by the opcode byte after 0F and the mandatory
/// prefix, and whether it loads (XMM from memory) or stores.
#[inline(always)]
fn form(op2: u8, p: &Prefixes) -> Option<(Mnemonic, bool)> {
    use Mnemonic as M;
    // The last of F2/F3, else 66, else none.
    let mandatory = match p.rep {
        0xF3 => 3,
        0xF2 => 2,
        _ if p.opsize => 1,
        _ => 0,
    };
    Some(match (op2, mandatory) {
        (0x10, 0) => (M::Movups, true),
        (0x10, 1) => (M::Movupd, true),
        (0x11, 0) => (M::Movups, false),
        (0x11, 1) => (M::Movupd, false),
        (0x28, 0) => (M::Movaps, true),
        (0x28, 1) => (M::Movapd, true),
        (0x29, 0) => (M::Movaps, false),
        (0x29, 1) => (M::Movapd, false),
        (0x2B, 0) => (M::Movntps, false),
        (0x2B, 1) => (M::Movntpd, false),
        (0x6E, 1) if p.rex_w() => (M::Movq, true),
        (0x6E, 1) => (M::Movd, true),
        (0x6F, 1) => (M::Movdqa, true),
        (0x6F, 3) => (M::Movdqu, true),
        (0x7E, 1) if p.rex_w() => (M::Movq, false),
        (0x7E, 1) => (M::Movd, false),
        (0x7E, 3) => (M::Movq, true),
        (0x7F, 1) => (M::Movdqa, false),
        (0x7F, 3) => (M::Movdqu, false),
        (0xD6, 1) => (M::Movq, false),
        (0xE7, 1) => (M::Movntdq, false),
        _ => return None,
    })
}

/// Tries an SSE move whose second opcode byte (after 0F) is `bytes[i]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn try_exec<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    p: &Prefixes,
    i: usize,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    if p.addrsize {
        return None;
    }
    let (mnemonic, load) = form(*bytes.get(i)?, p)?;
    let m = mem_operand::<ADDR, S>(state, bytes, i + 1, p)?;
    let index = m.reg & 15;
    let current = state.xmm(index)?;
    let size = sse::width(mnemonic);
    let size64 = u64::from(size);
    let access = if load {
        AccessType::Read
    } else {
        AccessType::Write
    };
    let linear = linear_address(state, mode, m.segment, m.offset, size64, access).ok()?;
    if (sse::aligned(mnemonic) && linear & 15 != 0)
        || (linear & 0xFFF) + size64 > 0x1000
        || exit_gpa & 0xFFF != linear & 0xFFF
        || (size <= 8 && alignment_faults(state, state.rflags(), linear, size64))
    {
        return None;
    }
    let mask = sse::value_mask(size);
    Some(exec(
        state, ram, mmio, exit_gpa, index, current, size, load, mask, m.next_rip,
    ))
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn exec<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    index: u8,
    current: u128,
    size: u8,
    load: bool,
    mask: u128,
    next_rip: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    if load {
        let value = if size == 16 {
            let mut buf = [0u8; 16];
            read(ram, mmio, gpa, &mut buf)?;
            u128::from_le_bytes(buf)
        } else {
            u128::from(read_sized(ram, mmio, gpa, usize::from(size))?)
        };
        state.set_xmm(index, value & mask);
    } else {
        let data = (current & mask).to_le_bytes();
        write(ram, mmio, gpa, data.get(..usize::from(size)).unwrap_or(&[]))?;
    }
    let rflags = state.rflags();
    if rflags & RF != 0 {
        state.set_rflags(rflags & !RF);
    }
    state.set_rip(next_rip);
    Ok(Outcome::Done)
}
