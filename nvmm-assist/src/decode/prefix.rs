//! Legacy and REX prefixes.

use super::cursor::Cursor;
use super::{DecodeError, RepPrefix};
use crate::mode::CpuMode;
use crate::state::Segment;

/// The prefixes in front of an opcode, as the CPU sees them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Prefixes {
    /// 0x66 seen.
    pub opsize: bool,
    /// 0x67 seen.
    pub addrsize: bool,
    /// 0xF0 seen.
    pub lock: bool,
    /// The last of F2/F3, if any (the repeat prefix of string instructions
    /// and the mandatory prefix of SSE opcodes).
    pub rep: Option<RepPrefix>,
    /// The segment override in effect: the last one, except that in 64-bit
    /// mode ES/CS/SS/DS overrides are ignored (they neither select a segment
    /// nor cancel an earlier FS/GS).
    pub segment: Option<Segment>,
    /// The REX byte (0x40-0x4F) directly before the opcode, or 0. A REX
    /// followed by any other prefix is ignored, as the CPU ignores it.
    pub rex: u8,
}

impl Prefixes {
    pub(super) fn rex_present(&self) -> bool {
        self.rex != 0
    }
    pub(super) fn rex_w(&self) -> bool {
        self.rex & 8 != 0
    }
    /// REX.R as the value to OR into ModRM.reg.
    pub(super) fn rex_r(&self) -> u8 {
        (self.rex & 4) << 1
    }
    /// REX.X as the value to OR into SIB.index.
    pub(super) fn rex_x(&self) -> u8 {
        (self.rex & 2) << 2
    }
    /// REX.B as the value to OR into ModRM.rm / SIB.base.
    pub(super) fn rex_b(&self) -> u8 {
        (self.rex & 1) << 3
    }

    /// The SSE mandatory prefix: the last F2/F3 if any, else 66, else none.
    pub(super) fn mandatory(&self) -> Mandatory {
        match self.rep {
            Some(RepPrefix::Rep) => Mandatory::F3,
            Some(RepPrefix::Repne) => Mandatory::F2,
            None if self.opsize => Mandatory::P66,
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
            return Ok((Prefixes::default(), b));
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
        let mut p = Prefixes::default();
        let mut b = first;
        loop {
            let class = CLASS[usize::from(b)];
            if class == NONE {
                return Ok((p, b));
            }
            if class == REX {
                if !long {
                    // INC/DEC r32 outside 64-bit mode.
                    return Ok((p, b));
                }
                p.rex = b;
            } else {
                p.rex = 0;
                match class {
                    OPSIZE => p.opsize = true,
                    ADDRSIZE => p.addrsize = true,
                    LOCK => p.lock = true,
                    REPNE => p.rep = Some(RepPrefix::Repne),
                    REP => p.rep = Some(RepPrefix::Rep),
                    // FS, GS: always in effect.
                    SEG_FS => p.segment = Some(Segment::Fs),
                    SEG_GS => p.segment = Some(Segment::Gs),
                    // ES, CS, SS, DS: ignored in 64-bit mode (they neither
                    // select a segment nor cancel an earlier FS/GS).
                    _ if long => {}
                    SEG_ES => p.segment = Some(Segment::Es),
                    SEG_CS => p.segment = Some(Segment::Cs),
                    SEG_SS => p.segment = Some(Segment::Ss),
                    _ => p.segment = Some(Segment::Ds),
                }
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
