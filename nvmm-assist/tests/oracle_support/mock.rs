//! The assist's side of the host-CPU oracle: a sparse guest RAM, a recording
//! MMIO bus over a byte buffer, identity page tables and a 64-bit user-mode
//! register state.
#![allow(dead_code)]

use nvmm_assist::{
    BusError, CompareWrite, GuestRam, MmioBus, RamStatus, Registers, SegmentAttributes,
    SegmentRegister, Vendor,
};
use std::collections::BTreeMap;

const PAGE: u64 = 4096;

/// One device access, as the MMIO bus saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Guest-physical address.
    pub gpa: u64,
    /// A write (else a read).
    pub write: bool,
    /// The bytes read or written.
    pub data: Vec<u8>,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:#x} len {} [",
            if self.write { "W" } else { "R" },
            self.gpa,
            self.data.len()
        )?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        write!(f, "]")
    }
}

/// Guest RAM as a map of 4 KiB pages; everything else is not RAM.
#[derive(Default, Clone)]
pub struct SparseRam {
    pub pages: BTreeMap<u64, Box<[u8; 4096]>>,
    /// Every call that crossed a page (a contract violation by the assist).
    pub violations: Vec<String>,
}

impl SparseRam {
    /// Adds (zeroed) RAM pages covering `gpa..gpa+len`.
    pub fn add(&mut self, gpa: u64, len: u64) {
        let mut p = gpa & !(PAGE - 1);
        while p < gpa + len {
            self.pages.entry(p).or_insert_with(|| Box::new([0; 4096]));
            p += PAGE;
        }
    }
    /// Copies `data` into RAM at `gpa` (pages must exist).
    pub fn load(&mut self, gpa: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let a = gpa + done as u64;
            let off = (a & (PAGE - 1)) as usize;
            let n = (PAGE as usize - off).min(data.len() - done);
            let p = self.pages.get_mut(&(a & !(PAGE - 1))).expect("RAM page");
            p[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }
    /// Reads RAM bytes at `gpa` (pages must exist).
    pub fn dump(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            let a = gpa + v.len() as u64;
            let off = (a & (PAGE - 1)) as usize;
            let n = (PAGE as usize - off).min(len - v.len());
            v.extend_from_slice(&self.pages[&(a & !(PAGE - 1))][off..off + n]);
        }
        v
    }
    fn page(&mut self, gpa: u64, len: usize) -> Option<(&mut [u8; 4096], usize)> {
        let off = (gpa & (PAGE - 1)) as usize;
        if off + len > PAGE as usize {
            self.violations
                .push(format!("RAM access {gpa:#x} len {len} crosses a page"));
            return None;
        }
        self.pages
            .get_mut(&(gpa & !(PAGE - 1)))
            .map(|p| (&mut **p, off))
    }
    /// Writes a u64 entry at `gpa`.
    pub fn write_u64(&mut self, gpa: u64, v: u64) {
        self.load(gpa, &v.to_le_bytes());
    }
}

impl GuestRam for SparseRam {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        match self.page(gpa, buf.len()) {
            Some((p, off)) => {
                buf.copy_from_slice(&p[off..off + buf.len()]);
                Ok(RamStatus::Done)
            }
            None => Ok(RamStatus::NotRam),
        }
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        match self.page(gpa, data.len()) {
            Some((p, off)) => {
                p[off..off + data.len()].copy_from_slice(data);
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
        match self.page(gpa, new.len()) {
            Some((p, off)) => {
                if &p[off..off + expected.len()] != expected {
                    return Ok(CompareWrite::Mismatch);
                }
                p[off..off + new.len()].copy_from_slice(new);
                Ok(CompareWrite::Written)
            }
            None => Ok(CompareWrite::NotRam),
        }
    }
}

/// An MMIO device that is plain memory at `base..base+bytes.len()` and
/// records every access; anything outside fails with `BusError(-14)`.
#[derive(Clone, Default)]
pub struct RecordingMmio {
    pub base: u64,
    pub bytes: Vec<u8>,
    pub trace: Vec<Access>,
    pub violations: Vec<String>,
}

impl RecordingMmio {
    fn range(&mut self, gpa: u64, len: usize, write: bool) -> Result<usize, BusError> {
        if len == 0 || (gpa & (PAGE - 1)) + len as u64 > PAGE {
            self.violations.push(format!(
                "MMIO access {gpa:#x} len {len} empty or crosses a page"
            ));
        }
        let off = gpa.wrapping_sub(self.base);
        if off >= self.bytes.len() as u64 || off + len as u64 > self.bytes.len() as u64 {
            self.violations.push(format!(
                "MMIO {} at {gpa:#x} len {len} outside the device",
                if write { "write" } else { "read" }
            ));
            return Err(BusError(-14));
        }
        Ok(off as usize)
    }
}

impl MmioBus for RecordingMmio {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        let off = self.range(gpa, buf.len(), false)?;
        buf.copy_from_slice(&self.bytes[off..off + buf.len()]);
        self.trace.push(Access {
            gpa,
            write: false,
            data: buf.to_vec(),
        });
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        let off = self.range(gpa, data.len(), true)?;
        self.bytes[off..off + data.len()].copy_from_slice(data);
        self.trace.push(Access {
            gpa,
            write: true,
            data: data.to_vec(),
        });
        Ok(())
    }
}

/// Where the page tables live: above every address `MAP_32BIT` can return.
pub const PT_BASE: u64 = 0x1_0000_0000;

/// Builds 4-level page tables in `ram` that map each 4 KiB page of
/// `ranges` to the identical GPA (user, writable, no NX); returns CR3.
pub fn identity_tables(ram: &mut SparseRam, ranges: &[(u64, u64)]) -> u64 {
    let mut next = PT_BASE;
    let mut alloc = |ram: &mut SparseRam| {
        let p = next;
        next += PAGE;
        ram.add(p, PAGE);
        p
    };
    let pml4 = alloc(ram);
    for &(start, len) in ranges {
        let mut page = start & !(PAGE - 1);
        while page < start + len {
            let mut table = pml4;
            for level in [39u32, 30, 21] {
                let idx = (page >> level) & 511;
                let slot = table + idx * 8;
                let e = u64::from_le_bytes(ram.dump(slot, 8).try_into().expect("8 bytes"));
                table = if e & 1 != 0 {
                    e & 0x000F_FFFF_FFFF_F000
                } else {
                    let t = alloc(ram);
                    ram.write_u64(slot, t | 0x7);
                    t
                };
            }
            ram.write_u64(table + ((page >> 12) & 511) * 8, page | 0x7);
            page += PAGE;
        }
    }
    pml4
}

/// The register state of a 64-bit Linux user thread (CPL 3, flat, paging).
pub fn long_mode_user(vendor: Vendor, cr3: u64, fs_base: u64, gs_base: u64) -> Registers {
    let data = SegmentRegister {
        selector: 0x2b,
        base: 0,
        limit: 0xffff_ffff,
        attributes: SegmentAttributes::new(3, true, 3, true, false, false, true, true),
    };
    let code = SegmentRegister {
        selector: 0x33,
        base: 0,
        limit: 0xffff_ffff,
        attributes: SegmentAttributes::new(0xb, true, 3, true, false, true, false, true),
    };
    let mut fs = data;
    fs.selector = 0;
    fs.base = fs_base;
    let mut gs = fs;
    gs.base = gs_base;
    Registers {
        gprs: [0; 16],
        rip: 0,
        rflags: 2,
        segments: [data, code, data, data, fs, gs],
        cr0: 0x8005_0033,
        cr3,
        cr4: 0x0000_06a0 | 0x20,
        efer: 0xd01,
        xmm: Some([0; 16]),
        vendor,
    }
}

/// One `assist_mem` call for a memory exit at `gpa` (a read or a write
/// access, as the exit reports), with the instruction bytes in the exit.
pub fn assist(
    st: &mut Registers,
    ram: &mut SparseRam,
    mmio: &mut RecordingMmio,
    gpa: u64,
    write: bool,
    bytes: &[u8],
) -> Result<nvmm_assist::Outcome, nvmm_assist::Error> {
    let exit = nvmm_assist::MemExit {
        gpa,
        access: if write {
            nvmm_assist::AccessType::Write
        } else {
            nvmm_assist::AccessType::Read
        },
        instruction: bytes,
    };
    // Through trait objects: the integration suite's other tests call the
    // assist the same way (`support::dyn_assist`), so that the suite (and
    // this fuzz target) compile one copy of it, not one per device type.
    let (st, ram, mmio): (
        &mut dyn nvmm_assist::CpuState,
        &mut dyn nvmm_assist::GuestRam,
        &mut dyn nvmm_assist::MmioBus,
    ) = (st, ram, mmio);
    nvmm_assist::assist_mem(st, ram, mmio, &exit)
}
