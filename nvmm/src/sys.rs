//! The system-call layer: the only place this crate talks to the OS about
//! NVMM. [`Host`] is the real operating system; anything else implementing
//! [`Kernel`] (the test suite's kernel model, for one) can replace it through
//! [`crate::Nvmm::open_with`].
//!
//! Every call takes raw pointers: out-parameters of ioctls are passed as
//! `*mut` so the compiler never assumes the kernel left them unchanged.

use std::ffi::{CStr, c_void};
use std::os::fd::RawFd;
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
/// Implementations must behave like the system calls they stand for:
/// `ioctl` reads and writes only the argument structure the request number
/// encodes (and what it points to, as NVMM defines), `map_comm_page` returns
/// a page-aligned, readable and writable mapping of [`PAGE_SIZE`] bytes that
/// stays valid until passed to `munmap`, and `map_anonymous` returns a zeroed
/// mapping of the requested length, valid until `munmap` or an
/// `NVMM_IOC_HVA_UNMAP` of it.
pub unsafe trait Kernel: Send + Sync + 'static {
    /// `open(path, flags)`.
    fn open(&self, path: &CStr, mode: OpenMode) -> Result<RawFd, i32>;
    /// `close(fd)`.
    fn close(&self, fd: RawFd);
    /// `ioctl(fd, request, arg)`.
    ///
    /// # Safety
    ///
    /// `arg` points to the structure the request number encodes, valid for
    /// reads and writes of its size, and every pointer inside it is valid
    /// for what NVMM does with it.
    unsafe fn ioctl(&self, fd: RawFd, request: u64, arg: *mut c_void) -> Result<(), i32>;
    /// `mmap(NULL, PAGE_SIZE, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset)`.
    fn map_comm_page(&self, fd: RawFd, offset: u64) -> Result<NonNull<u8>, i32>;
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_ANON|MAP_PRIVATE, -1, 0)`.
    fn map_anonymous(&self, len: usize) -> Result<NonNull<u8>, i32>;
    /// `munmap(addr, len)`.
    ///
    /// # Safety
    ///
    /// `addr..addr+len` was returned by one of the mapping functions and no
    /// reference into it is used afterwards.
    unsafe fn munmap(&self, addr: NonNull<u8>, len: usize) -> Result<(), i32>;
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
    fn open(&self, path: &CStr, mode: OpenMode) -> Result<RawFd, i32> {
        let access = match mode {
            OpenMode::User => libc::O_RDONLY,
            OpenMode::Root => libc::O_WRONLY,
        };
        // SAFETY: `path` is a valid NUL-terminated string.
        let fd = unsafe { libc::open(path.as_ptr(), access | libc::O_CLOEXEC) };
        if fd < 0 { Err(last_errno()) } else { Ok(fd) }
    }

    fn close(&self, fd: RawFd) {
        // SAFETY: closing a descriptor this crate opened and owns; errors
        // from close are not actionable (the descriptor is gone either way).
        unsafe { libc::close(fd) };
    }

    unsafe fn ioctl(&self, fd: RawFd, request: u64, arg: *mut c_void) -> Result<(), i32> {
        // The request numbers fit in 32 bits; on targets where the request
        // type is a signed int the bit pattern is what the kernel decodes.
        #[allow(clippy::cast_possible_truncation)]
        let request = request as IoctlRequest;
        // SAFETY: the caller guarantees `arg` matches `request`.
        let rc = unsafe { libc::ioctl(fd, request, arg) };
        if rc < 0 { Err(last_errno()) } else { Ok(()) }
    }

    fn map_comm_page(&self, fd: RawFd, offset: u64) -> Result<NonNull<u8>, i32> {
        let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
        // SAFETY: a fresh shared mapping chosen by the kernel; nothing in
        // this process is overwritten.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
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
}
