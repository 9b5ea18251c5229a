//! Segmentation: `segment:offset` to a linear address, with the checks the
//! CPU makes (present, type, limit including expand-down, canonical form).
//!
//! The rules follow the Intel SDM vol. 3A §3.4-3.5 and §5.3-5.4 (limit and
//! type checking) and vol. 1 §3.3.7.1 (canonical addressing), and the AMD APM
//! vol. 2 §4.5-4.11:
//!
//! - **64-bit mode**: no base except FS/GS, no limit or type check; every
//!   byte of the access must be canonical (48 bits, or 57 with CR4.LA57),
//!   else `#SS(0)` for an SS-based access and `#GP(0)` otherwise.
//! - **Real and virtual-8086 mode**: the base is the cached base; the only
//!   check is the cached (expand-up) limit, `#SS(0)` for SS and `#GP(0)`
//!   otherwise (SDM: "if any part of the operand would lie outside of the
//!   effective address space from 0 to FFFFH"; with "unreal" cached limits
//!   the cached limit is what the CPU checks).
//! - **Protected and compatibility mode**: the segment must be usable
//!   (present; a null selector loaded into DS/ES/FS/GS is unusable), a code
//!   or data segment, and of the right type (writes only to writable data
//!   segments; reads from data segments or readable code segments; fetches
//!   only from code segments), else `#GP(0)`. The limit check is expand-up
//!   (`offset..=offset+size-1` within `0..=limit`) or expand-down (within
//!   `limit+1..=upper`, where `upper` is 0xFFFFFFFF with D/B=1 and 0xFFFF
//!   with D/B=0), else `#SS(0)` for SS and `#GP(0)` otherwise.
//! - **Wrap at 4 GiB**: when the segment's upper bound is 0xFFFFFFFF (an
//!   expand-up limit of 0xFFFFFFFF, or expand-down with D/B=1), only the
//!   first byte is checked and an access running past offset 0xFFFFFFFF
//!   wraps to offset 0 (the linear range wraps with it). The SDM (vol. 3A
//!   §5.3) leaves this case implementation-specific; this is what KVM on
//!   this project's CI machine does (tests/oracle_kvm_segment.rs) and what
//!   flat 32-bit guests expect. With any other bound the last byte must be
//!   within it.
//!
//! Outside 64-bit mode linear addresses are 32 bits wide: `base + offset`
//! wraps at 4 GiB.

use crate::access::AccessType;
use crate::error::{Error, Exception};
use crate::mode::CpuMode;
use crate::state::{CpuState, Segment};

const CR4_LA57: u64 = 1 << 12;

/// Segment type bit 3: code (as opposed to data).
const TYPE_CODE: u8 = 1 << 3;
/// Segment type bit 2 for data segments: expand-down.
const TYPE_EXPAND_DOWN: u8 = 1 << 2;
/// Segment type bit 1: readable (code) or writable (data).
const TYPE_RW: u8 = 1 << 1;

/// The fault for a limit or canonical violation through `seg`.
#[cold]
fn limit_fault(seg: Segment) -> Error {
    if seg == Segment::Ss {
        Error::Exception(Exception::StackSegment(0))
    } else {
        Error::Exception(Exception::GeneralProtection(0))
    }
}

/// Whether `addr` is canonical for a linear-address width of `bits`
/// (48 or 57): bits 63 down to `bits - 1` all equal.
#[inline]
pub(crate) fn is_canonical(addr: u64, bits: u32) -> bool {
    let shift = 64 - bits;
    (((addr << shift) as i64) >> shift) as u64 == addr
}

/// The linear-address width of 64-bit mode for `state`: 57 with CR4.LA57,
/// else 48.
pub(crate) fn linear_width<S: CpuState + ?Sized>(state: &S) -> u32 {
    if state.cr4() & CR4_LA57 != 0 { 57 } else { 48 }
}

/// The linear address of `seg:offset` for an access of `size` bytes, or the
/// `#GP(0)`/`#SS(0)` the CPU raises. `offset` is already masked to the
/// address size. A `size` of 0 is checked as 1 byte.
///
/// The returned address is the first byte's; outside 64-bit mode it is 32
/// bits wide (the range may wrap at 4 GiB when the base is not zero, as on
/// the CPU), in 64-bit mode the range is canonical throughout.
#[inline]
pub fn linear_address<S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    seg: Segment,
    offset: u64,
    size: u64,
    access: AccessType,
) -> Result<u64, Error> {
    let size = size.max(1);
    if mode.is_64bit() {
        let base = match seg {
            Segment::Fs | Segment::Gs => state.segment(seg).base,
            _ => 0,
        };
        let first = base.wrapping_add(offset);
        let last = first.wrapping_add(size - 1);
        // A range that wraps past 2^64 goes from the top of the address
        // space to the bottom: its middle is not canonical either way, but
        // both ends are, so reject it explicitly. Canonical at 48 bits is
        // canonical at 57 too, so CR4 is read only when that fails.
        if last >= first && is_canonical(first, 48) && is_canonical(last, 48) {
            return Ok(first);
        }
        let bits = linear_width(state);
        if !is_canonical(first, bits) || !is_canonical(last, bits) || last < first {
            return Err(limit_fault(seg));
        }
        return Ok(first);
    }
    legacy_linear_address(state, mode, seg, offset, size, access)
}

/// [`linear_address`] when it proves the access allowed cheaply, inline:
/// the same linear address in the common cases (64-bit mode with a range
/// canonical at 48 bits; real mode within the limit; an expand-up data
/// segment, present, writable for a write, with the range within the
/// limit), else the full check's result as an `Option`. `None`: a fault,
/// which the caller leaves to a path that reports it. `offset` is masked
/// to the address size, as for [`linear_address`].
#[inline(always)]
pub(crate) fn linear_address_if_allowed<S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    seg: Segment,
    offset: u64,
    size: u64,
    access: AccessType,
) -> Option<u64> {
    linear_address_common(state, mode, seg, offset, size, access)
        .or_else(|| linear_address(state, mode, seg, offset, size, access).ok())
}

/// [`linear_address_if_allowed`]'s common cases alone: the linear address
/// [`linear_address`] gives when one of them proves the access allowed,
/// else `None` (a fault, or a case it leaves to [`linear_address`]), with
/// no call. For a caller that has a slower path to leave those to: the
/// call's clobbered registers made the lanes save their arguments around
/// it on the common path too.
#[inline(always)]
pub(crate) fn linear_address_common<S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    seg: Segment,
    offset: u64,
    size: u64,
    access: AccessType,
) -> Option<u64> {
    if mode.is_64bit() {
        if !matches!(seg, Segment::Fs | Segment::Gs) {
            let last = offset.wrapping_add(size.max(1) - 1);
            if last >= offset && is_canonical(offset, 48) && is_canonical(last, 48) {
                return Some(offset);
            }
        }
    } else {
        let reg = state.segment(seg);
        let offset = offset & 0xFFFF_FFFF;
        if offset.saturating_add(size.max(1) - 1) <= u64::from(reg.limit) {
            let linear = reg.base.wrapping_add(offset) & 0xFFFF_FFFF;
            if mode.is_real_or_v86() {
                return Some(linear);
            }
            let attr = reg.attributes;
            let typ = attr.typ();
            let allowed = match access {
                AccessType::Read => true,
                AccessType::Write => typ & TYPE_RW != 0,
                AccessType::Execute => false,
            };
            if attr.present() && attr.s() && typ & (TYPE_CODE | TYPE_EXPAND_DOWN) == 0 && allowed {
                return Some(linear);
            }
        }
    }
    None
}

/// [`linear_address_common`] for an access that must also lie within one
/// page: the linear address if one of the common cases proves the access
/// allowed and its `size` (1 to 4096) bytes do not cross a page, else
/// `None`. In 64-bit mode the page test comes first, which makes the
/// canonical test of the first byte enough (the last is on its page).
#[inline(always)]
pub(crate) fn linear_address_in_page<S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    seg: Segment,
    offset: u64,
    size: u64,
    access: AccessType,
) -> Option<u64> {
    let in_page = |linear: u64| (linear & 0xFFF) + size <= 0x1000;
    if mode.is_64bit() {
        if !matches!(seg, Segment::Fs | Segment::Gs) && in_page(offset) && is_canonical(offset, 48)
        {
            return Some(offset);
        }
        return None;
    }
    linear_address_common(state, mode, seg, offset, size, access).filter(|&l| in_page(l))
}

/// [`linear_address`] outside 64-bit mode, for a `size` of at least 1.
fn legacy_linear_address<S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    seg: Segment,
    offset: u64,
    size: u64,
    access: AccessType,
) -> Result<u64, Error> {
    legacy_checked(state, mode, seg, offset, size, access).map_err(|fault| match fault {
        Fault::Limit => limit_fault(seg),
        Fault::Type => Error::Exception(Exception::GeneralProtection(0)),
    })
}

/// Which fault a segment check outside 64-bit mode raises: the limit
/// fault of the segment (`#SS(0)` for SS, else `#GP(0)`), or `#GP(0)`.
#[derive(Clone, Copy)]
pub(crate) enum Fault {
    Limit,
    Type,
}

/// [`legacy_linear_address`] with its fault as a [`Fault`], so that the
/// result fits in two registers: the fast path calls it inline (its
/// `.ok()` is the address when [`linear_address`] returns one, `None`
/// when it returns a fault), the general path through
/// `legacy_linear_address`.
#[inline(always)]
pub(crate) fn legacy_checked<S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    seg: Segment,
    offset: u64,
    size: u64,
    access: AccessType,
) -> Result<u64, Fault> {
    let reg = state.segment(seg);
    // Outside 64-bit mode the offset is at most 32 bits wide.
    let offset = offset & 0xFFFF_FFFF;
    let last = offset.saturating_add(size - 1);
    let limit = u64::from(reg.limit);

    // See the module documentation: a 4 GiB bound checks the first byte only.
    let within = |upper: u64| {
        if upper == 0xFFFF_FFFF {
            offset <= upper
        } else {
            last <= upper
        }
    };

    if mode.is_real_or_v86() {
        if !within(limit) {
            return Err(Fault::Limit);
        }
        return Ok(reg.base.wrapping_add(offset) & 0xFFFF_FFFF);
    }

    // Protected or compatibility mode.
    let attr = reg.attributes;
    if !attr.present() {
        return Err(Fault::Limit);
    }
    if !attr.s() {
        // A system descriptor cannot be loaded into a segment register used
        // for memory accesses; the state is inconsistent, treat it as the
        // type violation the CPU would have raised at load time.
        return Err(Fault::Type);
    }
    let typ = attr.typ();
    let is_code = typ & TYPE_CODE != 0;
    let type_ok = match access {
        AccessType::Execute => is_code,
        AccessType::Read => !is_code || typ & TYPE_RW != 0,
        AccessType::Write => !is_code && typ & TYPE_RW != 0,
    };
    if !type_ok {
        return Err(Fault::Type);
    }

    let expand_down = !is_code && typ & TYPE_EXPAND_DOWN != 0;
    let in_limit = if expand_down {
        let upper: u64 = if attr.db() { 0xFFFF_FFFF } else { 0xFFFF };
        offset > limit && within(upper)
    } else {
        within(limit)
    };
    if !in_limit {
        return Err(Fault::Limit);
    }
    Ok(reg.base.wrapping_add(offset) & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registers;
    use crate::state::SegmentAttributes;
    use crate::testutil::TEST_VENDOR;

    /// `linear_address_if_allowed` is `linear_address(..).ok()` on random
    /// segment states (every attribute bit, limits and offsets around the
    /// edges), sizes and accesses, in every mode.
    #[test]
    fn the_inline_check_agrees_with_the_full_one() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let modes = [
            Registers::real_mode(TEST_VENDOR),
            Registers::flat_protected32(TEST_VENDOR),
            Registers::compat_mode(TEST_VENDOR, 0, 0, 0),
            Registers::long_mode(TEST_VENDOR, 0, 0, 0),
        ];
        let (mut fast, mut slow) = (0u32, 0u32);
        for _ in 0..200_000 {
            let mut regs = modes[(next() % 4) as usize].clone();
            let mode = CpuMode::of(&regs);
            let seg = [
                Segment::Es,
                Segment::Cs,
                Segment::Ss,
                Segment::Ds,
                Segment::Fs,
                Segment::Gs,
            ][(next() % 6) as usize];
            let r = &mut regs.segments[seg as usize];
            if next() % 2 == 0 {
                r.attributes = SegmentAttributes(next() as u16 & 0xFFF);
            }
            r.limit =
                [0, 0xFFF, 0xFFFF, 0xF_FFFF, 0xFFFF_FFFF, next() as u32][(next() % 6) as usize];
            r.base = [0, 0x1000, next() & 0xFFFF_FFFF, next()][(next() % 4) as usize];
            let limit = u64::from(r.limit);
            let offset = match next() % 4 {
                0 => limit.wrapping_sub(next() % 20),
                1 => next() % 0x10000,
                2 => next() & 0xFFFF_FFFF,
                _ => next(),
            };
            let offset = if mode.is_64bit() {
                offset
            } else {
                offset & 0xFFFF_FFFF
            };
            let size = match next() % 8 {
                0 => next(),
                1 => 0,
                _ => 1 + next() % 16,
            };
            let access =
                [AccessType::Read, AccessType::Write, AccessType::Execute][(next() % 3) as usize];
            let full = linear_address(&regs, mode, seg, offset, size, access).ok();
            let quick = linear_address_if_allowed(&regs, mode, seg, offset, size, access);
            assert_eq!(
                quick, full,
                "{mode:?} {seg:?} {:?} offset {offset:#x} size {size} {access:?}",
                regs.segments[seg as usize]
            );
            // The common cases within a page: the same address, or none.
            let in_page = linear_address_in_page(&regs, mode, seg, offset, size, access);
            assert!(
                in_page.is_none()
                    || (in_page == full && (full.unwrap_or(0) & 0xFFF) + size <= 0x1000),
                "{mode:?} {seg:?} offset {offset:#x} size {size} {access:?}: {in_page:?}"
            );
            // The common cases alone: the same address, or none.
            let common = linear_address_common(&regs, mode, seg, offset, size, access);
            assert!(
                common.is_none() || common == full,
                "{mode:?} {seg:?} offset {offset:#x} size {size} {access:?}: {common:?}"
            );
            if full.is_some() {
                fast += 1;
            } else {
                slow += 1;
            }
        }
        assert!(
            fast > 20_000 && slow > 20_000,
            "{fast} allowed, {slow} refused"
        );
    }
}
