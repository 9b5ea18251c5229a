//! [`Machine`]: one NVMM virtual machine, its guest memory and its VCPUs.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockWriteGuard};

use nvmm_sys as sys;

use crate::device::{Capability, NvmmInner, ioc};
use crate::error::{Error, Op, Rejection, Result, report_teardown};
use crate::guest_ram;
use crate::memory::{Areas, GpaArea, GuestArea, HostArea, HostMapping, Prot};
use crate::vcpu::Vcpu;

/// Machine configuration operations (`NVMM_IOC_MACHINE_CONFIGURE`).
///
/// x86 NVMM defines none today, so this enum has no values and
/// [`Machine::configure`] cannot be called with one; it exists so that a
/// future operation gets a typed home. [`Machine::configure_raw`] passes any
/// operation through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MachineConf {}

pub(crate) struct MachineInner {
    pub(crate) nvmm: Arc<NvmmInner>,
    pub(crate) id: u32,
    /// The current area list. Readers take a snapshot (an `Arc` clone) and
    /// release the lock at once, so no lock is held while user callbacks
    /// (`MmioBus`, `PortIo`) run; writers copy the list if a snapshot
    /// still shares it.
    areas: RwLock<Arc<Areas>>,
    /// The generation of the current list's guest areas
    /// (`Areas::generation`), readable without the lock: an assist checks
    /// its VCPU's copy of the guest ranges against it with one load.
    #[cfg_attr(not(feature = "assist"), allow(dead_code))]
    generation: AtomicU64,
    /// Serialises multi-byte `compare_and_write`s on guest RAM (see
    /// [`guest_ram::compare_and_write`]).
    // Only the assists (feature `assist`) compare-and-write guest RAM.
    #[cfg_attr(not(feature = "assist"), allow(dead_code))]
    pub(crate) cas_lock: Mutex<()>,
}

impl MachineInner {
    /// The area list as it is now. The host mappings it names stay mapped
    /// while the snapshot lives: `hva_unmap` refuses to unmap a host
    /// mapping a snapshot still holds.
    pub(crate) fn snapshot(&self) -> Arc<Areas> {
        self.areas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn areas_mut(&self) -> RwLockWriteGuard<'_, Arc<Areas>> {
        self.areas.write().unwrap_or_else(PoisonError::into_inner)
    }
    /// The current generation of the guest areas. Acquire pairs with the
    /// release in `guest_areas_changed`, though nothing is read through
    /// it: a copy is only trusted when the numbers are equal, and any
    /// change is read back under the lock.
    #[cfg(feature = "assist")]
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
    /// The guest areas of `areas` (the list behind the write lock) for a
    /// change: gives the list a new generation and publishes it, so that
    /// every VCPU's copy of the guest ranges ([`crate::memory::GuestRanges`])
    /// is out of date from now on.
    fn guest_areas_changed<'l>(&self, areas: &'l mut Arc<Areas>) -> &'l mut Vec<GuestArea> {
        let list = Arc::make_mut(areas);
        list.generation = list.generation.wrapping_add(1);
        self.generation.store(list.generation, Ordering::Release);
        &mut list.gpas
    }
    pub(crate) fn cap(&self) -> &Capability {
        &self.nvmm.cap
    }
}

impl Drop for MachineInner {
    fn drop(&mut self) {
        let mut args = sys::nvmm_ioc_machine_destroy { machid: self.id };
        // SAFETY: the argument of NVMM_IOC_MACHINE_DESTROY; no pointers.
        let r = unsafe {
            self.nvmm.ioctl(
                Op::MachineDestroy,
                ioc(sys::NVMM_IOC_MACHINE_DESTROY),
                &raw mut args,
            )
        };
        if let Err(e) = r {
            // The kernel may still map our memory into the guest: leak it
            // rather than free memory a guest could reach.
            report_teardown(&e);
            return;
        }
        let areas = self.areas.get_mut().unwrap_or_else(PoisonError::into_inner);
        let hosts = std::mem::take(&mut Arc::make_mut(areas).hosts);
        for h in hosts.into_iter().filter(|h| h.owned) {
            // SAFETY: the crate allocated this range in `hva_map`; the
            // machine is destroyed so no guest can reach it, and no Vcpu
            // (assist, snapshot) is alive because each holds this
            // MachineInner.
            if let Err(errno) = unsafe { self.nvmm.kernel.munmap(h.ptr, h.size) } {
                report_teardown(&Error::os(Op::Munmap, errno));
            }
        }
    }
}

/// Machine ids must stay below this so that `NVMM_COMM_OFF` (8 bits of the
/// machine id) names this machine's comm pages and no other's.
const MAX_MACHINE_ID: u32 = 256;

/// One NVMM machine (`NVMM_IOC_MACHINE_CREATE`); dropping it destroys it
/// (`NVMM_IOC_MACHINE_DESTROY`).
///
/// Lifetimes: the machine holds the `/dev/nvmm` descriptor alive, and each
/// [`Vcpu`] (and each `guest_memory` view, feature `vm-memory`) holds the
/// machine alive, so the kernel machine is destroyed only when the
/// `Machine` and all of them are gone. Guest memory allocated by
/// [`Machine::hva_map`] is released after the machine is destroyed.
/// A failed destroy in `Drop` is passed to the hook of
/// [`crate::set_teardown_error_hook`] and the memory is leaked.
///
/// `Machine` is `Send + Sync`: memory can be mapped from one thread while
/// VCPUs run on others (the area list is behind a lock).
pub struct Machine {
    pub(crate) inner: Arc<MachineInner>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("id", &self.inner.id)
            .field("areas", &self.gpa_areas())
            .finish()
    }
}

impl Machine {
    pub(crate) fn create(nvmm: Arc<NvmmInner>) -> Result<Machine> {
        let mut args = sys::nvmm_ioc_machine_create { machid: 0 };
        // SAFETY: the argument of NVMM_IOC_MACHINE_CREATE; the kernel writes
        // the new machid into it.
        unsafe {
            nvmm.ioctl(
                Op::MachineCreate,
                ioc(sys::NVMM_IOC_MACHINE_CREATE),
                &raw mut args,
            )
        }?;
        let inner = Arc::new(MachineInner {
            nvmm,
            id: args.machid,
            areas: RwLock::new(Arc::new(Areas::default())),
            generation: AtomicU64::new(0),
            cas_lock: Mutex::new(()),
        });
        // NVMM_COMM_OFF keeps 8 bits of the machine id: a larger id would
        // name another machine's comm pages. NetBSD's kernel caps machines
        // at NVMM_MAX_MACHINES = 128 (sys/dev/nvmm/nvmm.c,
        // nvmm_machine_alloc); another `Kernel` may not, so check here.
        // Dropping `inner` destroys the machine again.
        if inner.id >= MAX_MACHINE_ID {
            return Err(Error::rejected(
                Op::MachineCreate,
                Rejection::InvalidMachineId(inner.id),
            ));
        }
        Ok(Machine { inner })
    }

    /// The kernel's machine id.
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// The capability of the descriptor this machine came from.
    pub fn capability(&self) -> &Capability {
        self.inner.cap()
    }

    /// Applies a machine configuration (`NVMM_IOC_MACHINE_CONFIGURE`).
    /// No operation exists on x86 today; see [`MachineConf`].
    pub fn configure(&self, conf: MachineConf) -> Result<()> {
        match conf {}
    }

    /// Passes machine configuration `op` with argument `conf` to the kernel
    /// (`NVMM_IOC_MACHINE_CONFIGURE`). On x86 every op fails with `EINVAL`.
    ///
    /// # Safety
    ///
    /// `conf` must point to the structure the kernel reads for `op`.
    pub unsafe fn configure_raw(&self, op: u64, conf: *mut std::ffi::c_void) -> Result<()> {
        let mut args = sys::nvmm_ioc_machine_configure {
            machid: self.inner.id,
            op,
            conf,
        };
        // SAFETY: the argument of NVMM_IOC_MACHINE_CONFIGURE; `conf` is the
        // caller's responsibility.
        unsafe {
            self.inner.nvmm.ioctl(
                Op::MachineConfigure,
                ioc(sys::NVMM_IOC_MACHINE_CONFIGURE),
                &raw mut args,
            )
        }
    }

    /// Creates VCPU `cpuid` (`NVMM_IOC_VCPU_CREATE`) and maps its comm page
    /// (`mmap` at `NVMM_COMM_OFF(machid, cpuid)`). A cpuid outside
    /// `0..max_vcpus` is refused up front; the kernel refuses an existing
    /// cpuid with `EBUSY`. If the mapping fails the VCPU is
    /// destroyed again before the error is returned.
    ///
    /// The VCPU starts in the kernel's reset state, every class cached.
    /// One quirk of that state (NetBSD `nvmm_x86.c`
    /// `nvmm_x86_reset_state`, committed by `svm_vcpu_init` /
    /// `vmx_vcpu_init`): its `fx_mxcsr_mask` is 0, so the guest's real
    /// MXCSR is 0 while the comm page shows 0x1F80, until an FPU write
    /// ([`crate::Fpu::set_mxcsr`]) is committed by a run.
    ///
    /// ```no_run
    /// let nvmm = nvmm::Nvmm::open()?;
    /// let machine = nvmm.create_machine()?;
    /// let mut vcpu = machine.create_vcpu(0)?;
    /// println!("RIP after reset: {:#x}", vcpu.gprs()?.rip());
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn create_vcpu(&self, cpuid: u32) -> Result<Vcpu> {
        Vcpu::create(self.inner.clone(), cpuid)
    }

    /// Allocates `size` bytes of zeroed, page-aligned memory and registers it
    /// with the kernel as guest memory backing (`NVMM_IOC_HVA_MAP`). Map it
    /// into guest-physical space with [`Machine::gpa_map`].
    ///
    /// ```no_run
    /// use nvmm::Prot;
    /// let nvmm = nvmm::Nvmm::open()?;
    /// let machine = nvmm.create_machine()?;
    /// let ram = machine.hva_map(2 << 20)?;
    /// machine.gpa_map(&ram, 0, 0, 2 << 20, Prot::ALL)?;
    /// machine.write_guest(0x1000, &[0xf4])?; // HLT
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn hva_map(&self, size: usize) -> Result<HostMapping> {
        let mut areas = self.inner.areas_mut();
        if size == 0 {
            return Err(Error::rejected(Op::HvaMap, Rejection::ZeroSize));
        }
        if !crate::memory::page_aligned(size as u64) {
            return Err(Error::rejected(Op::HvaMap, Rejection::NotPageAligned));
        }
        let kernel = &self.inner.nvmm.kernel;
        let mem = kernel
            .map_anonymous(size)
            .map_err(|e| Error::os(Op::HvaMap, e))?;
        let registered = areas
            .check_host(mem, size)
            .and_then(|()| self.hva_map_ioctl(mem, size));
        if let Err(e) = registered {
            // SAFETY: allocated just above, never registered nor shared.
            if let Err(errno) = unsafe { kernel.munmap(mem, size) } {
                report_teardown(&Error::os(Op::Munmap, errno));
            }
            return Err(e);
        }
        Arc::make_mut(&mut areas)
            .hosts
            .push(HostArea::new(mem, size, true));
        Ok(HostMapping { ptr: mem, size })
    }

    /// Registers caller-owned memory with the kernel (`NVMM_IOC_HVA_MAP`).
    ///
    /// # Safety
    ///
    /// - `hva..hva+size` is a page-aligned mapping of this process that the
    ///   caller owns; the kernel **replaces** its pages with fresh zeroed
    ///   memory shared with the guest, so nothing may hold Rust references
    ///   into it, now or while it is registered (the guest writes it at any
    ///   time, and this crate's threads access it with one-byte atomics:
    ///   access it only with one-byte atomic operations, such as
    ///   `AtomicU8::from_ptr`, or through
    ///   [`Machine::read_guest`]/[`Machine::write_guest`]);
    /// - the caller must not unmap or remap the range while it is registered
    ///   (until [`Machine::hva_unmap`] returns `Ok`, which makes the kernel
    ///   unmap it from the process, or until the machine, all its VCPUs
    ///   and every `guest_memory` view of it (feature `vm-memory`) are
    ///   dropped, after which the range is the caller's again).
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// let len = 1 << 20;
    /// // SAFETY: a fresh anonymous mapping that nothing else uses.
    /// let p = unsafe {
    ///     libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE,
    ///                libc::MAP_ANON | libc::MAP_PRIVATE, -1, 0)
    /// };
    /// assert_ne!(p, libc::MAP_FAILED);
    /// // SAFETY: page-aligned, ours, only accessed through raw pointers and
    /// // never unmapped while registered.
    /// let host = unsafe { machine.hva_map_raw(p.cast(), len) }?;
    /// machine.gpa_map(&host, 0, 0x10_0000, len as u64, nvmm::Prot::ALL)?;
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub unsafe fn hva_map_raw(&self, hva: *mut u8, size: usize) -> Result<HostMapping> {
        let mut areas = self.inner.areas_mut();
        let ptr =
            NonNull::new(hva).ok_or(Error::rejected(Op::HvaMap, Rejection::NotPageAligned))?;
        areas.check_host(ptr, size)?;
        self.hva_map_ioctl(ptr, size)?;
        Arc::make_mut(&mut areas)
            .hosts
            .push(HostArea::new(ptr, size, false));
        Ok(HostMapping { ptr, size })
    }

    fn hva_map_ioctl(&self, ptr: NonNull<u8>, size: usize) -> Result<()> {
        let mut args = sys::nvmm_ioc_hva_map {
            machid: self.inner.id,
            hva: ptr.as_ptr().addr() as _,
            size,
            flags: 0,
        };
        // SAFETY: the argument of NVMM_IOC_HVA_MAP; hva/size describe a
        // mapping of this process (checked by the callers).
        unsafe {
            self.inner
                .nvmm
                .ioctl(Op::HvaMap, ioc(sys::NVMM_IOC_HVA_MAP), &raw mut args)
        }
    }

    /// Unregisters a host mapping (`NVMM_IOC_HVA_UNMAP`); the kernel unmaps
    /// the range from the process. Refused ([`Rejection::HostMappingInUse`])
    /// while a guest mapping uses it, and ([`Rejection::HostMappingBusy`])
    /// while an assist or `gva_to_gpa` of a VCPU that has looked up guest
    /// RAM is still working (for example when called from an `MmioBus`
    /// callback after the instruction read RAM). An assist that has only
    /// touched MMIO so far holds nothing: it looks the list up again at its
    /// next access.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// let vram = machine.hva_map(0x10000)?;
    /// machine.gpa_map(&vram, 0, 0xA0000, 0x10000, nvmm::Prot::READ | nvmm::Prot::WRITE)?;
    /// // Later: remove the guest range first, then release the memory.
    /// machine.gpa_unmap(0xA0000, 0x10000)?;
    /// machine.hva_unmap(vram)?;
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn hva_unmap(&self, mapping: HostMapping) -> Result<()> {
        let mut areas = self.inner.areas_mut();
        let idx = areas
            .host_index(&mapping)
            .ok_or(Error::rejected(Op::HvaUnmap, Rejection::NoSuchMapping))?;
        let host = areas
            .hosts
            .get(idx)
            .ok_or(Error::rejected(Op::HvaUnmap, Rejection::NoSuchMapping))?;
        if areas.host_in_use(host) {
            return Err(Error::rejected(Op::HvaUnmap, Rejection::HostMappingInUse));
        }
        // Another count is a snapshot of an assist in progress that may
        // still access this memory: the kernel must not unmap it yet. (An
        // acquire read: see `Pin`.)
        if !host.pin.is_sole() {
            return Err(Error::rejected(Op::HvaUnmap, Rejection::HostMappingBusy));
        }
        let mut args = sys::nvmm_ioc_hva_unmap {
            machid: self.inner.id,
            hva: host.ptr.as_ptr().addr() as _,
            size: host.size,
            flags: 0,
        };
        // SAFETY: the argument of NVMM_IOC_HVA_UNMAP; no guest area and no
        // snapshot uses the range, and the write lock keeps new snapshots
        // from taking it.
        unsafe {
            self.inner
                .nvmm
                .ioctl(Op::HvaUnmap, ioc(sys::NVMM_IOC_HVA_UNMAP), &raw mut args)
        }?;
        Arc::make_mut(&mut areas).hosts.remove(idx);
        Ok(())
    }

    /// Maps `size` bytes of `host`, starting `offset` bytes into it, at
    /// guest-physical `gpa` with guest rights `prot` (`NVMM_IOC_GPA_MAP`).
    /// Alignment, bounds and overlap with existing guest areas are checked
    /// before the kernel is asked; the area list changes only if the kernel
    /// accepts.
    pub fn gpa_map(
        &self,
        host: &HostMapping,
        offset: usize,
        gpa: u64,
        size: u64,
        prot: Prot,
    ) -> Result<()> {
        let mut areas = self.inner.areas_mut();
        let base = areas
            .host_index(host)
            .and_then(|i| areas.hosts.get(i))
            .ok_or(Error::rejected(Op::GpaMap, Rejection::NotInHostMapping))?
            .ptr;
        if offset > host.size {
            return Err(Error::rejected(Op::GpaMap, Rejection::NotInHostMapping));
        }
        // SAFETY: `offset <= size` of the host mapping `base` starts (one
        // past the end at most, which `check_gpa` then refuses).
        let host_ptr = unsafe { base.add(offset) };
        let area = GuestArea {
            gpa,
            size,
            host: host_ptr,
            prot,
        };
        areas.check_gpa(&area)?;
        let size_arg =
            usize::try_from(size).map_err(|_| Error::rejected(Op::GpaMap, Rejection::Overflow))?;
        let mut args = sys::nvmm_ioc_gpa_map {
            machid: self.inner.id,
            hva: host_ptr.as_ptr().addr() as _,
            gpa,
            size: size_arg,
            prot: prot.bits() as _,
        };
        // SAFETY: the argument of NVMM_IOC_GPA_MAP; the host range lies in a
        // registered host mapping (checked above).
        unsafe {
            self.inner
                .nvmm
                .ioctl(Op::GpaMap, ioc(sys::NVMM_IOC_GPA_MAP), &raw mut args)
        }?;
        self.inner.guest_areas_changed(&mut areas).push(area);
        Ok(())
    }

    /// Removes the guest area mapped exactly at `gpa..gpa+size`
    /// (`NVMM_IOC_GPA_UNMAP`). The list changes only if the kernel accepts.
    pub fn gpa_unmap(&self, gpa: u64, size: u64) -> Result<()> {
        let mut areas = self.inner.areas_mut();
        let idx = areas
            .gpas
            .iter()
            .position(|a| a.gpa == gpa && a.size == size)
            .ok_or(Error::rejected(Op::GpaUnmap, Rejection::NoSuchMapping))?;
        let size_arg = usize::try_from(size)
            .map_err(|_| Error::rejected(Op::GpaUnmap, Rejection::Overflow))?;
        let mut args = sys::nvmm_ioc_gpa_unmap {
            machid: self.inner.id,
            gpa,
            size: size_arg,
        };
        // SAFETY: the argument of NVMM_IOC_GPA_UNMAP; no pointers.
        unsafe {
            self.inner
                .nvmm
                .ioctl(Op::GpaUnmap, ioc(sys::NVMM_IOC_GPA_UNMAP), &raw mut args)
        }?;
        self.inner.guest_areas_changed(&mut areas).remove(idx);
        Ok(())
    }

    /// The host address and rights of guest-physical `gpa` (no syscall;
    /// libnvmm's `nvmm_gpa_to_hva`). Any `gpa` inside an area works. The
    /// memory is shared with the guest and other threads: access it only
    /// with one-byte atomic operations (as `read_guest`/`write_guest` do).
    pub fn gpa_to_hva(&self, gpa: u64) -> Result<(*mut u8, Prot)> {
        let areas = self.inner.snapshot();
        let a = areas
            .find(gpa)
            .ok_or(Error::rejected(Op::GpaToHva, Rejection::NotMapped(gpa)))?;
        let hva = a
            .host_of(gpa)
            .ok_or(Error::rejected(Op::GpaToHva, Rejection::Overflow))?;
        Ok((hva.as_ptr(), a.prot))
    }

    /// A copy of the guest areas, in mapping order.
    pub fn gpa_areas(&self) -> Vec<GpaArea> {
        self.inner
            .snapshot()
            .gpas
            .iter()
            .map(GuestArea::public)
            .collect()
    }

    /// Copies guest-physical memory at `gpa` into `buf` (host side: no
    /// protection check; the range may span adjacent areas).
    ///
    /// Guest memory is shared with running VCPUs and other threads: the
    /// copy is made of one-byte atomic accesses (see the `guest_ram`
    /// module), so it never races in the Rust sense, but bytes written at
    /// the same time by the guest or another thread may be seen half
    /// updated, as a device doing DMA would see them on hardware.
    pub fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let areas = self.inner.snapshot();
        let mut done = 0usize;
        while done < buf.len() {
            let (src, n) = chunk(&areas, gpa, done, buf.len())?;
            let dst = buf.get_mut(done..done + n).unwrap_or_default();
            // SAFETY: `src..src+n` lies inside a registered host mapping,
            // kept mapped by the snapshot; guest RAM is only accessed
            // through `guest_ram` in this process.
            unsafe { guest_ram::read(src, dst) };
            done += n;
        }
        Ok(())
    }

    /// Copies `data` into guest-physical memory at `gpa` (host side: no
    /// protection check; the range may span adjacent areas). One-byte
    /// atomic stores, as for [`Machine::read_guest`].
    pub fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let areas = self.inner.snapshot();
        let mut done = 0usize;
        while done < data.len() {
            let (dst, n) = chunk(&areas, gpa, done, data.len())?;
            let src = data.get(done..done + n).unwrap_or_default();
            // SAFETY: as in read_guest.
            unsafe { guest_ram::write(dst, src) };
            done += n;
        }
        Ok(())
    }
}

/// The host pointer and length of the part of `gpa+done..gpa+total` that
/// lies in one area.
fn chunk(areas: &Areas, gpa: u64, done: usize, total: usize) -> Result<(NonNull<u8>, usize)> {
    let at = gpa
        .checked_add(done as u64)
        .ok_or(Error::rejected(Op::GuestMemory, Rejection::Overflow))?;
    let a = areas
        .find(at)
        .ok_or(Error::rejected(Op::GuestMemory, Rejection::NotMapped(at)))?;
    let off = at - a.gpa;
    let n = usize::try_from(a.size - off)
        .unwrap_or(usize::MAX)
        .min(total - done);
    let p = a
        .host_of(at)
        .ok_or(Error::rejected(Op::GuestMemory, Rejection::Overflow))?;
    Ok((p, n))
}
