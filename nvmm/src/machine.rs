//! [`Machine`]: one NVMM virtual machine, its guest memory and its VCPUs.

use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use nvmm_sys as sys;

use crate::device::{Capability, NvmmInner, ioc};
use crate::error::{Error, Op, Rejection, Result, report_teardown};
use crate::memory::{Areas, GpaArea, HostArea, HostMapping, Prot};
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
    areas: RwLock<Areas>,
}

impl MachineInner {
    pub(crate) fn areas(&self) -> RwLockReadGuard<'_, Areas> {
        self.areas.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn areas_mut(&self) -> RwLockWriteGuard<'_, Areas> {
        self.areas.write().unwrap_or_else(PoisonError::into_inner)
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
        for h in areas.hosts.drain(..).filter(|h| h.owned) {
            let Some(p) = NonNull::new(h.hva as *mut u8) else {
                continue;
            };
            // SAFETY: the crate allocated this range in `hva_map`; the
            // machine is destroyed so no guest can reach it, and no Vcpu
            // (assist) is alive because each holds this MachineInner.
            if let Err(errno) = unsafe { self.nvmm.kernel.munmap(p, h.size) } {
                report_teardown(&Error::os(Op::Munmap, errno));
            }
        }
    }
}

/// One NVMM machine (`NVMM_IOC_MACHINE_CREATE`); dropping it destroys it
/// (`NVMM_IOC_MACHINE_DESTROY`).
///
/// Lifetimes: the machine holds the `/dev/nvmm` descriptor alive, and each
/// [`Vcpu`] holds the machine alive, so the kernel machine is destroyed only
/// when the `Machine` and all its VCPUs are gone. Guest memory allocated by
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
        Ok(Machine {
            inner: Arc::new(MachineInner {
                nvmm,
                id: args.machid,
                areas: RwLock::new(Areas::default()),
            }),
        })
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
        let hva = mem.as_ptr() as usize;
        let registered = areas
            .check_host(hva, size)
            .and_then(|()| self.hva_map_ioctl(hva, size));
        if let Err(e) = registered {
            // SAFETY: allocated just above, never registered nor shared.
            if let Err(errno) = unsafe { kernel.munmap(mem, size) } {
                report_teardown(&Error::os(Op::Munmap, errno));
            }
            return Err(e);
        }
        areas.hosts.push(HostArea {
            hva,
            size,
            owned: true,
        });
        Ok(HostMapping { hva, size })
    }

    /// Registers caller-owned memory with the kernel (`NVMM_IOC_HVA_MAP`).
    ///
    /// # Safety
    ///
    /// - `hva..hva+size` is a page-aligned mapping of this process that the
    ///   caller owns; the kernel **replaces** its pages with fresh zeroed
    ///   memory shared with the guest, so nothing may hold Rust references
    ///   into it, now or while it is registered (the guest writes it at any
    ///   time: access it only through raw pointers or
    ///   [`Machine::read_guest`]/[`Machine::write_guest`]);
    /// - the caller must not unmap or remap the range while it is registered
    ///   (until [`Machine::hva_unmap`] returns `Ok`, which makes the kernel
    ///   unmap it from the process, or until the machine and all its VCPUs
    ///   are dropped, after which the range is the caller's again).
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
        let hva = hva as usize;
        areas.check_host(hva, size)?;
        self.hva_map_ioctl(hva, size)?;
        areas.hosts.push(HostArea {
            hva,
            size,
            owned: false,
        });
        Ok(HostMapping { hva, size })
    }

    fn hva_map_ioctl(&self, hva: usize, size: usize) -> Result<()> {
        let mut args = sys::nvmm_ioc_hva_map {
            machid: self.inner.id,
            hva: hva as _,
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
    /// the range from the process. Refused while a guest mapping uses it.
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
            .copied()
            .ok_or(Error::rejected(Op::HvaUnmap, Rejection::NoSuchMapping))?;
        if areas.host_in_use(&host) {
            return Err(Error::rejected(Op::HvaUnmap, Rejection::HostMappingInUse));
        }
        let mut args = sys::nvmm_ioc_hva_unmap {
            machid: self.inner.id,
            hva: host.hva as _,
            size: host.size,
            flags: 0,
        };
        // SAFETY: the argument of NVMM_IOC_HVA_UNMAP; no guest area uses the
        // range and the lock keeps assists from reading it.
        unsafe {
            self.inner
                .nvmm
                .ioctl(Op::HvaUnmap, ioc(sys::NVMM_IOC_HVA_UNMAP), &raw mut args)
        }?;
        areas.hosts.remove(idx);
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
        if areas.host_index(host).is_none() {
            return Err(Error::rejected(Op::GpaMap, Rejection::NotInHostMapping));
        }
        let hva = host
            .hva
            .checked_add(offset)
            .ok_or(Error::rejected(Op::GpaMap, Rejection::Overflow))?;
        let area = GpaArea {
            gpa,
            size,
            hva,
            prot,
        };
        areas.check_gpa(&area)?;
        let size_arg =
            usize::try_from(size).map_err(|_| Error::rejected(Op::GpaMap, Rejection::Overflow))?;
        let mut args = sys::nvmm_ioc_gpa_map {
            machid: self.inner.id,
            hva: hva as _,
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
        areas.gpas.push(area);
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
        areas.gpas.remove(idx);
        Ok(())
    }

    /// The host address and rights of guest-physical `gpa` (no syscall;
    /// libnvmm's `nvmm_gpa_to_hva`). Any `gpa` inside an area works.
    pub fn gpa_to_hva(&self, gpa: u64) -> Result<(*mut u8, Prot)> {
        let areas = self.inner.areas();
        let a = areas
            .find(gpa)
            .ok_or(Error::rejected(Op::GpaToHva, Rejection::NotMapped(gpa)))?;
        let hva = (a.hva as u64)
            .checked_add(gpa - a.gpa)
            .ok_or(Error::rejected(Op::GpaToHva, Rejection::Overflow))?;
        Ok((hva as usize as *mut u8, a.prot))
    }

    /// A copy of the guest areas, in mapping order.
    pub fn gpa_areas(&self) -> Vec<GpaArea> {
        self.inner.areas().gpas.clone()
    }

    /// Copies guest-physical memory at `gpa` into `buf` (host side: no
    /// protection check; the range may span adjacent areas).
    ///
    /// Guest memory is shared with running VCPUs: bytes a guest writes at
    /// the same time may be read half-updated, as on hardware. The copy is
    /// a plain memory copy, so two host threads writing the same guest bytes
    /// at once (for example `write_guest` and an assist) must be ordered by
    /// the VMM, like any device model accessing shared RAM.
    pub fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let areas = self.inner.areas();
        let mut done = 0usize;
        while done < buf.len() {
            let (src, n) = chunk(&areas, gpa, done, buf.len())?;
            let dst = buf.get_mut(done..done + n).unwrap_or_default();
            // SAFETY: `src..src+n` lies inside a registered host mapping,
            // held alive by the read lock; the guest may write it meanwhile
            // (racy bytes, as on real hardware), never freed under us.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), dst.len()) };
            done += n;
        }
        Ok(())
    }

    /// Copies `data` into guest-physical memory at `gpa` (host side: no
    /// protection check; the range may span adjacent areas).
    pub fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let areas = self.inner.areas();
        let mut done = 0usize;
        while done < data.len() {
            let (dst, n) = chunk(&areas, gpa, done, data.len())?;
            let src = data.get(done..done + n).unwrap_or_default();
            // SAFETY: as in read_guest; the destination is guest memory, not
            // referenced by any Rust reference.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), src.len()) };
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
    let n = ((a.size - off) as usize).min(total - done);
    let p = (a.hva as u64)
        .checked_add(off)
        .and_then(|p| NonNull::new(p as usize as *mut u8))
        .ok_or(Error::rejected(Op::GuestMemory, Rejection::Overflow))?;
    Ok((p, n))
}
