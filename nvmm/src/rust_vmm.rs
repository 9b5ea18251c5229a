//! A machine's guest RAM as a rust-vmm [`vm_memory::GuestMemory`] (feature
//! `vm-memory`), so that `linux-loader`, the virtio queue crates and other
//! rust-vmm code work on NVMM guest RAM.
//!
//! [`Machine::guest_memory`] returns a [`GuestMemoryView`]: one
//! [`GuestRegion`] per guest-physical area (`NVMM_IOC_GPA_MAP`), backed by
//! the host memory the crate registered with `NVMM_IOC_HVA_MAP`. The view
//! implements [`vm_memory::GuestMemoryBackend`], hence `GuestMemory` and
//! `Bytes<GuestAddress>`; wrap it in an `Arc` where a
//! [`vm_memory::GuestAddressSpace`] is wanted.
//!
//! ```no_run
//! use nvmm::rust_vmm::vm_memory::{Bytes, GuestAddress};
//! use nvmm::{Nvmm, Prot};
//!
//! let nvmm = Nvmm::open()?;
//! let machine = nvmm.create_machine()?;
//! let ram = machine.hva_map(1 << 20)?;
//! machine.gpa_map(&ram, 0, 0, 1 << 20, Prot::ALL)?;
//! // SAFETY: no VCPU or device thread runs yet, so nothing else on the
//! // host touches guest RAM while the view writes it.
//! let mem = unsafe { machine.guest_memory() };
//! mem.write_slice(&[0xF4], GuestAddress(0x1000)).expect("mapped"); // hlt
//! # Ok::<(), nvmm::Error>(())
//! ```
//!
//! # Volatile accesses, not one-byte atomics
//!
//! Every access *this crate* makes to guest RAM ([`Machine::read_guest`],
//! [`Machine::write_guest`], the assists, `gva_to_gpa`'s page walk) is a
//! one-byte atomic operation, so that host threads sharing guest RAM never
//! race in the Rust memory model (see `Machine::read_guest`). vm-memory
//! accesses memory through `VolatileSlice`: copies are volatile accesses
//! (`read_volatile`/`write_volatile` or `memcpy`), and its `load`/`store`
//! are atomics of the integer's width. A volatile access racing with
//! another host access to the same bytes, or an atomic racing with one of
//! a different size, is a data race (undefined behaviour), which no
//! vm-memory type can rule out. Hence [`Machine::guest_memory`] is
//! `unsafe`: its caller promises that, while an access through the view is
//! in progress, no other host thread accesses the same bytes (through this
//! crate, another view, or raw pointers), unless both accesses only read.
//!
//! The guest itself is not a party to this: its accesses come from outside
//! the Rust abstract machine (as with KVM guest memory under vm-memory), so
//! a VCPU running while the view is used is allowed; like a DMA device on
//! real hardware, the view may see a guest write half done.
//!
//! What this means for a VMM: load images (linux-loader), write boot
//! structures and set up virtio queues through the view before the VCPUs
//! run, or from one device thread that owns the memory it touches (a
//! virtqueue's rings and buffers). Where several host threads may touch
//! the same guest bytes at once (an MMIO assist emulating a guest access
//! while a device thread copies the same buffer), use
//! [`Machine::read_guest`]/[`Machine::write_guest`] instead.
//!
//! # What the view holds
//!
//! The view is a snapshot of the machine's guest areas when it was taken,
//! as `vm-memory`'s `GuestMemory` is an immutable collection of regions:
//! after [`Machine::gpa_map`] or [`Machine::gpa_unmap`] take a new view.
//! It keeps the host memory it points to alive: [`Machine::hva_unmap`] of
//! a host mapping the view uses fails with
//! [`Rejection::HostMappingBusy`](crate::Rejection::HostMappingBusy), and
//! the machine is not destroyed (`NVMM_IOC_MACHINE_DESTROY`), nor its
//! memory released, until the view is dropped, as for a [`crate::Vcpu`].
//! No dirty-page bitmap: NVMM has no dirty-page tracking (see
//! [`crate::limitations`]).

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

pub use vm_memory;
use vm_memory::bitmap::BS;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion, GuestMemoryRegionBytes,
    GuestUsize, MemoryRegionAddress, VolatileSlice,
};

use crate::machine::{Machine, MachineInner};
use crate::memory::{Areas, Prot};

/// One guest-physical area of a [`GuestMemoryView`]: `len` bytes of guest
/// RAM at [`start_addr`](GuestMemoryRegion::start_addr), backed by host
/// memory registered with the machine.
///
/// Only reachable by reference from its view, which keeps the memory
/// alive (a region is neither `Clone` nor constructible outside the crate).
pub struct GuestRegion {
    start: u64,
    len: u64,
    host: NonNull<u8>,
    prot: Prot,
}

// SAFETY: the region is a pointer into a host mapping that its view keeps
// mapped; accesses through it are vm-memory's volatile accesses, whose
// freedom from races with other host threads is the contract of
// `Machine::guest_memory`, not a property of the thread holding the view.
unsafe impl Send for GuestRegion {}
// SAFETY: see `Send`.
unsafe impl Sync for GuestRegion {}

impl fmt::Debug for GuestRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRegion")
            .field("gpa", &format_args!("{:#x}", self.start))
            .field("len", &format_args!("{:#x}", self.len))
            .field("hva", &self.host)
            .field("prot", &self.prot)
            .finish()
    }
}

impl GuestRegion {
    /// The guest's access rights of this area (as given to
    /// `NVMM_IOC_GPA_MAP`). The view does not enforce them: the host may
    /// write a read-only area, as [`Machine::write_guest`] may.
    pub fn prot(&self) -> Prot {
        self.prot
    }

    /// The host pointer of `offset..offset+count` if it lies in the region.
    fn host_range(&self, offset: MemoryRegionAddress, count: usize) -> Option<NonNull<u8>> {
        let end = offset.0.checked_add(u64::try_from(count).ok()?)?;
        if end > self.len {
            return None;
        }
        let off = usize::try_from(offset.0).ok()?;
        // SAFETY: `off + count <= len`, and the region lies inside one host
        // mapping (an invariant of the machine's area list), so the result
        // stays in that allocation.
        Some(unsafe { self.host.add(off) })
    }
}

impl GuestMemoryRegion for GuestRegion {
    type B = ();

    fn len(&self) -> GuestUsize {
        self.len
    }

    fn start_addr(&self) -> GuestAddress {
        GuestAddress(self.start)
    }

    fn bitmap(&self) -> BS<'_, ()> {}

    fn get_host_address(
        &self,
        addr: MemoryRegionAddress,
    ) -> vm_memory::guest_memory::Result<*mut u8> {
        // A zero-length range at `addr` must still be inside the region.
        match self.host_range(addr, 1) {
            Some(p) => Ok(p.as_ptr()),
            None => Err(GuestMemoryError::InvalidBackendAddress),
        }
    }

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> vm_memory::guest_memory::Result<VolatileSlice<'_, BS<'_, ()>>> {
        let p = self
            .host_range(offset, count)
            .ok_or(GuestMemoryError::InvalidBackendAddress)?;
        // SAFETY: `p..p+count` lies in a host mapping that the view owning
        // this region keeps mapped for as long as the region is borrowed
        // (the slice's lifetime). That the other host accesses to these
        // bytes do not race with the slice's volatile ones is the contract
        // of `Machine::guest_memory`; the guest's accesses are outside the
        // Rust abstract machine.
        Ok(unsafe { VolatileSlice::new(p.as_ptr(), count) })
    }
}

// The `Bytes<MemoryRegionAddress>` accessors, built on `get_slice`.
impl GuestMemoryRegionBytes for GuestRegion {}

/// A machine's guest RAM as a rust-vmm `GuestMemory`: one [`GuestRegion`]
/// per guest area, in guest-physical order. From [`Machine::guest_memory`];
/// see the [module docs](self) for the access rules.
pub struct GuestMemoryView {
    regions: Vec<GuestRegion>,
    /// Pins the host mappings the regions point into: `hva_unmap` refuses
    /// to unmap one while this snapshot of the area list lives.
    _areas: Arc<Areas>,
    /// Keeps the machine from being destroyed, and the memory it allocated
    /// from being released (`MachineInner`'s drop), while the view lives.
    _machine: Arc<MachineInner>,
}

impl fmt::Debug for GuestMemoryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemoryView")
            .field("machine", &self._machine.id)
            .field("regions", &self.regions)
            .finish()
    }
}

impl GuestMemoryBackend for GuestMemoryView {
    type R = GuestRegion;

    fn num_regions(&self) -> usize {
        self.regions.len()
    }

    fn find_region(&self, addr: GuestAddress) -> Option<&GuestRegion> {
        // Regions are sorted and disjoint: the candidate is the last one
        // starting at or below `addr`.
        let after = self.regions.partition_point(|r| r.start <= addr.0);
        let region = self.regions.get(after.checked_sub(1)?)?;
        (addr.0 - region.start < region.len).then_some(region)
    }

    fn iter(&self) -> impl Iterator<Item = &GuestRegion> {
        self.regions.iter()
    }
}

impl Machine {
    /// This machine's guest RAM as a rust-vmm `GuestMemory` (feature
    /// `vm-memory`; no syscall): a snapshot of the guest areas, keeping
    /// their host memory and the machine alive while it lives. See
    /// [`crate::rust_vmm`].
    ///
    /// # Safety
    ///
    /// vm-memory's accesses are volatile, not this crate's one-byte
    /// atomics: while an access through the view (or a `VolatileSlice`,
    /// host address or reference obtained from it) is in progress, no
    /// other host thread may access the same bytes of guest RAM, through
    /// this crate ([`Machine::read_guest`], [`Machine::write_guest`], the
    /// assists, `gva_to_gpa`), another view or raw pointers, unless both
    /// accesses only read. The guest's own accesses do not count.
    pub unsafe fn guest_memory(&self) -> GuestMemoryView {
        let areas = self.inner.snapshot();
        let mut regions: Vec<GuestRegion> = areas
            .gpas
            .iter()
            .map(|a| GuestRegion {
                start: a.gpa,
                len: a.size,
                host: a.host,
                prot: a.prot,
            })
            .collect();
        // Guest areas never overlap (an invariant of the area list), so
        // sorting by start gives the order vm-memory's lookups expect.
        regions.sort_by_key(|r| r.start);
        GuestMemoryView {
            regions,
            _areas: areas,
            _machine: Arc::clone(&self.inner),
        }
    }
}
