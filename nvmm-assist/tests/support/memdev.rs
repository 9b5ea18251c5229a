//! Memory-assist fixtures: an MMIO device backed by a buffer (so tests can
//! check what a sequence of assists left in it, as NetBSD's h_mem_assist
//! does), a RAM wrapper that changes memory between a locked instruction's
//! read and its compare-and-write, and guests in 64-bit (4-level paging,
//! identity-mapped) and real mode with MMIO pages.

use std::vec::Vec;

use super::testutil::{BusAccess, Layout, PageTables, TEST_VENDOR, TestRam, pte};
use nvmm_assist::{
    AccessType, BusError, CompareWrite, Error, GuestRam, MemExit, MmioBus, Outcome, RamStatus,
    Registers, assist_mem,
};

/// An MMIO device covering `base..base + mem.len()`, backed by `mem`.
/// Accesses outside it fail with `BusError(99)`.
#[derive(Debug, Clone)]
pub struct BufferMmio {
    /// First GPA of the device.
    pub base: u64,
    /// The device's bytes.
    pub mem: Vec<u8>,
    /// Every access in order.
    pub log: Vec<BusAccess>,
    /// Fail the access with this index (counting from 0 over the log) with
    /// `BusError(7)`.
    pub fail_at: Option<usize>,
}

impl BufferMmio {
    /// A zeroed device of `len` bytes at `base`.
    pub fn new(base: u64, len: usize) -> Self {
        BufferMmio {
            base,
            mem: std::vec![0; len],
            log: Vec::new(),
            fail_at: None,
        }
    }

    fn index(&self, gpa: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(gpa.checked_sub(self.base)?).ok()?;
        (off + len <= self.mem.len()).then_some(off)
    }

    /// The little-endian u64 at `gpa`.
    pub fn u64_at(&self, gpa: u64) -> u64 {
        let i = self.index(gpa, 8).expect("outside the device");
        u64::from_le_bytes(self.mem[i..i + 8].try_into().unwrap())
    }

    /// Stores a little-endian u64 at `gpa`.
    pub fn set_u64(&mut self, gpa: u64, v: u64) {
        let i = self.index(gpa, 8).expect("outside the device");
        self.mem[i..i + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Copies `data` to `gpa`.
    pub fn put(&mut self, gpa: u64, data: &[u8]) {
        let i = self.index(gpa, data.len()).expect("outside the device");
        self.mem[i..i + data.len()].copy_from_slice(data);
    }

    /// The number of reads and writes logged.
    pub fn counts(&self) -> (usize, usize) {
        let w = self.log.iter().filter(|a| a.write).count();
        (self.log.len() - w, w)
    }
}

impl MmioBus for BufferMmio {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        assert!(
            (gpa & 0xFFF) + buf.len() as u64 <= 4096,
            "MMIO read crosses a page"
        );
        if self.fail_at == Some(self.log.len()) {
            return Err(BusError(7));
        }
        let i = self.index(gpa, buf.len()).ok_or(BusError(99))?;
        buf.copy_from_slice(&self.mem[i..i + buf.len()]);
        self.log.push(BusAccess {
            write: false,
            addr: gpa,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        assert!(
            (gpa & 0xFFF) + data.len() as u64 <= 4096,
            "MMIO write crosses a page"
        );
        if self.fail_at == Some(self.log.len()) {
            return Err(BusError(7));
        }
        let i = self.index(gpa, data.len()).ok_or(BusError(99))?;
        self.mem[i..i + data.len()].copy_from_slice(data);
        self.log.push(BusAccess {
            write: true,
            addr: gpa,
            data: data.to_vec(),
        });
        Ok(())
    }
}

/// RAM that, on each of the next `races` compare-and-write calls, first
/// stores `race_bytes` at `race_gpa` (another vCPU writing between the
/// instruction's read and its write), so the compare fails for real.
#[derive(Debug, Clone)]
pub struct RacingRam {
    /// The RAM.
    pub inner: TestRam,
    /// Where the other writer writes.
    pub race_gpa: u64,
    /// What it writes each time (the test may make it change per race by
    /// setting `race_increment`).
    pub race_bytes: Vec<u8>,
    /// Added to the first byte of `race_bytes` after each race.
    pub race_increment: u8,
    /// How many compare-and-writes to race.
    pub races: usize,
    /// Compare-and-write calls seen.
    pub cas_calls: usize,
}

impl GuestRam for RacingRam {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        self.inner.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        self.inner.write(gpa, data)
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError> {
        self.cas_calls += 1;
        if self.races > 0 {
            self.races -= 1;
            let bytes = self.race_bytes.clone();
            self.inner.put(self.race_gpa, &bytes);
            if let Some(b) = self.race_bytes.first_mut() {
                *b = b.wrapping_add(self.race_increment);
            }
        }
        self.inner.compare_and_write(gpa, expected, new)
    }
}

/// GPA of the first MMIO page of the guests below.
pub const MMIO: u64 = 0x1000;
/// GPA of the second MMIO page (0x8000..0xA000 is MMIO: two pages).
pub const MMIO2: u64 = 0x8000;
/// GPA of the code page.
pub const CODE: u64 = 0x2000;
/// Size of guest RAM.
pub const RAM_SIZE: usize = 0x10_0000;
/// Where the guest page tables live.
pub const PT_ROOT: u64 = 0x8_0000;

/// A guest: registers, RAM (with MMIO holes at 0x1000..0x2000 and
/// 0x8000..0xA000, backed by `mmio`), and the device.
#[derive(Clone)]
pub struct Guest {
    /// The vCPU state.
    pub regs: Registers,
    /// Guest RAM.
    pub ram: TestRam,
    /// The MMIO device.
    pub mmio: MmioPair,
}

/// The two MMIO regions of a [`Guest`] as one bus.
#[derive(Debug, Clone)]
pub struct MmioPair {
    /// 0x1000..0x2000.
    pub low: BufferMmio,
    /// 0x8000..0xA000.
    pub high: BufferMmio,
}

impl MmioPair {
    fn pick(&mut self, gpa: u64) -> &mut BufferMmio {
        if gpa >= MMIO2 {
            &mut self.high
        } else {
            &mut self.low
        }
    }
    /// Every access to either region, low region first (tests that need the
    /// global order use one region).
    pub fn total_accesses(&self) -> usize {
        self.low.log.len() + self.high.log.len()
    }
}

impl MmioBus for MmioPair {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        self.pick(gpa).read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.pick(gpa).write(gpa, data)
    }
}

impl Guest {
    fn with_regs(regs: Registers) -> Guest {
        Guest {
            regs,
            ram: TestRam::new(RAM_SIZE)
                .hole(MMIO, MMIO + 0x1000)
                .hole(MMIO2, MMIO2 + 0x2000),
            mmio: MmioPair {
                low: BufferMmio::new(MMIO, 0x1000),
                high: BufferMmio::new(MMIO2, 0x2000),
            },
        }
    }

    /// 64-bit mode at CPL 0, the first 512 KiB identity-mapped with 4 KiB
    /// pages (P|RW|US), RIP = 0x2000, RFLAGS = 0x2 (as NetBSD's tests).
    pub fn long64() -> Guest {
        let mut g = Guest::with_regs(Registers::long_mode(TEST_VENDOR, PT_ROOT, 0, 0));
        let mut pt = PageTables::new(Layout::Level4, PT_ROOT);
        for page in 0..128u64 {
            pt.map(&mut g.ram, page * 4096, page * 4096, 1, pte::PWU);
        }
        g.regs.rip = CODE;
        g
    }

    /// Real mode, no paging (GPA = linear), RIP = 0x2000 (NetBSD's 16-bit
    /// tests: CS base 0, limit 0x2FFF... here 0xFFFF).
    pub fn real() -> Guest {
        let mut g = Guest::with_regs(Registers::real_mode(TEST_VENDOR));
        g.regs.rip = CODE;
        g
    }

    /// Runs one assist for the instruction `bytes`, the exit at `gpa` (a
    /// data access).
    pub fn exec(&mut self, bytes: &[u8], gpa: u64) -> Result<Outcome, Error> {
        let exit = MemExit {
            gpa,
            access: AccessType::Read,
            instruction: bytes,
        };
        assist_mem(&mut self.regs, &mut self.ram, &mut self.mmio, &exit)
    }

    /// Like [`Guest::exec`], but asserts `Done` and that RIP advanced by
    /// `bytes.len()` (the instruction's length).
    pub fn step(&mut self, bytes: &[u8], gpa: u64) {
        let rip = self.regs.rip;
        let r = self.exec(bytes, gpa);
        assert_eq!(r, Ok(Outcome::Done), "instruction {bytes:02x?}");
        assert_eq!(
            self.regs.rip,
            rip + bytes.len() as u64,
            "RIP after {bytes:02x?}"
        );
    }

    /// Writes `bytes` at RIP in RAM (RIP must be identity-mapped RAM) and
    /// runs an assist whose exit carries no instruction bytes.
    pub fn exec_fetched(&mut self, bytes: &[u8], gpa: u64) -> Result<Outcome, Error> {
        let at = self.regs.rip;
        self.ram.put(at, bytes);
        let exit = MemExit {
            gpa,
            access: AccessType::Read,
            instruction: &[],
        };
        assist_mem(&mut self.regs, &mut self.ram, &mut self.mmio, &exit)
    }

    /// Runs the instruction until it is `Done`, returning how many assist
    /// calls (VM exits) it took (at most `limit`). `gpa` gives each exit's
    /// GPA from the registers at that point (the access that faults first).
    pub fn run_rep(
        &mut self,
        bytes: &[u8],
        gpa: impl Fn(&Registers) -> u64,
        limit: usize,
    ) -> usize {
        for calls in 1..=limit {
            let at = gpa(&self.regs);
            match self.exec(bytes, at) {
                Ok(Outcome::Done) => return calls,
                Ok(Outcome::Resume) => {}
                Err(e) => panic!("assist failed after {calls} calls: {e:?}"),
            }
        }
        panic!("not done after {limit} calls");
    }
}
