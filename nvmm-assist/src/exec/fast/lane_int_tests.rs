//! The integer lane against the general decoder and executor, in every
//! mode class, on random instructions of the lane's shapes (and near
//! misses) with random registers, flags, segments, RAM or device operands,
//! lost compare-and-write races and failing bus callbacks: whenever the
//! lane takes the bytes it does what the general path does (result,
//! registers, RAM, device log, compare-and-write log, bus call counts);
//! when it declines it has done nothing; and it takes every case of its
//! shapes that the full fast path takes.

use std::vec::Vec;

use super::super::lane_harness::{
    LANE_MODES, Machine, SegmentDraw, accumulator_matches, addresses, by_address_size, case,
    identity_ram, le, memory_at, mode_registers, push_modrm_and_tail, random_mod,
    random_rip_and_flags, random_segments,
};
use super::{run, run_bits, run_cond, run_exchange, run_unary};
use crate::exec::fast::{Lane, lane};
use crate::mode::CpuMode;
use crate::testutil::{RecordingMmio, Rng, TestRam};
use crate::{Error, Gpr, Outcome, Registers, Segment, SegmentAttributes};

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

/// The lane on `m` (default address size `ADDR`), out of line: [`run`] is
/// always inline, and each call site would hold a copy of the whole lane
/// (which the test binary's build pays for).
#[inline(never)]
fn lane_run<const ADDR: u8>(
    m: &mut Machine,
    mode: CpuMode,
    gpa: u64,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>> {
    run::<ADDR, _, _, _>(&mut m.regs, mode, &mut m.ram, &mut m.mmio, gpa, bytes)
}

/// The entry of their own that [`lane`] gives the exchanges, INC/DEC and
/// NOT/NEG, BT* and SETcc/CMOVcc (`family`), on `m`, out of line as [`lane_run`]; `None`
/// for the other lanes.
#[inline(never)]
fn family_run<const ADDR: u8>(
    family: Lane,
    m: &mut Machine,
    mode: CpuMode,
    gpa: u64,
    bytes: &[u8],
) -> Option<Option<Result<Outcome, Error>>> {
    let (regs, ram, mmio) = (&mut m.regs, &mut m.ram, &mut m.mmio);
    Some(match family {
        Lane::Exchange => run_exchange::<ADDR, _, _, _>(regs, mode, ram, mmio, gpa, bytes),
        Lane::Bits => run_bits::<ADDR, _, _, _>(regs, mode, ram, mmio, gpa, bytes),
        Lane::Cond => run_cond::<ADDR, _, _, _>(regs, mode, ram, mmio, gpa, bytes),
        Lane::Unary => run_unary::<ADDR, _, _, _>(regs, mode, ram, mmio, gpa, bytes),
        _ => return None,
    })
}

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
    let md = random_mod(rng);
    let reg = match rng.below(4) {
        0 => rng.below(2) as u8,     // INC/DEC, CMPXCHG8B
        1 => 2 + rng.below(2) as u8, // NOT/NEG
        2 => 4 + rng.below(4) as u8, // BT* imm8
        _ => rng.below(8) as u8,
    };
    push_modrm_and_tail(rng, &mut v, md, reg, 5);
    (v, foreign)
}

/// A state of `mode` (paged through `cr3` where the mode pages), with
/// random registers, flags, data segments (outside 64-bit mode) and
/// alignment checking.
fn random_state(rng: &mut Rng, mode: CpuMode, cr3: u64) -> Registers {
    let mut regs = mode_registers(mode, cr3);
    let draw = SegmentDraw {
        segments: &[Segment::Ds, Segment::Ss],
        limits: &[0xFFF, 0x1FFF, 0xFFFF],
        db: false,
        type_one_in: 16,
        types: &[SegmentAttributes::TYPE_DATA_READ_ONLY],
    };
    random_segments(rng, mode, &mut regs, &draw);
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
    random_rip_and_flags(rng, mode, &mut regs, 0x10000);
    regs
}

/// The linear address the general decoder says the instruction accesses
/// (segment checks left out; these states have no FS or GS base).
fn linear_of(bytes: &[u8], regs: &Registers, mode: CpuMode) -> Option<u64> {
    addresses(bytes, regs, mode).map(|(_, linear)| linear)
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

/// The lane's own paths besides INC/DEC/NOT/NEG: BT* (`bits.rs`),
/// XCHG/XADD/CMPXCHG (`exchange.rs`), SETcc/CMOVcc (`cond.rs`).
const FAMILIES: [&str; 3] = ["BT*", "XCHG/XADD/CMPXCHG", "SETcc/CMOVcc"];

/// Which of [`FAMILIES`] the opcode of `bytes` (after LOCK and, 64-bit
/// mode, REX) belongs to, if any.
fn family(bytes: &[u8], long: bool) -> Option<usize> {
    let mut at = usize::from(bytes.first() == Some(&0xF0));
    at += usize::from(long && bytes.get(at).is_some_and(|b| b & 0xF0 == 0x40));
    match (bytes.get(at), bytes.get(at + 1)) {
        (Some(0x0F), Some(0xA3 | 0xAB | 0xB3 | 0xBB | 0xBA)) => Some(0),
        (Some(0x86 | 0x87), _) | (Some(0x0F), Some(0xB0 | 0xB1 | 0xC0 | 0xC1)) => Some(1),
        (Some(0x0F), Some(&b)) if matches!(b & 0xF0, 0x40 | 0x90) => Some(2),
        _ => None,
    }
}

/// What [`compare`] counts of the cases the lane took.
#[derive(Default)]
struct Taken {
    all: usize,
    locked: usize,
    /// Plain INC/DEC/NOT/NEG ([`plain_unary`]).
    unary: usize,
    /// Per one of [`FAMILIES`]: all, locked.
    family: [(usize, usize); 3],
    /// Run by a family's own entry as well ([`family_run`]).
    own: usize,
}

/// `iterations` random cases in `mode` (default address size `ADDR`);
/// returns what the lane took.
fn compare<const ADDR: u8>(
    rng: &mut Rng,
    mode: CpuMode,
    base_ram: &TestRam,
    cr3: u64,
    iterations: usize,
) -> Taken {
    let mut taken = Taken::default();
    for _ in 0..iterations {
        let (bytes, foreign) = random_bytes(rng, mode.is_64bit());
        let mut regs = random_state(rng, mode, cr3);
        assert_eq!(CpuMode::of(&regs), mode);
        let lin = linear_of(&bytes, &regs, mode).unwrap_or(0);
        if rng.below(3) == 0 && lin < 0x1F000 {
            // rDX:rAX (and rAX) equal to the operand: CMPXCHG* succeeds.
            accumulator_matches(rng, &mut regs, base_ram, lin);
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
        let got = lane_run::<ADDR>(&mut ours, mode, gpa, &bytes);
        // The entry of their own that the lane choice gives some
        // families: exactly what the lane's `run` does on those bytes.
        // (The copy of the 256 KiB RAM is made only for those cases.)
        let chosen = lane::<ADDR>(&bytes);
        let has_own = matches!(
            chosen,
            Lane::Exchange | Lane::Bits | Lane::Cond | Lane::Unary
        );
        let mut own = has_own.then(|| Machine::new(&regs, &ram, &mmio));
        if let Some(own) = own.as_mut()
            && let Some(own_got) = family_run::<ADDR>(chosen, own, mode, gpa, &bytes)
        {
            taken.own += 1;
            assert_eq!(own_got, got, "{what}: {chosen:?}'s own entry");
            own.assert_same(&ours, &what);
        }
        match got {
            Some(result) => {
                let lock = bytes.first() == Some(&0xF0);
                taken.all += 1;
                taken.locked += usize::from(lock);
                taken.unary += usize::from(plain_unary(&bytes, mode.is_64bit()));
                if let Some(f) = family(&bytes, mode.is_64bit()) {
                    taken.family[f].0 += 1;
                    taken.family[f].1 += usize::from(lock);
                }
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
                let int_lane = matches!(
                    chosen,
                    Lane::Int | Lane::Exchange | Lane::Bits | Lane::Cond | Lane::Unary
                );
                if int_lane && !foreign {
                    let mut full = Machine::new(&regs, &ram, &mmio);
                    let taken_by_full = full.full_fast::<ADDR>(mode, gpa, &bytes).is_some();
                    assert!(!taken_by_full, "{what}: the full fast path took it");
                }
            }
        }
    }
    taken
}

#[test]
fn integer_lane_is_the_general_path_in_every_mode() {
    let iterations = if cfg!(debug_assertions) {
        4_000
    } else {
        40_000
    };
    // RAM with a device hole, identity-mapped below the page tables.
    let mut rng = Rng(0x1A7E_0BAD_5EED_F00D);
    let (ram, cr3) = identity_ram(&mut rng);
    for mode in LANE_MODES {
        let taken =
            by_address_size!(mode, A => compare::<A>(&mut rng, mode, &ram, cr3, iterations));
        let Taken {
            all,
            locked,
            unary,
            family,
            own,
        } = taken;
        assert!(
            own > iterations / 20,
            "{mode:?}: {own} by a family's own entry"
        );
        assert!(all > iterations / 5, "{mode:?}: the lane took {all}");
        assert!(locked > iterations / 50, "{mode:?}: {locked} locked");
        assert!(
            unary > iterations / 100,
            "{mode:?}: {unary} plain INC/DEC/NOT/NEG"
        );
        for (name, (all, locked)) in FAMILIES.iter().zip(family) {
            assert!(all > iterations / 100, "{mode:?}: {all} {name}");
            // (SETcc/CMOVcc do not take LOCK.)
            if *name != "SETcc/CMOVcc" {
                assert!(
                    locked > iterations / 1000,
                    "{mode:?}: {locked} locked {name}"
                );
            }
        }
    }
}

/// A state of `mode` with flat segments, no alignment checking and RBX
/// (the operand's base) at `address`.
fn plain_state(mode: CpuMode, cr3: u64, address: u64) -> Registers {
    let mut regs = mode_registers(mode, cr3);
    for (n, g) in regs.gprs.iter_mut().enumerate() {
        *g = 0x0123_4567_89AB_CDEF_u64.rotate_left(8 * n as u32);
    }
    // A small register bit offset (BT* r: CX, R9 with REX.R), and ZF set (SETE, CMOVE).
    regs.gprs[Gpr::Rcx as usize] = 13;
    regs.gprs[Gpr::R9 as usize] = 13;
    regs.gprs[Gpr::Rbx as usize] = address;
    regs.rflags = 2 | (1 << 6) | (1 << 16);
    regs.rip = 0x10000;
    regs
}

/// The lane's own BT*, XCHG/XADD/CMPXCHG and SETcc/CMOVcc paths in every
/// mode, at every operand size, locked and not, on RAM and on a device:
/// taken with the general path's result where the operand is within a
/// page at the exit GPA, declined with nothing done where it crosses a
/// page or the exit GPA's page offset differs, and declined for LOCK on
/// BT, SETcc and CMOVcc.
#[test]
fn integer_lane_paths_take_every_size_and_decline_crossings() {
    let (ram, cr3) = directed_ram(0x5EED_0B17_C0DE_0013);
    // (opcode bytes after the prefixes, ModRM.reg, takes LOCK, a byte
    // operand)
    let forms: &[(&[u8], u8, bool, bool)] = &[
        (&[0x0F, 0xA3], 1, false, false), // BT r/m, CX
        (&[0x0F, 0xAB], 1, true, false),  // BTS r/m, CX
        (&[0x0F, 0xB3], 1, true, false),  // BTR r/m, CX
        (&[0x0F, 0xBB], 1, true, false),  // BTC r/m, CX
        (&[0x0F, 0xBA], 4, false, false), // BT r/m, imm8
        (&[0x0F, 0xBA], 5, true, false),  // BTS r/m, imm8
        (&[0x0F, 0xBA], 6, true, false),  // BTR r/m, imm8
        (&[0x0F, 0xBA], 7, true, false),  // BTC r/m, imm8
        (&[0x86], 2, true, true),         // XCHG r/m8, DL
        (&[0x86], 6, true, true),         // XCHG r/m8, DH (SIL with REX)
        (&[0x87], 2, true, false),        // XCHG r/m, DX
        (&[0x0F, 0xC0], 5, true, true),   // XADD r/m8, CH
        (&[0x0F, 0xC1], 2, true, false),  // XADD r/m, DX
        (&[0x0F, 0xB0], 2, true, true),   // CMPXCHG r/m8, DL
        (&[0x0F, 0xB1], 2, true, false),  // CMPXCHG r/m, DX
        (&[0x0F, 0x94], 0, false, true),  // SETE
        (&[0x0F, 0x95], 3, false, true),  // SETNE (ModRM.reg ignored)
        (&[0x0F, 0x44], 2, false, false), // CMOVE DX, r/m
        (&[0x0F, 0x45], 6, false, false), // CMOVNE SI, r/m
    ];
    let mut taken = 0;
    for mode in LANE_MODES {
        let long = mode.is_64bit();
        let rm = base_rm(mode);
        for &(opcode, reg, lockable, byte) in forms {
            for lock in [false, true] {
                for rex in [None, Some(0x40), Some(0x48), Some(0x4C)] {
                    if rex.is_some() && !long {
                        continue;
                    }
                    let mut bytes = encode(lock, rex, opcode, reg << 3 | rm);
                    if opcode == [0x0F, 0xBA] {
                        bytes.push(0x25);
                    }
                    let size: u64 = if byte {
                        1
                    } else if rex.is_some_and(|r| r & 8 != 0) {
                        8
                    } else if mode.default_size() == 2 {
                        2
                    } else {
                        4
                    };
                    for (address, gpa_xor, within) in placements(size) {
                        let regs = plain_state(mode, cr3, address);
                        let gpa = address ^ gpa_xor;
                        let what = case(mode, &bytes, gpa);
                        // CMPXCHG: the comparison succeeds at 0x4010 (the
                        // accumulator's bytes there), fails elsewhere.
                        let mut ram = ram.clone();
                        let acc = regs.gprs[Gpr::Rax as usize].to_le_bytes();
                        ram.mem[0x4010..0x4018].copy_from_slice(&acc);
                        let takes = within && (lockable || !lock);
                        let ours = directed(&regs, &ram, mode, gpa, &bytes, &what, takes, false);
                        taken += usize::from(ours.is_some());
                    }
                }
            }
        }
    }
    assert!(taken > 500, "{taken} taken");
}

/// LOCK (with `lock`), `rex`, `opcode` and `modrm`.
fn encode(lock: bool, rex: Option<u8>, opcode: &[u8], modrm: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    if lock {
        bytes.push(0xF0);
    }
    bytes.extend(rex);
    bytes.extend_from_slice(opcode);
    bytes.push(modrm);
    bytes
}

/// Where the directed tests put an operand of `size` bytes: (address,
/// exit GPA xor, within a page): within a page in RAM and on the device,
/// crossing a page (RAM; RAM to device), and a mismatching exit GPA (a
/// byte crosses nothing: its crossings are left out).
fn placements(size: u64) -> impl Iterator<Item = (u64, u64, bool)> {
    [
        (0x4010, 0, true),
        (0x1FF0 - size, 0, true),
        (0x5000 - size + 1, 0, false),
        (0x1000 - size / 2, 0, false),
        (0x4020, 0x10, false),
    ]
    .into_iter()
    .filter(move |&(_, gpa_xor, within)| !(size == 1 && !within && gpa_xor == 0))
}

/// The ModRM.rm of the directed tests' operand `[rBX]` in `mode`: `[BX]`
/// (7) in 16-bit addressing, `[EBX]`/`[RBX]` (3) otherwise.
fn base_rm(mode: CpuMode) -> u8 {
    if mode.default_address_size() == 2 {
        7
    } else {
        3
    }
}

/// RAM with a device hole at 0x1000-0x3000 and random bytes from `seed`,
/// identity mapped below the page tables (the directed tests' machine).
fn directed_ram(seed: u64) -> (TestRam, u64) {
    identity_ram(&mut Rng(seed))
}

/// Runs the lane on a directed case: `bytes` in `mode` on `regs` and
/// `ram` (with the device at 0x1000-0x2FFF), the exit at `gpa`. Where the
/// lane must take the case (`takes`) it does, with the general path's
/// result, registers, RAM, device log and compare-and-write log, and the
/// result is `Done`, or with `resumes` `Resume` with no register changed;
/// returns the lane's machine then. Otherwise the lane declines with
/// nothing done.
#[allow(clippy::too_many_arguments)]
fn directed(
    regs: &Registers,
    ram: &TestRam,
    mode: CpuMode,
    gpa: u64,
    bytes: &[u8],
    what: &str,
    takes: bool,
    resumes: bool,
) -> Option<Machine> {
    let mmio = RecordingMmio::default();
    let mut ours = Machine::new(regs, ram, &mmio);
    let got = by_address_size!(mode, A => lane_run::<A>(&mut ours, mode, gpa, bytes));
    if !takes {
        assert!(got.is_none(), "{what}: taken");
        ours.assert_untouched(regs, what);
        return None;
    }
    let result = got.unwrap_or_else(|| panic!("{what}: declined"));
    let mut general = Machine::new(regs, ram, &mmio);
    assert_eq!(result, general.general(gpa, bytes), "{what}");
    ours.assert_same(&general, what);
    if resumes {
        assert_eq!(result, Ok(Outcome::Resume), "{what}");
        assert_eq!(&ours.regs, regs, "{what}: nothing changes");
    } else {
        assert_eq!(result, Ok(Outcome::Done), "{what}");
    }
    Some(ours)
}

/// CMPXCHG8B/16B (`lane_int/wide.rs`) in every mode, both widths (16 bytes
/// with REX.W in 64-bit mode), locked and not, on RAM and on a device, the
/// comparison succeeding and failing, with no, one and every
/// compare-and-write lost: taken with the general path's result, registers,
/// memory, device log and compare-and-write log where the operand is
/// within a page at the exit GPA (and CMPXCHG16B aligned); declined with
/// nothing done for a register operand (LOCK or not: `#UD`), the group's
/// other members (0F C7 /0, /6, /7), a misaligned CMPXCHG16B (`#GP`), a page
/// crossing and a mismatching exit GPA.
#[test]
fn integer_lane_wide_compare_exchange_in_every_mode() {
    let (ram, cr3) = directed_ram(0x5EED_0B17_C0DE_0816);
    let (mut taken, mut locked, mut wide, mut resumed, mut failed) = (0, 0, 0, 0, 0);
    for mode in LANE_MODES {
        let long = mode.is_64bit();
        let rm = base_rm(mode);
        for lock in [false, true] {
            for rex in [None, Some(0x40), Some(0x48), Some(0x4C), Some(0x44)] {
                if rex.is_some() && !long {
                    continue;
                }
                let width: u64 = if rex.is_some_and(|r| r & 8 != 0) {
                    16
                } else {
                    8
                };
                for (md, reg) in [(0, 1), (3, 1), (0, 0), (0, 6), (0, 7)] {
                    let bytes = encode(lock, rex, &[0x0F, 0xC7], md << 6 | reg << 3 | rm);
                    let ours_form = md == 0 && reg == 1;
                    let form = Directed {
                        mode,
                        bytes: &bytes,
                        lock,
                        lanes: ours_form,
                    };
                    // (address, exit GPA xor, taken): RAM and the device
                    // within a page, 8- but not 16-byte aligned, crossing
                    // a page (RAM, RAM to device), a mismatching exit GPA.
                    for (address, gpa_xor, within) in [
                        (0x4010, 0, true),
                        (0x1FF0, 0, true),
                        (0x2FF0, 0, true),
                        (0x4028, 0, width == 8),
                        (0x1008, 0, width == 8),
                        (0x5000 - width / 2, 0, false),
                        (0x1000 - 4, 0, false),
                        (0x4020, 0x10, false),
                    ] {
                        for succeed in [true, false] {
                            let mut regs = plain_state(mode, cr3, address);
                            if succeed {
                                let mem = memory_at(&ram, address, 16);
                                let half = (width / 2) as usize;
                                regs.gprs[Gpr::Rax as usize] = le(&mem[..half]);
                                regs.gprs[Gpr::Rdx as usize] = le(&mem[half..2 * half]);
                            }
                            let extra = std::format!(" succeed {succeed}");
                            let at = (address, gpa_xor, within);
                            form.races(&regs, &ram, at, &extra, |resumes, ours, what| {
                                if resumes {
                                    resumed += 1;
                                } else {
                                    let zf = ours.regs.rflags & (1 << 6) != 0;
                                    assert_eq!(zf, succeed, "{what}: ZF");
                                    failed += usize::from(!succeed);
                                }
                                taken += 1;
                                locked += usize::from(lock);
                                wide += usize::from(width == 16);
                            });
                        }
                    }
                }
            }
        }
    }
    assert!(
        taken > 300 && locked > 150 && wide > 50 && resumed > 10 && failed > 100,
        "{taken} taken, {locked} locked, {wide} 16-byte, {resumed} resumed, {failed} failed"
    );
}

/// A form of the LOCK and CMPXCHG8B/16B directed tests.
struct Directed<'a> {
    mode: CpuMode,
    bytes: &'a [u8],
    /// A LOCK prefix.
    lock: bool,
    /// Whether the lane must take the form (where the operand is within a
    /// page at the exit GPA).
    lanes: bool,
}

impl Directed<'_> {
    /// [`directed`] on the form with the operand at `address` (linear and
    /// guest-physical: identity paging), the exit GPA `address ^ gpa_xor`,
    /// `within` a page or not, and no, one and every compare-and-write
    /// lost (`ram` with [`TestRam::cas_mismatches`] 0, 1 and 100; with
    /// every one lost, a locked form on RAM, not the device at
    /// 0x1000-0x2FFF, resumes), each case named by [`case`], `extra` and
    /// the mismatches. Calls `taken` with whether it resumed, the lane's
    /// machine and the name for each case the lane takes.
    fn races(
        &self,
        regs: &Registers,
        ram: &TestRam,
        (address, gpa_xor, within): (u64, u64, bool),
        extra: &str,
        mut taken: impl FnMut(bool, &Machine, &str),
    ) {
        let gpa = address ^ gpa_xor;
        for mismatches in [0, 1, 100] {
            let what = std::format!(
                "{}{extra} mismatches {mismatches}",
                case(self.mode, self.bytes, gpa)
            );
            let mut ram = ram.clone();
            ram.cas_mismatches = mismatches;
            let on_ram = !(0x1000..0x3000).contains(&address);
            let resumes = self.lock && on_ram && mismatches == 100;
            let takes = self.lanes && within;
            let ours = directed(
                regs, &ram, self.mode, gpa, self.bytes, &what, takes, resumes,
            );
            if let Some(ours) = ours {
                taken(resumes, &ours, &what);
            }
        }
    }
}

/// Which prefix a form of [`integer_lane_locked_forms_and_moves_in_every_mode`]
/// must have to be the lane's.
#[derive(Clone, Copy, PartialEq)]
enum Needs {
    /// LOCK (`locked.rs`; without it the ALU forms are the ALU lane's).
    Lock,
    /// Either (INC/DEC/NOT/NEG: `locked.rs` with LOCK, `unary.rs` without).
    Either,
    /// No LOCK (`moves.rs`: LOCK is `#UD`).
    NoLock,
    /// Never the lane's (CMP, TEST: LOCK is `#UD`).
    Never,
}

/// The lane's LOCK read-modify-writes (`lane_int/locked.rs`: ALU r/m, reg
/// and r/m, imm, INC/DEC/NOT/NEG) and MOVSXD/MOVNTI (`moves.rs`) in every
/// mode, at every operand size, locked and not, on RAM and on a device,
/// with no, one and every compare-and-write lost: taken with the general
/// path's result, registers, memory, device log and compare-and-write log
/// where the operand is within a page at the exit GPA; declined with
/// nothing done for a page crossing, a mismatching exit GPA, a register
/// operand, LOCK on MOVSXD, MOVNTI, CMP and TEST, and MOVSXD's opcode (ARPL)
/// outside 64-bit mode.
#[test]
fn integer_lane_locked_forms_and_moves_in_every_mode() {
    let (ram, cr3) = directed_ram(0x5EED_0B17_C0DE_10C4);
    // (opcode bytes after the prefixes, ModRM.reg, immediate bytes (4:
    // imm16/32 by operand size), a byte operand, what it needs)
    let forms: &[(&[u8], u8, u8, bool, Needs)] = &[
        (&[0x00], 2, 0, true, Needs::Lock),          // ADD r/m8, DL
        (&[0x01], 2, 0, false, Needs::Lock),         // ADD r/m, DX
        (&[0x09], 6, 0, false, Needs::Lock),         // OR r/m, SI
        (&[0x11], 1, 0, false, Needs::Lock),         // ADC
        (&[0x19], 2, 0, false, Needs::Lock),         // SBB
        (&[0x20], 6, 0, true, Needs::Lock),          // AND r/m8, DH (SIL with REX)
        (&[0x29], 2, 0, false, Needs::Lock),         // SUB
        (&[0x31], 2, 0, false, Needs::Lock),         // XOR
        (&[0x39], 2, 0, false, Needs::Never),        // CMP
        (&[0x80], 0, 1, true, Needs::Lock),          // ADD r/m8, imm8
        (&[0x81], 1, 4, false, Needs::Lock),         // OR r/m, imm
        (&[0x83], 2, 1, false, Needs::Lock),         // ADC r/m, imm8
        (&[0x83], 5, 1, false, Needs::Lock),         // SUB r/m, imm8
        (&[0x81], 6, 4, false, Needs::Lock),         // XOR r/m, imm
        (&[0x80], 7, 1, true, Needs::Never),         // CMP r/m8, imm8
        (&[0xFE], 0, 0, true, Needs::Either),        // INC r/m8
        (&[0xFF], 1, 0, false, Needs::Either),       // DEC r/m
        (&[0xF6], 2, 0, true, Needs::Either),        // NOT r/m8
        (&[0xF7], 3, 0, false, Needs::Either),       // NEG r/m
        (&[0xF7], 0, 4, false, Needs::Never),        // TEST r/m, imm
        (&[0xFF], 2, 0, false, Needs::Never),        // CALL r/m (not the lane's)
        (&[0x63], 2, 0, false, Needs::NoLock),       // MOVSXD DX, r/m32
        (&[0x0F, 0xC3], 2, 0, false, Needs::NoLock), // MOVNTI r/m, DX
    ];
    let (mut taken, mut locked, mut resumed, mut moves) = (0, 0, 0, 0);
    for mode in LANE_MODES {
        let long = mode.is_64bit();
        let rm = base_rm(mode);
        for &(opcode, reg, imm, byte, needs) in forms {
            let is_move = needs == Needs::NoLock;
            for lock in [false, true] {
                for rex in [None, Some(0x40), Some(0x48), Some(0x4C)] {
                    if rex.is_some() && !long {
                        continue;
                    }
                    for md in [0, 3] {
                        let rex_w = rex.is_some_and(|r| r & 8 != 0);
                        let size: u64 = if byte {
                            1
                        } else if rex_w {
                            8
                        } else if mode.default_size() == 2 && !is_move {
                            2
                        } else {
                            4
                        };
                        let mut bytes = encode(lock, rex, opcode, md << 6 | reg << 3 | rm);
                        let imm_len = if imm == 4 && size == 2 { 2 } else { imm };
                        bytes.extend_from_slice(&[0x85, 0x3C, 0x00, 0x80][..usize::from(imm_len)]);
                        let lanes = match needs {
                            Needs::Lock => lock,
                            Needs::Either => true,
                            Needs::NoLock => !lock && (long || opcode != [0x63]),
                            Needs::Never => false,
                        } && md == 0;
                        // MOVSXD reads 4 bytes whatever the operand size.
                        let access = if opcode == [0x63] { 4 } else { size };
                        let form = Directed {
                            mode,
                            bytes: &bytes,
                            lock,
                            lanes,
                        };
                        for at in placements(access) {
                            let regs = plain_state(mode, cr3, at.0);
                            form.races(&regs, &ram, at, "", |resumes, _, _| {
                                resumed += usize::from(resumes);
                                taken += 1;
                                locked += usize::from(lock);
                                moves += usize::from(is_move);
                            });
                        }
                    }
                }
            }
        }
    }
    assert!(
        taken > 500 && locked > 400 && resumed > 100 && moves > 40,
        "{taken} taken, {locked} locked, {resumed} resumed, {moves} moves"
    );
}
