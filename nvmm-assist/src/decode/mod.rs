//! The instruction decoder: bytes and a [`CpuMode`] in, an [`Instruction`]
//! out, for the instructions the assist emulates.
//!
//! The decoder rejects what the CPU rejects ([`DecodeError::Invalid`], `#UD`;
//! [`DecodeError::TooLong`], `#GP(0)`) and never guesses. A valid
//! instruction outside the emulated set is [`DecodeError::Unsupported`].
//!
//! Decoding is table-driven: one table entry per opcode of the one-byte map
//! and of the 0F map (module `table`) gives the shape of the rest (ModRM, operand
//! width, immediate); prefixes, ModRM/SIB and the checks common to every form
//! (LOCK, the 15-byte limit) are shared. Nothing allocates and no input can
//! panic.
//!
//! The decoder is on the path of every memory assist, so it is built for
//! speed as much as for exactness: one table lookup per prefix byte (an
//! instruction without prefixes costs one load and a test), one for the
//! opcode, the operand and address sizes from one table by mode and 66/67,
//! and every form inlined into one function that keeps its state in
//! registers and writes its [`Instruction`] once, separately for a memory
//! and a register r/m. `benches/decode.rs` times it against iced-x86's
//! decode of the same bytes in every addressing mode.
//!
//! Where the CPU's own rules are subtle, the decoder follows them:
//! a REX prefix counts only directly before the opcode (a legacy prefix
//! after it cancels it) and only in 64-bit mode; the last segment override
//! wins, except that 64-bit mode ignores ES/CS/SS/DS overrides; the last of
//! F2/F3, else 66, is the mandatory prefix of SSE opcodes; LOCK is `#UD`
//! except on the lockable instructions with a memory destination (all of
//! which are emulated, so LOCK in front of any other opcode is `Invalid`).
//!
//! Intentional differences from a CPU, all on the side of refusing:
//! - [`DecodeError::Unsupported`] is returned for every opcode outside the
//!   emulated set without working out whether the CPU would accept it (so
//!   an undefined opcode there is `Unsupported`, not `Invalid`, unless a
//!   LOCK makes it `#UD` anyway); the decoder does not compute the length
//!   of such opcodes. LOCK MOV CR0 (AMD's MOV CR8) stays `Unsupported`.
//! - VEX (C4/C5), EVEX (62) and XOP (8F) encodings are `Unsupported`, or
//!   `Invalid` where any encoding would be `#UD` (a 66/F2/F3/F0/REX prefix
//!   in front, real and virtual-8086 mode); C4/C5/62 with ModRM.mod != 11
//!   outside 64-bit mode are LES/LDS/BOUND, `Unsupported`.
//! - XABORT/XBEGIN (C6 F8 / C7 F8) are `Unsupported`.
//!
//! tests/decode_iced.rs compares the decoder with iced-x86 over millions
//! of generated and random encodings in every mode.

use crate::mode::CpuMode;
use crate::state::{Gpr, Segment};

mod cursor;
mod decoder;
mod modrm;
mod prefix;
mod table;
#[cfg(test)]
mod tests;

/// Why bytes did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does; more bytes (up to 15 in
    /// all) may complete it.
    Truncated,
    /// The instruction would be longer than 15 bytes (`#GP(0)` on the CPU).
    TooLong,
    /// An encoding the CPU rejects with `#UD` (LOCK on a non-lockable form,
    /// REX/VEX where not allowed, an undefined group slot, ...).
    Invalid,
    /// A valid instruction the assist does not emulate.
    Unsupported,
}

/// What an instruction does, independent of its operand forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Mnemonic {
    Mov,
    Movzx,
    Movsx,
    Movsxd,
    Add,
    Adc,
    Sub,
    Sbb,
    And,
    Or,
    Xor,
    Cmp,
    Test,
    Inc,
    Dec,
    Neg,
    Not,
    Xchg,
    Xadd,
    Cmpxchg,
    Cmpxchg8b,
    Cmpxchg16b,
    Bt,
    Bts,
    Btr,
    Btc,
    /// SETcc; the condition is in [`Instruction::condition`].
    Setcc,
    /// CMOVcc; the condition is in [`Instruction::condition`].
    Cmovcc,
    Push,
    Pop,
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
    Movnti,
    /// MOVD (66 0F 6E / 66 0F 7E): 32 bits between a GPR or memory and XMM.
    Movd,
    /// MOVQ (66 REX.W 0F 6E/7E, F3 0F 7E, 66 0F D6): 64 bits.
    Movq,
    Movdqa,
    Movdqu,
    Movaps,
    Movups,
    Movapd,
    Movupd,
    Movntdq,
    Movntps,
    Movntpd,
    In,
    Out,
    Ins,
    Outs,
}

/// A condition code (the `tttn` field of Jcc/SETcc/CMOVcc, 0-15):
/// O, NO, B, AE, E, NE, BE, A, S, NS, P, NP, L, GE, LE, G.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Condition(pub u8);

/// A repeat prefix as it applies to the instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepPrefix {
    /// F3: REP (MOVS/STOS/LODS/INS/OUTS) or REPE (CMPS/SCAS).
    Rep,
    /// F2: REPNE (CMPS/SCAS); acts as REP on MOVS/STOS/LODS/INS/OUTS.
    Repne,
}

/// A general-purpose register operand of a given width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Register {
    /// The 64-bit register that holds the operand.
    pub gpr: Gpr,
    /// Width in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// For `size == 1`: AH, CH, DH or BH (bits 15:8 of `gpr`, which is then
    /// RAX, RCX, RDX or RBX).
    pub high_byte: bool,
}

/// A memory operand: `segment:[base + index * scale + disp]`, or
/// `segment:[next_rip + disp]` when RIP-relative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryOperand {
    /// The effective segment: the override if any, else the default (SS for
    /// rBP/rSP-based forms, ES for string destinations, DS otherwise).
    pub segment: Segment,
    /// Base register, if any (sized by the address size).
    pub base: Option<Gpr>,
    /// Index register, if any.
    pub index: Option<Gpr>,
    /// Scale of the index: 1, 2, 4 or 8.
    pub scale: u8,
    /// Displacement, sign-extended (for moffs forms, the offset itself).
    pub disp: i64,
    /// `[rip + disp]` addressing (64-bit mode): relative to the next RIP.
    pub rip_relative: bool,
    /// Width of the access in bytes (1, 2, 4, 8 or 16).
    pub size: u8,
}

/// An instruction operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Operand {
    /// No operand in this slot.
    #[default]
    None,
    /// A general-purpose register.
    Reg(Register),
    /// XMM register 0-15.
    Xmm(u8),
    /// A memory operand.
    Mem(MemoryOperand),
    /// An immediate, already extended to the operand size as the CPU does
    /// (83 imm8, REX.W 81/C7/F7 imm32 sign-extended) and zero above it:
    /// `cmp word [m], -1` gives `0xFFFF`, `mov qword [m], -1` gives
    /// `u64::MAX`. The imm8 of BT/BTS/BTR/BTC (0F BA) and the port of IN/OUT
    /// are the raw unsigned byte.
    Imm(u64),
}

/// What the instruction does to its memory operand(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessClass {
    /// No memory operand.
    None,
    /// Only read.
    Read,
    /// Only written.
    Write,
    /// Read, then written.
    ReadWrite,
}

/// A decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Instruction {
    /// Length in bytes (1-15).
    pub len: u8,
    /// The operation.
    pub mnemonic: Mnemonic,
    /// Operands in Intel order: destination first. Implicit operands
    /// (rAX for string/moffs/CMPXCHG forms, rSI/rDI of string instructions)
    /// are listed explicitly; the stack of PUSH/POP is not.
    pub operands: [Operand; 3],
    /// The operation size in bytes (1, 2, 4, 8 or 16): the destination's
    /// width; MOVZX/MOVSX give the source width in their memory operand.
    pub operand_size: u8,
    /// The address size in bytes (2, 4 or 8).
    pub address_size: u8,
    /// The segment override prefix, if any (the last one wins). In 64-bit
    /// mode the CPU ignores ES/CS/SS/DS overrides, so they are not reported
    /// there (and do not cancel an earlier FS/GS).
    pub segment_override: Option<Segment>,
    /// A repeat prefix, only on instructions where it has a meaning
    /// (string instructions); elsewhere F2/F3 are ignored or select another
    /// opcode, and are not reported here.
    pub rep: Option<RepPrefix>,
    /// An F0 LOCK prefix (only on lockable forms with a memory destination;
    /// elsewhere it is `#UD`).
    pub lock: bool,
    /// The condition of SETcc/CMOVcc.
    pub condition: Option<Condition>,
    /// What happens to memory. MOVS reads its source and writes its
    /// destination and reports [`AccessClass::ReadWrite`]; CMPS reads both.
    pub access: AccessClass,
}

impl Instruction {
    /// The first memory operand, if any.
    pub fn memory_operand(&self) -> Option<&MemoryOperand> {
        self.operands.iter().find_map(|op| match op {
            Operand::Mem(m) => Some(m),
            _ => None,
        })
    }
}

/// Decodes one instruction from `bytes` (at most the first 15 are used) as
/// the CPU would in `mode`.
///
/// Bytes after the instruction are ignored, and every strict prefix of an
/// accepted instruction's bytes gives [`DecodeError::Truncated`], so a
/// caller may fetch the bytes piecewise (up to a page edge, then the rest)
/// and retry while it gets `Truncated`.
#[inline]
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<Instruction, DecodeError> {
    decoder::decode(bytes, mode)
}
