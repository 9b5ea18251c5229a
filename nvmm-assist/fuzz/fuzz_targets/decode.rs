//! Fuzzes `nvmm_assist::decode`: the first input byte picks the CPU mode,
//! the rest are the instruction bytes.
//!
//! Properties, beyond "never panics" (overflow checks are on in fuzz builds):
//! - an accepted instruction is 1-15 bytes long and no longer than the input;
//! - decoding exactly its own bytes gives the same instruction (the decoder
//!   reads nothing past the length it reports), and every shorter prefix of
//!   them is `Truncated` (so an incremental fetch never fails early);
//! - `Truncated` only when the input is shorter than 15 bytes, and then no
//!   prefix of the input decodes either;
//! - a memory operand's access size is 1, 2, 4, 8 or 16 and its scale 1, 2,
//!   4 or 8; operand and address sizes are in range;
//! - differential: iced-x86 agrees on accept/reject, length, operands,
//!   sizes, segment and access class (the comparison of
//!   tests/decode_iced.rs, with its documented intentional differences).
#![no_main]

#[path = "../../tests/decode_oracle/mod.rs"]
#[allow(dead_code)]
mod decode_oracle;
/// The tests' generator, which `decode_oracle` names as `super::Rng`.
#[path = "../../src/test_rng.rs"]
#[allow(dead_code)]
mod test_rng;
use test_rng::Rng;

use libfuzzer_sys::fuzz_target;
use nvmm_assist::decode::{DecodeError, Operand};
use nvmm_assist::{CpuMode, decode};

const MODES: [CpuMode; 7] = [
    CpuMode::Real,
    CpuMode::Virtual8086,
    CpuMode::Protected16,
    CpuMode::Protected32,
    CpuMode::Compat16,
    CpuMode::Compat32,
    CpuMode::Long64,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let mode = MODES[usize::from(selector) % MODES.len()];
    let bitness = match mode.default_address_size() {
        2 => 16,
        4 => 32,
        _ => 64,
    };
    let mut oracle = decode_oracle::Oracle::new(bitness, mode);
    oracle.case(bytes);
    if oracle.tally.mismatches != 0 {
        panic!(
            "differs from iced-x86 in {mode:?}: {:?}",
            oracle.tally.examples
        );
    }
    match decode(bytes, mode) {
        Ok(insn) => {
            let len = usize::from(insn.len);
            assert!((1..=15).contains(&len), "length {len}");
            assert!(len <= bytes.len(), "length {len} past the input");
            assert_eq!(decode(&bytes[..len], mode), Ok(insn), "not prefix-closed");
            // Fetching byte by byte (as the assist does at a page edge) must
            // see Truncated until the whole instruction is there.
            for n in 0..len {
                assert_eq!(
                    decode(&bytes[..n], mode),
                    Err(DecodeError::Truncated),
                    "prefix {n}"
                );
            }
            assert!(matches!(insn.operand_size, 1 | 2 | 4 | 8 | 16));
            assert!(matches!(insn.address_size, 2 | 4 | 8));
            if mode != CpuMode::Long64 {
                assert_ne!(insn.address_size, 8);
            }
            for op in insn.operands {
                if let Operand::Mem(m) = op {
                    assert!(matches!(m.size, 1 | 2 | 4 | 8 | 16));
                    assert!(matches!(m.scale, 1 | 2 | 4 | 8));
                    assert!(!m.rip_relative || mode == CpuMode::Long64);
                }
            }
        }
        Err(DecodeError::Truncated) => {
            assert!(bytes.len() < 15, "Truncated with 15 bytes available");
            for n in 0..bytes.len() {
                assert!(decode(&bytes[..n], mode).is_err(), "a prefix decodes");
            }
        }
        Err(_) => {}
    }
});
