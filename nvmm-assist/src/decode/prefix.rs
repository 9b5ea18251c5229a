//! Legacy and REX prefixes.

use super::cursor::Cursor;
use super::{DecodeError, RepPrefix};
use crate::mode::CpuMode;
use crate::state::Segment;

/// The prefixes in front of an opcode, as the CPU sees them, packed in one
/// word (bits: 0 = 66, 1 = 67, 2 = F0, 3-4 = the last of F3/F2, 8-15 = the
/// REX byte, 16-18 = the segment override), so that the decoder keeps them
/// in one register and tests them with one instruction. The F3/F2 and
/// segment fields hold the encoding of `Option<RepPrefix>` (2 bits) and
/// `Option<Segment>` (3 bits) XOR that of `None`, so that 0 is none and
/// reading a field back is an XOR.
#[derive(Debug, Clone, Copy)]
pub(super) struct Prefixes(u32);

const OPSIZE_BIT: u32 = 1;
const ADDRSIZE_BIT: u32 = 1 << 1;
const LOCK_BIT: u32 = 1 << 2;
const REP_SHIFT: u32 = 3;
const REP_MASK: u32 = 3 << REP_SHIFT;
const REX_SHIFT: u32 = 8;
const REX_MASK: u32 = 0xFF << REX_SHIFT;
const SEG_SHIFT: u32 = 16;
const SEG_MASK: u32 = 7 << SEG_SHIFT;
/// The field values of no F3/F2 and no segment override (see [`Prefixes`]).
const REP_NONE: u32 = 2;
const SEG_NONE: u32 = 6;

/// The field value of a repeat prefix.
const fn rep_field(r: RepPrefix) -> u32 {
    (r as u32 ^ REP_NONE) << REP_SHIFT
}

impl Prefixes {
    /// 0x66 seen.
    pub(super) fn opsize(&self) -> bool {
        self.0 & OPSIZE_BIT != 0
    }
    /// 66 and 67 as an index 0-3 (bit 0: 66, bit 1: 67).
    pub(super) fn size_bits(&self) -> usize {
        (self.0 & (OPSIZE_BIT | ADDRSIZE_BIT)) as usize
    }
    /// 0xF0 seen.
    pub(super) fn lock(&self) -> bool {
        self.0 & LOCK_BIT != 0
    }
    /// The last of F2/F3, if any (the repeat prefix of string instructions
    /// and the mandatory prefix of SSE opcodes).
    pub(super) fn rep(&self) -> Option<RepPrefix> {
        match ((self.0 & REP_MASK) >> REP_SHIFT) ^ REP_NONE {
            0 => Some(RepPrefix::Rep),
            1 => Some(RepPrefix::Repne),
            _ => None,
        }
    }
    /// The segment override in effect: the last one, except that in 64-bit
    /// mode ES/CS/SS/DS overrides are ignored (they neither select a
    /// segment nor cancel an earlier FS/GS).
    pub(super) fn segment(&self) -> Option<Segment> {
        Segment::from_index((((self.0 & SEG_MASK) >> SEG_SHIFT) ^ SEG_NONE) as u8)
    }
    /// The REX byte (0x40-0x4F) directly before the opcode, or 0. A REX
    /// followed by any other prefix is ignored, as the CPU ignores it.
    fn rex(&self) -> u8 {
        ((self.0 & REX_MASK) >> REX_SHIFT) as u8
    }
    pub(super) fn rex_present(&self) -> bool {
        self.0 & REX_MASK != 0
    }
    pub(super) fn rex_w(&self) -> bool {
        self.rex() & 8 != 0
    }
    /// REX.R as the value to OR into ModRM.reg.
    pub(super) fn rex_r(&self) -> u8 {
        (self.rex() & 4) << 1
    }
    /// REX.X as the value to OR into SIB.index.
    pub(super) fn rex_x(&self) -> u8 {
        (self.rex() & 2) << 2
    }
    /// REX.B as the value to OR into ModRM.rm / SIB.base.
    pub(super) fn rex_b(&self) -> u8 {
        (self.rex() & 1) << 3
    }

    /// The SSE mandatory prefix: the last F2/F3 if any, else 66, else none.
    pub(super) fn mandatory(&self) -> Mandatory {
        match self.rep() {
            Some(RepPrefix::Rep) => Mandatory::F3,
            Some(RepPrefix::Repne) => Mandatory::F2,
            None if self.opsize() => Mandatory::P66,
            None => Mandatory::None,
        }
    }

    /// Consumes prefixes and returns them with the opcode byte that follows.
    ///
    /// One table lookup per byte gives what the byte does to the prefix
    /// word (which bits it keeps, which it sets) or that it is the opcode:
    /// no branch per prefix kind, and an instruction without prefixes (the
    /// common case) costs one load and one test.
    #[inline(always)]
    pub(super) fn parse(
        cur: &mut Cursor<'_>,
        mode: CpuMode,
    ) -> Result<(Prefixes, u8), DecodeError> {
        let effects = &EFFECT[usize::from(mode.is_64bit())];
        let mut p = 0u32;
        loop {
            let b = cur.byte()?;
            let e = effects[usize::from(b)];
            if e == NOT_A_PREFIX {
                return Ok((Prefixes(p), b));
            }
            p = (p & (e >> 32) as u32) | (e as u32 & !(REX_BYTE as u32)) | rex_bits(e, b);
        }
    }
}

/// The effect of a byte that is not a prefix (the opcode).
const NOT_A_PREFIX: u64 = 0;
/// Marks the effect of a REX byte: the byte itself goes into the REX field.
const REX_BYTE: u64 = 1 << 31;

/// The REX field of a REX byte `b` whose effect is `e`, else 0.
#[inline(always)]
fn rex_bits(e: u64, b: u8) -> u32 {
    if e & REX_BYTE != 0 {
        u32::from(b) << REX_SHIFT
    } else {
        0
    }
}

/// An effect: the bits of the prefix word kept (high half) and set (low
/// half). Every prefix but REX clears the REX field: a REX counts only
/// directly before the opcode.
const fn effect(keep: u32, set: u32) -> u64 {
    ((keep as u64) << 32) | set as u64
}

const fn segment_effect(s: Segment) -> u64 {
    effect(!(REX_MASK | SEG_MASK), (s as u32 ^ SEG_NONE) << SEG_SHIFT)
}

/// Prefix effects by byte, outside (0) and in (1) 64-bit mode.
const fn build_effects(long: bool) -> [u64; 256] {
    let mut t = [NOT_A_PREFIX; 256];
    t[0x66] = effect(!REX_MASK, OPSIZE_BIT);
    t[0x67] = effect(!REX_MASK, ADDRSIZE_BIT);
    t[0xF0] = effect(!REX_MASK, LOCK_BIT);
    t[0xF2] = effect(!(REX_MASK | REP_MASK), rep_field(RepPrefix::Repne));
    t[0xF3] = effect(!(REX_MASK | REP_MASK), rep_field(RepPrefix::Rep));
    // FS, GS: always in effect.
    t[0x64] = segment_effect(Segment::Fs);
    t[0x65] = segment_effect(Segment::Gs);
    if long {
        // ES, CS, SS, DS: ignored in 64-bit mode (they neither select a
        // segment nor cancel an earlier FS/GS), but they do end a REX.
        let ignored = effect(!REX_MASK, 0);
        t[0x26] = ignored;
        t[0x2E] = ignored;
        t[0x36] = ignored;
        t[0x3E] = ignored;
        // REX replaces any earlier REX; outside 64-bit mode 40-4F are
        // INC/DEC r32, opcodes.
        let mut b = 0x40;
        while b < 0x50 {
            t[b] = effect(!REX_MASK, 0) | REX_BYTE;
            b += 1;
        }
    } else {
        t[0x26] = segment_effect(Segment::Es);
        t[0x2E] = segment_effect(Segment::Cs);
        t[0x36] = segment_effect(Segment::Ss);
        t[0x3E] = segment_effect(Segment::Ds);
    }
    t
}

/// What each byte does to the prefix word, outside and in 64-bit mode.
static EFFECT: [[u64; 256]; 2] = [build_effects(false), build_effects(true)];

/// The mandatory prefix that selects among SSE opcodes sharing a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mandatory {
    None,
    P66,
    F3,
    F2,
}
