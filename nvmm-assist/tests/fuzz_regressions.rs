//! Inputs the fuzz targets (nvmm-assist/fuzz) found to break the assist,
//! kept as regression tests.
//!
//! The `host_oracle` target's AMD finding (`repne cmpsb` with 32-bit
//! addressing and ECX = 0 keeps RCX on AMD) depends on the vendor: it is
//! pinned for both vendors in tests/vendor_rules.rs.

use crate::support;

use nvmm_assist::Gpr;
use support::memdev::{Guest, MMIO};

/// fuzz target `assist_mem`: a byte-sized string instruction with a 64-bit
/// address size and rDI = 0 overflowed the batch-size computation
/// (`(amask - offset - (size - 1)) / size + 1` with amask = u64::MAX):
/// a debug-build panic on guest-controlled input. Any result but a panic
/// is acceptable here; the semantics are tested in mem_assist.rs.
#[test]
fn stosb_at_offset_zero_in_64bit_mode_does_not_overflow() {
    // Forwards from offset 0: stosb and rep stosb.
    for bytes in [&[0xAAu8][..], &[0xF3, 0xAA]] {
        let mut g = Guest::long64();
        g.regs.gprs[Gpr::Rdi as usize] = 0;
        g.regs.gprs[Gpr::Rcx as usize] = 16;
        let _ = g.exec(bytes, MMIO);
    }
    // Backwards (DF = 1) from the top of the address space.
    let mut g = Guest::long64();
    g.regs.rflags |= 1 << 10;
    g.regs.gprs[Gpr::Rdi as usize] = u64::MAX;
    g.regs.gprs[Gpr::Rcx as usize] = 16;
    let _ = g.exec(&[0xF3, 0xAA], MMIO);
}
