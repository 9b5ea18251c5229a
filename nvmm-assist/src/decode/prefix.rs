//! Legacy and REX prefixes.

use super::cursor::Cursor;
use super::{DecodeError, RepPrefix};
use crate::mode::CpuMode;
use crate::state::Segment;

/// The prefixes in front of an opcode, as the CPU sees them, packed in one
/// word (bits: 0 = 66, 1 = 67, 2 = F0, 3-4 = the last of F3 (1) / F2 (2),
/// 8-15 = the REX byte, 16-18 = the segment override + 1), so that the
/// decoder keeps them in one register and tests them with one instruction.
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

impl Prefixes {
    /// No prefix.
    pub(super) const NONE: Prefixes = Prefixes(0);

    /// 0x66 seen.
    pub(super) fn opsize(&self) -> bool {
        self.0 & OPSIZE_BIT != 0
    }
    /// 0x67 seen.
    pub(super) fn addrsize(&self) -> bool {
        self.0 & ADDRSIZE_BIT != 0
    }
    /// 0xF0 seen.
    pub(super) fn lock(&self) -> bool {
        self.0 & LOCK_BIT != 0
    }
    /// The last of F2/F3, if any (the repeat prefix of string instructions
    /// and the mandatory prefix of SSE opcodes).
    pub(super) fn rep(&self) -> Option<RepPrefix> {
        match (self.0 & REP_MASK) >> REP_SHIFT {
            0 => None,
            1 => Some(RepPrefix::Rep),
            _ => Some(RepPrefix::Repne),
        }
    }
    /// The segment override in effect: the last one, except that in 64-bit
    /// mode ES/CS/SS/DS overrides are ignored (they neither select a
    /// segment nor cancel an earlier FS/GS).
    pub(super) fn segment(&self) -> Option<Segment> {
        match (self.0 & SEG_MASK) >> SEG_SHIFT {
            0 => None,
            n => Segment::from_index(n as u8 - 1),
        }
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
    /// One table lookup per byte; an instruction without prefixes (the
    /// common case) costs one load and one test, and the prefix loop is
    /// out of line.
    #[inline(always)]
    pub(super) fn parse(
        cur: &mut Cursor<'_>,
        mode: CpuMode,
    ) -> Result<(Prefixes, u8), DecodeError> {
        let b = cur.byte()?;
        let class = CLASS[usize::from(b)];
        if class == NONE || (class == REX && !mode.is_64bit()) {
            return Ok((Prefixes::NONE, b));
        }
        Self::parse_from(cur, mode.is_64bit(), b)
    }

    /// The prefix loop from the first prefix byte `first` on.
    #[inline(never)]
    fn parse_from(
        cur: &mut Cursor<'_>,
        long: bool,
        first: u8,
    ) -> Result<(Prefixes, u8), DecodeError> {
        let mut p = 0u32;
        let mut b = first;
        loop {
            let class = CLASS[usize::from(b)];
            if class == NONE {
                return Ok((Prefixes(p), b));
            }
            if class == REX {
                if !long {
                    // INC/DEC r32 outside 64-bit mode.
                    return Ok((Prefixes(p), b));
                }
                p = (p & !REX_MASK) | (u32::from(b) << REX_SHIFT);
            } else {
                p &= !REX_MASK;
                let seg = |p: u32, s: Segment| (p & !SEG_MASK) | ((s as u32 + 1) << SEG_SHIFT);
                p = match class {
                    OPSIZE => p | OPSIZE_BIT,
                    ADDRSIZE => p | ADDRSIZE_BIT,
                    LOCK => p | LOCK_BIT,
                    REPNE => (p & !REP_MASK) | (2 << REP_SHIFT),
                    REP => (p & !REP_MASK) | (1 << REP_SHIFT),
                    // FS, GS: always in effect.
                    SEG_FS => seg(p, Segment::Fs),
                    SEG_GS => seg(p, Segment::Gs),
                    // ES, CS, SS, DS: ignored in 64-bit mode (they neither
                    // select a segment nor cancel an earlier FS/GS).
                    _ if long => p,
                    SEG_ES => seg(p, Segment::Es),
                    SEG_CS => seg(p, Segment::Cs),
                    SEG_SS => seg(p, Segment::Ss),
                    _ => seg(p, Segment::Ds),
                };
            }
            b = cur.byte()?;
        }
    }
}

// Prefix classes of [`CLASS`].
const NONE: u8 = 0;
const OPSIZE: u8 = 1;
const ADDRSIZE: u8 = 2;
const LOCK: u8 = 3;
const REPNE: u8 = 4;
const REP: u8 = 5;
const SEG_ES: u8 = 6;
const SEG_CS: u8 = 7;
const SEG_SS: u8 = 8;
const SEG_DS: u8 = 9;
const SEG_FS: u8 = 10;
const SEG_GS: u8 = 11;
/// 0x40-0x4F: REX in 64-bit mode, INC/DEC elsewhere.
const REX: u8 = 12;

const fn build_class() -> [u8; 256] {
    let mut t = [NONE; 256];
    t[0x66] = OPSIZE;
    t[0x67] = ADDRSIZE;
    t[0xF0] = LOCK;
    t[0xF2] = REPNE;
    t[0xF3] = REP;
    t[0x26] = SEG_ES;
    t[0x2E] = SEG_CS;
    t[0x36] = SEG_SS;
    t[0x3E] = SEG_DS;
    t[0x64] = SEG_FS;
    t[0x65] = SEG_GS;
    let mut b = 0x40;
    while b < 0x50 {
        t[b] = REX;
        b += 1;
    }
    t
}

/// The prefix class of every byte.
static CLASS: [u8; 256] = build_class();

/// The mandatory prefix that selects among SSE opcodes sharing a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mandatory {
    None,
    P66,
    F3,
    F2,
}
