//! Opcode tables: one entry per opcode byte of the one-byte map and of the
//! 0F map, saying how the rest of the instruction is shaped.

use super::Mnemonic;

/// Whether a form works on bytes or on the operand size (16/32/64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Width {
    Byte,
    V,
}

/// The immediate of a group-1 opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Imm {
    /// imm8 (80, 82).
    B,
    /// imm16/imm32, the latter sign-extended to 64 bits under REX.W (81).
    Z,
    /// imm8 sign-extended to the operand size (83).
    SB,
}

/// The shape of one opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A valid opcode (in some form) that the assist does not emulate. The
    /// decoder does not work out its length or validity.
    Unsupported,
    /// `#UD` in 64-bit mode; elsewhere a valid opcode not emulated.
    NotIn64,
    /// The 0F escape.
    Escape0F,
    /// `op r/m, reg`.
    EG(Mnemonic, Width),
    /// `op reg, r/m`.
    GE(Mnemonic, Width),
    /// `op AL/rAX, imm`.
    AccImm(Mnemonic, Width),
    /// 80-83: ADD/OR/ADC/SBB/AND/SUB/XOR/CMP r/m, imm.
    Group1(Width, Imm),
    /// 82: group 1 with imm8, `#UD` in 64-bit mode.
    Group1NotIn64,
    /// F6/F7: TEST r/m, imm; NOT; NEG; MUL/IMUL/DIV/IDIV (not emulated).
    Group3(Width),
    /// FE: INC/DEC r/m8.
    Group4,
    /// FF: INC/DEC, CALL/JMP (not emulated), PUSH r/m.
    Group5,
    /// C6/C7: MOV r/m, imm; XABORT/XBEGIN (not emulated).
    Group11(Width),
    /// 8F: POP r/m; XOP escape on AMD.
    Group1A,
    /// 63: MOVSXD in 64-bit mode, ARPL elsewhere.
    Movsxd,
    /// A0-A3: MOV between AL/rAX and a memory offset.
    Moffs { store: bool, width: Width },
    /// MOVS/CMPS/STOS/LODS/SCAS/INS/OUTS.
    Str(Mnemonic, Width),
    /// E4/E5: IN AL/eAX, imm8.
    InImm(Width),
    /// E6/E7: OUT imm8, AL/eAX.
    OutImm(Width),
    /// EC/ED: IN AL/eAX, DX.
    InDx(Width),
    /// EE/EF: OUT DX, AL/eAX.
    OutDx(Width),
    /// C4/C5: VEX in 64-bit mode, or with ModRM.mod = 11; LES/LDS otherwise.
    Vex,
    /// 62: EVEX in 64-bit mode, or with ModRM.mod = 11; BOUND otherwise.
    Evex,
    /// 0F 40-4F: CMOVcc reg, r/m.
    Cmov,
    /// 0F 90-9F: SETcc r/m8.
    Setcc,
    /// 0F A3/AB/B3/BB: BT/BTS/BTR/BTC r/m, reg.
    BtReg(Mnemonic),
    /// 0F BA: BT/BTS/BTR/BTC r/m, imm8.
    Group8,
    /// 0F B0/B1: CMPXCHG r/m, reg.
    Cmpxchg(Width),
    /// 0F C0/C1: XADD r/m, reg.
    Xadd(Width),
    /// 0F B6/B7/BE/BF: MOVZX/MOVSX reg, r/m8/16 (the source width).
    MovExt(Mnemonic, u8),
    /// 0F C3: MOVNTI m32/64, reg.
    Movnti,
    /// 0F C7: CMPXCHG8B/16B (/1) and others not emulated.
    Group9,
    /// An SSE move whose meaning depends on the mandatory prefix; the
    /// opcode byte says which.
    Sse,
}

const ALU: [Mnemonic; 8] = [
    Mnemonic::Add,
    Mnemonic::Or,
    Mnemonic::Adc,
    Mnemonic::Sbb,
    Mnemonic::And,
    Mnemonic::Sub,
    Mnemonic::Xor,
    Mnemonic::Cmp,
];

/// The group-1 operation selected by ModRM.reg.
pub(super) const fn alu(ext: u8) -> Mnemonic {
    ALU[(ext & 7) as usize]
}

/// Opcodes that are `#UD` in 64-bit mode (PUSH/POP of segment registers,
/// BCD adjustments, PUSHA/POPA, far CALL/JMP with a pointer, INTO, SALC).
const NOT_IN_64: [u8; 19] = [
    0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F, 0x27, 0x2F, 0x37, 0x3F, 0x60, 0x61, 0x9A, 0xCE, 0xD4,
    0xD5, 0xD6, 0xEA,
];

const fn build_primary() -> [Kind; 256] {
    use Width::{Byte, V};
    let mut t = [Kind::Unsupported; 256];
    let mut i = 0;
    while i < 8 {
        let mn = ALU[i];
        let base = i * 8;
        t[base] = Kind::EG(mn, Byte);
        t[base + 1] = Kind::EG(mn, V);
        t[base + 2] = Kind::GE(mn, Byte);
        t[base + 3] = Kind::GE(mn, V);
        t[base + 4] = Kind::AccImm(mn, Byte);
        t[base + 5] = Kind::AccImm(mn, V);
        i += 1;
    }
    let mut i = 0;
    while i < NOT_IN_64.len() {
        t[NOT_IN_64[i] as usize] = Kind::NotIn64;
        i += 1;
    }
    t[0x0F] = Kind::Escape0F;
    t[0x62] = Kind::Evex;
    t[0x63] = Kind::Movsxd;
    t[0x6C] = Kind::Str(Mnemonic::Ins, Byte);
    t[0x6D] = Kind::Str(Mnemonic::Ins, V);
    t[0x6E] = Kind::Str(Mnemonic::Outs, Byte);
    t[0x6F] = Kind::Str(Mnemonic::Outs, V);
    t[0x80] = Kind::Group1(Byte, Imm::B);
    t[0x81] = Kind::Group1(V, Imm::Z);
    t[0x82] = Kind::Group1NotIn64;
    t[0x83] = Kind::Group1(V, Imm::SB);
    t[0x84] = Kind::EG(Mnemonic::Test, Byte);
    t[0x85] = Kind::EG(Mnemonic::Test, V);
    t[0x86] = Kind::EG(Mnemonic::Xchg, Byte);
    t[0x87] = Kind::EG(Mnemonic::Xchg, V);
    t[0x88] = Kind::EG(Mnemonic::Mov, Byte);
    t[0x89] = Kind::EG(Mnemonic::Mov, V);
    t[0x8A] = Kind::GE(Mnemonic::Mov, Byte);
    t[0x8B] = Kind::GE(Mnemonic::Mov, V);
    t[0x8F] = Kind::Group1A;
    t[0xA0] = Kind::Moffs {
        store: false,
        width: Byte,
    };
    t[0xA1] = Kind::Moffs {
        store: false,
        width: V,
    };
    t[0xA2] = Kind::Moffs {
        store: true,
        width: Byte,
    };
    t[0xA3] = Kind::Moffs {
        store: true,
        width: V,
    };
    t[0xA4] = Kind::Str(Mnemonic::Movs, Byte);
    t[0xA5] = Kind::Str(Mnemonic::Movs, V);
    t[0xA6] = Kind::Str(Mnemonic::Cmps, Byte);
    t[0xA7] = Kind::Str(Mnemonic::Cmps, V);
    t[0xA8] = Kind::AccImm(Mnemonic::Test, Byte);
    t[0xA9] = Kind::AccImm(Mnemonic::Test, V);
    t[0xAA] = Kind::Str(Mnemonic::Stos, Byte);
    t[0xAB] = Kind::Str(Mnemonic::Stos, V);
    t[0xAC] = Kind::Str(Mnemonic::Lods, Byte);
    t[0xAD] = Kind::Str(Mnemonic::Lods, V);
    t[0xAE] = Kind::Str(Mnemonic::Scas, Byte);
    t[0xAF] = Kind::Str(Mnemonic::Scas, V);
    t[0xC4] = Kind::Vex;
    t[0xC5] = Kind::Vex;
    t[0xC6] = Kind::Group11(Byte);
    t[0xC7] = Kind::Group11(V);
    t[0xE4] = Kind::InImm(Byte);
    t[0xE5] = Kind::InImm(V);
    t[0xE6] = Kind::OutImm(Byte);
    t[0xE7] = Kind::OutImm(V);
    t[0xEC] = Kind::InDx(Byte);
    t[0xED] = Kind::InDx(V);
    t[0xEE] = Kind::OutDx(Byte);
    t[0xEF] = Kind::OutDx(V);
    t[0xF6] = Kind::Group3(Byte);
    t[0xF7] = Kind::Group3(V);
    t[0xFE] = Kind::Group4;
    t[0xFF] = Kind::Group5;
    t
}

const fn build_0f() -> [Kind; 256] {
    use Width::{Byte, V};
    let mut t = [Kind::Unsupported; 256];
    let mut i = 0;
    while i < 16 {
        t[0x40 + i] = Kind::Cmov;
        t[0x90 + i] = Kind::Setcc;
        i += 1;
    }
    let sse: [usize; 11] = [
        0x10, 0x11, 0x28, 0x29, 0x2B, 0x6E, 0x6F, 0x7E, 0x7F, 0xD6, 0xE7,
    ];
    let mut i = 0;
    while i < sse.len() {
        t[sse[i]] = Kind::Sse;
        i += 1;
    }
    t[0xA3] = Kind::BtReg(Mnemonic::Bt);
    t[0xAB] = Kind::BtReg(Mnemonic::Bts);
    t[0xB3] = Kind::BtReg(Mnemonic::Btr);
    t[0xBB] = Kind::BtReg(Mnemonic::Btc);
    t[0xBA] = Kind::Group8;
    t[0xB0] = Kind::Cmpxchg(Byte);
    t[0xB1] = Kind::Cmpxchg(V);
    t[0xC0] = Kind::Xadd(Byte);
    t[0xC1] = Kind::Xadd(V);
    t[0xB6] = Kind::MovExt(Mnemonic::Movzx, 1);
    t[0xB7] = Kind::MovExt(Mnemonic::Movzx, 2);
    t[0xBE] = Kind::MovExt(Mnemonic::Movsx, 1);
    t[0xBF] = Kind::MovExt(Mnemonic::Movsx, 2);
    t[0xC3] = Kind::Movnti;
    t[0xC7] = Kind::Group9;
    t
}

/// A table entry: a [`Kind`] (three bytes) aligned to four, so that the
/// decoder fetches it with one load.
#[derive(Clone, Copy)]
#[repr(align(4))]
pub(super) struct Entry(pub Kind);

const fn aligned(t: [Kind; 256]) -> [Entry; 256] {
    let mut out = [Entry(Kind::Unsupported); 256];
    let mut i = 0;
    while i < 256 {
        out[i] = Entry(t[i]);
        i += 1;
    }
    out
}

/// The one-byte opcode map.
pub(super) static PRIMARY: [Entry; 256] = aligned(build_primary());
/// The two-byte (0F xx) opcode map.
pub(super) static SECONDARY: [Entry; 256] = aligned(build_0f());
