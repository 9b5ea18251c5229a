//! The bridge to nvmm-assist: [`nvmm_assist::CpuState`] implemented straight
//! over the comm page (zero copy) and [`nvmm_assist::GuestRam`] over the
//! machine's GPA→HVA area list.

use std::ptr::NonNull;
use std::sync::Arc;

use nvmm_sys as sys;

use nvmm_assist::{
    AccessType, BusError, CompareWrite, CpuState, EntryCheck, GuestRam, RamStatus,
    SegmentAttributes, SegmentRegister, Vendor,
};

use crate::comm::{CommPage, PageAddr, field};
use crate::error::{Error, Op, Result};
use crate::guest_ram;
use crate::machine::MachineInner;
use crate::memory::{Areas, GuestArea, GuestRanges, Prot};
use crate::state::{Cr, Crs, Gpr, Msr, Msrs, Seg, Segs, StateClasses, set_xmm_of, xmm_of};
use crate::vcpu::{PROVIDED_ON_IO_AND_MEMORY, Vcpu};

/// The assist's view of the VCPU registers: reads and writes go to the comm
/// page in place. Writing GPRs, RIP or RFLAGS does not mark GPRS in
/// `state_commit`/`state_cached`: the caller does that once, after an assist
/// that succeeded ([`mark_gprs`]); a failed assist has changed no
/// register (nvmm-assist's contract: registers are written only when the
/// instruction, or a REP batch, is complete). Nothing can observe the page
/// in between: the view borrows the VCPU exclusively. XMM writes mark FPU
/// at once.
///
/// Built only after GPRS|SEGS|CRS|MSRS are cached; XMM registers are
/// offered only when FPU is cached too (an SSE move through MMIO then
/// works; otherwise the assist reports it unsupported).
///
/// A `CommState` is a field of its [`Vcpu`] (made in `Vcpu::create` from
/// the VCPU's own mapping, never moved out of it), so an assist is handed
/// a pointer to long-lived data and nothing is built per call; the page is
/// mapped as long as the `Vcpu`, and so this field, lives.
pub(crate) struct CommState {
    addr: PageAddr,
    vendor: Vendor,
}

impl CommState {
    /// The state of the VCPU whose comm page is at `addr`, emulating
    /// `vendor`'s CPUs.
    ///
    /// # Safety
    ///
    /// `addr` is the address of the calling `Vcpu`'s own mapping, and the
    /// result is stored in that `Vcpu` (see the type's documentation).
    pub(crate) unsafe fn new(addr: PageAddr, vendor: Vendor) -> Self {
        CommState { addr, vendor }
    }

    /// The vendor whose CPUs the assists emulate.
    pub(crate) fn vendor(&self) -> Vendor {
        self.vendor
    }

    /// Sets the vendor whose CPUs the assists emulate.
    pub(crate) fn set_vendor(&mut self, vendor: Vendor) {
        self.vendor = vendor;
    }

    /// The page, borrowed for as long as this state.
    #[inline]
    fn page(&self) -> CommPage<'_> {
        // SAFETY: `self` lives in the `Vcpu` that owns the mapping of
        // `addr` (see `CommState::new`), so the page stays mapped while
        // `self` is borrowed.
        unsafe { self.addr.page_unchecked() }
    }

    /// Reads element `i` of the GPR array (RAX..R15, RIP, RFLAGS).
    #[inline]
    fn gpr_at(&self, i: Gpr) -> u64 {
        self.gpr_index(i.index())
    }

    /// Writes element `i` of the GPR array (GPRS is marked by the caller,
    /// see [`mark_gprs`]).
    #[inline]
    fn set_gpr_at(&mut self, i: Gpr, value: u64) {
        self.set_gpr_index(i.index(), value);
    }

    /// Reads element `i` of the GPR array (the projection panics if `i` is
    /// out of bounds; callers pass indexes the compiler sees are in bounds,
    /// so no check is left).
    #[inline]
    fn gpr_index(&self, i: usize) -> u64 {
        let st = self.page().state_ptr();
        // SAFETY: an element of `gprs` in the live page (the projection
        // checks the index), read under the page's rules (see `comm`).
        unsafe { self.page().read(field!(st, gprs[i])) }
    }

    /// Writes element `i` of the GPR array (see [`CommState::gpr_index`]).
    #[inline]
    fn set_gpr_index(&mut self, i: usize, value: u64) {
        let st = self.page().state_ptr();
        // SAFETY: as in `gpr_index`.
        unsafe { self.page().write(field!(st, gprs[i]), value) };
    }
}

/// Marks GPRS for commit (libnvmm's `nvmm_vcpu_setstate(GPRS)`) in the
/// VCPU's comm `page`, after an assist that succeeded and so may have
/// written GPRs, RIP or RFLAGS. (An assist that succeeded without changing
/// a register, such as a locked operation that gave up, makes the kernel
/// load the same values again.) Only `state_commit` is written: a
/// `CommState` is used after GPRS was fetched, and nothing between that and
/// this (no ioctl: the assist borrows the VCPU exclusively) can clear it
/// from `state_cached`. The page comes from [`crate::vcpu::AssistParts`],
/// not the `CommState`: its address is the one the cached-state check
/// loaded, so the wrapper loads it once per assist and keeps it across the
/// assist's call.
#[inline]
fn mark_gprs(page: CommPage<'_>) {
    page.mark_commit(StateClasses::GPRS);
}

/// nvmm-assist numbers RAX..R15 by their encoding (0-15), and so does NVMM
/// (`NVMM_X64_GPR_RAX`..`NVMM_X64_GPR_R15`, NetBSD `nvmm_x86.h`): an
/// assist register's index is its comm-page index, with no translation.
const _: () = {
    let nvmm = [
        sys::NVMM_X64_GPR_RAX,
        sys::NVMM_X64_GPR_RCX,
        sys::NVMM_X64_GPR_RDX,
        sys::NVMM_X64_GPR_RBX,
        sys::NVMM_X64_GPR_RSP,
        sys::NVMM_X64_GPR_RBP,
        sys::NVMM_X64_GPR_RSI,
        sys::NVMM_X64_GPR_RDI,
        sys::NVMM_X64_GPR_R8,
        sys::NVMM_X64_GPR_R9,
        sys::NVMM_X64_GPR_R10,
        sys::NVMM_X64_GPR_R11,
        sys::NVMM_X64_GPR_R12,
        sys::NVMM_X64_GPR_R13,
        sys::NVMM_X64_GPR_R14,
        sys::NVMM_X64_GPR_R15,
    ];
    let mut i = 0;
    while i < 16 {
        assert!(nvmm[i] == i && nvmm_assist::Gpr::ALL[i].index() == i);
        i += 1;
    }
};

/// The host CPU's vendor, from CPUID leaf 0, read once per process: the
/// vendor a VCPU presents to its guest unless [`Vcpu::set_guest_vendor`]
/// overrides it. NVMM shows the guest the host's vendor string: the kernel
/// runs CPUID on the host and, for leaf 0, replaces only EAX
/// (`sys/dev/nvmm/x86/nvmm_x86_svm.c`, `svm_inkernel_handle_cpuid`, and its
/// VMX twin in `nvmm_x86_vmx.c`).
///
/// A vendor string [`Vendor::from_cpuid_leaf0`] does not know (a CPU of
/// neither lineage) and targets other than x86_64 (where NVMM does not
/// exist; only in-process tests run there) give [`Vendor::Intel`]; a VMM on
/// such a host states the vendor with [`Vcpu::set_guest_vendor`]. Under
/// miri, which cannot execute CPUID, it is [`Vendor::Intel`] as well.
pub fn host_vendor() -> Vendor {
    static VENDOR: std::sync::OnceLock<Vendor> = std::sync::OnceLock::new();
    *VENDOR.get_or_init(read_host_vendor)
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn read_host_vendor() -> Vendor {
    // `__cpuid` is a safe function from Rust 1.89 on; the block keeps the
    // crate building with its minimum supported Rust (1.88).
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU; leaf 0 only reads.
    let r = unsafe { core::arch::x86_64::__cpuid(0) };
    Vendor::from_cpuid_leaf0(r.ebx, r.ecx, r.edx).unwrap_or(Vendor::Intel)
}

#[cfg(any(not(target_arch = "x86_64"), miri))]
fn read_host_vendor() -> Vendor {
    Vendor::Intel
}

#[inline]
fn seg_of(s: nvmm_assist::Segment) -> Seg {
    match s {
        nvmm_assist::Segment::Es => Seg::Es,
        nvmm_assist::Segment::Cs => Seg::Cs,
        nvmm_assist::Segment::Ss => Seg::Ss,
        nvmm_assist::Segment::Ds => Seg::Ds,
        nvmm_assist::Segment::Fs => Seg::Fs,
        nvmm_assist::Segment::Gs => Seg::Gs,
    }
}

impl CpuState for CommState {
    #[inline]
    fn gpr(&self, reg: nvmm_assist::Gpr) -> u64 {
        // The same index (see the assertion after `CommState`).
        self.gpr_index(reg.index())
    }
    #[inline]
    fn set_gpr(&mut self, reg: nvmm_assist::Gpr, value: u64) {
        self.set_gpr_index(reg.index(), value);
    }
    #[inline]
    fn rip(&self) -> u64 {
        self.gpr_at(Gpr::Rip)
    }
    #[inline]
    fn set_rip(&mut self, value: u64) {
        self.set_gpr_at(Gpr::Rip, value);
    }
    #[inline]
    fn rflags(&self) -> u64 {
        self.gpr_at(Gpr::Rflags)
    }
    #[inline]
    fn set_rflags(&mut self, value: u64) {
        self.set_gpr_at(Gpr::Rflags, value);
    }
    #[inline]
    fn segment(&self, seg: nvmm_assist::Segment) -> SegmentRegister {
        let s = Segs::new(self.page()).get(seg_of(seg));
        SegmentRegister {
            selector: s.selector,
            base: s.base,
            limit: s.limit,
            attributes: SegmentAttributes(s.attrib.0),
        }
    }
    #[inline]
    fn cr0(&self) -> u64 {
        Crs::new(self.page()).get(Cr::Cr0)
    }
    #[inline]
    fn cr3(&self) -> u64 {
        Crs::new(self.page()).get(Cr::Cr3)
    }
    #[inline]
    fn cr4(&self) -> u64 {
        Crs::new(self.page()).get(Cr::Cr4)
    }
    #[inline]
    fn efer(&self) -> u64 {
        Msrs::new(self.page()).get(Msr::Efer)
    }
    #[inline]
    fn xmm(&self, index: u8) -> Option<u128> {
        if self.page().cached().contains(StateClasses::FPU) && index < 16 {
            Some(xmm_of(self.page(), index))
        } else {
            None
        }
    }
    #[inline]
    fn set_xmm(&mut self, index: u8, value: u128) {
        if self.page().cached().contains(StateClasses::FPU) && index < 16 {
            set_xmm_of(self.page(), index, value);
        }
    }
    #[inline]
    fn vendor(&self) -> Vendor {
        self.vendor
    }
}

/// Guest RAM as the assist sees it: the machine's areas, read and written
/// through their host mappings with the one-byte atomic accesses of
/// [`guest_ram`]. A GPA outside every area, or not allowed by the area's
/// protection, is "not RAM" and goes to the caller's MMIO bus.
///
/// No lock is held while the assist runs: the caller's `MmioBus` and
/// `PortIo` callbacks may map and unmap guest memory. Host memory is only
/// ever reached through a snapshot of the area list, which keeps the host
/// mappings it names from being unmapped until it is dropped, at the end
/// of the assist (`hva_unmap` refuses them meanwhile).
///
/// The snapshot is taken lazily, at the first lookup that needs it: while
/// the VCPU's copy of the guest ranges ([`GuestRanges`]) is of the current
/// list (one atomic load of the machine's generation, at every lookup), a
/// lookup that the copy answers "not RAM" (an MMIO access) needs no
/// snapshot, because it uses no host pointer. The answer is the one a
/// snapshot taken at that load would give. The first lookup that hits RAM,
/// or finds the list changed, takes the snapshot (and refreshes the copy);
/// every later lookup of the assist uses that snapshot, so from the first
/// RAM access on, the assist sees one consistent list, as before.
/// [`GuestRam::check_entries`] (page-table entries, which are RAM) takes
/// it at once, without asking the copy.
///
/// A lookup in the snapshot tries, in order: the area the last one found
/// ([`LastArea`]: most accesses fall in one area; kept from one assist to
/// the next while the list is unchanged), the page
/// the copy remembers as holding no RAM (the copy is of the snapshot's
/// list while the snapshot is held: taking it refreshed the copy), and
/// only then the list, which sets one or the other. Each gives the list's
/// own answer, so the assist sees exactly the snapshot.
///
/// The copy, the snapshot slot and the machine live in the VCPU
/// ([`VcpuRam`]), so an assist is handed one pointer to long-lived data
/// and each lookup reaches the copy without a further indirection;
/// [`AreaRam`] lends it for one assist and drops the snapshot at its end.
pub(crate) struct VcpuRam {
    machine: Arc<MachineInner>,
    /// The VCPU's copy of the guest ranges.
    copy: GuestRanges,
    /// The snapshot of the current assist, if it needed one; `None`
    /// between assists ([`AreaRam`] clears it).
    snapshot: Option<Arc<Areas>>,
    /// The generation of the list the copy may answer for: the copy's
    /// while no snapshot is held ([`UNMADE`] before the first copy),
    /// [`NO_GENERATION`] while one is (from then on the snapshot answers),
    /// and only then. One comparison with the machine's generation thus
    /// checks both, and one with [`NO_GENERATION`] whether a snapshot is
    /// held.
    answers_for: u64,
    /// The area of the snapshot that the last lookup in it found, or
    /// [`GuestArea::NONE`]: see [`LastArea`].
    last: LastArea,
}

/// The area of the list that the last lookup in a snapshot found, or
/// [`GuestArea::NONE`]. An assist's accesses cluster, and so do those of
/// successive assists: the fetch cache's entries, the code they lead to
/// and the walker's entries usually lie in one area, so a lookup is this
/// area's range test instead of a walk of the list, and
/// [`GuestRam::check_entries`] checks every entry against it with one
/// bound.
///
/// It is an area of the list of the copy's generation, and is used only
/// while a snapshot is held, whose list then is of that generation (taking
/// a snapshot refreshes the copy, and clears this when the generation
/// changed). Every change of the guest areas gives the list a new
/// generation, so a snapshot of the same generation has this very area,
/// inside a host mapping that the snapshot holds (a host mapping cannot be
/// released while a guest area uses it): the pointer is valid, and keeps
/// its mapping, whenever it is used, also in a later assist than the one
/// that found it. Areas do not overlap, so an address this area holds is
/// held by no other area of the snapshot: its answer is the list's.
struct LastArea(GuestArea);

// SAFETY: the pointer is a copy of one of a snapshot's (`Areas` is
// `Send`), dereferenced only through `guest_ram`'s atomics while a
// snapshot of its list keeps it mapped, by the thread that holds the
// `VcpuRam` exclusively (see `LastArea`).
unsafe impl Send for LastArea {}

/// A generation no list has: the machine's counter starts at 0 and would
/// need 2^64 - 1 changes to reach it (`GuestRanges` makes the same
/// assumption).
const NO_GENERATION: u64 = u64::MAX;

/// Another generation no list has (2^64 - 2 changes away): the one a VCPU's
/// copy answers for before it is first made, so that the first lookup
/// takes a snapshot (and makes the copy). Not [`NO_GENERATION`], which
/// says a snapshot is held: a VCPU that never looks up RAM (only IN/OUT)
/// would otherwise take the end-of-assist path of a snapshot every time.
const UNMADE: u64 = u64::MAX - 1;

impl VcpuRam {
    /// The guest RAM of `machine` for one VCPU's assists.
    pub(crate) fn new(machine: Arc<MachineInner>) -> Self {
        VcpuRam {
            machine,
            copy: GuestRanges::new(),
            snapshot: None,
            answers_for: UNMADE,
            last: LastArea(GuestArea::NONE),
        }
    }

    /// The host pointer of `gpa..gpa+len` if it is RAM allowing `need`.
    #[inline(always)]
    fn host_range(&mut self, gpa: u64, len: usize, need: Prot) -> Option<NonNull<u8>> {
        if self.answers_for == self.machine.generation() {
            // No snapshot held, and the copy is of the current list: it
            // answers "not RAM" (see `VcpuRam`).
            if !self.copy.holds(gpa, len, need) {
                return None;
            }
            return self.snapshot_host_range(gpa, len, need);
        }
        if self.answers_for != NO_GENERATION {
            // The list changed since the copy was made (or it never was).
            return self.snapshot_host_range(gpa, len, need);
        }
        self.held_host_range(gpa, len, need)
    }

    /// [`VcpuRam::host_range`] while a snapshot is held: the last area
    /// found, then the page the copy (of the snapshot's list: the snapshot
    /// refreshed it) knows holds no RAM, then the snapshot's list.
    #[inline(always)]
    fn held_host_range(&mut self, gpa: u64, len: usize, need: Prot) -> Option<NonNull<u8>> {
        if let Some(p) = self.last.0.host_range(gpa, len, need) {
            return Some(p);
        }
        if self.copy.in_mmio_page(gpa, len) {
            return None;
        }
        self.find_host_range(gpa, len, need)
    }

    /// [`VcpuRam::held_host_range`]'s walk of the snapshot's list: keeps
    /// the area holding `gpa` as the last one found, or, when none holds
    /// it, remembers its page in the copy (which is of the snapshot's
    /// generation) as holding no RAM.
    #[inline(never)]
    fn find_host_range(&mut self, gpa: u64, len: usize, need: Prot) -> Option<NonNull<u8>> {
        let found = self.snapshot.as_ref().and_then(|s| s.find(gpa).copied());
        match found {
            Some(area) => {
                self.last = LastArea(area);
                area.host_range(gpa, len, need)
            }
            None => {
                // Only reached with a snapshot held (and so a copy of its
                // list): no area holds `gpa`.
                if self.snapshot.is_some() {
                    self.copy.remember_mmio_page(gpa);
                }
                None
            }
        }
    }

    /// [`VcpuRam::host_range`] when a snapshot is needed: takes it (and
    /// brings the VCPU's copy up to date) for the rest of the assist.
    #[cold]
    #[inline(never)]
    fn snapshot_host_range(&mut self, gpa: u64, len: usize, need: Prot) -> Option<NonNull<u8>> {
        self.take_snapshot();
        self.held_host_range(gpa, len, need)
    }

    /// Takes the snapshot of the list for the rest of the assist, and
    /// brings the VCPU's copy up to date with it.
    fn take_snapshot(&mut self) {
        let snapshot = self.machine.snapshot();
        if self.copy.generation() != snapshot.generation {
            // Another list: the last area found may not be one of its.
            self.last = LastArea(GuestArea::NONE);
            self.copy.refresh(&snapshot);
        }
        self.answers_for = NO_GENERATION;
        self.snapshot = Some(snapshot);
    }

    /// [`GuestRam::check_entries`] when the last area does not hold every
    /// entry: the area of the first entry becomes the last one, and the
    /// entries are checked against it; anything else takes the default's
    /// order.
    #[inline(never)]
    fn check_entries_found(
        &mut self,
        entries: &[(u64, u64)],
        wide: bool,
    ) -> std::result::Result<EntryCheck, BusError> {
        let len = if wide { 8 } else { 4 };
        if let Some(&(first, _)) = entries.first() {
            // A pointer comes from the last area found, which is kept
            // (see `find_host_range`).
            if self.held_host_range(first, len, Prot::READ).is_some() {
                let held = if wide {
                    self.last_area_holds::<8>(entries)
                } else {
                    self.last_area_holds::<4>(entries)
                };
                if held == Some(true) {
                    return Ok(EntryCheck::Held);
                }
            }
        }
        self.check_entries_in_order(entries, wide)
    }

    /// [`VcpuRam::take_snapshot`] out of line.
    #[cold]
    #[inline(never)]
    fn take_snapshot_cold(&mut self) {
        self.take_snapshot();
    }

    /// Whether all `entries`, `N`-byte entries (8 or 4), hold their
    /// values, if the last area holds every entry and allows reads;
    /// `None` otherwise (at the first entry outside it: the ones before it
    /// may have been read, which the trait allows). Out of line: inlined
    /// into the fetch, the compiler loaded all the entries' bytes first
    /// and spilled them.
    #[inline(never)]
    fn last_area_holds<const N: usize>(&self, entries: &[(u64, u64)]) -> Option<bool> {
        let area = &self.last.0;
        // `GuestArea::NONE` (size 0) holds nothing: `None`.
        let last_offset = area.size.checked_sub(N as u64)?;
        if !area.prot.contains(Prot::READ) {
            return None;
        }
        let mut differ = 0;
        for (gpa, value) in entries {
            let offset = gpa.wrapping_sub(area.gpa);
            if offset > last_offset {
                return None;
            }
            // SAFETY: `offset + N <= size`: the entry lies in the last
            // area, inside its host mapping, which the snapshot this
            // assist holds keeps mapped (see `LastArea`). `offset` fits in
            // a `usize` as the mapping's length does.
            let src = unsafe { area.host.add(offset as usize) };
            // SAFETY: as above, for `src..src+N`.
            let now = unsafe { guest_ram::read_le::<N>(src) };
            differ |= u8::from(now != *value);
        }
        Some(differ == 0)
    }

    /// [`GuestRam::check_entries`] the trait's default way
    /// ([`nvmm_assist::check_entries_in_order`]), out of line: the fast
    /// path's answer when an entry is not in the area of the first, or
    /// some entry changed.
    #[inline(never)]
    fn check_entries_in_order(
        &mut self,
        entries: &[(u64, u64)],
        wide: bool,
    ) -> std::result::Result<EntryCheck, BusError> {
        nvmm_assist::check_entries_in_order(self, entries, wide)
    }

    /// Ends an assist: drops its snapshot, if it took one, and lets the
    /// copy (now of the snapshot's list) answer again.
    #[inline]
    fn end_assist(&mut self) {
        // Most assists take no snapshot: then nothing is stored. A
        // snapshot is held exactly when `answers_for` is NO_GENERATION
        // (see the field): compared in place, with no load of the slot.
        if self.answers_for == NO_GENERATION {
            // The last area stays: it is of the copy's generation, and is
            // used only under a snapshot of it (see `LastArea`).
            self.snapshot = None;
            self.answers_for = self.copy.generation();
        }
    }
}

/// A VCPU's [`VcpuRam`] lent to one assist (or one translation): its
/// snapshot, if the assist took one, is dropped with it (also when a
/// callback unwinds), so that no host mapping stays pinned after the
/// assist.
pub(crate) struct AreaRam<'a> {
    ram: &'a mut VcpuRam,
}

impl<'a> AreaRam<'a> {
    /// Lends `ram` (whose snapshot slot is empty: every `AreaRam` empties
    /// it when dropped) to one assist.
    #[inline]
    pub(crate) fn new(ram: &'a mut VcpuRam) -> Self {
        AreaRam { ram }
    }

    /// The RAM to hand to the assist.
    #[inline]
    pub(crate) fn get(&mut self) -> &mut VcpuRam {
        self.ram
    }

    /// Whether a snapshot has been taken (tests).
    #[cfg(test)]
    pub(crate) fn has_snapshot(&self) -> bool {
        self.ram.snapshot.is_some()
    }
}

impl Drop for AreaRam<'_> {
    #[inline]
    fn drop(&mut self) {
        self.ram.end_assist();
    }
}

impl GuestRam for VcpuRam {
    // Always inlined: the call would cost as much as the MMIO-case body.
    #[inline(always)]
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> std::result::Result<RamStatus, BusError> {
        let Some(src) = self.host_range(gpa, buf.len(), Prot::READ) else {
            return Ok(RamStatus::NotRam);
        };
        // The instruction fetch reads 15 bytes (a length the compiler
        // knows there, so this test goes away at every call site).
        if let Ok(code) = <&mut [u8; 15]>::try_from(&mut *buf) {
            // SAFETY: as below, for `src..src+15`.
            unsafe { guest_ram::read_array(src, code) };
            return Ok(RamStatus::Done);
        }
        // SAFETY: `src..src+len` lies in a registered host mapping that
        // `self.snapshot` (which `host_range` used) keeps mapped until the
        // `AreaRam` that lent `self` is dropped; guest RAM is only accessed
        // through `guest_ram` in this process.
        unsafe { guest_ram::read(src, buf) };
        Ok(RamStatus::Done)
    }

    /// The page walker's and the fetch cache's entry reads: the byte loads
    /// of `read`, assembled in a register.
    #[inline(always)]
    fn read_aligned_u64(&mut self, gpa: u64) -> std::result::Result<Option<u64>, BusError> {
        let Some(src) = self.host_range(gpa, 8, Prot::READ) else {
            return Ok(None);
        };
        // SAFETY: as in `read`, for `src..src+8`.
        Ok(Some(unsafe { guest_ram::read_le::<8>(src) }))
    }

    /// The default's answer with no lookup and one test when the last
    /// area found holds every entry (the walk's tables usually lie in the
    /// area of the last assist's): a bound test per entry against it, each
    /// entry read (the one-byte loads of `guest_ram::read_le`)
    /// and compared, the differences accumulated and tested once at the
    /// end. Otherwise the area of the first entry is
    /// looked up and the same is tried against it; anything else (an
    /// entry outside that area, or one that changed) takes the default's
    /// entry-by-entry order, out of line, which names the entry. Reading
    /// the entries after a changed one first is allowed (the trait's
    /// contract): they are plain RAM, read with the byte loads the
    /// default's `read_aligned_u64` or `read` would make.
    #[inline(always)]
    fn check_entries(
        &mut self,
        entries: &[(u64, u64)],
        wide: bool,
    ) -> std::result::Result<EntryCheck, BusError> {
        // Page-table entries are RAM: the snapshot is taken at once,
        // without asking the copy first.
        if self.answers_for != NO_GENERATION {
            self.take_snapshot_cold();
        }
        let held = if wide {
            self.last_area_holds::<8>(entries)
        } else {
            self.last_area_holds::<4>(entries)
        };
        match held {
            Some(true) => Ok(EntryCheck::Held),
            Some(false) => self.check_entries_in_order(entries, wide),
            None => self.check_entries_found(entries, wide),
        }
    }

    #[inline(always)]
    fn write(&mut self, gpa: u64, data: &[u8]) -> std::result::Result<RamStatus, BusError> {
        let Some(dst) = self.host_range(gpa, data.len(), Prot::WRITE) else {
            return Ok(RamStatus::NotRam);
        };
        // SAFETY: as in `read`.
        unsafe { guest_ram::write(dst, data) };
        Ok(RamStatus::Done)
    }

    /// See [`guest_ram::compare_and_write`] for what other CPUs observe.
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> std::result::Result<CompareWrite, BusError> {
        if expected.len() != new.len() || expected.len() > 16 {
            return Err(BusError(libc::EINVAL));
        }
        let Some(p) = self.host_range(gpa, new.len(), Prot::READ | Prot::WRITE) else {
            return Ok(CompareWrite::NotRam);
        };
        // SAFETY: as in `read`.
        let written =
            unsafe { guest_ram::compare_and_write(p, expected, new, &self.machine.cas_lock) };
        Ok(if written {
            CompareWrite::Written
        } else {
            CompareWrite::Mismatch
        })
    }
}

/// The guest access whose translation [`Vcpu::gva_to_gpa_checked`]
/// performs.
pub use nvmm_assist::AccessType as GvaAccess;

/// The result of [`Vcpu::gva_to_gpa`]: libnvmm's `*gpa` and `*prot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GvaTranslation {
    /// The guest-physical address.
    pub gpa: u64,
    /// What the guest page tables allow on the page: [`Prot::READ`]
    /// always, [`Prot::WRITE`] when every entry has R/W, [`Prot::EXEC`]
    /// unless an entry has XD (with EFER.NXE). With paging off,
    /// [`Prot::ALL`]. (libnvmm's `NVMM_PROT_READ/WRITE/EXEC`.)
    pub prot: Prot,
    /// Whether every entry has U/S, i.e. user mode may access the page
    /// (libnvmm's `NVMM_PROT_USER`). True with paging off.
    pub user: bool,
}

impl Vcpu {
    /// Translates guest-virtual `gva` as libnvmm's `nvmm_gva_to_gpa` does:
    /// fetches CRS|MSRS (no syscall when cached), then walks the guest page
    /// tables **read-only** — no access check, no accessed/dirty bit
    /// written, guest memory untouched — and returns the guest-physical
    /// address with the page's rights. With paging off (CR0.PG = 0) the
    /// address comes back unchanged, all 64 bits, with every right.
    ///
    /// Fails (libnvmm: `EFAULT`) with [`Error::Assist`] when the address is
    /// not mapped: the `#PF` it holds has an error code for a read at the
    /// CPL in the comm page (SEGS is not fetched), so do not inject it
    /// as is; use [`Vcpu::gva_to_gpa_checked`] for a fault to inject.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// let t = vcpu.gva_to_gpa(0xffff_8000_0010_0000)?;
    /// println!("{:#x} -> {:#x} {:?} user={}", 0xffff_8000_0010_0000u64, t.gpa, t.prot, t.user);
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn gva_to_gpa(&mut self, gva: u64) -> Result<GvaTranslation> {
        // libnvmm_x86.c nvmm_gva_to_gpa: getstate(CRS | MSRS), then
        // x86_gva_to_gpa (read-only walk; paging off: *gpa = gva).
        self.fetch(StateClasses::CRS | StateClasses::MSRS)?;
        let parts = self.assist_parts();
        let state = &*parts.state;
        let mut ram = AreaRam::new(parts.ram);
        let t = nvmm_assist::translate_query(state, ram.get(), gva).map_err(|source| {
            Error::Assist {
                op: Op::GvaToGpa,
                source,
            }
        })?;
        let mut prot = Prot::READ;
        prot.set(Prot::WRITE, t.writable);
        prot.set(Prot::EXEC, t.executable);
        Ok(GvaTranslation {
            gpa: t.gpa,
            prot,
            user: t.user,
        })
    }

    /// Translates `gva` for an access of kind `access` as the CPU would
    /// (nvmm-assist's walker, the one the assists use): every paging mode,
    /// the permission checks at the current CPL (SMEP, SMAP, WP, NX), and
    /// **it sets the accessed bits, and the dirty bit for a write, in the
    /// guest's page tables**, as the CPU would for the access. Fetches
    /// GPRS|SEGS|CRS|MSRS first (no syscall after an I/O or memory exit).
    /// With paging off the address is truncated to 32 bits, as a linear
    /// address outside long mode is. A fault comes back as
    /// [`Error::Assist`] holding the `#PF` (or `#GP`) to inject.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// let rip = vcpu.gprs()?.rip();
    /// let cs_base = vcpu.segs()?.get(nvmm::Seg::Cs).base;
    /// let gpa = vcpu.gva_to_gpa_checked(cs_base + rip, nvmm::GvaAccess::Execute)?;
    /// println!("the guest executes at guest-physical {gpa:#x}");
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn gva_to_gpa_checked(&mut self, gva: u64, access: AccessType) -> Result<u64> {
        self.fetch(PROVIDED_ON_IO_AND_MEMORY)?;
        let parts = self.assist_parts();
        let state = &*parts.state;
        let mut ram = AreaRam::new(parts.ram);
        nvmm_assist::translate(state, ram.get(), gva, access).map_err(|source| Error::Assist {
            op: Op::GvaToGpa,
            source,
        })
    }
}

/// How an assist ended when it succeeded (nvmm-assist's `Outcome`).
pub use nvmm_assist::Outcome;

impl Vcpu {
    /// The CPU vendor whose behaviour [`Vcpu::assist_mem`] and
    /// [`Vcpu::assist_io`] emulate for this VCPU (where Intel and AMD CPUs
    /// differ, see `nvmm_assist::vendor`): the host's vendor
    /// ([`host_vendor`]) unless [`Vcpu::set_guest_vendor`] changed it.
    /// No ioctl: a setting of this library.
    pub fn guest_vendor(&self) -> Vendor {
        self.assist_state.vendor()
    }

    /// Makes the assists emulate `vendor`'s CPUs for this VCPU, for a VMM
    /// that presents another vendor to its guest (through
    /// [`Vcpu::configure_cpuid`]). The guest's instructions still run on the
    /// host CPU; only what the assists emulate follows this setting. No
    /// ioctl: a setting of this library.
    ///
    /// ```no_run
    /// use nvmm::Vendor;
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// let mut vcpu = machine.create_vcpu(0)?;
    /// vcpu.set_guest_vendor(Vendor::Amd);
    /// assert_eq!(vcpu.guest_vendor(), Vendor::Amd);
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn set_guest_vendor(&mut self, vendor: Vendor) {
        self.assist_state.set_vendor(vendor);
    }
}

impl Vcpu {
    /// Completes the last [`crate::Exit::Io`] exit (libnvmm's
    /// `nvmm_assist_io`): performs the port access on `ports` (and, for
    /// INS/OUTS, the memory side on guest RAM through the area list, or on
    /// `mmio` where the GPA is not RAM) and updates the registers in place
    /// in the comm page. The kernel provides every class the assist needs
    /// with the exit, so this makes no syscall; the changes are committed
    /// by the next run.
    ///
    /// Where Intel and AMD CPUs differ, the assist emulates the CPU of
    /// [`Vcpu::guest_vendor`].
    ///
    /// [`Outcome::Resume`]: a bounded batch of a REP INS/OUTS was done; run
    /// again and the guest re-executes the rest. On error no register has
    /// changed (an [`Error::Assist`] holding a fault to inject, a bus
    /// error, ...).
    ///
    /// ```no_run
    /// use nvmm::nvmm_assist::{BusError, MmioBus, PortIo};
    /// struct Serial;
    /// impl PortIo for Serial {
    ///     fn read(&mut self, _port: u16, buf: &mut [u8]) -> Result<(), BusError> {
    ///         buf.fill(0xff);
    ///         Ok(())
    ///     }
    ///     fn write(&mut self, _port: u16, data: &[u8]) -> Result<(), BusError> {
    ///         print!("{}", String::from_utf8_lossy(data));
    ///         Ok(())
    ///     }
    /// }
    /// struct NoMmio;
    /// impl MmioBus for NoMmio {
    ///     fn read(&mut self, _gpa: u64, _buf: &mut [u8]) -> Result<(), BusError> {
    ///         Err(BusError(libc::EFAULT))
    ///     }
    ///     fn write(&mut self, _gpa: u64, _data: &[u8]) -> Result<(), BusError> {
    ///         Err(BusError(libc::EFAULT))
    ///     }
    /// }
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// if let nvmm::Exit::Io(_) = vcpu.run()? {
    ///     vcpu.assist_io(&mut NoMmio, &mut Serial)?;
    /// }
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    // Inlined into the VMM's exit loop, as `assist_mem`.
    #[inline(always)]
    pub fn assist_io<M, P>(&mut self, mmio: &mut M, ports: &mut P) -> Result<Outcome>
    where
        M: nvmm_assist::MmioBus + ?Sized,
        P: nvmm_assist::PortIo + ?Sized,
    {
        self.fetch(PROVIDED_ON_IO_AND_MEMORY)?;
        let parts = self.assist_parts();
        let Some(exit) = crate::exit::assist_io(parts.exit) else {
            return Err(Error::rejected(
                Op::AssistIo,
                crate::error::Rejection::WrongExit,
            ));
        };
        let state = parts.state;
        let mut ram = AreaRam::new(parts.ram);
        // INS/OUTS translate their memory operand through this VCPU's
        // fetch cache (re-validated on every use, exact); IN/OUT do not
        // touch it.
        //
        // One call per kind, each with its own copy of the exit: the
        // string path (out of line) takes the exit by reference, and with
        // one call the whole exit was stored for it before every IN/OUT
        // too (14 instructions of 69). In the IN/OUT call `string` is a
        // known `false`, so the exit's fields stay in registers.
        let result = if exit.string {
            let string = nvmm_assist::IoExit {
                string: true,
                ..exit
            };
            nvmm_assist::assist_io_cached(state, ram.get(), mmio, ports, &string, parts.fetch_cache)
        } else {
            let plain = nvmm_assist::IoExit {
                string: false,
                ..exit
            };
            nvmm_assist::assist_io_cached(state, ram.get(), mmio, ports, &plain, parts.fetch_cache)
        };
        drop(ram);
        match result {
            Ok(outcome) => {
                mark_gprs(parts.page);
                Ok(outcome)
            }
            Err(source) => Err(assist_error(Op::AssistIo, source)),
        }
    }

    /// Completes the last [`crate::Exit::Memory`] exit (libnvmm's
    /// `nvmm_assist_mem`): decodes the instruction (from the exit's bytes,
    /// or fetched at CS:RIP), performs its accesses on `mmio` (and on guest
    /// RAM for the other operand of MOVS/CMPS and the like), and updates
    /// the registers in place. No syscall after a memory exit. SSE moves
    /// to MMIO need the FPU class: call [`Vcpu::fetch`] with
    /// [`StateClasses::FPU`] first (one GETSTATE), otherwise they are
    /// reported unsupported. Where Intel and AMD CPUs differ, the assist
    /// emulates the CPU of [`Vcpu::guest_vendor`].
    ///
    /// ```no_run
    /// use nvmm::nvmm_assist::{BusError, MmioBus};
    /// /// A device with one 32-bit register at 0xfed00000.
    /// struct Timer(u32);
    /// impl MmioBus for Timer {
    ///     fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
    ///         let off = (gpa & 3) as usize;
    ///         for (i, b) in buf.iter_mut().enumerate() {
    ///             *b = self.0.to_le_bytes().get(off + i).copied().unwrap_or(0);
    ///         }
    ///         Ok(())
    ///     }
    ///     fn write(&mut self, _gpa: u64, data: &[u8]) -> Result<(), BusError> {
    ///         let mut v = [0u8; 4];
    ///         v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
    ///         self.0 = u32::from_le_bytes(v);
    ///         Ok(())
    ///     }
    /// }
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// let mut timer = Timer(0);
    /// if let nvmm::Exit::Memory(_) = vcpu.run()? {
    ///     vcpu.assist_mem(&mut timer)?;
    /// }
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    // Inlined into the VMM's exit loop: the call and the copy of its
    // result cost as much as the rest of this wrapper.
    #[inline(always)]
    pub fn assist_mem<M>(&mut self, mmio: &mut M) -> Result<Outcome>
    where
        M: nvmm_assist::MmioBus + ?Sized,
    {
        self.fetch(PROVIDED_ON_IO_AND_MEMORY)?;
        let parts = self.assist_parts();
        let Some(exit) = crate::exit::assist_mem(parts.exit) else {
            return Err(Error::rejected(
                Op::AssistMem,
                crate::error::Rejection::WrongExit,
            ));
        };
        let state = parts.state;
        let mut ram = AreaRam::new(parts.ram);
        // When the exit has no instruction bytes (VMX), the CS:RIP
        // translation comes from this VCPU's fetch cache, after the assist
        // has re-read every entry of the cached walk and compared the
        // control state (exact: see nvmm_assist::FetchCache).
        let result =
            nvmm_assist::assist_mem_cached(state, ram.get(), mmio, &exit, parts.fetch_cache);
        // The snapshot goes first: the result then flows straight to the
        // caller's check instead of being kept across the drop.
        drop(ram);
        match result {
            Ok(outcome) => {
                mark_gprs(parts.page);
                Ok(outcome)
            }
            Err(source) => Err(assist_error(Op::AssistMem, source)),
        }
    }
}

/// An assist's failure as this crate's error (kept out of line: the
/// success path should not carry the conversion).
#[cold]
#[inline(never)]
fn assist_error(op: Op, source: nvmm_assist::Error) -> Error {
    Error::Assist { op, source }
}

#[cfg(test)]
mod tests;
