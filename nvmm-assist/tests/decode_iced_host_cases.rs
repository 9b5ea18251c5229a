//! Decoder differential, part 2: the encodings the hardware oracles
//! generate (tests/oracle_support; issue 5 §1 host CPU and §2 KVM: each
//! emulated form with random prefixes, REX bits, ModRM/SIB shapes,
//! displacements, immediates, segment overrides, LOCK, string REP forms,
//! port I/O, in every KVM guest mode) go through the iced-x86 comparison of
//! tests/decode_iced.rs. Only the generators run here: no native code, no
//! KVM guest. The host layout below mimics the oracle's (a MAP_32BIT area,
//! so 0x67 forms address it too); the KVM modes build their page tables
//! into a plain buffer.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use crate::decode_oracle;
use crate::oracle_support::{cases, encode, kvm, kvm_cases, kvm_modes};

use decode_oracle::Oracle;
use nvmm_assist::{CpuMode, decode};

#[test]
fn host_oracle_encodings_agree_with_iced() {
    let layout = cases::Layout {
        insn: 0x4000_0000,
        stack: 0x4001_0000,
        ramwin: 0x4002_0000,
        mmio: 0x4003_0000,
        fs_base: 0x4004_0000,
        gs_base: 0x4005_0000,
    };
    let forms = encode::forms();
    let mut rng = encode::Rng(0xDEC0_DE00);
    let mut o = Oracle::new(64, CpuMode::Long64);
    let mut not_decoded = Vec::new();
    let mut check = |o: &mut Oracle, c: cases::Case| {
        if decode(&c.bytes, CpuMode::Long64).is_err() && not_decoded.len() < 10 {
            not_decoded.push(format!("{} {:02x?}", c.name, c.bytes));
        }
        o.case(&c.bytes);
    };
    for _ in 0..40 {
        for f in &forms {
            if let Some(c) = cases::modrm_case(&mut rng, f, &layout) {
                check(&mut o, c);
            }
        }
        for _ in 0..40 {
            if let Some(c) = cases::moffs_case(&mut rng, &layout) {
                check(&mut o, c);
            }
            if let Some(c) = cases::string_case(&mut rng, &layout) {
                check(&mut o, c);
            }
        }
    }
    o.report("64-bit, host-oracle encodings");
    assert!(
        o.tally.compared > 5000,
        "too few cases: {}",
        o.tally.compared
    );
    // Every encoding of the host oracle is an emulated form.
    assert!(not_decoded.is_empty(), "not decoded: {not_decoded:#?}");
}

#[test]
fn kvm_oracle_encodings_agree_with_iced() {
    let mut ram = vec![0u8; kvm::RAM_LEN];
    let modes = kvm_modes::modes(&mut ram);
    let forms = encode::forms();
    let mut rng = encode::Rng(0x6b76_6dec);
    let mut total = 0;
    for mode in &modes {
        let cpu_mode = CpuMode::of(&mode.state);
        let bitness = match mode.bits {
            2 => 16,
            4 => 32,
            _ => 64,
        };
        let mut o = Oracle::new(bitness, cpu_mode);
        let mut not_decoded = Vec::new();
        for i in 0..forms.len() * 8 {
            let mut cases = Vec::new();
            cases.extend(kvm_cases::mem_case(&mut rng, &forms[i % forms.len()], mode));
            if i % 3 == 0 {
                cases.extend(kvm_cases::string_case(&mut rng, mode));
                cases.extend(kvm_cases::io_case(&mut rng, mode));
            }
            for c in cases {
                if decode(&c.bytes, cpu_mode).is_err() && not_decoded.len() < 10 {
                    not_decoded.push(format!("{} {:02x?}", c.name, c.bytes));
                }
                o.case(&c.bytes);
            }
        }
        o.report(&format!(
            "{}, KVM-oracle encodings, {cpu_mode:?}",
            mode.name
        ));
        assert!(
            not_decoded.is_empty(),
            "{}: not decoded: {not_decoded:#?}",
            mode.name
        );
        total += o.tally.compared;
    }
    assert!(total > 5000, "too few cases: {total}");
}
