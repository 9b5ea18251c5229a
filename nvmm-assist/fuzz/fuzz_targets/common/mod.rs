//! What the fuzz targets of the assists share: the input reader, the
//! guest's RAM layout and the control state of each mode. Each target
//! declares it with `mod common;`.

use nvmm_assist::{Registers, SegmentAttributes};

/// Guest RAM: GPA 0..RAM_SIZE except the MMIO page at MMIO_HOLE.
pub const RAM_SIZE: usize = 0x1_0000;
pub const MMIO_HOLE: u64 = 0x8000;

/// Takes fixed-size values from the input, zero once it runs out.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    /// A value biased towards addresses inside RAM and edge values.
    pub fn value(&mut self) -> u64 {
        match self.u8() % 8 {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => 0xFFFF_FFFF,
            4 | 5 => self.u64() & (RAM_SIZE as u64 - 1),
            6 => MMIO_HOLE + u64::from(self.u16() & 0xFFF),
            _ => self.u64(),
        }
    }
}

/// CR0, EFER, RFLAGS.VM and CS attributes for each mode (type 0xB code,
/// S, present), from which `CpuMode::of` derives it.
pub fn mode_state(sel: u8, regs: &mut Registers, paging: bool) {
    const PE: u64 = 1;
    const PG: u64 = 1 << 31;
    const LME_LMA: u64 = (1 << 8) | (1 << 10);
    const PAE: u64 = 1 << 5;
    let code = |l: bool, db: bool| SegmentAttributes::new(0xB, true, 0, true, false, l, db, false);
    let cs = &mut regs.segments[1];
    match sel % 7 {
        0 => {
            regs.cr0 = 0;
            cs.attributes = code(false, false);
        }
        1 => {
            regs.cr0 = PE | if paging { PG } else { 0 };
            regs.rflags |= 1 << 17;
            cs.attributes = code(false, false);
        }
        2 | 3 => {
            regs.cr0 = PE | if paging { PG } else { 0 };
            cs.attributes = code(false, sel % 7 == 3);
        }
        m => {
            regs.cr0 = PE | PG;
            regs.cr4 |= PAE;
            regs.efer |= LME_LMA;
            cs.attributes = code(m == 6, m == 5);
        }
    }
}
