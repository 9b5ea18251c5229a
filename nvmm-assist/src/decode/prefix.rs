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
    pub(super) fn parse(
        cur: &mut Cursor<'_>,
        mode: CpuMode,
    ) -> Result<(Prefixes, u8), DecodeError> {
        let mut p = Prefixes::default();
        let long = mode.is_64bit();
        loop {
            let b = cur.byte()?;
            let seg = match b {
                0x26 => Some(Segment::Es),
                0x2E => Some(Segment::Cs),
                0x36 => Some(Segment::Ss),
                0x3E => Some(Segment::Ds),
                0x64 => Some(Segment::Fs),
                0x65 => Some(Segment::Gs),
                _ => None,
            };
            if let Some(seg) = seg {
                let ignored = long && !matches!(seg, Segment::Fs | Segment::Gs);
                if !ignored {
                    p.segment = Some(seg);
                }
                p.rex = 0;
                continue;
            }
            match b {
                0x66 => p.opsize = true,
                0x67 => p.addrsize = true,
                0xF0 => p.lock = true,
                0xF2 => p.rep = Some(RepPrefix::Repne),
                0xF3 => p.rep = Some(RepPrefix::Rep),
                0x40..=0x4F if long => {
                    p.rex = b;
                    continue;
                }
                _ => return Ok((p, b)),
            }
            p.rex = 0;
        }
    }
}

/// The mandatory prefix that selects among SSE opcodes sharing a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mandatory {
    None,
    P66,
    F3,
    F2,
}
