//! Accesses to guest linear memory: translate once, up front, into at most
//! two guest-physical fragments (one per page), then perform each fragment
//! on RAM or, where the GPA is not RAM, on the MMIO bus.

use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::mode::CpuMode;
use crate::state::CpuState;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PhysRange {
    /// `(gpa, len)` of each fragment, in linear order.
    pub parts: [(u64, usize); 2],
    /// How many of `parts` are used (1 or 2).
    pub count: usize,
}

/// Translates `linear..linear + len` (1 <= len <= 4096) for `access`, each
/// page once, before any access is made.
pub(crate) fn resolve<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    ram: &mut R,
    linear: u64,
    len: usize,
    access: AccessType,
) -> Result<PhysRange, Error> {
    let _ = (state, ram, access);
    Ok(PhysRange {
        parts: [(linear, len), (0, 0)],
        count: 1,
    })
}

/// Reads a resolved range into `buf` (`buf.len()` equals the range length).
pub(crate) fn read_phys<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    buf: &mut [u8],
) -> Result<(), Error> {
    let _ = (ram, mmio, range, buf);
    Err(Error::InconsistentExit)
}

/// Writes `data` to a resolved range.
pub(crate) fn write_phys<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    data: &[u8],
) -> Result<(), Error> {
    let _ = (ram, mmio, range, data);
    Err(Error::InconsistentExit)
}

/// The write half of a locked read-modify-write: on RAM, atomically replaces
/// `expected` (what the caller read) with `new` and returns `false` if memory
/// changed in between (the caller retries); on MMIO, writes `new` and returns
/// `true`. A range split over two pages is written non-atomically.
pub(crate) fn compare_and_write_phys<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    expected: &[u8],
    new: &[u8],
) -> Result<bool, Error> {
    let _ = (ram, mmio, range, expected, new);
    Err(Error::InconsistentExit)
}

/// Fetches instruction bytes `buf[have..want]` at CS:RIP + `have`, through
/// segmentation and the page walker (execute access), reading no further
/// than `want` so that a page or segment edge the instruction does not
/// cross never fails the fetch.
pub(crate) fn fetch<S: CpuState + ?Sized, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    state: &S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    buf: &mut [u8; 15],
    have: usize,
    want: usize,
) -> Result<(), Error> {
    let _ = (state, mode, ram, mmio, buf, have, want);
    Err(Error::InconsistentExit)
}
