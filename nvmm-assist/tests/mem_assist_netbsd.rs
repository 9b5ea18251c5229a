//! NetBSD's tests/lib/libnvmm h_mem_assist vectors (64-bit tests 1-17 and
//! 16-bit tests 1-6, 2020/12/27 revision) and DragonFly's additions, as
//! sequences of assist_mem calls. Guest instructions that do not touch MMIO
//! (register loads, `add`, branches) are done on the registers directly.
//! The expected values are the ones the NetBSD/DragonFly tests check.

use crate::support;

use nvmm_assist::Gpr;
use support::memdev::{Guest, MMIO};

const CF: u64 = 1;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;

fn set(g: &mut Guest, r: Gpr, v: u64) {
    g.regs.gprs[r as usize] = v;
}
fn get(g: &Guest, r: Gpr) -> u64 {
    g.regs.gprs[r as usize]
}

#[test]
fn test1_mov() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    set(&mut g, Gpr::Rbp, 0x1000);
    set(&mut g, Gpr::R11, 1);
    g.step(&[0x48, 0xC7, 0x00, 0x00, 0x10, 0x00, 0x00], 0x1000); // movq $0x1000,(%rax)
    g.step(&[0x4A, 0xC7, 0x04, 0xD8, 0x00, 0x20, 0x00, 0x00], 0x1008); // movq $0x2000,(%rax,%r11,8)
    g.step(&[0x4C, 0x8B, 0x45, 0x00], 0x1000); // movq (%rbp),%r8
    g.step(&[0x48, 0x8B, 0x5D, 0x08], 0x1008); // movq 8(%rbp),%rbx
    let sum = get(&g, Gpr::R8) + get(&g, Gpr::Rbx); // addq %rbx,%r8
    set(&mut g, Gpr::R8, sum);
    g.step(&[0x4C, 0x89, 0x45, 0x00], 0x1000); // movq %r8,(%rbp)
    g.step(&[0xC6, 0x45, 0x00, 0x04], 0x1000); // movb $4,(%rbp)
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x3004);
}

#[test]
fn test2_or() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    g.mmio.low.set_u64(MMIO, 0x1000);
    set(&mut g, Gpr::Rbx, 0xFF);
    set(&mut g, Gpr::Rcx, 0x0400);
    g.step(&[0x08, 0x18], 0x1000); // orb %bl,(%rax)
    g.step(&[0x66, 0x09, 0x08], 0x1000); // orw %cx,(%rax)
    set(&mut g, Gpr::Rcx, 0x200);
    g.step(&[0x48, 0x0B, 0x08], 0x1000); // orq (%rax),%rcx
    g.step(&[0x48, 0x89, 0x08], 0x1000); // movq %rcx,(%rax)
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x16FF);
}

#[test]
fn test3_and() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    g.mmio.low.set_u64(MMIO, 0x1FFF);
    set(&mut g, Gpr::Rbx, 0x1FF0);
    set(&mut g, Gpr::Rcx, 0xC1);
    g.step(&[0x48, 0x21, 0x18], 0x1000); // andq %rbx,(%rax)
    g.step(&[0x20, 0x08], 0x1000); // andb %cl,(%rax)
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x1FC0);
}

#[test]
fn test4_xor() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    g.mmio.low.set_u64(MMIO, 0x1FFF);
    set(&mut g, Gpr::Rbx, 0x1FF0);
    set(&mut g, Gpr::Rcx, 0x10C0);
    g.step(&[0x48, 0x31, 0x18], 0x1000); // xorq %rbx,(%rax)
    g.step(&[0x66, 0x31, 0x08], 0x1000); // xorw %cx,(%rax)
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x10CF);
}

#[test]
fn test5_address_sizes() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0xFFFF_FFFF_0000_1000);
    set(&mut g, Gpr::Rbx, 0);
    g.step(&[0x67, 0x48, 0xC7, 0x00, 0xFF, 0x1F, 0x00, 0x00], 0x1000); // movq $0x1fff,(%eax)
    g.step(&[0x67, 0xC6, 0x04, 0x18, 0x00], 0x1000); // movb $0,(%eax,%ebx,1)
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x1F00);
}

#[test]
fn test6_dmo() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0xFFA0);
    let moffs = [0x00, 0x10, 0, 0, 0, 0, 0, 0];
    let mut store_rax = vec![0x48, 0xA3];
    store_rax.extend_from_slice(&moffs);
    g.step(&store_rax, 0x1000); // movabs %rax,0x1000
    let mut load_al = vec![0xA0];
    load_al.extend_from_slice(&moffs);
    set(&mut g, Gpr::Rax, 0);
    g.step(&load_al, 0x1000); // movabs 0x1000,%al
    assert_eq!(get(&g, Gpr::Rax), 0xA0);
    let v = get(&g, Gpr::Rax) | 0x0B; // orb $0xb,%al
    set(&mut g, Gpr::Rax, v);
    let mut store_al = vec![0xA2];
    store_al.extend_from_slice(&moffs);
    g.step(&store_al, 0x1000); // movabs %al,0x1000
    assert_eq!(g.mmio.low.u64_at(MMIO), 0xFFAB);
}

#[test]
fn test7_stos() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x56);
    set(&mut g, Gpr::Rcx, 1);
    set(&mut g, Gpr::Rdi, 0x1000);
    g.step(&[0xF3, 0xAA], 0x1000); // rep stosb
    assert_eq!(get(&g, Gpr::Rcx), 0);
    set(&mut g, Gpr::Rax, 0x1234);
    g.step(&[0x66, 0xAB], 0x1001); // stosw
    assert_eq!(get(&g, Gpr::Rdi), 0x1003);
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x0012_3456);
}

#[test]
fn test8_lods() {
    let mut g = Guest::long64();
    g.mmio.low.set_u64(0x1008, 0x1234_5678);
    set(&mut g, Gpr::Rsi, 0x1008);
    set(&mut g, Gpr::Rdi, 0x1000);
    g.step(&[0x66, 0xAD], 0x1008); // lodsw
    assert_eq!(get(&g, Gpr::Rax), 0x5678);
    g.step(&[0x66, 0x89, 0x07], 0x1000); // movw %ax,(%rdi)
    g.step(&[0xAC], 0x100A); // lodsb
    g.step(&[0x88, 0x47, 0x02], 0x1002); // movb %al,2(%rdi)
    g.step(&[0xAC], 0x100B); // lodsb
    g.step(&[0x88, 0x47, 0x03], 0x1003); // movb %al,3(%rdi)
    assert_eq!(get(&g, Gpr::Rsi), 0x100C);
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x1234_5678);
}

#[test]
fn test9_movs() {
    let mut g = Guest::long64();
    g.mmio.low.set_u64(0x1008, 0x1234_5678);
    set(&mut g, Gpr::Rsi, 0x1008);
    set(&mut g, Gpr::Rdi, 0x1000);
    set(&mut g, Gpr::Rcx, 4);
    g.step(&[0xF3, 0xA4], 0x1008); // rep movsb
    set(&mut g, Gpr::Rcx, 2);
    g.step(&[0xF3, 0x66, 0xA5], 0x100C); // rep movsw
    assert_eq!(get(&g, Gpr::Rcx), 0);
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x1234_5678);
}

#[test]
fn test10_movzxb() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    g.mmio.low.set_u64(MMIO, 0x1234_5678);
    set(&mut g, Gpr::Rbx, u64::MAX);
    g.step(&[0x0F, 0xB6, 0x18], 0x1000); // movzbl (%rax),%ebx
    g.step(&[0x48, 0x89, 0x18], 0x1000); // movq %rbx,(%rax)
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x78);
}

#[test]
fn test11_movzxw() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    g.mmio.low.set_u64(MMIO, 0x1234_5678);
    set(&mut g, Gpr::Rbx, u64::MAX);
    g.step(&[0x48, 0x0F, 0xB7, 0x18], 0x1000); // movzwq (%rax),%rbx
    g.step(&[0x48, 0x89, 0x18], 0x1000); // movq %rbx,(%rax)
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x5678);
}

/// Signed comparison results of the test's jl/jg checks.
fn less(f: u64) -> bool {
    (f & SF != 0) != (f & (1 << 11) != 0)
}

#[test]
fn test12_cmp() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    // movq $0xFFFFFFFFF2345678,(%rax): the imm32 is sign-extended.
    g.step(&[0x48, 0xC7, 0x00, 0x78, 0x56, 0x34, 0xF2], 0x1000);
    assert_eq!(g.mmio.low.u64_at(MMIO), 0xFFFF_FFFF_F234_5678);
    let cases: [(&[u8], &str); 12] = [
        (&[0x80, 0x38, 0x78], "eq"),                         // cmpb $0x78
        (&[0x80, 0x38, 0x77], "gt"),                         // cmpb $0x77
        (&[0x80, 0x38, 0x79], "lt"),                         // cmpb $0x79
        (&[0x66, 0x81, 0x38, 0x78, 0x56], "eq"),             // cmpw $0x5678
        (&[0x66, 0x81, 0x38, 0x77, 0x56], "gt"),             // cmpw $0x5677
        (&[0x66, 0x81, 0x38, 0x79, 0x56], "lt"),             // cmpw $0x5679
        (&[0x81, 0x38, 0x78, 0x56, 0x34, 0xF2], "eq"),       // cmpl $0xf2345678
        (&[0x81, 0x38, 0x77, 0x56, 0x34, 0xF2], "gt"),       // cmpl $0xf2345677
        (&[0x81, 0x38, 0x79, 0x56, 0x34, 0xF2], "lt"),       // cmpl $0xf2345679
        (&[0x48, 0x81, 0x38, 0x78, 0x56, 0x34, 0xF2], "eq"), // cmpq $0xff..f2345678
        (&[0x48, 0x81, 0x38, 0x77, 0x56, 0x34, 0xF2], "gt"), // cmpq $0xff..f2345677
        (&[0x48, 0x81, 0x38, 0x79, 0x56, 0x34, 0xF2], "lt"), // cmpq $0xff..f2345679
    ];
    for (bytes, want) in cases {
        g.step(bytes, 0x1000);
        let f = g.regs.rflags;
        let got = if f & ZF != 0 {
            "eq"
        } else if less(f) {
            "lt"
        } else {
            "gt"
        };
        assert_eq!(got, want, "{bytes:02x?}");
    }
    g.step(&[0x48, 0xC7, 0x00, 0x01, 0x00, 0x00, 0x00], 0x1000); // movq $1,(%rax)
    assert_eq!(g.mmio.low.u64_at(MMIO), 1);
}

#[test]
fn test13_sub() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    g.mmio.low.set_u64(MMIO, 0x1000_A0FF);
    set(&mut g, Gpr::Rcx, 0xFF);
    g.step(&[0x28, 0x08], 0x1000); // subb %cl,(%rax)
    set(&mut g, Gpr::Rcx, 0xA000);
    g.step(&[0x66, 0x29, 0x08], 0x1000); // subw %cx,(%rax)
    set(&mut g, Gpr::Rcx, 0xF_1000_A0FF);
    g.step(&[0x48, 0x2B, 0x08], 0x1000); // subq (%rax),%rcx
    g.step(&[0x48, 0x89, 0x08], 0x1000); // movq %rcx,(%rax)
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x0000_000F_0000_A0FF);
}

#[test]
fn test14_test() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    g.mmio.low.set_u64(MMIO, 0xA0FF);
    g.step(&[0xF6, 0x00, 0x0F], 0x1000); // testb $0x0f,(%rax)
    assert_eq!(g.regs.rflags & ZF, 0);
    g.step(&[0x66, 0xF7, 0x00, 0x00, 0x0F], 0x1000); // testw $0x0f00,(%rax)
    assert_eq!(g.regs.rflags & ZF, ZF);
    g.step(&[0xF7, 0x00, 0x00, 0xA0, 0x00, 0x00], 0x1000); // testl $0xa000,(%rax)
    assert_eq!(g.regs.rflags & ZF, 0);
    assert_eq!(g.mmio.low.counts().1, 0, "TEST writes nothing");
}

#[test]
fn test15_xchg() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    set(&mut g, Gpr::Rbx, 0x12_0000);
    set(&mut g, Gpr::Rcx, 0x3400);
    set(&mut g, Gpr::Rdx, 0x56);
    g.step(&[0x48, 0x87, 0x18], 0x1000); // xchgq %rbx,(%rax)
    g.step(&[0x66, 0x87, 0x08], 0x1000); // xchgw (%rax),%cx
    g.step(&[0x86, 0x10], 0x1000); // xchgb %dl,(%rax)
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x12_3456);
    assert_eq!(get(&g, Gpr::Rbx), 0);
    assert_eq!(
        get(&g, Gpr::Rcx),
        0x0000,
        "CX got the old low word (0x0000)"
    );
    assert_eq!(get(&g, Gpr::Rdx), 0x00, "DL got the old low byte (0x00)");
}

#[test]
fn test16_xchg_addr32() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0xFFFF_FFFF_0000_1000);
    g.mmio.low.set_u64(MMIO, 0x12_3456);
    set(&mut g, Gpr::Rbx, 0);
    g.step(&[0x67, 0x48, 0x87, 0x18], 0x1000); // xchgq %rbx,(%eax)
    assert_eq!(get(&g, Gpr::Rbx), 0x12_3456);
    assert_eq!(g.mmio.low.u64_at(MMIO), 0);
    g.step(&[0x67, 0x48, 0x87, 0x18], 0x1000); // xchgq %rbx,(%eax)
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x12_3456);
    assert_eq!(get(&g, Gpr::Rbx), 0);
}

#[test]
fn test17_cmps() {
    let mut g = Guest::long64();
    g.mmio.low.set_u64(0x1000, 0xdead_beef_cafe);
    g.mmio.low.set_u64(0x1008, 0xdead_beef_cafe);
    g.mmio.low.set_u64(0x1020, 0xdead_beef_cafe);
    g.mmio.low.set_u64(0x1028, 0);
    set(&mut g, Gpr::Rsi, 0x1000);
    set(&mut g, Gpr::Rdi, 0x1020);
    set(&mut g, Gpr::Rcx, 3);
    g.step(&[0xF3, 0x48, 0xA7], 0x1000); // repe cmpsq
    assert_eq!(get(&g, Gpr::Rcx), 1, "stops after the second compare");
    assert_eq!(get(&g, Gpr::Rsi), 0x1010);
    assert_eq!(get(&g, Gpr::Rdi), 0x1030);
    assert_eq!(g.regs.rflags & ZF, 0);
}

// ---- DragonFly additions ----

#[test]
fn dragonfly_test17_rep_on_non_string_is_a_no_op() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    set(&mut g, Gpr::Rcx, 4);
    g.step(&[0xF3, 0x48, 0x89, 0x08], 0x1000); // rep movq %rcx,(%rax)
    assert_eq!(g.mmio.low.u64_at(MMIO), 4);
    assert_eq!(get(&g, Gpr::Rcx), 4);
    assert_eq!(g.mmio.low.log.len(), 1, "one write, not repeated");
}

#[test]
fn dragonfly_test18_sign_extension() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    g.mmio.low.set_u64(MMIO, u64::MAX);
    for bytes in [
        &[0x80, 0x38, 0xFF][..],                     // cmpb $-1,(%rax)
        &[0x66, 0x83, 0x38, 0xFF],                   // cmpw $-1,(%rax)
        &[0x83, 0x38, 0xFF],                         // cmpl $-1,(%rax)
        &[0x48, 0x83, 0x38, 0xFF],                   // cmpq $-1,(%rax)
        &[0x48, 0x81, 0x38, 0xFF, 0xFF, 0xFF, 0xFF], // cmpq $-1 (imm32)
    ] {
        g.regs.rflags = 2;
        g.step(bytes, 0x1000);
        assert_eq!(g.regs.rflags & ZF, ZF, "{bytes:02x?} compares equal");
    }
}

#[test]
fn dragonfly_test19_bt() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rax, 0x1000);
    g.mmio.low.set_u64(0x1008, 0x1);
    g.mmio.low.set_u64(0x1010, 0x2);
    g.mmio.low.set_u64(0x1018, 0x8000_0000_0000_0000);
    // btw $0,8(%rax); btl $1,16(%rax); btq $255,24(%rax) (255 mod 64 = 63)
    g.step(&[0x66, 0x0F, 0xBA, 0x60, 0x08, 0x00], 0x1008);
    assert_eq!(g.regs.rflags & CF, CF);
    g.step(&[0x0F, 0xBA, 0x60, 0x10, 0x01], 0x1010);
    assert_eq!(g.regs.rflags & CF, CF);
    g.step(&[0x48, 0x0F, 0xBA, 0x60, 0x18, 0xFF], 0x1018);
    assert_eq!(g.regs.rflags & CF, CF);
    // A clear bit: btw $1,8(%rax).
    g.step(&[0x66, 0x0F, 0xBA, 0x60, 0x08, 0x01], 0x1008);
    assert_eq!(g.regs.rflags & CF, 0);
    assert_eq!(g.mmio.low.counts().1, 0, "BT does not write memory");
}

// ---- 16-bit (real mode) ----

#[test]
fn test16_1_mov_single() {
    let mut g = Guest::real();
    set(&mut g, Gpr::Rbx, 0x10F1);
    set(&mut g, Gpr::Rdx, 0x123);
    g.step(&[0x88, 0x17], 0x10F1); // movb %dl,(%bx)
    assert_eq!(g.mmio.low.u64_at(0x10F1), 0x23);
}

#[test]
fn test16_2_mov_dual() {
    let mut g = Guest::real();
    set(&mut g, Gpr::Rbx, 0x10F1);
    set(&mut g, Gpr::Rdi, 2);
    set(&mut g, Gpr::Rdx, 0x123);
    g.step(&[0x89, 0x11], 0x10F3); // movw %dx,(%bx,%di)
    assert_eq!(g.mmio.low.u64_at(0x10F3), 0x123);
}

#[test]
fn test16_3_mov_dual_disp() {
    let mut g = Guest::real();
    set(&mut g, Gpr::Rbp, 0x10F1);
    set(&mut g, Gpr::Rsi, 2);
    set(&mut g, Gpr::Rdx, 0x678);
    g.step(&[0x89, 0x52, 0xFE], 0x10F1); // movw %dx,-2(%bp,%si)
    assert_eq!(g.mmio.low.u64_at(0x10F1), 0x678);
}

#[test]
fn test16_4_mixed() {
    let mut g = Guest::real();
    set(&mut g, Gpr::Rbp, 0x10F0);
    set(&mut g, Gpr::Rsi, 2);
    set(&mut g, Gpr::Rdi, 10);
    set(&mut g, Gpr::Rdx, 0xFFFF);
    set(&mut g, Gpr::Rax, 1);
    set(&mut g, Gpr::Rbx, 0x10);
    set(&mut g, Gpr::Rcx, 0x1000);
    g.step(&[0x89, 0x52, 0x04], 0x10F6); // movw %dx,4(%bp,%si)
    g.step(&[0x66, 0x21, 0x42, 0x04], 0x10F6); // andl %eax,4(%bp,%si)
    g.step(&[0x67, 0x09, 0x5C, 0x35, 0x04], 0x10F6); // orw %bx,4(%ebp,%esi)
    g.step(&[0x66, 0x09, 0x4B, 0xFC], 0x10F6); // orl %ecx,-4(%bp,%di)
    assert_eq!(g.mmio.low.u64_at(0x10F6), 0x1011);
}

#[test]
fn test16_5_disp16_only() {
    let mut g = Guest::real();
    g.step(&[0xC6, 0x06, 0x34, 0x12, 0x12], 0x1234); // movb $0x12,0x1234
    assert_eq!(g.mmio.low.u64_at(0x1234), 0x12);
}

#[test]
fn test16_6_xchg() {
    let mut g = Guest::real();
    set(&mut g, Gpr::Rbp, 0x1234);
    set(&mut g, Gpr::Rdi, 4);
    set(&mut g, Gpr::Rbx, 0x1200);
    set(&mut g, Gpr::Rcx, 0x34);
    g.step(&[0x87, 0x5E, 0x00], 0x1234); // xchgw %bx,(%bp)
    g.step(&[0x86, 0x4B, 0xFC], 0x1234); // xchgb -4(%bp,%di),%cl
    assert_eq!(g.mmio.low.u64_at(0x1234), 0x1234);
}

#[test]
fn dragonfly_test16_7_bt() {
    let mut g = Guest::real();
    set(&mut g, Gpr::Rbx, 0x1234);
    g.mmio.low.set_u64(0x1234, 0x0001);
    g.step(&[0x0F, 0xBA, 0x27, 0x00], 0x1234); // btw $0,(%bx)
    assert_eq!(g.regs.rflags & CF, CF);
    g.step(&[0x66, 0x0F, 0xBA, 0x27, 0x21], 0x1234); // btl $33,(%bx): bit 1
    assert_eq!(g.regs.rflags & CF, 0);
    assert_eq!(g.mmio.low.u64_at(0x1234), 0x0001);
}
