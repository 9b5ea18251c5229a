//! Accesses to guest linear memory: translate once, up front, into at most
//! two guest-physical fragments (one per page), then perform each fragment
//! on RAM or, where the GPA is not RAM, on the MMIO bus.

use crate::bus::{CompareWrite, GuestRam, MmioBus, RamStatus};
use crate::error::Error;
use crate::fetch_cache::FetchCache;
use crate::mode::CpuMode;
use crate::segment::linear_address;
use crate::state::{CpuState, Segment};
use crate::translate::translate;

/// The page size every access is split at.
pub(crate) const PAGE_SIZE: u64 = 4096;

/// The kind of a memory access, for segment and page permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessType {
    /// A data read.
    Read,
    /// A data write (read-modify-write operands are checked as writes).
    Write,
    /// An instruction fetch.
    Execute,
}

/// A linear range resolved to guest-physical fragments: the range never
/// spans more than two pages because callers limit it to 4096 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PhysRange {
    /// `(gpa, len)` of each fragment, in linear order.
    pub parts: [(u64, usize); 2],
    /// How many of `parts` are used (1 or 2).
    pub count: usize,
}

/// Translates `linear..linear + len` (1 <= len <= 4096) for `access`, each
/// page once, before any access is made.
///
/// Outside 64-bit mode linear addresses are 32 bits wide, so a range that
/// runs past 0xFFFFFFFF continues at 0 (as on the CPU).
pub(crate) fn resolve<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    ram: &mut R,
    linear: u64,
    len: usize,
    access: AccessType,
) -> Result<PhysRange, Error> {
    resolve_by(state, linear, len, |l| translate(state, ram, l, access))
}

/// [`resolve`] with each page translated through `cache`
/// ([`FetchCache::translate_data`], exact).
pub(crate) fn resolve_cached<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    ram: &mut R,
    cache: &mut FetchCache,
    linear: u64,
    len: usize,
    access: AccessType,
) -> Result<PhysRange, Error> {
    resolve_by(state, linear, len, |l| {
        cache.translate_data(state, ram, l, access)
    })
}

/// [`resolve`] with the translation of each page done by `translate_page`.
fn resolve_by<S: CpuState + ?Sized>(
    state: &S,
    linear: u64,
    len: usize,
    mut translate_page: impl FnMut(u64) -> Result<u64, Error>,
) -> Result<PhysRange, Error> {
    if len == 0 || len > PAGE_SIZE as usize {
        return Err(Error::InconsistentExit);
    }
    let wide = CpuMode::of(state).is_64bit();
    let linear = if wide { linear } else { linear & 0xFFFF_FFFF };
    let in_first = PAGE_SIZE - (linear & (PAGE_SIZE - 1));
    let len64 = len as u64;
    let first_len = len64.min(in_first);
    let first = translate_page(linear)?;
    if first_len == len64 {
        return Ok(PhysRange {
            parts: [(first, len), (0, 0)],
            count: 1,
        });
    }
    let mut next = linear.wrapping_add(first_len);
    if !wide {
        next &= 0xFFFF_FFFF;
    }
    let second = translate_page(next)?;
    // first_len < len <= 4096, so both fit in usize.
    let first_len = first_len as usize;
    Ok(PhysRange {
        parts: [(first, first_len), (second, len - first_len)],
        count: 2,
    })
}

/// The used fragments of `range`: each one's place in the whole range's
/// bytes, and its GPA. A length that overflows saturates, so the caller's
/// slicing of its buffer by the place fails instead of wrapping.
fn fragments(range: &PhysRange) -> impl Iterator<Item = (core::ops::Range<usize>, u64)> + '_ {
    let mut offset = 0usize;
    range
        .parts
        .iter()
        .take(range.count.min(2))
        .map(move |&(gpa, len)| {
            let start = offset;
            offset = offset.saturating_add(len);
            (start..offset, gpa)
        })
}

/// Reads a resolved range into `buf` (`buf.len()` equals the range length).
#[inline(always)]
pub(crate) fn read_phys<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    buf: &mut [u8],
) -> Result<(), Error> {
    let (gpa, len) = range.parts[0];
    if range.count == 1 && len == buf.len() {
        // The common case (one page), inline and without the fragment
        // iterator.
        if ram.read(gpa, buf)? == RamStatus::NotRam {
            mmio.read(gpa, buf)?;
        }
        return Ok(());
    }
    read_fragments(ram, mmio, range, buf)
}

/// [`read_phys`] fragment by fragment.
#[inline(never)]
fn read_fragments<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    buf: &mut [u8],
) -> Result<(), Error> {
    for (place, gpa) in fragments(range) {
        let part = buf.get_mut(place).ok_or(Error::InconsistentExit)?;
        if ram.read(gpa, part)? == RamStatus::NotRam {
            mmio.read(gpa, part)?;
        }
    }
    Ok(())
}

/// Writes `data` to a resolved range.
#[inline(always)]
pub(crate) fn write_phys<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    data: &[u8],
) -> Result<(), Error> {
    let (gpa, len) = range.parts[0];
    if range.count == 1 && len == data.len() {
        if ram.write(gpa, data)? == RamStatus::NotRam {
            mmio.write(gpa, data)?;
        }
        return Ok(());
    }
    write_fragments(ram, mmio, range, data)
}

/// [`write_phys`] fragment by fragment.
#[inline(never)]
fn write_fragments<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    data: &[u8],
) -> Result<(), Error> {
    for (place, gpa) in fragments(range) {
        let part = data.get(place).ok_or(Error::InconsistentExit)?;
        if ram.write(gpa, part)? == RamStatus::NotRam {
            mmio.write(gpa, part)?;
        }
    }
    Ok(())
}

/// The write half of a locked read-modify-write: on RAM, atomically replaces
/// `expected` (what the caller read) with `new` and returns `false` if memory
/// changed in between (the caller retries); on MMIO, writes `new` and returns
/// `true`. A range split over two pages is written part by part
/// ([`compare_and_write_fragments`]): `false` means that nothing of `new`
/// is left in memory and no device was written, so a retry from a fresh
/// read (RAM parts; the MMIO parts keep the first read,
/// [`reread_ram_fragments`]) applies the operation once.
#[inline(always)]
pub(crate) fn compare_and_write_phys<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    expected: &[u8],
    new: &[u8],
) -> Result<bool, Error> {
    let (gpa, len) = range.parts[0];
    if range.count == 1 && len == new.len() && len == expected.len() {
        return Ok(match ram.compare_and_write(gpa, expected, new)? {
            CompareWrite::Written => true,
            CompareWrite::Mismatch => false,
            CompareWrite::NotRam => {
                mmio.write(gpa, new)?;
                true
            }
        });
    }
    compare_and_write_fragments(ram, mmio, range, expected, new)
}

/// [`compare_and_write_phys`] fragment by fragment. The RAM parts first,
/// each compare-and-written; the MMIO parts (`NotRam`) only once every
/// RAM part was written, since a device write cannot be taken back. A
/// mismatch therefore leaves no device written; a RAM part this attempt
/// already wrote (both parts RAM) is put back by a compare-and-write of
/// the old bytes, which fails only if another writer overwrote it since,
/// and then holds that writer's bytes: either way none of `new` is left,
/// and the caller's retry from a fresh read applies the operation once.
/// (The two pages are not one atomic access, as the memory assist's
/// module docs (`mem.rs`) say: another CPU may see
/// one part written before the other.)
#[inline(never)]
fn compare_and_write_fragments<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    expected: &[u8],
    new: &[u8],
) -> Result<bool, Error> {
    if expected.len() != new.len() {
        return Err(Error::InconsistentExit);
    }
    // At most two fragments: which are MMIO, and which RAM part was
    // written (to put back on a later mismatch).
    let mut deferred = [None; 2];
    let mut written = None;
    for (index, (place, gpa)) in fragments(range).enumerate() {
        let old_part = expected.get(place.clone()).ok_or(Error::InconsistentExit)?;
        let new_part = new.get(place).ok_or(Error::InconsistentExit)?;
        match ram.compare_and_write(gpa, old_part, new_part)? {
            CompareWrite::Written => written = Some((gpa, old_part, new_part)),
            CompareWrite::Mismatch => {
                if let Some((gpa, old_part, new_part)) = written {
                    // Whatever this says, none of `new` is left there.
                    ram.compare_and_write(gpa, new_part, old_part)?;
                }
                return Ok(false);
            }
            CompareWrite::NotRam => {
                if let Some(slot) = deferred.get_mut(index) {
                    *slot = Some((gpa, new_part));
                }
            }
        }
    }
    for (gpa, new_part) in deferred.into_iter().flatten() {
        mmio.write(gpa, new_part)?;
    }
    Ok(true)
}

/// Reads the RAM fragments of `range` into `buf` again, leaving the bytes
/// of the MMIO fragments as they are (`buf` holds the previous read): a
/// locked read-modify-write's retry, after its compare-and-write lost
/// against another writer of the RAM part. The device was read once and
/// has not been written (see [`compare_and_write_fragments`]), so its
/// bytes are still the instruction's; reading it again would be a second
/// device read that the instruction does not make.
#[inline(never)]
pub(crate) fn reread_ram_fragments<R: GuestRam + ?Sized>(
    ram: &mut R,
    range: &PhysRange,
    buf: &mut [u8],
) -> Result<(), Error> {
    for (place, gpa) in fragments(range) {
        let part = buf.get_mut(place).ok_or(Error::InconsistentExit)?;
        let mut fresh = [0u8; 16];
        let fresh = fresh.get_mut(..part.len()).ok_or(Error::InconsistentExit)?;
        if ram.read(gpa, fresh)? == RamStatus::Done {
            part.copy_from_slice(fresh);
        }
    }
    Ok(())
}

/// Fetches instruction bytes `buf[have..want]` at CS:RIP + `have`, through
/// segmentation and the page walker (execute access), reading no further
/// than `want` so that a page or segment edge the instruction does not
/// cross never fails the fetch.
///
/// Outside 64-bit mode the offset `RIP + have` is taken modulo 2^32 and
/// checked against the CS limit (so 16-bit code running past 0xFFFF with a
/// 64 KiB limit gets `#GP(0)`, as on the CPU).
///
/// The page translations go through `cache` (see [`FetchCache`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fetch<S: CpuState + ?Sized, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    state: &S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    cache: &mut FetchCache,
    buf: &mut [u8; 15],
    have: usize,
    want: usize,
) -> Result<(), Error> {
    if have >= want {
        return if have == want && want <= buf.len() {
            Ok(())
        } else {
            Err(Error::InconsistentExit)
        };
    }
    let dest = buf.get_mut(have..want).ok_or(Error::InconsistentExit)?;
    // have < want <= 15.
    let mut offset = state.rip().wrapping_add(have as u64);
    if !mode.is_64bit() {
        offset &= 0xFFFF_FFFF;
    }
    let linear = linear_address(
        state,
        mode,
        Segment::Cs,
        offset,
        dest.len() as u64,
        AccessType::Execute,
    )?;
    let range = resolve_by(state, linear, dest.len(), |l| {
        cache.translate_fetch(state, ram, l)
    })?;
    read_phys(ram, mmio, &range, dest)
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
