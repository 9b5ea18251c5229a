//! The table of benchmarked instruction forms: one representative form (or
//! more) of every instruction family the memory assist emulates, each with
//! its encodings per addressing, the registers it needs and what it must do
//! to the device.

use iced_x86::Mnemonic;
use nvmm_assist::Gpr;
use nvmm_assist::decode::Mnemonic as Emulated;

use crate::modes::Addressing;
use crate::{MMIO, RAM_OPERAND, STACK};

/// The bytes of a form for each [`Addressing`], `None` where the form does
/// not exist (REX forms outside 64-bit mode). The memory operand is
/// `[bx]` with 16-bit addressing, `[ebx]`/`[rbx]` otherwise (the same
/// bytes), or a moffs at [`MMIO`].
#[derive(Debug, Clone, Copy)]
pub struct Encodings {
    a16: Option<&'static [u8]>,
    a32: Option<&'static [u8]>,
    a64: Option<&'static [u8]>,
}

impl Encodings {
    pub fn get(&self, addressing: Addressing) -> Option<&'static [u8]> {
        match addressing {
            Addressing::A16 => self.a16,
            Addressing::A32 => self.a32,
            Addressing::A64 => self.a64,
        }
    }
}

/// In every mode: `a16` with 16-bit addressing, `a32` with 32- and 64-bit
/// addressing.
const fn all(a16: &'static [u8], a32: &'static [u8]) -> Encodings {
    Encodings {
        a16: Some(a16),
        a32: Some(a32),
        a64: Some(a32),
    }
}

/// One encoding per addressing (moffs forms: the offset is 2, 4 or 8 bytes).
const fn each(a16: &'static [u8], a32: &'static [u8], a64: &'static [u8]) -> Encodings {
    Encodings {
        a16: Some(a16),
        a32: Some(a32),
        a64: Some(a64),
    }
}

/// Only in 64-bit mode (REX forms).
const fn long(a64: &'static [u8]) -> Encodings {
    Encodings {
        a16: None,
        a32: None,
        a64: Some(a64),
    }
}

/// What the instruction does at the device: one access of the memory
/// operand's size at [`MMIO`], or a read then a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    Read,
    Write,
    ReadWrite,
}

/// One benchmarked form.
pub struct Form {
    /// The row label (operand sizes follow the mode: `r` is 16-bit with
    /// 16-bit addressing, 32-bit otherwise).
    pub name: &'static str,
    /// iced-x86's mnemonic of the bytes, checked before timing.
    pub mnemonic: Mnemonic,
    pub encodings: Encodings,
    /// Register values set before every call (the loop restores them, as
    /// the instruction may change them).
    pub regs: &'static [(Gpr, u64)],
    pub touch: Touch,
}

/// The memory operand `[rbx]` at the device.
const AT_RBX: &[(Gpr, u64)] = &[(Gpr::Rbx, MMIO)];
/// `[rbx]` at the device and a bit offset of 0 in RAX (BT family).
const AT_RBX_BIT0: &[(Gpr, u64)] = &[(Gpr::Rbx, MMIO), (Gpr::Rax, 0)];
/// `[rbx]` at the device and the stack in RAM (PUSH m, POP m).
const AT_RBX_STACK: &[(Gpr, u64)] = &[(Gpr::Rbx, MMIO), (Gpr::Rsp, STACK)];
/// String source at the device.
const SI_AT_DEVICE: &[(Gpr, u64)] = &[(Gpr::Rsi, MMIO)];
/// String destination at the device.
const DI_AT_DEVICE: &[(Gpr, u64)] = &[(Gpr::Rdi, MMIO)];
/// String source in RAM, destination at the device.
const RAM_TO_DEVICE: &[(Gpr, u64)] = &[(Gpr::Rsi, RAM_OPERAND), (Gpr::Rdi, MMIO)];
/// String source at the device, destination in RAM.
const DEVICE_AND_RAM: &[(Gpr, u64)] = &[(Gpr::Rsi, MMIO), (Gpr::Rdi, RAM_OPERAND)];

const fn form(name: &'static str, mnemonic: Mnemonic, encodings: Encodings, touch: Touch) -> Form {
    Form {
        name,
        mnemonic,
        encodings,
        regs: AT_RBX,
        touch,
    }
}

const fn with_regs(mut f: Form, regs: &'static [(Gpr, u64)]) -> Form {
    f.regs = regs;
    f
}

use Touch::{Read, ReadWrite, Write};

/// The forms, in the order of the table. The first one is the reference of
/// the port I/O comparison.
#[rustfmt::skip]
pub const FORMS: &[Form] = &[
    // MOV, MOVZX, MOVSX, MOVSXD.
    form("mov [m], r", Mnemonic::Mov, all(&[0x89, 0x07], &[0x89, 0x03]), Write),
    form("mov r, [m]", Mnemonic::Mov, all(&[0x8B, 0x07], &[0x8B, 0x03]), Read),
    form("mov [m], imm", Mnemonic::Mov, all(&[0xC7, 0x07, 0x34, 0x12], &[0xC7, 0x03, 0x78, 0x56, 0x34, 0x12]), Write),
    form("mov byte [m], imm8", Mnemonic::Mov, all(&[0xC6, 0x07, 0x5A], &[0xC6, 0x03, 0x5A]), Write),
    with_regs(form("mov acc, [moffs]", Mnemonic::Mov, each(
        &[0xA1, 0x00, 0x10],
        &[0xA1, 0x00, 0x10, 0x00, 0x00],
        &[0xA1, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    ), Read), &[]),
    with_regs(form("mov [moffs], al", Mnemonic::Mov, each(
        &[0xA2, 0x00, 0x10],
        &[0xA2, 0x00, 0x10, 0x00, 0x00],
        &[0xA2, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    ), Write), &[]),
    form("mov [m], r64 (REX.W)", Mnemonic::Mov, long(&[0x48, 0x89, 0x03]), Write),
    form("movzx r, byte [m]", Mnemonic::Movzx, all(&[0x0F, 0xB6, 0x07], &[0x0F, 0xB6, 0x03]), Read),
    form("movsx r, byte [m]", Mnemonic::Movsx, all(&[0x0F, 0xBE, 0x07], &[0x0F, 0xBE, 0x03]), Read),
    form("movsxd r64, [m]", Mnemonic::Movsxd, long(&[0x48, 0x63, 0x03]), Read),
    // The ALU group, register and immediate sources, both directions.
    form("add [m], r", Mnemonic::Add, all(&[0x01, 0x07], &[0x01, 0x03]), ReadWrite),
    form("add r, [m]", Mnemonic::Add, all(&[0x03, 0x07], &[0x03, 0x03]), Read),
    form("or [m], imm8", Mnemonic::Or, all(&[0x83, 0x0F, 0x40], &[0x83, 0x0B, 0x40]), ReadWrite),
    form("and [m], imm", Mnemonic::And, all(&[0x81, 0x27, 0xF0, 0xFF], &[0x81, 0x23, 0xF0, 0xFF, 0xFF, 0xFF]), ReadWrite),
    form("and byte [m], imm8", Mnemonic::And, all(&[0x80, 0x27, 0x0F], &[0x80, 0x23, 0x0F]), ReadWrite),
    form("sub [m], r", Mnemonic::Sub, all(&[0x29, 0x07], &[0x29, 0x03]), ReadWrite),
    form("xor [m], r", Mnemonic::Xor, all(&[0x31, 0x07], &[0x31, 0x03]), ReadWrite),
    form("cmp [m], imm8", Mnemonic::Cmp, all(&[0x83, 0x3F, 0x01], &[0x83, 0x3B, 0x01]), Read),
    form("cmp r, [m]", Mnemonic::Cmp, all(&[0x3B, 0x07], &[0x3B, 0x03]), Read),
    form("adc [m], r", Mnemonic::Adc, all(&[0x11, 0x07], &[0x11, 0x03]), ReadWrite),
    form("sbb [m], imm8", Mnemonic::Sbb, all(&[0x83, 0x1F, 0x01], &[0x83, 0x1B, 0x01]), ReadWrite),
    // TEST, INC, DEC, NEG, NOT.
    form("test [m], r", Mnemonic::Test, all(&[0x85, 0x07], &[0x85, 0x03]), Read),
    form("test [m], imm", Mnemonic::Test, all(&[0xF7, 0x07, 0x01, 0x00], &[0xF7, 0x03, 0x01, 0x00, 0x00, 0x00]), Read),
    form("test byte [m], imm8", Mnemonic::Test, all(&[0xF6, 0x07, 0x01], &[0xF6, 0x03, 0x01]), Read),
    form("inc [m]", Mnemonic::Inc, all(&[0xFF, 0x07], &[0xFF, 0x03]), ReadWrite),
    form("dec [m]", Mnemonic::Dec, all(&[0xFF, 0x0F], &[0xFF, 0x0B]), ReadWrite),
    form("neg [m]", Mnemonic::Neg, all(&[0xF7, 0x1F], &[0xF7, 0x1B]), ReadWrite),
    form("not [m]", Mnemonic::Not, all(&[0xF7, 0x17], &[0xF7, 0x13]), ReadWrite),
    // XCHG, XADD, CMPXCHG, CMPXCHG8B, CMPXCHG16B.
    form("xchg [m], r", Mnemonic::Xchg, all(&[0x87, 0x0F], &[0x87, 0x0B]), ReadWrite),
    form("xadd [m], r", Mnemonic::Xadd, all(&[0x0F, 0xC1, 0x07], &[0x0F, 0xC1, 0x03]), ReadWrite),
    form("cmpxchg [m], r", Mnemonic::Cmpxchg, all(&[0x0F, 0xB1, 0x0F], &[0x0F, 0xB1, 0x0B]), ReadWrite),
    form("cmpxchg8b [m]", Mnemonic::Cmpxchg8b, all(&[0x0F, 0xC7, 0x0F], &[0x0F, 0xC7, 0x0B]), ReadWrite),
    form("cmpxchg16b [m]", Mnemonic::Cmpxchg16b, long(&[0x48, 0x0F, 0xC7, 0x0B]), ReadWrite),
    // BT, BTS, BTR, BTC with a register and an imm8 bit offset.
    with_regs(form("bt [m], r", Mnemonic::Bt, all(&[0x0F, 0xA3, 0x07], &[0x0F, 0xA3, 0x03]), Read), AT_RBX_BIT0),
    form("bt [m], imm8", Mnemonic::Bt, all(&[0x0F, 0xBA, 0x27, 0x05], &[0x0F, 0xBA, 0x23, 0x05]), Read),
    with_regs(form("bts [m], r", Mnemonic::Bts, all(&[0x0F, 0xAB, 0x07], &[0x0F, 0xAB, 0x03]), ReadWrite), AT_RBX_BIT0),
    form("btr [m], imm8", Mnemonic::Btr, all(&[0x0F, 0xBA, 0x37, 0x05], &[0x0F, 0xBA, 0x33, 0x05]), ReadWrite),
    with_regs(form("btc [m], r", Mnemonic::Btc, all(&[0x0F, 0xBB, 0x07], &[0x0F, 0xBB, 0x03]), ReadWrite), AT_RBX_BIT0),
    form("btc [m], imm8", Mnemonic::Btc, all(&[0x0F, 0xBA, 0x3F, 0x05], &[0x0F, 0xBA, 0x3B, 0x05]), ReadWrite),
    // SETcc, CMOVcc.
    form("sete byte [m]", Mnemonic::Sete, all(&[0x0F, 0x94, 0x07], &[0x0F, 0x94, 0x03]), Write),
    form("cmove r, [m]", Mnemonic::Cmove, all(&[0x0F, 0x44, 0x07], &[0x0F, 0x44, 0x03]), Read),
    // PUSH m, POP m: the operand at the device, the stack in RAM.
    with_regs(form("push [m]", Mnemonic::Push, all(&[0xFF, 0x37], &[0xFF, 0x33]), Read), AT_RBX_STACK),
    with_regs(form("pop [m]", Mnemonic::Pop, all(&[0x8F, 0x07], &[0x8F, 0x03]), Write), AT_RBX_STACK),
    // String instructions, single (no REP), one operand at the device.
    with_regs(form("movsb RAM -> m", Mnemonic::Movsb, all(&[0xA4], &[0xA4]), Write), RAM_TO_DEVICE),
    with_regs(form("stosb m", Mnemonic::Stosb, all(&[0xAA], &[0xAA]), Write), DI_AT_DEVICE),
    with_regs(form("lodsb m", Mnemonic::Lodsb, all(&[0xAC], &[0xAC]), Read), SI_AT_DEVICE),
    with_regs(form("cmpsb m, RAM", Mnemonic::Cmpsb, all(&[0xA6], &[0xA6]), Read), DEVICE_AND_RAM),
    with_regs(form("scasb m", Mnemonic::Scasb, all(&[0xAE], &[0xAE]), Read), DI_AT_DEVICE),
    // MOVNTI and the SSE moves.
    form("movnti [m], r", Mnemonic::Movnti, all(&[0x0F, 0xC3, 0x07], &[0x0F, 0xC3, 0x03]), Write),
    form("movd [m], xmm", Mnemonic::Movd, all(&[0x66, 0x0F, 0x7E, 0x07], &[0x66, 0x0F, 0x7E, 0x03]), Write),
    form("movq xmm, [m]", Mnemonic::Movq, all(&[0xF3, 0x0F, 0x7E, 0x07], &[0xF3, 0x0F, 0x7E, 0x03]), Read),
    form("movdqa [m], xmm", Mnemonic::Movdqa, all(&[0x66, 0x0F, 0x7F, 0x07], &[0x66, 0x0F, 0x7F, 0x03]), Write),
    form("movdqu xmm, [m]", Mnemonic::Movdqu, all(&[0xF3, 0x0F, 0x6F, 0x07], &[0xF3, 0x0F, 0x6F, 0x03]), Read),
    form("movaps [m], xmm", Mnemonic::Movaps, all(&[0x0F, 0x29, 0x07], &[0x0F, 0x29, 0x03]), Write),
    form("movups xmm, [m]", Mnemonic::Movups, all(&[0x0F, 0x10, 0x07], &[0x0F, 0x10, 0x03]), Read),
    form("movapd [m], xmm", Mnemonic::Movapd, all(&[0x66, 0x0F, 0x29, 0x07], &[0x66, 0x0F, 0x29, 0x03]), Write),
    form("movupd xmm, [m]", Mnemonic::Movupd, all(&[0x66, 0x0F, 0x10, 0x07], &[0x66, 0x0F, 0x10, 0x03]), Read),
    form("movntdq [m], xmm", Mnemonic::Movntdq, all(&[0x66, 0x0F, 0xE7, 0x07], &[0x66, 0x0F, 0xE7, 0x03]), Write),
    form("movntps [m], xmm", Mnemonic::Movntps, all(&[0x0F, 0x2B, 0x07], &[0x0F, 0x2B, 0x03]), Write),
    form("movntpd [m], xmm", Mnemonic::Movntpd, all(&[0x66, 0x0F, 0x2B, 0x07], &[0x66, 0x0F, 0x2B, 0x03]), Write),
    // LOCK-prefixed read-modify-writes (a read then a write on a device).
    form("lock or [m], r", Mnemonic::Or, all(&[0xF0, 0x09, 0x07], &[0xF0, 0x09, 0x03]), ReadWrite),
    form("lock xadd [m], r", Mnemonic::Xadd, all(&[0xF0, 0x0F, 0xC1, 0x07], &[0xF0, 0x0F, 0xC1, 0x03]), ReadWrite),
];

/// Every mnemonic the memory assist emulates (nvmm-assist's
/// `decode::Mnemonic` without the port I/O ones, which only `assist_io`
/// handles): the table must have a form of each, as nvmm-assist's decoder
/// reports them (checked before timing).
pub const EMULATED: &[Emulated] = &[
    Emulated::Mov,
    Emulated::Movzx,
    Emulated::Movsx,
    Emulated::Movsxd,
    Emulated::Add,
    Emulated::Adc,
    Emulated::Sub,
    Emulated::Sbb,
    Emulated::And,
    Emulated::Or,
    Emulated::Xor,
    Emulated::Cmp,
    Emulated::Test,
    Emulated::Inc,
    Emulated::Dec,
    Emulated::Neg,
    Emulated::Not,
    Emulated::Xchg,
    Emulated::Xadd,
    Emulated::Cmpxchg,
    Emulated::Cmpxchg8b,
    Emulated::Cmpxchg16b,
    Emulated::Bt,
    Emulated::Bts,
    Emulated::Btr,
    Emulated::Btc,
    Emulated::Setcc,
    Emulated::Cmovcc,
    Emulated::Push,
    Emulated::Pop,
    Emulated::Movs,
    Emulated::Stos,
    Emulated::Lods,
    Emulated::Cmps,
    Emulated::Scas,
    Emulated::Movnti,
    Emulated::Movd,
    Emulated::Movq,
    Emulated::Movdqa,
    Emulated::Movdqu,
    Emulated::Movaps,
    Emulated::Movups,
    Emulated::Movapd,
    Emulated::Movupd,
    Emulated::Movntdq,
    Emulated::Movntps,
    Emulated::Movntpd,
];
