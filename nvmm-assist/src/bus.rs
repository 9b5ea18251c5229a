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

/// What [`GuestRam::check_entries`] found, comparing the entries in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryCheck {
    /// Every entry holds its value.
    Held,
    /// The entry at `index` (of the entries checked) no longer holds its
    /// value; the entries before it hold theirs.
    Changed {
        /// The entry's position in the entries checked.
        index: usize,
    },
    /// The entry at `gpa` is not RAM; the entries before it hold theirs.
    NotRam {
        /// The entry's guest-physical address.
        gpa: u64,
    },
}

/// Guest RAM, addressed by guest-physical address.
///
/// `gpa..gpa + len` never crosses a 4 KiB page boundary.
pub trait GuestRam {
    /// Reads RAM at `gpa` into `buf`, or says it is not RAM.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError>;
    /// Writes `data` to RAM at `gpa`, or says it is not writable RAM.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError>;
    /// Reads the 8 bytes of RAM at `gpa`, a multiple of 8, as a
    /// little-endian `u64` (`None`: not RAM): what [`GuestRam::read`] of
    /// those 8 bytes gives, which is the default implementation.
    ///
    /// The page walker reads its 64-bit paging-structure entries with it,
    /// and the [`FetchCache`](crate::FetchCache) reads them again on every
    /// use of a cached translation. An implementation can override it to
    /// return the value without the round trip through a byte buffer
    /// (`nvmm`'s guest RAM assembles its byte loads in a register); it
    /// must read the same bytes with the same accesses as `read` would.
    #[inline]
    fn read_aligned_u64(&mut self, gpa: u64) -> Result<Option<u64>, BusError> {
        let mut buf = [0u8; 8];
        Ok(match self.read(gpa, &mut buf)? {
            RamStatus::Done => Some(u64::from_le_bytes(buf)),
            RamStatus::NotRam => None,
        })
    }
    /// Whether the paging-structure entries `entries`, `(gpa, value)`
    /// pairs, still hold their values: 8-byte entries if `wide` (each
    /// read as [`GuestRam::read_aligned_u64`] reads it), else 4-byte ones
    /// (32-bit paging; each read as [`GuestRam::read`] of those 4 bytes,
    /// `value` below 2^32). The entries are compared in order and the
    /// first that is not RAM or differs decides; a failed read's error is
    /// returned as is. The default implementation does exactly that, one
    /// entry at a time, stopping there.
    ///
    /// The [`FetchCache`](crate::FetchCache) re-validates a cached walk
    /// with it on every use, so it is on the path of every assist that
    /// fetches its instruction (VMX exits). An implementation can override
    /// it to check the whole walk at once (one lookup, one bounds test, all
    /// the entries compared with one test): the result must be the
    /// default's for the same RAM contents, and each entry it reads must be
    /// read with the access the default would make. It may read the entries
    /// past the one that decides (to compare them all at once) if reading
    /// them has no effect, as for plain RAM. An override falls back on
    /// [`check_entries_in_order`], the default's own code, where its
    /// faster check cannot decide.
    #[inline]
    fn check_entries(
        &mut self,
        entries: &[(u64, u64)],
        wide: bool,
    ) -> Result<EntryCheck, BusError> {
        check_entries_in_order(self, entries, wide)
    }
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

/// [`GuestRam::check_entries`] as its default does it: one entry at a
/// time, in order, each read with [`GuestRam::read_aligned_u64`] (8-byte
/// entries, `wide`) or [`GuestRam::read`] of 4 bytes, the first that is
/// not RAM or differs deciding. For an implementation that overrides
/// `check_entries` with a faster check and needs the default's answer
/// where that check cannot decide (an entry outside its fast case, or one
/// that changed and must be named).
pub fn check_entries_in_order<R: GuestRam + ?Sized>(
    ram: &mut R,
    entries: &[(u64, u64)],
    wide: bool,
) -> Result<EntryCheck, BusError> {
    for (index, &(gpa, value)) in entries.iter().enumerate() {
        let now = if wide {
            ram.read_aligned_u64(gpa)?
        } else {
            let mut buf = [0u8; 4];
            match ram.read(gpa, &mut buf)? {
                RamStatus::Done => Some(u64::from(u32::from_le_bytes(buf))),
                RamStatus::NotRam => None,
            }
        };
        match now {
            None => return Ok(EntryCheck::NotRam { gpa }),
            Some(now) if now != value => return Ok(EntryCheck::Changed { index }),
            Some(_) => {}
        }
    }
    Ok(EntryCheck::Held)
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

    /// Offers a batch of `REP STOS` / `REP MOVS` element writes to a
    /// RAM-like region (a framebuffer) in one call: `data.len() / size`
    /// writes of `size` (1, 2, 4 or 8) bytes, element `i` being
    /// `data[i * size..(i + 1) * size]` at `gpa + i * size`, or at
    /// `gpa - i * size` when `descending` (RFLAGS.DF = 1), in that order.
    /// The batch lies within one 4 KiB page, and the assist offers it only
    /// after the [`GuestRam`] said the whole range is not RAM.
    ///
    /// `None` (the default): not taken; the assist then makes one
    /// [`MmioBus::write`] per element, exactly as without this method. A
    /// device that takes the batch (`Some`) declares the whole range its
    /// own. On a failure, [`PartialBatch::done`] says how many elements
    /// were written before it: the assist commits exactly those (RCX, RSI,
    /// RDI), as the CPU would have up to that element.
    fn write_batch(
        &mut self,
        gpa: u64,
        size: usize,
        descending: bool,
        data: &[u8],
    ) -> Option<Result<(), PartialBatch>> {
        let _ = (gpa, size, descending, data);
        None
    }
}

/// A batch of port accesses ([`PortIo::read_batch`],
/// [`PortIo::write_batch`]) that failed part-way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialBatch {
    /// How many elements were transferred, in order, before the failing one.
    pub done: usize,
    /// The failure of element `done`.
    pub error: BusError,
}

/// Port I/O.
///
/// A `REP INS`/`REP OUTS` batch goes through [`PortIo::read_batch`] /
/// [`PortIo::write_batch`], whose default implementations make one
/// [`PortIo::read`] / [`PortIo::write`] per element: a device that can take a
/// whole batch at once (a FIFO, a disk data port) overrides them.
pub trait PortIo {
    /// An `IN` of `buf.len()` (1, 2 or 4) bytes from `port`.
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError>;
    /// An `OUT` of `data` (1, 2 or 4 bytes) to `port`.
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError>;

    /// `buf.len() / size` consecutive `IN`s of `size` (1, 2 or 4) bytes
    /// from `port`, element `i` into `buf[i * size..(i + 1) * size]`, in
    /// the order the CPU performs them (whatever RFLAGS.DF says: the assist
    /// places the elements in memory).
    ///
    /// On a failure, [`PartialBatch::done`] says how many elements were
    /// read before it: the assist commits exactly those (memory and
    /// registers), as the CPU would have up to that element.
    fn read_batch(&mut self, port: u16, size: usize, buf: &mut [u8]) -> Result<(), PartialBatch> {
        for (done, element) in buf.chunks_exact_mut(size.max(1)).enumerate() {
            self.read(port, element)
                .map_err(|error| PartialBatch { done, error })?;
        }
        Ok(())
    }

    /// `data.len() / size` consecutive `OUT`s of `size` (1, 2 or 4) bytes
    /// to `port`, element `i` being `data[i * size..(i + 1) * size]`, in the
    /// order the CPU performs them. Failures as for
    /// [`PortIo::read_batch`].
    fn write_batch(&mut self, port: u16, size: usize, data: &[u8]) -> Result<(), PartialBatch> {
        for (done, element) in data.chunks_exact(size.max(1)).enumerate() {
            self.write(port, element)
                .map_err(|error| PartialBatch { done, error })?;
        }
        Ok(())
    }
}

impl<T: GuestRam + ?Sized> GuestRam for &mut T {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        (**self).read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        (**self).write(gpa, data)
    }
    fn read_aligned_u64(&mut self, gpa: u64) -> Result<Option<u64>, BusError> {
        (**self).read_aligned_u64(gpa)
    }
    fn check_entries(
        &mut self,
        entries: &[(u64, u64)],
        wide: bool,
    ) -> Result<EntryCheck, BusError> {
        (**self).check_entries(entries, wide)
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
    fn write_batch(
        &mut self,
        gpa: u64,
        size: usize,
        descending: bool,
        data: &[u8],
    ) -> Option<Result<(), PartialBatch>> {
        (**self).write_batch(gpa, size, descending, data)
    }
}

impl<T: PortIo + ?Sized> PortIo for &mut T {
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        (**self).read(port, buf)
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        (**self).write(port, data)
    }
    fn read_batch(&mut self, port: u16, size: usize, buf: &mut [u8]) -> Result<(), PartialBatch> {
        (**self).read_batch(port, size, buf)
    }
    fn write_batch(&mut self, port: u16, size: usize, data: &[u8]) -> Result<(), PartialBatch> {
        (**self).write_batch(port, size, data)
    }
}
