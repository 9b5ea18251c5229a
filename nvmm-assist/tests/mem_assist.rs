//! assist_mem semantics, each from documented CPU behaviour (Intel SDM
//! Vol. 1 ch. 3 and 7, Vol. 2 instruction pages, Vol. 3 ch. 6): expected
//! values are worked out from the manual, not from the implementation.

use crate::support;
use crate::support::dyn_assist::assist_mem;

use nvmm_assist::{AccessType, Error, Exception, Gpr, MemExit, Outcome, Registers};
use support::TEST_VENDOR;
use support::memdev::{Guest, MMIO, MMIO2, RacingRam};

const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const DF: u64 = 1 << 10;
const OF: u64 = 1 << 11;
const RF: u64 = 1 << 16;
const AC: u64 = 1 << 18;
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
/// Every RFLAGS bit a guest can set in 64-bit mode (VM excluded: it is
/// ignored in long mode but would change the mode elsewhere; DF excluded
/// here because it steers string instructions, tested on its own).
const ALL_VALID: u64 = 0x0037_7FD7 & !DF & !(1 << 17);

fn set(g: &mut Guest, r: Gpr, v: u64) {
    g.regs.gprs[r as usize] = v;
}
fn get(g: &Guest, r: Gpr) -> u64 {
    g.regs.gprs[r as usize]
}

/// Runs `bytes` with initial RFLAGS 0x2 and ALL_VALID, on fresh guests made
/// by `setup`, and checks that bits outside `touched` are unchanged and
/// that the touched bits come out as `want` in both runs. RF is always
/// touched: a completed instruction clears it.
fn meta_flags(setup: impl Fn() -> Guest, bytes: &[u8], gpa: u64, touched: u64, want: u64) {
    let touched = touched | RF;
    for initial in [0x2, ALL_VALID] {
        let mut g = setup();
        g.regs.rflags = initial;
        g.step(bytes, gpa);
        assert_eq!(
            g.regs.rflags & !touched,
            initial & !touched,
            "{bytes:02x?} changed untouched flags from {initial:#x}"
        );
        assert_eq!(
            g.regs.rflags & touched,
            want,
            "{bytes:02x?} flags from {initial:#x}"
        );
    }
}

fn mmio_guest(value: u64) -> Guest {
    let mut g = Guest::long64();
    g.mmio.low.set_u64(MMIO, value);
    set(&mut g, Gpr::Rax, MMIO);
    g
}

// ---- partial registers ---------------------------------------------------

#[test]
fn byte_and_word_loads_keep_the_rest_of_the_register() {
    let mut g = mmio_guest(0x8877_6655_4433_2211);
    set(&mut g, Gpr::Rcx, 0xAAAA_AAAA_AAAA_AAAA);
    g.step(&[0x8A, 0x08], MMIO); // mov cl,[rax]
    assert_eq!(get(&g, Gpr::Rcx), 0xAAAA_AAAA_AAAA_AA11);
    g.step(&[0x66, 0x8B, 0x08], MMIO); // mov cx,[rax]
    assert_eq!(get(&g, Gpr::Rcx), 0xAAAA_AAAA_AAAA_2211);
    g.step(&[0x8B, 0x08], MMIO); // mov ecx,[rax]: zero-extends
    assert_eq!(get(&g, Gpr::Rcx), 0x4433_2211);
    g.step(&[0x48, 0x8B, 0x08], MMIO); // mov rcx,[rax]
    assert_eq!(get(&g, Gpr::Rcx), 0x8877_6655_4433_2211);
}

#[test]
fn high_byte_registers_without_rex_and_low_bytes_with_rex() {
    let mut g = mmio_guest(0x5A);
    set(&mut g, Gpr::Rsp, 0x1111_1111_1111_1111);
    set(&mut g, Gpr::Rax, MMIO);
    g.step(&[0x8A, 0x20], MMIO); // mov ah,[rax]
    assert_eq!(get(&g, Gpr::Rax), (MMIO & !0xFF00) | 0x5A00);
    assert_eq!(get(&g, Gpr::Rsp), 0x1111_1111_1111_1111);
    set(&mut g, Gpr::Rax, MMIO);
    g.step(&[0x40, 0x8A, 0x20], MMIO); // mov spl,[rax] (REX present)
    assert_eq!(get(&g, Gpr::Rsp), 0x1111_1111_1111_115A);
    assert_eq!(get(&g, Gpr::Rax), MMIO);
    // Stores: mov [rax],bh takes bits 15:8 of RBX; with REX, DIL.
    set(&mut g, Gpr::Rbx, 0xC3B2);
    set(&mut g, Gpr::Rdi, 0xE7);
    g.step(&[0x88, 0x38], MMIO); // mov [rax],bh
    assert_eq!(g.mmio.low.mem[0], 0xC3);
    g.step(&[0x40, 0x88, 0x38], MMIO); // mov [rax],dil
    assert_eq!(g.mmio.low.mem[0], 0xE7);
}

#[test]
fn movzx_into_si_di_sp_bp_writes_those_registers() {
    // libnvmm resolves these to DH/BH/AH/CH and corrupts RDX etc.
    let mut g = mmio_guest(0xF0E1);
    for (modrm, reg) in [
        (0x30, Gpr::Rsi),
        (0x38, Gpr::Rdi),
        (0x20, Gpr::Rsp),
        (0x28, Gpr::Rbp),
    ] {
        set(&mut g, Gpr::Rdx, 0x1234_5678);
        set(&mut g, reg, u64::MAX);
        g.step(&[0x0F, 0xB6, modrm], MMIO); // movzx e?x,byte [rax]
        assert_eq!(get(&g, reg), 0xE1, "{reg:?}");
        assert_eq!(get(&g, Gpr::Rdx), 0x1234_5678);
        set(&mut g, reg, u64::MAX);
        g.step(&[0x66, 0x0F, 0xB6, modrm], MMIO); // movzx ?x,byte [rax]
        assert_eq!(
            get(&g, reg),
            0xFFFF_FFFF_FFFF_00E1,
            "16-bit keeps bits 63:16"
        );
    }
    set(&mut g, Gpr::Rax, MMIO);
}

#[test]
fn movsx_and_movsxd_sign_extend() {
    let mut g = mmio_guest(0x8000_0080);
    set(&mut g, Gpr::Rcx, 0);
    g.step(&[0x48, 0x0F, 0xBE, 0x08], MMIO); // movsx rcx,byte [rax]
    assert_eq!(get(&g, Gpr::Rcx), 0xFFFF_FFFF_FFFF_FF80);
    g.step(&[0x0F, 0xBF, 0x08], MMIO); // movsx ecx,word [rax]
    assert_eq!(get(&g, Gpr::Rcx), 0x0000_0080);
    g.step(&[0x48, 0x63, 0x08], MMIO); // movsxd rcx,dword [rax]
    assert_eq!(get(&g, Gpr::Rcx), 0xFFFF_FFFF_8000_0080);
}

// ---- immediates ----------------------------------------------------------

#[test]
fn immediates_are_sign_extended() {
    let mut g = mmio_guest(0);
    g.step(&[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF], MMIO); // mov qword [rax],-1
    assert_eq!(g.mmio.low.u64_at(MMIO), u64::MAX);
    g.mmio.low.set_u64(MMIO, 5);
    g.step(&[0x66, 0x83, 0x00, 0xFE], MMIO); // add word [rax],-2
    assert_eq!(g.mmio.low.u64_at(MMIO), 3);
    g.step(&[0x48, 0x83, 0x00, 0xFC], MMIO); // add qword [rax],-4
    assert_eq!(g.mmio.low.u64_at(MMIO), u64::MAX);
    assert_eq!(
        g.regs.rflags & (CF | SF),
        SF,
        "3 + (-4): no carry, negative"
    );
}

// ---- flags, with the meta-check of untouched bits --------------------------

#[test]
fn alu_flags_for_every_size() {
    // (bytes, initial memory, touched, expected flags). Expected values are
    // from the definitions: e.g. 0x7F + 1 overflows a signed byte.
    let cases: &[(&[u8], u64, u64, u64)] = &[
        // add byte [rax],1 ; 0x7F -> 0x80: OF SF AF
        (&[0x80, 0x00, 0x01], 0x7F, STATUS, OF | SF | AF),
        // add word [rax],1 ; 0xFFFF -> 0: CF ZF AF PF
        (&[0x66, 0x83, 0x00, 0x01], 0xFFFF, STATUS, CF | ZF | AF | PF),
        // add dword [rax],1 ; 0x7FFFFFFF -> 0x80000000: OF SF AF PF
        (&[0x83, 0x00, 0x01], 0x7FFF_FFFF, STATUS, OF | SF | AF | PF),
        // add qword [rax],1 ; max -> 0
        (
            &[0x48, 0x83, 0x00, 0x01],
            u64::MAX,
            STATUS,
            CF | ZF | AF | PF,
        ),
        // sub byte [rax],1 ; 0 -> 0xFF: CF SF AF PF
        (&[0x80, 0x28, 0x01], 0, STATUS, CF | SF | AF | PF),
        // sub qword [rax],1 ; 0x8000.. -> 0x7FFF..: OF AF PF
        (&[0x48, 0x83, 0x28, 0x01], 1 << 63, STATUS, OF | AF | PF),
        // cmp dword [rax],3 ; 3-3: ZF PF
        (&[0x83, 0x38, 0x03], 3, STATUS, ZF | PF),
        // and byte [rax],0x80 ; 0x81 & 0x80: SF (PF: one bit, odd); AF cleared
        (&[0x80, 0x20, 0x80], 0x81, STATUS, SF),
        // or word [rax],0 ; 0: ZF PF
        (&[0x66, 0x83, 0x08, 0x00], 0, STATUS, ZF | PF),
        // xor qword [rax],-1 ; 0 -> all ones: SF PF
        (&[0x48, 0x83, 0x30, 0xFF], 0, STATUS, SF | PF),
        // test dword [rax],0x80000000 ; SF
        (
            &[0xF7, 0x00, 0x00, 0x00, 0x00, 0x80],
            0x8000_0000,
            STATUS,
            SF | PF,
        ),
        // inc byte [rax] ; 0xFF -> 0: ZF AF PF, CF untouched
        (&[0xFE, 0x00], 0xFF, STATUS & !CF, ZF | AF | PF),
        // dec word [rax] ; 0x8000 -> 0x7FFF: OF AF PF, CF untouched
        (&[0x66, 0xFF, 0x08], 0x8000, STATUS & !CF, OF | AF | PF),
        // neg dword [rax] ; 1 -> 0xFFFFFFFF: CF SF AF PF
        (&[0xF7, 0x18], 1, STATUS, CF | SF | AF | PF),
        // neg qword [rax] ; 0 -> 0: ZF PF, CF clear
        (&[0x48, 0xF7, 0x18], 0, STATUS, ZF | PF),
        // not byte [rax] touches no flag
        (&[0xF6, 0x10], 0x0F, 0, 0),
        // mov touches no flag
        (&[0x88, 0x08], 0, 0, 0),
    ];
    for &(bytes, mem, touched, want) in cases {
        meta_flags(|| mmio_guest(mem), bytes, MMIO, touched, want);
    }
}

#[test]
fn adc_and_sbb_use_the_carry() {
    for (cf, want_mem, want_flags) in [(0, 0xFF, SF | PF), (CF, 0x00, CF | ZF | AF | PF)] {
        let mut g = mmio_guest(0xFE);
        g.regs.rflags = 2 | cf;
        g.step(&[0x80, 0x10, 0x01], MMIO); // adc byte [rax],1
        assert_eq!(g.mmio.low.mem[0], want_mem);
        assert_eq!(g.regs.rflags & STATUS, want_flags, "adc with CF={cf}");
    }
    // sbb dword [rax],0 with CF=1: 0 - 0 - 1 = 0xFFFFFFFF, borrow.
    let mut g = mmio_guest(0);
    g.regs.rflags = 2 | CF;
    g.step(&[0x83, 0x18, 0x00], MMIO);
    assert_eq!(g.mmio.low.u64_at(MMIO), 0xFFFF_FFFF);
    assert_eq!(g.regs.rflags & STATUS, CF | SF | AF | PF);
}

#[test]
fn alu_register_destinations_read_memory_and_write_the_register() {
    let mut g = mmio_guest(0x10);
    set(&mut g, Gpr::Rcx, 0xFFFF_FFFF_0000_0005);
    g.step(&[0x03, 0x08], MMIO); // add ecx,[rax]
    assert_eq!(get(&g, Gpr::Rcx), 0x15, "32-bit result zero-extends");
    g.step(&[0x3B, 0x08], MMIO); // cmp ecx,[rax]: 0x15 - 0x10 = 5
    assert_eq!(get(&g, Gpr::Rcx), 0x15);
    assert_eq!(g.regs.rflags & STATUS, PF, "5 has even parity");
    g.step(&[0x85, 0x08], MMIO); // test [rax],ecx: 0x10 & 0x15
    assert_eq!(g.regs.rflags & STATUS, 0);
    assert_eq!(g.mmio.low.counts().1, 0, "no writes to memory");
}

#[test]
fn setcc_writes_a_byte_and_cmovcc_always_reads() {
    let mut g = mmio_guest(0xFFFF_FFFF_FFFF_FFFF);
    g.regs.rflags = 2 | ZF;
    g.step(&[0x0F, 0x94, 0x00], MMIO); // sete byte [rax]
    assert_eq!(g.mmio.low.u64_at(MMIO), 0xFFFF_FFFF_FFFF_FF01);
    g.step(&[0x0F, 0x95, 0x00], MMIO); // setne byte [rax]
    assert_eq!(g.mmio.low.u64_at(MMIO), 0xFFFF_FFFF_FFFF_FF00);
    // cmovne ecx,[rax] with ZF=1: memory is read, ECX keeps its value but
    // RCX[63:32] is cleared (32-bit destination in 64-bit mode).
    set(&mut g, Gpr::Rcx, 0x1234_5678_9ABC_DEF0);
    let reads = g.mmio.low.counts().0;
    g.step(&[0x0F, 0x45, 0x08], MMIO);
    assert_eq!(
        g.mmio.low.counts().0,
        reads + 1,
        "memory read although false"
    );
    assert_eq!(get(&g, Gpr::Rcx), 0x9ABC_DEF0);
    // cmove rcx,[rax] with ZF=1 loads.
    g.step(&[0x48, 0x0F, 0x44, 0x08], MMIO);
    assert_eq!(get(&g, Gpr::Rcx), 0xFFFF_FFFF_FFFF_FF00);
}

// ---- string instructions -------------------------------------------------

#[test]
fn rep_with_rcx_zero_accesses_nothing_and_advances_rip() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rcx, 0);
    set(&mut g, Gpr::Rdi, 0xBEEF_0000_0000_1000);
    g.step(&[0xF3, 0xAA], MMIO); // rep stosb
    assert_eq!(g.mmio.total_accesses(), 0);
    assert_eq!(get(&g, Gpr::Rdi), 0xBEEF_0000_0000_1000, "untouched");
    // 16-bit address size (real mode): CX = 0, nothing written.
    let mut g = Guest::real();
    set(&mut g, Gpr::Rcx, 0x1234_0000);
    set(&mut g, Gpr::Rsi, 0x1234_5678_0000_1000);
    g.step(&[0xF3, 0xA4], 0x1000); // rep movsb
    assert_eq!(get(&g, Gpr::Rcx), 0x1234_0000);
    assert_eq!(get(&g, Gpr::Rsi), 0x1234_5678_0000_1000);
    assert_eq!(g.mmio.total_accesses(), 0);
}

// The zero-count a32 case depends on the vendor: tests/vendor_rules.rs.

#[test]
fn string_registers_are_masked_to_the_address_size() {
    let mut g = Guest::long64();
    g.mmio.low.put(MMIO + 0x10, &[1, 2, 3, 4]);
    set(&mut g, Gpr::Rsi, 0xDEAD_0000_0000_1010);
    set(&mut g, Gpr::Rdi, 0xBEEF_0000_0000_1020);
    set(&mut g, Gpr::Rcx, 0x7777_0000_0000_0004);
    g.step(&[0x67, 0xF3, 0xA4], MMIO + 0x10); // rep movsb with ESI/EDI/ECX
    assert_eq!(&g.mmio.low.mem[0x20..0x24], &[1, 2, 3, 4]);
    // 32-bit register writes zero-extend.
    assert_eq!(get(&g, Gpr::Rsi), 0x1014);
    assert_eq!(get(&g, Gpr::Rdi), 0x1024);
    assert_eq!(get(&g, Gpr::Rcx), 0);
}

#[test]
fn sixteen_bit_string_registers_wrap_and_keep_upper_bits() {
    let mut g = Guest::real();
    // DS = 0x100 (base 0x1000); SI = 0xFFFF: lodsb reads 0x1000 + 0xFFFF? No:
    // keep within MMIO: base 0, SI = 0x1FFF, DF=0 -> SI becomes 0x2000.
    set(&mut g, Gpr::Rsi, 0xABCD_0000_0000_1FFF);
    g.mmio.low.mem[0xFFF] = 0x99;
    g.step(&[0xAC], 0x1FFF); // lodsb
    assert_eq!(get(&g, Gpr::Rax) & 0xFF, 0x99);
    assert_eq!(get(&g, Gpr::Rsi), 0xABCD_0000_0000_2000);
    // DI = 0 with DF = 1: stosb at ES:0 then DI wraps to 0xFFFF.
    let mut g = Guest::real();
    g.regs.segments[0].base = MMIO; // ES base
    g.regs.segments[0].selector = (MMIO >> 4) as u16;
    set(&mut g, Gpr::Rdi, 0x5555_0000_0000_0000);
    set(&mut g, Gpr::Rax, 0x42);
    g.regs.rflags = 2 | DF;
    g.step(&[0xAA], MMIO); // stosb
    assert_eq!(g.mmio.low.mem[0], 0x42);
    assert_eq!(get(&g, Gpr::Rdi), 0x5555_0000_0000_FFFF);
}

#[test]
fn direction_flag_moves_backwards() {
    let mut g = Guest::long64();
    g.mmio.low.put(
        MMIO + 0x10,
        &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
    );
    g.regs.rflags = 2 | DF;
    set(&mut g, Gpr::Rsi, MMIO + 0x16);
    set(&mut g, Gpr::Rdi, MMIO + 0x46);
    set(&mut g, Gpr::Rcx, 4);
    g.step(&[0xF3, 0x66, 0xA5], MMIO + 0x16); // rep movsw, backwards
    assert_eq!(
        &g.mmio.low.mem[0x40..0x48],
        &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
    );
    assert_eq!(get(&g, Gpr::Rsi), MMIO + 0x0E);
    assert_eq!(get(&g, Gpr::Rdi), MMIO + 0x3E);
    // Reads happened from the highest element down.
    let first_read = g.mmio.low.log.iter().find(|a| !a.write).unwrap();
    assert_eq!(first_read.addr, MMIO + 0x16);
}

#[test]
fn repe_and_repne_scas_stop_on_zf() {
    let mut g = Guest::long64();
    g.mmio.low.put(MMIO, b"aaab");
    set(&mut g, Gpr::Rdi, MMIO);
    set(&mut g, Gpr::Rax, u64::from(b'a'));
    set(&mut g, Gpr::Rcx, 10);
    g.step(&[0xF3, 0xAE], MMIO); // repe scasb: stops at 'b'
    assert_eq!(get(&g, Gpr::Rcx), 6);
    assert_eq!(get(&g, Gpr::Rdi), MMIO + 4);
    assert_eq!(g.regs.rflags & ZF, 0);
    set(&mut g, Gpr::Rdi, MMIO);
    set(&mut g, Gpr::Rax, u64::from(b'b'));
    set(&mut g, Gpr::Rcx, 10);
    g.step(&[0xF2, 0xAE], MMIO); // repne scasb: stops on 'b'
    assert_eq!(get(&g, Gpr::Rcx), 6);
    assert_eq!(g.regs.rflags & ZF, ZF);
}

#[test]
fn cmps_flags_are_source_minus_destination() {
    // cmpsb computes [rSI] - [rDI] (libnvmm had it reversed).
    let mut g = Guest::long64();
    g.mmio.low.mem[0] = 1; // [rsi]
    g.mmio.low.mem[0x10] = 2; // [rdi]
    set(&mut g, Gpr::Rsi, MMIO);
    set(&mut g, Gpr::Rdi, MMIO + 0x10);
    g.step(&[0xA6], MMIO);
    assert_eq!(g.regs.rflags & STATUS, CF | SF | AF | PF, "1 - 2");
}

#[test]
fn repne_on_movs_stos_lods_acts_as_rep() {
    let mut g = Guest::long64();
    g.regs.rflags = 2 | ZF;
    set(&mut g, Gpr::Rdi, MMIO);
    set(&mut g, Gpr::Rcx, 5);
    set(&mut g, Gpr::Rax, 0x7E);
    g.step(&[0xF2, 0xAA], MMIO); // repne stosb with ZF=1: all 5
    assert_eq!(&g.mmio.low.mem[..6], &[0x7E, 0x7E, 0x7E, 0x7E, 0x7E, 0]);
    assert_eq!(get(&g, Gpr::Rcx), 0);
    set(&mut g, Gpr::Rsi, MMIO);
    set(&mut g, Gpr::Rdi, MMIO + 0x100);
    set(&mut g, Gpr::Rcx, 5);
    g.step(&[0xF2, 0xA4], MMIO); // repne movsb
    assert_eq!(
        &g.mmio.low.mem[0x100..0x106],
        &[0x7E, 0x7E, 0x7E, 0x7E, 0x7E, 0]
    );
}

#[test]
fn destination_segment_is_es_whatever_the_override() {
    let mut g = Guest::long64();
    // Leave 64-bit mode for a 32-bit protected-mode guest with segment
    // bases (no paging).
    g.regs = Registers::flat_protected32(TEST_VENDOR);
    g.regs.rip = 0x2000;
    g.regs.segments[0].base = 0x1000; // ES
    g.regs.segments[4].base = 0x8000; // FS
    g.mmio.high.put(0x8000 + 0x20, &[9, 8, 7, 6]);
    set(&mut g, Gpr::Rsi, 0x20);
    set(&mut g, Gpr::Rdi, 0x40);
    set(&mut g, Gpr::Rcx, 4);
    // fs rep movsb: source FS:ESI, destination ES:EDI.
    g.step(&[0x64, 0xF3, 0xA4], 0x8020);
    assert_eq!(&g.mmio.low.mem[0x40..0x44], &[9, 8, 7, 6]);
    // fs stosb: ES:EDI, not FS.
    set(&mut g, Gpr::Rax, 0x55);
    set(&mut g, Gpr::Rdi, 0x50);
    g.step(&[0x64, 0xAA], 0x1050);
    assert_eq!(g.mmio.low.mem[0x50], 0x55);
    assert_eq!(g.mmio.high.mem[0x50], 0);
}

#[test]
fn rip_wraps_at_the_code_segment_size() {
    let mut g = Guest::real();
    g.regs.rip = 0xFFFE;
    set(&mut g, Gpr::Rbx, 0x1000);
    set(&mut g, Gpr::Rax, 0x12);
    assert_eq!(g.exec(&[0x88, 0x07, 0x90], 0x1000), Ok(Outcome::Done)); // mov [bx],al
    assert_eq!(g.regs.rip, 0x0000, "IP wraps at 64 KiB");
    assert_eq!(g.mmio.low.mem[0], 0x12);
    // 32-bit code: EIP wraps at 4 GiB.
    let mut g = Guest::long64();
    g.regs = Registers::flat_protected32(TEST_VENDOR);
    g.regs.rip = 0xFFFF_FFFF;
    set(&mut g, Gpr::Rbx, 0x1000);
    assert_eq!(g.exec(&[0x88, 0x07], 0x1000), Ok(Outcome::Done));
    assert_eq!(g.regs.rip, 1);
}

// ---- REP batching --------------------------------------------------------

#[test]
fn rep_movsb_4k_to_mmio_takes_few_calls() {
    let mut g = Guest::long64();
    for i in 0..4096usize {
        g.ram.mem[0x4000 + i] = i as u8;
    }
    set(&mut g, Gpr::Rsi, 0x4000);
    set(&mut g, Gpr::Rdi, MMIO2);
    set(&mut g, Gpr::Rcx, 4096);
    let rip = g.regs.rip;
    let calls = g.run_rep(&[0xF3, 0xA4], |r| r.gprs[7], 100);
    assert!(calls <= 4, "{calls} calls");
    assert_eq!(g.regs.rip, rip + 2);
    assert_eq!(get(&g, Gpr::Rcx), 0);
    for i in 0..4096usize {
        assert_eq!(g.mmio.high.mem[i], i as u8);
    }
    assert_eq!(g.mmio.high.log.len(), 4096, "one device write per element");
}

#[test]
fn rep_stosd_4k_to_mmio_takes_one_call() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rdi, MMIO);
    set(&mut g, Gpr::Rcx, 1024);
    set(&mut g, Gpr::Rax, 0xA1B2_C3D4);
    let calls = g.run_rep(&[0xF3, 0xAB], |r| r.gprs[7], 100);
    assert_eq!(calls, 1);
    assert_eq!(g.mmio.low.u64_at(MMIO + 4088), 0xA1B2_C3D4_A1B2_C3D4);
}

#[test]
fn rep_resumes_at_the_batch_cap_with_rip_unchanged() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rdi, MMIO2); // two MMIO pages: 8 KiB
    set(&mut g, Gpr::Rcx, 3000);
    set(&mut g, Gpr::Rax, 0x33);
    let rip = g.regs.rip;
    // Page-aligned single-byte elements: the page holds 4096, so the cap
    // (2048 iterations) is what stops the first batch.
    assert_eq!(g.exec(&[0xF3, 0xAA], MMIO2), Ok(Outcome::Resume));
    assert_eq!(g.regs.rip, rip);
    assert_eq!(get(&g, Gpr::Rcx), 3000 - 2048);
    assert_eq!(get(&g, Gpr::Rdi), MMIO2 + 2048);
    assert_eq!(g.mmio.high.log.len(), 2048);
    // The next exit is at the new RDI; the rest fits.
    assert_eq!(g.exec(&[0xF3, 0xAA], MMIO2 + 2048), Ok(Outcome::Done));
    assert_eq!(g.regs.rip, rip + 2);
    assert_eq!(get(&g, Gpr::Rcx), 0);
    assert_eq!(get(&g, Gpr::Rdi), MMIO2 + 3000);
}

#[test]
fn rep_batches_stop_at_page_boundaries() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rdi, MMIO2 + 0xFF0);
    set(&mut g, Gpr::Rcx, 100);
    set(&mut g, Gpr::Rax, 0x0102_0304);
    // 4 dwords fit before the page end.
    assert_eq!(g.exec(&[0xF3, 0xAB], MMIO2 + 0xFF0), Ok(Outcome::Resume));
    assert_eq!(get(&g, Gpr::Rcx), 96);
    assert_eq!(get(&g, Gpr::Rdi), MMIO2 + 0x1000);
    // Misaligned: an element straddling the page end is done alone, split.
    set(&mut g, Gpr::Rdi, MMIO2 + 0xFFE);
    set(&mut g, Gpr::Rcx, 3);
    assert_eq!(g.exec(&[0xF3, 0xAB], MMIO2 + 0xFFE), Ok(Outcome::Resume));
    assert_eq!(get(&g, Gpr::Rcx), 2);
    let last_two: Vec<_> = g
        .mmio
        .high
        .log
        .iter()
        .rev()
        .take(2)
        .map(|a| (a.addr, a.data.len()))
        .collect();
    assert_eq!(last_two, vec![(MMIO2 + 0x1000, 2), (MMIO2 + 0xFFE, 2)]);
}

#[test]
fn a_bus_error_mid_batch_commits_the_done_iterations() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rdi, MMIO);
    set(&mut g, Gpr::Rcx, 10);
    set(&mut g, Gpr::Rax, 0x44);
    g.mmio.low.fail_at = Some(3);
    let rip = g.regs.rip;
    assert_eq!(g.exec(&[0xF3, 0xAA], MMIO), Ok(Outcome::Resume));
    assert_eq!(get(&g, Gpr::Rcx), 7);
    assert_eq!(get(&g, Gpr::Rdi), MMIO + 3);
    assert_eq!(g.regs.rip, rip);
    // The next call fails at once and changes nothing.
    let before = g.regs.clone();
    assert_eq!(
        g.exec(&[0xF3, 0xAA], MMIO + 3),
        Err(Error::Bus(nvmm_assist::BusError(7)))
    );
    assert_eq!(g.regs, before);
}

// ---- page-crossing accesses ------------------------------------------------

#[test]
fn a_page_crossing_store_is_split_between_mmio_and_ram() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rbx, 0x1FFE);
    set(&mut g, Gpr::Rcx, 0x4433_2211);
    g.step(&[0x89, 0x0B], 0x1FFE); // mov [rbx],ecx: 2 bytes MMIO, 2 bytes RAM
    assert_eq!(&g.mmio.low.mem[0xFFE..], &[0x11, 0x22]);
    assert_eq!(g.ram.get(0x2000, 2), &[0x33, 0x44]);
    // And a load across RAM then MMIO (0x7FFE..0x8002).
    g.ram.put(0x7FFE, &[0xAA, 0xBB]);
    g.mmio.high.put(0x8000, &[0xCC, 0xDD]);
    set(&mut g, Gpr::Rbx, 0x7FFE);
    g.step(&[0x8B, 0x0B], 0x8000); // mov ecx,[rbx]
    assert_eq!(get(&g, Gpr::Rcx), 0xDDCC_BBAA);
}

#[test]
fn movs_between_ram_and_mmio_in_every_direction() {
    // RAM -> MMIO, MMIO -> RAM, MMIO -> MMIO (two devices).
    let mut g = Guest::long64();
    g.ram.put(0x5000, b"RAM!");
    g.mmio.low.put(0x1100, b"MIO1");
    g.mmio.high.put(0x8100, b"MIO2");
    for (src, dst, gpa, want) in [
        (0x5000u64, 0x1200u64, 0x1200u64, *b"RAM!"),
        (0x1100, 0x5100, 0x1100, *b"MIO1"),
        (0x8100, 0x1300, 0x8100, *b"MIO2"),
    ] {
        set(&mut g, Gpr::Rsi, src);
        set(&mut g, Gpr::Rdi, dst);
        set(&mut g, Gpr::Rcx, 4);
        g.step(&[0xF3, 0xA4], gpa);
        let got: Vec<u8> = if dst < 0x2000 {
            g.mmio.low.mem[(dst - MMIO) as usize..][..4].to_vec()
        } else {
            g.ram.get(dst, 4).to_vec()
        };
        assert_eq!(got, want.to_vec(), "{src:#x} -> {dst:#x}");
    }
}

// ---- locked read-modify-write --------------------------------------------

fn racing(g: Guest, gpa: u64, bytes: &[u8], races: usize) -> (Guest, RacingRam) {
    let ram = RacingRam {
        inner: g.ram.clone(),
        race_gpa: gpa,
        race_bytes: bytes.to_vec(),
        race_increment: 1,
        races,
        cas_calls: 0,
    };
    (g, ram)
}

#[test]
fn locked_rmw_on_ram_retries_when_memory_changes() {
    let mut g = Guest::long64();
    g.ram.write_u64(0x5000, 0x10);
    set(&mut g, Gpr::Rax, 0x5000);
    set(&mut g, Gpr::Rcx, 0x1);
    let (mut g, mut ram) = racing(g, 0x5000, &[0x20], 1);
    // lock or [rax],ecx: another writer stores 0x20 between read and write.
    let exit = MemExit {
        gpa: 0x5000,
        access: AccessType::Write,
        instruction: &[0xF0, 0x09, 0x08],
    };
    let r = assist_mem(&mut g.regs, &mut ram, &mut g.mmio, &exit);
    assert_eq!(r, Ok(Outcome::Done));
    assert_eq!(ram.inner.read_u32(0x5000), 0x21, "retried on the new value");
    assert_eq!(ram.cas_calls, 2);
    // Implicitly locked XCHG also uses compare-and-write.
    let exit = MemExit {
        gpa: 0x5000,
        access: AccessType::Write,
        instruction: &[0x87, 0x08],
    };
    assert_eq!(
        assist_mem(&mut g.regs, &mut ram, &mut g.mmio, &exit),
        Ok(Outcome::Done)
    );
    assert_eq!(ram.cas_calls, 3);
    assert_eq!(get(&g, Gpr::Rcx), 0x21);
    assert_eq!(ram.inner.read_u32(0x5000), 0x1);
}

#[test]
fn locked_rmw_that_keeps_losing_returns_resume_with_nothing_changed() {
    let mut g = Guest::long64();
    g.ram.write_u64(0x5000, 0x10);
    set(&mut g, Gpr::Rax, 0x5000);
    set(&mut g, Gpr::Rcx, 0x1);
    let (mut g, mut ram) = racing(g, 0x5000, &[0x20], usize::MAX);
    let before = g.regs.clone();
    // lock xadd [rax],ecx
    let exit = MemExit {
        gpa: 0x5000,
        access: AccessType::Write,
        instruction: &[0xF0, 0x0F, 0xC1, 0x08],
    };
    let r = assist_mem(&mut g.regs, &mut ram, &mut g.mmio, &exit);
    assert_eq!(r, Ok(Outcome::Resume));
    assert_eq!(g.regs, before, "no register changed, RIP not advanced");
    assert!(
        ram.cas_calls > 1 && ram.cas_calls <= 64,
        "bounded: {}",
        ram.cas_calls
    );
}

#[test]
fn locked_rmw_on_mmio_is_a_read_then_a_write() {
    let mut g = mmio_guest(0x0F);
    set(&mut g, Gpr::Rcx, 0xF0);
    g.step(&[0xF0, 0x09, 0x08], MMIO); // lock or [rax],ecx
    let kinds: Vec<bool> = g.mmio.low.log.iter().map(|a| a.write).collect();
    assert_eq!(kinds, vec![false, true]);
    assert_eq!(g.mmio.low.u64_at(MMIO), 0xFF);
}

#[test]
fn xadd_and_cmpxchg() {
    let mut g = mmio_guest(5);
    set(&mut g, Gpr::Rcx, 3);
    g.step(&[0x0F, 0xC1, 0x08], MMIO); // xadd [rax],ecx
    assert_eq!(g.mmio.low.u64_at(MMIO), 8);
    assert_eq!(get(&g, Gpr::Rcx), 5);
    // cmpxchg [rax],ecx with EAX != [rax]: EAX loaded, memory rewritten
    // with its own value, ZF=0.
    let mut g = mmio_guest(8);
    set(&mut g, Gpr::Rax, MMIO);
    set(&mut g, Gpr::Rbx, MMIO);
    set(&mut g, Gpr::Rcx, 0x77);
    g.step(&[0x0F, 0xB1, 0x0B], MMIO); // cmpxchg [rbx],ecx
    assert_eq!(get(&g, Gpr::Rax), 8);
    assert_eq!(g.regs.rflags & ZF, 0);
    assert_eq!(g.mmio.low.counts(), (1, 1), "the CPU always writes");
    // Now equal: memory gets ECX, ZF=1, RAX untouched.
    g.step(&[0x0F, 0xB1, 0x0B], MMIO);
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x77);
    assert_eq!(g.regs.rflags & ZF, ZF);
    assert_eq!(get(&g, Gpr::Rax), 8);
}

#[test]
fn cmpxchg8b_and_16b() {
    let mut g = Guest::long64();
    set(&mut g, Gpr::Rdi, MMIO + 0x10);
    g.mmio.low.set_u64(MMIO + 0x10, 0x1111_2222_3333_4444);
    set(&mut g, Gpr::Rax, 0xFFFF_FFFF_0000_0000);
    set(&mut g, Gpr::Rdx, 0xFFFF_FFFF_0000_0000);
    g.step(&[0x0F, 0xC7, 0x0F], MMIO + 0x10); // cmpxchg8b [rdi]: mismatch
    assert_eq!(g.regs.rflags & ZF, 0);
    assert_eq!(get(&g, Gpr::Rax), 0x3333_4444, "EAX loaded, zero-extended");
    assert_eq!(get(&g, Gpr::Rdx), 0x1111_2222);
    set(&mut g, Gpr::Rbx, 0xAAAA_BBBB);
    set(&mut g, Gpr::Rcx, 0xCCCC_DDDD);
    g.step(&[0x0F, 0xC7, 0x0F], MMIO + 0x10); // now equal
    assert_eq!(g.regs.rflags & ZF, ZF);
    assert_eq!(g.mmio.low.u64_at(MMIO + 0x10), 0xCCCC_DDDD_AAAA_BBBB);
    // cmpxchg16b needs 16-byte alignment.
    set(&mut g, Gpr::Rdi, MMIO + 0x18);
    let before = g.regs.clone();
    assert_eq!(
        g.exec(&[0x48, 0x0F, 0xC7, 0x0F], MMIO + 0x18),
        Err(Error::Exception(Exception::GeneralProtection(0)))
    );
    assert_eq!(g.regs, before);
    set(&mut g, Gpr::Rdi, MMIO + 0x20);
    g.mmio.low.set_u64(MMIO + 0x20, 1);
    g.mmio.low.set_u64(MMIO + 0x28, 2);
    set(&mut g, Gpr::Rax, 1);
    set(&mut g, Gpr::Rdx, 2);
    set(&mut g, Gpr::Rbx, 3);
    set(&mut g, Gpr::Rcx, 4);
    g.step(&[0x48, 0x0F, 0xC7, 0x0F], MMIO + 0x20);
    assert_eq!(g.regs.rflags & ZF, ZF);
    assert_eq!(
        (
            g.mmio.low.u64_at(MMIO + 0x20),
            g.mmio.low.u64_at(MMIO + 0x28)
        ),
        (3, 4)
    );
}

// ---- BT family -----------------------------------------------------------

#[test]
fn bt_register_offsets_address_beyond_the_operand() {
    let mut g = mmio_guest(0);
    g.mmio.low.set_u64(MMIO + 0x108, 1 << 36);
    set(&mut g, Gpr::Rax, MMIO + 0x100);
    set(&mut g, Gpr::Rcx, 100); // qword 1, bit 36
    g.step(&[0x48, 0x0F, 0xA3, 0x08], MMIO + 0x108); // bt [rax],rcx
    assert_eq!(g.regs.rflags & CF, CF);
    // Negative offset: -1 is bit 63 of the qword before.
    set(&mut g, Gpr::Rcx, u64::MAX);
    g.step(&[0x48, 0x0F, 0xAB, 0x08], MMIO + 0xF8); // bts [rax],rcx
    assert_eq!(g.regs.rflags & CF, 0);
    assert_eq!(g.mmio.low.u64_at(MMIO + 0xF8), 1 << 63);
    // 16-bit operand: CX = 0xFFF0 is -16: the word before, bit 0.
    set(&mut g, Gpr::Rcx, 0xFFF0);
    g.mmio.low.set_u64(MMIO + 0xF8, 0x0001_0000_0000_0000);
    g.step(&[0x66, 0x0F, 0xB3, 0x08], MMIO + 0xFE); // btr [rax],cx
    assert_eq!(g.regs.rflags & CF, CF);
    assert_eq!(g.mmio.low.u64_at(MMIO + 0xF8), 0);
    // 32-bit: ECX = 0x20 is the next dword, bit 0 (btc).
    set(&mut g, Gpr::Rcx, 0x20);
    g.step(&[0x0F, 0xBB, 0x08], MMIO + 0x104); // btc [rax],ecx
    assert_eq!(g.mmio.low.u64_at(MMIO + 0x100), 1 << 32);
}

#[test]
fn bt_leaves_the_other_flags_unchanged() {
    let mut g = mmio_guest(0b10);
    meta_flags(|| mmio_guest(0b10), &[0x0F, 0xBA, 0x20, 0x01], MMIO, CF, CF); // bt dword [rax],1
    g.step(&[0xF0, 0x0F, 0xBA, 0x28, 0x00], MMIO); // lock bts dword [rax],0
    assert_eq!(g.mmio.low.u64_at(MMIO), 0b11);
}

// ---- PUSH/POP ------------------------------------------------------------

#[test]
fn push_and_pop_memory() {
    let mut g = mmio_guest(0x1122_3344_5566_7788);
    set(&mut g, Gpr::Rsp, 0x6000);
    g.step(&[0xFF, 0x30], MMIO); // push qword [rax]
    assert_eq!(get(&g, Gpr::Rsp), 0x5FF8);
    assert_eq!(g.ram.read_u64(0x5FF8), 0x1122_3344_5566_7788);
    // pop qword [rsp+8]... with an rSP base the address uses the new rSP:
    // pop [rsp] after the increment writes at 0x6000.
    g.ram.write_u64(0x5FF8, 0xAB);
    g.step(&[0x8F, 0x04, 0x24], 0x5FF8); // pop qword [rsp]
    assert_eq!(get(&g, Gpr::Rsp), 0x6000);
    assert_eq!(g.ram.read_u64(0x6000), 0xAB);
    // pop word [rax] (66): 2 bytes, rSP += 2.
    g.ram.put(0x6000, &[0xEF, 0xBE]);
    g.step(&[0x66, 0x8F, 0x00], MMIO);
    assert_eq!(get(&g, Gpr::Rsp), 0x6002);
    assert_eq!(g.mmio.low.u64_at(MMIO) & 0xFFFF, 0xBEEF);
}

#[test]
fn sixteen_bit_stack_wraps_sp_and_keeps_the_upper_bits() {
    let mut g = Guest::real();
    g.regs.segments[2].base = 0x5000; // SS
    set(&mut g, Gpr::Rsp, 0xABCD_0000_0000_0000); // SP = 0
    set(&mut g, Gpr::Rbx, 0x1000);
    g.mmio.low.put(0x1000, &[0x34, 0x12]);
    g.step(&[0xFF, 0x37], 0x1000); // push word [bx]
    assert_eq!(get(&g, Gpr::Rsp), 0xABCD_0000_0000_FFFE);
    assert_eq!(g.ram.get(0x5000 + 0xFFFE, 2), &[0x34, 0x12]);
}

// ---- SSE -----------------------------------------------------------------

#[test]
fn sse_moves() {
    let mut g = mmio_guest(0);
    g.regs.xmm = Some([0; 16]);
    g.mmio.low.put(
        MMIO + 0x10,
        &(0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210u128).to_le_bytes(),
    );
    set(&mut g, Gpr::Rax, MMIO + 0x10);
    g.step(&[0x66, 0x0F, 0x6F, 0x08], MMIO + 0x10); // movdqa xmm1,[rax]
    assert_eq!(
        g.regs.xmm.unwrap()[1],
        0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210
    );
    g.step(&[0x66, 0x0F, 0x6E, 0x10], MMIO + 0x10); // movd xmm2,[rax]
    assert_eq!(g.regs.xmm.unwrap()[2], 0x7654_3210, "zero-extended");
    set(&mut g, Gpr::Rax, MMIO + 0x21);
    g.step(&[0xF3, 0x0F, 0x7F, 0x08], MMIO + 0x21); // movdqu [rax],xmm1
    assert_eq!(
        &g.mmio.low.mem[0x21..0x31],
        &(0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210u128).to_le_bytes()
    );
    // Aligned form on a misaligned address: #GP(0), no access.
    let n = g.mmio.low.log.len();
    assert_eq!(
        g.exec(&[0x66, 0x0F, 0x7F, 0x08], MMIO + 0x21),
        Err(Error::Exception(Exception::GeneralProtection(0)))
    );
    assert_eq!(g.mmio.low.log.len(), n);
    // No XMM state: unsupported, no access.
    g.regs.xmm = None;
    assert!(matches!(
        g.exec(&[0xF3, 0x0F, 0x7F, 0x08], MMIO + 0x21),
        Err(Error::Unsupported { len: 4, .. })
    ));
    assert_eq!(g.mmio.low.log.len(), n);
}

// ---- faults and consistency ------------------------------------------------

#[test]
fn alignment_check_at_cpl3() {
    let mut g = Guest::long64();
    g.regs = Registers::long_mode(TEST_VENDOR, support::memdev::PT_ROOT, 0, 0).at_cpl(3);
    g.regs.rip = 0x2000;
    g.regs.cr0 |= 1 << 18; // AM
    g.regs.rflags = 2 | AC;
    set(&mut g, Gpr::Rax, MMIO + 1);
    assert_eq!(
        g.exec(&[0x89, 0x08], MMIO + 1),
        Err(Error::Exception(Exception::AlignmentCheck))
    );
    // Aligned, or a byte access: fine.
    g.step(&[0x88, 0x08], MMIO + 1);
    set(&mut g, Gpr::Rax, MMIO + 4);
    g.step(&[0x89, 0x08], MMIO + 4);
    // AC clear: no check.
    g.regs.rflags = 2;
    set(&mut g, Gpr::Rax, MMIO + 1);
    g.step(&[0x89, 0x08], MMIO + 1);
}

#[test]
fn an_exit_gpa_that_does_not_match_the_operand_is_inconsistent() {
    let mut g = mmio_guest(0);
    let before = g.regs.clone();
    assert_eq!(
        g.exec(&[0x89, 0x08], MMIO + 8),
        Err(Error::InconsistentExit)
    );
    assert_eq!(g.regs, before);
    assert_eq!(g.mmio.total_accesses(), 0);
}

#[test]
fn a_bus_error_changes_no_register() {
    let mut g = mmio_guest(0);
    g.mmio.low.fail_at = Some(0);
    let before = g.regs.clone();
    assert_eq!(
        g.exec(&[0x8B, 0x08], MMIO),
        Err(Error::Bus(nvmm_assist::BusError(7)))
    );
    assert_eq!(g.regs, before);
    // A read-modify-write whose write fails: no flags, no RIP.
    g.mmio.low.fail_at = Some(1);
    g.mmio.low.log.clear();
    assert_eq!(
        g.exec(&[0x83, 0x00, 0x01], MMIO),
        Err(Error::Bus(nvmm_assist::BusError(7)))
    );
    assert_eq!(g.regs, before);
}

#[test]
fn the_instruction_is_fetched_when_the_exit_has_no_bytes() {
    let mut g = mmio_guest(0);
    set(&mut g, Gpr::Rcx, 0xBEEF);
    assert_eq!(g.exec_fetched(&[0x89, 0x08], MMIO), Ok(Outcome::Done));
    assert_eq!(g.mmio.low.u64_at(MMIO), 0xBEEF);
    assert_eq!(g.regs.rip, 0x2002);
}

#[test]
fn fetch_stops_at_a_page_edge_the_instruction_does_not_cross() {
    // The instruction ends exactly at the end of its page; the next page is
    // not mapped. The fetch must not touch it.
    let mut g = mmio_guest(0);
    set(&mut g, Gpr::Rcx, 0x77);
    let pte_next = 0x3000u64;
    let _ = pte_next;
    g.regs.rip = 0x7FFE; // 0x8000 is MMIO, not code: reading it would log.
    assert_eq!(g.exec_fetched(&[0x89, 0x08], MMIO), Ok(Outcome::Done));
    assert_eq!(g.mmio.high.log.len(), 0, "no fetch beyond the page");
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x77);
}

#[test]
fn an_undefined_opcode_is_ud_and_changes_nothing() {
    let mut g = mmio_guest(0);
    let before = g.regs.clone();
    // LOCK on a MOV is #UD.
    assert_eq!(
        g.exec(&[0xF0, 0x89, 0x08], MMIO),
        Err(Error::Exception(Exception::InvalidOpcode))
    );
    assert_eq!(g.regs, before);
}

#[test]
fn instructions_without_flag_results_leave_rflags_alone() {
    // (bytes, exit GPA): MOV, MOVZX, XCHG, SETcc, CMOVcc, STOS, LODS, MOVS,
    // PUSH, POP, NOT touch no flag at all.
    let cases: &[(&[u8], u64)] = &[
        (&[0x89, 0x08], MMIO),             // mov [rax],ecx
        (&[0x8B, 0x08], MMIO),             // mov ecx,[rax]
        (&[0x48, 0x0F, 0xB7, 0x08], MMIO), // movzx rcx,word [rax]
        (&[0x87, 0x08], MMIO),             // xchg [rax],ecx
        (&[0x0F, 0x9F, 0x00], MMIO),       // setg byte [rax]
        (&[0x0F, 0x4C, 0x08], MMIO),       // cmovl ecx,[rax]
        (&[0xAB], MMIO),                   // stosd (rdi = MMIO)
        (&[0xAD], MMIO),                   // lodsd (rsi = MMIO)
        (&[0xA5], MMIO),                   // movsd
        (&[0xFF, 0x30], MMIO),             // push qword [rax]
        (&[0x8F, 0x00], MMIO),             // pop qword [rax]
        (&[0xF7, 0x10], MMIO),             // not dword [rax]
    ];
    for &(bytes, gpa) in cases {
        meta_flags(
            || {
                let mut g = mmio_guest(0x1234);
                set(&mut g, Gpr::Rsi, MMIO);
                set(&mut g, Gpr::Rdi, MMIO);
                set(&mut g, Gpr::Rsp, 0x6000);
                g
            },
            bytes,
            gpa,
            0,
            0,
        );
    }
}

#[test]
fn sixteen_bit_rep_wraps_di_within_the_segment() {
    let mut g = Guest::real();
    set(&mut g, Gpr::Rdi, 0x7700_0000_0000_FFFE);
    set(&mut g, Gpr::Rcx, 4);
    set(&mut g, Gpr::Rax, 0xEE);
    // ES base 0: elements at 0xFFFE, 0xFFFF, then DI wraps to 0, 1.
    let calls = g.run_rep(&[0xF3, 0xAA], |r| r.gprs[7] & 0xFFFF, 10);
    assert!(calls >= 2, "the wrap ends a batch");
    assert_eq!(g.ram.get(0xFFFE, 2), &[0xEE, 0xEE]);
    assert_eq!(g.ram.get(0, 2), &[0xEE, 0xEE]);
    assert_eq!(get(&g, Gpr::Rdi), 0x7700_0000_0000_0002);
    assert_eq!(get(&g, Gpr::Rcx), 0);
}

#[test]
fn movs_elements_that_cross_from_ram_into_mmio() {
    // movsd with the source straddling RAM (0x7FFE) and MMIO (0x8000), and
    // the destination straddling MMIO (0x1FFE) and RAM (0x2000).
    let mut g = Guest::long64();
    g.ram.put(0x7FFE, &[0x11, 0x22]);
    g.mmio.high.put(0x8000, &[0x33, 0x44]);
    set(&mut g, Gpr::Rsi, 0x7FFE);
    set(&mut g, Gpr::Rdi, 0x1FFE);
    g.step(&[0xA5], 0x8000);
    assert_eq!(&g.mmio.low.mem[0xFFE..], &[0x11, 0x22]);
    assert_eq!(g.ram.get(0x2000, 2), &[0x33, 0x44]);
    assert_eq!(get(&g, Gpr::Rsi), 0x8002);
    assert_eq!(get(&g, Gpr::Rdi), 0x2002);
    // And MMIO (low) to MMIO (high), the other way than above.
    g.mmio.low.put(0x1500, b"ab");
    set(&mut g, Gpr::Rsi, 0x1500);
    set(&mut g, Gpr::Rdi, 0x9000);
    set(&mut g, Gpr::Rcx, 2);
    g.step(&[0xF3, 0xA4], 0x1500);
    assert_eq!(&g.mmio.high.mem[0x1000..0x1002], b"ab");
}

#[test]
fn rf_is_cleared_on_completion_and_set_when_a_rep_resumes() {
    let mut g = mmio_guest(0);
    g.regs.rflags = 2 | RF;
    g.step(&[0x89, 0x08], MMIO); // fast path
    assert_eq!(g.regs.rflags, 2);
    g.regs.rflags = 2 | RF;
    g.step(&[0x0F, 0xAB, 0x08], MMIO); // bts [rax],ecx: general path
    assert_eq!(g.regs.rflags & RF, 0);
    set(&mut g, Gpr::Rdi, MMIO2);
    set(&mut g, Gpr::Rcx, 5000);
    assert_eq!(g.exec(&[0xF3, 0xAA], MMIO2), Ok(Outcome::Resume));
    assert_eq!(g.regs.rflags & RF, RF);
}

// ---- segmentation through assist_mem ---------------------------------------

#[test]
fn segment_limits_and_types_fault_with_the_right_exception() {
    // Real mode: BP-based operands use SS (#SS beyond its limit), others DS
    // (#GP). Nothing is accessed, nothing changes.
    let mut g = Guest::real();
    g.regs.segments[2].limit = 0x0FFF; // SS
    g.regs.segments[3].limit = 0x0FFF; // DS
    set(&mut g, Gpr::Rbp, 0x1000);
    set(&mut g, Gpr::Rbx, 0x1000);
    let before = g.regs.clone();
    assert_eq!(
        g.exec(&[0x88, 0x46, 0x00], 0x1000), // mov [bp+0],al
        Err(Error::Exception(Exception::StackSegment(0)))
    );
    assert_eq!(
        g.exec(&[0x88, 0x07], 0x1000), // mov [bx],al
        Err(Error::Exception(Exception::GeneralProtection(0)))
    );
    // A ds: override on a BP-based operand uses DS.
    assert_eq!(
        g.exec(&[0x3E, 0x88, 0x46, 0x00], 0x1000), // mov ds:[bp+0],al
        Err(Error::Exception(Exception::GeneralProtection(0)))
    );
    assert_eq!(g.regs, before);
    // The last byte of a word beyond the limit faults too.
    set(&mut g, Gpr::Rbx, 0x0FFF);
    let before = g.regs.clone();
    assert_eq!(
        g.exec(&[0x89, 0x07], 0x0FFF), // mov [bx],ax
        Err(Error::Exception(Exception::GeneralProtection(0)))
    );
    assert_eq!(g.regs, before);
    assert_eq!(g.mmio.total_accesses(), 0);

    // 32-bit protected mode: a write through a read-only data segment is
    // #GP(0); a read through it works.
    let mut g = Guest::long64();
    g.regs = Registers::flat_protected32(TEST_VENDOR);
    g.regs.rip = 0x2000;
    g.regs.segments[3].attributes =
        nvmm_assist::SegmentAttributes::new(0x1, true, 0, true, false, false, true, true);
    set(&mut g, Gpr::Rbx, MMIO);
    assert_eq!(
        g.exec(&[0x89, 0x03], MMIO), // mov [ebx],eax
        Err(Error::Exception(Exception::GeneralProtection(0)))
    );
    g.step(&[0x8B, 0x03], MMIO); // mov eax,[ebx]
}

#[test]
fn instructions_outside_the_emulated_set_are_unsupported_with_their_bytes() {
    let mut g = mmio_guest(0);
    let before = g.regs.clone();
    // movss xmm0,[rax]: valid, not emulated.
    match g.exec(&[0xF3, 0x0F, 0x10, 0x00], MMIO) {
        Err(Error::Unsupported { bytes, len }) => {
            assert_eq!(
                &bytes[..usize::from(len)],
                &[0xF3, 0x0F, 0x10, 0x00][..usize::from(len)]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(g.regs, before);
    assert_eq!(g.mmio.total_accesses(), 0);
}

#[test]
fn an_instruction_fetch_exit_is_refused() {
    let mut g = mmio_guest(0);
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Execute,
        instruction: &[0x89, 0x08],
    };
    assert_eq!(
        assist_mem(&mut g.regs, &mut g.ram, &mut g.mmio, &exit),
        Err(Error::InconsistentExit)
    );
}

#[test]
fn movnti_and_movq_forms() {
    let mut g = mmio_guest(0);
    g.regs.xmm = Some([0; 16]);
    set(&mut g, Gpr::Rcx, 0x1122_3344_5566_7788);
    g.step(&[0x48, 0x0F, 0xC3, 0x08], MMIO); // movnti [rax],rcx
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x1122_3344_5566_7788);
    g.step(&[0x0F, 0xC3, 0x08], MMIO); // movnti [rax],ecx: 4 bytes
    assert_eq!(g.mmio.low.u64_at(MMIO), 0x1122_3344_5566_7788);
    assert_eq!(g.mmio.low.log.last().unwrap().data.len(), 4);
    // movq xmm3,[rax] (F3 0F 7E) zero-extends; movq [rax+8],xmm3 (66 0F D6).
    g.regs.xmm.as_mut().unwrap()[3] = u128::MAX;
    g.step(&[0xF3, 0x0F, 0x7E, 0x18], MMIO);
    assert_eq!(g.regs.xmm.unwrap()[3], 0x1122_3344_5566_7788);
    g.step(&[0x66, 0x0F, 0xD6, 0x58, 0x08], MMIO + 8);
    assert_eq!(g.mmio.low.u64_at(MMIO + 8), 0x1122_3344_5566_7788);
    // movq rcx,xmm... to memory: 66 REX.W 0F 7E /r with a memory operand.
    g.mmio.low.set_u64(MMIO + 16, 0);
    g.step(&[0x66, 0x48, 0x0F, 0x7E, 0x58, 0x10], MMIO + 16);
    assert_eq!(g.mmio.low.u64_at(MMIO + 16), 0x1122_3344_5566_7788);
    // movntdq to a misaligned address: #GP(0).
    set(&mut g, Gpr::Rax, MMIO + 8);
    assert_eq!(
        g.exec(&[0x66, 0x0F, 0xE7, 0x18], MMIO + 8),
        Err(Error::Exception(Exception::GeneralProtection(0)))
    );
}

#[test]
fn byte_cmpxchg_and_xadd_use_al_and_byte_registers() {
    let mut g = mmio_guest(0x40);
    set(&mut g, Gpr::Rbx, MMIO);
    set(&mut g, Gpr::Rax, 0xFFFF_FF40); // AL = 0x40 equals memory
    set(&mut g, Gpr::Rcx, 0x7F00); // CH = 0x7F
    g.step(&[0x0F, 0xB0, 0x2B], MMIO); // cmpxchg [rbx],ch
    assert_eq!(g.mmio.low.mem[0], 0x7F);
    assert_eq!(g.regs.rflags & ZF, ZF);
    // xadd [rbx],cl: 0x7F + 0x01 = 0x80 (OF SF AF), CL gets 0x7F.
    set(&mut g, Gpr::Rcx, 0x01);
    g.step(&[0x0F, 0xC0, 0x0B], MMIO);
    assert_eq!(g.mmio.low.mem[0], 0x80);
    assert_eq!(get(&g, Gpr::Rcx), 0x7F);
    assert_eq!(g.regs.rflags & STATUS, OF | SF | AF);
}
