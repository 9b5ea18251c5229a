//! The SSE moves with a memory operand at the exit GPA on the fast path:
//! MOVD/MOVQ (66 0F 6E/7E, 66 REX.W 0F 6E/7E, F3 0F 7E, 66 0F D6),
//! MOVDQA/MOVDQU (66/F3 0F 6F/7F), MOVAPS/MOVUPS (0F 28/29, 0F 10/11),
//! MOVAPD/MOVUPD (66 0F 28/29, 66 0F 10/11) and MOVNTDQ/MOVNTPS/MOVNTPD
//! (66 0F E7, 0F 2B, 66 0F 2B).
//!
//! The prefixes are the general decoder's rules (`decode/prefix.rs`, as
//! [`super::prefix::parse`] has them too): the last segment override wins
//! (64-bit mode ignores ES/CS/SS/DS overrides), the mandatory prefix is the
//! last of F2/F3, else 66, and a REX prefix counts only directly before the
//! opcode. The width, the alignment rule and the transferred bits are the
//! general executor's ([`sse::width`], [`sse::aligned`],
//! [`sse::value_mask`]). Anything that would fault (segment, alignment
//! `#GP`, `#AC`), a page-crossing access, a mismatching exit GPA, a 67 or
//! LOCK prefix, a state without XMM registers: `None`, the general path's.
//!
//! No `#UD`/`#NM` check (CR0.EM/TS, CR4.OSFXSR) here or in the general
//! path: the CPU checks them before any memory access, so a guest that
//! reaches a memory exit on one of these instructions has passed them.
//!
//! Cost: the families' first-byte filter hands these bytes to
//! [`try_prefixed`] before their own prefix parse; its scan and two table
//! lookups decide whether the bytes are an SSE move, so other forms that
//! start with a prefix byte pay a few instructions. The move itself runs
//! inline in the assist: the operand and its checks specialised on the
//! mode's address size (outside 64-bit mode with the segment checks of
//! `linear_address` inline, [`legacy_checked`]), the access on the width
//! (every bus access has a constant length, so the callbacks inline to
//! fixed-size copies and the `u128` masks fold away), with its result (a
//! bus error at most) in a register. In the bench: 295-380 instructions per
//! call including the harness, against 470-578 before and 298 for a MOV.

use super::super::{alignment_faults, read_in_page, sse, write_in_page};
use super::prefix::{Prefixes, mem_operand};
use super::retire_flagless;
use crate::Outcome;
use crate::access::AccessType;
use crate::bus::{BusError, GuestRam, MmioBus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::mode::CpuMode;
use crate::segment::{is_canonical, legacy_checked, linear_address};
use crate::state::{CpuState, Segment};

/// A packed form's width field (bits 1:0): 0 not a move, 1 4 bytes, 2 8
/// bytes, 3 16 bytes.
const WIDTH: u8 = 3;
/// A packed form's bit: `#GP(0)` when not 16-byte aligned.
const ALIGNED: u8 = 4;
/// A packed form's bit: a load (XMM from memory), else a store.
const LOAD: u8 = 8;

/// `mnemonic` loading (`load`) or storing, packed in a byte.
const fn pack(mnemonic: Mnemonic, load: bool) -> u8 {
    let width = match sse::width(mnemonic) {
        4 => 1,
        8 => 2,
        _ => 3,
    };
    let aligned = if sse::aligned(mnemonic) { ALIGNED } else { 0 };
    width | aligned | if load { LOAD } else { 0 }
}

/// The SSE move of the opcode byte after 0F, the mandatory prefix (0 none,
/// 1 66, 2 F2, 3 F3) and REX.W, packed; 0 for none.
const fn form(op2: u8, mandatory: u8, rex_w: bool) -> u8 {
    use Mnemonic as M;
    match (op2, mandatory) {
        (0x10, 0) => pack(M::Movups, true),
        (0x10, 1) => pack(M::Movupd, true),
        (0x11, 0) => pack(M::Movups, false),
        (0x11, 1) => pack(M::Movupd, false),
        (0x28, 0) => pack(M::Movaps, true),
        (0x28, 1) => pack(M::Movapd, true),
        (0x29, 0) => pack(M::Movaps, false),
        (0x29, 1) => pack(M::Movapd, false),
        (0x2B, 0) => pack(M::Movntps, false),
        (0x2B, 1) => pack(M::Movntpd, false),
        (0x6E, 1) if rex_w => pack(M::Movq, true),
        (0x6E, 1) => pack(M::Movd, true),
        (0x6F, 1) => pack(M::Movdqa, true),
        (0x6F, 3) => pack(M::Movdqu, true),
        (0x7E, 1) if rex_w => pack(M::Movq, false),
        (0x7E, 1) => pack(M::Movd, false),
        (0x7E, 3) => pack(M::Movq, true),
        (0x7F, 1) => pack(M::Movdqa, false),
        (0x7F, 3) => pack(M::Movdqu, false),
        (0xD6, 1) => pack(M::Movq, false),
        (0xE7, 1) => pack(M::Movntdq, false),
        _ => 0,
    }
}

/// The opcode bytes after 0F that are an SSE move with some prefix, in
/// [`FORMS`]' row order.
const OPCODES: [u8; 11] = [
    0x10, 0x11, 0x28, 0x29, 0x2B, 0x6E, 0x6F, 0x7E, 0x7F, 0xD6, 0xE7,
];

/// [`form`] as a table: row [`ROWS`]`[op2]`, column `mandatory << 1 | REX.W`.
static FORMS: [[u8; 8]; 11] = {
    let mut t = [[0u8; 8]; 11];
    let mut r = 0;
    while r < OPCODES.len() {
        let mut c = 0;
        while c < 8 {
            t[r][c] = form(OPCODES[r], (c >> 1) as u8, c & 1 != 0);
            c += 1;
        }
        r += 1;
    }
    t
};

/// The [`FORMS`] row of each opcode byte after 0F: its index in
/// [`OPCODES`], or `u8::MAX` (no row) for the others.
static ROWS: [u8; 256] = {
    let mut t = [u8::MAX; 256];
    let mut r = 0;
    while r < OPCODES.len() {
        t[OPCODES[r] as usize] = r as u8;
        r += 1;
    }
    t
};

/// Whether `op2`, the byte after 0F, is an SSE move's opcode with some
/// prefix (a row of [`FORMS`]).
#[inline(always)]
pub(super) const fn is_opcode(op2: u8) -> bool {
    ROWS[op2 as usize] != u8::MAX
}

/// What [`run`] needs besides the bytes, in one register.
#[derive(Clone, Copy)]
struct At {
    /// The packed form (non-zero).
    form: u8,
    mode: CpuMode,
    /// The index of the ModRM byte.
    modrm: u8,
    /// The REX byte directly before 0F, or 0.
    rex: u8,
    /// The segment override in effect.
    segment: Option<Segment>,
}

/// [`CLASS`] of the bytes [`scan`] stops at (0F, 66, F2 and F3 it
/// compares first and never looks up; 67 and LOCK are the general path's).
const STOP: u8 = 0;
/// [`CLASS`] of 40-4F (REX in 64-bit mode).
const REX: u8 = 1;
/// [`CLASS`] of 64 and 65 (FS, GS).
const FS_GS: u8 = 2;
/// [`CLASS`] of 26, 2E, 36, 3E (ES, CS, SS, DS: ignored in 64-bit mode).
const ES_CS_SS_DS: u8 = 3;

/// What each byte other than 0F, 66, F2 and F3 is to [`scan`]: one load
/// decides, so that the families' other forms that start with a prefix
/// byte pay a few instructions for the scan before their own parse.
static CLASS: [u8; 256] = {
    let mut t = [STOP; 256];
    let mut b = 0x40;
    while b < 0x50 {
        t[b] = REX;
        b += 1;
    }
    t[0x64] = FS_GS;
    t[0x65] = FS_GS;
    t[0x26] = ES_CS_SS_DS;
    t[0x2E] = ES_CS_SS_DS;
    t[0x36] = ES_CS_SS_DS;
    t[0x3E] = ES_CS_SS_DS;
    t
};

/// The prefixes in front of a 0F byte: the index of the 0F, the mandatory
/// prefix (0 none, 1 66, 2 F2, 3 F3), the REX byte directly before the 0F
/// (or 0) and the segment override in effect, with
/// [`super::prefix::parse`]'s rules. `None` when the first byte after at
/// most 14 prefixes is not 0F, or for a 67 or LOCK prefix.
#[inline(always)]
fn scan(bytes: &[u8], long: bool) -> Option<(usize, u8, u8, Option<Segment>)> {
    let mut mandatory = 0;
    let mut rex = 0;
    let mut segment = None;
    let mut i = 0;
    loop {
        let b = *bytes.get(i)?;
        // 0F, 66 and F2/F3 by comparison (the usual bytes of an SSE
        // move), the rest by class.
        if b == 0x0F {
            return Some((i, mandatory, rex, segment));
        }
        rex = 0;
        if b == 0x66 {
            if mandatory == 0 {
                mandatory = 1;
            }
        } else if b & 0xFE == 0xF2 {
            mandatory = b - 0xF0;
        } else {
            match CLASS[usize::from(b)] {
                REX if long => rex = b,
                FS_GS => segment = Some(if b == 0x64 { Segment::Fs } else { Segment::Gs }),
                ES_CS_SS_DS => {
                    if !long {
                        // The segment is in bits 4:3 of the byte.
                        segment = Segment::from_index((b >> 3) & 3);
                    }
                }
                _ => return None,
            }
        }
        i += 1;
        if i >= 14 {
            return None;
        }
    }
}

/// Tries the SSE moves on a memory exit with instruction `bytes` in
/// `mode`: `None` when the bytes are not one of their opcodes (after the
/// prefixes, 0F and a byte of [`OPCODES`]), `Some(None)` when they
/// are but this path does not handle them (the general path's), else the
/// result. Inline, so that declining costs the prefix scan only.
#[allow(clippy::option_option)]
#[inline(always)]
pub(super) fn try_prefixed<S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<Option<Result<Outcome, Error>>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // No prefix (the movaps/movups/movntps forms, and the integer forms
    // with a 0F opcode that come through here): no scan.
    let (i, mandatory, rex, segment) = if bytes.first() == Some(&0x0F) {
        (0, 0, 0, None)
    } else {
        scan(bytes, mode.is_64bit())?
    };
    let row = FORMS.get(usize::from(ROWS[usize::from(*bytes.get(i + 1)?)]))?;
    let column = usize::from(mandatory) << 1 | usize::from(rex >> 3 & 1);
    let form = row[column & 7];
    if form == 0 {
        return Some(None);
    }
    let at = At {
        form,
        mode,
        // At most 13 + 2.
        modrm: (i + 2) as u8,
        rex,
        segment,
    };
    Some(
        run(state, ram, mmio, exit_gpa, bytes, at)
            .map(|r| r.map(|()| Outcome::Done).map_err(Error::from)),
    )
}

/// The SSE move `at` describes: `None` if not handled, else the bus
/// callbacks' result. The operand and its checks are specialised on the
/// mode's address size, the access on the width.
#[inline(always)]
fn run<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
    at: At,
) -> Option<Result<(), BusError>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (index, next_rip) = match at.mode.default_address_size() {
        8 => locate::<8, S>(state, exit_gpa, bytes, at)?,
        4 => locate::<4, S>(state, exit_gpa, bytes, at)?,
        _ => locate::<2, S>(state, exit_gpa, bytes, at)?,
    };
    let current = state.xmm(index)?;
    let load = at.form & LOAD != 0;
    let done = match at.form & WIDTH {
        3 => transfer::<16, S, R, M>(state, ram, mmio, exit_gpa, index, current, load),
        2 => transfer::<8, S, R, M>(state, ram, mmio, exit_gpa, index, current, load),
        _ => transfer::<4, S, R, M>(state, ram, mmio, exit_gpa, index, current, load),
    };
    if done.is_ok() {
        retire_flagless(state, state.rflags(), next_rip);
    }
    Some(done)
}

/// The memory operand of `at` in a mode whose default address size is
/// `ADDR`, and its checks: the XMM register's index and the RIP after the
/// instruction, or `None` for anything the general path must see.
#[inline(always)]
fn locate<const ADDR: u8, S: CpuState + ?Sized>(
    state: &S,
    exit_gpa: u64,
    bytes: &[u8],
    at: At,
) -> Option<(u8, u64)> {
    // 4, 8 or 16 bytes.
    let size = 2u64 << (at.form & WIDTH);
    let p = Prefixes {
        rex: at.rex,
        segment: at.segment,
        ..Prefixes::default()
    };
    let m = mem_operand::<ADDR, S>(state, bytes, usize::from(at.modrm), &p)?;
    let access = if at.form & LOAD != 0 {
        AccessType::Read
    } else {
        AccessType::Write
    };
    let linear = if ADDR != 8 {
        // `linear_address` outside 64-bit mode, inline.
        legacy_checked(state, at.mode, m.segment, m.offset, size, access).ok()?
    } else if !matches!(m.segment, Segment::Fs | Segment::Gs) {
        // 64-bit mode without an FS/GS base: the linear address is the
        // effective address, with no limit. When its first byte is
        // canonical, so is its last unless the access crosses the top of
        // the lower half (a page boundary) or wraps at 2^64 (likewise),
        // which the page check below refuses: so this is
        // `linear_address`'s result wherever the fast path goes on. A
        // non-canonical address (#GP/#SS, or valid under LA57) is the
        // general path's.
        if !is_canonical(m.offset, 48) {
            return None;
        }
        m.offset
    } else {
        linear_address(state, at.mode, m.segment, m.offset, size, access).ok()?
    };
    if (at.form & ALIGNED != 0 && linear & 15 != 0)
        || (linear & 0xFFF) + size > 0x1000
        || exit_gpa & 0xFFF != linear & 0xFFF
        || (size <= 8 && alignment_faults(state, state.rflags(), linear, size))
    {
        return None;
    }
    Some((m.reg & 15, m.next_rip))
}

/// The access of a move of `SIZE` bytes at `gpa` between memory and XMM
/// register `index` (holding `current`).
#[inline(always)]
fn transfer<const SIZE: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    index: u8,
    current: u128,
    load: bool,
) -> Result<(), BusError>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let mask = sse::value_mask(SIZE);
    if load {
        let value = read_value::<SIZE, R, M>(ram, mmio, gpa)?;
        state.set_xmm(index, value & mask);
        Ok(())
    } else {
        let data = (current & mask).to_le_bytes();
        write_in_page::<BusError, _, _>(
            ram,
            mmio,
            gpa,
            data.get(..usize::from(SIZE)).unwrap_or(&[]),
        )
    }
}

/// Reads `SIZE` (4, 8 or 16) bytes at `gpa` into a buffer of exactly that
/// width ([`read_in_page!`]), zero-extended: a device's narrow store into a
/// wider buffer followed by one wide load would stall store-to-load
/// forwarding. The buffer is filled in place: returned by value (in a
/// `Result`), the 16-byte one was copied out again, 13 instructions more
/// per load.
#[inline(always)]
fn read_value<const SIZE: u8, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
) -> Result<u128, BusError> {
    Ok(match SIZE {
        4 => {
            let mut b = [0u8; 4];
            read_in_page!(ram, mmio, gpa, &mut b);
            u128::from(u32::from_le_bytes(b))
        }
        8 => {
            let mut b = [0u8; 8];
            read_in_page!(ram, mmio, gpa, &mut b);
            u128::from(u64::from_le_bytes(b))
        }
        _ => {
            let mut b = [0u8; 16];
            read_in_page!(ram, mmio, gpa, &mut b);
            u128::from_le_bytes(b)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::prefix::parse;
    use super::*;

    /// `scan` against the families' general prefix parser on random
    /// prefix runs (up to 17 bytes, so past the 14-prefix limit too) in
    /// front of 0F or another byte, in and out of 64-bit mode: the same
    /// 0F index, segment, REX and mandatory prefix wherever `parse` finds
    /// a 0F opcode without 67 or LOCK, `None` everywhere else.
    #[test]
    fn scan_agrees_with_the_general_prefix_parser() {
        const BYTES: &[u8] = &[
            0x66, 0x66, 0xF2, 0xF3, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x40, 0x41, 0x44,
            0x48, 0x4C, 0x4F, 0x67, 0xF0, 0x0F, 0x0F, 0x0F, 0x90, 0xA5,
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Fewer in unoptimised builds, which CI runs too.
        let runs: u32 = if cfg!(debug_assertions) {
            50_000
        } else {
            200_000
        };
        let (mut found, mut refused) = (0u32, 0u32);
        for _ in 0..runs {
            let len = (next() % 18) as usize;
            let bytes: std::vec::Vec<u8> = (0..len)
                .map(|_| BYTES[(next() % BYTES.len() as u64) as usize])
                .collect();
            for long in [false, true] {
                let expected = parse(&bytes, long).and_then(|(p, i)| {
                    (bytes[i] == 0x0F && !p.addrsize).then(|| {
                        let mandatory = match p.rep {
                            0xF3 => 3,
                            0xF2 => 2,
                            _ => u8::from(p.opsize),
                        };
                        (i, mandatory, p.rex, p.segment)
                    })
                });
                let got = scan(&bytes, long);
                assert_eq!(got, expected, "{bytes:02x?} long {long}");
                if got.is_some() {
                    found += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert!(found > runs / 4 && refused > runs / 4, "{found} {refused}");
    }

    /// The tables hold exactly [`form`]: 19 (opcode, mandatory prefix)
    /// pairs, each with and without REX.W.
    #[test]
    fn form_table_has_the_documented_moves() {
        let mut n = 0;
        for op2 in 0..=255u8 {
            for column in 0..8 {
                let f = FORMS
                    .get(usize::from(ROWS[usize::from(op2)]))
                    .map_or(0, |row| row[column]);
                assert_eq!(f, form(op2, (column >> 1) as u8, column & 1 != 0));
                n += usize::from(f != 0);
            }
        }
        assert_eq!(n, 2 * 19);
        assert_eq!(pack(Mnemonic::Movdqa, false), 3 | ALIGNED);
        assert_eq!(pack(Mnemonic::Movq, true), 2 | LOAD);
        assert_eq!(pack(Mnemonic::Movd, false), 1);
    }
}
