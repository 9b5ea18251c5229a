//! Hostile input: random page tables, control registers, segments and I/O
//! exits never panic (debug builds check arithmetic overflow), never make
//! the assist access RAM or MMIO across a page (the mocks assert it), and
//! leave registers unchanged on error.

use crate::support;
use crate::support::dyn_assist::assist_io;

use nvmm_assist::{
    AccessType, CpuMode, Error, IoExit, Outcome, Registers, Segment, SegmentAttributes, Vendor,
    linear_address, translate,
};
use support::*;

const RAM_SIZE: usize = 0x4_0000;

/// RAM whose 8-byte words look like paging entries pointing inside RAM,
/// with random flag bits, plus an MMIO hole.
fn hostile_ram(rng: &mut Rng) -> TestRam {
    let mut ram = TestRam::new(RAM_SIZE).hole(0x3_0000, 0x3_1000);
    for w in 0..RAM_SIZE / 8 {
        let mut v = rng.next();
        if rng.chance(85) {
            v = (v & 0x8000_0000_0000_0FFF) | (v & (RAM_SIZE as u64 - 1) & !0xFFF);
        }
        ram.mem[w * 8..w * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    ram
}

fn hostile_regs(rng: &mut Rng) -> Registers {
    let any_cr0 = rng.next();
    let (any_rip, any_ip) = (rng.next(), rng.next() & 0xFFFF);
    let mut r = Registers {
        cr0: rng.pick(&[0, 1, 0x8000_0001, 0x8001_0001, any_cr0]),
        cr3: rng.next()
            & if rng.chance(80) {
                RAM_SIZE as u64 - 1
            } else {
                u64::MAX
            },
        cr4: rng.next()
            & (bits::CR4_PSE | bits::CR4_PAE | bits::CR4_LA57 | bits::CR4_SMEP | bits::CR4_SMAP),
        efer: rng.next() & (bits::EFER_LMA | bits::EFER_NXE | bits::EFER_LME),
        rflags: rng.next() & (bits::RFLAGS_DF | bits::RFLAGS_AC | bits::RFLAGS_VM) | 2,
        rip: rng.pick(&[0, 0xFFF, 0xFFFF, 0xFFFF_FFFF, any_rip, any_ip]),
        // Both vendors' rules get hostile input.
        ..Registers::zeroed(rng.pick(&[Vendor::Intel, Vendor::Amd]))
    };
    for g in r.gprs.iter_mut() {
        let (any, low) = (rng.next(), rng.next() & 0x3_FFFF);
        *g = rng.pick(&[0, 1, 0xFFFF, 0xFFFF_FFFF, u64::MAX, any, low]);
    }
    for s in r.segments.iter_mut() {
        let (any, low) = (rng.next(), rng.next() & 0x3_FFFF);
        s.base = rng.pick(&[0, 0xFFFF_F000, any, low]);
        let any = rng.next() as u32;
        s.limit = rng.pick(&[0, 0xFFFF, 0xFFFF_FFFF, any]);
        s.attributes = SegmentAttributes(rng.next() as u16);
    }
    r
}

#[test]
fn random_walks_and_segments_never_panic() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut ok = 0;
    for round in 0..200 {
        let mut ram = hostile_ram(&mut rng);
        for _ in 0..200 {
            let regs = hostile_regs(&mut rng);
            let acc = rng.pick(&[AccessType::Read, AccessType::Write, AccessType::Execute]);
            let choices = [rng.next(), rng.next() & 0xFFFF_FFFF, rng.next() & 0x3_FFFF];
            let linear = rng.pick(&choices);
            if translate(&regs, &mut ram, linear, acc).is_ok() {
                ok += 1;
            }
            let seg = Segment::from_index((rng.next() % 6) as u8).unwrap();
            let size = rng.pick(&[0, 1, 2, 4, 8, 16, 4096, u64::MAX]);
            let _ = linear_address(&regs, CpuMode::of(&regs), seg, rng.next(), size, acc);
        }
        assert!(
            ram.cas_log.len() < 200 * 5 * 8 * (round + 1),
            "bounded updates"
        );
    }
    std::println!("{ok} of 40000 random walks succeeded");
    assert!(ok > 0, "the generator should produce some valid walks");
}

#[test]
fn random_io_exits_never_panic_and_change_nothing_on_error() {
    let mut rng = Rng(0xDEAD_BEEF_F00D_0001);
    let mut outcomes = [0usize; 3];
    for _ in 0..100 {
        let mut ram = hostile_ram(&mut rng);
        for _ in 0..100 {
            let mut regs = hostile_regs(&mut rng);
            let exit = IoExit {
                port: rng.next() as u16,
                input: rng.chance(50),
                operand_size: rng.pick(&[1, 2, 4, 0, 3, 8]),
                address_size: rng.pick(&[2, 4, 8, 0, 1]),
                rep: rng.chance(70),
                string: rng.chance(70),
                segment: if rng.chance(50) {
                    Segment::from_index((rng.next() % 6) as u8)
                } else {
                    None
                },
                npc: rng.next(),
            };
            let mut mmio = RecordingMmio::default();
            let mut ports = RecordingPorts::with_input(&[0x77; 64]);
            if rng.chance(20) {
                ports.fail_at = Some((rng.next() % 8) as usize);
            }
            let before = regs.clone();
            match assist_io(&mut regs, &mut ram, &mut mmio, &mut ports, &exit) {
                Ok(Outcome::Done) => outcomes[0] += 1,
                Ok(Outcome::Resume) => {
                    outcomes[1] += 1;
                    assert_eq!(regs.rip, before.rip);
                }
                Err(e) => {
                    outcomes[2] += 1;
                    assert_eq!(regs, before, "{e:?} changed registers");
                    if let Error::Bus(_) = e {
                        // A failing port stops at once.
                        assert!(ports.log.len() <= 8);
                    }
                }
            }
            assert!(ports.log.len() <= 4096, "a batch is bounded");
        }
    }
    std::println!("done/resume/error: {outcomes:?}");
    assert!(outcomes.iter().all(|&n| n > 0));
}
