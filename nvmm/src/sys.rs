//! The system-call layer: the only place this crate talks to the OS about
//! NVMM. [`Host`] is the real operating system; anything else implementing
//! [`Kernel`] (the test suite's kernel model, for one) can replace it through
//! [`crate::Nvmm::open_with`].
//!
//! Descriptors are I/O-safe: `open` hands out an [`OwnedFd`], `close` takes
//! it back, and every other call borrows it ([`BorrowedFd`]), so no safe
//! code can close or use a descriptor it does not own:
//!
//! ```compile_fail,E0308
//! // A raw descriptor number is not accepted (this was `Host.close(RawFd)`
//! // before, which closed a descriptor someone else owned).
//! use std::os::fd::AsRawFd;
//! use nvmm::sys::{Host, Kernel};
//! let file = std::fs::File::open("/dev/null").unwrap();
//! Host.close(file.as_raw_fd());
//! ```
//!
//! Out-parameters of ioctls are passed as `*mut` so the compiler never
//! assumes the kernel left them unchanged.

use std::ffi::{CStr, c_void};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// The size of a VCPU comm page and the granule of every NVMM mapping.
pub const PAGE_SIZE: usize = 4096;

/// How `/dev/nvmm` is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenMode {
    /// `O_RDONLY | O_CLOEXEC`: an ordinary owner of its own machines.
    User,
    /// `O_WRONLY | O_CLOEXEC`: the root owner, which may act on every machine
    /// (control operations such as `NVMM_CTL_MACH_INFO` on others' machines).
    Root,
}

/// The operations NVMM needs from the operating system.
///
/// # Safety
///
/// The safe API of this crate relies on every implementation behaving like
/// NetBSD's kernel (`sys/dev/nvmm/nvmm.c`) in these points:
///
/// 1. **ioctl arguments.** `ioctl` reads and writes only the argument
///    structure the request number encodes and what it points to as NVMM
///    defines (`conf` of the CONFIGURE requests, `data` of `NVMM_IOC_CTL`),
///    and, for the VCPU requests, that VCPU's comm page (next point).
/// 2. **Comm pages.** After `NVMM_IOC_VCPU_CREATE` the comm page of that
///    VCPU is initialised (the reset state, every class in `state_cached`,
///    `stop` zero); `map_comm_page` at `NVMM_COMM_OFF(machid, cpuid)`
///    returns a page-aligned, readable and writable mapping of
///    [`PAGE_SIZE`] bytes of *that* page, distinct for every (machine,
///    VCPU), valid until `munmap` or `retire_comm_page`.
/// 3. **Who writes the comm page.** The kernel writes a comm page only
///    during `NVMM_IOC_VCPU_CREATE`, `GETSTATE` and `RUN` of its VCPU (the
///    crate holds `&mut Vcpu` then), except `stop`.
/// 4. **`stop`.** Every access to the comm page's `stop` word is atomic
///    (other threads and signal handlers store to it at any time, also
///    while the kernel clears it during `RUN` or `VCPU_CREATE`).
/// 5. **Machine ids** are below 256 (`NVMM_COMM_OFF` keeps 8 bits of them;
///    the crate also refuses larger ones) and VCPU ids below
///    `max_vcpus` of the capability, at most 256.
/// 6. **Guest memory.** `map_anonymous` returns a zeroed, page-aligned,
///    readable and writable mapping of the requested length, valid until
///    `munmap` or an `NVMM_IOC_HVA_UNMAP` of it; `NVMM_IOC_HVA_UNMAP`
///    unmaps the range from the process (as NetBSD's `nvmm_hva_unmap`
///    does), and after `NVMM_IOC_MACHINE_DESTROY` (or closing the
///    descriptor) the kernel no longer touches the machine's host mappings.
/// 7. **Retired comm pages.** `retire_comm_page` leaves `addr..+PAGE_SIZE`
///    mapped, readable and writable, but no longer connected to any VCPU
///    (see its docs), in one step: a concurrent atomic store lands either
///    in the old page or in the new memory, never faults.
/// 8. **Descriptors.** `open` returns a descriptor the caller then owns;
///    `close` ends the ownership (and, as the kernel does, destroys the
///    machines created through it).
pub unsafe trait Kernel: Send + Sync + 'static {
    /// `open(path, flags)`.
    fn open(&self, path: &CStr, mode: OpenMode) -> Result<OwnedFd, i32>;
    /// `close(fd)`.
    fn close(&self, fd: OwnedFd);
    /// `ioctl(fd, request, arg)`.
    ///
    /// # Safety
    ///
    /// `arg` points to the structure the request number encodes, valid for
    /// reads and writes of its size, and every pointer inside it is valid
    /// for what NVMM does with it.
    unsafe fn ioctl(&self, fd: BorrowedFd<'_>, request: u64, arg: *mut c_void) -> Result<(), i32>;
    /// `mmap(NULL, PAGE_SIZE, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset)`.
    fn map_comm_page(&self, fd: BorrowedFd<'_>, offset: u64) -> Result<NonNull<u8>, i32>;
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_ANON|MAP_PRIVATE, -1, 0)`.
    fn map_anonymous(&self, len: usize) -> Result<NonNull<u8>, i32>;
    /// `munmap(addr, len)`.
    ///
    /// # Safety
    ///
    /// `addr..addr+len` was returned by one of the mapping functions and no
    /// reference into it is used afterwards.
    unsafe fn munmap(&self, addr: NonNull<u8>, len: usize) -> Result<(), i32>;
    /// `mmap(addr, PAGE_SIZE, PROT_READ|PROT_WRITE,
    /// MAP_FIXED|MAP_ANON|MAP_PRIVATE, -1, 0)`: replaces a comm-page
    /// mapping, in place, by private zeroed memory.
    ///
    /// NetBSD's comm page of VCPU `n` is page `n` of one per-machine
    /// object, reused when a VCPU with the same id is created again
    /// (`sys/dev/nvmm/nvmm.c`, `nvmm_vcpu_create`, `nvmm_mmap`). A stale
    /// mapping would let a [`crate::VcpuStopper`] that outlived its VCPU
    /// stop the new one; retiring it when the VCPU is destroyed rules that
    /// out, while the stopper can still store to the address.
    ///
    /// # Safety
    ///
    /// `addr` was returned by `map_comm_page` and is not unmapped yet;
    /// only atomic accesses to `stop` may race with the call.
    unsafe fn retire_comm_page(&self, addr: NonNull<u8>) -> Result<(), i32>;
}

/// The real operating system.
#[derive(Debug, Clone, Copy, Default)]
pub struct Host;

#[cfg(any(target_os = "linux", target_os = "android"))]
type IoctlRequest = libc::Ioctl;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
type IoctlRequest = libc::c_ulong;

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

// SAFETY: each method is the system call it names, with the arguments the
// trait documents.
unsafe impl Kernel for Host {
    fn open(&self, path: &CStr, mode: OpenMode) -> Result<OwnedFd, i32> {
        let access = match mode {
            OpenMode::User => libc::O_RDONLY,
            OpenMode::Root => libc::O_WRONLY,
        };
        // SAFETY: `path` is a valid NUL-terminated string.
        let fd = unsafe { libc::open(path.as_ptr(), access | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(last_errno());
        }
        // SAFETY: a descriptor open just now, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn close(&self, fd: OwnedFd) {
        // Errors from close are not actionable (the descriptor is gone
        // either way); OwnedFd's drop ignores them.
        drop(fd);
    }

    unsafe fn ioctl(&self, fd: BorrowedFd<'_>, request: u64, arg: *mut c_void) -> Result<(), i32> {
        // The request numbers fit in 32 bits; on targets where the request
        // type is a signed int the bit pattern is what the kernel decodes.
        #[allow(clippy::cast_possible_truncation)]
        let request = request as IoctlRequest;
        // SAFETY: the caller guarantees `arg` matches `request`.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
        if rc < 0 { Err(last_errno()) } else { Ok(()) }
    }

    fn map_comm_page(&self, fd: BorrowedFd<'_>, offset: u64) -> Result<NonNull<u8>, i32> {
        let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
        // SAFETY: a fresh shared mapping chosen by the kernel; nothing in
        // this process is overwritten.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_errno());
        }
        NonNull::new(p.cast::<u8>()).ok_or(libc::ENOMEM)
    }

    fn map_anonymous(&self, len: usize) -> Result<NonNull<u8>, i32> {
        // SAFETY: a fresh private anonymous mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANON | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_errno());
        }
        NonNull::new(p.cast::<u8>()).ok_or(libc::ENOMEM)
    }

    unsafe fn munmap(&self, addr: NonNull<u8>, len: usize) -> Result<(), i32> {
        // SAFETY: the caller guarantees the range is one of our mappings and
        // unused from now on.
        let rc = unsafe { libc::munmap(addr.as_ptr().cast(), len) };
        if rc < 0 { Err(last_errno()) } else { Ok(()) }
    }

    unsafe fn retire_comm_page(&self, addr: NonNull<u8>) -> Result<(), i32> {
        // SAFETY: the caller guarantees `addr` is a live comm-page mapping
        // of ours; MAP_FIXED replaces exactly that page, atomically for
        // other threads of this process.
        let p = unsafe {
            libc::mmap(
                addr.as_ptr().cast(),
                PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_ANON | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            Err(last_errno())
        } else {
            Ok(())
        }
    }
}
