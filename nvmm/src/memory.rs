//! Guest memory: host mappings (`NVMM_IOC_HVA_MAP`), guest-physical
//! mappings (`NVMM_IOC_GPA_MAP`) and the GPA→HVA area list kept in step
//! with the kernel.
//!
//! Invariants of [`Areas`], kept even when an ioctl fails (the list changes
//! only after the kernel accepted the change):
//! - host mappings do not overlap each other;
//! - every guest area lies wholly inside one host mapping, and guest areas
//!   do not overlap each other;
//! - a host mapping is never released while a guest area uses it.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Op, Rejection, Result};
use crate::sys::PAGE_SIZE;

bitflags::bitflags! {
    /// Guest access rights of a guest-physical mapping (NetBSD's `PROT_*`
    /// values, which the kernel takes in `NVMM_IOC_GPA_MAP`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Prot: u32 {
        /// Guest reads.
        const READ = 0x1;
        /// Guest writes.
        const WRITE = 0x2;
        /// Guest instruction fetches.
        const EXEC = 0x4;
        /// Read, write and execute.
        const ALL = 0x7;
    }
}

/// A host range registered with the kernel by `NVMM_IOC_HVA_MAP`.
///
/// A copyable token: the memory stays owned by the [`crate::Machine`] until
/// [`crate::Machine::hva_unmap`] (which the machine refuses while a guest
/// mapping uses it) or until the machine is destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostMapping {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) size: usize,
}

// SAFETY: the token grants no access by itself: reaching the memory through
// `as_ptr` is the caller's `unsafe`, and the machine checks the token
// against its own list before using it.
unsafe impl Send for HostMapping {}
// SAFETY: see `Send`.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// The start of the range in this process. Guest memory is shared with
    /// the guest and with other threads: access it only atomically (or use
    /// [`crate::Machine::read_guest`]/[`crate::Machine::write_guest`]).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.size
    }
    /// Always `false`: zero-length mappings are refused.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

#[derive(Debug, Clone)]
pub(crate) struct HostArea {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) size: usize,
    /// Allocated by this crate (unmapped by it after the machine is gone).
    pub(crate) owned: bool,
    /// One count per area list holding this mapping: the machine's current
    /// list and every snapshot an assist is working on. `hva_unmap` needs
    /// it to be the only one.
    pub(crate) pin: Pin,
}

/// The count of area lists holding one host mapping, with the ordering that
/// makes freeing the memory safe: a holder's last accesses to the mapping
/// happen before its count is released (`Release`), and [`Pin::is_sole`]
/// reads the count with `Acquire`, so a `true` orders every earlier
/// holder's accesses before what the caller does next (unmapping and
/// freeing). `Arc::strong_count` reads with `Relaxed` and gives no such
/// order: ThreadSanitizer reported the free racing with an assist's last
/// read. New holders are made only under the area list's lock, which
/// `hva_unmap` holds while it asks.
#[derive(Debug)]
pub(crate) struct Pin(Arc<AtomicUsize>);

impl Pin {
    fn new() -> Self {
        Pin(Arc::new(AtomicUsize::new(1)))
    }

    /// Whether this is the only holder; see the type's docs for the order.
    pub(crate) fn is_sole(&self) -> bool {
        self.0.load(Ordering::Acquire) == 1
    }
}

impl Clone for Pin {
    fn clone(&self) -> Self {
        // Relaxed: a new holder only appears under the area list's lock.
        self.0.fetch_add(1, Ordering::Relaxed);
        Pin(Arc::clone(&self.0))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // Release: this holder's accesses to the mapping happen before an
        // `is_sole` that sees the decrement.
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl HostArea {
    pub(crate) fn new(ptr: NonNull<u8>, size: usize, owned: bool) -> Self {
        HostArea {
            ptr,
            size,
            owned,
            pin: Pin::new(),
        }
    }
    fn addr(&self) -> usize {
        self.ptr.as_ptr().addr()
    }
}

/// A guest area as the crate keeps it: the host side as a pointer (with
/// its provenance), not as an address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuestArea {
    pub(crate) gpa: u64,
    pub(crate) size: u64,
    pub(crate) host: NonNull<u8>,
    pub(crate) prot: Prot,
}

impl GuestArea {
    fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa - self.gpa < self.size
    }
    fn hva(&self) -> usize {
        self.host.as_ptr().addr()
    }
    pub(crate) fn public(&self) -> GpaArea {
        GpaArea {
            gpa: self.gpa,
            size: self.size,
            hva: self.hva(),
            prot: self.prot,
        }
    }
    /// An area that holds no address (size 0): what a VCPU's last-area
    /// cache holds when it knows no area (see `VcpuRam`).
    #[cfg(feature = "assist")]
    pub(crate) const NONE: GuestArea = GuestArea {
        gpa: 0,
        size: 0,
        host: NonNull::dangling(),
        prot: Prot::empty(),
    };
    /// The host pointer of `gpa..gpa+len` if this area holds all of it
    /// and allows `need`: what `Areas::host_range` gives when `gpa`
    /// lies in this area (areas do not overlap, so it is the one found).
    /// [`GuestArea::NONE`] holds nothing. One addition, one comparison
    /// and the rights test: the assists' guest RAM asks it first on every
    /// access.
    #[cfg(feature = "assist")]
    #[inline(always)]
    pub(crate) fn host_range(&self, gpa: u64, len: usize, need: Prot) -> Option<NonNull<u8>> {
        // The range's end in the area: a `gpa` below the area wraps to a
        // huge offset, whose end overflows or passes the size. An empty
        // range counts as one byte, so that `gpa` itself lies in the area
        // (the list's rule: `Areas::find`, then `holds`).
        let off = gpa.wrapping_sub(self.gpa);
        match off.checked_add((len as u64).max(1)) {
            Some(end) if end <= self.size && self.prot.contains(need) => {
                // SAFETY: `off < end <= size`, and the area lies inside
                // one host mapping (an invariant of `Areas`), so the result
                // stays in that allocation; `off` fits in a `usize` as the
                // mapping's length does.
                Some(unsafe { self.host.add(off as usize) })
            }
            _ => None,
        }
    }
    /// The host pointer of `gpa`, which lies in this area.
    pub(crate) fn host_of(&self, gpa: u64) -> Option<NonNull<u8>> {
        let off = usize::try_from(gpa.checked_sub(self.gpa)?).ok()?;
        if off as u64 >= self.size {
            return None;
        }
        // SAFETY: `off < size`, and the area lies inside one host mapping
        // (an invariant of `Areas`), so the result stays in that allocation.
        Some(unsafe { self.host.add(off) })
    }
}

/// One guest-physical area: `gpa..gpa+size` is `hva..hva+size` (a copy
/// for inspection; `hva` is the address only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaArea {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host start.
    pub hva: usize,
    /// Guest access rights.
    pub prot: Prot,
}

/// The area list. Cloned (copy-on-write) when an assist holds a snapshot
/// while the list changes, so callbacks run without any lock held.
#[derive(Debug, Default, Clone)]
pub(crate) struct Areas {
    pub(crate) hosts: Vec<HostArea>,
    pub(crate) gpas: Vec<GuestArea>,
    /// Changes with every change of `gpas` (see
    /// `MachineInner::guest_areas_changed`): the list a [`GuestRanges`]
    /// copy was taken from.
    pub(crate) generation: u64,
}

// SAFETY: the pointers denote process-wide mappings; the list only hands
// them to `guest_ram`, whose accesses are atomic, so sharing the list
// between threads shares no unsynchronised data.
unsafe impl Send for Areas {}
// SAFETY: see `Send`.
unsafe impl Sync for Areas {}

pub(crate) fn page_aligned(v: u64) -> bool {
    v.is_multiple_of(PAGE_SIZE as u64)
}

fn ranges_overlap(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    // Both ranges are known not to overflow.
    a < b + blen && b < a + alen
}

impl Areas {
    /// Checks a new host range against the rules of `NVMM_IOC_HVA_MAP`.
    pub(crate) fn check_host(&self, ptr: NonNull<u8>, size: usize) -> Result<()> {
        let hva = ptr.as_ptr().addr();
        let rej = |r| Err(Error::rejected(Op::HvaMap, r));
        if size == 0 {
            return rej(Rejection::ZeroSize);
        }
        if !page_aligned(hva as u64) || !page_aligned(size as u64) {
            return rej(Rejection::NotPageAligned);
        }
        if hva.checked_add(size).is_none() {
            return rej(Rejection::Overflow);
        }
        // The kernel accepts a range wholly inside an existing one and then
        // replaces those pages under the first mapping; refuse all overlap.
        if self
            .hosts
            .iter()
            .any(|h| ranges_overlap(h.addr() as u64, h.size as u64, hva as u64, size as u64))
        {
            return rej(Rejection::HvaOverlap);
        }
        Ok(())
    }

    pub(crate) fn host_index(&self, m: &HostMapping) -> Option<usize> {
        self.hosts
            .iter()
            .position(|h| h.ptr == m.ptr && h.size == m.size)
    }

    /// Checks a new guest area against the rules of `NVMM_IOC_GPA_MAP` and
    /// the list (libnvmm's overlap check).
    pub(crate) fn check_gpa(&self, area: &GuestArea) -> Result<()> {
        let rej = |r| Err(Error::rejected(Op::GpaMap, r));
        if area.size == 0 {
            return rej(Rejection::ZeroSize);
        }
        if !page_aligned(area.gpa) || !page_aligned(area.size) || !page_aligned(area.hva() as u64) {
            return rej(Rejection::NotPageAligned);
        }
        if area.gpa.checked_add(area.size).is_none() {
            return rej(Rejection::Overflow);
        }
        let inside = self.hosts.iter().any(|h| {
            area.hva() >= h.addr()
                && ((area.hva() - h.addr()) as u64)
                    .checked_add(area.size)
                    .is_some_and(|end| end <= h.size as u64)
        });
        if !inside {
            return rej(Rejection::NotInHostMapping);
        }
        if self
            .gpas
            .iter()
            .any(|g| ranges_overlap(g.gpa, g.size, area.gpa, area.size))
        {
            return rej(Rejection::GpaOverlap);
        }
        Ok(())
    }

    pub(crate) fn host_in_use(&self, h: &HostArea) -> bool {
        self.gpas
            .iter()
            .any(|g| g.hva() >= h.addr() && g.hva() - h.addr() < h.size)
    }

    /// The area holding `gpa`.
    pub(crate) fn find(&self, gpa: u64) -> Option<&GuestArea> {
        self.gpas.iter().find(|a| a.contains(gpa))
    }

    /// The host address of `gpa..gpa+len` if one area holds all of it and
    /// allows `need` (the assists' guest RAM finds the area with
    /// [`Areas::find`] and keeps it; the tests compare with this).
    #[cfg(all(feature = "assist", test))]
    pub(crate) fn host_range(&self, gpa: u64, len: usize, need: Prot) -> Option<NonNull<u8>> {
        let a = self.find(gpa)?;
        if !holds(a.gpa, a.size, a.prot, gpa, len, need) {
            return None;
        }
        a.host_of(gpa)
    }
}

/// Whether the area `area_gpa..area_gpa+area_size` with rights `prot`
/// holds all of `gpa..gpa+len` (`gpa` is known to lie in it) and allows
/// `need`: the one rule of `Areas::host_range` and [`GuestRanges::holds`].
#[cfg(feature = "assist")]
#[inline]
fn holds(area_gpa: u64, area_size: u64, prot: Prot, gpa: u64, len: usize, need: Prot) -> bool {
    (gpa - area_gpa)
        .checked_add(len as u64)
        .is_some_and(|end| end <= area_size)
        && prot.contains(need)
}

/// A VCPU's copy of the guest side of the area list (GPA ranges and
/// rights, no host pointers), tagged with the generation of the list it
/// was copied from.
///
/// It lets an assist decide that an address is *not* RAM (an MMIO access,
/// the common case) without the list's lock or a snapshot: when the
/// machine's generation still equals the copy's, the copy gives the answer
/// the current list would give. Anything else (the address is RAM, or the
/// list changed) takes a real snapshot, and only a snapshot's host pointers
/// are ever used: the copy holds no pointer, so it keeps nothing mapped and
/// can never be used to reach memory.
#[cfg(feature = "assist")]
#[derive(Debug)]
pub(crate) struct GuestRanges {
    /// The generation of the copied list; `u64::MAX` before the first copy.
    generation: u64,
    ranges: Vec<(u64, u64, Prot)>,
    /// The first address of a page that no copied range touches: the page
    /// of the last lookup that missed every range, or [`TOP_PAGE`]. MMIO
    /// exits come back to the same device page again and again, and areas
    /// are page-aligned (`Areas::check_gpa`), so a lookup inside this page
    /// is "not RAM" after one comparison instead of a walk of the ranges.
    /// `refresh` resets it with the ranges.
    mmio_page: u64,
}

/// The last page of the 64-bit space, which no area can hold: an area must
/// end at or below 2^64 - 1 (`Areas::check_gpa` refuses an overflowing
/// end), and areas are whole pages.
#[cfg(feature = "assist")]
const TOP_PAGE: u64 = u64::MAX - (PAGE - 1);

#[cfg(feature = "assist")]
const PAGE: u64 = PAGE_SIZE as u64;

#[cfg(feature = "assist")]
impl GuestRanges {
    pub(crate) const fn new() -> Self {
        GuestRanges {
            generation: u64::MAX,
            ranges: Vec::new(),
            mmio_page: TOP_PAGE,
        }
    }

    /// The generation of the list this is a copy of (`u64::MAX` before
    /// the first copy).
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the copied list has `gpa..gpa+len` in RAM allowing `need`
    /// (exactly when `Areas::host_range` on that list gives a pointer).
    // Always inlined: the call would cost more than the page check; the
    // walk of the ranges is not.
    #[inline(always)]
    pub(crate) fn holds(&mut self, gpa: u64, len: usize, need: Prot) -> bool {
        if self.in_mmio_page(gpa, len) {
            return false;
        }
        self.holds_listed(gpa, len, need)
    }

    /// Whether `gpa..gpa+len` lies in the remembered page that no copied
    /// range touches (so [`GuestRanges::holds`] is false for it).
    #[inline(always)]
    pub(crate) fn in_mmio_page(&self, gpa: u64, len: usize) -> bool {
        let off = gpa.wrapping_sub(self.mmio_page);
        off < PAGE && len as u64 <= PAGE - off
    }

    /// Remembers the page of `gpa`, which no range of the copied list
    /// holds: the caller looked `gpa` up in a list of the copy's
    /// generation (a snapshot the copy was refreshed from) and found no
    /// area holding it. Areas are whole pages, so none touches the page.
    pub(crate) fn remember_mmio_page(&mut self, gpa: u64) {
        self.mmio_page = gpa & !(PAGE - 1);
    }

    /// [`GuestRanges::holds`] outside the remembered page: walks the
    /// ranges, and remembers the page when none holds `gpa`.
    fn holds_listed(&mut self, gpa: u64, len: usize, need: Prot) -> bool {
        match self
            .ranges
            .iter()
            .find(|&&(start, size, _)| gpa >= start && gpa - start < size)
        {
            Some(&(start, size, prot)) => holds(start, size, prot, gpa, len, need),
            None => {
                // No range holds `gpa`, so none touches its page.
                self.mmio_page = gpa & !(PAGE - 1);
                false
            }
        }
    }

    /// Copies `areas` unless this already is a copy of its generation
    /// (no allocation once the vector is large enough).
    pub(crate) fn refresh(&mut self, areas: &Areas) {
        if self.generation != areas.generation {
            self.ranges.clear();
            self.ranges
                .extend(areas.gpas.iter().map(|a| (a.gpa, a.size, a.prot)));
            self.mmio_page = TOP_PAGE;
            self.generation = areas.generation;
        }
    }
}

#[cfg(all(test, feature = "assist"))]
mod tests {
    use super::*;

    /// A small xorshift generator: deterministic, no dependency.
    fn next(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// The copy answers every lookup as the list it was taken from does
    /// (the "not RAM" answers the assists take from it without a snapshot
    /// are the list's own), and `refresh` follows the generation only.
    #[test]
    fn guest_ranges_answer_as_the_list_does() {
        const PAGES: u64 = 16;
        let mut backing = vec![0u8; (PAGES * 0x1000) as usize];
        let host = NonNull::from(backing.as_mut_slice()).cast::<u8>();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut copy = GuestRanges::new();
        let rounds = if cfg!(miri) { 20 } else { 500 };
        for generation in 0..rounds {
            // Up to four disjoint areas of 1-3 pages in a 64-page space,
            // each backed by pages of `backing` (host offsets may repeat:
            // only the lookup is under test).
            let mut areas = Areas {
                generation,
                ..Areas::default()
            };
            for _ in 0..next(&mut seed) % 5 {
                let gpa = (next(&mut seed) % 64) * 0x1000;
                let size = (1 + next(&mut seed) % 3) * 0x1000;
                if areas
                    .gpas
                    .iter()
                    .any(|g| ranges_overlap(g.gpa, g.size, gpa, size))
                {
                    continue;
                }
                let off = (next(&mut seed) % (PAGES - 3)) as usize * 0x1000;
                areas.gpas.push(GuestArea {
                    gpa,
                    size,
                    // SAFETY: `off + size <= PAGES * 0x1000`: inside `backing`.
                    host: unsafe { host.add(off) },
                    prot: Prot::from_bits_truncate(next(&mut seed) as u32),
                });
            }
            assert!(copy.generation() != generation);
            copy.refresh(&areas);
            assert!(copy.generation() == generation);
            for _ in 0..64 {
                let gpa = next(&mut seed) % (68 * 0x1000);
                let len = [1usize, 2, 4, 8, 16][(next(&mut seed) % 5) as usize];
                let need = [Prot::READ, Prot::WRITE, Prot::READ | Prot::WRITE]
                    [(next(&mut seed) % 3) as usize];
                assert_eq!(
                    copy.holds(gpa, len, need),
                    areas.host_range(gpa, len, need).is_some(),
                    "{gpa:#x}+{len} {need:?} in {:?}",
                    copy.ranges
                );
                // Again in the same page, and across its end: the answers
                // the remembered MMIO page gives are the list's too.
                for near in [
                    (gpa & !0xFFF) | (next(&mut seed) & 0xFFF),
                    (gpa | 0xFFF) - (len as u64 / 2),
                ] {
                    assert_eq!(
                        copy.holds(near, len, need),
                        areas.host_range(near, len, need).is_some(),
                        "{near:#x}+{len} {need:?} in {:?} (remembered page {:#x})",
                        copy.ranges,
                        copy.mmio_page
                    );
                }
            }
            // The page remembered under the last list is forgotten with it.
            let remembered = copy.mmio_page;
            // Same generation, other content: not copied again (the
            // machine gives every change a new generation).
            let before = copy.ranges.clone();
            areas.gpas.clear();
            copy.refresh(&areas);
            assert_eq!(copy.ranges, before);
            assert_eq!(copy.mmio_page, remembered);
        }
        // A page remembered as MMIO becomes RAM in the next list: the
        // refresh forgets it.
        let mut areas = Areas {
            generation: rounds,
            ..Areas::default()
        };
        areas.gpas.push(GuestArea {
            gpa: 0,
            size: 0x1000,
            host,
            prot: Prot::ALL,
        });
        copy.refresh(&areas);
        assert_eq!(copy.mmio_page, TOP_PAGE);
        assert!(!copy.holds(0x5010, 1, Prot::READ));
        assert_eq!(copy.mmio_page, 0x5000);
        areas.generation += 1;
        areas.gpas[0].gpa = 0x5000;
        copy.refresh(&areas);
        assert_eq!(copy.mmio_page, TOP_PAGE);
        assert!(copy.holds(0x5010, 1, Prot::READ));
    }
}
