//! The integer lane against the general decoder and executor, in every
//! mode class, on random instructions of the lane's shapes (and near
//! misses) with random registers, flags, segments, RAM or device operands,
//! lost compare-and-write races and failing bus callbacks: whenever the
//! lane takes the bytes it does what the general path does (result,
//! registers, RAM, device log, compare-and-write log, bus call counts);
//! when it declines it has done nothing; and it takes every case of its
//! shapes that the full fast path takes.

use std::vec::Vec;

use super::super::lane_harness::{Machine, case};
use super::run;
use crate::decode::{Mnemonic, Operand, decode};
use crate::exec::fast::{Lane, lane};
use crate::mode::CpuMode;
use crate::testutil::{Layout, PageTables, RecordingMmio, Rng, TEST_VENDOR, TestRam, pte};
use crate::{Gpr, Outcome, Registers, Segment, SegmentAttributes};

/// The lane's opcodes (after LOCK and REX), and near misses it declines.
const OPCODES: &[&[u8]] = &[
    &[0xFE],
    &[0xFF],
    &[0xFF],
    &[0xF6],
    &[0xF7],
    &[0xF7],
    &[0x86],
    &[0x87],
    &[0x63],
    &[0x0F, 0x40],
    &[0x0F, 0x44],
    &[0x0F, 0x4F],
    &[0x0F, 0x90],
    &[0x0F, 0x94],
    &[0x0F, 0x9B],
    &[0x0F, 0xA3],
    &[0x0F, 0xAB],
    &[0x0F, 0xB3],
    &[0x0F, 0xBB],
    &[0x0F, 0xBA],
    &[0x0F, 0xBA],
    &[0x0F, 0xB0],
    &[0x0F, 0xB1],
    &[0x0F, 0xC0],
    &[0x0F, 0xC1],
    &[0x0F, 0xC3],
    &[0x0F, 0xC7],
    &[0x0F, 0xC7],
    // The ALU forms (locked, or not the lane's).
    &[0x00],
    &[0x01],
    &[0x09],
    &[0x11],
    &[0x19],
    &[0x20],
    &[0x29],
    &[0x31],
    &[0x39],
    &[0x03],
    &[0x80],
    &[0x81],
    &[0x83],
    &[0x83],
    // Near misses.
    &[0x84],
    &[0x85],
    &[0x88],
    &[0x8F],
    &[0x0F, 0xAF],
    &[0x0F, 0xA5],
    &[0x0F, 0xB6],
    &[0x0F, 0xC8],
];

/// Random bytes of the lane's shapes: LOCK or not, REX or not (64-bit
/// mode), sometimes another prefix (which the lane declines; then the
/// flag is set).
fn random_bytes(rng: &mut Rng, long: bool) -> (Vec<u8>, bool) {
    let mut v = Vec::new();
    if rng.below(3) == 0 {
        v.push(0xF0);
    }
    if long && rng.below(2) == 0 {
        v.push(0x40 | rng.below(16) as u8);
    }
    let foreign = rng.below(16) == 0;
    if foreign {
        // Not the lane's: a prefix anywhere before the opcode.
        let at = rng.below(v.len() as u64 + 1) as usize;
        v.insert(at, rng.pick(&[0x66, 0x67, 0x2E, 0x64, 0xF3, 0xF0]));
    }
    v.extend_from_slice(rng.pick(OPCODES));
    let md = if rng.below(16) == 0 {
        3
    } else {
        rng.below(3) as u8
    };
    let reg = match rng.below(4) {
        0 => rng.below(2) as u8,     // INC/DEC, CMPXCHG8B
        1 => 2 + rng.below(2) as u8, // NOT/NEG
        2 => 4 + rng.below(4) as u8, // BT* imm8
        _ => rng.below(8) as u8,
    };
    v.push(md << 6 | reg << 3 | rng.below(8) as u8);
    for _ in 0..10 {
        let b = rng.next() as u8;
        v.push(if rng.below(2) == 0 { b & 0x0F } else { b });
    }
    let keep = v.len() - rng.below(3) as usize * rng.below(5) as usize;
    v.truncate(keep);
    (v, foreign)
}

/// A state of `mode` (paged through `cr3` where the mode pages), with
/// random registers, flags, data segments (outside 64-bit mode) and
/// alignment checking.
fn random_state(rng: &mut Rng, mode: CpuMode, cr3: u64) -> Registers {
    let mut regs = match mode {
        CpuMode::Long64 => Registers::long_mode(TEST_VENDOR, cr3, 0, 0),
        CpuMode::Compat32 => Registers::compat_mode(TEST_VENDOR, cr3, 0, 0),
        CpuMode::Protected32 | CpuMode::Protected16 => Registers::flat_protected32(TEST_VENDOR),
        _ => Registers::real_mode(TEST_VENDOR),
    };
    if mode == CpuMode::Protected16 {
        regs.segments[Segment::Cs as usize].attributes = SegmentAttributes::code16();
    }
    if !mode.is_64bit() {
        for s in [Segment::Ds, Segment::Ss] {
            let r = &mut regs.segments[s as usize];
            if rng.below(4) == 0 {
                r.base = 0x400 * rng.below(8);
            }
            if rng.below(4) == 0 {
                r.limit = rng.pick(&[0xFFF, 0x1FFF, 0xFFFF]);
            }
            if mode != CpuMode::Real && rng.below(16) == 0 {
                r.attributes = r
                    .attributes
                    .with_type(SegmentAttributes::TYPE_DATA_READ_ONLY);
            }
        }
    }
    for g in regs.gprs.iter_mut() {
        *g = match rng.below(4) {
            0 => rng.below(0x400),
            1 => 0x1000 + rng.below(0x2000),
            2 => rng.next(),
            _ => 0x4000 + rng.below(0x4000),
        };
    }
    if rng.below(4) == 0 {
        // Aligned addresses more often (CMPXCHG16B needs 16 bytes).
        for g in regs.gprs.iter_mut() {
            *g &= !15;
        }
    }
    regs.rip = 0x10000 + rng.below(0x100);
    if !mode.is_64bit() && rng.below(16) == 0 {
        // Near the wrap of the instruction pointer.
        regs.rip = if mode.default_size() == 2 {
            0xFFF8
        } else {
            0xFFFF_FFF8
        };
    }
    regs.rflags = 2 | (rng.next() & 0x8D5) | if rng.below(8) == 0 { 1 << 18 } else { 0 };
    if rng.below(4) == 0 {
        regs.rflags |= 1 << 16; // RF
    }
    if rng.below(8) == 0 {
        regs.cr0 |= 1 << 18; // CR0.AM: with AC and CPL 3, #AC
        if mode != CpuMode::Real {
            regs = regs.at_cpl(3);
        }
    }
    regs
}

/// The linear address the general decoder says the instruction accesses
/// (segment checks left out), computed from its decoded operand.
fn linear_of(bytes: &[u8], regs: &Registers, mode: CpuMode) -> Option<u64> {
    let insn = decode(bytes, mode).ok()?;
    let m = insn.operands.iter().find_map(|o| match o {
        Operand::Mem(m) => Some(*m),
        _ => None,
    })?;
    let mut ea = if m.rip_relative {
        regs.rip.wrapping_add(u64::from(insn.len))
    } else {
        0
    };
    if let Some(b) = m.base {
        ea = ea.wrapping_add(regs.gprs[b as usize]);
    }
    if let Some(i) = m.index {
        ea = ea.wrapping_add(regs.gprs[i as usize].wrapping_mul(u64::from(m.scale)));
    }
    ea = ea.wrapping_add(m.disp as u64);
    let amask = match insn.address_size {
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    };
    ea &= amask;
    if let (Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc, Operand::Reg(r)) =
        (insn.mnemonic, insn.operands[1])
    {
        let raw = regs.gprs[r.gpr as usize] & crate::flags::size_mask(insn.operand_size);
        let (_, d) = crate::exec::bits::register_offset(raw, insn.operand_size);
        ea = ea.wrapping_add(d as u64) & amask;
    }
    let base = regs.segments[m.segment as usize].base;
    Some(if mode.is_64bit() {
        ea
    } else {
        base.wrapping_add(ea) & 0xFFFF_FFFF
    })
}

/// Whether `bytes` are a plain INC/DEC/NOT/NEG of memory (no LOCK, at most
/// a REX prefix in 64-bit mode), the lane's own path for them
/// (`unary.rs`).
fn plain_unary(bytes: &[u8], long: bool) -> bool {
    let at = usize::from(long && bytes.first().is_some_and(|b| b & 0xF0 == 0x40));
    matches!(
        (bytes.get(at), bytes.get(at + 1).map(|m| (m >> 3) & 7)),
        (Some(0xFE | 0xFF), Some(0 | 1)) | (Some(0xF6 | 0xF7), Some(2 | 3))
    )
}

/// `iterations` random cases in `mode` (default address size `ADDR`);
/// returns how many the lane took, how many of those were locked and how
/// many were plain INC/DEC/NOT/NEG ([`plain_unary`]).
fn compare<const ADDR: u8>(
    rng: &mut Rng,
    mode: CpuMode,
    base_ram: &TestRam,
    cr3: u64,
    iterations: usize,
) -> (usize, usize, usize) {
    let (mut taken, mut locked, mut unary) = (0, 0, 0);
    for _ in 0..iterations {
        let (bytes, foreign) = random_bytes(rng, mode.is_64bit());
        let mut regs = random_state(rng, mode, cr3);
        assert_eq!(CpuMode::of(&regs), mode);
        let lin = linear_of(&bytes, &regs, mode).unwrap_or(0);
        if rng.below(3) == 0 && lin < 0x1F000 {
            // rDX:rAX (and rAX) equal to the operand: CMPXCHG* succeeds.
            let at = lin as usize;
            let half = if rng.below(2) == 0 { 4 } else { 8 };
            let le = |b: &[u8]| b.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x));
            let mem: Vec<u8> = (at..at + 16)
                .map(|a| {
                    if (0x1000..0x3000).contains(&a) {
                        RecordingMmio::byte_at(a as u64)
                    } else {
                        base_ram.mem[a]
                    }
                })
                .collect();
            regs.gprs[Gpr::Rax as usize] = le(&mem[..half]);
            regs.gprs[Gpr::Rdx as usize] = le(&mem[half..2 * half]);
        }
        // (Again: rAX or rDX may be in the address.)
        let lin = linear_of(&bytes, &regs, mode).unwrap_or(0);
        // Identity-mapped: the exit GPA is the linear address (or another
        // offset in its page, which the lane must decline).
        let gpa = if rng.below(32) == 0 { lin ^ 8 } else { lin } & 0xF_FFFF_FFFF;
        let mut ram = base_ram.clone();
        ram.cas_mismatches = rng.pick(&[0, 0, 0, 0, 1, 2, 16, 100]);
        if rng.below(16) == 0 {
            ram.fail_at = Some(rng.below(3) as usize);
        }
        let mmio = RecordingMmio {
            fail_at: (rng.below(16) == 0).then(|| rng.below(3) as usize),
            ..RecordingMmio::default()
        };
        let what = case(mode, &bytes, gpa);
        let mut ours = Machine::new(&regs, &ram, &mmio);
        let (r1, ram1, m1) = (&mut ours.regs, &mut ours.ram, &mut ours.mmio);
        let got = run::<ADDR, _, _, _>(r1, mode, ram1, m1, gpa, &bytes);
        match got {
            Some(result) => {
                taken += 1;
                locked += usize::from(bytes.first() == Some(&0xF0));
                unary += usize::from(plain_unary(&bytes, mode.is_64bit()));
                let mut general = Machine::new(&regs, &ram, &mmio);
                assert_eq!(result, general.general(gpa, &bytes), "{what}");
                ours.assert_same(&general, &what);
                if result.is_err() || result == Ok(Outcome::Resume) {
                    assert_eq!(ours.regs, regs, "{what}: nothing changes");
                }
            }
            None => {
                ours.assert_untouched(&regs, &what);
                // The full fast path takes no case of the lane's shapes
                // that the lane declines (a LOCK and a 66 prefix, which
                // the lane choice sends here, are the full path's).
                if lane::<ADDR>(&bytes) == Lane::Int && !foreign {
                    let mut full = Machine::new(&regs, &ram, &mmio);
                    let taken_by_full = full.full_fast::<ADDR>(mode, gpa, &bytes).is_some();
                    assert!(!taken_by_full, "{what}: the full fast path took it");
                }
            }
        }
    }
    (taken, locked, unary)
}

#[test]
fn integer_lane_is_the_general_path_in_every_mode() {
    let iterations = if cfg!(debug_assertions) {
        4_000
    } else {
        40_000
    };
    // RAM with a device hole, identity-mapped below the page tables.
    let mut ram = TestRam::new(0x40000).hole(0x1000, 0x3000);
    let mut rng = Rng(0x1A7E_0BAD_5EED_F00D);
    for b in ram.mem.iter_mut().take(0x20000) {
        *b = rng.next() as u8;
    }
    let mut pt = PageTables::new(Layout::Level4, 0x20000);
    for page in 0..0x20u64 {
        pt.map(&mut ram, page * 4096, page * 4096, 1, pte::PWU);
    }
    for mode in [
        CpuMode::Long64,
        CpuMode::Compat32,
        CpuMode::Protected32,
        CpuMode::Protected16,
        CpuMode::Real,
    ] {
        let (taken, locked, unary) = match mode.default_address_size() {
            8 => compare::<8>(&mut rng, mode, &ram, pt.cr3(), iterations),
            4 => compare::<4>(&mut rng, mode, &ram, pt.cr3(), iterations),
            _ => compare::<2>(&mut rng, mode, &ram, pt.cr3(), iterations),
        };
        assert!(taken > iterations / 5, "{mode:?}: the lane took {taken}");
        assert!(locked > iterations / 50, "{mode:?}: {locked} locked");
        assert!(
            unary > iterations / 100,
            "{mode:?}: {unary} plain INC/DEC/NOT/NEG"
        );
    }
}
