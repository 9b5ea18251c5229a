//! The buses of the bench: guest RAM as a flat buffer, a register-file MMIO
//! device (and a recording wrapper that checks what an instruction did to
//! it), port devices and a framebuffer.

use nvmm_assist::{
    BusError, CompareWrite, EntryCheck, GuestRam, MmioBus, PartialBatch, PortIo, RamStatus,
};

use crate::MMIO;

/// Guest RAM as a flat buffer from GPA 0, with the page at [`MMIO`] (and
/// anything beyond the buffer) not RAM: what a VMM's RAM lookup does.
#[derive(Clone)]
pub struct FlatRam {
    pub mem: Vec<u8>,
}

/// Where the RAM above the MMIO page starts.
const RAM_ABOVE_MMIO: u64 = (MMIO | 0xFFF) + 1;

impl FlatRam {
    fn range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        // The MMIO page, in one test (below it, the offset wraps).
        if gpa.wrapping_sub(MMIO) < 0x1000 {
            return None;
        }
        let start = usize::try_from(gpa).ok()?;
        // The last start that leaves `len` bytes in the buffer.
        let last = self.mem.len().checked_sub(len)?;
        (start <= last).then_some(start..start + len)
    }
}

/// [`FlatRam::check_entries`] when an entry is not RAM or differs: the entries in
/// order, the first that is not RAM or differs deciding (what the trait's
/// default gives). Cold as well as out of line: an entry that changed is
/// rare, and the fetch path's registers are then saved on its way rather
/// than ahead of every check.
#[cold]
#[inline(never)]
fn slow_check(ram: &mut FlatRam, entries: &[(u64, u64)], size: usize) -> EntryCheck {
    for (index, &(gpa, value)) in entries.iter().enumerate() {
        let Some(r) = ram.range(gpa, size) else {
            return EntryCheck::NotRam { gpa };
        };
        let mut buf = [0u8; 8];
        buf[..size].copy_from_slice(&ram.mem[r]);
        if u64::from_le_bytes(buf) != value {
            return EntryCheck::Changed { index };
        }
    }
    EntryCheck::Held
}

impl GuestRam for FlatRam {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        match self.range(gpa, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&self.mem[r]);
                Ok(RamStatus::Done)
            }
            None => Ok(RamStatus::NotRam),
        }
    }
    fn read_aligned_u64(&mut self, gpa: u64) -> Result<Option<u64>, BusError> {
        Ok(self
            .range(gpa, 8)
            .and_then(|r| self.mem.get(r)?.try_into().ok())
            .map(u64::from_le_bytes))
    }
    /// The walk's entries as a VMM with one flat RAM mapping can check
    /// them: each entry's offset into the RAM above the MMIO page, in
    /// words of the entry's size, is its index there (one bounds test,
    /// which also catches an entry below that RAM or misaligned: its
    /// offset wraps, or its low bits rotate to the top), and the
    /// comparisons are tested once at the end (reading past a changed
    /// entry is harmless in plain RAM). Anything else takes the default's
    /// entry-by-entry order, which names the entry.
    #[inline(always)]
    fn check_entries(
        &mut self,
        entries: &[(u64, u64)],
        wide: bool,
    ) -> Result<EntryCheck, BusError> {
        let Some(above) = self.mem.get(RAM_ABOVE_MMIO as usize..) else {
            return Ok(slow_check(self, entries, if wide { 8 } else { 4 }));
        };
        let mut differ = 0;
        for &(gpa, value) in entries {
            let offset = gpa.wrapping_sub(RAM_ABOVE_MMIO);
            let now = if wide {
                let index = usize::try_from(offset.rotate_right(3)).unwrap_or(usize::MAX);
                above
                    .as_chunks::<8>()
                    .0
                    .get(index)
                    .map(|w| u64::from_le_bytes(*w))
            } else {
                let index = usize::try_from(offset.rotate_right(2)).unwrap_or(usize::MAX);
                let words = above.as_chunks::<4>().0;
                words.get(index).map(|w| u64::from(u32::from_le_bytes(*w)))
            };
            let Some(now) = now else {
                return Ok(slow_check(self, entries, if wide { 8 } else { 4 }));
            };
            differ |= now ^ value;
        }
        Ok(if differ == 0 {
            EntryCheck::Held
        } else {
            // Which entry changed: the entry-by-entry order, out of line.
            slow_check(self, entries, if wide { 8 } else { 4 })
        })
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        match self.range(gpa, data.len()) {
            Some(r) => {
                self.mem[r].copy_from_slice(data);
                Ok(RamStatus::Done)
            }
            None => Ok(RamStatus::NotRam),
        }
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError> {
        match self.range(gpa, new.len()) {
            Some(r) if self.mem[r.clone()] == *expected => {
                self.mem[r].copy_from_slice(new);
                Ok(CompareWrite::Written)
            }
            Some(_) => Ok(CompareWrite::Mismatch),
            None => Ok(CompareWrite::NotRam),
        }
    }
}

/// A device with one 64-bit register, handling accesses by size as a
/// typical MMIO register file does; 16-byte accesses (the SSE and
/// CMPXCHG16B forms) also reach a second, upper register.
#[derive(Default)]
pub struct Device {
    reg: u64,
    upper: u64,
}

impl MmioBus for Device {
    #[inline]
    fn read(&mut self, _gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        let v = self.reg.to_le_bytes();
        match buf.len() {
            1 => buf[0] = v[0],
            2 => buf.copy_from_slice(&v[..2]),
            4 => buf.copy_from_slice(&v[..4]),
            8 => buf.copy_from_slice(&v),
            16 => {
                buf[..8].copy_from_slice(&v);
                buf[8..].copy_from_slice(&self.upper.to_le_bytes());
            }
            _ => return Err(BusError(1)),
        }
        Ok(())
    }
    #[inline]
    fn write(&mut self, _gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.reg = match *data {
            [a] => u64::from(a),
            [a, b] => u64::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            [a, b, c, d, e, f, g, h, ref upper @ ..] if upper.len() == 8 => {
                let mut hi = [0u8; 8];
                hi.copy_from_slice(upper);
                self.upper = u64::from_le_bytes(hi);
                u64::from_le_bytes([a, b, c, d, e, f, g, h])
            }
            _ => return Err(BusError(1)),
        };
        Ok(())
    }
}

/// One access a [`Recorder`] saw: write or read, GPA, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub gpa: u64,
    pub len: usize,
}

/// A [`Device`] that logs every access, for the check each case passes
/// before it is timed (the timed loops use the plain device).
#[derive(Default)]
pub struct Recorder {
    pub device: Device,
    pub log: Vec<Access>,
}

impl MmioBus for Recorder {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        self.log.push(Access {
            write: false,
            gpa,
            len: buf.len(),
        });
        self.device.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.log.push(Access {
            write: true,
            gpa,
            len: data.len(),
        });
        self.device.write(gpa, data)
    }
}

/// A port device that takes each element as it comes (a UART data register).
#[derive(Default)]
pub struct SumPort {
    sum: u64,
}

impl PortIo for SumPort {
    fn read(&mut self, _port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        // By size, as a device register file answers.
        let v = (self.sum as u32).to_le_bytes();
        match buf.len() {
            1 => buf[0] = v[0],
            2 => buf.copy_from_slice(&v[..2]),
            4 => buf.copy_from_slice(&v),
            _ => return Err(BusError(1)),
        }
        Ok(())
    }
    fn write(&mut self, _port: u16, data: &[u8]) -> Result<(), BusError> {
        for &b in data {
            self.sum = self.sum.wrapping_add(u64::from(b));
        }
        Ok(())
    }
}

/// A port device that accepts a whole batch in one call (a FIFO).
pub struct BulkPort {
    fifo: Vec<u8>,
}

impl Default for BulkPort {
    fn default() -> Self {
        BulkPort {
            fifo: Vec::with_capacity(4096),
        }
    }
}

impl PortIo for BulkPort {
    fn read(&mut self, _port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0x5A);
        Ok(())
    }
    fn write(&mut self, _port: u16, data: &[u8]) -> Result<(), BusError> {
        if self.fifo.len() + data.len() > 4096 {
            self.fifo.clear();
        }
        self.fifo.extend_from_slice(data);
        Ok(())
    }
    fn write_batch(&mut self, port: u16, _size: usize, data: &[u8]) -> Result<(), PartialBatch> {
        self.write(port, data)
            .map_err(|error| PartialBatch { done: 0, error })
    }
}

/// A framebuffer page at [`MMIO`]: plain memory behind the MMIO bus.
pub struct Framebuffer {
    pub mem: Vec<u8>,
    /// Whether it takes whole batches (`MmioBus::write_batch`).
    pub batches: bool,
}

impl MmioBus for Framebuffer {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        let at = (gpa & 0xFFF) as usize;
        let src = self.mem.get(at..at + buf.len()).ok_or(BusError(1))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        let at = (gpa & 0xFFF) as usize;
        let dst = self.mem.get_mut(at..at + data.len()).ok_or(BusError(1))?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn write_batch(
        &mut self,
        gpa: u64,
        size: usize,
        descending: bool,
        data: &[u8],
    ) -> Option<Result<(), PartialBatch>> {
        if !self.batches || descending {
            return None;
        }
        let _ = size;
        Some(
            self.write(gpa, data)
                .map_err(|error| PartialBatch { done: 0, error }),
        )
    }
}
