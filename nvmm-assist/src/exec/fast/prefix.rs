//! Prefixes and ModRM memory operands of the fast path's families beyond
//! MOV and the ALU group (SSE moves, string instructions, PUSH/POP m),
//! with the general decoder's rules (`decode/prefix.rs`): the last segment
//! override wins (64-bit mode ignores ES/CS/SS/DS overrides), the last of
//! F2/F3 is the repeat or mandatory prefix, and a REX prefix counts only
//! directly before the opcode. LOCK is left to the general path.

use super::byte;
use super::operand::{self, Placed};
use crate::state::{CpuState, Segment};

/// The legacy and REX prefixes in front of an opcode.
#[derive(Clone, Copy, Default)]
pub(super) struct Prefixes {
    /// 0x66 seen.
    pub opsize: bool,
    /// 0x67 seen.
    pub addrsize: bool,
    /// The last of F2/F3 (its byte), or 0.
    pub rep: u8,
    /// The segment override in effect.
    pub segment: Option<Segment>,
    /// The REX byte directly before the opcode, or 0.
    pub rex: u8,
}

impl Prefixes {
    /// REX.W.
    pub fn rex_w(&self) -> bool {
        self.rex & 8 != 0
    }

    /// The operand size of a `v`-sized form in a mode whose default
    /// address size is `addr` (2, 4 or 8): REX.W gives 8, else 66 toggles
    /// the mode's default operand size (4 in 64-bit mode).
    pub fn v_size(&self, addr: u8) -> u8 {
        if self.rex_w() {
            8
        } else if self.opsize == (addr != 2) {
            2
        } else {
            4
        }
    }

    /// The address size in a mode whose default is `addr`: 67 toggles
    /// 8 to 4, 4 to 2, 2 to 4.
    pub fn address_size(&self, addr: u8) -> u8 {
        match (addr, self.addrsize) {
            (a, false) => a,
            (8, true) => 4,
            (4, true) => 2,
            _ => 4,
        }
    }
}

/// Parses the prefixes of `bytes`: the prefixes and the index of the
/// opcode byte. `None` for LOCK or bytes that end early.
#[inline(always)]
pub(super) fn parse(bytes: &[u8], long: bool) -> Option<(Prefixes, usize)> {
    let mut p = Prefixes::default();
    // An instruction is at most 15 bytes: more prefixes than that are the
    // general decoder's #GP.
    for (i, &b) in bytes.iter().enumerate().take(14) {
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
            if !long || matches!(seg, Segment::Fs | Segment::Gs) {
                p.segment = Some(seg);
            }
            p.rex = 0;
            continue;
        }
        match b {
            0x66 => p.opsize = true,
            0x67 => p.addrsize = true,
            0xF2 | 0xF3 => p.rep = b,
            0xF0 => return None,
            0x40..=0x4F if long => {
                p.rex = b;
                continue;
            }
            _ => return Some((p, i)),
        }
        p.rex = 0;
    }
    None
}

/// A ModRM memory operand with nothing after its displacement.
#[derive(Clone, Copy)]
pub(super) struct MemOperand {
    /// ModRM.reg with REX.R.
    pub reg: u8,
    /// The effective address, masked to the address size.
    pub offset: u64,
    /// The segment: the override, else SS for rBP/rSP-based forms, else DS.
    pub segment: Segment,
    /// The base is rBP or rSP (32/64-bit addressing) or rBP (16-bit).
    pub stack_based: bool,
    /// RIP after the instruction, wrapped at the code size.
    pub next_rip: u64,
}

/// RIP after an instruction of `len` bytes in a mode whose default address
/// size is `ADDR` (outside 64-bit mode it wraps at the code size).
#[inline(always)]
pub(super) fn next_rip<const ADDR: u8, S: CpuState + ?Sized>(state: &S, len: usize) -> u64 {
    let rip = state.rip().wrapping_add(len as u64);
    match ADDR {
        8 => rip,
        4 => rip & 0xFFFF_FFFF,
        _ => rip & 0xFFFF,
    }
}

/// Decodes the ModRM byte at `bytes[i]` and what follows as a memory
/// operand that ends the instruction, with the mode's default address
/// size `ADDR` (a 67 prefix is the caller's to refuse). `None` for a
/// register operand, bytes that end early or over 15 bytes.
#[inline(always)]
pub(super) fn mem_operand<const ADDR: u8, S: CpuState + ?Sized>(
    state: &S,
    bytes: &[u8],
    mut i: usize,
    p: &Prefixes,
) -> Option<MemOperand> {
    let modrm = byte(bytes, i)?;
    i += 1;
    let md = modrm >> 6;
    if md == 3 {
        return None;
    }
    let address = operand::address::<ADDR, S>(state, bytes, &mut i, md, modrm & 7, p.rex)?;
    if i > 15 {
        return None;
    }
    let Placed { offset, next_rip } = address.place::<ADDR, S>(state, i);
    // The stack forms' callers keep SS in 64-bit mode too: they check the
    // stack segment's own way.
    let default_seg = if address.stack {
        Segment::Ss
    } else {
        Segment::Ds
    };
    Some(MemOperand {
        reg: ((modrm >> 3) & 7) | ((p.rex & 4) << 1),
        offset,
        segment: p.segment.unwrap_or(default_seg),
        stack_based: address.stack,
        next_rip,
    })
}
