//! The fast path's SSE, string and stack forms against the general decoder
//! and executor, on random instructions of those shapes (and near misses)
//! with random registers, flags, segments, XMM registers, paging (with an
//! alias of a device page, a not-present and a read-only page) and bus
//! failures: same outcome, registers, RAM and device log.

use std::vec::Vec;

use super::super::lane_harness::{
    Machine, SegmentDraw, case as name, linear_address, mode_registers, operand_offset,
    push_modrm_and_tail, random_mod, random_rip, random_segments,
};
use crate::decode::{Operand, decode};
use crate::mode::CpuMode;
use crate::testutil::bits::{CR0_PG, RFLAGS_AC, RFLAGS_DF};
use crate::testutil::{Layout, MODES, PageTables, RecordingMmio, Rng, TestRam, pte};
use crate::translate::translate_query;
use crate::{FetchCache, Registers};

/// Which family a case belongs to (for the coverage counts).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Sse,
    String,
    Stack,
}

const SSE: &[u8] = &[
    0x10, 0x11, 0x28, 0x29, 0x2B, 0x6E, 0x6F, 0x7E, 0x7F, 0xD6, 0xE7,
    // Near misses: MOVLPS, PMOVMSKB, CVTPI2PS.
    0x12, 0xD7, 0x2A,
];

fn random_instruction(rng: &mut Rng, long: bool) -> (Vec<u8>, Family) {
    let mut v = Vec::new();
    for _ in 0..rng.below(4) {
        let p = rng.pick(&[
            0x66, 0x66, 0x67, 0xF2, 0xF3, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0,
        ]);
        if p == 0xF0 && rng.below(4) != 0 {
            continue;
        }
        v.push(p);
        if long && rng.below(8) == 0 {
            // A REX followed by a legacy prefix: ignored.
            v.push(0x40 | rng.below(16) as u8);
        }
    }
    if long && rng.below(3) == 0 {
        v.push(0x40 | rng.below(16) as u8);
    }
    let family = rng.pick(&[Family::Sse, Family::String, Family::Stack]);
    match family {
        Family::Sse => {
            v.push(0x0F);
            v.push(rng.pick(SSE));
        }
        Family::String => v.push(0xA4 + rng.below(12) as u8),
        Family::Stack => v.push(rng.pick(&[0xFF, 0xFF, 0x8F, 0x8F, 0xFE])),
    }
    // ModRM (strings have none; the random bytes that follow are another
    // instruction's).
    let md = random_mod(rng);
    let reg = match family {
        Family::Stack if rng.below(4) != 0 => {
            if v.last() == Some(&0xFF) {
                6
            } else {
                0
            }
        }
        _ => rng.below(8) as u8,
    };
    push_modrm_and_tail(rng, &mut v, md, reg, 4);
    (v, family)
}

/// The linear addresses of the decoded memory operands (segment checks
/// left out: base + offset), for choosing the exit GPA.
fn operand_linears(bytes: &[u8], regs: &Registers, mode: CpuMode) -> Vec<u64> {
    let Ok(insn) = decode(bytes, mode) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for o in insn.operands.iter() {
        let Operand::Mem(m) = o else { continue };
        let offset = operand_offset(&insn, m, regs);
        out.push(linear_address(regs, mode, m.segment, offset));
    }
    out
}

/// A register value that lands near the interesting places: the device
/// pages (0x1000-0x2FFF), page edges, the paging test pages (0x8000-0xAFFF),
/// the wrap of 16- and 32-bit addresses, anywhere.
fn random_value(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 => rng.below(0x400),
        1 => 0x1000 + rng.below(0x2000),
        2 => rng.next(),
        3 => 0x8000 + rng.below(0x3000),
        4 => 0xFFF0 + rng.below(0x20),
        5 => (rng.next() & !0xFFFF) | 0xFFF8 | rng.below(8),
        6 => 0xFFFF_FFF0 + rng.below(0x20),
        _ => 0x1FF8 + rng.below(0x10),
    }
}

fn random_state(rng: &mut Rng, mode: CpuMode, cr3_4: u64, cr3_2: u64) -> Registers {
    let paged32 = mode == CpuMode::Protected32 && rng.below(2) == 0;
    // (Virtual-8086 mode: RFLAGS.VM is set again with the random flags
    // below.)
    let mut regs = mode_registers(mode, cr3_4);
    if paged32 {
        regs.cr0 |= CR0_PG;
        regs.cr3 = cr3_2;
    }
    random_segments(rng, mode, &mut regs, &SegmentDraw::data_segments(true, 12));
    random_rip(rng, mode, &mut regs, 0x10000);
    for g in regs.gprs.iter_mut() {
        *g = random_value(rng);
    }
    if rng.below(2) == 0 {
        // The stack in RAM.
        regs.gprs[4] = 0x4000 + rng.below(0x2000);
    }
    regs.rflags = 2 | (rng.next() & 0x8D5) | if rng.below(8) == 0 { 1 << 16 } else { 0 };
    if rng.below(2) == 0 {
        regs.rflags |= RFLAGS_DF;
    }
    if mode == CpuMode::Virtual8086 {
        regs.rflags |= 1 << 17;
    }
    if rng.below(8) == 0 {
        regs.rflags |= RFLAGS_AC;
        regs.cr0 |= 1 << 18; // CR0.AM: with AC and CPL 3, #AC
        regs = regs.at_cpl(3);
    }
    if rng.below(8) != 0 {
        let mut xmm = [0u128; 16];
        for x in xmm.iter_mut() {
            *x = u128::from(rng.next()) << 64 | u128::from(rng.next());
        }
        regs.xmm = Some(xmm);
    }
    regs
}

/// RAM with the device at 0x1000-0x2FFF, 4-level tables at 0x20000 and
/// 32-bit tables at 0x30000 that identity-map the first 0x20 pages except:
/// page 8 maps the device page 0x2000, page 9 is not present, page 10 is
/// read-only.
fn machine() -> (TestRam, u64, u64) {
    let mut ram = TestRam::new(0x40000).hole(0x1000, 0x3000);
    for (i, b) in ram.mem.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ 0x3C;
    }
    let mut pt4 = PageTables::new(Layout::Level4, 0x20000);
    let mut pt2 = PageTables::new(Layout::Bits32, 0x30000);
    for page in 0..0x20u64 {
        let (gpa, flags) = match page {
            8 => (0x2000, pte::PWU),
            9 => continue,
            10 => (page * 4096, pte::P | pte::US),
            _ => (page * 4096, pte::PWU),
        };
        pt4.map(&mut ram, page * 4096, gpa, 1, flags);
        pt2.map(&mut ram, page * 4096, gpa, 1, flags);
    }
    (ram, pt4.cr3(), pt2.cr3())
}

/// Random cases per mode (fewer in unoptimised builds, which CI runs too).
const CASES: u32 = if cfg!(debug_assertions) {
    12_000
} else {
    40_000
};

#[test]
fn sse_string_and_stack_fast_forms_match_the_general_path() {
    let (ram, cr3_4, cr3_2) = machine();
    let mut rng = Rng(0x0F0E_0D0C_0B0A_0908);
    for mode in MODES {
        // Handled by the fast path: per family, and strings with DF = 1
        // and with a 67 prefix.
        let mut handled = [0u32; 3];
        let (mut backwards, mut other_asz, mut errors) = (0u32, 0u32, 0u32);
        // Every other case runs with a cache kept across those cases, one
        // per path, on RAM kept across them too (so that the entries'
        // accessed/dirty bits, set by earlier walks, let the cached
        // translations serve): both paths must make the same
        // translations, hits and walks alike.
        let (mut kept_fast, mut kept_general) = (FetchCache::new(), FetchCache::new());
        let mut kept_ram = ram.clone();
        for case in 0..CASES {
            let (bytes, family) = random_instruction(&mut rng, mode.is_64bit());
            let regs = random_state(&mut rng, mode, cr3_4, cr3_2);
            assert_eq!(CpuMode::of(&regs), mode);
            let linears = operand_linears(&bytes, &regs, mode);
            let Some(&linear) = linears.get(rng.below(linears.len().max(1) as u64) as usize) else {
                continue;
            };
            let mut gpa = translate_query(&regs, &mut ram.clone(), linear)
                .map(|t| t.gpa)
                .unwrap_or(linear & 0xF_FFFF);
            if rng.below(32) == 0 {
                gpa ^= 8;
            }
            let kept = case % 2 == 1;
            let (mut ram0, mut mmio0) = (
                if kept { kept_ram.clone() } else { ram.clone() },
                RecordingMmio::default(),
            );
            match rng.below(8) {
                0 => ram0.fail_at = Some(rng.below(6) as usize),
                1 => mmio0.fail_at = Some(rng.below(2) as usize),
                _ => {}
            }
            let what = name(mode, &bytes, gpa);
            let mut with_fast = Machine::new(&regs, &ram0, &mmio0);
            let mut general = Machine::new(&regs, &ram0, &mmio0);
            let (mut fresh_fast, mut fresh_general) = (FetchCache::new(), FetchCache::new());
            let (cache_fast, cache_general) = if kept {
                (&mut kept_fast, &mut kept_general)
            } else {
                (&mut fresh_fast, &mut fresh_general)
            };
            let fast = with_fast.assist_cached(gpa, &bytes, true, cache_fast);
            let general_result = general.assist_cached(gpa, &bytes, false, cache_general);
            assert_eq!(
                (cache_fast.data_hits(), cache_fast.data_misses()),
                (cache_general.data_hits(), cache_general.data_misses()),
                "{what}: data translations"
            );
            assert_eq!(
                fast,
                general_result,
                "{what} rbx {:#x} rsp {:#x} fs {:#x} ram fail {:?} mmio fail {:?} {:?}",
                regs.gprs[3],
                regs.gprs[4],
                regs.segments[4].base,
                ram0.fail_at,
                mmio0.fail_at,
                general.mmio.log
            );
            with_fast.assert_same(&general, &what);
            if kept {
                kept_ram.mem = with_fast.ram.mem.clone();
            }
            if fast.is_err() {
                assert_eq!(
                    with_fast.regs, regs,
                    "{what}: a failed emulation changed registers"
                );
            }
            let (mut r3, mut ram3, mut m3) = (regs.clone(), ram0.clone(), mmio0.clone());
            if let Some(result) = super::try_exec(
                &mut r3,
                mode,
                &mut ram3,
                &mut crate::FetchCache::new(),
                &mut m3,
                gpa,
                &bytes,
            ) {
                handled[family as usize] += 1;
                if result.is_err() {
                    errors += 1;
                }
                if family == Family::String {
                    if regs.rflags & RFLAGS_DF != 0 {
                        backwards += 1;
                    }
                    if bytes.contains(&0x67) {
                        other_asz += 1;
                    }
                }
            }
        }
        for (family, n) in ["SSE", "string", "stack"].iter().zip(handled) {
            assert!(
                n > CASES / 80,
                "{mode:?}: the fast path handled only {n} {family} cases"
            );
        }
        assert!(
            backwards > CASES / 200 && other_asz > CASES / 400,
            "{mode:?}: {backwards} {other_asz}"
        );
        assert!(
            errors > CASES / 800,
            "{mode:?}: only {errors} failures through the fast path"
        );
        if mode.is_64bit()
            || matches!(
                mode,
                CpuMode::Compat32 | CpuMode::Compat16 | CpuMode::Protected32
            )
        {
            // Paged (Protected32: half the cases): the kept caches served
            // translations from their entries, re-validated.
            assert!(
                kept_fast.data_hits() > u64::from(CASES / 400),
                "{mode:?}: only {} cached data translations used",
                kept_fast.data_hits()
            );
        }
    }
}
