//! The guest CPU modes of the bench, each with its state and RAM.

use nvmm_assist::{Registers, Segment, SegmentAttributes, SegmentRegister};

use crate::support::{self, Layout, PageTables, TestRam, pte};
use crate::{CODE, PT_ROOT, RAM_SIZE};

/// Pages identity-mapped by the paged modes, from GPA 0: the MMIO page,
/// the code page, the RAM operands and the stack (all below
/// [`PT_ROOT`]).
const MAPPED_PAGES: u64 = PT_ROOT / 4096;

/// CR4.OSFXSR: the OS supports SSE (FXSAVE/FXRSTOR).
const CR4_OSFXSR: u64 = 1 << 9;

/// Which encoding of a form a mode takes: the default address size (and
/// with it the ModRM addressing, `[bx]` or `[ebx]`/`[rbx]`, and the moffs
/// width) and whether REX exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// Real and 16-bit protected mode: 16-bit addresses and operands.
    A16,
    /// 32-bit protected and compatibility mode.
    A32,
    /// 64-bit mode.
    A64,
}

/// A guest CPU mode of the bench, with its state and RAM (page tables; the
/// instruction goes at CS:RIP = [`CODE`]).
pub struct ModeSetup {
    pub name: &'static str,
    /// iced-x86's bitness for the mode.
    pub bitness: u32,
    pub regs: Registers,
    pub mem: Vec<u8>,
    pub addressing: Addressing,
}

/// RAM with the first [`MAPPED_PAGES`] pages identity-mapped by page tables
/// of `layout` at [`PT_ROOT`]; sets `regs.cr3`.
fn paged(layout: Layout, regs: &mut Registers) -> Vec<u8> {
    let mut ram = TestRam::new(RAM_SIZE);
    let mut pt = PageTables::new(layout, PT_ROOT);
    for page in 0..MAPPED_PAGES {
        pt.map(&mut ram, page * 4096, page * 4096, 1, pte::PWU);
    }
    assert!(pt.next <= RAM_SIZE as u64, "page tables beyond RAM");
    regs.cr3 = pt.cr3();
    ram.mem
}

/// 64-bit mode's state and RAM, for the port I/O and string sections.
pub fn long_mode() -> (Registers, Vec<u8>) {
    let mut regs = Registers::long_mode(support::TEST_VENDOR, 0, CODE, 0);
    let mem = paged(Layout::Level4, &mut regs);
    (regs, mem)
}

/// Real, 16-bit protected, 32-bit protected (paged), compatibility and
/// 64-bit mode, each with SSE registers.
pub fn mode_setups() -> Vec<ModeSetup> {
    let vendor = support::TEST_VENDOR;
    let mut out = Vec::new();

    let mut real = Registers::real_mode(vendor);
    real.rip = CODE;
    out.push(ModeSetup {
        name: "real",
        bitness: 16,
        regs: real,
        mem: vec![0; RAM_SIZE],
        addressing: Addressing::A16,
    });

    // 16-bit protected mode (a 286-style kernel or a BIOS thunk): 64 KiB
    // segments at base 0, paging off.
    let mut p16 = Registers::flat_protected32(vendor);
    for (i, s) in p16.segments.iter_mut().enumerate() {
        let code = i == Segment::Cs as usize;
        *s = SegmentRegister {
            selector: if code { 0x08 } else { 0x10 },
            base: 0,
            limit: 0xFFFF,
            attributes: if code {
                SegmentAttributes::code16()
            } else {
                SegmentAttributes::data16()
            },
        };
    }
    p16.rip = CODE;
    out.push(ModeSetup {
        name: "prot16",
        bitness: 16,
        regs: p16,
        mem: vec![0; RAM_SIZE],
        addressing: Addressing::A16,
    });

    // A 32-bit kernel: flat segments, 32-bit paging.
    let mut p32 = Registers::flat_protected32(vendor);
    p32.cr0 |= 1 << 31;
    let mem = paged(Layout::Bits32, &mut p32);
    p32.rip = CODE;
    out.push(ModeSetup {
        name: "prot32",
        bitness: 32,
        regs: p32,
        mem,
        addressing: Addressing::A32,
    });

    let mut compat = Registers::compat_mode(vendor, 0, CODE, 0);
    let mem = paged(Layout::Level4, &mut compat);
    out.push(ModeSetup {
        name: "compat",
        bitness: 32,
        regs: compat,
        mem,
        addressing: Addressing::A32,
    });

    let (long, mem) = long_mode();
    out.push(ModeSetup {
        name: "64-bit",
        bitness: 64,
        regs: long,
        mem,
        addressing: Addressing::A64,
    });
    for m in &mut out {
        // The SSE forms need XMM registers, and a guest that runs them has
        // set CR4.OSFXSR (else the CPU raises #UD before any access).
        m.regs.xmm = Some([0; 16]);
        m.regs.cr4 |= CR4_OSFXSR;
    }
    out
}
