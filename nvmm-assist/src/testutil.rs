//! Test support shared by the unit tests (`crate::testutil`) and the
//! integration tests (`tests/support/mod.rs` includes this file): guest RAM
//! over a `Vec` with MMIO holes and compare-and-write fault injection, a
//! page-table builder for every paging mode, recording MMIO and port buses.
//! CPU states come from the public `Registers` constructors.
//!
//! Written against the public API only (`nvmm_assist::...`), so the same
//! file compiles inside and outside the crate.
#![allow(dead_code)]

use std::vec::Vec;

#[path = "test_rng.rs"]
mod test_rng;
pub use test_rng::Rng;

use nvmm_assist::{
    BusError, CompareWrite, CpuMode, CpuState, Gpr, GuestRam, MmioBus, PortIo, RamStatus, Segment,
    SegmentRegister, Vendor,
};

/// Guest RAM: `mem.len()` bytes from GPA 0; GPAs at or beyond the end, or in
/// a hole, are not RAM.
#[derive(Debug, Clone)]
pub struct TestRam {
    /// The bytes.
    pub mem: Vec<u8>,
    /// Half-open GPA ranges that are not RAM (MMIO) although below the end.
    pub holes: Vec<(u64, u64)>,
    /// GPA ranges that read as RAM but are read-only (writes say NotRam).
    pub read_only: Vec<(u64, u64)>,
    /// How many upcoming compare_and_write calls report a mismatch (and, to
    /// make the mismatch real, the test may have changed memory itself).
    pub cas_mismatches: usize,
    /// Writes another vCPU makes just before the next compare_and_write
    /// calls, one per call, in order: (gpa, bytes).
    pub cas_interference: Vec<(u64, Vec<u8>)>,
    /// Every compare_and_write call: (gpa, len, result).
    pub cas_log: Vec<(u64, usize, CompareWrite)>,
    /// Number of read calls.
    pub reads: usize,
    /// Number of write calls.
    pub writes: usize,
    /// Fail the read/write call with this index (counting both) with BusError(5).
    pub fail_at: Option<usize>,
}

impl TestRam {
    /// `size` bytes of zeroed RAM.
    pub fn new(size: usize) -> Self {
        TestRam {
            mem: std::vec![0; size],
            holes: Vec::new(),
            read_only: Vec::new(),
            cas_mismatches: 0,
            cas_interference: Vec::new(),
            cas_log: Vec::new(),
            reads: 0,
            writes: 0,
            fail_at: None,
        }
    }

    /// Makes `start..end` not RAM.
    pub fn hole(mut self, start: u64, end: u64) -> Self {
        self.holes.push((start, end));
        self
    }

    fn range(&self, gpa: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let end = gpa.checked_add(len as u64)?;
        if self.holes.iter().any(|&(s, e)| gpa < e && end > s) {
            return None;
        }
        let start = usize::try_from(gpa).ok()?;
        let end = usize::try_from(end).ok()?;
        if end > self.mem.len() {
            return None;
        }
        Some(start..end)
    }

    fn check_page(gpa: u64, len: usize) {
        assert!(len >= 1, "empty access");
        assert!(
            (gpa & 0xFFF) + len as u64 <= 4096,
            "RAM access crosses a page: {gpa:#x}+{len}"
        );
    }

    fn count_and_maybe_fail(&mut self) -> Result<(), BusError> {
        let n = self.reads + self.writes;
        if self.fail_at == Some(n) {
            return Err(BusError(5));
        }
        Ok(())
    }

    /// Little-endian u64 at `gpa`.
    pub fn read_u64(&self, gpa: u64) -> u64 {
        let g = gpa as usize;
        u64::from_le_bytes(self.mem[g..g + 8].try_into().unwrap())
    }

    /// Little-endian u32 at `gpa`.
    pub fn read_u32(&self, gpa: u64) -> u32 {
        let g = gpa as usize;
        u32::from_le_bytes(self.mem[g..g + 4].try_into().unwrap())
    }

    /// Stores a little-endian u64 at `gpa`.
    pub fn write_u64(&mut self, gpa: u64, v: u64) {
        let g = gpa as usize;
        self.mem[g..g + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Stores a little-endian u32 at `gpa`.
    pub fn write_u32(&mut self, gpa: u64, v: u32) {
        let g = gpa as usize;
        self.mem[g..g + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Copies `data` to `gpa`.
    pub fn put(&mut self, gpa: u64, data: &[u8]) {
        let g = gpa as usize;
        self.mem[g..g + data.len()].copy_from_slice(data);
    }

    /// The bytes at `gpa..gpa+len`.
    pub fn get(&self, gpa: u64, len: usize) -> &[u8] {
        let g = gpa as usize;
        &self.mem[g..g + len]
    }
}

impl GuestRam for TestRam {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        Self::check_page(gpa, buf.len());
        self.count_and_maybe_fail()?;
        self.reads += 1;
        match self.range(gpa, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&self.mem[r]);
                Ok(RamStatus::Done)
            }
            None => Ok(RamStatus::NotRam),
        }
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        Self::check_page(gpa, data.len());
        self.count_and_maybe_fail()?;
        self.writes += 1;
        let end = gpa + data.len() as u64;
        if self.read_only.iter().any(|&(s, e)| gpa < e && end > s) {
            return Ok(RamStatus::NotRam);
        }
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
        Self::check_page(gpa, new.len());
        assert_eq!(expected.len(), new.len());
        assert!(new.len() <= 16);
        if !self.cas_interference.is_empty() {
            let (at, bytes) = self.cas_interference.remove(0);
            self.put(at, &bytes);
        }
        let result = match self.range(gpa, new.len()) {
            None => CompareWrite::NotRam,
            Some(_) if self.cas_mismatches > 0 => {
                self.cas_mismatches -= 1;
                CompareWrite::Mismatch
            }
            Some(r) if self.mem[r.clone()] != *expected => CompareWrite::Mismatch,
            Some(r) => {
                self.mem[r].copy_from_slice(new);
                CompareWrite::Written
            }
        };
        self.cas_log.push((gpa, new.len(), result));
        Ok(result)
    }
}

/// One recorded bus access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusAccess {
    /// Whether it was a write.
    pub write: bool,
    /// The GPA or port.
    pub addr: u64,
    /// The bytes written, or returned by the read.
    pub data: Vec<u8>,
}

/// An MMIO bus that records every access. Reads return `read_byte(gpa + i)`
/// for each byte (by default the low byte of the address xor 0xA5).
#[derive(Debug, Clone, Default)]
pub struct RecordingMmio {
    /// Every access in order.
    pub log: Vec<BusAccess>,
    /// Fail the access with this index with BusError(7).
    pub fail_at: Option<usize>,
}

impl RecordingMmio {
    /// The value an MMIO read returns at `gpa`.
    pub fn byte_at(gpa: u64) -> u8 {
        (gpa as u8) ^ 0xA5
    }
}

impl MmioBus for RecordingMmio {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        assert!(
            (gpa & 0xFFF) + buf.len() as u64 <= 4096,
            "MMIO access crosses a page"
        );
        if self.fail_at == Some(self.log.len()) {
            return Err(BusError(7));
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = Self::byte_at(gpa + i as u64);
        }
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
            "MMIO access crosses a page"
        );
        if self.fail_at == Some(self.log.len()) {
            return Err(BusError(7));
        }
        self.log.push(BusAccess {
            write: true,
            addr: gpa,
            data: data.to_vec(),
        });
        Ok(())
    }
}

/// A port bus: `IN` returns the next bytes of `input` (zero once it runs
/// out), `OUT` appends to `output`; every access is logged.
#[derive(Debug, Clone, Default)]
pub struct RecordingPorts {
    /// Bytes `IN` returns, consumed in order.
    pub input: Vec<u8>,
    /// Read position in `input`.
    pub pos: usize,
    /// Everything written by `OUT`, concatenated.
    pub output: Vec<u8>,
    /// Every access in order.
    pub log: Vec<BusAccess>,
    /// Fail the access with this index with BusError(9).
    pub fail_at: Option<usize>,
}

impl RecordingPorts {
    /// A bus whose `IN`s return `input`.
    pub fn with_input(input: &[u8]) -> Self {
        RecordingPorts {
            input: input.to_vec(),
            ..Default::default()
        }
    }
}

impl PortIo for RecordingPorts {
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        assert!(
            matches!(buf.len(), 1 | 2 | 4),
            "port access of {} bytes",
            buf.len()
        );
        if self.fail_at == Some(self.log.len()) {
            return Err(BusError(9));
        }
        for b in buf.iter_mut() {
            *b = self.input.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
        }
        self.log.push(BusAccess {
            write: false,
            addr: u64::from(port),
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        assert!(
            matches!(data.len(), 1 | 2 | 4),
            "port access of {} bytes",
            data.len()
        );
        if self.fail_at == Some(self.log.len()) {
            return Err(BusError(9));
        }
        self.output.extend_from_slice(data);
        self.log.push(BusAccess {
            write: true,
            addr: u64::from(port),
            data: data.to_vec(),
        });
        Ok(())
    }
}

/// Paging-entry flag bits for the builders.
pub mod pte {
    /// Present.
    pub const P: u64 = 1;
    /// Writable.
    pub const RW: u64 = 2;
    /// User.
    pub const US: u64 = 4;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty.
    pub const D: u64 = 1 << 6;
    /// Page size (large page) / PAT in a 4 KiB PTE.
    pub const PS: u64 = 1 << 7;
    /// PAT bit of a 4 KiB PTE (same position as PS).
    pub const PAT4K: u64 = 1 << 7;
    /// Execute-disable.
    pub const XD: u64 = 1 << 63;
    /// Present, writable, user.
    pub const PWU: u64 = P | RW | US;
}

/// The paging structure layout a [`PageTables`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 32-bit paging (4-byte entries, 2 levels).
    Bits32,
    /// PAE (PDPT of 4 entries + 2 levels).
    Pae,
    /// 4-level.
    Level4,
    /// 5-level.
    Level5,
}

/// A page-table builder that allocates tables in a [`TestRam`] from a bump
/// pointer. Intermediate entries get `table_flags` (default P|RW|US).
#[derive(Debug, Clone)]
pub struct PageTables {
    /// The layout.
    pub layout: Layout,
    /// The root table's GPA (the CR3 value).
    pub root: u64,
    /// Next free 4 KiB page for a table.
    pub next: u64,
    /// Flags of the intermediate entries created by the builder.
    pub table_flags: u64,
}

impl PageTables {
    /// A builder whose root table is at `root` and further tables go from
    /// `root + 4096` upwards.
    pub fn new(layout: Layout, root: u64) -> Self {
        PageTables {
            layout,
            root,
            next: root + 4096,
            table_flags: pte::PWU,
        }
    }

    /// The CR3 value.
    pub fn cr3(&self) -> u64 {
        self.root
    }

    fn alloc(&mut self) -> u64 {
        let t = self.next;
        self.next += 4096;
        t
    }

    /// (number of levels above the PT, entry size).
    fn levels(&self) -> (u32, u64) {
        match self.layout {
            Layout::Bits32 => (2, 4),
            Layout::Pae => (3, 8),
            Layout::Level4 => (4, 8),
            Layout::Level5 => (5, 8),
        }
    }

    /// The GPA of the entry for `linear` at `level` (1 = PT, 2 = PD, 3 =
    /// PDPT, 4 = PML4, 5 = PML5), creating the tables above it as needed.
    pub fn entry_gpa(&mut self, ram: &mut TestRam, linear: u64, level: u32) -> u64 {
        let (top, esize) = self.levels();
        let mut table = self.root;
        let mut l = top;
        loop {
            let (shift, bits) = match self.layout {
                Layout::Bits32 => (12 + 10 * (l - 1), 10),
                _ => (
                    12 + 9 * (l - 1),
                    if self.layout == Layout::Pae && l == 3 {
                        2
                    } else {
                        9
                    },
                ),
            };
            let index = (linear >> shift) & ((1 << bits) - 1);
            let gpa = if self.layout == Layout::Pae && l == 3 {
                // The PDPT is 32-byte aligned at CR3.
                (table & !0x1F) + index * 8
            } else {
                table + index * esize
            };
            if l == level {
                return gpa;
            }
            let cur = if esize == 8 {
                ram.read_u64(gpa)
            } else {
                u64::from(ram.read_u32(gpa))
            };
            let next = if cur & pte::P != 0 {
                cur & 0x000F_FFFF_FFFF_F000
            } else {
                let t = self.alloc();
                let flags = if self.layout == Layout::Pae && l == 3 {
                    pte::P
                } else {
                    self.table_flags
                };
                if esize == 8 {
                    ram.write_u64(gpa, t | flags);
                } else {
                    ram.write_u32(gpa, (t | flags) as u32);
                }
                t
            };
            table = next;
            l -= 1;
        }
    }

    /// Maps `linear` to `gpa` with a leaf at `level` (1: 4 KiB; 2: 2 MiB or
    /// 4 MiB under 32-bit paging, PS added; 3: 1 GiB, PS added) and the leaf
    /// `flags`. Returns the leaf entry's GPA.
    pub fn map(&mut self, ram: &mut TestRam, linear: u64, gpa: u64, level: u32, flags: u64) -> u64 {
        let at = self.entry_gpa(ram, linear, level);
        let value = if level > 1 {
            gpa | flags | pte::PS
        } else {
            gpa | flags
        };
        self.set(ram, at, value);
        at
    }

    /// Writes an entry of the layout's size.
    pub fn set(&self, ram: &mut TestRam, at: u64, value: u64) {
        if self.layout == Layout::Bits32 {
            ram.write_u32(at, value as u32);
        } else {
            ram.write_u64(at, value);
        }
    }

    /// Sets the bits `set` and clears the bits `clear` of the entry at `at`.
    pub fn modify(&self, ram: &mut TestRam, at: u64, set: u64, clear: u64) {
        let v = (self.get(ram, at) | set) & !clear;
        self.set(ram, at, v);
    }

    /// Reads an entry of the layout's size.
    pub fn get(&self, ram: &TestRam, at: u64) -> u64 {
        if self.layout == Layout::Bits32 {
            u64::from(ram.read_u32(at))
        } else {
            ram.read_u64(at)
        }
    }
}

/// Control-register and flag bits for the state builders.
pub mod bits {
    /// CR0.PE.
    pub const CR0_PE: u64 = 1;
    /// CR0.WP.
    pub const CR0_WP: u64 = 1 << 16;
    /// CR0.PG.
    pub const CR0_PG: u64 = 1 << 31;
    /// CR4.PSE.
    pub const CR4_PSE: u64 = 1 << 4;
    /// CR4.PAE.
    pub const CR4_PAE: u64 = 1 << 5;
    /// CR4.LA57.
    pub const CR4_LA57: u64 = 1 << 12;
    /// CR4.SMEP.
    pub const CR4_SMEP: u64 = 1 << 20;
    /// CR4.SMAP.
    pub const CR4_SMAP: u64 = 1 << 21;
    /// EFER.LME.
    pub const EFER_LME: u64 = 1 << 8;
    /// EFER.LMA.
    pub const EFER_LMA: u64 = 1 << 10;
    /// EFER.NXE.
    pub const EFER_NXE: u64 = 1 << 11;
    /// RFLAGS.DF.
    pub const RFLAGS_DF: u64 = 1 << 10;
    /// RFLAGS.AC.
    pub const RFLAGS_AC: u64 = 1 << 18;
    /// RFLAGS.VM.
    pub const RFLAGS_VM: u64 = 1 << 17;
}

/// The vendor of the tests' CPU states (built with the public constructors,
/// `Registers::long_mode(TEST_VENDOR, ..)` and the like). The fixed cases
/// of this crate's tests were written on (and measured against) an Intel
/// CPU; a case whose result depends on the vendor sets
/// `Registers::vendor` itself (tests/vendor_rules.rs).
pub const TEST_VENDOR: Vendor = Vendor::Intel;

/// Every mode of the CPU, 64-bit mode first.
pub const MODES: [CpuMode; 7] = [
    CpuMode::Long64,
    CpuMode::Compat32,
    CpuMode::Protected32,
    CpuMode::Protected16,
    CpuMode::Compat16,
    CpuMode::Virtual8086,
    CpuMode::Real,
];

/// A [`CpuState`] that reports `max_phys` as MAXPHYADDR and delegates the
/// rest to `state`.
#[derive(Debug, Clone)]
pub struct WithMaxPhys<S> {
    /// The wrapped state.
    pub state: S,
    /// The MAXPHYADDR to report.
    pub max_phys: u8,
}

impl<S: CpuState> CpuState for WithMaxPhys<S> {
    fn gpr(&self, reg: Gpr) -> u64 {
        self.state.gpr(reg)
    }
    fn set_gpr(&mut self, reg: Gpr, value: u64) {
        self.state.set_gpr(reg, value)
    }
    fn rip(&self) -> u64 {
        self.state.rip()
    }
    fn set_rip(&mut self, value: u64) {
        self.state.set_rip(value)
    }
    fn rflags(&self) -> u64 {
        self.state.rflags()
    }
    fn set_rflags(&mut self, value: u64) {
        self.state.set_rflags(value)
    }
    fn segment(&self, seg: Segment) -> SegmentRegister {
        self.state.segment(seg)
    }
    fn cr0(&self) -> u64 {
        self.state.cr0()
    }
    fn cr3(&self) -> u64 {
        self.state.cr3()
    }
    fn cr4(&self) -> u64 {
        self.state.cr4()
    }
    fn efer(&self) -> u64 {
        self.state.efer()
    }
    fn xmm(&self, index: u8) -> Option<u128> {
        self.state.xmm(index)
    }
    fn set_xmm(&mut self, index: u8, value: u128) {
        self.state.set_xmm(index, value)
    }
    fn cpl(&self) -> u8 {
        self.state.cpl()
    }
    fn max_phys_addr(&self) -> u8 {
        self.max_phys
    }
    fn vendor(&self) -> Vendor {
        self.state.vendor()
    }
}
