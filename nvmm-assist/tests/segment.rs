//! Segmentation against the Intel SDM vol. 3A §3.4.5, §5.3-5.4 (limit and
//! type checks, expand-down with D/B), vol. 1 §3.3.7.1 (canonical
//! addresses) and the instruction pages' exception lists (#SS(0) for SS,
//! #GP(0) otherwise).

use crate::support;

use nvmm_assist::{
    AccessType, CpuMode, Error, Exception, Registers, Segment, SegmentAttributes, SegmentRegister,
    linear_address,
};
use support::*;

use AccessType::{Execute, Read, Write};

const GP: Result<u64, Error> = Err(Error::Exception(Exception::GeneralProtection(0)));
const SS: Result<u64, Error> = Err(Error::Exception(Exception::StackSegment(0)));

fn lin(
    regs: &Registers,
    seg: Segment,
    offset: u64,
    size: u64,
    acc: AccessType,
) -> Result<u64, Error> {
    linear_address(regs, CpuMode::of(regs), seg, offset, size, acc)
}

fn data_seg(typ: u8, base: u64, limit: u32, db: bool) -> SegmentRegister {
    SegmentRegister {
        selector: 0x10,
        base,
        limit,
        attributes: SegmentAttributes::new(typ, true, 0, true, false, false, db, false),
    }
}

// ---- 64-bit mode ----

#[test]
fn long64_only_fs_gs_bases_apply() {
    let mut r = Registers::long_mode(TEST_VENDOR, 0, 0, 0);
    for (i, s) in [
        Segment::Es,
        Segment::Cs,
        Segment::Ss,
        Segment::Ds,
        Segment::Fs,
        Segment::Gs,
    ]
    .into_iter()
    .enumerate()
    {
        r.segments[s as usize].base = 0x1_0000 * (i as u64 + 1);
        // Limits and attributes are not checked in 64-bit mode.
        r.segments[s as usize].limit = 0;
        if s != Segment::Cs {
            r.segments[s as usize].attributes = SegmentAttributes(0);
        }
    }
    assert_eq!(CpuMode::of(&r), CpuMode::Long64);
    assert_eq!(lin(&r, Segment::Ds, 0x1234, 8, Write), Ok(0x1234));
    assert_eq!(lin(&r, Segment::Es, 0x1234, 8, Write), Ok(0x1234));
    assert_eq!(lin(&r, Segment::Ss, 0x1234, 8, Write), Ok(0x1234));
    assert_eq!(lin(&r, Segment::Cs, 0x1234, 8, Write), Ok(0x1234));
    assert_eq!(lin(&r, Segment::Fs, 0x1234, 8, Read), Ok(0x5_1234));
    assert_eq!(lin(&r, Segment::Gs, 0x1234, 8, Read), Ok(0x6_1234));
}

#[test]
fn long64_canonical_48() {
    let r = Registers::long_mode(TEST_VENDOR, 0, 0, 0);
    assert_eq!(
        lin(&r, Segment::Ds, 0x7FFF_FFFF_FFF8, 8, Read),
        Ok(0x7FFF_FFFF_FFF8)
    );
    // The last byte crosses into the non-canonical hole.
    assert_eq!(lin(&r, Segment::Ds, 0x7FFF_FFFF_FFF9, 8, Read), GP);
    assert_eq!(lin(&r, Segment::Ds, 0x8000_0000_0000, 1, Read), GP);
    assert_eq!(lin(&r, Segment::Ss, 0x8000_0000_0000, 1, Write), SS);
    assert_eq!(
        lin(&r, Segment::Ds, 0xFFFF_8000_0000_0000, 1, Read),
        Ok(0xFFFF_8000_0000_0000)
    );
    assert_eq!(lin(&r, Segment::Ds, 0xFFFF_7FFF_FFFF_FFFF, 1, Read), GP);
    // Wrapping past 2^64 from the top.
    assert_eq!(lin(&r, Segment::Ds, u64::MAX, 2, Read), GP);
    // FS base + offset must be canonical.
    let mut r = r;
    r.segments[Segment::Fs as usize].base = 0x7FFF_FFFF_F000;
    assert_eq!(lin(&r, Segment::Fs, 0x1000, 1, Read), GP);
}

#[test]
fn long64_canonical_57_with_la57() {
    let mut r = Registers::long_mode(TEST_VENDOR, 0, 0, 0);
    r.cr4 |= bits::CR4_LA57;
    assert_eq!(
        lin(&r, Segment::Ds, 0x8000_0000_0000, 1, Read),
        Ok(0x8000_0000_0000)
    );
    assert_eq!(
        lin(&r, Segment::Ds, 0x00FF_FFFF_FFFF_FFFF, 1, Read),
        Ok(0x00FF_FFFF_FFFF_FFFF)
    );
    assert_eq!(lin(&r, Segment::Ds, 0x0100_0000_0000_0000, 1, Read), GP);
    assert_eq!(lin(&r, Segment::Ss, 0x00FF_FFFF_FFFF_FFFF, 2, Read), SS);
    assert_eq!(
        lin(&r, Segment::Ds, 0xFF00_0000_0000_0000, 1, Read),
        Ok(0xFF00_0000_0000_0000)
    );
    assert_eq!(lin(&r, Segment::Ds, 0xFEFF_FFFF_FFFF_FFFF, 1, Read), GP);
}

// ---- real and virtual-8086 mode ----

#[test]
fn real_mode_base_and_64k_limit() {
    let mut r = Registers::real_mode(TEST_VENDOR);
    r.segments[Segment::Ds as usize].base = 0xF_FFF0;
    r.segments[Segment::Ds as usize].selector = 0xFFFF;
    // Past 1 MiB (A20 enabled): linear 0x10FFEF.
    assert_eq!(lin(&r, Segment::Ds, 0xFFFF, 1, Read), Ok(0x10_FFEF));
    // A word at offset 0xFFFF lies outside 0..=0xFFFF.
    assert_eq!(lin(&r, Segment::Ds, 0xFFFF, 2, Read), GP);
    assert_eq!(lin(&r, Segment::Ss, 0xFFFF, 2, Read), SS);
    assert_eq!(lin(&r, Segment::Es, 0xFFFE, 2, Write), Ok(0xFFFE));
    // No type checks: writes through CS work in real mode.
    assert_eq!(lin(&r, Segment::Cs, 0x10, 2, Write), Ok(0x10));
}

#[test]
fn unreal_mode_uses_the_cached_limit() {
    let mut r = Registers::real_mode(TEST_VENDOR);
    r.segments[Segment::Ds as usize].limit = 0xFFFF_FFFF;
    assert_eq!(lin(&r, Segment::Ds, 0x12_3456, 4, Read), Ok(0x12_3456));
}

#[test]
fn v86_mode() {
    let mut r = Registers::real_mode(TEST_VENDOR);
    r.cr0 = bits::CR0_PE;
    r.rflags |= bits::RFLAGS_VM;
    r.segments[Segment::Es as usize].base = 0x2_0000;
    assert_eq!(CpuMode::of(&r), CpuMode::Virtual8086);
    assert_eq!(lin(&r, Segment::Es, 0x10, 1, Write), Ok(0x2_0010));
    assert_eq!(lin(&r, Segment::Es, 0x1_0000, 1, Write), GP);
    assert_eq!(lin(&r, Segment::Ss, 0xFFFF, 4, Write), SS);
}

// ---- protected and compatibility mode ----

#[test]
fn unusable_segment_faults() {
    let mut r = Registers::flat_protected32(TEST_VENDOR);
    r.segments[Segment::Fs as usize] = SegmentRegister::default(); // null: P = 0
    assert_eq!(lin(&r, Segment::Fs, 0, 1, Read), GP);
    assert_eq!(lin(&r, Segment::Fs, 0, 1, Write), GP);
    // A system descriptor type (S = 0) is not a data segment.
    r.segments[Segment::Gs as usize].attributes =
        SegmentAttributes::new(2, false, 0, true, false, false, true, true);
    assert_eq!(lin(&r, Segment::Gs, 0, 1, Read), GP);
}

#[test]
fn data_segment_types() {
    let mut r = Registers::flat_protected32(TEST_VENDOR);
    // Type 1: read-only data (accessed).
    r.segments[Segment::Ds as usize] = data_seg(1, 0x1000, 0xFFFF, true);
    assert_eq!(lin(&r, Segment::Ds, 0x10, 4, Read), Ok(0x1010));
    assert_eq!(lin(&r, Segment::Ds, 0x10, 4, Write), GP);
    assert_eq!(lin(&r, Segment::Ds, 0x10, 1, Execute), GP);
    // Type 3: read/write.
    r.segments[Segment::Ds as usize] = data_seg(3, 0x1000, 0xFFFF, true);
    assert_eq!(lin(&r, Segment::Ds, 0x10, 4, Write), Ok(0x1010));
}

#[test]
fn code_segment_types() {
    let mut r = Registers::flat_protected32(TEST_VENDOR);
    // Type 8: execute-only: no reads, no writes.
    r.segments[Segment::Es as usize] = data_seg(8, 0, 0xFFFF, true);
    assert_eq!(lin(&r, Segment::Es, 0x10, 1, Read), GP);
    assert_eq!(lin(&r, Segment::Es, 0x10, 1, Write), GP);
    // Type 0xA: execute/read: reads ok, writes fault.
    r.segments[Segment::Es as usize] = data_seg(0xA, 0, 0xFFFF, true);
    assert_eq!(lin(&r, Segment::Es, 0x10, 1, Read), Ok(0x10));
    assert_eq!(lin(&r, Segment::Es, 0x10, 1, Write), GP);
    // Type 0xE: conforming execute/read: bit 2 is "conforming", not
    // expand-down, so the limit is an upper bound.
    r.segments[Segment::Es as usize] = data_seg(0xE, 0, 0xFF, true);
    assert_eq!(lin(&r, Segment::Es, 0x10, 1, Read), Ok(0x10));
    assert_eq!(lin(&r, Segment::Es, 0x100, 1, Read), GP);
    // Fetch from CS.
    assert_eq!(lin(&r, Segment::Cs, 0x10, 15, Execute), Ok(0x10));
}

#[test]
fn expand_up_limit_edges() {
    let mut r = Registers::flat_protected32(TEST_VENDOR);
    r.segments[Segment::Ds as usize] = data_seg(3, 0x10_0000, 0xFFF, true);
    r.segments[Segment::Ss as usize] = data_seg(3, 0x10_0000, 0xFFF, true);
    assert_eq!(lin(&r, Segment::Ds, 0xFFF, 1, Read), Ok(0x10_0FFF));
    assert_eq!(lin(&r, Segment::Ds, 0xFFC, 4, Read), Ok(0x10_0FFC));
    assert_eq!(lin(&r, Segment::Ds, 0xFFD, 4, Read), GP);
    assert_eq!(lin(&r, Segment::Ds, 0x1000, 1, Read), GP);
    assert_eq!(lin(&r, Segment::Ss, 0xFFD, 4, Write), SS);
    assert_eq!(lin(&r, Segment::Ss, 0xFFC, 4, Write), Ok(0x10_0FFC));
}

#[test]
fn offset_plus_size_past_4g_wraps_with_a_4g_bound() {
    // SDM vol. 3A §5.3: implementation-specific with a 4 GiB limit; KVM
    // (tests/oracle_kvm_segment.rs) wraps, and so do we.
    let mut r = Registers::flat_protected32(TEST_VENDOR);
    assert_eq!(lin(&r, Segment::Ds, 0xFFFF_FFFF, 1, Read), Ok(0xFFFF_FFFF));
    assert_eq!(lin(&r, Segment::Ds, 0xFFFF_FFFF, 2, Read), Ok(0xFFFF_FFFF));
    assert_eq!(lin(&r, Segment::Ds, 0xFFFF_FFFC, 4, Read), Ok(0xFFFF_FFFC));
    // Expand-down with B=1 has the same 4 GiB upper bound.
    r.segments[Segment::Ss as usize] = data_seg(7, 0, 0xFFF, true);
    assert_eq!(lin(&r, Segment::Ss, 0xFFFF_FFFE, 4, Write), Ok(0xFFFF_FFFE));
    // Any smaller bound checks the last byte.
    r.segments[Segment::Ds as usize] = data_seg(3, 0, 0xFFFF_FFFE, true);
    assert_eq!(lin(&r, Segment::Ds, 0xFFFF_FFFE, 1, Read), Ok(0xFFFF_FFFE));
    assert_eq!(lin(&r, Segment::Ds, 0xFFFF_FFFE, 2, Read), GP);
    // Unreal mode with a 4 GiB cached limit too.
    let mut u = Registers::real_mode(TEST_VENDOR);
    u.segments[Segment::Ds as usize].limit = 0xFFFF_FFFF;
    assert_eq!(lin(&u, Segment::Ds, 0xFFFF_FFFF, 4, Read), Ok(0xFFFF_FFFF));
}

#[test]
fn base_plus_offset_wraps_at_4g() {
    let mut r = Registers::flat_protected32(TEST_VENDOR);
    r.segments[Segment::Ds as usize].base = 0xFFFF_F000;
    assert_eq!(lin(&r, Segment::Ds, 0x2000, 4, Read), Ok(0x1000));
}

#[test]
fn expand_down_with_b_clear() {
    // Type 7: expand-down read/write; valid offsets limit+1 ..= 0xFFFF.
    let mut r = Registers::flat_protected32(TEST_VENDOR);
    r.segments[Segment::Ds as usize] = data_seg(7, 0x2_0000, 0x0FFF, false);
    r.segments[Segment::Ss as usize] = data_seg(7, 0x2_0000, 0x0FFF, false);
    assert_eq!(lin(&r, Segment::Ds, 0x0FFF, 1, Read), GP);
    assert_eq!(lin(&r, Segment::Ds, 0x0FFE, 4, Read), GP);
    assert_eq!(lin(&r, Segment::Ds, 0x1000, 1, Read), Ok(0x2_1000));
    assert_eq!(lin(&r, Segment::Ds, 0xFFFC, 4, Read), Ok(0x2_FFFC));
    assert_eq!(lin(&r, Segment::Ds, 0xFFFD, 4, Read), GP);
    assert_eq!(lin(&r, Segment::Ds, 0x1_0000, 1, Read), GP);
    assert_eq!(lin(&r, Segment::Ss, 0x0FFF, 2, Write), SS);
    assert_eq!(lin(&r, Segment::Ss, 0xFFFF, 2, Write), SS);
    assert_eq!(lin(&r, Segment::Ss, 0xFFFE, 2, Write), Ok(0x2_FFFE));
    // Type 5: expand-down read-only: writes fault with #GP.
    r.segments[Segment::Ds as usize] = data_seg(5, 0x2_0000, 0x0FFF, false);
    assert_eq!(lin(&r, Segment::Ds, 0x2000, 1, Write), GP);
    assert_eq!(lin(&r, Segment::Ds, 0x2000, 1, Read), Ok(0x2_2000));
}

#[test]
fn expand_down_with_b_set() {
    // Valid offsets limit+1 ..= 0xFFFFFFFF.
    let mut r = Registers::flat_protected32(TEST_VENDOR);
    r.segments[Segment::Ss as usize] = data_seg(7, 0, 0xFFFF, true);
    assert_eq!(lin(&r, Segment::Ss, 0xFFFF, 1, Write), SS);
    assert_eq!(lin(&r, Segment::Ss, 0x1_0000, 4, Write), Ok(0x1_0000));
    assert_eq!(lin(&r, Segment::Ss, 0xFFFF_FFFC, 4, Write), Ok(0xFFFF_FFFC));
    // Past 0xFFFFFFFF: wraps (4 GiB upper bound, see above).
    assert_eq!(lin(&r, Segment::Ss, 0xFFFF_FFFD, 4, Write), Ok(0xFFFF_FFFD));
    // Limit 0xFFFFFFFF expand-down: no valid offset at all.
    r.segments[Segment::Ss as usize] = data_seg(7, 0, 0xFFFF_FFFF, true);
    assert_eq!(lin(&r, Segment::Ss, 0xFFFF_FFFF, 1, Write), SS);
    // Limit 0 expand-down: everything but offset 0.
    r.segments[Segment::Ss as usize] = data_seg(7, 0, 0, true);
    assert_eq!(lin(&r, Segment::Ss, 0, 1, Write), SS);
    assert_eq!(lin(&r, Segment::Ss, 1, 1, Write), Ok(1));
}

#[test]
fn compatibility_mode_applies_32_bit_rules() {
    let mut r = Registers::long_mode(TEST_VENDOR, 0, 0, 0);
    r.segments[Segment::Cs as usize] = SegmentRegister::flat(0x08, SegmentAttributes::code32());
    assert_eq!(CpuMode::of(&r), CpuMode::Compat32);
    r.segments[Segment::Ds as usize] = data_seg(3, 0x4000, 0xFFF, true);
    assert_eq!(lin(&r, Segment::Ds, 0x10, 4, Read), Ok(0x4010));
    assert_eq!(lin(&r, Segment::Ds, 0x1000, 1, Read), GP);
    r.segments[Segment::Ds as usize] = data_seg(1, 0x4000, 0xFFF, true);
    assert_eq!(lin(&r, Segment::Ds, 0x10, 1, Write), GP);
    // Linear addresses are 32 bits: a high FS base wraps.
    r.segments[Segment::Fs as usize].base = 0x1_FFFF_F000;
    assert_eq!(lin(&r, Segment::Fs, 0x2000, 1, Read), Ok(0x1000));
}

#[test]
fn protected16_code_fetch_at_the_cs_limit() {
    let mut r = Registers::flat_protected32(TEST_VENDOR);
    r.segments[Segment::Cs as usize] = SegmentRegister {
        selector: 8,
        base: 0x1_0000,
        limit: 0xFFFF,
        attributes: SegmentAttributes::new(0xB, true, 0, true, false, false, false, false),
    };
    assert_eq!(CpuMode::of(&r), CpuMode::Protected16);
    assert_eq!(lin(&r, Segment::Cs, 0xFFFE, 2, Execute), Ok(0x1_FFFE));
    assert_eq!(lin(&r, Segment::Cs, 0xFFFE, 3, Execute), GP);
}

#[test]
fn size_zero_is_checked_as_one_byte() {
    let r = Registers::flat_protected32(TEST_VENDOR);
    assert_eq!(lin(&r, Segment::Ds, 0x10, 0, Read), Ok(0x10));
}
