//! The fast path's families beyond MOV and the ALU group: the SSE moves
//! ([`sse`]), single string instructions
//! ([`string`]) and PUSH/POP m ([`stack`]),
//! tried when the MOV/ALU decoder declined the bytes.

use super::prefix::{self, Prefixes};
use super::{sse, stack, string};
use crate::Outcome;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::fetch_cache::FetchCache;
use crate::mode::CpuMode;
use crate::state::CpuState;

/// Tries the forms of this module's families in a mode whose default
/// address size is `ADDR`, the prefixes `p` parsed and the opcode at
/// `bytes[i]`. `None`: not handled, nothing done.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn try_mode<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
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
    match *bytes.get(i)? {
        0x0F => sse::try_exec::<ADDR, S, R, M>(state, mode, ram, mmio, exit_gpa, bytes, p, i + 1),
        op @ (0xA4..=0xA7 | 0xAA..=0xAF) => {
            string::try_exec::<ADDR, S, R, M>(state, mode, ram, cache, mmio, exit_gpa, p, op, i + 1)
        }
        0xFF | 0x8F => stack::try_exec::<ADDR, S, R, M>(state, mode, ram, cache, mmio, bytes, p, i),
        _ => None,
    }
}

/// [`try_mode`] for `mode`, out of line (one copy per state and bus type).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn run<S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
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
    match mode.default_address_size() {
        8 => try_mode::<8, S, R, M>(state, mode, ram, cache, mmio, exit_gpa, bytes, p, i),
        4 => try_mode::<4, S, R, M>(state, mode, ram, cache, mmio, exit_gpa, bytes, p, i),
        _ => try_mode::<2, S, R, M>(state, mode, ram, cache, mmio, exit_gpa, bytes, p, i),
    }
}

/// Tries the SSE moves, single string instructions and PUSH/POP m on a
/// memory exit in `mode` with instruction `bytes`. Inline, one look at the
/// first byte: the general path's forms that start with neither a prefix
/// nor one of these opcodes (most of them) pay for no more.
#[inline(always)]
pub(super) fn try_exec<S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    match *bytes.first()? {
        0x26
        | 0x2E
        | 0x36
        | 0x3E
        | 0x64..=0x67
        | 0xF0
        | 0xF2
        | 0xF3
        | 0x40..=0x4F
        | 0x0F
        | 0xA4..=0xA7
        | 0xAA..=0xAF
        | 0xFF
        | 0x8F => filtered(state, mode, ram, cache, mmio, exit_gpa, bytes),
        _ => None,
    }
}

/// [`try_exec`] past its first-byte filter: the prefixes, then the opcode.
#[inline(always)]
fn filtered<S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (p, i) = prefix::parse(bytes, mode.is_64bit())?;
    let ours = match *bytes.get(i)? {
        0x0F => matches!(
            bytes.get(i + 1),
            Some(0x10 | 0x11 | 0x28 | 0x29 | 0x2B | 0x6E | 0x6F | 0x7E | 0x7F | 0xD6 | 0xE7)
        ),
        0xA4..=0xA7 | 0xAA..=0xAF => true,
        // PUSH m is FF /6 and POP m 8F /0: FF /0 /1 (INC, DEC) are the
        // integer decoder's, tried next.
        0xFF => matches!(bytes.get(i + 1), Some(m) if (m >> 3) & 7 == 6),
        0x8F => matches!(bytes.get(i + 1), Some(m) if (m >> 3) & 7 == 0),
        _ => false,
    };
    if !ours {
        return None;
    }
    run(state, mode, ram, cache, mmio, exit_gpa, bytes, &p, i)
}

#[cfg(test)]
#[path = "families_tests.rs"]
mod tests;
