//! The first instruction fetch of a memory exit that carries no
//! instruction bytes (VMX; SVM without DecodeAssists): the bytes at CS:RIP
//! up to the first page end, CS-limit end or the 15-byte maximum,
//! whichever comes first, in one segmentation check, one translation
//! (through the VCPU's [`FetchCache`]) and one read.
//!
//! It fetches what [`access::fetch`](crate::access) of `0..next_fetch(0)`
//! would, without that function's general machinery: the span never
//! crosses a page, so there is one fragment, and a full 15-byte span is
//! read with a fixed-size buffer. Later fetches of a longer instruction
//! (one that crosses that edge) go through `access::fetch`.
//!
//! The usual fetch ([`quick`]: 15 bytes clear of both edges, a plain CS,
//! paging off or a cached translation proved current) is inline in the
//! memory assist's fetch path and keeps few values live; everything else
//! (an edge, a CS check that may fault, a walk) is out of line, so that
//! the usual one's registers are not spilled around it.

use crate::access::{AccessType, PAGE_SIZE};
use crate::bus::{GuestRam, MmioBus, RamStatus};
use crate::error::Error;
use crate::fetch_cache::FetchCache;
use crate::mode::CpuMode;
use crate::segment::{is_canonical, linear_address};
use crate::state::{CpuState, Segment, SegmentAttributes};

/// The longest instruction.
const MAX_LEN: u64 = 15;

const CR0_PG: u64 = 1 << 31;

/// Segment type bit 3: code (as opposed to data).
const TYPE_CODE: u8 = 1 << 3;

/// Fetches the bytes at CS:RIP before the first page end, CS-limit end or
/// the 15-byte mark into `buf`, and returns how many that is (1 to 15).
///
/// Faults as the CPU does for a fetch of those bytes: `#GP(0)` when RIP is
/// past the CS limit (or not canonical), the walk's `#PF` for the page.
///
/// `ADDR` is `mode`'s default address size (the caller's copy per size),
/// which settles at compile time whether the mode is 64-bit mode (8), a
/// 32-bit protected or compatibility mode (4), or may be real or
/// virtual-8086 mode (2).
#[inline(always)]
pub(crate) fn fetch_first<const ADDR: u8, S, R, M>(
    state: &S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    cache: &mut FetchCache,
    buf: &mut [u8; 15],
) -> Result<usize, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    match quick::<ADDR, S, R>(state, mode, ram, cache, buf)? {
        Quick::Done => Ok(buf.len()),
        Quick::Mmio(gpa) => {
            read_mmio(mmio, gpa, buf)?;
            Ok(buf.len())
        }
        Quick::Walk(linear) => fetch_walk(state, ram, mmio, cache, linear, buf),
        Quick::General => fetch_general::<ADDR, S, R, M>(state, mode, ram, mmio, cache, buf),
    }
}

/// What [`quick`] did.
pub(crate) enum Quick {
    /// The 15 bytes are in the buffer.
    Done,
    /// The 15 bytes are at this guest-physical address, which is not RAM
    /// (code in a ROM or flash device): the caller reads them from the
    /// MMIO bus, out of line, so that the usual fetch holds no register
    /// for the bus.
    Mmio(u64),
    /// The fetch of 15 bytes at this linear address passed its
    /// segmentation check, and its translation is to be walked (the cache
    /// had none that its re-validation proved current).
    Walk(u64),
    /// Anything else: the full fetch decides.
    General,
}

/// The usual fetch, inline and small (few live values, so that the
/// caller's registers hold them without spills): 15 bytes that stop
/// short of the page and CS-limit edges, through a plain CS (the inline
/// check of [`span`]) and, with paging on, a cached translation that its
/// re-validation proves current ([`FetchCache::lookup`]).
/// [`Quick::General`]: anything else (an edge within the 15 bytes, a CS
/// check that may fault), which [`fetch_general`] then fetches from the
/// start; a translation the cache
/// cannot prove current goes to [`fetch_walk`], without a second
/// re-validation, and code outside RAM to the MMIO bus ([`Quick::Mmio`]).
/// An error here is the one the full fetch gives: an entry no longer RAM,
/// or a failed read.
#[inline(always)]
pub(crate) fn quick<const ADDR: u8, S, R>(
    state: &S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    buf: &mut [u8; 15],
) -> Result<Quick, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
{
    let Some(linear) = quick_span::<ADDR, S>(state, mode) else {
        return Ok(Quick::General);
    };
    let gpa = if state.cr0() & CR0_PG == 0 {
        // No paging: the linear address is the physical one.
        linear & 0xFFFF_FFFF
    } else {
        match cache.lookup(state, ram, linear)? {
            Some(gpa) => gpa,
            None => return Ok(Quick::Walk(linear)),
        }
    };
    if ram.read(gpa, buf)? == RamStatus::NotRam {
        return Ok(Quick::Mmio(gpa));
    }
    Ok(Quick::Done)
}

/// [`quick`]'s fetch when the translation is to be walked: the walk (its
/// record refreshes the cache), then the read of the 15 bytes.
#[inline(never)]
pub(crate) fn fetch_walk<S, R, M>(
    state: &S,
    ram: &mut R,
    mmio: &mut M,
    cache: &mut FetchCache,
    linear: u64,
    buf: &mut [u8; 15],
) -> Result<usize, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let gpa = cache.translate_fetch_miss(state, ram, linear)?;
    read_span(ram, mmio, gpa, buf, MAX_LEN)
}

/// Code outside RAM (a ROM or flash device): out of line, so that the
/// usual fetch keeps no register for the MMIO bus.
#[inline(never)]
pub(crate) fn read_mmio<M: MmioBus + ?Sized>(
    mmio: &mut M,
    gpa: u64,
    buf: &mut [u8; 15],
) -> Result<(), Error> {
    mmio.read(gpa, buf)?;
    Ok(())
}

/// The linear address of CS:RIP when the fetch of 15 bytes there passes
/// the segmentation check and reaches neither a page end nor the CS-limit
/// end (what [`span`] finds with a room of 15 or more), else `None`.
#[inline(always)]
fn quick_span<const ADDR: u8, S: CpuState + ?Sized>(state: &S, mode: CpuMode) -> Option<u64> {
    let rip = state.rip();
    // The last byte's page offset: the 15 bytes stay within the page.
    const LAST: u64 = PAGE_SIZE - MAX_LEN;
    if ADDR == 8 {
        // As `span`: a RIP canonical at 48 bits is the whole check.
        return (is_canonical(rip, 48) && rip & (PAGE_SIZE - 1) <= LAST).then_some(rip);
    }
    let real_or_v86 = ADDR == 2 && mode.is_real_or_v86();
    let offset = rip & 0xFFFF_FFFF;
    let cs = state.segment(Segment::Cs);
    let linear = cs.base.wrapping_add(offset) & 0xFFFF_FFFF;
    // The 15 bytes within the limit: offset + 14 <= limit (no overflow:
    // both are below 2^32).
    let within = offset + (MAX_LEN - 1) <= u64::from(cs.limit);
    (within && linear & (PAGE_SIZE - 1) <= LAST && (real_or_v86 || fetchable(cs.attributes)))
        .then_some(linear)
}

/// The fetch of [`fetch_first`] in full: the segmentation check, the
/// translation (through the cache) and the read of up to 15 bytes. Out of
/// line: the usual case is [`quick`].
#[inline(never)]
pub(crate) fn fetch_general<const ADDR: u8, S, R, M>(
    state: &S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    cache: &mut FetchCache,
    buf: &mut [u8; 15],
) -> Result<usize, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (linear, room) = span::<ADDR, S>(state, mode)?;
    if state.cr0() & CR0_PG == 0 {
        // No paging: the linear address is the physical one.
        return read_span(ram, mmio, linear & 0xFFFF_FFFF, buf, room);
    }
    let gpa = match cache.lookup(state, ram, linear)? {
        Some(gpa) => gpa,
        None => cache.translate_fetch_miss(state, ram, linear)?,
    };
    read_span(ram, mmio, gpa, buf, room)
}

/// The linear address of CS:RIP and the room there: how many bytes lie
/// before the first page end or CS-limit end (at least 1; the fetch takes
/// up to 15 of them), as mem.rs's `next_fetch` computes it for `have = 0`
/// (a limit already passed, no room, does not shorten the span: the
/// segmentation check faults instead), after the segmentation check of the
/// fetch. `ADDR` is `mode`'s default address size (see [`fetch_first`]).
#[inline(always)]
fn span<const ADDR: u8, S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
) -> Result<(u64, u64), Error> {
    debug_assert_eq!(ADDR, mode.default_address_size());
    // Only 64-bit mode has 8-byte default addressing, and real and
    // virtual-8086 mode have 2-byte.
    let long = ADDR == 8;
    let real_or_v86 = ADDR == 2 && mode.is_real_or_v86();
    let rip = state.rip();
    if long {
        let room = PAGE_SIZE - (rip & (PAGE_SIZE - 1));
        // The span stays within RIP's page and the canonical boundaries
        // are page-aligned: RIP canonical at 48 bits makes the whole span
        // canonical, which is all `linear_address` checks in 64-bit mode
        // (CS base 0, no limit). Otherwise (LA57, or a fault) the full
        // check decides.
        let linear = if is_canonical(rip, 48) {
            rip
        } else {
            let want = room.min(MAX_LEN);
            linear_address(state, mode, Segment::Cs, rip, want, AccessType::Execute)?
        };
        return Ok((linear, room));
    }
    let offset = rip & 0xFFFF_FFFF;
    let cs = state.segment(Segment::Cs);
    let linear = cs.base.wrapping_add(offset) & 0xFFFF_FFFF;
    let page_room = PAGE_SIZE - (linear & (PAGE_SIZE - 1));
    let limit = u64::from(cs.limit);
    if offset <= limit && (real_or_v86 || fetchable(cs.attributes)) {
        // What `linear_address` finds for these bytes, without its general
        // machinery: the span ends at the limit, so its last byte is
        // within it whatever the limit (a 4 GiB one checks the first byte
        // only); in real and virtual-8086 mode the limit is the only check,
        // elsewhere CS must also be a present code segment (never
        // expand-down). Anything else takes the full check, which faults.
        return Ok((linear, page_room.min(limit + 1 - offset)));
    }
    // The fetch faults (offset past the limit, or a CS that cannot
    // execute): the full check names the fault. Past the limit there is
    // no room, which does not shorten the span (the check faults instead).
    let want = page_room.min(MAX_LEN);
    let linear = linear_address(state, mode, Segment::Cs, offset, want, AccessType::Execute)?;
    Ok((linear, page_room))
}

/// Whether CS, outside real and virtual-8086 mode, allows an instruction
/// fetch within its limit: present, a code or data descriptor (S = 1) and
/// a code type (what `linear_address` requires of an execute access).
#[inline(always)]
fn fetchable(cs: SegmentAttributes) -> bool {
    cs.present() && cs.s() && cs.typ() & TYPE_CODE != 0
}

/// Reads the first `room` bytes at `gpa` (within one page), 15 at most,
/// into `buf` and returns how many that is.
#[inline(always)]
fn read_span<R, M>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    buf: &mut [u8; 15],
    room: u64,
) -> Result<usize, Error>
where
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    if room >= MAX_LEN {
        // The usual case, with a fixed-size buffer (a RAM implementation
        // inlined here copies it without a variable-length copy).
        read_code(ram, mmio, gpa, buf)?;
        return Ok(buf.len());
    }
    // room < 15.
    let want = room as usize;
    read_short(ram, mmio, gpa, buf, want)?;
    Ok(want)
}

/// [`read_span`] of fewer than 15 bytes (the span ends at a page or CS
/// limit), kept apart so that it does not merge with the fixed-size read.
#[inline(never)]
fn read_short<R, M>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    buf: &mut [u8; 15],
    want: usize,
) -> Result<(), Error>
where
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let part = buf.get_mut(..want).ok_or(Error::InconsistentExit)?;
    read_code(ram, mmio, gpa, part)
}

/// Reads instruction bytes at `gpa` from RAM or, where it is not RAM (code
/// in a ROM or flash device), from the MMIO bus.
#[inline(always)]
fn read_code<R, M>(ram: &mut R, mmio: &mut M, gpa: u64, buf: &mut [u8]) -> Result<(), Error>
where
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    if ram.read(gpa, buf)? == RamStatus::NotRam {
        mmio.read(gpa, buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Registers;

    const CR4_LA57: u64 = 1 << 12;
    use crate::testutil::TEST_VENDOR;

    /// What `span` computes, the general way: the room before the first
    /// page end, CS-limit end (none when RIP is past it) or the 15-byte
    /// mark, and `linear_address`'s full check of an execute access of
    /// that many bytes through CS.
    fn reference(state: &Registers, mode: CpuMode) -> Result<(u64, usize), Error> {
        let rip = state.rip;
        let cs = state.segment(Segment::Cs);
        let offset = if mode.is_64bit() {
            rip
        } else {
            rip & 0xFFFF_FFFF
        };
        let linear_rip = if mode.is_64bit() {
            rip
        } else {
            cs.base.wrapping_add(offset)
        };
        let page_room = PAGE_SIZE - (linear_rip & (PAGE_SIZE - 1));
        let limit_room = (u64::from(cs.limit) + 1).saturating_sub(offset);
        let room = if mode.is_64bit() || limit_room == 0 {
            page_room
        } else {
            page_room.min(limit_room)
        };
        let want = room.min(MAX_LEN);
        let linear = linear_address(state, mode, Segment::Cs, offset, want, AccessType::Execute)?;
        Ok((linear, want as usize))
    }

    /// `span`'s inline segmentation check gives what `linear_address`
    /// does, fault or address and length, for random CS states (base,
    /// limit, every attribute bit) and RIPs near the page, limit and
    /// canonical edges (48 and 57 bits, CR4.LA57 clear or set), in every
    /// mode; and `quick_span` takes exactly the fetches it finds allowed
    /// with room for 15 bytes (in 64-bit mode with LA57, a subset of them).
    #[test]
    fn span_agrees_with_the_full_segmentation_check() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let modes = [
            CpuMode::Real,
            CpuMode::Virtual8086,
            CpuMode::Protected16,
            CpuMode::Protected32,
            CpuMode::Compat16,
            CpuMode::Compat32,
            CpuMode::Long64,
        ];
        let mut faults = 0;
        let mut quicks = 0;
        for i in 0..200_000 {
            let mode = modes[i % modes.len()];
            let mut r = Registers::flat_protected32(TEST_VENDOR);
            let cs = &mut r.segments[Segment::Cs as usize];
            let limit = match next() % 4 {
                0 => 0xFFFF,
                1 => 0xFFFF_FFFF,
                2 => next() as u32 & 0xFFFF,
                _ => next() as u32,
            };
            cs.limit = limit;
            cs.base = match next() % 3 {
                0 => 0,
                1 => next() & 0xFFFF_FFFF,
                _ => next(),
            };
            cs.attributes.0 = next() as u16;
            if next() % 2 == 0 {
                r.cr4 |= CR4_LA57;
            }
            let near = u64::from(limit).wrapping_add(next() % 40).wrapping_sub(20);
            // Around the canonical edges: 2^47 and 2^56, from below and
            // (negated) from above.
            let edge = [1u64 << 47, 1 << 56][i % 2].wrapping_add(next() % 64);
            let edge = edge.wrapping_sub(32);
            r.rip = match next() % 6 {
                0 => near & 0xFFFF_FFFF,
                1 => (next() & !0xFFF) | (0xFF0 + next() % 16),
                2 => next(),
                3 => edge,
                4 => edge.wrapping_neg(),
                _ => next() & 0xFFFF,
            };
            let want = reference(&r, mode);
            faults += usize::from(want.is_err());
            let got = match mode.default_address_size() {
                8 => span::<8, Registers>(&r, mode),
                4 => span::<4, Registers>(&r, mode),
                _ => span::<2, Registers>(&r, mode),
            };
            if let Ok((_, room)) = got {
                assert!(room >= 1, "{mode:?} {r:x?}");
            }
            // The quick check: the linear address exactly when the full
            // one passes with room for all 15 bytes.
            let quick = match mode.default_address_size() {
                8 => quick_span::<8, Registers>(&r, mode),
                4 => quick_span::<4, Registers>(&r, mode),
                _ => quick_span::<2, Registers>(&r, mode),
            };
            let full = match got {
                Ok((linear, room)) if room >= MAX_LEN => Some(linear),
                _ => None,
            };
            // It may decline what the full check allows only in 64-bit
            // mode with LA57 (a RIP canonical at 57 bits, not at 48): the
            // full fetch then decides.
            if mode == CpuMode::Long64 && r.cr4 & CR4_LA57 != 0 {
                assert!(quick.is_none() || quick == full, "{mode:?} {r:x?}");
            } else {
                assert_eq!(quick, full, "{mode:?} {r:x?}");
            }
            quicks += usize::from(quick.is_some());
            let got = got.map(|(linear, room)| (linear, room.min(MAX_LEN) as usize));
            assert_eq!(got, want, "{mode:?} {r:x?}");
        }
        // Both outcomes are exercised.
        assert!(faults > 10_000 && faults < 190_000, "{faults} faults");
        assert!(quicks > 10_000, "{quicks} quick fetches");
    }
}
