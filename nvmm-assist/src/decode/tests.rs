//! Unit tests of the decoder. Encodings are from the Intel SDM volume 2
//! opcode tables and from NetBSD's tests/lib/libnvmm h_mem_assist guests.

use super::*;

const L64: CpuMode = CpuMode::Long64;
const P32: CpuMode = CpuMode::Protected32;
const P16: CpuMode = CpuMode::Protected16;
const REAL: CpuMode = CpuMode::Real;

fn ok(bytes: &[u8], mode: CpuMode) -> Instruction {
    match decode(bytes, mode) {
        Ok(i) => i,
        Err(e) => panic!("{bytes:02x?} in {mode:?}: {e:?}"),
    }
}

fn err(bytes: &[u8], mode: CpuMode) -> DecodeError {
    match decode(bytes, mode) {
        Ok(i) => panic!("{bytes:02x?} in {mode:?} decoded as {i:?}"),
        Err(e) => e,
    }
}

fn reg(gpr: Gpr, size: u8) -> Operand {
    Operand::Reg(Register {
        gpr,
        size,
        high_byte: false,
    })
}

fn high(gpr: Gpr) -> Operand {
    Operand::Reg(Register {
        gpr,
        size: 1,
        high_byte: true,
    })
}

fn mem(i: &Instruction) -> MemoryOperand {
    *i.memory_operand().expect("memory operand")
}

fn m(
    segment: Segment,
    base: Option<Gpr>,
    index: Option<Gpr>,
    scale: u8,
    disp: i64,
    size: u8,
) -> MemoryOperand {
    MemoryOperand {
        segment,
        base,
        index,
        scale,
        disp,
        rip_relative: false,
        size,
    }
}

// ---- MOV ----

#[test]
fn mov_store_64() {
    // 48 89 08: mov [rax], rcx
    let i = ok(&[0x48, 0x89, 0x08], L64);
    assert_eq!(i.len, 3);
    assert_eq!(i.mnemonic, Mnemonic::Mov);
    assert_eq!(i.operand_size, 8);
    assert_eq!(i.address_size, 8);
    assert_eq!(i.access, AccessClass::Write);
    assert_eq!(
        i.operands[0],
        Operand::Mem(m(Segment::Ds, Some(Gpr::Rax), None, 1, 0, 8))
    );
    assert_eq!(i.operands[1], reg(Gpr::Rcx, 8));
}

#[test]
fn mov_load_sizes_by_prefix() {
    // 8b 03: mov eax, [rbx]; 66 8b 03: mov ax, [rbx]; 8a 03: mov al, [rbx]
    assert_eq!(ok(&[0x8B, 0x03], L64).operand_size, 4);
    assert_eq!(ok(&[0x66, 0x8B, 0x03], L64).operand_size, 2);
    // REX.W wins over 66.
    assert_eq!(ok(&[0x66, 0x48, 0x8B, 0x03], L64).operand_size, 8);
    let i = ok(&[0x8A, 0x03], L64);
    assert_eq!(i.operand_size, 1);
    assert_eq!(i.access, AccessClass::Read);
    assert_eq!(i.operands[0], reg(Gpr::Rax, 1));
    // 16-bit code: 66 selects 32 bits.
    assert_eq!(ok(&[0x8B, 0x07], P16).operand_size, 2);
    assert_eq!(ok(&[0x66, 0x8B, 0x07], P16).operand_size, 4);
    assert_eq!(ok(&[0x66, 0x8B, 0x07], P32).operand_size, 2);
}

#[test]
fn high_byte_registers_versus_rex() {
    // 88 20: mov [rax], ah; 40 88 20: mov [rax], spl
    assert_eq!(ok(&[0x88, 0x20], L64).operands[1], high(Gpr::Rax));
    assert_eq!(ok(&[0x40, 0x88, 0x20], L64).operands[1], reg(Gpr::Rsp, 1));
    // 44 88 20: mov [rax], r12b
    assert_eq!(ok(&[0x44, 0x88, 0x20], L64).operands[1], reg(Gpr::R12, 1));
    // 0f b6 33 in 64-bit with REX: movzx esi, byte [rbx] (reg is a dword).
    assert_eq!(ok(&[0x0F, 0xB6, 0x33], L64).operands[0], reg(Gpr::Rsi, 4));
    // 8a 3b: mov bh, [rbx]
    assert_eq!(ok(&[0x8A, 0x3B], P32).operands[0], high(Gpr::Rbx));
}

#[test]
fn rex_before_legacy_prefix_is_dropped() {
    // 48 66 89 08: the REX is not directly before the opcode: mov [rax], cx.
    let i = ok(&[0x48, 0x66, 0x89, 0x08], L64);
    assert_eq!(i.operand_size, 2);
    assert_eq!(i.len, 4);
    // 41 26 89 08: REX.B dropped, base is rax not r8.
    assert_eq!(
        mem(&ok(&[0x41, 0x26, 0x89, 0x08], L64)).base,
        Some(Gpr::Rax)
    );
    // Two REX: the last counts.
    assert_eq!(
        mem(&ok(&[0x41, 0x48, 0x89, 0x08], L64)).base,
        Some(Gpr::Rax)
    );
    assert_eq!(ok(&[0x41, 0x48, 0x89, 0x08], L64).operand_size, 8);
}

#[test]
fn rex_bytes_outside_64_bit_are_inc_dec() {
    // 48 is DEC eAX outside 64-bit mode: not emulated.
    assert_eq!(err(&[0x48, 0x89, 0x08], P32), DecodeError::Unsupported);
}

#[test]
fn moffs_of_address_size() {
    // 64-bit: 8-byte offset. 48 a3 <8>: mov [0x1000], rax (NetBSD test6)
    let i = ok(&[0x48, 0xA3, 0, 0x10, 0, 0, 0, 0, 0, 0], L64);
    assert_eq!(i.len, 10);
    assert_eq!(i.operand_size, 8);
    assert_eq!(i.access, AccessClass::Write);
    assert_eq!(mem(&i).disp, 0x1000);
    assert_eq!(mem(&i).base, None);
    assert_eq!(i.operands[1], reg(Gpr::Rax, 8));
    // 67 a0 <4>: mov al, [0x1000] with a 32-bit offset.
    let i = ok(&[0x67, 0xA0, 0, 0x10, 0, 0], L64);
    assert_eq!(i.len, 6);
    assert_eq!(i.address_size, 4);
    assert_eq!(i.operands[0], reg(Gpr::Rax, 1));
    // 16-bit: 2-byte offset, with a segment override.
    let i = ok(&[0x26, 0xA1, 0x34, 0x12], REAL);
    assert_eq!(i.len, 4);
    assert_eq!(mem(&i).segment, Segment::Es);
    assert_eq!(mem(&i).disp, 0x1234);
    // A 32-bit offset is not sign-extended.
    let i = ok(&[0xA1, 0xFF, 0xFF, 0xFF, 0xFF], P32);
    assert_eq!(mem(&i).disp, 0xFFFF_FFFF);
}

#[test]
fn mov_immediates_sign_extend() {
    // 48 c7 00 ff ff ff ff: mov qword [rax], -1 (imm32 sign-extended).
    let i = ok(&[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF], L64);
    assert_eq!(i.operands[1], Operand::Imm(u64::MAX));
    assert_eq!(i.len, 7);
    // c7 00 imm32 in 32-bit: no extension needed.
    let i = ok(&[0xC7, 0x00, 0x78, 0x56, 0x34, 0x12], P32);
    assert_eq!(i.operands[1], Operand::Imm(0x1234_5678));
    // 66 c7 00 imm16.
    let i = ok(&[0x66, 0xC7, 0x00, 0x34, 0x12], L64);
    assert_eq!(i.len, 5);
    assert_eq!(i.operands[1], Operand::Imm(0x1234));
    // c6 00 ib.
    let i = ok(&[0xC6, 0x00, 0x80], L64);
    assert_eq!(i.operands[1], Operand::Imm(0x80));
    assert_eq!(i.operand_size, 1);
    // c6/c7 with reg != 0: #UD, except the XABORT/XBEGIN encodings.
    assert_eq!(err(&[0xC6, 0x08, 0], L64), DecodeError::Invalid);
    assert_eq!(err(&[0xC6, 0xF8, 0], L64), DecodeError::Unsupported);
}

#[test]
fn group1_immediates() {
    // 83 38 ff: cmp dword [rax], -1 -> imm 0xffffffff
    let i = ok(&[0x83, 0x38, 0xFF], L64);
    assert_eq!(i.mnemonic, Mnemonic::Cmp);
    assert_eq!(i.access, AccessClass::Read);
    assert_eq!(i.operands[1], Operand::Imm(0xFFFF_FFFF));
    // 66 83 38 ff: cmp word [rax], -1 -> 0xffff (libnvmm zero-extended it)
    assert_eq!(
        ok(&[0x66, 0x83, 0x38, 0xFF], L64).operands[1],
        Operand::Imm(0xFFFF)
    );
    // 48 83 08 80: or qword [rax], -128
    let i = ok(&[0x48, 0x83, 0x08, 0x80], L64);
    assert_eq!(i.mnemonic, Mnemonic::Or);
    assert_eq!(i.access, AccessClass::ReadWrite);
    assert_eq!(i.operands[1], Operand::Imm(0xFFFF_FFFF_FFFF_FF80));
    // 48 81 28 00 00 00 80: sub qword [rax], 0xffffffff80000000
    let i = ok(&[0x48, 0x81, 0x28, 0, 0, 0, 0x80], L64);
    assert_eq!(i.mnemonic, Mnemonic::Sub);
    assert_eq!(i.operands[1], Operand::Imm(0xFFFF_FFFF_8000_0000));
    // 80 /2 adc byte, 80 /3 sbb byte
    assert_eq!(ok(&[0x80, 0x10, 1], L64).mnemonic, Mnemonic::Adc);
    assert_eq!(ok(&[0x80, 0x18, 1], L64).mnemonic, Mnemonic::Sbb);
    // 82 is group 1 outside 64-bit mode only.
    assert_eq!(ok(&[0x82, 0x00, 1], P32).mnemonic, Mnemonic::Add);
    assert_eq!(err(&[0x82, 0x00, 1], L64), DecodeError::Invalid);
}

#[test]
fn alu_all_encodings() {
    use Mnemonic as M;
    let names = [
        M::Add,
        M::Or,
        M::Adc,
        M::Sbb,
        M::And,
        M::Sub,
        M::Xor,
        M::Cmp,
    ];
    for (n, &mn) in names.iter().enumerate() {
        let base = (n as u8) * 8;
        let i = ok(&[base, 0x08], L64); // op [rax], cl
        assert_eq!((i.mnemonic, i.operand_size), (mn, 1));
        let i = ok(&[base + 1, 0x08], L64); // op [rax], ecx
        assert_eq!((i.mnemonic, i.operand_size), (mn, 4));
        let want = if mn == Mnemonic::Cmp {
            AccessClass::Read
        } else {
            AccessClass::ReadWrite
        };
        assert_eq!(i.access, want);
        let i = ok(&[base + 3, 0x08], L64); // op ecx, [rax]
        assert_eq!(i.access, AccessClass::Read);
        assert_eq!(i.operands[0], reg(Gpr::Rcx, 4));
        let i = ok(&[base + 4, 0x7F], L64); // op al, 0x7f
        assert_eq!(
            i.operands,
            [reg(Gpr::Rax, 1), Operand::Imm(0x7F), Operand::None]
        );
        assert_eq!(i.access, AccessClass::None);
        let i = ok(&[0x48, base + 5, 0xFE, 0xFF, 0xFF, 0xFF], L64); // op rax, -2
        assert_eq!(i.operands[1], Operand::Imm(0xFFFF_FFFF_FFFF_FFFE));
        let i = ok(&[0x66, base + 5, 0x34, 0x12], P32); // op ax, 0x1234
        assert_eq!(i.len, 4);
    }
}

// ---- Addressing ----

#[test]
fn sib_and_displacements() {
    // 4a 89 04 d8 ... NetBSD test1: mov [rax + r11*8], rax (REX.WX)
    let i = ok(&[0x4A, 0x89, 0x04, 0xD8], L64);
    assert_eq!(
        mem(&i),
        m(Segment::Ds, Some(Gpr::Rax), Some(Gpr::R11), 8, 0, 8)
    );
    // 4c 8b 45 00: mov r8, [rbp + 0] -> SS default
    let i = ok(&[0x4C, 0x8B, 0x45, 0x00], L64);
    assert_eq!(i.operands[0], reg(Gpr::R8, 8));
    assert_eq!(mem(&i), m(Segment::Ss, Some(Gpr::Rbp), None, 1, 0, 8));
    // 8b 44 24 f8: mov eax, [rsp - 8]
    assert_eq!(
        mem(&ok(&[0x8B, 0x44, 0x24, 0xF8], L64)),
        m(Segment::Ss, Some(Gpr::Rsp), None, 1, -8, 4)
    );
    // 41 8b 45 00: mov eax, [r13]: DS, not SS.
    assert_eq!(
        mem(&ok(&[0x41, 0x8B, 0x45, 0x00], L64)).segment,
        Segment::Ds
    );
    // 8b 04 25 <disp32>: no base, no index (absolute).
    let i = ok(&[0x8B, 0x04, 0x25, 0x00, 0x00, 0x00, 0x80], L64);
    assert_eq!(mem(&i), m(Segment::Ds, None, None, 1, -0x8000_0000, 4));
    assert!(!mem(&i).rip_relative);
    // 42 8b 04 25 ...: REX.X makes index 100 mean r12.
    let i = ok(&[0x42, 0x8B, 0x04, 0x25, 0, 0, 0, 0], L64);
    assert_eq!(mem(&i).index, Some(Gpr::R12));
    // 8b 84 88 disp32: [rax + rcx*4 + disp32]
    let i = ok(&[0x8B, 0x84, 0x88, 0x10, 0, 0, 0], P32);
    assert_eq!(
        mem(&i),
        m(Segment::Ds, Some(Gpr::Rax), Some(Gpr::Rcx), 4, 0x10, 4)
    );
    assert_eq!(i.len, 7);
    // 8b 6c 25 00 in 32-bit: [ebp + disp8] via SIB -> SS
    assert_eq!(
        mem(&ok(&[0x8B, 0x6C, 0x25, 0x00], P32)).segment,
        Segment::Ss
    );
}

#[test]
fn rip_relative() {
    // 8b 05 disp32: mov eax, [rip + disp32]
    let i = ok(&[0x8B, 0x05, 0xF0, 0xFF, 0xFF, 0xFF], L64);
    let a = mem(&i);
    assert!(a.rip_relative);
    assert_eq!(a.base, None);
    assert_eq!(a.disp, -16);
    assert_eq!(i.len, 6);
    // The same bytes in 32-bit mode: [disp32].
    let a = mem(&ok(&[0x8B, 0x05, 0xF0, 0xFF, 0xFF, 0xFF], P32));
    assert!(!a.rip_relative);
    assert_eq!(a.disp, -16);
    // RIP-relative with an immediate after the displacement:
    // 81 0d disp32 imm32: or dword [rip + disp], imm32
    let i = ok(&[0x81, 0x0D, 1, 0, 0, 0, 0x78, 0x56, 0x34, 0x12], L64);
    assert_eq!(i.len, 10);
    assert!(mem(&i).rip_relative);
    assert_eq!(i.operands[1], Operand::Imm(0x1234_5678));
}

#[test]
fn sixteen_bit_addressing_netbsd_vectors() {
    // 16bit test1: 88 17: mov [bx], dl
    let i = ok(&[0x88, 0x17], REAL);
    assert_eq!(i.address_size, 2);
    assert_eq!(mem(&i), m(Segment::Ds, Some(Gpr::Rbx), None, 1, 0, 1));
    assert_eq!(i.operands[1], reg(Gpr::Rdx, 1));
    // test2: 89 11: mov [bx + di], dx
    assert_eq!(
        mem(&ok(&[0x89, 0x11], REAL)),
        m(Segment::Ds, Some(Gpr::Rbx), Some(Gpr::Rdi), 1, 0, 2)
    );
    // test3: 89 52 fe: mov [bp + si - 2], dx -> SS
    let i = ok(&[0x89, 0x52, 0xFE], REAL);
    assert_eq!(
        mem(&i),
        m(Segment::Ss, Some(Gpr::Rbp), Some(Gpr::Rsi), 1, -2, 2)
    );
    // test4: 66 21 42 04: and [bp + si + 4], eax
    let i = ok(&[0x66, 0x21, 0x42, 0x04], REAL);
    assert_eq!(
        (i.mnemonic, i.operand_size, i.address_size),
        (Mnemonic::And, 4, 2)
    );
    // test4: 67 09 5c 35 04: or [ebp + esi + 4], bx (32-bit addressing in 16-bit code)
    let i = ok(&[0x67, 0x09, 0x5C, 0x35, 0x04], REAL);
    assert_eq!((i.operand_size, i.address_size, i.len), (2, 4, 5));
    assert_eq!(
        mem(&i),
        m(Segment::Ss, Some(Gpr::Rbp), Some(Gpr::Rsi), 1, 4, 2)
    );
    // test5: c6 06 34 12 12: mov byte [0x1234], 0x12 (disp16 only)
    let i = ok(&[0xC6, 0x06, 0x34, 0x12, 0x12], REAL);
    assert_eq!(i.len, 5);
    assert_eq!(mem(&i), m(Segment::Ds, None, None, 1, 0x1234, 1));
    assert_eq!(i.operands[1], Operand::Imm(0x12));
    // test6: 87 5e 00: xchg [bp], bx; 86 4b fc: xchg [bp + di - 4], cl
    let i = ok(&[0x87, 0x5E, 0x00], REAL);
    assert_eq!(
        (i.mnemonic, i.access),
        (Mnemonic::Xchg, AccessClass::ReadWrite)
    );
    assert_eq!(mem(&i).segment, Segment::Ss);
    let i = ok(&[0x86, 0x4B, 0xFC], REAL);
    assert_eq!(
        mem(&i),
        m(Segment::Ss, Some(Gpr::Rbp), Some(Gpr::Rdi), 1, -4, 1)
    );
    // 8b 86 00 80: mov ax, [bp - 0x8000] (disp16 sign-extended)
    assert_eq!(mem(&ok(&[0x8B, 0x86, 0x00, 0x80], P16)).disp, -0x8000);
    // A segment override replaces SS.
    assert_eq!(
        mem(&ok(&[0x3E, 0x89, 0x52, 0xFE], REAL)).segment,
        Segment::Ds
    );
}

#[test]
fn segment_overrides() {
    // The last override wins.
    let i = ok(&[0x26, 0x2E, 0x64, 0x89, 0x08], P32);
    assert_eq!(mem(&i).segment, Segment::Fs);
    assert_eq!(i.segment_override, Some(Segment::Fs));
    let i = ok(&[0x64, 0x26, 0x89, 0x08], P32);
    assert_eq!(mem(&i).segment, Segment::Es);
    // 64-bit mode: ES/CS/SS/DS overrides are ignored, FS/GS apply.
    let i = ok(&[0x26, 0x89, 0x08], L64);
    assert_eq!(mem(&i).segment, Segment::Ds);
    assert_eq!(i.segment_override, None);
    let i = ok(&[0x65, 0x26, 0x89, 0x08], L64);
    assert_eq!(mem(&i).segment, Segment::Gs);
    let i = ok(&[0x36, 0x89, 0x45, 0x00], L64);
    assert_eq!(mem(&i).segment, Segment::Ss);
}

#[test]
fn address_size_override() {
    // 67 48 c7 00 ff 1f 00 00: mov qword [eax], 0x1fff (NetBSD test5)
    let i = ok(&[0x67, 0x48, 0xC7, 0x00, 0xFF, 0x1F, 0, 0], L64);
    assert_eq!((i.address_size, i.operand_size, i.len), (4, 8, 8));
    // 67 in 32-bit code gives 16-bit addressing: 67 8b 07 = mov eax, [bx]
    let i = ok(&[0x67, 0x8B, 0x07], P32);
    assert_eq!(i.address_size, 2);
    assert_eq!(mem(&i).base, Some(Gpr::Rbx));
    // 67 with RIP-relative: EIP-relative.
    let i = ok(&[0x67, 0x8B, 0x05, 0, 0, 0, 0], L64);
    assert!(mem(&i).rip_relative);
    assert_eq!(i.address_size, 4);
}

// ---- Extensions ----

#[test]
fn movzx_movsx_movsxd() {
    // 0f b6 18: movzx ebx, byte [rax] (NetBSD test10)
    let i = ok(&[0x0F, 0xB6, 0x18], L64);
    assert_eq!(
        (i.mnemonic, i.operand_size, mem(&i).size),
        (Mnemonic::Movzx, 4, 1)
    );
    // 48 0f b7 18: movzx rbx, word [rax] (test11)
    let i = ok(&[0x48, 0x0F, 0xB7, 0x18], L64);
    assert_eq!((i.operand_size, mem(&i).size), (8, 2));
    assert_eq!(i.operands[0], reg(Gpr::Rbx, 8));
    // 66 0f be 30: movsx si, byte [rax]
    let i = ok(&[0x66, 0x0F, 0xBE, 0x30], L64);
    assert_eq!(
        (i.mnemonic, i.operand_size, mem(&i).size),
        (Mnemonic::Movsx, 2, 1)
    );
    assert_eq!(i.operands[0], reg(Gpr::Rsi, 2));
    // 0f bf 30 in 16-bit code: movsx si, word [bx+si]
    let i = ok(&[0x0F, 0xBF, 0x30], REAL);
    assert_eq!((i.operand_size, mem(&i).size), (2, 2));
    // 48 63 08: movsxd rcx, dword [rax]
    let i = ok(&[0x48, 0x63, 0x08], L64);
    assert_eq!(
        (i.mnemonic, i.operand_size, mem(&i).size),
        (Mnemonic::Movsxd, 8, 4)
    );
    // 63 08 outside 64-bit mode is ARPL.
    assert_eq!(err(&[0x63, 0x08], P32), DecodeError::Unsupported);
    // movzx into SI/DI without REX reads a byte register, not DH/BH as the
    // destination: 0f b6 f4 = movzx esi, ah
    let i = ok(&[0x0F, 0xB6, 0xF4], L64);
    assert_eq!(
        i.operands,
        [reg(Gpr::Rsi, 4), high(Gpr::Rax), Operand::None]
    );
}

// ---- Group 3/4/5, XCHG, XADD, CMPXCHG, BT ----

#[test]
fn unary_and_test() {
    // f6 00 0f: test byte [rax], 0x0f ; f7 08: test /1 alias
    let i = ok(&[0xF6, 0x00, 0x0F], L64);
    assert_eq!(
        (i.mnemonic, i.access, i.len),
        (Mnemonic::Test, AccessClass::Read, 3)
    );
    let i = ok(&[0x48, 0xF7, 0x08, 0x00, 0x00, 0x00, 0x80], L64);
    assert_eq!(i.operands[1], Operand::Imm(0xFFFF_FFFF_8000_0000));
    assert_eq!(ok(&[0xF6, 0x10], L64).mnemonic, Mnemonic::Not);
    assert_eq!(ok(&[0xF7, 0x18], L64).mnemonic, Mnemonic::Neg);
    assert_eq!(ok(&[0xF7, 0x18], L64).access, AccessClass::ReadWrite);
    assert_eq!(err(&[0xF6, 0x20], L64), DecodeError::Unsupported); // MUL
    assert_eq!(ok(&[0xFE, 0x00], L64).mnemonic, Mnemonic::Inc);
    assert_eq!(ok(&[0x48, 0xFF, 0x08], L64).mnemonic, Mnemonic::Dec);
    assert_eq!(err(&[0xFE, 0x10], L64), DecodeError::Invalid);
    assert_eq!(err(&[0xFF, 0x38], L64), DecodeError::Invalid);
    assert_eq!(err(&[0xFF, 0xD8], L64), DecodeError::Invalid); // callf reg
    // 84 08: test [rax], cl
    let i = ok(&[0x84, 0x08], L64);
    assert_eq!((i.mnemonic, i.access), (Mnemonic::Test, AccessClass::Read));
}

#[test]
fn push_pop_memory() {
    // ff 30: push qword [rax] in 64-bit mode; 66 ff 30: push word
    let i = ok(&[0xFF, 0x30], L64);
    assert_eq!(
        (i.mnemonic, i.operand_size, i.access),
        (Mnemonic::Push, 8, AccessClass::Read)
    );
    assert_eq!(ok(&[0x66, 0xFF, 0x30], L64).operand_size, 2);
    assert_eq!(ok(&[0xFF, 0x30], P32).operand_size, 4);
    assert_eq!(ok(&[0xFF, 0x30], REAL).operand_size, 2);
    // 8f 00: pop qword [rax]
    let i = ok(&[0x8F, 0x00], L64);
    assert_eq!(
        (i.mnemonic, i.operand_size, i.access),
        (Mnemonic::Pop, 8, AccessClass::Write)
    );
    assert_eq!(ok(&[0x66, 0x8F, 0x00], P32).operand_size, 2);
    // 8f /4 with a map field below 8 is #UD; with 8 or more it is XOP.
    assert_eq!(err(&[0x8F, 0x20], L64), DecodeError::Invalid);
    assert_eq!(
        err(&[0x8F, 0xE8, 0x78, 0xC2, 0xC0, 0], L64),
        DecodeError::Unsupported
    );
}

#[test]
fn exchange_family() {
    // 0f c1 08: xadd [rax], ecx
    let i = ok(&[0x0F, 0xC1, 0x08], L64);
    assert_eq!(
        (i.mnemonic, i.access),
        (Mnemonic::Xadd, AccessClass::ReadWrite)
    );
    // f0 0f b1 08: lock cmpxchg [rax], ecx (eax implicit)
    let i = ok(&[0xF0, 0x0F, 0xB1, 0x08], L64);
    assert!(i.lock);
    assert_eq!(i.operands[2], reg(Gpr::Rax, 4));
    // 0f c7 08: cmpxchg8b [rax]; 48 0f c7 08: cmpxchg16b
    let i = ok(&[0x0F, 0xC7, 0x08], L64);
    assert_eq!((i.mnemonic, mem(&i).size), (Mnemonic::Cmpxchg8b, 8));
    let i = ok(&[0x48, 0x0F, 0xC7, 0x08], L64);
    assert_eq!((i.mnemonic, mem(&i).size), (Mnemonic::Cmpxchg16b, 16));
    assert_eq!(err(&[0x0F, 0xC7, 0xC8], L64), DecodeError::Invalid);
    // NetBSD test15: 48 87 18 xchg [rax], rbx
    let i = ok(&[0x48, 0x87, 0x18], L64);
    assert_eq!((i.mnemonic, i.operand_size), (Mnemonic::Xchg, 8));
}

#[test]
fn bit_tests() {
    // 0f a3 08: bt [rax], ecx ; 0f ab: bts ; 0f b3: btr ; 0f bb: btc
    let i = ok(&[0x0F, 0xA3, 0x08], L64);
    assert_eq!((i.mnemonic, i.access), (Mnemonic::Bt, AccessClass::Read));
    assert_eq!(ok(&[0x0F, 0xAB, 0x08], L64).access, AccessClass::ReadWrite);
    assert_eq!(ok(&[0x0F, 0xB3, 0x08], L64).mnemonic, Mnemonic::Btr);
    assert_eq!(ok(&[0x0F, 0xBB, 0x08], L64).mnemonic, Mnemonic::Btc);
    // 66 0f ba 20 ff: bt word [rax], 0xff (imm not sign-extended)
    let i = ok(&[0x66, 0x0F, 0xBA, 0x20, 0xFF], L64);
    assert_eq!((i.mnemonic, i.operand_size, i.len), (Mnemonic::Bt, 2, 5));
    assert_eq!(i.operands[1], Operand::Imm(0xFF));
    assert_eq!(ok(&[0x0F, 0xBA, 0x38, 1], L64).mnemonic, Mnemonic::Btc);
    assert_eq!(err(&[0x0F, 0xBA, 0x18, 1], L64), DecodeError::Invalid);
}

#[test]
fn setcc_cmovcc() {
    // 0f 94 00: sete [rax]
    let i = ok(&[0x0F, 0x94, 0x00], L64);
    assert_eq!(
        (i.mnemonic, i.condition, i.access),
        (Mnemonic::Setcc, Some(Condition(4)), AccessClass::Write)
    );
    assert_eq!(mem(&i).size, 1);
    // 48 0f 4f 00: cmovg rax, [rax]
    let i = ok(&[0x48, 0x0F, 0x4F, 0x00], L64);
    assert_eq!(
        (i.mnemonic, i.condition, i.access),
        (Mnemonic::Cmovcc, Some(Condition(15)), AccessClass::Read)
    );
}

// ---- LOCK ----

#[test]
fn lock_rules() {
    // lock add [rax], ecx: fine. lock add ecx, [rax]: #UD (memory is the source).
    assert!(ok(&[0xF0, 0x01, 0x08], L64).lock);
    assert_eq!(err(&[0xF0, 0x03, 0x08], L64), DecodeError::Invalid);
    // lock on a register destination.
    assert_eq!(err(&[0xF0, 0x01, 0xC8], L64), DecodeError::Invalid);
    // lock mov, lock cmp, lock test, lock bt: #UD.
    assert_eq!(err(&[0xF0, 0x89, 0x08], L64), DecodeError::Invalid);
    assert_eq!(err(&[0xF0, 0x39, 0x08], L64), DecodeError::Invalid);
    assert_eq!(err(&[0xF0, 0x85, 0x08], L64), DecodeError::Invalid);
    assert_eq!(err(&[0xF0, 0x0F, 0xA3, 0x08], L64), DecodeError::Invalid);
    assert_eq!(err(&[0xF0, 0x83, 0x38, 1], L64), DecodeError::Invalid);
    // lock bts imm, lock xchg, lock inc, lock not, lock 83 /0: fine.
    assert!(ok(&[0xF0, 0x0F, 0xBA, 0x28, 1], L64).lock);
    assert!(ok(&[0xF0, 0x87, 0x08], L64).lock);
    assert!(ok(&[0xF0, 0xFF, 0x00], L64).lock);
    assert!(ok(&[0xF0, 0xF6, 0x10], L64).lock);
    assert!(ok(&[0xF0, 0x83, 0x00, 1], L64).lock);
    // lock on a string instruction.
    assert_eq!(err(&[0xF0, 0xA4], L64), DecodeError::Invalid);
}

// ---- Strings ----

#[test]
fn string_instructions() {
    // A string operand: `segment:[gpr]` of `size` bytes.
    let at = |segment, gpr, size| Operand::Mem(m(segment, Some(gpr), None, 1, 0, size));
    // f3 a4: rep movsb
    let i = ok(&[0xF3, 0xA4], L64);
    assert_eq!(
        (i.mnemonic, i.rep, i.operand_size),
        (Mnemonic::Movs, Some(RepPrefix::Rep), 1)
    );
    assert_eq!(i.operands[0], at(Segment::Es, Gpr::Rdi, 1));
    assert_eq!(i.operands[1], at(Segment::Ds, Gpr::Rsi, 1));
    // The source segment can be overridden, the destination cannot.
    let i = ok(&[0x26, 0x66, 0xA5], P32);
    assert_eq!(i.operands[0], at(Segment::Es, Gpr::Rdi, 2));
    assert_eq!(i.operands[1], at(Segment::Es, Gpr::Rsi, 2));
    let i = ok(&[0x64, 0xAB], P32);
    assert_eq!(i.operands[0], at(Segment::Es, Gpr::Rdi, 4));
    // f3 48 a7: repe cmpsq (NetBSD test17)
    let i = ok(&[0xF3, 0x48, 0xA7], L64);
    assert_eq!(
        (i.mnemonic, i.operand_size, i.access),
        (Mnemonic::Cmps, 8, AccessClass::Read)
    );
    // f2 ae: repne scasb
    let i = ok(&[0xF2, 0xAE], L64);
    assert_eq!(
        (i.mnemonic, i.rep),
        (Mnemonic::Scas, Some(RepPrefix::Repne))
    );
    assert_eq!(i.operands[0], reg(Gpr::Rax, 1));
    // 66 ab: stosw ; ac: lodsb
    let i = ok(&[0x66, 0xAB], L64);
    assert_eq!(
        (i.mnemonic, i.operand_size, i.access),
        (Mnemonic::Stos, 2, AccessClass::Write)
    );
    assert_eq!(ok(&[0xAC], L64).access, AccessClass::Read);
    // 67 a4: movsb with 32-bit rSI/rDI
    assert_eq!(ok(&[0x67, 0xA4], L64).address_size, 4);
    // REP is not reported on non-string instructions (DragonFly test17).
    assert_eq!(ok(&[0xF3, 0x48, 0x89, 0x08], L64).rep, None);
}

#[test]
fn port_io() {
    // e4 7b: in al, 123 ; e5: in eax ; 66 e5: in ax ; 48 e5: still eax
    let i = ok(&[0xE4, 0x7B], L64);
    assert_eq!(
        i.operands,
        [reg(Gpr::Rax, 1), Operand::Imm(123), Operand::None]
    );
    assert_eq!(i.access, AccessClass::None);
    assert_eq!(ok(&[0xE5, 1], L64).operand_size, 4);
    assert_eq!(ok(&[0x66, 0xE5, 1], L64).operand_size, 2);
    assert_eq!(ok(&[0x48, 0xE5, 1], L64).operand_size, 4);
    assert_eq!(ok(&[0xE5, 1], REAL).operand_size, 2);
    // ee: out dx, al
    let i = ok(&[0xEE], L64);
    assert_eq!(
        (i.mnemonic, i.operands[0]),
        (Mnemonic::Out, reg(Gpr::Rdx, 2))
    );
    // f3 6c: rep insb (ES:rDI); f3 66 6f: rep outsw (DS:rSI, overridable)
    let i = ok(&[0xF3, 0x6C], L64);
    assert_eq!(
        (i.mnemonic, i.rep, i.access),
        (Mnemonic::Ins, Some(RepPrefix::Rep), AccessClass::Write)
    );
    let i = ok(&[0x2E, 0xF3, 0x66, 0x6F], P32);
    assert_eq!((i.mnemonic, i.operand_size), (Mnemonic::Outs, 2));
    assert_eq!(mem(&i).segment, Segment::Cs);
}

// ---- SSE ----

#[test]
fn sse_moves() {
    // 66 0f 6e 00: movd xmm0, [rax]; 66 48 0f 6e 00: movq xmm0, [rax]
    let i = ok(&[0x66, 0x0F, 0x6E, 0x00], L64);
    assert_eq!(
        (i.mnemonic, i.operand_size, i.access),
        (Mnemonic::Movd, 4, AccessClass::Read)
    );
    assert_eq!(i.operands[0], Operand::Xmm(0));
    let i = ok(&[0x66, 0x48, 0x0F, 0x6E, 0x00], L64);
    assert_eq!((i.mnemonic, mem(&i).size), (Mnemonic::Movq, 8));
    // 66 44 0f 7e 38: movd [rax], xmm15
    let i = ok(&[0x66, 0x44, 0x0F, 0x7E, 0x38], L64);
    assert_eq!((i.mnemonic, i.access), (Mnemonic::Movd, AccessClass::Write));
    assert_eq!(i.operands[1], Operand::Xmm(15));
    // f3 0f 7e 00: movq xmm0, [rax]; 66 0f d6 00: movq [rax], xmm0
    assert_eq!(ok(&[0xF3, 0x0F, 0x7E, 0x00], L64).mnemonic, Mnemonic::Movq);
    assert_eq!(
        ok(&[0x66, 0x0F, 0xD6, 0x00], L64).access,
        AccessClass::Write
    );
    let moves: [(&[u8], Mnemonic); 7] = [
        // movdqa/movdqu, movaps/movups/movapd/movupd
        (&[0x66, 0x0F, 0x6F, 0x00], Mnemonic::Movdqa),
        (&[0xF3, 0x0F, 0x7F, 0x00], Mnemonic::Movdqu),
        (&[0x0F, 0x28, 0x00], Mnemonic::Movaps),
        (&[0x0F, 0x11, 0x00], Mnemonic::Movups),
        (&[0x66, 0x0F, 0x29, 0x00], Mnemonic::Movapd),
        (&[0x66, 0x0F, 0x10, 0x00], Mnemonic::Movupd),
        // F3 beats 66 as the mandatory prefix.
        (&[0x66, 0xF3, 0x0F, 0x6F, 0x00], Mnemonic::Movdqu),
    ];
    for (bytes, want) in moves {
        assert_eq!(ok(bytes, L64).mnemonic, want, "{bytes:02x?}");
    }
    // Non-temporal stores are memory-only.
    assert_eq!(
        ok(&[0x66, 0x0F, 0xE7, 0x00], L64).mnemonic,
        Mnemonic::Movntdq
    );
    assert_eq!(ok(&[0x0F, 0x2B, 0x00], L64).mnemonic, Mnemonic::Movntps);
    assert_eq!(
        ok(&[0x66, 0x0F, 0x2B, 0x00], L64).mnemonic,
        Mnemonic::Movntpd
    );
    assert_eq!(err(&[0x0F, 0x2B, 0xC0], L64), DecodeError::Invalid);
    let i = ok(&[0x48, 0x0F, 0xC3, 0x08], L64);
    assert_eq!((i.mnemonic, i.operand_size), (Mnemonic::Movnti, 8));
    assert_eq!(err(&[0x0F, 0xC3, 0xC8], L64), DecodeError::Invalid);
    // MMX forms and MOVSS are valid but not emulated.
    assert_eq!(err(&[0x0F, 0x6F, 0x00], L64), DecodeError::Unsupported);
    assert_eq!(
        err(&[0xF3, 0x0F, 0x10, 0x00], L64),
        DecodeError::Unsupported
    );
    // 16-byte access sizes.
    assert_eq!(mem(&ok(&[0x0F, 0x29, 0x00], L64)).size, 16);
}

// ---- Errors ----

#[test]
fn length_limit_and_truncation() {
    // 14 prefixes + 89 08 = 16 bytes: too long.
    let mut b = [0x66u8; 16];
    b[14] = 0x89;
    b[15] = 0x08;
    assert_eq!(err(&b, L64), DecodeError::TooLong);
    // 13 prefixes + 89 08 = 15 bytes: fine.
    assert_eq!(ok(&b[1..], L64).len, 15);
    // 15 prefixes and nothing else.
    assert_eq!(err(&[0x3E; 15], P32), DecodeError::TooLong);
    // An immediate that would end past byte 15.
    let mut b = [0x66u8; 15];
    b[9] = 0xC7;
    b[10] = 0x00;
    assert_eq!(err(&b[..11], L64), DecodeError::Truncated);
    let mut b = [0x3Eu8; 15];
    b[9] = 0xC7;
    b[10] = 0x80;
    assert_eq!(err(&b, P32), DecodeError::TooLong);
    // Truncations.
    assert_eq!(err(&[], L64), DecodeError::Truncated);
    assert_eq!(err(&[0x66], L64), DecodeError::Truncated);
    assert_eq!(err(&[0x0F], L64), DecodeError::Truncated);
    assert_eq!(err(&[0x89], L64), DecodeError::Truncated);
    assert_eq!(err(&[0x89, 0x80, 0, 0], L64), DecodeError::Truncated);
    assert_eq!(err(&[0xA1, 0, 0, 0, 0], L64), DecodeError::Truncated);
    // Bytes after the instruction are ignored.
    assert_eq!(ok(&[0x89, 0x08, 0xFF, 0xFF], L64).len, 2);
}

#[test]
fn vex_evex_and_les() {
    // c5 f8 10 00: vmovups xmm0, [rax] in 64-bit mode: not emulated.
    assert_eq!(
        err(&[0xC5, 0xF8, 0x10, 0x00], L64),
        DecodeError::Unsupported
    );
    // With a 66 or REX prefix before it: #UD.
    assert_eq!(
        err(&[0x66, 0xC5, 0xF8, 0x10, 0x00], L64),
        DecodeError::Invalid
    );
    assert_eq!(
        err(&[0x40, 0xC5, 0xF8, 0x10, 0x00], L64),
        DecodeError::Invalid
    );
    // Outside 64-bit mode, mod != 11 is LES/LDS.
    assert_eq!(err(&[0xC4, 0x00], P32), DecodeError::Unsupported);
    assert_eq!(
        err(&[0xC5, 0xF8, 0x10, 0x00], P32),
        DecodeError::Unsupported
    );
    // In real mode the register form is #UD (no VEX there).
    assert_eq!(err(&[0xC5, 0xF8, 0x10, 0x00], REAL), DecodeError::Invalid);
    assert_eq!(err(&[0xC4, 0x00], REAL), DecodeError::Unsupported);
    // Opcodes removed in 64-bit mode.
    assert_eq!(err(&[0x06], L64), DecodeError::Invalid);
    assert_eq!(err(&[0x06], P32), DecodeError::Unsupported);
}

#[test]
fn every_mode_every_short_input_is_safe() {
    // Every 2-byte string followed by a fixed tail, and every prefix of it.
    for mode in crate::testutil::MODES {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let bytes = [a, b, 0x24, 0x80, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
                for n in 0..=bytes.len() {
                    if let Ok(i) = decode(&bytes[..n], mode) {
                        let len = usize::from(i.len);
                        assert!(len <= n && (1..=15).contains(&len));
                        // Every shorter prefix asks for more bytes.
                        if n == len {
                            for k in 0..len {
                                assert_eq!(decode(&bytes[..k], mode), Err(DecodeError::Truncated));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The 64-bit instructions of NetBSD's h_mem_assist guests (tests 1-17, as
/// GNU as encodes their AT&T source), plus the DragonFly additions:
/// (bytes, mnemonic, operand size, length, access).
#[test]
fn netbsd_h_mem_assist_64bit_encodings() {
    use AccessClass::{Read as R, ReadWrite as RW, Write as W};
    use Mnemonic as M;
    #[rustfmt::skip]
    let cases: &[(&[u8], Mnemonic, u8, u8, AccessClass)] = &[
        (&[0x48, 0xC7, 0x00, 0x00, 0x10, 0x00, 0x00], M::Mov, 8, 7, W), // movq $0x1000,(%rax)
        (&[0x4A, 0xC7, 0x04, 0xD8, 0x00, 0x20, 0x00, 0x00], M::Mov, 8, 8, W), // movq $0x2000,(%rax,%r11,8)
        (&[0x4C, 0x8B, 0x45, 0x00], M::Mov, 8, 4, R), // movq (%rbp),%r8
        (&[0x48, 0x8B, 0x5D, 0x08], M::Mov, 8, 4, R), // movq 8(%rbp),%rbx
        (&[0x4C, 0x89, 0x45, 0x00], M::Mov, 8, 4, W), // movq %r8,(%rbp)
        (&[0xC6, 0x45, 0x00, 0x04], M::Mov, 1, 4, W), // movb $4,(%rbp)
        (&[0x08, 0x18], M::Or, 1, 2, RW),              // orb %bl,(%rax)
        (&[0x66, 0x09, 0x08], M::Or, 2, 3, RW),        // orw %cx,(%rax)
        (&[0x48, 0x0B, 0x08], M::Or, 8, 3, R),         // orq (%rax),%rcx
        (&[0x48, 0x21, 0x18], M::And, 8, 3, RW),       // andq %rbx,(%rax)
        (&[0x20, 0x08], M::And, 1, 2, RW),             // andb %cl,(%rax)
        (&[0x48, 0x31, 0x18], M::Xor, 8, 3, RW),       // xorq %rbx,(%rax)
        (&[0x66, 0x31, 0x08], M::Xor, 2, 3, RW),       // xorw %cx,(%rax)
        (&[0x67, 0x48, 0xC7, 0x00, 0xFF, 0x1F, 0x00, 0x00], M::Mov, 8, 8, W), // movq $0x1fff,(%eax)
        (&[0x67, 0xC6, 0x04, 0x18, 0x00], M::Mov, 1, 5, W), // movb $0,(%eax,%ebx,1)
        (&[0x48, 0xA3, 0x00, 0x10, 0, 0, 0, 0, 0, 0], M::Mov, 8, 10, W), // movabs %rax,0x1000
        (&[0xA0, 0x00, 0x10, 0, 0, 0, 0, 0, 0], M::Mov, 1, 9, R), // movabs 0x1000,%al
        (&[0xA2, 0x00, 0x10, 0, 0, 0, 0, 0, 0], M::Mov, 1, 9, W), // movabs %al,0x1000
        (&[0xF3, 0xAA], M::Stos, 1, 2, W),             // rep stosb
        (&[0x66, 0xAB], M::Stos, 2, 2, W),             // stosw
        (&[0x66, 0xAD], M::Lods, 2, 2, R),             // lodsw
        (&[0xAC], M::Lods, 1, 1, R),                   // lodsb
        (&[0xF3, 0xA4], M::Movs, 1, 2, RW),            // rep movsb
        (&[0xF3, 0x66, 0xA5], M::Movs, 2, 3, RW),      // rep movsw
        (&[0x0F, 0xB6, 0x18], M::Movzx, 4, 3, R),      // movzbl (%rax),%ebx
        (&[0x48, 0x0F, 0xB7, 0x18], M::Movzx, 8, 4, R), // movzwq (%rax),%rbx
        (&[0x80, 0x38, 0x78], M::Cmp, 1, 3, R),        // cmpb $0x78,(%rax)
        (&[0x66, 0x81, 0x38, 0x78, 0x56], M::Cmp, 2, 5, R), // cmpw $0x5678,(%rax)
        (&[0x81, 0x38, 0x78, 0x56, 0x34, 0xF2], M::Cmp, 4, 6, R), // cmpl $0xf2345678,(%rax)
        (&[0x48, 0x81, 0x38, 0x78, 0x56, 0x34, 0xF2], M::Cmp, 8, 7, R), // cmpq $-0xdcba988,(%rax)
        (&[0x28, 0x08], M::Sub, 1, 2, RW),             // subb %cl,(%rax)
        (&[0x66, 0x29, 0x08], M::Sub, 2, 3, RW),       // subw %cx,(%rax)
        (&[0x48, 0x2B, 0x08], M::Sub, 8, 3, R),        // subq (%rax),%rcx
        (&[0xF6, 0x00, 0x0F], M::Test, 1, 3, R),       // testb $0x0f,(%rax)
        (&[0x66, 0xF7, 0x00, 0x00, 0x0F], M::Test, 2, 5, R), // testw $0x0f00,(%rax)
        (&[0xF7, 0x00, 0x00, 0xA0, 0x00, 0x00], M::Test, 4, 6, R), // testl $0xa000,(%rax)
        (&[0x48, 0x87, 0x18], M::Xchg, 8, 3, RW),      // xchgq %rbx,(%rax)
        (&[0x66, 0x87, 0x08], M::Xchg, 2, 3, RW),      // xchgw (%rax),%cx
        (&[0x86, 0x10], M::Xchg, 1, 2, RW),            // xchgb %dl,(%rax)
        (&[0x67, 0x48, 0x87, 0x18], M::Xchg, 8, 4, RW), // xchgq %rbx,(%eax)
        (&[0xF3, 0x48, 0xA7], M::Cmps, 8, 3, R),       // repe cmpsq
        (&[0x8B, 0x05, 0x00, 0x10, 0x00, 0x00], M::Mov, 4, 6, R), // mov 0x1000(%rip),%eax
        (&[0x83, 0x0D, 0x00, 0x10, 0x00, 0x00, 0x01], M::Or, 4, 7, RW), // orl $1,0x1000(%rip)
        // DragonFly additions: REP on MOV, the sign-extended imm8, BT.
        (&[0xF3, 0x48, 0x89, 0x08], M::Mov, 8, 4, W),  // rep movq %rcx,(%rax)
        (&[0x66, 0x83, 0x38, 0xFF], M::Cmp, 2, 4, R),  // cmpw $-1,(%rax)
        (&[0x66, 0x0F, 0xBA, 0x60, 0x08, 0x00], M::Bt, 2, 6, R), // btw $0,8(%rax)
        (&[0x48, 0x0F, 0xBA, 0x60, 0x18, 0xFF], M::Bt, 8, 6, R), // btq $255,24(%rax)
    ];
    for &(bytes, mn, size, len, access) in cases {
        let i = ok(bytes, L64);
        assert_eq!(
            (i.mnemonic, i.operand_size, i.len, i.access),
            (mn, size, len, access),
            "{bytes:02x?}"
        );
    }
}
