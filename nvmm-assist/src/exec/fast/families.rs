//! The fast path's families beyond MOV and the ALU group: the SSE moves
//! ([`sse`]), single string instructions
//! ([`string`]) and PUSH/POP m ([`stack`]),
//! tried when the MOV/ALU decoder declined the bytes.
//!
//! Also the pieces the two-operand forms (MOVS, CMPS, PUSH m, POP m)
//! share: [`translate_pair`], the general path's two walks without its
//! ranges, and [`write_sized`].

use super::prefix::{self, Prefixes};
use super::{sse, stack, string, write};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::data_cache::PairProbe;
use crate::error::Error;
use crate::fetch_cache::FetchCache;
use crate::mode::CpuMode;
use crate::state::CpuState;
use crate::translate;

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
        0xFF | 0x8F => {
            stack::try_exec::<ADDR, false, S, R, M>(state, mode, ram, cache, mmio, bytes, p, i)
        }
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
        // The opcode first, no prefix (nearly every string and stack
        // instruction): nothing to parse.
        0xA4..=0xA7 | 0xAA..=0xAF => {
            string::try_plain(state, mode, ram, cache, mmio, exit_gpa, first)
        }
        // PUSH m is FF /6 and POP m 8F /0: FF /0 /1 (INC, DEC) are the
        // integer decoder's, tried next.
        0xFF | 0x8F if matches!(bytes.get(1), Some(m) if (m >> 3) & 7 == if first == 0xFF { 6 } else { 0 }) => {
            stack::try_plain(state, mode, ram, cache, mmio, bytes)
        }
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
        0x40..=0x4F | 0x67 | 0xF0 => filtered(state, mode, ram, cache, mmio, exit_gpa, bytes),
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

/// The guest-physical addresses of a source (read) at `src` and a
/// destination (`dst_access`) at `dst`, each within one page, translated
/// in that order: what the general path's walks of MOVS, CMPS and PUSH/POP
/// m ([`access::resolve_cached`](crate::access::resolve_cached)) give for
/// them, the same addresses or the first error, from the same walks and
/// the same guest-RAM reads. With paging off the addresses themselves;
/// else the VCPU's cached translations: the data
/// cache's `translate_pair` (exact, as [`FetchCache::translate_data`]),
/// whose second re-validation reads only the entries the first did not
/// (the general path shares them the same way).
///
/// In real mode (a constant in the real-mode copies of the forms) paging
/// is off, CR0.PG needing CR0.PE: that copy has no paged path, whose
/// inlined code cost the real-mode MOVSB and CMPSB 9-15 instructions (a
/// state that says real mode with paging on is left to the general path,
/// `None`).
#[inline(always)]
pub(super) fn translate_pair<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    src: u64,
    dst: u64,
    dst_access: AccessType,
) -> Option<Result<(u64, u64), Error>> {
    let unpaged = translate::unpaged(state);
    if unpaged {
        return Some(Ok((src & 0xFFFF_FFFF, dst & 0xFFFF_FFFF)));
    }
    if mode == CpuMode::Real {
        return None;
    }
    Some(translate_pair_paged(
        state, ram, cache, src, dst, dst_access,
    ))
}

/// [`translate_pair`]'s warm case alone, for the lanes (which have the
/// full fast path behind them): the same addresses when paging is off or
/// the data cache's pair record serves both operands (its `probe_pair`:
/// the same check, reads and hits as [`translate_pair`] there), a bus
/// error as is, and `Some(Ok(Err(_)))` where [`translate_pair`] would go
/// on to the slot path or a walk: the lane then declines, having changed
/// nothing (the probe's reads of page-table entries are plain RAM reads),
/// and the full fast path translates from the start. That keeps every
/// call the lane could come back from off its warm path, whose values
/// then stay in registers: the stack and string lanes spilled a dozen
/// around the slot path's calls (measured: 5-18 instructions per PUSH m,
/// POP m, MOVS and CMPS in the paged modes). `mode` is `state`'s, and
/// `ADDR` its default address size.
#[inline(always)]
pub(super) fn probe_pair<const ADDR: u8, S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    src: u64,
    dst: u64,
    dst_access: AccessType,
) -> Option<PairProbe> {
    // 64-bit mode, a constant in the 64-bit copies, has paging on: EFER.LMA,
    // which it needs, needs CR0.PG. (Measured: compatibility mode too took
    // 2-3 off its MOVS and CMPS but cost its PUSH m and POP m 3, by
    // register allocation; in the 16-bit copies, where the mode is a
    // runtime value, the test cost 2-3.)
    let long = ADDR == 8 && mode == CpuMode::Long64;
    if !long && translate::unpaged(state) {
        return Some(Ok(Ok((src & 0xFFFF_FFFF, dst & 0xFFFF_FFFF))));
    }
    if mode == CpuMode::Real {
        return None;
    }
    Some(cache.data.probe_pair(state, ram, src, dst, dst_access))
}

/// [`translate_pair`] with paging on. Inline in each form's out-of-line
/// entry: as a call it returned its result through memory, 22-45
/// instructions more per pair.
#[inline(always)]
fn translate_pair_paged<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    ram: &mut R,
    cache: &mut FetchCache,
    src: u64,
    dst: u64,
    dst_access: AccessType,
) -> Result<(u64, u64), Error> {
    cache.data.translate_pair(state, ram, src, dst, dst_access)
}

/// Writes the low `n` (1, 2, 4 or 8) bytes of `value` at `gpa` (within a
/// page) from a buffer of exactly that width: `read_sized`'s
/// counterpart. A slice of a runtime length would make the RAM's copy a
/// call to `memcpy`.
#[inline(always)]
pub(super) fn write_sized<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    n: usize,
    value: u64,
) -> Result<(), Error> {
    match n {
        1 => write(ram, mmio, gpa, &[value as u8]),
        2 => write(ram, mmio, gpa, &(value as u16).to_le_bytes()),
        4 => write(ram, mmio, gpa, &(value as u32).to_le_bytes()),
        _ => write(ram, mmio, gpa, &value.to_le_bytes()),
    }
}

/// Whether `size` bytes at `linear` stay within one page.
#[inline(always)]
pub(super) fn within_page(linear: u64, size: u64) -> bool {
    (linear & 0xFFF) + size <= 0x1000
}

#[cfg(test)]
#[path = "families_tests.rs"]
mod tests;
