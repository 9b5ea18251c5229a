//! The one error type of the crate: which operation failed, and why (an
//! errno from the kernel, or a rule checked before the kernel was asked).

use std::fmt;
use std::sync::RwLock;

/// The operation that failed, named after the ioctl or system call it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// `open("/dev/nvmm")`.
    Open,
    /// `NVMM_IOC_CAPABILITY`.
    Capability,
    /// `NVMM_IOC_MACHINE_CREATE`.
    MachineCreate,
    /// `NVMM_IOC_MACHINE_DESTROY`.
    MachineDestroy,
    /// `NVMM_IOC_MACHINE_CONFIGURE`.
    MachineConfigure,
    /// `NVMM_IOC_VCPU_CREATE`.
    VcpuCreate,
    /// `NVMM_IOC_VCPU_DESTROY`.
    VcpuDestroy,
    /// `NVMM_IOC_VCPU_CONFIGURE`.
    VcpuConfigure,
    /// `NVMM_IOC_VCPU_GETSTATE`.
    VcpuGetState,
    /// Writing state into the comm page (libnvmm's `nvmm_vcpu_setstate`).
    VcpuSetState,
    /// Writing an event into the comm page (libnvmm's `nvmm_vcpu_inject`).
    VcpuInject,
    /// `NVMM_IOC_VCPU_RUN`.
    VcpuRun,
    /// Completing an exit (RDMSR, WRMSR, CPUID, ...) in the guest registers.
    CompleteExit,
    /// `NVMM_IOC_HVA_MAP` (and the anonymous `mmap` behind it).
    HvaMap,
    /// `NVMM_IOC_HVA_UNMAP`.
    HvaUnmap,
    /// `NVMM_IOC_GPA_MAP`.
    GpaMap,
    /// `NVMM_IOC_GPA_UNMAP`.
    GpaUnmap,
    /// `NVMM_IOC_CTL`.
    Ctl,
    /// `mmap` of a VCPU comm page at `NVMM_COMM_OFF(machid, cpuid)`.
    CommPageMap,
    /// `munmap` of a VCPU comm page or of crate-allocated guest memory.
    Munmap,
    /// Guest-physical to host-virtual lookup in the area list.
    GpaToHva,
    /// Guest-virtual to guest-physical translation (page walk).
    GvaToGpa,
    /// Reading or writing guest RAM through the area list.
    GuestMemory,
    /// The I/O assist.
    AssistIo,
    /// The memory assist.
    AssistMem,
    /// Signalling a thread to leave `NVMM_IOC_VCPU_RUN`.
    Signal,
}

impl Op {
    /// The name of the kernel interface this operation uses.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Open => "open(/dev/nvmm)",
            Op::Capability => "NVMM_IOC_CAPABILITY",
            Op::MachineCreate => "NVMM_IOC_MACHINE_CREATE",
            Op::MachineDestroy => "NVMM_IOC_MACHINE_DESTROY",
            Op::MachineConfigure => "NVMM_IOC_MACHINE_CONFIGURE",
            Op::VcpuCreate => "NVMM_IOC_VCPU_CREATE",
            Op::VcpuDestroy => "NVMM_IOC_VCPU_DESTROY",
            Op::VcpuConfigure => "NVMM_IOC_VCPU_CONFIGURE",
            Op::VcpuGetState => "NVMM_IOC_VCPU_GETSTATE",
            Op::VcpuSetState => "setstate (comm page)",
            Op::VcpuInject => "inject (comm page)",
            Op::VcpuRun => "NVMM_IOC_VCPU_RUN",
            Op::CompleteExit => "exit completion",
            Op::HvaMap => "NVMM_IOC_HVA_MAP",
            Op::HvaUnmap => "NVMM_IOC_HVA_UNMAP",
            Op::GpaMap => "NVMM_IOC_GPA_MAP",
            Op::GpaUnmap => "NVMM_IOC_GPA_UNMAP",
            Op::Ctl => "NVMM_IOC_CTL",
            Op::CommPageMap => "mmap(comm page)",
            Op::Munmap => "munmap",
            Op::GpaToHva => "gpa_to_hva",
            Op::GvaToGpa => "gva_to_gpa",
            Op::GuestMemory => "guest memory access",
            Op::AssistIo => "assist_io",
            Op::AssistMem => "assist_mem",
            Op::Signal => "pthread_kill",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule the crate checked before asking the kernel, mirroring what the
/// kernel (or libnvmm) would have refused. Each maps to the errno the
/// kernel would have returned ([`Rejection::errno`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// An address or size is not a multiple of the 4096-byte page.
    NotPageAligned,
    /// A size of zero.
    ZeroSize,
    /// `start + size` overflows.
    Overflow,
    /// The guest-physical range overlaps an existing guest mapping.
    GpaOverlap,
    /// The host range overlaps an existing host mapping.
    HvaOverlap,
    /// The host range is not wholly inside one host mapping of this machine.
    NotInHostMapping,
    /// The host mapping is still mapped into guest-physical space; unmap the
    /// guest ranges first.
    HostMappingInUse,
    /// No mapping matches exactly.
    NoSuchMapping,
    /// No guest mapping covers this guest-physical address.
    NotMapped(u64),
    /// This exception vector cannot be injected (0, 2, 3 and >= 32 are
    /// refused by the kernel; use [`crate::Event::Nmi`] for an NMI).
    InvalidExceptionVector(u8),
    /// A CPUID mask sets and deletes the same bit.
    CpuidSetDelOverlap,
    /// More CPUID leaves configured than `conf_cpuid_maxops`.
    TooManyCpuidLeaves,
    /// The kernel does not support this configuration (capability bit clear).
    NotSupported(&'static str),
    /// The last exit was not of the kind this completion helper expects.
    WrongExit,
    /// A VCPU number outside `0..max_vcpus`.
    InvalidVcpuId(u32),
    /// The kernel returned a machine id of 256 or more, which
    /// `NVMM_COMM_OFF` cannot encode (the machine was destroyed again).
    InvalidMachineId(u32),
    /// The host mapping is in use by an assist or translation in progress
    /// (e.g. `hva_unmap` called from an `MmioBus` callback); retry after it.
    HostMappingBusy,
    /// The signal has no handler installed, so it would not interrupt the
    /// run but kill or be ignored by the process.
    SignalNotHandled(i32),
}

impl Rejection {
    /// The errno the kernel (or libnvmm) reports for the same condition.
    pub const fn errno(self) -> i32 {
        match self {
            Rejection::NotPageAligned
            | Rejection::ZeroSize
            | Rejection::Overflow
            | Rejection::GpaOverlap
            | Rejection::NotInHostMapping
            | Rejection::InvalidExceptionVector(_)
            | Rejection::CpuidSetDelOverlap
            | Rejection::InvalidVcpuId(_)
            | Rejection::InvalidMachineId(_)
            | Rejection::SignalNotHandled(_)
            | Rejection::WrongExit => libc::EINVAL,
            Rejection::HvaOverlap => libc::EEXIST,
            Rejection::HostMappingInUse | Rejection::HostMappingBusy => libc::EBUSY,
            Rejection::NoSuchMapping | Rejection::NotMapped(_) => libc::ENOENT,
            Rejection::TooManyCpuidLeaves => libc::ENOBUFS,
            Rejection::NotSupported(_) => libc::ENOTSUP,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotPageAligned => f.write_str("address or size not page-aligned"),
            Rejection::ZeroSize => f.write_str("size is zero"),
            Rejection::Overflow => f.write_str("range end overflows"),
            Rejection::GpaOverlap => f.write_str("guest-physical range overlaps a mapping"),
            Rejection::HvaOverlap => f.write_str("host range overlaps a host mapping"),
            Rejection::NotInHostMapping => {
                f.write_str("host range not inside one host mapping of this machine")
            }
            Rejection::HostMappingInUse => {
                f.write_str("host mapping still mapped into guest-physical space")
            }
            Rejection::NoSuchMapping => f.write_str("no mapping matches"),
            Rejection::NotMapped(gpa) => write!(f, "guest-physical address {gpa:#x} not mapped"),
            Rejection::InvalidExceptionVector(v) => {
                write!(f, "exception vector {v} cannot be injected")
            }
            Rejection::CpuidSetDelOverlap => f.write_str("CPUID mask sets and deletes one bit"),
            Rejection::TooManyCpuidLeaves => f.write_str("too many CPUID leaves configured"),
            Rejection::NotSupported(what) => write!(f, "not supported by this kernel: {what}"),
            Rejection::WrongExit => f.write_str("the last exit is not of this kind"),
            Rejection::InvalidVcpuId(id) => write!(f, "VCPU id {id} out of range"),
            Rejection::InvalidMachineId(id) => {
                write!(f, "machine id {id} cannot be encoded in a comm-page offset")
            }
            Rejection::HostMappingBusy => {
                f.write_str("host mapping in use by an assist or translation in progress")
            }
            Rejection::SignalNotHandled(s) => write!(f, "signal {s} has no handler installed"),
        }
    }
}

/// Everything that can go wrong, always naming the operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel (or the C library) refused the operation with this errno.
    #[error("{op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Os {
        /// The operation.
        op: Op,
        /// The errno.
        errno: i32,
    },
    /// The crate refused the operation before the kernel saw it.
    #[error("{op} refused: {reason}")]
    Rejected {
        /// The operation.
        op: Op,
        /// Which rule.
        reason: Rejection,
    },
    /// `/dev/nvmm` does not exist or has no backend.
    #[error(
        "NVMM is not available (/dev/nvmm: {}): NVMM needs NetBSD/x86_64 with the nvmm kernel module loaded",
        std::io::Error::from_raw_os_error(*errno)
    )]
    NotAvailable {
        /// The errno of the `open`.
        errno: i32,
    },
    /// The kernel speaks an NVMM version this crate does not support.
    #[error(
        "NVMM kernel version {kernel} is not supported (this crate speaks version {supported})"
    )]
    VersionMismatch {
        /// The version the kernel reports.
        kernel: u32,
        /// The version this crate supports.
        supported: u32,
    },
    /// The kernel's VCPU state structure has another size than the bindings'.
    #[error(
        "NVMM kernel state size {kernel} differs from this crate's {expected} (headers mismatch)"
    )]
    StateSizeMismatch {
        /// `capability.state_size` from the kernel.
        kernel: u32,
        /// `size_of::<nvmm_x64_state>()` of the bindings.
        expected: u32,
    },
    /// An assist could not complete the instruction; no guest register was
    /// changed. The message names the operation; the cause (the fault
    /// with its address in hex, the unsupported bytes, ...) is
    /// [`std::error::Error::source`], so that a printed chain
    /// (`op failed: cause`) says it once.
    #[cfg(feature = "assist")]
    #[error("{op} failed")]
    Assist {
        /// [`Op::AssistIo`] or [`Op::AssistMem`].
        op: Op,
        /// What the assist reported (a fault to inject, an unsupported
        /// instruction, a bus error).
        source: nvmm_assist::Error,
    },
}

impl Error {
    pub(crate) const fn os(op: Op, errno: i32) -> Self {
        Error::Os { op, errno }
    }

    pub(crate) const fn rejected(op: Op, reason: Rejection) -> Self {
        Error::Rejected { op, reason }
    }

    /// The operation that failed ([`Op::Open`] for a missing device,
    /// [`Op::Capability`] for the version and state-size checks).
    pub fn op(&self) -> Op {
        match self {
            Error::Os { op, .. } | Error::Rejected { op, .. } => *op,
            Error::NotAvailable { .. } => Op::Open,
            Error::VersionMismatch { .. } | Error::StateSizeMismatch { .. } => Op::Capability,
            #[cfg(feature = "assist")]
            Error::Assist { op, .. } => *op,
        }
    }

    /// The errno this error corresponds to.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Os { errno, .. } | Error::NotAvailable { errno } => *errno,
            Error::Rejected { reason, .. } => reason.errno(),
            // libnvmm's nvmm_init sets EPROGMISMATCH; Linux has no such errno.
            Error::VersionMismatch { .. } | Error::StateSizeMismatch { .. } => libc::EPROTO,
            #[cfg(feature = "assist")]
            Error::Assist { source, .. } => match source {
                nvmm_assist::Error::Bus(b) => b.0,
                _ => libc::EFAULT,
            },
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Os { errno, .. } => {
                let kind = std::io::Error::from_raw_os_error(errno).kind();
                std::io::Error::new(kind, e)
            }
            Error::NotAvailable { .. } => std::io::Error::new(std::io::ErrorKind::NotFound, e),
            Error::Rejected { .. } => std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            _ => std::io::Error::other(e),
        }
    }
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Signature of the teardown hook, see [`set_teardown_error_hook`].
pub type TeardownHook = fn(&Error);

static TEARDOWN_HOOK: RwLock<Option<TeardownHook>> = RwLock::new(None);

/// Installs a function called when a `Drop` (VCPU destroy, comm-page
/// unmap or retire, machine destroy, memory unmap) fails. Drops never
/// panic; without a hook such failures are ignored. The hook runs on the
/// dropping thread, with no lock of this crate held: it may drop other
/// NVMM objects and may call `set_teardown_error_hook` itself. A hook that
/// panics is caught (the panic is reported by the panic hook as usual and
/// the drop goes on); with `panic = "abort"` it aborts the process, as any
/// panic does. Drops reached from a signal handler (the last
/// [`crate::VcpuStopper`]) are not async-signal-safe anyway; see there.
pub fn set_teardown_error_hook(hook: Option<TeardownHook>) {
    let mut slot = TEARDOWN_HOOK
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *slot = hook;
}

pub(crate) fn report_teardown(e: &Error) {
    // Copy the function out: the lock is not held while it runs.
    let hook = *TEARDOWN_HOOK
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(hook) = hook {
        // A panic must not escape a Drop (it would abort when the drop
        // runs during unwinding, and leave the teardown half done).
        let _ = std::panic::catch_unwind(|| hook(e));
    }
}
