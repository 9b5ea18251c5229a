//! Hostile input: random instruction bytes (biased towards the emulated
//! opcodes), random registers, segments, control registers, page tables
//! (random RAM), exit GPAs and failing devices, in every mode. Properties:
//! no panic (debug build: no overflow), every bus access within one page
//! (the mocks assert it), a bounded number of device accesses per call, and
//! on error no register changed.

use crate::support;
use crate::support::dyn_assist::assist_mem;

use nvmm_assist::{
    AccessType, MemExit, Outcome, Registers, SegmentAttributes, SegmentRegister, Vendor,
};
use support::RecordingMmio;
use support::Rng;
use support::TestRam;

const PREFIXES: &[u8] = &[
    0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x48, 0x41, 0x4C, 0x40,
];
const OPCODES: &[&[u8]] = &[
    &[0x88],
    &[0x89],
    &[0x8A],
    &[0x8B],
    &[0xC6],
    &[0xC7],
    &[0xA0],
    &[0xA1],
    &[0xA2],
    &[0xA3],
    &[0x00],
    &[0x01],
    &[0x02],
    &[0x03],
    &[0x10],
    &[0x19],
    &[0x21],
    &[0x29],
    &[0x31],
    &[0x39],
    &[0x3B],
    &[0x80],
    &[0x81],
    &[0x83],
    &[0x84],
    &[0x85],
    &[0x86],
    &[0x87],
    &[0xF6],
    &[0xF7],
    &[0xFE],
    &[0xFF],
    &[0x8F],
    &[0xA4],
    &[0xA5],
    &[0xA6],
    &[0xA7],
    &[0xAA],
    &[0xAB],
    &[0xAC],
    &[0xAD],
    &[0xAE],
    &[0xAF],
    &[0x0F, 0xB6],
    &[0x0F, 0xB7],
    &[0x0F, 0xBE],
    &[0x0F, 0xBF],
    &[0x63],
    &[0x0F, 0xA3],
    &[0x0F, 0xAB],
    &[0x0F, 0xB3],
    &[0x0F, 0xBB],
    &[0x0F, 0xBA],
    &[0x0F, 0xB0],
    &[0x0F, 0xB1],
    &[0x0F, 0xC0],
    &[0x0F, 0xC1],
    &[0x0F, 0xC7],
    &[0x0F, 0x94],
    &[0x0F, 0x45],
    &[0x0F, 0xC3],
    &[0x0F, 0x6F],
    &[0x0F, 0x7F],
    &[0x0F, 0x6E],
    &[0x0F, 0x7E],
    &[0x0F, 0xD6],
    &[0x0F, 0xE7],
    &[0x0F, 0x28],
    &[0x0F, 0x29],
    &[0x0F, 0x10],
    &[0x0F, 0x11],
    &[0x0F, 0x2B],
    &[0x6C],
    &[0x6E],
    &[0xE4],
    &[0xEE],
];

fn instruction(rng: &mut Rng) -> Vec<u8> {
    let mut v = Vec::new();
    if rng.one_in(8) {
        for _ in 0..rng.below(16) {
            v.push(rng.next() as u8);
        }
        return v;
    }
    for _ in 0..rng.below(4) {
        v.push(PREFIXES[rng.below(PREFIXES.len() as u64) as usize]);
    }
    v.extend_from_slice(OPCODES[rng.below(OPCODES.len() as u64) as usize]);
    for _ in 0..rng.below(12) {
        v.push(rng.next() as u8);
    }
    v
}

fn segment(rng: &mut Rng) -> SegmentRegister {
    SegmentRegister {
        selector: rng.next() as u16,
        base: match rng.below(4) {
            0 => 0,
            1 => rng.below(0x20000),
            2 => rng.next() & 0xFFFF_FFFF,
            _ => rng.next(),
        },
        limit: match rng.below(4) {
            0 => 0xFFFF,
            1 => 0xFFFF_FFFF,
            _ => rng.next() as u32,
        },
        attributes: if rng.one_in(3) {
            SegmentAttributes(rng.next() as u16)
        } else {
            SegmentAttributes::new(
                rng.below(16) as u8,
                true,
                rng.below(4) as u8,
                true,
                false,
                rng.one_in(3),
                rng.one_in(2),
                rng.one_in(2),
            )
        },
    }
}

fn state(rng: &mut Rng) -> Registers {
    let vendor = if rng.one_in(2) {
        Vendor::Intel
    } else {
        Vendor::Amd
    };
    let mut r = Registers::zeroed(vendor);
    for g in r.gprs.iter_mut() {
        *g = match rng.below(5) {
            0 => rng.below(0x100),
            1 => 0x1000 + rng.below(0x2000),
            2 => u64::MAX - rng.below(0x100),
            _ => rng.next(),
        };
    }
    r.rip = if rng.one_in(2) {
        rng.below(0x20000)
    } else {
        rng.next()
    };
    r.rflags = rng.next() & 0x003F_7FD7 | 2;
    for s in r.segments.iter_mut() {
        *s = segment(rng);
    }
    r.cr0 = match rng.below(4) {
        0 => 0,
        1 => 1,
        2 => 0x8000_0011 | (rng.next() & (1 << 16 | 1 << 18)),
        _ => rng.next() & 0xFFFF_FFFF,
    };
    r.cr3 = rng.below(0x10000) & !0xFFF | (rng.next() & 0xFFF);
    r.cr4 = rng.next() & 0x37_1FFF;
    r.efer = if rng.one_in(2) {
        0x500 | (rng.next() & 0x800)
    } else {
        rng.next() & 0xD01
    };
    if rng.one_in(2) {
        r.xmm = Some([rng.next() as u128; 16]);
    }
    r
}

#[test]
fn random_inputs_never_panic_and_errors_change_nothing() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut ram = TestRam::new(0x20000).hole(0x1000, 0x3000);
    for b in ram.mem.iter_mut() {
        *b = rng.next() as u8;
    }
    let mut outcomes = [0usize; 3];
    for case in 0..300_000u32 {
        let bytes = instruction(&mut rng);
        let mut regs = state(&mut rng);
        let gpa = match rng.below(4) {
            0 => rng.next(),
            1 => regs.gprs[rng.below(16) as usize],
            _ => 0x1000 + rng.below(0x2000),
        };
        let mut mmio = RecordingMmio::default();
        if rng.one_in(6) {
            mmio.fail_at = Some(rng.below(8) as usize);
        }
        if rng.one_in(6) {
            ram.fail_at = Some(ram.reads + ram.writes + rng.below(8) as usize);
        } else {
            ram.fail_at = None;
        }
        let fetched = rng.one_in(4);
        let exit = MemExit {
            gpa,
            access: if rng.one_in(2) {
                AccessType::Read
            } else {
                AccessType::Write
            },
            instruction: if fetched { &[] } else { &bytes },
        };
        let before = regs.clone();
        let r = assist_mem(&mut regs, &mut ram, &mut mmio, &exit);
        match r {
            Ok(Outcome::Done) => outcomes[0] += 1,
            Ok(Outcome::Resume) => {
                outcomes[1] += 1;
                assert_eq!(regs.rip, before.rip, "case {case}: Resume keeps RIP");
            }
            Err(_) => {
                outcomes[2] += 1;
                assert_eq!(
                    regs, before,
                    "case {case}: {bytes:02x?} -> {r:?} changed registers"
                );
            }
        }
        assert!(
            mmio.log.len() <= 2 * 2048 + 8,
            "case {case}: {} device accesses",
            mmio.log.len()
        );
    }
    println!("outcomes (done, resume, error): {outcomes:?}");
    // The generator must reach the emulator, not only the decoder.
    assert!(outcomes[0] > 1_000, "{outcomes:?}");
}

/// An exit GPA at or above 2^52 (the architectural physical-address limit)
/// is refused before any access: a `rep stosq` with DF = 1 whose exit
/// claimed GPA 0xFFFF_FFFF_FFFF_FFF8 once reached the RAM callback with a
/// range ending past 2^64 (found by `tests/mmio_batch.rs` in a debug
/// build).
#[test]
fn an_exit_gpa_beyond_the_physical_address_width_is_inconsistent() {
    let mut ram = TestRam::new(0x1_0000);
    let mut mmio = RecordingMmio::default();
    for gpa in [1u64 << 52, 0xFFFF_FFFF_FFFF_FFF8] {
        let mut regs = Registers::real_mode(Vendor::Amd);
        regs.rflags |= 1 << 10; // DF
        regs.gprs[1] = 0x28F; // RCX
        regs.gprs[7] = 0xFFF8; // RDI
        let before = regs.clone();
        let exit = MemExit {
            gpa,
            access: AccessType::Write,
            instruction: &[0xF3, 0x66, 0xAB],
        };
        let r = assist_mem(&mut regs, &mut ram, &mut mmio, &exit);
        assert_eq!(r, Err(nvmm_assist::Error::InconsistentExit), "{gpa:#x}");
        assert_eq!(regs, before);
    }
    assert!(mmio.log.is_empty(), "no device access");
}
