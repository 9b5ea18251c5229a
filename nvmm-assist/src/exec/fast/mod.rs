//! The fast path: the instructions that make up nearly every MMIO exit,
//! decoded and executed without building an
//! [`Instruction`](crate::Instruction), in every mode (16-bit and 32/64-bit
//! ModRM addressing), with 66, LOCK (on the lockable forms), segment
//! overrides and (64-bit mode) a REX prefix at most:
//! - MOV 88/89/8A/8B/C6/C7 and A0-A3 (moffs), MOVZX 0F B6/B7, MOVSX
//!   0F BE/BF, the ALU forms 00-3B, the immediate group 80/81/83 and TEST
//!   84/85/F6/F7 (this file);
//! - in [`int`]: INC/DEC (FE/FF /0 /1), NOT/NEG (F6/F7 /2 /3), XCHG (86/87),
//!   XADD, CMPXCHG, CMPXCHG8B/16B, BT/BTS/BTR/BTC with a register or imm8
//!   bit offset, SETcc, CMOVcc, MOVSXD (64-bit mode), MOVNTI, and every
//!   LOCK-prefixed read-modify-write (the ALU ones included).
//!
//! The semantics are the general path's own functions ([`alu::compute`],
//! [`flags::sign_extend`], the compute functions of `exec/bits.rs`,
//! `exec/xchg.rs` and `exec/mov.rs`), read-modify-writes go through the
//! general path's `rmw_page`/`rmw` (compare-and-write with bounded retries
//! on RAM when locked, a read then a write on MMIO), and segmentation is
//! [`linear_address`], the general path's too.
//!
//! Entry: with the exit's bytes, the memory assist's entry first picks a
//! lane by the first bytes ([`lanes`]: MOV, MOVZX and MOVSX with no
//! prefix but REX, a
//! single string instruction with no prefix, an SSE move, the ALU forms
//! with no prefix but REX, the integer
//! forms only the full decoder takes and PUSH/POP m with no prefix), each a small
//! out-of-line function of its own; everything else, and whatever a lane
//! declines, goes to [`run_mode`], inlined into one out-of-line function
//! per default address size in `mem.rs` (`assist_sized`, with the exit's
//! bytes or the ones `assist_fetching` fetched), so that the
//! memory assist's entry is a small dispatcher and each mode class's code
//! is compiled on its own. There the MOV/ALU decoder (the integer forms
//! and LOCK compiled out, so that MOV costs what it did before they were
//! added) comes first; it says when it declined a prefix or opcode of an
//! integer form, and only then the full decoder (`INT`) runs, inline too.
//! A declined decode does nothing.
//!
//! When both decline the bytes, `families.rs` tries the SSE moves
//! (`sse.rs`), single (non-REP) MOVS/STOS/LODS/CMPS/SCAS (`string.rs`) and
//! PUSH/POP m (`stack.rs`), with the general executors' semantics
//! functions (`exec/sse.rs`, `exec/string.rs`, `exec/stack.rs`). MOVS,
//! CMPS, PUSH m and POP m walk both operands as the general path does:
//! first every check that changes nothing (segmentation, page crossing,
//! alignment; a failure returns `None`, so the general path reports it),
//! then the two translations in the general path's order, their errors
//! returned as the general path would return them. A differential test (`families_tests.rs`) holds them to
//! the general path, with paging, bus failures and both directions.
//!
//! Anything outside that shape, and any case needing more than the plain
//! path (a segment or canonical fault, a page-crossing or
//! misaligned-with-AC access, a misaligned CMPXCHG16B, an exit GPA that does
//! not match (for BT* with a register offset: the displaced address), bytes
//! that end early, over 15 bytes, LOCK on a form that does not take it),
//! returns `None` and goes through the general decoder and executor, which
//! handle it completely. The fast path never reports an error it did not get
//! from a bus callback, so it cannot disagree with the general path about a
//! fault; a differential test compares the two on random inputs
//! (`FAST_DIFF_ITERATIONS` sets its iterations per mode).

mod families;
mod int;
mod lane_alu;
#[cfg(test)]
mod lane_harness;
mod lane_int;
mod lanes;
mod operand;
mod prefix;
mod sse;
mod stack;
mod string;

pub(crate) use lane_alu::run_alu;
pub(crate) use lane_int::{run_bits, run_cond, run_exchange, run_unary};
pub(crate) use lanes::{Lane, lane, run_int, run_mov, run_sse, run_stack, run_string};

use super::alu;
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus, RamStatus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::fetch_cache::FetchCache;
use crate::flags::{self, AC, RF};
use crate::mode::CpuMode;
use crate::segment::{self, linear_address};
use crate::state::{CpuState, Gpr, Segment};
use operand::Placed;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// MOV r/m, reg.
    Store,
    /// MOV reg, r/m.
    Load,
    /// MOV r/m, imm.
    StoreImm,
    /// MOVZX reg, r/m8/16.
    Movzx,
    /// MOVSX reg, r/m8/16.
    Movsx,
    /// Group 1: ALU r/m, imm; group 3 /0,/1: TEST r/m, imm.
    Alu,
    /// ALU r/m, reg (00-39 even forms ending in 0/1, TEST 84/85): the
    /// operation is in `op`.
    AluToMem,
    /// ALU reg, r/m (00-3B forms ending in 2/3).
    AluToReg,
    /// The other integer forms and every LOCK-prefixed one ([`int`]).
    Int(int::Form),
}

/// The operation of an ALU opcode 00-3F (bits 5:3).
#[inline(always)]
fn alu_op(index: u8) -> Mnemonic {
    match index & 7 {
        0 => Mnemonic::Add,
        1 => Mnemonic::Or,
        2 => Mnemonic::Adc,
        3 => Mnemonic::Sbb,
        4 => Mnemonic::And,
        5 => Mnemonic::Sub,
        6 => Mnemonic::Xor,
        _ => Mnemonic::Cmp,
    }
}

/// A GPR read with the operand-size rules: `size` 1 without REX picks
/// AH..BH for encodings 4-7.
#[inline(always)]
fn read_reg<S: CpuState + ?Sized>(state: &S, reg: u8, size: u8, rex: bool) -> u64 {
    if size == 1 && !rex && (4..8).contains(&reg) {
        (state.gpr(Gpr::from_index(reg - 4)) >> 8) & 0xFF
    } else {
        state.gpr(Gpr::from_index(reg)) & flags::size_mask(size)
    }
}

/// The new 64-bit value of the register written with `value` at `size`.
#[inline(always)]
fn merged<S: CpuState + ?Sized>(state: &S, reg: u8, size: u8, rex: bool, value: u64) -> (Gpr, u64) {
    if size == 1 && !rex && (4..8).contains(&reg) {
        let g = Gpr::from_index(reg - 4);
        (g, (state.gpr(g) & !0xFF00) | ((value & 0xFF) << 8))
    } else {
        let g = Gpr::from_index(reg);
        let old = state.gpr(g);
        let v = match size {
            1 => (old & !0xFF) | (value & 0xFF),
            2 => (old & !0xFFFF) | (value & 0xFFFF),
            4 => value & 0xFFFF_FFFF,
            _ => value,
        };
        (g, v)
    }
}

/// Writes `value` to the register of encoding `reg` at `size`, with
/// [`merged`]'s rules.
#[inline(always)]
fn set_reg<S: CpuState + ?Sized>(state: &mut S, reg: u8, size: u8, rex: bool, value: u64) {
    let (g, v) = merged(state, reg, size, rex, value);
    state.set_gpr(g, v);
}

/// Retires an instruction whose every access succeeded: RFLAGS
/// (`new_flags`, RF already cleared), then RIP: the tail of every form
/// that sets flags, in the lanes and the full fast path (the others take
/// [`retire_flagless`]). The store is unconditional: testing whether the
/// flags changed cost a compare and a branch that the data decides (an
/// RMW's or a CMPS's flags vary from one call to the next), and a
/// mispredicted one cost the bench's SBB/ADC rows more than the store it
/// saved.
#[inline(always)]
fn retire<S: CpuState + ?Sized>(state: &mut S, new_flags: u64, next_rip: u64) {
    state.set_rflags(new_flags);
    state.set_rip(next_rip);
}

/// Retires an instruction that leaves the flags as they were (the MOV,
/// XCHG, SSE, CMOV/SETcc, PUSH/POP m and string-move forms, MOVSXD,
/// MOVNTI): RFLAGS (`rflags`, as read) only if RF is to be cleared, then
/// RIP. RF is rarely set, so this branch is predictable, and a `CpuState`
/// whose register writes cost something (a dirty-register cache, a
/// hypervisor call) sees no RFLAGS write for a move, as from the general
/// path, which writes only what changed.
#[inline(always)]
fn retire_flagless<S: CpuState + ?Sized>(state: &mut S, rflags: u64, next_rip: u64) {
    if rflags & RF != 0 {
        state.set_rflags(rflags & !RF);
    }
    state.set_rip(next_rip);
}

#[inline]
fn byte(bytes: &[u8], i: usize) -> Option<u8> {
    bytes.get(i).copied()
}

/// An instruction's REX prefix (0 if none: only 64-bit code, `ADDR` = 8,
/// has one, 40-4F being INC/DEC elsewhere), its opcode byte and the index
/// of the byte after the opcode. `None` if the bytes end first.
#[inline(always)]
fn rex_and_opcode<const ADDR: u8>(bytes: &[u8]) -> Option<(u8, u8, usize)> {
    let first = byte(bytes, 0)?;
    if ADDR == 8 && first & 0xF0 == 0x40 {
        Some((first, byte(bytes, 1)?, 2))
    } else {
        Some((0, first, 1))
    }
}

#[inline]
fn disp32(bytes: &[u8], i: usize) -> Option<u64> {
    let b = bytes.get(i..i + 4)?;
    Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64 as u64)
}

/// Reads the `n`-byte displacement or immediate at `*i` and moves `*i` past
/// it: 0 bytes is 0, 1 and 4 bytes are sign-extended to 64 bits, 2 bytes
/// (16-bit addressing or operand size, where only the low 16 bits count)
/// zero-extended.
#[inline(always)]
fn sized_field(bytes: &[u8], i: &mut usize, n: u8) -> Option<u64> {
    match n {
        0 => Some(0),
        1 => {
            let v = byte(bytes, *i)? as i8 as i64 as u64;
            *i += 1;
            Some(v)
        }
        2 => {
            let s = bytes.get(*i..*i + 2)?;
            *i += 2;
            Some(u64::from(u16::from_le_bytes([s[0], s[1]])))
        }
        _ => {
            let v = disp32(bytes, *i)?;
            *i += 4;
            Some(v)
        }
    }
}

/// A decoded fast-path instruction.
#[derive(Clone, Copy)]
struct Fast {
    kind: Kind,
    /// Operand size (destination size for MOVZX).
    size: u8,
    /// Bytes accessed in memory.
    access_size: u8,
    /// The register operand's encoding (0-15).
    reg: u8,
    /// The ALU operation (Alu, AluToMem, AluToReg).
    op: Mnemonic,
    /// A REX prefix is present (SPL..DIL instead of AH..BH).
    rex: bool,
    /// A LOCK prefix is present (only on the lockable forms).
    lock: bool,
    /// The immediate, sign-extended to 64 bits (16-bit ones zero-extended;
    /// only the low 16 bits are used then).
    imm: u64,
    /// The effective address (offset in the segment), masked to the
    /// address size.
    offset: u64,
    /// The segment of the access: the override, else DS, or SS for
    /// rBP/rSP-based forms.
    segment: Segment,
    /// The RIP after the instruction (wrapped at the code size).
    next_rip: u64,
    /// The condition of SETcc and CMOVcc.
    cc: u8,
}

impl Fast {
    /// The access the segment and page checks see: CMP and TEST only read
    /// their memory operand, the other ALU forms read and write it.
    fn access(&self) -> AccessType {
        match self.kind {
            Kind::Store | Kind::StoreImm => AccessType::Write,
            Kind::Load | Kind::Movzx | Kind::Movsx | Kind::AluToReg => AccessType::Read,
            Kind::Alu | Kind::AluToMem => {
                if matches!(self.op, Mnemonic::Cmp | Mnemonic::Test) {
                    AccessType::Read
                } else {
                    AccessType::Write
                }
            }
            Kind::Int(form) => {
                if int::reads_only(form, self.op) {
                    AccessType::Read
                } else {
                    AccessType::Write
                }
            }
        }
    }
}

/// Decodes `bytes` if it is a fast-path form whose access is plain.
#[cfg(test)]
fn decode<const ADDR: u8, const INT: bool, S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<(Fast, u64)> {
    decode_with::<ADDR, INT, S>(state, mode, exit_gpa, bytes, &mut false)
}

/// Decodes `bytes` if it is a fast-path form whose access is plain, and
/// computes its linear address (`decode`, used by the tests, is this with
/// the hint ignored). Without `INT`, also sets `*int_form` when it declined the
/// bytes at a prefix or opcode that the full decoder (`INT`) may take
/// (LOCK, 63, 86/87, FE/FF /0 /1, F6/F7 /2 /3, the 0F opcodes of
/// [`int::secondary`]). When it is left clear, the full decoder would
/// decline the bytes too.
#[inline(always)]
fn decode_with<const ADDR: u8, const INT: bool, S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    exit_gpa: u64,
    bytes: &[u8],
    int_form: &mut bool,
) -> Option<(Fast, u64)> {
    let f = decode_form_with::<ADDR, INT, S>(state, mode, bytes, int_form)?;
    let asz = u64::from(f.access_size);
    // A BT* register bit offset moves the access (the address-size wrap
    // applies to the sum).
    let offset = if INT {
        f.offset.wrapping_add(int::displacement(state, &f) as u64) & address_mask(ADDR)
    } else {
        f.offset
    };
    let linear = checked_linear::<ADDR, S>(
        state,
        mode,
        exit_gpa,
        f.segment,
        offset,
        f.access_size,
        f.access(),
    )?;
    // Leave CMPXCHG16B's #GP (a misaligned operand) to the general path.
    if INT && asz == 16 && linear & 15 != 0 {
        return None;
    }
    Some((f, linear))
}

/// The linear address of an access of `size` bytes at `offset` in
/// `segment`, in a mode whose default address size is `ADDR`, when the
/// fast path can make it as is: `None` (for the general path, which
/// reports the fault if there is one) for a segment or canonical fault, a
/// page-crossing access, an exit GPA whose page offset differs, or a
/// possible `#AC`.
#[inline(always)]
fn checked_linear<const ADDR: u8, S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    exit_gpa: u64,
    segment: Segment,
    offset: u64,
    size: u8,
    access: AccessType,
) -> Option<u64> {
    let asz = u64::from(size);
    let linear = if ADDR == 8 && !matches!(segment, Segment::Fs | Segment::Gs) {
        // 64-bit mode: DS/SS bases are ignored and there is no limit, so
        // the linear address is the effective address. A non-canonical
        // one (#GP/#SS, or valid under LA57) goes to the general path.
        if ((offset as i64) << 16 >> 16) as u64 != offset {
            return None;
        }
        offset
    } else if ADDR == 8 {
        // FS/GS: their base, then the canonical check.
        linear_address(state, mode, segment, offset, asz, access).ok()?
    } else {
        // Segmentation with every check (the general path's, inline); a
        // fault goes to the general path, which reports it.
        segment::legacy_checked(state, mode, segment, offset, asz, access).ok()?
    };
    // Leave page-crossing accesses, a mismatching exit GPA and a possible
    // #AC to the general path.
    if (linear & 0xFFF) + asz > 0x1000
        || exit_gpa & 0xFFF != linear & 0xFFF
        || (state.rflags() & AC != 0 && linear & (asz - 1) != 0)
    {
        return None;
    }
    Some(linear)
}

/// Decodes a fast-path form in `mode` and computes its effective address,
/// with no check of the address.
#[cfg(test)]
fn decode_form<const ADDR: u8, const INT: bool, S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    bytes: &[u8],
) -> Option<Fast> {
    decode_form_with::<ADDR, INT, S>(state, mode, bytes, &mut false)
}

/// Decodes a fast-path form in `mode` and computes its effective address,
/// with no check of the address (`decode_form`, used by the tests, is this
/// with the hint ignored); `int_form` as in [`decode_with`].
///
/// `ADDR` is the mode's default address size (2, 4, or 8 for 64-bit mode),
/// a constant so that each mode class gets its own specialised copy.
#[inline(always)]
fn decode_form_with<const ADDR: u8, const INT: bool, S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    bytes: &[u8],
    int_form: &mut bool,
) -> Option<Fast> {
    debug_assert_eq!(ADDR, mode.default_address_size());
    let long = ADDR == 8;
    let mut i = 0;
    let mut b = byte(bytes, 0)?;
    // Legacy prefixes: 66 and segment overrides, in any order (the last
    // override wins; 64-bit mode ignores ES/CS/SS/DS overrides). Anything
    // else (67, F2/F3, more than three prefixes) is the general path's; F0
    // (LOCK) is checked against the form below.
    let mut osz16 = false;
    let mut lock = false;
    let mut seg_override: Option<Segment> = None;
    for _ in 0..3 {
        match b {
            0x66 => osz16 = true,
            0xF0 if INT => lock = true,
            0xF0 => {
                *int_form = true;
                return None;
            }
            0x26 | 0x2E | 0x36 | 0x3E if long => {}
            0x26 => seg_override = Some(Segment::Es),
            0x2E => seg_override = Some(Segment::Cs),
            0x36 => seg_override = Some(Segment::Ss),
            0x3E => seg_override = Some(Segment::Ds),
            0x64 => seg_override = Some(Segment::Fs),
            0x65 => seg_override = Some(Segment::Gs),
            _ => break,
        }
        i += 1;
        b = byte(bytes, i)?;
    }
    // REX (64-bit mode only, directly before the opcode; elsewhere 40-4F
    // are INC/DEC, which the fast path does not take).
    let rex = if long && b & 0xF0 == 0x40 {
        i += 1;
        let r = b;
        b = byte(bytes, i)?;
        r
    } else {
        0
    };
    i += 1;
    let vsize = if rex & 8 != 0 {
        8
    } else if osz16 == (ADDR != 2) {
        2
    } else {
        4
    };
    // (kind, operand size, immediate size, bytes accessed)
    let mut op = Mnemonic::Mov;
    let mut cc = 0;
    let (mut kind, size, mut imm_size, access_size) = match b {
        0x84 => {
            op = Mnemonic::Test;
            (Kind::AluToMem, 1, 0, 1)
        }
        0x85 => {
            op = Mnemonic::Test;
            (Kind::AluToMem, vsize, 0, vsize)
        }
        0xA0..=0xA3 if !lock => {
            return moffs::<ADDR, S>(state, bytes, i, b, vsize, rex, seg_override);
        }
        0x63 | 0x86 | 0x87 | 0xFE | 0xFF if INT => {
            let s = int::primary(b, vsize, long)?;
            op = s.op;
            (s.kind, s.size, s.imm_size, s.access_size)
        }
        0x63 | 0x86 | 0x87 | 0xFE | 0xFF => {
            // INC/DEC are FE/FF /0 /1; the rest of FF (PUSH m /6 ...) are
            // not the full decoder's.
            *int_form =
                !matches!(b, 0xFE | 0xFF) || matches!(byte(bytes, i), Some(m) if (m >> 3) & 7 < 2);
            return None;
        }
        0xF6 => (Kind::Alu, 1, 1, 1),
        0xF7 => (Kind::Alu, vsize, if vsize == 2 { 2 } else { 4 }, vsize),
        0x88 => (Kind::Store, 1, 0, 1),
        0x89 => (Kind::Store, vsize, 0, vsize),
        0x8A => (Kind::Load, 1, 0, 1),
        0x8B => (Kind::Load, vsize, 0, vsize),
        0xC6 => (Kind::StoreImm, 1, 1, 1),
        0xC7 => (Kind::StoreImm, vsize, if vsize == 2 { 2 } else { 4 }, vsize),
        0x80 => (Kind::Alu, 1, 1, 1),
        0x81 => (Kind::Alu, vsize, if vsize == 2 { 2 } else { 4 }, vsize),
        0x83 => (Kind::Alu, vsize, 1, vsize),
        0x0F => {
            let op2 = byte(bytes, i)?;
            i += 1;
            match op2 {
                0xB6 => (Kind::Movzx, vsize, 0, 1),
                0xB7 => (Kind::Movzx, vsize, 0, 2),
                0xBE => (Kind::Movsx, vsize, 0, 1),
                0xBF => (Kind::Movsx, vsize, 0, 2),
                _ if INT => {
                    let s = int::secondary(op2, vsize, rex & 8 != 0, osz16)?;
                    op = s.op;
                    cc = s.cc;
                    (s.kind, s.size, s.imm_size, s.access_size)
                }
                _ => {
                    *int_form = int::is_secondary(op2);
                    return None;
                }
            }
        }
        // ALU r/m,reg and reg,r/m: 00-03, 08-0B, ..., 38-3B.
        0x00..=0x3B if b & 7 < 4 => {
            op = alu_op(b >> 3);
            let size = if b & 1 == 0 { 1 } else { vsize };
            let kind = if b & 2 == 0 {
                Kind::AluToMem
            } else {
                Kind::AluToReg
            };
            (kind, size, 0, size)
        }
        _ => return None,
    };
    let modrm = byte(bytes, i)?;
    i += 1;
    let md = modrm >> 6;
    let reg_field = (modrm >> 3) & 7;
    let rm = modrm & 7;
    if md == 3 || (matches!(kind, Kind::StoreImm) && reg_field != 0) {
        return None;
    }
    if matches!(kind, Kind::Alu) {
        op = match b {
            // Group 3: TEST (/0 and its alias /1), NOT, NEG (no
            // immediate); MUL, IMUL, DIV, IDIV are not emulated.
            0xF6 | 0xF7 if reg_field < 2 => Mnemonic::Test,
            0xF6 | 0xF7 if INT && reg_field < 4 => {
                kind = Kind::Int(int::Form::Unary);
                imm_size = 0;
                if reg_field == 2 {
                    Mnemonic::Not
                } else {
                    Mnemonic::Neg
                }
            }
            0xF6 | 0xF7 => {
                *int_form = !INT && reg_field < 4;
                return None;
            }
            _ => alu_op(reg_field),
        };
    }
    if INT {
        if let Kind::Int(form) = kind {
            let (form, refined) = int::refine(form, op, reg_field)?;
            kind = Kind::Int(form);
            op = refined;
        }
        if lock {
            kind = int::locked(kind, op)?;
        }
    }
    let address = operand::address::<ADDR, S>(state, bytes, &mut i, md, rm, rex)?;
    let imm = sized_field(bytes, &mut i, imm_size)?;
    // Three prefixes, REX and the longest form stay under 15 bytes only
    // without SIB + disp32 + imm32 all at once: leave the rest (#GP) to the
    // general decoder.
    if i > 15 {
        return None;
    }
    let Placed { offset, next_rip } = address.place::<ADDR, S>(state, i);
    // (64-bit mode: only an FS/GS override matters, and it is kept.)
    let default_seg = address.data_segment::<ADDR>();
    Some(Fast {
        kind,
        size,
        access_size,
        reg: reg_field | ((rex & 4) << 1),
        op,
        rex: rex != 0,
        lock,
        imm,
        offset,
        segment: seg_override.unwrap_or(default_seg),
        next_rip,
        cc,
    })
}

/// The mask of an address size `addr` (2, 4 or 8).
#[inline(always)]
pub(super) fn address_mask(addr: u8) -> u64 {
    match addr {
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// MOV AL/rAX to or from `[moffs]` (A0-A3): the offset, of the address
/// size, follows the opcode at `i`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn moffs<const ADDR: u8, S: CpuState + ?Sized>(
    state: &S,
    bytes: &[u8],
    mut i: usize,
    opcode: u8,
    vsize: u8,
    rex: u8,
    seg_override: Option<Segment>,
) -> Option<Fast> {
    let size = if opcode & 1 == 0 { 1 } else { vsize };
    let offset = match ADDR {
        2 => {
            let s = bytes.get(i..i + 2)?;
            i += 2;
            u64::from(u16::from_le_bytes([s[0], s[1]]))
        }
        4 => {
            let s = bytes.get(i..i + 4)?;
            i += 4;
            u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        }
        _ => {
            let s = bytes.get(i..i + 8)?;
            i += 8;
            u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
        }
    };
    if i > 15 {
        return None;
    }
    let next_rip = prefix::next_rip::<ADDR, S>(state, i);
    Some(Fast {
        kind: if opcode & 2 == 0 {
            Kind::Load
        } else {
            Kind::Store
        },
        size,
        access_size: size,
        reg: 0,
        op: Mnemonic::Mov,
        rex: rex != 0,
        lock: false,
        imm: 0,
        offset,
        segment: seg_override.unwrap_or(Segment::Ds),
        next_rip,
        cc: 0,
    })
}

/// One access within a page at `gpa`: RAM if the RAM says so, else MMIO
/// (the dispatch `access::read_phys` does for each fragment).
#[inline(always)]
fn read<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    buf: &mut [u8],
) -> Result<(), Error> {
    if ram.read(gpa, buf)? == RamStatus::NotRam {
        mmio.read(gpa, buf)?;
    }
    Ok(())
}

/// See [`read`].
#[inline(always)]
fn write<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    data: &[u8],
) -> Result<(), Error> {
    if ram.write(gpa, data)? == RamStatus::NotRam {
        mmio.write(gpa, data)?;
    }
    Ok(())
}

/// Reads `n` (1, 2, 4 or 8) bytes at `gpa` into a buffer of exactly that
/// width. A device's narrow store into a wider buffer followed by one wide
/// load stalls store-to-load forwarding for a dozen cycles or more, which
/// was about a third of a fast-path load.
#[inline(always)]
fn read_sized<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    n: usize,
) -> Result<u64, Error> {
    Ok(match n {
        1 => {
            let mut b = [0u8; 1];
            read(ram, mmio, gpa, &mut b)?;
            u64::from(b[0])
        }
        2 => {
            let mut b = [0u8; 2];
            read(ram, mmio, gpa, &mut b)?;
            u64::from(u16::from_le_bytes(b))
        }
        4 => {
            let mut b = [0u8; 4];
            read(ram, mmio, gpa, &mut b)?;
            u64::from(u32::from_le_bytes(b))
        }
        _ => {
            let mut b = [0u8; 8];
            read(ram, mmio, gpa, &mut b)?;
            u64::from_le_bytes(b)
        }
    })
}

#[inline(always)]
fn exec<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    f: &Fast,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let n = usize::from(f.access_size.min(8));
    let rflags = state.rflags();
    // Each form retires in its arm: the moves with `retire_flagless`, the
    // ALU forms with their flags (RF is cleared when an instruction
    // completes).
    match f.kind {
        Kind::Store | Kind::StoreImm => {
            let v = if matches!(f.kind, Kind::Store) {
                read_reg(state, f.reg, f.size, f.rex)
            } else {
                f.imm
            };
            let data = v.to_le_bytes();
            write(ram, mmio, gpa, data.get(..n).unwrap_or(&[]))?;
            retire_flagless(state, rflags, f.next_rip);
        }
        Kind::Load | Kind::Movzx | Kind::Movsx => {
            let mut v = read_sized(ram, mmio, gpa, n)?;
            if matches!(f.kind, Kind::Movsx) {
                v = flags::sign_extend(v, f.access_size);
            }
            let (g, v) = merged(state, f.reg, f.size, f.rex, v);
            state.set_gpr(g, v);
            retire_flagless(state, rflags, f.next_rip);
        }
        Kind::Alu | Kind::AluToMem | Kind::AluToReg => {
            let mem = read_sized(ram, mmio, gpa, n)?;
            let (a, b) = match f.kind {
                Kind::Alu => (mem, f.imm),
                Kind::AluToMem => (mem, read_reg(state, f.reg, f.size, f.rex)),
                _ => (read_reg(state, f.reg, f.size, f.rex), mem),
            };
            let new_flags = rflags & !RF;
            let (r, fl) = alu::compute(f.op, a, b, f.size, new_flags).unwrap_or((a, new_flags));
            if !matches!(f.op, Mnemonic::Cmp | Mnemonic::Test) {
                if matches!(f.kind, Kind::AluToReg) {
                    let (g, v) = merged(state, f.reg, f.size, f.rex, r);
                    state.set_gpr(g, v);
                } else {
                    let data = r.to_le_bytes();
                    write(ram, mmio, gpa, data.get(..n).unwrap_or(&[]))?;
                }
            }
            retire(state, fl, f.next_rip);
        }
        Kind::Int(_) => return Err(Error::InconsistentExit),
    }
    Ok(Outcome::Done)
}

/// [`exec`] for what the full decoder takes: the integer forms of [`int`]
/// and the rest.
#[inline(always)]
fn exec_int<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    f: &Fast,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    match f.kind {
        Kind::Int(form) => int::exec(state, ram, mmio, gpa, f, form),
        _ => exec(state, ram, mmio, gpa, f),
    }
}

/// Runs the fast path on a memory exit in `mode` (of the default address
/// size `ADDR`) whose instruction bytes are `bytes`, else (nothing done)
/// `general`. The result of either is this function's own, with no
/// `Option` to unwrap and copy, which cost about a dozen instructions per
/// call.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn run_mode<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    general: impl FnOnce(&mut S, &mut R, &mut M, &mut FetchCache) -> Result<Outcome, Error>,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // The MOV/ALU decoder; the full one only if the first declined a
    // prefix or opcode of an integer form; then the SSE, string and stack
    // families behind their one-byte filter. The decoders and the families
    // take disjoint sets of bytes, and a declined attempt does nothing, so
    // the order is only a matter of cost.
    let mut int_form = false;
    if let Some((f, linear)) =
        decode_with::<ADDR, false, S>(state, mode, exit_gpa, bytes, &mut int_form)
    {
        debug_assert_eq!(linear & 0xFFF, exit_gpa & 0xFFF);
        return exec(state, ram, mmio, exit_gpa, &f);
    }
    if int_form
        && let Some((f, linear)) =
            decode_with::<ADDR, true, S>(state, mode, exit_gpa, bytes, &mut int_form)
    {
        debug_assert_eq!(linear & 0xFFF, exit_gpa & 0xFFF);
        return exec_int(state, ram, mmio, exit_gpa, &f);
    }
    if let Some(result) = families::try_exec(state, mode, ram, cache, mmio, exit_gpa, bytes) {
        return result;
    }
    general(state, ram, mmio, cache)
}

#[cfg(test)]
mod tests {
    //! The fast path against the general decoder and executor, on random
    //! instructions of the fast-path shapes (and near misses) with random
    //! registers and flags: same outcome, registers, RAM and device log.

    use std::vec::Vec;

    use std::collections::BTreeSet;
    use std::format;
    use std::string::String;

    use super::lane_harness::{
        LANE_MODES, Machine, SegmentDraw, accumulator_matches, addresses, by_address_size, case,
        identity_ram, mode_registers, push_modrm_and_tail, random_mod, random_rip, random_segments,
    };
    use crate::decode::decode;
    use crate::mode::CpuMode;
    use crate::testutil::{MODES, RecordingMmio, Rng};
    use crate::{Outcome, Registers, Segment};

    const OPCODES: &[&[u8]] = &[
        &[0x88],
        &[0x89],
        &[0x8A],
        &[0x8B],
        &[0xC6],
        &[0xC7],
        &[0x80],
        &[0x81],
        &[0x83],
        &[0x0F, 0xB6],
        &[0x0F, 0xB7],
        &[0x00],
        &[0x01],
        &[0x02],
        &[0x03],
        &[0x09],
        &[0x0A],
        &[0x11],
        &[0x13],
        &[0x18],
        &[0x21],
        &[0x22],
        &[0x29],
        &[0x2B],
        &[0x30],
        &[0x33],
        &[0x38],
        &[0x39],
        &[0x3A],
        &[0x3B],
        &[0x84],
        &[0x85],
        &[0xF6],
        &[0xF7],
        &[0xA0],
        &[0xA1],
        &[0xA2],
        &[0xA3],
        &[0x0F, 0xBE],
        &[0x0F, 0xBF],
        // The integer forms of `int.rs` (groups with every ModRM reg).
        &[0xFE],
        &[0xFF],
        &[0xFF],
        &[0xF6],
        &[0xF7],
        &[0x86],
        &[0x87],
        &[0x63],
        &[0x0F, 0xC0],
        &[0x0F, 0xC1],
        &[0x0F, 0xB0],
        &[0x0F, 0xB1],
        &[0x0F, 0xC7],
        &[0x0F, 0xC7],
        // CMPXCHG16B in 64-bit mode (elsewhere a REX.W is DEC eAX).
        &[0x48, 0x0F, 0xC7],
        &[0xF0, 0x48, 0x0F, 0xC7],
        &[0x0F, 0xA3],
        &[0x0F, 0xAB],
        &[0x0F, 0xB3],
        &[0x0F, 0xBB],
        &[0x0F, 0xBA],
        &[0x0F, 0xBA],
        &[0x0F, 0x90],
        &[0x0F, 0x94],
        &[0x0F, 0x9F],
        &[0x0F, 0x42],
        &[0x0F, 0x44],
        &[0x0F, 0x4E],
        &[0x0F, 0xC3],
        // Near misses the fast path must leave alone.
        &[0x04],
        &[0x3D],
        &[0x0F, 0xA5],
        &[0x0F, 0xAF],
        &[0x0F, 0xBC],
        &[0x0F, 0xC8],
        &[0x8F],
        &[0xD1],
    ];

    fn random_instruction(rng: &mut Rng) -> Vec<u8> {
        let mut v = Vec::new();
        if rng.below(6) == 0 {
            // LOCK, on lockable forms and the rest (#UD), with other
            // prefixes in any order.
            v.push(0xF0);
        }
        match rng.below(8) {
            0 => v.push(0x66),
            1 => v.push(0x40 | rng.below(16) as u8),
            2 => {
                v.push(0x66);
                v.push(0x40 | rng.below(16) as u8);
            }
            3 if rng.below(4) == 0 => v.push([0xF0, 0xF3, 0x67, 0x64][rng.below(4) as usize]),
            4 | 5 => {
                // Segment overrides and 66 in any order, up to four.
                for _ in 0..=rng.below(4) {
                    v.push([0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66][rng.below(7) as usize]);
                }
            }
            _ => {}
        }
        v.extend_from_slice(OPCODES[rng.below(OPCODES.len() as u64) as usize]);
        let md = random_mod(rng);
        let mut reg = rng.below(8) as u8;
        match rng.below(4) {
            0 => reg = 0, // C6/C7 /0 more often
            1 => reg = 1, // and 0F C7 /1
            _ => {}
        }
        push_modrm_and_tail(rng, &mut v, md, reg, 4);
        v
    }

    /// A state of `mode` (paging identity-maps the first 0x20 pages where
    /// the mode pages), with random segment bases, limits and types on the
    /// data segments outside 64-bit mode (FS/GS bases in 64-bit mode).
    fn random_state(rng: &mut Rng, mode: CpuMode, cr3: u64) -> Registers {
        let mut regs = mode_registers(mode, cr3);
        random_segments(rng, mode, &mut regs, &SegmentDraw::data_segments(false, 8));
        random_rip(rng, mode, &mut regs, 0x10000);
        for g in regs.gprs.iter_mut() {
            *g = match rng.below(4) {
                0 => rng.below(0x400),
                1 => 0x1000 + rng.below(0x1000),
                2 => rng.next(),
                _ => 0x1800 - rng.below(0x800),
            };
        }
        if rng.below(4) == 0 {
            // Aligned addresses more often (CMPXCHG16B needs 16 bytes).
            for g in regs.gprs.iter_mut() {
                *g &= !15;
            }
        }
        regs.rflags = 2 | (rng.next() & 0x8D5) | if rng.below(8) == 0 { 1 << 18 } else { 0 };
        if mode == CpuMode::Virtual8086 {
            regs.rflags |= 1 << 17;
        }
        if rng.below(8) == 0 {
            regs.cr0 |= 1 << 18; // CR0.AM: with AC and CPL 3, #AC
            regs = regs.at_cpl(3);
        }
        regs
    }

    /// Iterations per mode: `FAST_DIFF_ITERATIONS` (default 30 000).
    fn iterations() -> usize {
        std::env::var("FAST_DIFF_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000)
    }

    /// The MOV/ALU decoder's hint is exact enough: whenever the full
    /// decoder takes bytes the MOV/ALU decoder declined, the hint was set
    /// (else the fast path would never try the full decoder on them).
    #[test]
    fn the_mov_decoders_hint_covers_every_integer_form() {
        let mut rng = Rng(0x0DEC_0DE5_1234_5678);
        for mode in LANE_MODES {
            let mut taken = 0;
            for _ in 0..20_000 {
                let bytes = random_instruction(&mut rng);
                let regs = random_state(&mut rng, mode, 0x20000);
                let Some((_, lin)) = addresses(&bytes, &regs, mode) else {
                    continue;
                };
                let gpa = if rng.below(32) == 0 { lin ^ 8 } else { lin };
                let mut hint = false;
                let (mov, full) = by_address_size!(mode, A => (
                    super::decode_with::<A, false, _>(&regs, mode, gpa, &bytes, &mut hint),
                    super::decode::<A, true, _>(&regs, mode, gpa, &bytes),
                ));
                if mov.is_none() && full.is_some() {
                    taken += 1;
                    assert!(hint, "{mode:?} {bytes:02x?}: no hint");
                }
                if mov.is_some() {
                    assert!(full.is_some(), "{mode:?} {bytes:02x?}");
                }
            }
            assert!(taken > 1_000, "{mode:?}: only {taken} integer forms");
        }
    }

    #[test]
    fn is_secondary_is_the_set_secondary_takes() {
        for op in 0..=255u8 {
            let any = [(false, false), (false, true), (true, false), (true, true)]
                .iter()
                .any(|&(w, o)| super::int::secondary(op, 4, w, o).is_some());
            assert_eq!(super::int::is_secondary(op), any, "0F {op:02x}");
        }
    }

    #[test]
    fn fast_path_matches_the_general_path_in_every_mode() {
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        // Random RAM below the page tables, so that bit tests, compares
        // and exchanges see varied values.
        let (ram, cr3) = identity_ram(&mut rng);
        // The integer forms (and LOCK) the fast path handled, and whether
        // a locked one lost every race (Resume) on it.
        let mut int_forms: BTreeSet<String> = BTreeSet::new();
        let mut resumed = 0;
        for mode in MODES {
            let mut handled = 0;
            for _ in 0..iterations() {
                let bytes = random_instruction(&mut rng);
                let mut regs = random_state(&mut rng, mode, cr3);
                assert_eq!(CpuMode::of(&regs), mode);
                let Some((_, lin)) = addresses(&bytes, &regs, mode) else {
                    continue;
                };
                if rng.below(3) == 0 {
                    // rDX:rAX (and rAX) equal to the operand: CMPXCHG*
                    // succeeds.
                    accumulator_matches(&mut rng, &mut regs, &ram, lin);
                }
                // (Again: rAX or rDX may be in the address.)
                let Some((ea, lin)) = addresses(&bytes, &regs, mode) else {
                    continue;
                };
                let gpa = if rng.below(32) == 0 { lin ^ 8 } else { lin };
                let mut ram = ram.clone();
                // Sometimes another writer wins the compare-and-write: once,
                // or every time (Resume); sometimes a bus callback fails.
                ram.cas_mismatches = [0, 0, 0, 0, 1, 2, 16, 100][rng.below(8) as usize];
                let mmio_fail = (rng.below(16) == 0).then(|| rng.below(3) as usize);
                if rng.below(16) == 0 {
                    ram.fail_at = Some(rng.below(3) as usize);
                }
                let what = case(mode, &bytes, gpa);
                let mmio = RecordingMmio {
                    fail_at: mmio_fail,
                    ..RecordingMmio::default()
                };
                let mut with_fast = Machine::new(&regs, &ram, &mmio);
                let mut general = Machine::new(&regs, &ram, &mmio);
                let fast = with_fast.assist(gpa, &bytes, true);
                assert_eq!(fast, general.general(gpa, &bytes), "{what}");
                with_fast.assert_same(&general, &what);
                if fast.is_err() {
                    assert_eq!(
                        with_fast.regs, regs,
                        "{what}: a failure changes no register"
                    );
                }
                let (decoded, form) = by_address_size!(mode, A => (
                    super::decode::<A, true, _>(&regs, mode, gpa, &bytes).is_some(),
                    super::decode_form::<A, true, _>(&regs, mode, &bytes),
                ));
                if decoded {
                    handled += 1;
                    if let Some(f) = form
                        .as_ref()
                        .filter(|f| matches!(f.kind, super::Kind::Int(_)) || f.lock)
                    {
                        let lock = if f.lock { "lock " } else { "" };
                        int_forms.insert(format!("{lock}{:?}", f.op));
                        if fast == Ok(Outcome::Resume) {
                            resumed += 1;
                        }
                    }
                }
                // Whatever the exit says, a form the fast path takes must
                // have the general decoder's address, segment and length.
                if let Some(f) = form {
                    let insn = decode(&bytes, mode).expect("general decode");
                    let m = insn.memory_operand().expect("memory operand");
                    assert_eq!(f.offset, ea, "{mode:?} {bytes:02x?}");
                    // 64-bit mode: only FS/GS have a base, the fast path
                    // keeps those and calls the rest DS.
                    let flat = |g: Segment| {
                        if mode.is_64bit() && !matches!(g, Segment::Fs | Segment::Gs) {
                            Segment::Ds
                        } else {
                            g
                        }
                    };
                    assert_eq!(f.segment, flat(m.segment), "{mode:?} {bytes:02x?}");
                    let wrap = match mode.default_size() {
                        _ if mode.is_64bit() => u64::MAX,
                        4 => 0xFFFF_FFFF,
                        _ => 0xFFFF,
                    };
                    assert_eq!(
                        f.next_rip,
                        regs.rip.wrapping_add(u64::from(insn.len)) & wrap,
                        "{mode:?} {bytes:02x?}"
                    );
                    assert_eq!(f.access_size, m.size, "{mode:?} {bytes:02x?}");
                }
            }
            assert!(
                handled > 2_000,
                "{mode:?}: the fast path handled only {handled} cases"
            );
        }
        for want in [
            "Inc",
            "Dec",
            "Not",
            "Neg",
            "Xchg",
            "Xadd",
            "Cmpxchg",
            "Cmpxchg8b",
            "Cmpxchg16b",
            "Bt",
            "Bts",
            "Btr",
            "Btc",
            "Setcc",
            "Cmovcc",
            "Movsxd",
            "Movnti",
            "lock Add",
            "lock Or",
            "lock Adc",
            "lock Sbb",
            "lock And",
            "lock Sub",
            "lock Xor",
            "lock Inc",
            "lock Dec",
            "lock Not",
            "lock Neg",
            "lock Xchg",
            "lock Xadd",
            "lock Cmpxchg",
            "lock Cmpxchg8b",
            "lock Cmpxchg16b",
            "lock Bts",
            "lock Btr",
            "lock Btc",
        ] {
            assert!(
                int_forms.contains(want),
                "the fast path never handled {want}: {int_forms:?}"
            );
        }
        assert!(resumed > 0, "no locked form lost every race");
    }
}
