//! The host CPU decides the decoder's 64-bit segment-override rule: in
//! 64-bit mode an ES/CS/SS/DS prefix neither selects a segment nor cancels
//! an earlier FS/GS one (iced-x86 agrees; Intel SDM vol. 1 §3.3.7.1 says the
//! four are ignored). Each encoding runs natively with a GS base that moves
//! the access to another buffer, and the decoder must name the segment the
//! CPU used.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::arch::asm;

use nvmm_assist::{CpuMode, Segment, decode};

const ARCH_SET_GS: libc::c_int = 0x1001;

/// Runs `mov eax, <prefixes> [rax]` natively for the listed prefix byte
/// sequences (each a separate asm block: the bytes must be literal).
fn run_all(p: u64) -> [u64; 8] {
    let mut r = [0u64; 8];
    // SAFETY: each block is `mov eax, [rax]` with segment prefixes; rax
    // points to a live static `u32` (directly, or through the GS base set
    // by the caller so that gs:[rax] is the other static), and the block
    // touches no other register or memory.
    unsafe {
        asm!(".byte 0x8b, 0x00", inout("rax") p => r[0], options(nostack, readonly));
        asm!(".byte 0x65, 0x8b, 0x00", inout("rax") p => r[1], options(nostack, readonly));
        asm!(".byte 0x65, 0x26, 0x8b, 0x00", inout("rax") p => r[2], options(nostack, readonly));
        asm!(".byte 0x65, 0x2e, 0x8b, 0x00", inout("rax") p => r[3], options(nostack, readonly));
        asm!(".byte 0x65, 0x36, 0x8b, 0x00", inout("rax") p => r[4], options(nostack, readonly));
        asm!(".byte 0x65, 0x3e, 0x8b, 0x00", inout("rax") p => r[5], options(nostack, readonly));
        asm!(".byte 0x26, 0x65, 0x8b, 0x00", inout("rax") p => r[6], options(nostack, readonly));
        asm!(".byte 0x26, 0x8b, 0x00", inout("rax") p => r[7], options(nostack, readonly));
    }
    r
}

const ENCODINGS: [&[u8]; 8] = [
    &[0x8B, 0x00],
    &[0x65, 0x8B, 0x00],
    &[0x65, 0x26, 0x8B, 0x00],
    &[0x65, 0x2E, 0x8B, 0x00],
    &[0x65, 0x36, 0x8B, 0x00],
    &[0x65, 0x3E, 0x8B, 0x00],
    &[0x26, 0x65, 0x8B, 0x00],
    &[0x26, 0x8B, 0x00],
];

static TARGET: u32 = 0x1111_1111;
static PLAIN: u32 = 0xAAAA_AAAA;

#[test]
fn segment_overrides_in_64bit_mode_match_the_cpu() {
    let plain = &PLAIN as *const u32 as u64;
    let target = &TARGET as *const u32 as u64;
    // gs:[plain] = [target]. GS is unused by Rust on x86_64 Linux, and the
    // base is per thread (this test's own thread).
    // SAFETY: arch_prctl(ARCH_SET_GS) only changes this thread's GS base.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_SET_GS,
            target.wrapping_sub(plain),
        )
    };
    if rc != 0 {
        println!("decode_segment_hw: skipped: arch_prctl(ARCH_SET_GS) failed");
        return;
    }
    let results = run_all(plain);
    for (bytes, value) in ENCODINGS.iter().zip(results) {
        let used_gs = match value {
            v if v as u32 == TARGET => true,
            v if v as u32 == PLAIN => false,
            v => panic!("{bytes:02x?} read {v:#x}"),
        };
        let insn = decode(bytes, CpuMode::Long64).expect("decodes");
        let seg = insn.memory_operand().expect("memory operand").segment;
        assert_eq!(
            seg == Segment::Gs,
            used_gs,
            "{bytes:02x?}: decoder says {seg:?}"
        );
        if !used_gs {
            assert_eq!(
                seg,
                Segment::Ds,
                "{bytes:02x?}: an ignored override leaves DS"
            );
        }
    }
    println!(
        "decode_segment_hw: {} encodings agree with the host CPU",
        ENCODINGS.len()
    );
}
