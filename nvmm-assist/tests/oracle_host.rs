//! The host CPU as the assist's oracle: every generated instruction runs
//! natively on a real buffer and through `assist_mem` with the same
//! registers and the buffer behind the MMIO bus; registers, RIP, flags,
//! memory and the device access sequence must agree.
//!
//! Undefined flags (masked, counted and printed, never failing):
//! - AF after AND/OR/XOR/TEST (SDM: "AF is undefined");
//! - OF, SF, AF, PF after BT/BTS/BTR/BTC (SDM: "The OF, SF, AF, and PF flags
//!   are undefined"); ZF is defined as unchanged on current CPUs and is
//!   compared.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

#[path = "oracle_support/cases.rs"]
mod cases;
#[path = "oracle_support/encode.rs"]
mod encode;
#[path = "oracle_support/host.rs"]
mod host;
#[path = "oracle_support/mock.rs"]
mod mock;
#[path = "oracle_support/native.rs"]
mod native;

use encode::Rng;
use native::{Context, Native};

/// The stub itself: a NOP keeps every register; ADD's flags and result
/// match a Rust computation; `mov al, [m]` keeps RAX[63:8]; the XMM
/// registers round-trip.
#[test]
fn native_stub_self_check() {
    let mut n = Native::new();
    let mut rng = Rng(0x5eed);
    for _ in 0..1000 {
        let mut c = Context::default();
        for g in c.gprs.iter_mut() {
            *g = rng.next();
        }
        for x in c.xmm.iter_mut() {
            *x = (rng.next() as u128) << 64 | rng.next() as u128;
        }
        c.rflags = 2 | (rng.next() & 0x8d5);
        let after = n.run(&[0x90], &c);
        assert_eq!(after.gprs, c.gprs);
        assert_eq!(after.xmm, c.xmm);
        assert_eq!(after.rflags & 0xcd5, c.rflags & 0xcd5);
        // add rax, rbx
        let after = n.run(&[0x48, 0x01, 0xd8], &c);
        let (a, b) = (c.gprs[0], c.gprs[3]);
        let r = a.wrapping_add(b);
        assert_eq!(after.gprs[0], r);
        let cf = (r < a) as u64;
        let zf = (r == 0) as u64;
        let sf = r >> 63;
        let of = ((!(a ^ b) & (a ^ r)) >> 63) & 1;
        let af = ((a ^ b ^ r) >> 4) & 1;
        let pf = ((r as u8).count_ones() & 1 == 0) as u64;
        let want = cf | pf << 2 | af << 4 | zf << 6 | sf << 7 | of << 11;
        assert_eq!(after.rflags & 0x8d5, want, "add flags");
    }
    // mov al, [rdi]
    let addr = n.mmio_addr();
    n.data()[native::STACK_LEN + native::RAMWIN_LEN] = 0xa5;
    let mut c = Context::default();
    c.gprs[0] = 0x1122_3344_5566_7788;
    c.gprs[7] = addr;
    c.gprs[4] = n.stack_addr() + 4096;
    let after = n.run(&[0x8a, 0x07], &c);
    assert_eq!(after.gprs[0], 0x1122_3344_5566_77a5);
}

/// The generator and the stub together: every generated case runs
/// natively and writes only where its expected accesses say.
#[test]
fn generator_targets_the_operand() {
    let mut o = host::HostOracle::new();
    let forms = encode::forms();
    let mut rng = Rng(0x0ddba11);
    let mut n = 0;
    for _ in 0..20 {
        for f in &forms {
            if let Some(c) = cases::modrm_case(&mut rng, f, &o.layout) {
                o.run_native(&c).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        for _ in 0..20 {
            if let Some(c) = cases::moffs_case(&mut rng, &o.layout) {
                o.run_native(&c).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
            if let Some(c) = cases::string_case(&mut rng, &o.layout) {
                o.run_native(&c).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
    }
    println!("generator check: {n} native cases wrote only their operands");
    assert!(n > 2000);
}
