//! The ALU lane against the general decoder and executor and against the
//! full fast path, in the five modes, on random bytes of the lane's shapes
//! and near misses, random registers, flags, segments and operands (RAM
//! with random contents, or a device), and bus failures: whenever the lane
//! takes the bytes, the same outcome, registers, RAM and device log as
//! both; when it declines, nothing done; and it declines only what the
//! full fast path's MOV/ALU decoder declines.

use std::vec::Vec;

use super::super::lane_harness::{
    LANE_MODES, Machine, SegmentDraw, by_address_size, case, each_lane_mode, exit_gpa, form_linear,
    mode_registers, push_modrm_and_tail, random_mod, random_rip_and_flags, random_segments,
};
use super::run_alu;
use crate::mode::CpuMode;
use crate::testutil::{RecordingMmio, Rng, TestRam};
use crate::{Registers, Segment, SegmentAttributes};

/// The lane's opcodes, and near misses (04/05, 3C/3D: accumulator
/// immediates; 82; 86; F6/F7 with every ModRM.reg; 0F).
const OPCODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x08, 0x09, 0x0A, 0x0B, 0x10, 0x11, 0x12, 0x13, 0x18, 0x19, 0x1A, 0x1B,
    0x20, 0x21, 0x22, 0x23, 0x28, 0x29, 0x2A, 0x2B, 0x30, 0x31, 0x32, 0x33, 0x38, 0x39, 0x3A, 0x3B,
    0x80, 0x81, 0x83, 0x80, 0x81, 0x83, 0x84, 0x85, 0xF6, 0xF7, 0xF6, 0xF7, 0x04, 0x05, 0x3C, 0x3D,
    0x82, 0x86, 0x0F,
];

/// Random bytes of the lane's shapes and near misses: mostly no prefix,
/// sometimes REX (64-bit mode), 66, LOCK or a segment override.
fn random_alu(rng: &mut Rng, long: bool) -> Vec<u8> {
    let mut v = Vec::new();
    match rng.below(8) {
        0 if long => v.push(0x40 | rng.below(16) as u8),
        1 if long => v.push(rng.pick(&[0x48, 0x4C, 0x41, 0x40])),
        2 => v.push(rng.pick(&[0x66, 0xF0, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x67, 0xF3])),
        _ => {}
    }
    v.push(rng.pick(OPCODES));
    let md = random_mod(rng);
    let reg = if rng.below(2) == 0 {
        rng.below(2) as u8
    } else {
        rng.below(8) as u8
    };
    push_modrm_and_tail(rng, &mut v, md, reg, 5);
    v
}

/// A state of `mode` with random registers, flags (every status flag, RF,
/// AC with CR0.AM at CPL 3 sometimes) and data segments (outside 64-bit
/// mode: bases, limits, and sometimes a read-only or expand-down type).
fn random_state(rng: &mut Rng, mode: CpuMode) -> Registers {
    let mut regs = mode_registers(mode, 0x20000);
    let draw = SegmentDraw {
        segments: &[Segment::Ds, Segment::Ss, Segment::Es],
        limits: &[0xFFF, 0x1FFF, 0x8FFF, 0xFFFF],
        db: false,
        type_one_in: 16,
        types: &[
            SegmentAttributes::TYPE_DATA_READ_ONLY,
            SegmentAttributes::TYPE_DATA_EXPAND_DOWN,
        ],
    };
    random_segments(rng, mode, &mut regs, &draw);
    for g in regs.gprs.iter_mut() {
        *g = match rng.below(4) {
            0 => rng.below(0x400),
            1 => 0x1000 + rng.below(0x1000),
            2 => 0x8000 + rng.below(0x1000),
            _ => rng.next(),
        };
    }
    random_rip_and_flags(rng, mode, &mut regs, 0x1000);
    regs
}

/// `iterations` random cases in `mode` (default address size `ADDR`);
/// returns how many the lane took.
fn compare<const ADDR: u8>(rng: &mut Rng, mode: CpuMode, iterations: usize) -> usize {
    let mut taken = 0;
    let mut ram = TestRam::new(0x10000);
    for b in ram.mem.iter_mut() {
        *b = rng.next() as u8;
    }
    for _ in 0..iterations {
        let bytes = random_alu(rng, mode.is_64bit());
        let regs = random_state(rng, mode);
        assert_eq!(CpuMode::of(&regs), mode);
        // The exit GPA at the page offset of the decoded linear address,
        // in RAM (random contents) or at a device, else anywhere.
        let linear = form_linear::<ADDR, false>(&regs, mode, &bytes);
        let page = if rng.below(2) == 0 {
            0x8000
        } else {
            0x1_0000_0000
        };
        let gpa = exit_gpa(rng, page, linear);
        let mut ram = ram.clone();
        let mut mmio = RecordingMmio::default();
        match rng.below(16) {
            0 => mmio.fail_at = Some(rng.below(2) as usize),
            1 => ram.fail_at = Some(rng.below(2) as usize),
            _ => {}
        }
        let what = case(mode, &bytes, gpa);
        let mut lane = Machine::new(&regs, &ram, &mmio);
        let got = run_alu::<ADDR, _, _, _>(
            &mut lane.regs,
            mode,
            &mut lane.ram,
            &mut lane.mmio,
            gpa,
            &bytes,
        );
        // The full fast path's MOV/ALU decoder takes the same bytes.
        let decoded = super::super::decode::<ADDR, false, _>(&regs, mode, gpa, &bytes).is_some();
        let ours = super::super::lane::<ADDR>(&bytes) == super::super::Lane::Alu;
        assert_eq!(got.is_some(), ours && decoded, "{what}");
        let Some(result) = got else {
            lane.assert_untouched(&regs, &what);
            continue;
        };
        taken += 1;
        let mut general = Machine::new(&regs, &ram, &mmio);
        assert_eq!(result, general.general(gpa, &bytes), "{what}");
        lane.assert_same(&general, &what);
        if result.is_err() {
            assert_eq!(lane.regs, regs, "{what}: a failure changes nothing");
        }
        let mut full = Machine::new(&regs, &ram, &mmio);
        let full_result = full.full_fast::<ADDR>(mode, gpa, &bytes);
        assert_eq!(Some(result), full_result, "{what}: the full fast path");
        lane.assert_same(&full, &what);
    }
    taken
}

#[test]
fn alu_lane_is_the_general_and_the_full_fast_path() {
    each_lane_mode(
        0xA1B2_C3D4_E5F6_0718,
        4_000,
        40_000,
        5,
        |rng, mode, n| by_address_size!(mode, A => compare::<A>(rng, mode, n)),
    );
}

/// Every operation, size and direction on fixed bytes in each mode, with
/// operands and flags that set and clear each status flag: the lane's
/// result is the general path's.
#[test]
fn alu_lane_every_operation_and_size() {
    let mut rng = Rng(0x5EED_0A1B_2C3D_4E5F);
    for mode in LANE_MODES {
        let long = mode.is_64bit();
        let mut forms: Vec<Vec<u8>> = Vec::new();
        for op in 0..8u8 {
            for low in 0..4u8 {
                forms.push(std::vec![op << 3 | low, 0x07]);
            }
            forms.push(std::vec![0x80, 0x07 | op << 3, 0x80]);
            forms.push(std::vec![0x81, 0x07 | op << 3, 0xFF, 0x7F, 0x00, 0x80]);
            forms.push(std::vec![0x83, 0x07 | op << 3, 0xFF]);
        }
        forms.push(std::vec![0x84, 0x07]);
        forms.push(std::vec![0x85, 0x07]);
        forms.push(std::vec![0xF6, 0x07, 0x81]);
        forms.push(std::vec![0xF7, 0x0F, 0x01, 0x80, 0x00, 0x80]);
        if long {
            let rexed: Vec<Vec<u8>> = forms
                .iter()
                .flat_map(|f| [0x48u8, 0x40, 0x4C].map(|r| [&[r][..], f].concat()))
                .collect();
            forms.extend(rexed);
        }
        // One random RAM per mode: each case writes its operand into it,
        // and the two paths run on copies of it.
        let mut ram = TestRam::new(0x10000);
        for b in ram.mem.iter_mut() {
            *b = rng.next() as u8;
        }
        for bytes in forms {
            for _ in 0..64 {
                // The mode's flat segments (random registers, no #AC).
                let mut regs = random_state(&mut rng, mode);
                let mut plain = mode_registers(mode, 0x20000);
                plain.gprs = regs.gprs;
                plain.rip = regs.rip;
                plain.rflags = 2 | (rng.next() & 0x8D5);
                regs = plain;
                // [bx] (16-bit) or [rdi]/[edi] at 0x8000 + a random offset.
                let offset = 0x8000 + rng.below(0xFF0);
                regs.gprs[7] = offset;
                regs.gprs[3] = offset;
                regs.gprs[6] = 0;
                // Operands near the sign and carry edges.
                let edge = [
                    0,
                    1,
                    0x7F,
                    0x80,
                    0xFF,
                    0x7FFF,
                    0x8000,
                    0xFFFF_FFFF,
                    u64::MAX,
                ];
                regs.gprs[0] = if rng.below(2) == 0 {
                    rng.pick(&edge)
                } else {
                    rng.next()
                };
                regs.gprs[1] = regs.gprs[0].wrapping_add(rng.below(3)).rotate_left(8);
                let value = if rng.below(2) == 0 {
                    rng.pick(&edge)
                } else {
                    rng.next()
                };
                let at = offset as usize;
                ram.mem[at..at + 8].copy_from_slice(&value.to_le_bytes());
                let what = case(mode, &bytes, offset);
                let mmio = RecordingMmio::default();
                let mut lane = Machine::new(&regs, &ram, &mmio);
                let (r1, ram1, m1) = (&mut lane.regs, &mut lane.ram, &mut lane.mmio);
                let got = by_address_size!(mode, A => {
                    run_alu::<A, _, _, _>(r1, mode, ram1, m1, offset, &bytes)
                });
                let mut general = Machine::new(&regs, &ram, &mmio);
                assert_eq!(got, Some(general.general(offset, &bytes)), "{what}");
                lane.assert_same(&general, &what);
            }
        }
    }
}
