//! The buses the caller provides: guest RAM, MMIO and port I/O.
//!
//! Every access the assist makes lies within one 4 KiB guest-physical page:
//! accesses that cross a page are split by the assist, and each part goes to
//! RAM or to MMIO as its own GPA says.

/// A failure reported by one of the caller's callbacks, carried back to the
/// caller of the assist unchanged (for example an errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusError(pub i32);

/// Whether a guest-physical address is RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamStatus {
    /// The range is RAM and the access was performed.
    Done,
    /// The range is not RAM (for a write: not writable RAM); the assist sends
    /// the access to the [`MmioBus`] instead.
    NotRam,
}

/// The result of [`GuestRam::compare_and_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareWrite {
    /// Memory held `expected` and now holds `new`.
    Written,
    /// Memory did not hold `expected`; nothing was written. The assist retries.
    Mismatch,
    /// The range is not (writable) RAM.
    NotRam,
}

/// Guest RAM, addressed by guest-physical address.
///
/// `gpa..gpa + len` never crosses a 4 KiB page boundary.
pub trait GuestRam {
    /// Reads RAM at `gpa` into `buf`, or says it is not RAM.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError>;
    /// Writes `data` to RAM at `gpa`, or says it is not writable RAM.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError>;
    /// Replaces `expected` with `new` at `gpa` if memory holds `expected`
    /// (same length, at most 16 bytes). Used for locked read-modify-write
    /// instructions and for the accessed/dirty bits of guest page-table
    /// entries (whose update changes only the entry's low byte).
    ///
    /// Atomicity is the implementation's to state: it must be atomic
    /// against its own other `compare_and_write` calls, and should be as
    /// atomic as it can against everything else (guest code on other VCPUs,
    /// device threads). A change of one byte can always be made atomic
    /// (a one-byte compare-and-swap); implementations document what the
    /// guest can observe for wider changes (the `nvmm` crate's: its
    /// `guest_ram` module).
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError>;
}

/// Memory-mapped I/O: every guest-physical access that is not RAM.
///
/// `gpa..gpa + len` never crosses a 4 KiB page boundary. A locked
/// read-modify-write to MMIO is performed as a read followed by a write.
pub trait MmioBus {
    /// A device read of `buf.len()` bytes at `gpa`.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError>;
    /// A device write of `data` at `gpa`.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError>;
}

/// Port I/O.
pub trait PortIo {
    /// An `IN` of `buf.len()` (1, 2 or 4) bytes from `port`.
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError>;
    /// An `OUT` of `data` (1, 2 or 4 bytes) to `port`.
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError>;
}

impl<T: GuestRam + ?Sized> GuestRam for &mut T {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        (**self).read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        (**self).write(gpa, data)
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError> {
        (**self).compare_and_write(gpa, expected, new)
    }
}

impl<T: MmioBus + ?Sized> MmioBus for &mut T {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        (**self).read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        (**self).write(gpa, data)
    }
}

impl<T: PortIo + ?Sized> PortIo for &mut T {
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        (**self).read(port, buf)
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        (**self).write(port, data)
    }
}
