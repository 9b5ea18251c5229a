//! The lanes: the commonest fast-path shapes, picked by their first bytes
//! in the memory assist's entry (`mem.rs`) and each run in a small
//! out-of-line function of its own, before (and instead of) the full fast
//! path of [`run_mode`](super::run_mode):
//! - [`Lane::Mov`]: MOV 88/89/8A/8B/C6/C7, A0-A3 and MOVZX/MOVSX
//!   (0F B6/B7/BE/BF) with no prefix (in 64-bit mode a REX prefix at
//!   most), decoded and executed here by
//!   [`run_mov`];
//! - [`Lane::String`]: a single string instruction with no prefix, the
//!   string family's own plain entry (`string.rs`);
//! - [`Lane::Sse`]: bytes that [`sse`]'s scan takes for an SSE
//!   move in their first two or three bytes (0F op, 66/F2/F3 0F op, REX
//!   0F op), that family's own `try_prefixed`;
//! - [`Lane::Int`]: the integer forms that only the full decoder takes
//!   (86/87, FE/FF /0 /1, F6/F7 /2 /3, REX.W 63, the 0F opcodes of
//!   `int::secondary`) with no prefix but LOCK and REX, and LOCK on any
//!   form: their own decoder and executor (`lane_int.rs`, [`run_int`]),
//!   without the MOV/ALU decoder's attempt and restart from byte 0 (the
//!   ALU forms without LOCK, which that decoder takes at once, stay on
//!   the full path); of these, INC/DEC/NOT/NEG ([`Lane::Unary`]), the
//!   exchanges ([`Lane::Exchange`]), BT* ([`Lane::Bits`]) and
//!   SETcc/CMOVcc ([`Lane::Cond`]) without LOCK have an entry of their
//!   own into the lane's code for their family, past its chain of tests;
//! - [`Lane::Stack`]: PUSH m (FF /6) and POP m (8F /0) with no prefix,
//!   the stack family's own entry ([`run_stack`]);
//! - [`Lane::Alu`]: the ALU forms 00-3B, 80/81/83 and TEST 84/85, F6/F7
//!   /0 /1 with no prefix but REX, decoded and executed by
//!   [`run_alu`](super::lane_alu::run_alu) (`lane_alu.rs`).
//!
//! Why: the full fast path is one large function (every decoder and family
//! inline), whose prologue saves every callee-saved register and spills its
//! arguments, and whose MOV/ALU decoder parses prefixes and dispatches on
//! the opcode, packs a `Fast` and dispatches again on its kind; the string
//! and SSE forms paid for that decoder's decline as well. A lane pays for
//! its own form only.
//!
//! Exactness: each lane takes a subset of what the full fast path takes,
//! with the same result, because the decoders and families take disjoint
//! sets of bytes and a declined attempt does nothing (so which one runs
//! first does not matter): the MOV lane is the MOV/ALU decoder's decode of
//! those bytes with its address checks ([`checked_linear`]) and the
//! executor's MOV arms (the ALU lane likewise, with the executor's ALU
//! arm: see `lane_alu.rs`); the integer lane takes forms the MOV/ALU
//! decoder declines and the full path's second attempt takes, with its
//! decode, checks and semantics functions (`lane_int.rs`); the string,
//! SSE and stack lanes are the families' own
//! functions, which the full path reaches for these bytes after the
//! decoders have declined them. A lane that declines (`None`) has done
//! nothing, and the caller runs the full fast path, then the general one.

use super::operand::{self, Placed};
use super::prefix::Prefixes;
use super::{
    byte, checked_linear, int, merged, moffs, read_reg, read_sized, retire_flagless,
    rex_and_opcode, sized_field, sse, stack, string,
};
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::fetch_cache::FetchCache;
use crate::mode::CpuMode;
use crate::state::CpuState;

/// Which lane the first bytes of an instruction pick.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Lane {
    /// MOV, MOVZX or MOVSX with no prefix but REX ([`run_mov`]).
    Mov,
    /// A single string instruction with no prefix.
    String,
    /// An SSE move's opcode after at most one prefix byte.
    Sse,
    /// An integer form only the full decoder takes (MOVSXD, MOVNTI,
    /// CMPXCHG8B/16B; the other families have a lane of their own) with
    /// no prefix but REX, or any LOCK-prefixed bytes ([`run_int`]).
    Int,
    /// XCHG (86/87), XADD or CMPXCHG (0F C0/C1/B0/B1) with no prefix but
    /// REX: the integer lane's exchanges, by their own entry
    /// ([`run_exchange`](super::lane_int::run_exchange)).
    Exchange,
    /// INC/DEC (FE/FF /0 /1) or NOT/NEG (F6/F7 /2 /3) with no prefix but
    /// REX: the integer lane's, by their own entry
    /// ([`run_unary`](super::lane_int::run_unary)).
    Unary,
    /// BT* (0F A3/AB/B3/BB/BA) with no prefix but REX: the integer lane's,
    /// by their own entry ([`run_bits`](super::lane_int::run_bits)).
    Bits,
    /// SETcc or CMOVcc (0F 9x, 4x) with no prefix but REX: the integer
    /// lane's, by their own entry ([`run_cond`](super::lane_int::run_cond)).
    Cond,
    /// PUSH m (FF /6) or POP m (8F /0) with no prefix ([`run_stack`]).
    Stack,
    /// An ALU form (00-3B, 80/81/83, TEST 84/85 and F6/F7 /0 /1) with no
    /// prefix but REX ([`run_alu`](super::lane_alu::run_alu)).
    Alu,
    /// Anything else: the full fast path.
    Other,
}

/// [`FIRST`]: not a lane's first byte.
const OTHER: u8 = 0;
/// [`FIRST`]: a MOV opcode (88-8B, C6, C7, A0-A3).
const MOV: u8 = 1;
/// [`FIRST`]: a string opcode (A4-A7, AA-AF).
const STRING: u8 = 2;
/// [`FIRST`]: 0F.
const ESCAPE: u8 = 3;
/// [`FIRST`]: 66, F2, F3 (an SSE move's mandatory prefix).
const MANDATORY: u8 = 4;
/// [`FIRST`]: 40-4F (REX in 64-bit mode).
const REX: u8 = 5;
/// [`FIRST`]: LOCK (F0): the integer lane takes LOCK on every lockable
/// form, the ALU ones included.
const INT: u8 = 6;
/// [`FIRST`]: FF (/0 /1 INC/DEC, /6 PUSH m; the rest the full path's).
const GROUP: u8 = 7;
/// [`FIRST`]: an ALU opcode (00-3B with low bits 0-3, 80/81/83, 84/85).
/// The ALU forms have a lane of their own rather than the integer lane's
/// full decoder, which cost them 60 instructions more than the full fast
/// path's MOV/ALU decoder did.
const ALU: u8 = 8;
/// [`FIRST`]: F6/F7 (group 3: TEST /0 /1 is the ALU lane's, NOT/NEG and
/// the rest the full path's).
const GROUP3: u8 = 9;
/// [`FIRST`]: 8F (/0 POP m; the rest XOP or `#UD`, the full path's). A
/// class apart from FF's so that each is one test of the reg field (one
/// test of the opcode and the reg field together cost PUSH m and POP m
/// some 6 instructions more, and FF INC/DEC 4).
const POP: u8 = 10;
/// [`FIRST`]: 86/87 (XCHG r/m, reg: [`Lane::Exchange`]).
const XCHG: u8 = 11;
/// [`FIRST`]: FE (/0 /1 INC/DEC r/m8, [`Lane::Unary`]; the rest `#UD`,
/// the full path's).
const GROUP8: u8 = 12;

/// The lane class of each first byte.
const FIRST: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match b as u8 {
            0x88..=0x8B | 0xC6 | 0xC7 | 0xA0..=0xA3 => MOV,
            0xA4..=0xA7 | 0xAA..=0xAF => STRING,
            0x0F => ESCAPE,
            0x66 | 0xF2 | 0xF3 => MANDATORY,
            0x40..=0x4F => REX,
            0x86 | 0x87 => XCHG,
            0xF0 => INT,
            0xFE => GROUP8,
            0xFF => GROUP,
            0x8F => POP,
            0xF6 | 0xF7 => GROUP3,
            op if super::lane_alu::is_opcode(op) => ALU,
            _ => OTHER,
        };
        b += 1;
    }
    t
};

/// The lane of each byte after 0F (with no prefix before 0F but REX):
/// MOVZX/MOVSX (B6, B7, BE, BF) the MOV lane's, the integer opcodes of the
/// full decoder (`int::secondary`) the integer lane's, the SSE moves'
/// opcodes the SSE lane's; the rest the full path's. One load where a
/// chain of three tests cost every 0F form some 14 instructions.
const SECOND: [Lane; 256] = {
    let mut t = [Lane::Other; 256];
    let mut b = 0;
    while b < 256 {
        let op2 = b as u8;
        t[b] = if op2 & 0xF6 == 0xB6 {
            Lane::Mov
        } else if int::is_secondary(op2) {
            match super::lane_int::secondary_lane(op2) {
                Some(family) => family,
                None => Lane::Int,
            }
        } else if sse::is_opcode(op2) {
            Lane::Sse
        } else {
            Lane::Other
        };
        b += 1;
    }
    t
};

/// The lane of the byte after 0F ([`SECOND`]), none if there is none.
#[inline(always)]
fn second(op2: Option<&u8>) -> Lane {
    match op2 {
        Some(&b) => SECOND[usize::from(b)],
        None => Lane::Other,
    }
}

/// The lane of `bytes` in a mode whose default address size is `ADDR`
/// (REX exists in 64-bit mode only). Looks at no more than three bytes.
#[inline(always)]
pub(crate) fn lane<const ADDR: u8>(bytes: &[u8]) -> Lane {
    let Some(&first) = bytes.first() else {
        return Lane::Other;
    };
    let sse_at = |i: usize| {
        if bytes.get(i) == Some(&0x0F) && bytes.get(i + 1).is_some_and(|&op| sse::is_opcode(op)) {
            Lane::Sse
        } else {
            Lane::Other
        }
    };
    // FF /0 /1 (INC, DEC) are integer forms, FF /6 PUSH m; the rest of
    // the group the full path's. (FE: INC/DEC only.)
    let group = |modrm: Option<&u8>| match modrm.map(|m| (m >> 3) & 7) {
        Some(0 | 1) => Lane::Unary,
        Some(6) => Lane::Stack,
        _ => Lane::Other,
    };
    let group8 = |modrm: Option<&u8>| match modrm.map(|m| (m >> 3) & 7) {
        Some(0 | 1) => Lane::Unary,
        _ => Lane::Other,
    };
    // F6/F7: TEST is /0 and its alias /1 (the ALU lane's), NOT /2 and NEG
    // /3 integer forms; MUL/IMUL/DIV/IDIV the full path's.
    let group3 = |modrm: Option<&u8>| match modrm.map(|m| (m >> 3) & 7) {
        Some(0 | 1) => Lane::Alu,
        Some(2 | 3) => Lane::Unary,
        _ => Lane::Other,
    };
    match FIRST[usize::from(first)] {
        MOV => Lane::Mov,
        ALU => Lane::Alu,
        GROUP3 => group3(bytes.get(1)),
        INT => Lane::Int,
        XCHG => Lane::Exchange,
        STRING => Lane::String,
        GROUP => group(bytes.get(1)),
        GROUP8 => group8(bytes.get(1)),
        POP => match bytes.get(1) {
            Some(&modrm) if modrm & 0x38 == 0 => Lane::Stack,
            _ => Lane::Other,
        },
        ESCAPE => second(bytes.get(1)),
        MANDATORY => sse_at(1),
        // (One dispatch on the class of the byte after REX, as on the
        // first: a chain of class compares cost REX forms some 20
        // instructions.)
        REX if ADDR == 8 => match bytes.get(1) {
            Some(&b) => match FIRST[usize::from(b)] {
                MOV => Lane::Mov,
                ALU => Lane::Alu,
                GROUP3 => group3(bytes.get(2)),
                INT => Lane::Int,
                XCHG => Lane::Exchange,
                GROUP if group(bytes.get(2)) == Lane::Unary => Lane::Unary,
                GROUP8 => group8(bytes.get(2)),
                ESCAPE => second(bytes.get(2)),
                // (MOVSXD is 63 with REX.W, the only way 64-bit code
                // writes it.)
                _ if b == 0x63 => Lane::Int,
                _ => Lane::Other,
            },
            None => Lane::Other,
        },
        _ => Lane::Other,
    }
}

/// [`modrm_mov`]'s `KIND`: MOV r/m, reg (88/89).
const STORE: u8 = 0;
/// [`modrm_mov`]'s `KIND`: MOV reg, r/m (8A/8B).
const LOAD: u8 = 1;
/// [`modrm_mov`]'s `KIND`: MOV r/m, imm (C6/C7 /0).
const STORE_IMM: u8 = 2;
/// [`modrm_mov`]'s `KIND`: MOVSX reg, r/m8/16 (0F BE/BF); MOVZX is
/// [`LOAD`] with a narrower access.
const LOAD_SIGNED: u8 = 3;

/// The integer lane: the bytes [`lane`] takes for [`Lane::Int`], decoded
/// and executed by the lane's own code (`lane_int.rs`), which takes a
/// subset of what the full fast path's second decoder (`INT`) takes, with
/// the same result. Here the MOV/ALU decoder's attempt, its decline and
/// the restart from byte 0 are not paid, nor the full path's large frame,
/// nor the full decoder's generality. `None` (nothing done) for any case
/// it declines.
#[inline(always)]
pub(crate) fn run_int<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    super::lane_int::run::<ADDR, S, R, M>(state, mode, ram, mmio, exit_gpa, bytes)
}

/// The stack lane: PUSH m or POP m with no prefix, the stack family's
/// own entry for them (which the full path reaches for these bytes after
/// the decoders declined them), inline in the caller's copy for the
/// default address size `ADDR`. `None`: nothing done. Only for `bytes`
/// that [`lane`] gives [`Lane::Stack`] for (FF /6 or 8F /0, no prefix):
/// the stack family trusts that choice rather than checking it again.
#[inline(always)]
pub(crate) fn run_stack<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let p = Prefixes::default();
    stack::try_exec::<ADDR, true, S, R, M>(state, mode, ram, cache, mmio, bytes, &p, 0)
}

/// The MOV lane: MOV r/m, reg (88/89), reg, r/m (8A/8B), r/m, imm (C6/C7
/// /0), the moffs forms (A0-A3) and MOVZX/MOVSX (0F B6/B7/BE/BF), with no
/// prefix but (64-bit mode) REX,
/// in a mode whose default address size is `ADDR`. `None` (nothing done)
/// for other bytes and for any case the full fast path would leave to the
/// general one (a register operand, a fault, a page crossing, a
/// mismatching exit GPA, a possible `#AC`, bytes that end early). One arm
/// per opcode, so that each one's kind and operand size are constants.
#[inline(always)]
pub(crate) fn run_mov<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (rex, b, i) = rex_and_opcode::<ADDR>(bytes)?;
    let vsize = if rex & 8 != 0 {
        8
    } else if ADDR == 2 {
        2
    } else {
        4
    };
    let (st, r, m) = (state, ram, mmio);
    match b {
        0x88 => modrm_mov::<ADDR, STORE, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, 1, 1, rex),
        0x89 => {
            modrm_mov::<ADDR, STORE, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, vsize, vsize, rex)
        }
        0x8A => modrm_mov::<ADDR, LOAD, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, 1, 1, rex),
        0x8B => {
            modrm_mov::<ADDR, LOAD, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, vsize, vsize, rex)
        }
        0xC6 => {
            modrm_mov::<ADDR, STORE_IMM, S, R, M>(st, mode, r, m, exit_gpa, bytes, i, 1, 1, rex)
        }
        0xC7 => modrm_mov::<ADDR, STORE_IMM, S, R, M>(
            st, mode, r, m, exit_gpa, bytes, i, vsize, vsize, rex,
        ),
        0x0F => {
            // MOVZX/MOVSX: the operand size is the destination's, the
            // access 1 (B6, BE) or 2 (B7, BF) bytes.
            let op2 = byte(bytes, i)?;
            let access = if op2 & 1 == 0 { 1 } else { 2 };
            match op2 {
                0xB6 | 0xB7 => modrm_mov::<ADDR, LOAD, S, R, M>(
                    st,
                    mode,
                    r,
                    m,
                    exit_gpa,
                    bytes,
                    i + 1,
                    vsize,
                    access,
                    rex,
                ),
                0xBE | 0xBF => modrm_mov::<ADDR, LOAD_SIGNED, S, R, M>(
                    st,
                    mode,
                    r,
                    m,
                    exit_gpa,
                    bytes,
                    i + 1,
                    vsize,
                    access,
                    rex,
                ),
                _ => None,
            }
        }
        0xA0..=0xA3 => {
            let size = if b & 1 == 0 { 1 } else { vsize };
            let f = moffs::<ADDR, S>(st, bytes, i, b, vsize, rex, None)?;
            if b & 2 != 0 {
                checked_linear::<ADDR, S>(
                    st,
                    mode,
                    exit_gpa,
                    f.segment,
                    f.offset,
                    size,
                    AccessType::Write,
                )?;
                Some(store_and_commit(
                    st,
                    r,
                    m,
                    exit_gpa,
                    read_reg(st, 0, size, rex != 0),
                    size,
                    f.next_rip,
                ))
            } else {
                checked_linear::<ADDR, S>(
                    st,
                    mode,
                    exit_gpa,
                    f.segment,
                    f.offset,
                    size,
                    AccessType::Read,
                )?;
                Some(load_and_commit(
                    st, r, m, exit_gpa, 0, size, size, false, rex, f.next_rip,
                ))
            }
        }
        _ => None,
    }
}

/// [`run_mov`] for the ModRM forms, the ModRM byte at `bytes[i]`: `KIND`
/// [`STORE`], [`LOAD`], [`STORE_IMM`] or [`LOAD_SIGNED`], of operand size
/// `size`, accessing `access` bytes (`size` but for MOVZX/MOVSX).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn modrm_mov<const ADDR: u8, const KIND: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    mut i: usize,
    size: u8,
    access: u8,
    rex: u8,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let modrm = byte(bytes, i)?;
    i += 1;
    let md = modrm >> 6;
    let reg_field = (modrm >> 3) & 7;
    let rm = modrm & 7;
    // C6/C7 are MOV only with ModRM.reg 0.
    if md == 3 || (KIND == STORE_IMM && reg_field != 0) {
        return None;
    }
    let address = operand::address::<ADDR, S>(state, bytes, &mut i, md, rm, rex)?;
    let imm = if KIND == STORE_IMM {
        let imm_size = match size {
            1 => 1,
            2 => 2,
            _ => 4,
        };
        sized_field(bytes, &mut i, imm_size)?
    } else {
        0
    };
    // REX, opcode, ModRM, SIB, disp32 and imm32 are 12 bytes at most.
    let Placed { offset, next_rip } = address.place::<ADDR, S>(state, i);
    let segment = address.data_segment::<ADDR>();
    let kind = if KIND == LOAD || KIND == LOAD_SIGNED {
        AccessType::Read
    } else {
        AccessType::Write
    };
    checked_linear::<ADDR, S>(state, mode, exit_gpa, segment, offset, access, kind)?;
    let reg = reg_field | ((rex & 4) << 1);
    Some(match KIND {
        LOAD => load_and_commit(
            state, ram, mmio, exit_gpa, reg, size, access, false, rex, next_rip,
        ),
        LOAD_SIGNED => load_and_commit(
            state, ram, mmio, exit_gpa, reg, size, access, true, rex, next_rip,
        ),
        STORE => {
            let v = read_reg(state, reg, size, rex != 0);
            store_and_commit(state, ram, mmio, exit_gpa, v, size, next_rip)
        }
        _ => store_and_commit(state, ram, mmio, exit_gpa, imm, size, next_rip),
    })
}

/// A MOV store of the low `size` bytes of `value` at `gpa`, then the
/// commit ([`retire_flagless`]): the executor's store arm.
#[inline(always)]
fn store_and_commit<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    value: u64,
    size: u8,
    next_rip: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    super::families::write_sized(ram, mmio, gpa, usize::from(size), value)?;
    retire_flagless(state, state.rflags(), next_rip);
    Ok(Outcome::Done)
}

/// A MOV load of `access` bytes at `gpa` (sign-extended if `signed`) into
/// register `reg` of `size` bytes (AH..BH for 4-7 at size 1 without REX),
/// then the commit ([`retire_flagless`]): the executor's load arm.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn load_and_commit<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    reg: u8,
    size: u8,
    access: u8,
    signed: bool,
    rex: u8,
    next_rip: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let mut v = read_sized(ram, mmio, gpa, usize::from(access))?;
    if signed {
        v = crate::flags::sign_extend(v, access);
    }
    let (g, v) = merged(state, reg, size, rex != 0, v);
    state.set_gpr(g, v);
    retire_flagless(state, state.rflags(), next_rip);
    Ok(Outcome::Done)
}

/// The string lane: a single string instruction with no prefix, the
/// string family's own entry for them, inline, in a mode whose default
/// address size is `ADDR`. `None`: nothing done.
#[inline(always)]
pub(crate) fn run_string<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    cache: &mut FetchCache,
    mmio: &mut M,
    exit_gpa: u64,
    opcode: u8,
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    string::lane::<ADDR, S, R, M>(state, mode, ram, cache, mmio, exit_gpa, opcode)
}

/// The SSE lane: the SSE family's own entry. `None`: nothing done.
#[inline(always)]
pub(crate) fn run_sse<S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    sse::try_prefixed(state, mode, ram, mmio, exit_gpa, bytes).flatten()
}

#[cfg(test)]
mod tests {
    //! The lanes' first-byte choice, and the MOV lane against the full
    //! fast path's MOV decoder and executor (the differential tests of
    //! `mod.rs` and `families_tests.rs` hold every lane to the general
    //! path, through the memory assist's entry).

    use std::vec::Vec;

    use super::super::lane_harness::{
        Machine, SegmentDraw, by_address_size, case, each_lane_mode, exit_gpa, form_linear,
        mode_registers, push_modrm_and_tail, random_mod, random_rip_and_flags, random_segments,
    };
    use super::super::lane_int::{run_bits, run_cond, run_exchange, run_unary};
    use super::{Lane, lane, run_int, run_mov, run_stack};
    use crate::FetchCache;
    use crate::mode::CpuMode;
    use crate::testutil::{RecordingMmio, Rng, TestRam};
    use crate::{Registers, Segment};

    #[test]
    fn lanes_pick_their_first_bytes() {
        let cases: &[(&[u8], Lane, Lane)] = &[
            // (bytes, lane in 64-bit mode, lane elsewhere)
            (&[0x89, 0x03], Lane::Mov, Lane::Mov),
            (&[0x8A, 0x07], Lane::Mov, Lane::Mov),
            (&[0xC7, 0x03, 1, 0, 0, 0], Lane::Mov, Lane::Mov),
            (&[0xA1, 0, 0], Lane::Mov, Lane::Mov),
            // REX is INC/DEC outside 64-bit mode.
            (&[0x48, 0x89, 0x03], Lane::Mov, Lane::Other),
            (&[0x48, 0x01, 0x03], Lane::Alu, Lane::Other),
            (&[0x01, 0x03], Lane::Alu, Lane::Alu),
            (&[0x3B, 0x03], Lane::Alu, Lane::Alu),
            (&[0x3C, 0x03], Lane::Other, Lane::Other),
            (&[0x05, 0x03], Lane::Other, Lane::Other),
            (&[0x0F, 0x03], Lane::Other, Lane::Other),
            (&[0x26, 0x01, 0x03], Lane::Other, Lane::Other),
            (&[0x83, 0x0B, 0x40], Lane::Alu, Lane::Alu),
            (&[0x82, 0x0B, 0x40], Lane::Other, Lane::Other),
            (&[0x84, 0x0B], Lane::Alu, Lane::Alu),
            (&[0xF7, 0x03, 1, 0, 0, 0], Lane::Alu, Lane::Alu),
            (&[0xF6, 0x0B, 1], Lane::Alu, Lane::Alu),
            (&[0xF7, 0x13], Lane::Unary, Lane::Unary),
            (&[0xF6, 0x1B], Lane::Unary, Lane::Unary),
            (&[0xF7, 0x23], Lane::Other, Lane::Other),
            (&[0xF7], Lane::Other, Lane::Other),
            (&[0x4C, 0xF7, 0x03, 1, 0, 0, 0], Lane::Alu, Lane::Other),
            (&[0x48, 0xF7, 0x1B], Lane::Unary, Lane::Other),
            (&[0x48, 0x83, 0x03, 1], Lane::Alu, Lane::Other),
            (&[0xFE, 0x03], Lane::Unary, Lane::Unary),
            (&[0xFE, 0x0B], Lane::Unary, Lane::Unary),
            (&[0xFE, 0x13], Lane::Other, Lane::Other),
            (&[0xFE], Lane::Other, Lane::Other),
            (&[0x41, 0xFE, 0x0B], Lane::Unary, Lane::Other),
            (&[0x41, 0xFE, 0x33], Lane::Other, Lane::Other),
            (&[0xF0, 0xFE, 0x03], Lane::Int, Lane::Int),
            (&[0xF0, 0xFF, 0x0B], Lane::Int, Lane::Int),
            (&[0xF0, 0xF7, 0x1B], Lane::Int, Lane::Int),
            (&[0x87, 0x0B], Lane::Exchange, Lane::Exchange),
            (&[0x41, 0x86, 0x0B], Lane::Exchange, Lane::Other),
            (&[0xF0, 0x87, 0x0B], Lane::Int, Lane::Int),
            (&[0xFF, 0x03], Lane::Unary, Lane::Unary),
            (&[0xFF, 0x0B], Lane::Unary, Lane::Unary),
            (&[0xFF, 0x33], Lane::Stack, Lane::Stack),
            (&[0xFF, 0x13], Lane::Other, Lane::Other),
            (&[0x8F, 0x03], Lane::Stack, Lane::Stack),
            (&[0x8F, 0x0B], Lane::Other, Lane::Other),
            (&[0xFF], Lane::Other, Lane::Other),
            (&[0x48, 0xFF, 0x03], Lane::Unary, Lane::Other),
            (&[0x48, 0xFF, 0x33], Lane::Other, Lane::Other),
            (&[0x48, 0x63, 0x03], Lane::Int, Lane::Other),
            (&[0x0F, 0xB1, 0x0B], Lane::Exchange, Lane::Exchange),
            (&[0x0F, 0xC0, 0x0B], Lane::Exchange, Lane::Exchange),
            (&[0x0F, 0xAB, 0x0B], Lane::Bits, Lane::Bits),
            (&[0x48, 0x0F, 0xBA, 0x2B, 1], Lane::Bits, Lane::Other),
            (&[0x0F, 0x44, 0x0B], Lane::Cond, Lane::Cond),
            (&[0x0F, 0xC3, 0x0B], Lane::Int, Lane::Int),
            (&[0x48, 0x0F, 0xC7, 0x0B], Lane::Int, Lane::Other),
            (&[0x0F, 0x94, 0x03], Lane::Cond, Lane::Cond),
            (&[0xF0, 0x01, 0x03], Lane::Int, Lane::Int),
            (&[0xF7, 0x1B], Lane::Unary, Lane::Unary),
            (&[0xF6, 0x13], Lane::Unary, Lane::Unary),
            (&[0x48, 0xF7, 0x13], Lane::Unary, Lane::Other),
            (&[0x48, 0xF7, 0x03, 1, 0, 0, 0], Lane::Alu, Lane::Other),
            (&[0x66, 0x01, 0x03], Lane::Other, Lane::Other),
            (&[0x41, 0xAA], Lane::Other, Lane::Other),
            (&[0xAA], Lane::String, Lane::String),
            (&[0xAF], Lane::String, Lane::String),
            (&[0xA8, 0x01], Lane::Other, Lane::Other),
            (&[0xF3, 0xAA], Lane::Other, Lane::Other),
            (&[0x66, 0x89, 0x03], Lane::Other, Lane::Other),
            (&[0x66, 0x0F, 0x7F, 0x03], Lane::Sse, Lane::Sse),
            (&[0xF3, 0x0F, 0x6F, 0x03], Lane::Sse, Lane::Sse),
            (&[0x0F, 0x29, 0x03], Lane::Sse, Lane::Sse),
            (&[0x48, 0x0F, 0x29, 0x03], Lane::Sse, Lane::Other),
            (&[0x0F, 0xB6, 0x03], Lane::Mov, Lane::Mov),
            (&[0x0F, 0xBF, 0x03], Lane::Mov, Lane::Mov),
            (&[0x48, 0x0F, 0xBE, 0x03], Lane::Mov, Lane::Other),
            (&[0x0F, 0xAF, 0x03], Lane::Other, Lane::Other),
            (&[0x66, 0x0F, 0xB6, 0x03], Lane::Other, Lane::Other),
            (&[0x0F], Lane::Other, Lane::Other),
            (&[0x66], Lane::Other, Lane::Other),
            (&[], Lane::Other, Lane::Other),
        ];
        for &(bytes, long, other) in cases {
            assert_eq!(lane::<8>(bytes), long, "{bytes:02x?}");
            assert_eq!(lane::<4>(bytes), other, "{bytes:02x?}");
            assert_eq!(lane::<2>(bytes), other, "{bytes:02x?}");
        }
    }

    /// FF and 8F (classes of their own) by every reg field and `mod`: the
    /// stack lane trusts this choice (`run_stack` does not check the
    /// opcode and reg field again), so only FF /6 and 8F /0 may be
    /// [`Lane::Stack`], and with REX (64-bit mode) neither is.
    #[test]
    fn ff_and_8f_lanes_by_reg_field() {
        for md in 0..4u8 {
            for reg in 0..8u8 {
                let modrm = md << 6 | reg << 3 | 3;
                let ff = match reg {
                    0 | 1 => Lane::Unary,
                    6 => Lane::Stack,
                    _ => Lane::Other,
                };
                let pop = if reg == 0 { Lane::Stack } else { Lane::Other };
                for (bytes, want) in [([0xFF, modrm], ff), ([0x8F, modrm], pop)] {
                    assert_eq!(lane::<8>(&bytes), want, "{bytes:02x?}");
                    assert_eq!(lane::<4>(&bytes), want, "{bytes:02x?}");
                    assert_eq!(lane::<2>(&bytes), want, "{bytes:02x?}");
                }
                let rex_ff = if ff == Lane::Unary {
                    Lane::Unary
                } else {
                    Lane::Other
                };
                assert_eq!(lane::<8>(&[0x48, 0xFF, modrm]), rex_ff);
                assert_eq!(lane::<8>(&[0x41, 0x8F, modrm]), Lane::Other);
            }
        }
        assert_eq!(lane::<4>(&[0x8F]), Lane::Other);
        assert_eq!(lane::<8>(&[0x48, 0x8F]), Lane::Other);
    }

    /// Random bytes of the MOV lane's shapes and near misses.
    fn random_mov(rng: &mut Rng, long: bool) -> Vec<u8> {
        let mut v = Vec::new();
        if rng.below(3) == 0 {
            v.push(if long {
                0x40 | rng.below(16) as u8
            } else {
                0x66
            });
        }
        let ops = [
            0x88, 0x89, 0x8A, 0x8B, 0xC6, 0xC7, 0xA0, 0xA1, 0xA2, 0xA3, 0x8C, 0x01, 0x0F,
        ];
        let op = ops[rng.below(ops.len() as u64) as usize];
        v.push(op);
        if op == 0x0F {
            v.push([0xB6, 0xB7, 0xBE, 0xBF, 0xAF, 0x7F][rng.below(6) as usize]);
        }
        let md = random_mod(rng);
        let reg = if rng.below(2) == 0 {
            0
        } else {
            rng.below(8) as u8
        };
        push_modrm_and_tail(rng, &mut v, md, reg, 5);
        v
    }

    /// A state of `mode` with random registers, flags and (outside 64-bit
    /// mode) DS and SS bases and limits.
    fn state(rng: &mut Rng, mode: CpuMode) -> Registers {
        let mut regs = mode_registers(mode, 0x20000);
        let draw = SegmentDraw {
            segments: &[Segment::Ds, Segment::Ss],
            limits: &[0xFFF, 0x1FFF, 0xFFFF],
            db: false,
            type_one_in: 0,
            types: &[],
        };
        random_segments(rng, mode, &mut regs, &draw);
        for g in regs.gprs.iter_mut() {
            *g = match rng.below(3) {
                0 => rng.below(0x400),
                1 => 0x1000 + rng.below(0x1000),
                _ => rng.next(),
            };
        }
        random_rip_and_flags(rng, mode, &mut regs, 0x1000);
        regs
    }

    /// `run_mov` in a mode of default address size `ADDR` against the MOV
    /// decoder and executor on `iterations` random cases; returns how many
    /// the lane took.
    fn compare<const ADDR: u8>(rng: &mut Rng, mode: CpuMode, iterations: usize) -> usize {
        let mut taken = 0;
        for _ in 0..iterations {
            let bytes = random_mov(rng, mode.is_64bit());
            let regs = state(rng, mode);
            assert_eq!(CpuMode::of(&regs), mode);
            // The exit GPA at the page offset of the decoded linear
            // address (an MMIO page), else anywhere.
            let linear = form_linear::<ADDR, false>(&regs, mode, &bytes);
            let gpa = exit_gpa(rng, 0x1_0000_0000, linear);
            let what = case(mode, &bytes, gpa);
            let ram = TestRam::new(0x10000);
            let mmio = RecordingMmio {
                fail_at: (rng.below(16) == 0).then_some(0),
                ..RecordingMmio::default()
            };
            let mut ours = Machine::new(&regs, &ram, &mmio);
            let mut decoder = Machine::new(&regs, &ram, &mmio);
            let (r1, ram1, m1) = (&mut ours.regs, &mut ours.ram, &mut ours.mmio);
            let lane = run_mov::<ADDR, _, _, _>(r1, mode, ram1, m1, gpa, &bytes);
            let (r2, ram2, m2) = (&mut decoder.regs, &mut decoder.ram, &mut decoder.mmio);
            let full = super::super::decode::<ADDR, false, _>(&regs, mode, gpa, &bytes)
                .map(|(f, _)| super::super::exec(r2, ram2, m2, gpa, &f));
            if super::lane::<ADDR>(&bytes) == Lane::Mov {
                assert_eq!(lane, full, "{what}");
            } else {
                // Not the lane's (a 66 prefix, another opcode): the full
                // path's.
                assert!(lane.is_none(), "{what}");
            }
            if lane.is_some() {
                taken += 1;
                ours.assert_same(&decoder, &what);
            } else {
                ours.assert_untouched(&regs, &what);
            }
        }
        taken
    }

    /// Random bytes of the integer and stack lanes' shapes and near
    /// misses.
    fn random_int(rng: &mut Rng, long: bool) -> Vec<u8> {
        let mut v = Vec::new();
        if rng.below(4) == 0 {
            let prefixes = [0x66, 0xF0, 0x48, 0x41, 0x44, 0x4C];
            let p = prefixes[rng.below(prefixes.len() as u64) as usize];
            v.push(if !long && p & 0xF0 == 0x40 { 0x66 } else { p });
        }
        let ops = [
            0x00, 0x01, 0x02, 0x03, 0x09, 0x21, 0x29, 0x31, 0x38, 0x3B, 0x05, 0x80, 0x81, 0x82,
            0x83, 0x84, 0x85, 0x86, 0x87, 0xF6, 0xF7, 0xFE, 0xFF, 0xFF, 0x8F, 0x8F, 0x63, 0x89,
            0x0F, 0x0F,
        ];
        let op = ops[rng.below(ops.len() as u64) as usize];
        v.push(op);
        if op == 0x0F {
            let ops2 = [
                0xB0, 0xB1, 0xC0, 0xC1, 0xA3, 0xAB, 0xB3, 0xBB, 0xBA, 0xC7, 0x94, 0x9F, 0x44, 0x4F,
                0xC3, 0xAF, 0xB6, 0x29,
            ];
            v.push(ops2[rng.below(ops2.len() as u64) as usize]);
        }
        let md = random_mod(rng);
        let reg = rng.below(8) as u8;
        push_modrm_and_tail(rng, &mut v, md, reg, 5);
        v
    }

    /// The integer lane (on any bytes) and the stack lane (on its own)
    /// against the full fast path ([`run_mode`](super::super::run_mode))
    /// in a mode of default address size `ADDR`, on `iterations` random
    /// cases: whenever a lane takes the bytes, the full path takes them
    /// too, with the same result, registers, RAM and device log; a lane
    /// that declines does nothing. Returns how many the lanes took.
    fn compare_int<const ADDR: u8>(rng: &mut Rng, mode: CpuMode, iterations: usize) -> usize {
        let mut taken = 0;
        for _ in 0..iterations {
            let bytes = random_int(rng, mode.is_64bit());
            let regs = state(rng, mode);
            let linear = form_linear::<ADDR, true>(&regs, mode, &bytes);
            // RAM (the locked compare-and-write) or a device.
            let page = if rng.below(4) == 0 {
                0x8000
            } else {
                0x1_0000_0000
            };
            let gpa = exit_gpa(rng, page, linear);
            let mut ram = TestRam::new(0x10000);
            let seed = rng.next();
            for (k, b) in ram.mem[0x8000..0x9000].iter_mut().enumerate() {
                *b = (seed >> (k % 7 * 8)) as u8 ^ k as u8;
            }
            let what = case(mode, &bytes, gpa);
            let mmio = RecordingMmio {
                fail_at: (rng.below(16) == 0).then_some(0),
                ..RecordingMmio::default()
            };
            let mut ours = Machine::new(&regs, &ram, &mmio);
            let (r1, ram1, m1) = (&mut ours.regs, &mut ours.ram, &mut ours.mmio);
            // (The entry the memory assist calls for the lane of the
            // bytes; the integer lane's `run` for the bytes of no lane.)
            let got = match lane::<ADDR>(&bytes) {
                Lane::Stack => {
                    let mut cache = FetchCache::default();
                    run_stack::<ADDR, _, _, _>(r1, mode, ram1, &mut cache, m1, &bytes)
                }
                Lane::Exchange => run_exchange::<ADDR, _, _, _>(r1, mode, ram1, m1, gpa, &bytes),
                Lane::Bits => run_bits::<ADDR, _, _, _>(r1, mode, ram1, m1, gpa, &bytes),
                Lane::Cond => run_cond::<ADDR, _, _, _>(r1, mode, ram1, m1, gpa, &bytes),
                Lane::Unary => run_unary::<ADDR, _, _, _>(r1, mode, ram1, m1, gpa, &bytes),
                _ => run_int::<ADDR, _, _, _>(r1, mode, ram1, m1, gpa, &bytes),
            };
            let mut full = Machine::new(&regs, &ram, &mmio);
            let full_result = full.full_fast::<ADDR>(mode, gpa, &bytes);
            match got {
                Some(result) => {
                    taken += 1;
                    assert_eq!(Some(result), full_result, "{what}: the full fast path");
                    ours.assert_same(&full, &what);
                }
                None => ours.assert_untouched(&regs, &what),
            }
        }
        taken
    }

    #[test]
    fn int_and_stack_lanes_are_the_full_fast_path() {
        // (More than one case in 20: the integer lane takes its own forms
        // only, not the ALU ones without LOCK that the generator also
        // makes.)
        each_lane_mode(
            0x1A7E_5EED_0BAD_CAFE,
            3_000,
            30_000,
            20,
            |rng, mode, n| by_address_size!(mode, A => compare_int::<A>(rng, mode, n)),
        );
    }

    #[test]
    fn mov_lane_is_the_mov_decoder_and_executor() {
        each_lane_mode(
            0x0DDB_A11C_0FFE_E123,
            3_000,
            30_000,
            10,
            |rng, mode, n| by_address_size!(mode, A => compare::<A>(rng, mode, n)),
        );
    }
}
