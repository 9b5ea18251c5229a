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
    let first = *bytes.first()?;
    match first {
        // The bytes an SSE move starts with: its own prefix scan first
        // (sse.rs), which declines anything else. Nothing else this module
        // takes starts with 0F. A REX prefix counts only before 0F (a REX
        // then a legacy prefix is ignored; such bytes go the other way, to
        // the general path), so the many REX-prefixed integer forms skip
        // the scan.
        0x0F | 0x66 | 0xF2 | 0xF3 | 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x40..=0x4F
            if first & 0xF0 != 0x40 || bytes.get(1) == Some(&0x0F) =>
        {
            match sse::try_prefixed(state, mode, ram, mmio, exit_gpa, bytes) {
                Some(result) => result,
                None if first == 0x0F => None,
                None => filtered(state, mode, ram, cache, mmio, exit_gpa, bytes),
            }
        }
        0x40..=0x4F | 0x67 | 0xF0 | 0xA4..=0xA7 | 0xAA..=0xAF | 0xFF | 0x8F => {
            filtered(state, mode, ram, cache, mmio, exit_gpa, bytes)
        }
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
        // The SSE moves are sse::try_prefixed's, which sees every one
        // this path could take (with a 67 prefix, which brings them here,
        // they are the general path's).
        0xA4..=0xA7 | 0xAA..=0xAF | 0xFF | 0x8F => true,
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
