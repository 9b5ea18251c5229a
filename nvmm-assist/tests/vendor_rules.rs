//! The vendor table of `nvmm_assist::vendor`: each row, run under
//! `Vendor::Intel` and under `Vendor::Amd`. Where the vendors agree the
//! same expectation is asserted for both; where they differ each vendor's
//! result is asserted. The expected values are the measured CPU results the
//! table cites, not the implementation's output: the AMD results were
//! measured on this project's AMD EPYC CI host (and two of them are the
//! cases of the issue that found the difference), the Intel ones on the
//! previous, Intel, development host.

use crate::support;
use crate::support::dyn_assist::assist_io;

use nvmm_assist::{
    AccessType, CpuMode, Error, Exception, Gpr, IoExit, Outcome, Registers, Segment, Vendor,
    linear_address,
};
use support::memdev::{Guest, MMIO};
use support::*;

const VENDORS: [Vendor; 2] = [Vendor::Intel, Vendor::Amd];

const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const DF: u64 = 1 << 10;
const OF: u64 = 1 << 11;

fn long64(vendor: Vendor) -> Guest {
    let mut g = Guest::long64();
    g.regs.vendor = vendor;
    g
}

fn get(g: &Guest, r: Gpr) -> u64 {
    g.regs.gprs[r as usize]
}

// ---- REP string instruction, zero count, a32, 64-bit mode ----------------

/// One zero-count case: bytes, RCX/RSI/RDI before, and which of RSI/RDI an
/// Intel CPU writes as 32-bit registers (MOVS both, STOS RDI, others none).
struct ZeroCount {
    bytes: &'static [u8],
    rcx: u64,
    rsi: u64,
    rdi: u64,
    intel_writes_rsi: bool,
    intel_writes_rdi: bool,
}

/// Every string instruction, each operand size, REP/REPE/REPNE, DF 0 and
/// 1 (set by the caller), with upper halves set in RCX, RSI and RDI; the
/// first two are the AMD cases reported in the issue (host oracle seed
/// a11ce5eed000001 and the `host_oracle` fuzz target).
fn zero_count_cases() -> Vec<ZeroCount> {
    let hi = 0x55EF_B08E_0000_0000u64;
    let case = |bytes, w_rsi, w_rdi| ZeroCount {
        bytes,
        rcx: hi,
        rsi: hi | 0x1000,
        rdi: 0xA1B2_C3D4_0000_1800,
        intel_writes_rsi: w_rsi,
        intel_writes_rdi: w_rdi,
    };
    vec![
        // From the issue: rep lodsq, a32, RCX 0xf7beb5ab00000000.
        ZeroCount {
            bytes: &[0x67, 0xF3, 0x48, 0xAD],
            rcx: 0xF7BE_B5AB_0000_0000,
            rsi: 0x1234_5678_0000_1000,
            rdi: 0x9ABC_DEF0_0000_1800,
            intel_writes_rsi: false,
            intel_writes_rdi: false,
        },
        // From the issue: repne cmpsb with six 0x67 and two 0xF2 prefixes,
        // RCX 0x9d38c99700000000.
        ZeroCount {
            bytes: &[0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0xF2, 0xF2, 0xA6],
            rcx: 0x9D38_C997_0000_0000,
            rsi: 0x0102_0304_0000_1000,
            rdi: 0x0506_0708_0000_1800,
            intel_writes_rsi: false,
            intel_writes_rdi: false,
        },
        case(&[0x67, 0xF3, 0xA4], true, true), // rep movsb
        case(&[0x67, 0x66, 0xF3, 0xA5], true, true), // rep movsw
        case(&[0x67, 0xF3, 0xA5], true, true), // rep movsd
        case(&[0x67, 0xF2, 0x48, 0xA5], true, true), // repne movsq
        case(&[0x67, 0xF3, 0xAA], false, true), // rep stosb
        case(&[0x66, 0x67, 0xF3, 0xAB], false, true), // rep stosw
        case(&[0x67, 0xF2, 0x48, 0xAB], false, true), // repne stosq
        case(&[0x67, 0xF3, 0xAC], false, false), // rep lodsb
        case(&[0x67, 0xF3, 0xAD], false, false), // rep lodsd
        case(&[0x67, 0xF3, 0xA6], false, false), // repe cmpsb
        case(&[0x67, 0xF2, 0x48, 0xA7], false, false), // repne cmpsq
        case(&[0x67, 0xF2, 0xAE], false, false), // repne scasb
        case(&[0x67, 0xF3, 0x66, 0xAF], false, false), // repe scasw
    ]
}

fn run_zero_count(vendor: Vendor, c: &ZeroCount, df: bool) -> Guest {
    let mut g = long64(vendor);
    g.regs.gprs[Gpr::Rcx as usize] = c.rcx;
    g.regs.gprs[Gpr::Rsi as usize] = c.rsi;
    g.regs.gprs[Gpr::Rdi as usize] = c.rdi;
    g.regs.rflags |= if df { DF } else { 0 };
    let rflags = g.regs.rflags;
    g.step(c.bytes, MMIO);
    assert_eq!(g.mmio.total_accesses(), 0, "{:02x?}: no access", c.bytes);
    assert_eq!(g.regs.rflags, rflags, "{:02x?}: flags untouched", c.bytes);
    g
}

#[test]
fn rep_zero_count_a32_intel_writes_the_32_bit_registers() {
    for c in zero_count_cases() {
        for df in [false, true] {
            let g = run_zero_count(Vendor::Intel, &c, df);
            let low = |v: u64, written: bool| if written { v & 0xFFFF_FFFF } else { v };
            assert_eq!(get(&g, Gpr::Rcx), 0, "{:02x?} rcx", c.bytes);
            assert_eq!(
                get(&g, Gpr::Rsi),
                low(c.rsi, c.intel_writes_rsi),
                "{:02x?} rsi",
                c.bytes
            );
            assert_eq!(
                get(&g, Gpr::Rdi),
                low(c.rdi, c.intel_writes_rdi),
                "{:02x?} rdi",
                c.bytes
            );
        }
    }
}

#[test]
fn rep_zero_count_a32_amd_writes_nothing() {
    for c in zero_count_cases() {
        for df in [false, true] {
            let g = run_zero_count(Vendor::Amd, &c, df);
            assert_eq!(get(&g, Gpr::Rcx), c.rcx, "{:02x?} rcx", c.bytes);
            assert_eq!(get(&g, Gpr::Rsi), c.rsi, "{:02x?} rsi", c.bytes);
            assert_eq!(get(&g, Gpr::Rdi), c.rdi, "{:02x?} rdi", c.bytes);
        }
    }
}

/// The rule is about a 32-bit address size in 64-bit mode only: with a
/// 64-bit address size, or a non-zero count, both vendors agree.
#[test]
fn rep_outside_the_zero_count_a32_case_is_the_same_on_both() {
    for vendor in VENDORS {
        // 64-bit address size, RCX = 0: nothing written.
        let mut g = long64(vendor);
        g.regs.gprs[Gpr::Rcx as usize] = 0;
        g.regs.gprs[Gpr::Rdi as usize] = 0xBEEF_0000_0000_1000;
        g.step(&[0xF3, 0xAA], MMIO);
        assert_eq!(get(&g, Gpr::Rdi), 0xBEEF_0000_0000_1000, "{vendor}");
        // a32 with ECX = 2: two elements, the registers written as 32-bit.
        let mut g = long64(vendor);
        g.regs.gprs[Gpr::Rcx as usize] = 0x7777_0000_0000_0002;
        g.regs.gprs[Gpr::Rdi as usize] = 0xBEEF_0000_0000_1000;
        g.step(&[0x67, 0xF3, 0xAA], MMIO);
        assert_eq!(get(&g, Gpr::Rcx), 0, "{vendor}");
        assert_eq!(get(&g, Gpr::Rdi), 0x1002, "{vendor}");
        assert_eq!(g.mmio.total_accesses(), 2, "{vendor}");
    }
}

/// REP INS/OUTS with ECX = 0 and a 32-bit address size in 64-bit mode:
/// nothing is written but RIP. AMD: measured through KVM on this project's
/// AMD host (tests/oracle_kvm.rs, `zero_count_rep_ins_outs_a32_match_this_cpu`).
/// Intel: NOT measured; this pins the assist's current choice (the same as
/// AMD), which the vendor table lists as an open question.
#[test]
fn rep_ins_outs_zero_count_a32_writes_nothing_but_rip() {
    for vendor in VENDORS {
        for input in [true, false] {
            let mut ram = TestRam::new(0x1_0000);
            let mut regs = Registers::long_mode(TEST_VENDOR, PT_ROOT_UNUSED, 0, 0);
            regs.vendor = vendor;
            regs.gprs[Gpr::Rcx as usize] = 0x9D38_C997_0000_0000;
            regs.gprs[Gpr::Rsi as usize] = 0x0102_0304_0000_2000;
            regs.gprs[Gpr::Rdi as usize] = 0x0506_0708_0000_3000;
            regs.rip = 0x1000;
            let before = regs.clone();
            let mut ports = RecordingPorts::default();
            let mut mmio = RecordingMmio::default();
            let exit = IoExit {
                port: 0x3F8,
                input,
                operand_size: 1,
                address_size: 4,
                rep: true,
                string: true,
                segment: None,
                npc: 0x1003,
            };
            let r = assist_io(&mut regs, &mut ram, &mut mmio, &mut ports, &exit);
            assert_eq!(r, Ok(Outcome::Done), "{vendor}");
            assert!(ports.log.is_empty() && mmio.log.is_empty(), "{vendor}");
            assert_eq!(regs.rip, 0x1003, "{vendor}");
            assert_eq!(regs.gprs, before.gprs, "{vendor} input {input}");
        }
    }
}

// ---- Undefined flags -----------------------------------------------------

/// AND, OR, XOR and TEST leave AF undefined; Intel and AMD CPUs clear it.
#[test]
fn logic_instructions_clear_af_on_both() {
    for vendor in VENDORS {
        for bytes in [
            &[0x21, 0x0F][..], // and [rdi], ecx
            &[0x09, 0x0F],     // or [rdi], ecx
            &[0x31, 0x0F],     // xor [rdi], ecx
            &[0x85, 0x0F],     // test [rdi], ecx
        ] {
            let mut g = long64(vendor);
            g.mmio.low.put(MMIO, &[0x0F, 0, 0, 0]);
            g.regs.gprs[Gpr::Rdi as usize] = MMIO;
            g.regs.gprs[Gpr::Rcx as usize] = 0x3C;
            g.regs.rflags |= AF | CF | OF;
            g.step(bytes, MMIO);
            assert_eq!(
                g.regs.rflags & (AF | CF | OF),
                0,
                "{vendor} {bytes:02x?}: AF, CF and OF cleared"
            );
        }
    }
}

/// BT, BTS, BTR and BTC leave OF, SF, AF and PF undefined (ZF unchanged);
/// Intel and AMD CPUs leave all five unchanged.
#[test]
fn bit_tests_keep_the_undefined_flags_on_both() {
    for vendor in VENDORS {
        for start in [0, OF | SF | AF | PF | ZF] {
            for bytes in [
                &[0x0F, 0xA3, 0x0F][..], // bt [rdi], ecx
                &[0x0F, 0xAB, 0x0F],     // bts [rdi], ecx
                &[0x0F, 0xB3, 0x0F],     // btr [rdi], ecx
                &[0x0F, 0xBB, 0x0F],     // btc [rdi], ecx
            ] {
                let mut g = long64(vendor);
                g.mmio.low.put(MMIO, &[0x02, 0, 0, 0]);
                g.regs.gprs[Gpr::Rdi as usize] = MMIO;
                g.regs.gprs[Gpr::Rcx as usize] = 1;
                g.regs.rflags |= start;
                g.step(bytes, MMIO);
                assert_eq!(g.regs.rflags & CF, CF, "{vendor} {bytes:02x?}: CF = bit 1");
                assert_eq!(
                    g.regs.rflags & (OF | SF | AF | PF | ZF),
                    start,
                    "{vendor} {bytes:02x?}: undefined flags unchanged"
                );
            }
        }
    }
}

// ---- BT* on memory with a register bit offset ----------------------------

/// The register offset is signed and selects the operand-sized word at
/// `ea + size * floor(offset / bits)`, on Intel and AMD alike.
#[test]
fn bit_test_register_offset_addresses_beyond_the_operand_on_both() {
    for vendor in VENDORS {
        // bts dword [rdi], ecx with ECX = -1: bit 31 of the dword at rdi-4.
        let mut g = long64(vendor);
        g.regs.gprs[Gpr::Rdi as usize] = MMIO + 0x100;
        g.regs.gprs[Gpr::Rcx as usize] = 0xFFFF_FFFF;
        g.step(&[0x0F, 0xAB, 0x0F], MMIO + 0xFC);
        assert_eq!(
            g.mmio.low.u64_at(MMIO + 0xF8) >> 32,
            0x8000_0000,
            "{vendor}"
        );
        // bt qword [rdi], rcx with RCX = 130: bit 2 of the qword at rdi+16.
        let mut g = long64(vendor);
        g.mmio.low.set_u64(MMIO + 0x110, 4);
        g.regs.gprs[Gpr::Rdi as usize] = MMIO + 0x100;
        g.regs.gprs[Gpr::Rcx as usize] = 130;
        g.step(&[0x48, 0x0F, 0xA3, 0x0F], MMIO + 0x110);
        assert_eq!(g.regs.rflags & CF, CF, "{vendor}");
    }
}

// ---- CMPXCHG when the comparison fails -----------------------------------

/// A failing CMPXCHG/CMPXCHG8B writes the destination back unchanged (a
/// write access the device sees), on Intel and AMD alike.
#[test]
fn failing_cmpxchg_writes_the_old_value_back_on_both() {
    for vendor in VENDORS {
        let mut g = long64(vendor);
        g.mmio.low.put(MMIO, &[5, 0, 0, 0]);
        g.regs.gprs[Gpr::Rdi as usize] = MMIO;
        g.regs.gprs[Gpr::Rax as usize] = 1;
        g.regs.gprs[Gpr::Rcx as usize] = 7;
        g.step(&[0x0F, 0xB1, 0x0F], MMIO); // cmpxchg [rdi], ecx
        assert_eq!(get(&g, Gpr::Rax), 5, "{vendor}: EAX loaded");
        assert_eq!(g.regs.rflags & ZF, 0, "{vendor}");
        assert_eq!(g.mmio.low.counts(), (1, 1), "{vendor}: read then write");
        assert_eq!(g.mmio.low.u64_at(MMIO) & 0xFFFF_FFFF, 5, "{vendor}");

        let mut g = long64(vendor);
        g.mmio.low.set_u64(MMIO, 0x1111_2222_3333_4444);
        g.regs.gprs[Gpr::Rdi as usize] = MMIO;
        g.step(&[0x0F, 0xC7, 0x0F], MMIO); // cmpxchg8b [rdi]
        assert_eq!(g.mmio.low.counts(), (1, 1), "{vendor}: read then write");
        assert_eq!(g.mmio.low.u64_at(MMIO), 0x1111_2222_3333_4444, "{vendor}");
        assert_eq!(get(&g, Gpr::Rax), 0x3333_4444, "{vendor}");
        assert_eq!(get(&g, Gpr::Rdx), 0x1111_2222, "{vendor}");
    }
}

// ---- Segmentation ----------------------------------------------------------

/// 64-bit mode checks no segment limit (DS, ES, SS with limit 0 here) on
/// Intel and AMD alike.
#[test]
fn no_segment_limit_in_64_bit_mode_on_both() {
    for vendor in VENDORS {
        let mut regs = Registers::long_mode(TEST_VENDOR, PT_ROOT_UNUSED, 0, 0);
        regs.vendor = vendor;
        for s in [Segment::Ds, Segment::Es, Segment::Ss] {
            regs.segments[s as usize].limit = 0;
        }
        for s in [Segment::Ds, Segment::Es, Segment::Ss] {
            assert_eq!(
                linear_address(&regs, CpuMode::Long64, s, 0x1234_5678, 8, AccessType::Write),
                Ok(0x1234_5678),
                "{vendor} {s:?}"
            );
        }
    }
}

/// EFER bit 13 (AMD's LMSLE, reserved on Intel) is refused under either
/// vendor: the assist does not emulate long-mode segment limits.
#[test]
fn efer_lmsle_is_refused_on_both() {
    for vendor in VENDORS {
        let mut g = long64(vendor);
        g.regs.efer |= 1 << 13;
        g.regs.gprs[Gpr::Rdi as usize] = MMIO;
        let before = g.regs.clone();
        assert_eq!(
            g.exec(&[0x8B, 0x07], MMIO),
            Err(Error::InconsistentState(
                nvmm_assist::InconsistentState::LongModeSegmentLimits
            )),
            "{vendor}"
        );
        assert_eq!(g.regs, before, "{vendor}");
        assert_eq!(g.mmio.total_accesses(), 0, "{vendor}");
    }
}

/// Not used for a walk: `linear_address` does not translate.
const PT_ROOT_UNUSED: u64 = 0x1000;

/// A flat 32-bit segment (limit 0xFFFFFFFF): an access running past offset
/// 0xFFFFFFFF wraps to offset 0, and only its first byte is checked; any
/// other limit checks the last byte. Measured through KVM on both vendors
/// (tests/oracle_kvm_segment.rs).
#[test]
fn four_gib_wrap_is_the_same_on_both() {
    for vendor in VENDORS {
        let mut regs: Registers = Registers::flat_protected32(TEST_VENDOR);
        regs.vendor = vendor;
        let mode = CpuMode::of(&regs);
        assert_eq!(
            linear_address(&regs, mode, Segment::Ds, 0xFFFF_FFFE, 4, AccessType::Read),
            Ok(0xFFFF_FFFE),
            "{vendor}"
        );
        regs.segments[Segment::Ds as usize].limit = 0xFFFF_FFF0;
        assert_eq!(
            linear_address(&regs, mode, Segment::Ds, 0xFFFF_FFEE, 4, AccessType::Read),
            Err(Error::Exception(Exception::GeneralProtection(0))),
            "{vendor}"
        );
    }
}
