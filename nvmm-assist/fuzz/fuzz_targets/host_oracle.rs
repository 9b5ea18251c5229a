//! Differential fuzzing against the host CPU (x86_64 Linux only): the first
//! 15 input bytes are an instruction, the rest seed the registers. Every
//! input that `decode` accepts in 64-bit mode as a supported instruction
//! with a memory operand (port I/O excluded) runs natively, on a real
//! buffer, and through `assist_mem` with the buffer behind the MMIO bus;
//! GPRs, RIP, defined flags, XMM and memory must agree (see
//! tests/oracle_host.rs, whose harness this reuses).
//!
//! The registers are chosen so that the decoded memory operand lands in the
//! buffer; forms whose address the test cannot steer (RIP-relative,
//! absolute displacement) are skipped. Natively faulting inputs are avoided
//! (aligned SSE/CMPXCHG16B operands are aligned, locked operands stay in
//! one cache line, RFLAGS.AC is 0); if the decoder accepts bytes the CPU
//! rejects, the native run raises SIGILL and the fuzzer reports the crash,
//! which is a decoder finding.
#![no_main]

#[path = "../../tests/oracle_support/cases.rs"]
mod cases;
/// The tests' generator, which `encode` names as `super::Rng`.
#[path = "../../src/test_rng.rs"]
mod test_rng;
pub use test_rng::Rng;
#[path = "../../tests/oracle_support/encode.rs"]
mod encode;
#[path = "../../tests/oracle_support/host.rs"]
mod host;
#[path = "../../tests/oracle_support/host_vendor.rs"]
mod host_vendor;
#[path = "../../tests/oracle_support/mock.rs"]
mod mock;
#[path = "../../tests/oracle_support/native.rs"]
mod native;

use mock::assist;

use cases::{Case, StringInfo};
use encode::{AF, DF, Expect, OF, OperandValue, PF, SF, STATUS};
use libfuzzer_sys::fuzz_target;
use nvmm_assist::decode::{Mnemonic, Operand};
use nvmm_assist::{CpuMode, Gpr, Segment, decode};
use std::cell::RefCell;

/// Inputs that reached the comparison (printed at powers of two).
static COMPARED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    static ORACLE: RefCell<host::HostOracle> = RefCell::new(host::HostOracle::new());
}

fn undefined_flags(m: Mnemonic) -> u64 {
    match m {
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test => AF,
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => OF | SF | AF | PF,
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (code, seed) = data.split_at(15);
    let Ok(insn) = decode(code, CpuMode::Long64) else {
        return;
    };
    if matches!(
        insn.mnemonic,
        Mnemonic::In | Mnemonic::Out | Mnemonic::Ins | Mnemonic::Outs
    ) {
        return;
    }
    let Some(mem) = insn.memory_operand().copied() else {
        return;
    };
    let bytes = code[..usize::from(insn.len)].to_vec();
    let mut rng = Rng(seed.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    }) | 1);
    ORACLE.with(|o| {
        let mut o = o.borrow_mut();
        let l = o.layout;
        let mut ctx = native::Context::default();
        for g in ctx.gprs.iter_mut() {
            *g = rng.value(8);
        }
        ctx.gprs[4] = l.stack_top();
        for x in ctx.xmm.iter_mut() {
            *x = u128::from(rng.next()) << 64 | u128::from(rng.next());
        }
        ctx.rflags = 2 | (rng.next() & (STATUS | DF));
        let size = u64::from(mem.size);
        let string = matches!(
            insn.mnemonic,
            Mnemonic::Movs | Mnemonic::Stos | Mnemonic::Lods | Mnemonic::Cmps | Mnemonic::Scas
        );
        let mut case = Case {
            group: "fuzz",
            name: format!("{:?}", insn.mnemonic),
            bytes,
            ctx,
            patch: vec![],
            expect: vec![],
            expect_alt: None,
            string: None,
            undefined: undefined_flags(insn.mnemonic),
            check_accesses: false,
        };
        let addr_mask = match insn.address_size {
            4 => 0xffff_ffffu64,
            _ => u64::MAX,
        };
        if string {
            // RSI in the first half of the buffer, RDI in the second; a
            // small count; no segment games (FS/GS overrides keep their
            // real bases, so skip them).
            if matches!(insn.segment_override, Some(Segment::Fs | Segment::Gs)) {
                return;
            }
            let df = case.ctx.rflags & DF != 0;
            let count = if insn.rep.is_some() { rng.below(40) } else { 1 };
            let span = count.max(1) * size;
            let half = native::MMIO_LEN as u64 / 2;
            let pos = |rng: &mut Rng, base: u64| {
                let a = base + 64 + rng.below(half - span - 128);
                if df { a + span - size } else { a }
            };
            let src = pos(&mut rng, l.mmio);
            let dst = pos(&mut rng, l.mmio + half);
            let hi = |rng: &mut Rng, v: u64| (rng.next() & !addr_mask) | (v & addr_mask);
            case.ctx.gprs[6] = hi(&mut rng, src);
            case.ctx.gprs[7] = hi(&mut rng, dst);
            case.ctx.gprs[1] = if insn.rep.is_some() {
                hi(&mut rng, count)
            } else {
                rng.next()
            };
            let m = insn.mnemonic;
            case.string = Some(StringInfo {
                src,
                dst,
                size,
                df,
                src_mmio: true,
                dst_mmio: true,
                uses_src: matches!(m, Mnemonic::Movs | Mnemonic::Lods | Mnemonic::Cmps),
                uses_dst: !matches!(m, Mnemonic::Lods),
                writes_dst: matches!(m, Mnemonic::Movs | Mnemonic::Stos),
                addr32: insn.address_size == 4,
                rep: insn.rep.is_some(),
            });
            case.check_accesses = true;
        } else {
            if mem.rip_relative || (mem.base.is_none() && mem.index.is_none()) {
                return;
            }
            let seg_base = match mem.segment {
                Segment::Fs => o.fs_base,
                Segment::Gs => o.gs_base,
                _ => 0,
            };
            // Aligned where the CPU demands it, within a cache line where
            // the access is locked (no split lock), else anywhere.
            let locked = insn.lock || insn.mnemonic == Mnemonic::Xchg;
            let align = if locked
                || matches!(
                    insn.mnemonic,
                    Mnemonic::Movdqa
                        | Mnemonic::Movaps
                        | Mnemonic::Movapd
                        | Mnemonic::Movntdq
                        | Mnemonic::Movntps
                        | Mnemonic::Movntpd
                        | Mnemonic::Cmpxchg16b
                ) {
                size.next_power_of_two()
            } else {
                1
            };
            // BT* with a register bit offset: keep the offset small so the
            // access stays in the buffer.
            let bt_reg = match (insn.mnemonic, insn.operands[1]) {
                (Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc, Operand::Reg(r)) => {
                    Some(r.gpr)
                }
                _ => None,
            };
            if let Some(r) = bt_reg {
                if Some(r) == mem.base || Some(r) == mem.index {
                    return;
                }
                case.ctx.gprs[r.index()] = (rng.below(512) as i64 - 256) as u64;
            }
            let stack_op = matches!(insn.mnemonic, Mnemonic::Push | Mnemonic::Pop);
            if stack_op && (mem.base == Some(Gpr::Rsp) || mem.index == Some(Gpr::Rsp)) {
                return;
            }
            if mem.base.is_some() && mem.base == mem.index {
                return;
            }
            let target = (l.mmio + 1024 + rng.below(native::MMIO_LEN as u64 - 2048)) & !(align - 1);
            let off = target.wrapping_sub(seg_base);
            if insn.address_size == 4 && off > 0xffff_ffff {
                return;
            }
            let scale = u64::from(mem.scale);
            let idx = match mem.index {
                Some(i) => {
                    let v = rng.value(8) >> rng.below(64);
                    case.ctx.gprs[i.index()] = v;
                    v
                }
                None => 0,
            };
            let disp = mem.disp as u64;
            let rest = off.wrapping_sub(idx.wrapping_mul(scale)).wrapping_sub(disp);
            match mem.base {
                Some(b) => {
                    case.ctx.gprs[b.index()] = (rng.next() & !addr_mask) | (rest & addr_mask);
                }
                None => {
                    // [index*scale + disp]: solve for the index instead.
                    let Some(i) = mem.index else { return };
                    let need = off.wrapping_sub(disp) & addr_mask;
                    if need % scale != 0 {
                        return;
                    }
                    case.ctx.gprs[i.index()] = need / scale;
                }
            }
            // The BT offset may move the access: only the register form.
            let access = match bt_reg {
                Some(r) => {
                    let bits = (size * 8) as i64;
                    let v = case.ctx.gprs[r.index()];
                    let o = match size {
                        2 => i64::from(v as i16),
                        4 => i64::from(v as i32),
                        _ => v as i64,
                    };
                    target.wrapping_add((o.div_euclid(bits) * size as i64) as u64)
                }
                None => target,
            };
            if access < l.mmio || access + size > l.mmio + native::MMIO_LEN as u64 {
                return;
            }
            if stack_op && insn.mnemonic == Mnemonic::Pop && mem.base == Some(Gpr::Rsp) {
                return;
            }
            let write = !matches!(insn.access, nvmm_assist::decode::AccessClass::Read);
            case.expect = vec![Expect {
                addr: access,
                len: size,
                write,
            }];
        }
        match o.check(&case, &mut assist) {
            Ok(host::Verdict::Match { .. }) => {}
            Ok(host::Verdict::Mismatch(r)) => panic!("host oracle mismatch:\n{r}"),
            Err(h) => panic!("harness: {h}"),
        }
        let n = COMPARED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n.is_power_of_two() && n >= 1024 {
            eprintln!("host_oracle: {n} inputs compared with the host CPU, 0 mismatches");
        }
    });
});
