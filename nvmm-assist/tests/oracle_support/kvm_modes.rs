//! The guest modes of the KVM oracle: register state, page tables (built
//! into guest RAM by the test) and the MMIO windows each mode reaches.
#![allow(dead_code)]

use super::kvm::{HIGH, HOLE};
use nvmm_assist::{Registers, SegmentAttributes, SegmentRegister};

/// Where the instruction under test sits (linear = physical in every mode).
pub const CODE: u64 = 0x1000;
/// The initial stack pointer (RAM, SS base 0 in every mode).
pub const STACK: u64 = 0x8000;
/// A RAM window for MOVS/INS between RAM and MMIO.
pub const RAMWIN: (u64, u64) = (0x10000, 0x10000);
/// Page tables live here; the oracle does not compare these bytes (the
/// CPU sets accessed bits on its own fetches, which the assist never does).
pub const PT_AREA: (u64, u64) = (0x100000, 0x100000);

/// A range of linear addresses that lands in MMIO (or RAM), reached
/// through segment `seg` (index as `Segment`), starting at offset `off`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub seg: u8,
    /// Offset (within the segment) of the first byte.
    pub off: u64,
    pub len: u64,
    /// Guest-physical address of the first byte (for the exit GPA: the
    /// window is physically contiguous).
    pub gpa: u64,
    pub mmio: bool,
}

/// One mode the oracle runs.
#[derive(Clone, Debug)]
pub struct ModeDef {
    pub name: &'static str,
    pub state: Registers,
    /// The code's default operand/address size: 2, 4 or 8 (64-bit mode).
    pub bits: u8,
    pub windows: Vec<Window>,
}

fn seg(
    selector: u16,
    base: u64,
    limit: u32,
    typ: u8,
    db: bool,
    l: bool,
    g: bool,
) -> SegmentRegister {
    SegmentRegister {
        selector,
        base,
        limit,
        attributes: SegmentAttributes::new(typ, true, 0, true, false, l, db, g),
    }
}

fn w64(ram: &mut [u8], at: u64, v: u64) {
    ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}
fn w32(ram: &mut [u8], at: u64, v: u32) {
    ram[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 0x80;
/// PAT in a 4 KiB PTE (bit 7, where PS sits in directories).
const PAT4K: u64 = 0x80;
/// PAT in a 2 MiB/4 MiB entry (bit 12, inside the address field's low end).
const PATL: u64 = 0x1000;

/// Linear address of the 4 KiB-paged alias of the hole.
pub const LIN_4K: u64 = 0x4000_0000;
/// Linear address of the 2 MiB-paged alias of the high MMIO range.
pub const LIN_2M: u64 = 0x8000_0000;
/// A high 64-bit linear alias of the high MMIO range.
pub const LIN_HIGH: u64 = 0x7f80_0000_0000;

/// 4-level tables at 0x100000: identity 0-4 MiB (2 MiB pages), LIN_4K ->
/// hole (4 KiB pages, PAT set on odd pages), LIN_2M and LIN_HIGH -> HIGH
/// (2 MiB pages, PAT set on the LIN_2M one). Returns CR3.
fn four_level(ram: &mut [u8]) -> u64 {
    let f = P | RW | US;
    let pml4 = 0x100000;
    w64(ram, pml4, 0x101000 | f);
    w64(ram, 0x101000, 0x102000 | f); // PDPT[0] -> PD (0-1 GiB)
    w64(ram, 0x102000, PS | f);
    w64(ram, 0x102000 + 8, 0x200000 | PS | f);
    w64(ram, 0x101000 + 8, 0x103000 | f); // PDPT[1]: 1 GiB = LIN_4K
    w64(ram, 0x103000, 0x104000 | f);
    for i in 0..(HOLE.1 / 4096) {
        let pat = if i % 2 == 1 { PAT4K } else { 0 };
        w64(ram, 0x104000 + 8 * i, (HOLE.0 + i * 4096) | f | pat);
    }
    w64(ram, 0x101000 + 16, 0x105000 | f); // PDPT[2]: 2 GiB = LIN_2M
    w64(ram, 0x105000, HIGH.0 | PS | PATL | f);
    let i4 = (LIN_HIGH >> 39) & 511;
    w64(ram, pml4 + 8 * i4, 0x106000 | f);
    w64(ram, 0x106000 + 8 * ((LIN_HIGH >> 30) & 511), 0x107000 | f);
    w64(
        ram,
        0x107000 + 8 * ((LIN_HIGH >> 21) & 511),
        HIGH.0 | PS | f,
    );
    pml4
}

/// 32-bit paging tables at 0x180000 (PSE): identity 0-4 MiB (4 MiB page),
/// LIN_4K -> hole (4 KiB pages), LIN_2M -> HIGH (4 MiB page with PAT).
fn two_level(ram: &mut [u8]) -> u64 {
    let f = (P | RW | US) as u32;
    let pd = 0x180000u64;
    w32(ram, pd, PS as u32 | f);
    w32(ram, pd + 4 * (LIN_4K >> 22), 0x181000 | f);
    for i in 0..(HOLE.1 / 4096) {
        w32(ram, 0x181000 + 4 * i, (HOLE.0 + i * 4096) as u32 | f);
    }
    w32(
        ram,
        pd + 4 * (LIN_2M >> 22),
        HIGH.0 as u32 | PS as u32 | PATL as u32 | f,
    );
    pd
}

/// PAE tables at 0x1A0000: PDPT, identity 0-4 MiB (2 MiB pages), LIN_4K
/// -> hole (4 KiB), LIN_2M -> HIGH (2 MiB).
fn pae(ram: &mut [u8]) -> u64 {
    let f = P | RW | US;
    let pdpt = 0x1A0000u64;
    w64(ram, pdpt, 0x1A1000 | P);
    w64(ram, 0x1A1000, PS | f);
    w64(ram, 0x1A1000 + 8, 0x200000 | PS | f);
    w64(ram, pdpt + 8, 0x1A2000 | P);
    w64(ram, 0x1A2000, 0x1A3000 | f);
    for i in 0..(HOLE.1 / 4096) {
        w64(
            ram,
            0x1A3000 + 8 * i,
            (HOLE.0 + i * 4096) | f | if i % 2 == 1 { PAT4K } else { 0 },
        );
    }
    w64(ram, pdpt + 16, 0x1A4000 | P);
    w64(ram, 0x1A4000, HIGH.0 | PS | PATL | f);
    pdpt
}

fn base_state() -> Registers {
    // KVM runs the guest on the host CPU: the assist compared with it runs
    // as the host's vendor.
    Registers {
        rflags: 2,
        ..Registers::zeroed(crate::host_vendor::host_vendor())
    }
}

/// Every mode, with its tables written into `ram`.
pub fn modes(ram: &mut [u8]) -> Vec<ModeDef> {
    let cr3_4 = four_level(ram);
    let cr3_2 = two_level(ram);
    let cr3_pae = pae(ram);
    let mut v = vec![];

    // Real mode: DS = 0xA000 (hole), FS = 0xB000 (hole, upper half),
    // ES = 0x1000 (RAM window), SS = CS = 0.
    let mut st = base_state();
    let rs = |sel: u16, typ: u8| seg(sel, (sel as u64) << 4, 0xffff, typ, false, false, false);
    st.segments = [
        rs(0x1000, 3),
        rs(0, 0xb),
        rs(0, 3),
        rs(0xA000, 3),
        rs(0xB000, 3),
        rs(0xA800, 3),
    ];
    st.cr0 = 0x10;
    v.push(ModeDef {
        name: "real",
        state: st,
        bits: 2,
        windows: vec![
            Window {
                seg: 3,
                off: 0,
                len: 0x10000,
                gpa: 0xA0000,
                mmio: true,
            },
            Window {
                seg: 4,
                off: 0,
                len: 0x10000,
                gpa: 0xB0000,
                mmio: true,
            },
            Window {
                seg: 5,
                off: 0x100,
                len: 0x7000,
                gpa: 0xA8100,
                mmio: true,
            },
            Window {
                seg: 0,
                off: 0,
                len: 0x10000,
                gpa: 0x10000,
                mmio: false,
            },
        ],
    });

    // 16-bit protected mode: bases and limits, expand-down segments.
    let mut st = base_state();
    st.segments = [
        // ES: expand-down RAM, valid offsets 0x1000..=0xffff.
        seg(0x10, 0x10000, 0x0fff, 7, false, false, false),
        seg(0x08, 0, 0xffff, 0xb, false, false, false),
        seg(0x18, 0, 0xffff, 3, false, false, false),
        // DS: base 0x9ff00, the first 0x100 bytes RAM then the hole.
        seg(0x20, 0x9ff00, 0xffff, 3, false, false, false),
        // FS: the upper hole with a short limit.
        seg(0x28, 0xB0000, 0x7fff, 3, false, false, false),
        // GS: expand-down over the hole: offsets 0x8000..=0xffff valid.
        seg(0x30, 0xA0000, 0x7fff, 7, false, false, false),
    ];
    st.cr0 = 0x11;
    v.push(ModeDef {
        name: "prot16",
        state: st,
        bits: 2,
        windows: vec![
            Window {
                seg: 3,
                off: 0x100,
                len: 0xff00,
                gpa: 0xA0000,
                mmio: true,
            },
            Window {
                seg: 4,
                off: 0,
                len: 0x8000,
                gpa: 0xB0000,
                mmio: true,
            },
            Window {
                seg: 5,
                off: 0x8000,
                len: 0x8000,
                gpa: 0xA8000,
                mmio: true,
            },
            Window {
                seg: 0,
                off: 0x1000,
                len: 0xf000,
                gpa: 0x11000,
                mmio: false,
            },
        ],
    });

    // 32-bit protected mode without paging, flat plus based segments.
    let flat = |sel: u16, typ: u8| seg(sel, 0, 0xffff_ffff, typ, true, false, true);
    let mut st = base_state();
    st.segments = [
        flat(0x10, 3),
        flat(0x08, 0xb),
        flat(0x10, 3),
        flat(0x10, 3),
        seg(0x28, 0xA0000, 0x1ffff, 3, true, false, false),
        // GS: 32-bit expand-down (B=1): offsets 0x8000_0000..=0xffff_ffff
        // are valid; base + 0x8000_0000 is the high MMIO range.
        seg(
            0x30,
            HIGH.0 - 0x8000_0000,
            0x7fff_ffff,
            7,
            true,
            false,
            true,
        ),
    ];
    st.cr0 = 0x11;
    let p32_windows = vec![
        Window {
            seg: 3,
            off: HOLE.0,
            len: HOLE.1,
            gpa: HOLE.0,
            mmio: true,
        },
        Window {
            seg: 3,
            off: HIGH.0,
            len: HIGH.1,
            gpa: HIGH.0,
            mmio: true,
        },
        Window {
            seg: 4,
            off: 0,
            len: HOLE.1,
            gpa: HOLE.0,
            mmio: true,
        },
        Window {
            seg: 5,
            off: 0x8000_0000,
            len: 0x10000,
            gpa: HIGH.0,
            mmio: true,
        },
        Window {
            seg: 0,
            off: RAMWIN.0,
            len: RAMWIN.1,
            gpa: RAMWIN.0,
            mmio: false,
        },
    ];
    v.push(ModeDef {
        name: "prot32-flat",
        state: st.clone(),
        bits: 4,
        windows: p32_windows,
    });

    let paged_windows = |lin2m_len: u64| {
        vec![
            Window {
                seg: 3,
                off: LIN_4K,
                len: HOLE.1,
                gpa: HOLE.0,
                mmio: true,
            },
            Window {
                seg: 3,
                off: LIN_2M,
                len: lin2m_len,
                gpa: HIGH.0,
                mmio: true,
            },
            Window {
                seg: 3,
                off: HOLE.0,
                len: HOLE.1,
                gpa: HOLE.0,
                mmio: true,
            },
            Window {
                seg: 0,
                off: RAMWIN.0,
                len: RAMWIN.1,
                gpa: RAMWIN.0,
                mmio: false,
            },
        ]
    };
    let mut st2 = st.clone();
    st2.segments[4] = flat(0x10, 3);
    st2.segments[5] = flat(0x10, 3);
    st2.cr0 = 0x8000_0011;
    st2.cr3 = cr3_2;
    st2.cr4 = 0x10;
    v.push(ModeDef {
        name: "prot32-paging32",
        state: st2.clone(),
        bits: 4,
        windows: paged_windows(HIGH.1),
    });
    let mut st3 = st2.clone();
    st3.cr3 = cr3_pae;
    st3.cr4 = 0x20;
    v.push(ModeDef {
        name: "prot32-pae",
        state: st3,
        bits: 4,
        windows: paged_windows(HIGH.1),
    });

    // Long mode: compatibility (32- and 16-bit code) and 64-bit.
    let mut lm = st2.clone();
    lm.cr3 = cr3_4;
    lm.cr4 = 0x20;
    lm.efer = 0x500;
    let mut c32 = lm.clone();
    c32.segments[4] = seg(0x28, 0xA0000, 0x1ffff, 3, true, false, false);
    v.push(ModeDef {
        name: "compat32",
        state: c32.clone(),
        bits: 4,
        windows: {
            let mut w = paged_windows(HIGH.1);
            w.push(Window {
                seg: 4,
                off: 0,
                len: HOLE.1,
                gpa: HOLE.0,
                mmio: true,
            });
            w
        },
    });
    let mut c16 = c32.clone();
    c16.segments[1] = seg(0x08, 0, 0xffff, 0xb, false, false, false);
    v.push(ModeDef {
        name: "compat16",
        state: c16,
        bits: 2,
        windows: vec![
            Window {
                seg: 4,
                off: 0,
                len: 0x10000,
                gpa: HOLE.0,
                mmio: true,
            },
            Window {
                seg: 0,
                off: 0xC000,
                len: 0x4000,
                gpa: 0xC000,
                mmio: false,
            },
        ],
    });
    let mut l64 = lm.clone();
    l64.segments[1] = seg(0x08, 0, 0xffff_ffff, 0xb, false, true, true);
    // FS base: the 2 MiB alias; GS base 0 (64-bit mode ignores DS/ES/SS bases).
    l64.segments[4] = seg(0x10, LIN_2M, 0xffff_ffff, 3, true, false, true);
    v.push(ModeDef {
        name: "long64",
        state: l64,
        bits: 8,
        windows: vec![
            Window {
                seg: 3,
                off: LIN_4K,
                len: HOLE.1,
                gpa: HOLE.0,
                mmio: true,
            },
            Window {
                seg: 3,
                off: LIN_2M,
                len: HIGH.1,
                gpa: HIGH.0,
                mmio: true,
            },
            Window {
                seg: 3,
                off: LIN_HIGH,
                len: HIGH.1,
                gpa: HIGH.0,
                mmio: true,
            },
            Window {
                seg: 4,
                off: 0x1000,
                len: 0x10000,
                gpa: HIGH.0 + 0x1000,
                mmio: true,
            },
            Window {
                seg: 0,
                off: RAMWIN.0,
                len: RAMWIN.1,
                gpa: RAMWIN.0,
                mmio: false,
            },
        ],
    });
    for m in v.iter_mut() {
        m.state.cr4 |= 0x600;
    }
    v
}
