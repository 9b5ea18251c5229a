//! [`Nvmm`]: the `/dev/nvmm` descriptor, the capability and the control
//! operations.

use std::ffi::c_void;
use std::fmt;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use nvmm_sys as sys;

use crate::error::{Error, Op, Result};
use crate::machine::Machine;
use crate::sys::{Host, Kernel, OpenMode};

impl AsFd for Nvmm {
    /// The `/dev/nvmm` descriptor, borrowed (it stays owned by this value).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd()
    }
}

/// The NVMM kernel version this crate speaks (`NVMM_KERN_VERSION`).
pub const SUPPORTED_VERSION: u32 = 2;

/// What the kernel supports (`NVMM_IOC_CAPABILITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// The kernel's NVMM version (2).
    pub version: u32,
    /// `sizeof(struct nvmm_x64_state)` in the kernel.
    pub state_size: u32,
    /// How many machines may exist at once (all owners).
    pub max_machines: u32,
    /// VCPUs per machine.
    pub max_vcpus: u32,
    /// The largest guest-physical address space, in bytes.
    pub max_ram: u64,
    /// Supported machine configuration operations (bit per op).
    pub mach_conf_support: u64,
    /// Supported VCPU configuration operations: bit 0 CPUID, bit 1 TPR.
    pub vcpu_conf_support: u64,
    /// The XCR0 bits a guest may set.
    pub xcr0_mask: u64,
    /// The MXCSR bits a guest may set.
    pub mxcsr_mask: u32,
    /// How many CPUID leaves can be configured per VCPU.
    pub conf_cpuid_maxops: u32,
}

/// `NVMM_CAP_ARCH_VCPU_CONF_CPUID`.
const CAP_VCPU_CONF_CPUID: u64 = 1 << 0;
/// `NVMM_CAP_ARCH_VCPU_CONF_TPR`.
const CAP_VCPU_CONF_TPR: u64 = 1 << 1;

impl Capability {
    /// Whether VCPUs accept CPUID configuration.
    pub const fn supports_cpuid_conf(&self) -> bool {
        self.vcpu_conf_support & CAP_VCPU_CONF_CPUID != 0
    }
    /// Whether VCPUs accept TPR configuration (VMX only).
    pub const fn supports_tpr_conf(&self) -> bool {
        self.vcpu_conf_support & CAP_VCPU_CONF_TPR != 0
    }

    fn from_raw(c: &sys::nvmm_capability) -> Self {
        Capability {
            version: c.version,
            state_size: c.state_size,
            max_machines: c.max_machines,
            max_vcpus: c.max_vcpus,
            max_ram: c.max_ram,
            mach_conf_support: c.arch.mach_conf_support,
            vcpu_conf_support: c.arch.vcpu_conf_support,
            xcr0_mask: c.arch.xcr0_mask,
            mxcsr_mask: c.arch.mxcsr_mask,
            conf_cpuid_maxops: c.arch.conf_cpuid_maxops,
        }
    }
}

/// What `NVMM_CTL_MACH_INFO` reports about a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineInfo {
    /// The machine id asked about.
    pub machid: u32,
    /// How many VCPUs it has.
    pub nvcpus: u32,
    /// The sum of the sizes of the host mappings registered to the
    /// machine (`NVMM_IOC_HVA_MAP`), whether or not they are mapped into
    /// guest-physical space (NetBSD nvmm.c `nvmm_ctl_mach_info` adds up
    /// `mach->hmap[i].size`); not the guest-mapped bytes.
    pub nram: u64,
    /// The pid of the process whose descriptor owns the machine; 0 for
    /// machines created through a root (`O_WRONLY`, [`Nvmm::open_root`])
    /// descriptor, which all belong to the kernel's one root owner.
    pub pid: i32,
    /// Creation time, seconds since the Unix epoch.
    pub time: i64,
}

/// The open descriptor and what the kernel said about itself.
pub(crate) struct NvmmInner {
    pub(crate) kernel: Arc<dyn Kernel>,
    /// Given back to `kernel.close` in Drop.
    fd: ManuallyDrop<std::os::fd::OwnedFd>,
    pub(crate) cap: Capability,
}

impl NvmmInner {
    /// `ioctl` with an argument structure of type `T`, passed as `*mut`.
    ///
    /// # Safety
    ///
    /// `T` is the argument structure of `request`, and every pointer inside
    /// `*arg` is valid for what the kernel does with it.
    pub(crate) unsafe fn ioctl<T>(&self, op: Op, request: u64, arg: *mut T) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.kernel.ioctl(self.fd(), request, arg.cast::<c_void>()) }
            .map_err(|errno| Error::os(op, errno))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for NvmmInner {
    fn drop(&mut self) {
        // Closing the descriptor makes the kernel destroy every machine this
        // owner still has; by construction none of ours is alive here.
        // SAFETY: `fd` is not used again: this is the end of `self`.
        let fd = unsafe { ManuallyDrop::take(&mut self.fd) };
        self.kernel.close(fd);
    }
}

/// An open `/dev/nvmm`: the capability every machine is created from.
///
/// The kernel ties each machine to the descriptor that created it; the
/// [`Machine`]s, [`crate::Vcpu`]s and stoppers made from this value hold a
/// reference to the descriptor, so it is closed only after the last of them
/// is gone. Cloning is cheap and shares the descriptor.
#[derive(Clone)]
pub struct Nvmm {
    pub(crate) inner: Arc<NvmmInner>,
}

impl fmt::Debug for Nvmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nvmm")
            .field("fd", &self.inner.fd.as_raw_fd())
            .field("capability", &self.inner.cap)
            .finish()
    }
}

impl Nvmm {
    /// Opens `/dev/nvmm` (`O_RDONLY | O_CLOEXEC`) and reads the capability
    /// (`NVMM_IOC_CAPABILITY`). Fails with [`Error::NotAvailable`] on a host
    /// without NVMM, [`Error::VersionMismatch`] or
    /// [`Error::StateSizeMismatch`] on a kernel this crate cannot drive.
    ///
    /// ```no_run
    /// let nvmm = nvmm::Nvmm::open()?;
    /// println!("{} VCPUs per machine", nvmm.capability().max_vcpus);
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn open() -> Result<Nvmm> {
        Self::open_with(Arc::new(Host), OpenMode::User)
    }

    /// Opens `/dev/nvmm` as the root owner (`O_WRONLY | O_CLOEXEC`), which
    /// may use control operations on every owner's machines. Needs write
    /// permission on the device.
    ///
    /// ```no_run
    /// let root = nvmm::Nvmm::open_root()?;
    /// let info = root.machine_info(0)?;
    /// println!("machine 0 has {} VCPUs", info.nvcpus);
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn open_root() -> Result<Nvmm> {
        Self::open_with(Arc::new(Host), OpenMode::Root)
    }

    /// Opens NVMM through another system-call layer (the test suite's
    /// kernel model, for instance). [`Nvmm::open`] is
    /// `open_with(Arc::new(Host), OpenMode::User)`.
    pub fn open_with(kernel: Arc<dyn Kernel>, mode: OpenMode) -> Result<Nvmm> {
        let fd = kernel.open(c"/dev/nvmm", mode).map_err(|errno| {
            if matches!(errno, libc::ENOENT | libc::ENXIO | libc::ENODEV) {
                Error::NotAvailable { errno }
            } else {
                Error::os(Op::Open, errno)
            }
        })?;
        let mut inner = NvmmInner {
            kernel,
            fd: ManuallyDrop::new(fd),
            cap: Capability::from_raw(&sys::nvmm_capability::default()),
        };
        let mut args = sys::nvmm_ioc_capability::default();
        // SAFETY: the argument of NVMM_IOC_CAPABILITY; it holds no pointer.
        // On error `inner` drops and closes the descriptor.
        unsafe { inner.ioctl(Op::Capability, ioc(sys::NVMM_IOC_CAPABILITY), &raw mut args) }?;
        let cap = Capability::from_raw(&args.cap);
        if cap.version != SUPPORTED_VERSION {
            return Err(Error::VersionMismatch {
                kernel: cap.version,
                supported: SUPPORTED_VERSION,
            });
        }
        let expected = size_of::<sys::nvmm_x64_state>() as u32;
        if cap.state_size != expected {
            return Err(Error::StateSizeMismatch {
                kernel: cap.state_size,
                expected,
            });
        }
        inner.cap = cap;
        Ok(Nvmm {
            inner: Arc::new(inner),
        })
    }

    /// The capability read at open (no syscall).
    pub fn capability(&self) -> &Capability {
        &self.inner.cap
    }

    /// The raw descriptor, for what the safe API lacks. It stays owned by
    /// this value; do not close it.
    pub fn as_raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }

    /// Creates a machine (`NVMM_IOC_MACHINE_CREATE`). The kernel refuses
    /// with `ENOBUFS` when `max_machines` exist.
    ///
    /// ```no_run
    /// let nvmm = nvmm::Nvmm::open()?;
    /// let machine = nvmm.create_machine()?;
    /// println!("machine {}", machine.id());
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn create_machine(&self) -> Result<Machine> {
        Machine::create(self.inner.clone())
    }

    /// Control operation `NVMM_CTL_MACH_INFO` through `NVMM_IOC_CTL`: the
    /// VCPU count, RAM, owner pid and creation time of machine `machid`. An
    /// ordinary descriptor sees only its own machines (`EPERM` otherwise);
    /// the root descriptor of [`Nvmm::open_root`] sees all.
    pub fn machine_info(&self, machid: u32) -> Result<MachineInfo> {
        let mut info = sys::nvmm_ctl_mach_info {
            machid,
            ..Default::default()
        };
        let mut args = sys::nvmm_ioc_ctl {
            op: sys::NVMM_CTL_MACH_INFO as _,
            data: (&raw mut info).cast::<c_void>(),
            size: size_of::<sys::nvmm_ctl_mach_info>(),
        };
        // SAFETY: the argument of NVMM_IOC_CTL; `data` points to a live
        // nvmm_ctl_mach_info of `size` bytes that the kernel fills.
        unsafe {
            self.inner
                .ioctl(Op::Ctl, ioc(sys::NVMM_IOC_CTL), &raw mut args)
        }?;
        Ok(MachineInfo {
            machid: info.machid,
            nvcpus: info.nvcpus,
            nram: info.nram,
            pid: info.pid,
            time: info.time,
        })
    }
}

/// An ioctl request number as the syscall layer takes it.
#[inline]
pub(crate) fn ioc<T: Into<u64>>(request: T) -> u64 {
    request.into()
}
