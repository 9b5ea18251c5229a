//! The page walker against the Intel SDM vol. 3A ch. 4 (4.3-4.8) and the
//! AMD APM vol. 2 ch. 5: every paging mode and page size, the PAT bit,
//! permissions and their #PF error codes, reserved bits, accessed/dirty
//! updates with compare-and-write restarts, tables outside RAM.

use crate::support;

use nvmm_assist::translate::{MAX_WALK_ATTEMPTS, pf};
use nvmm_assist::{
    AccessType, BusError, Error, Exception, Registers, SegmentAttributes, translate,
};
use support::*;

use AccessType::{Execute, Read, Write};

const RAM: usize = 0x100_0000;
const ROOT: u64 = 0x10_0000;

fn pf_err(address: u64, code: u32) -> Result<u64, Error> {
    Err(Error::Exception(Exception::PageFault { address, code }))
}

/// A state, RAM and page-table builder for `layout` at CPL `cpl`, with
/// CR0.WP set, NXE set except under 32-bit paging, and CR4.PSE under 32-bit
/// paging.
fn setup(layout: Layout, cpl: u8) -> (Registers, TestRam, PageTables) {
    let ram = TestRam::new(RAM);
    let pt = PageTables::new(layout, ROOT);
    let regs = match layout {
        Layout::Bits32 => {
            let mut r = Registers::flat_protected32(TEST_VENDOR).at_cpl(cpl);
            r.cr0 |= bits::CR0_PG | bits::CR0_WP;
            r.cr4 = bits::CR4_PSE;
            r
        }
        Layout::Pae => {
            let mut r = Registers::flat_protected32(TEST_VENDOR).at_cpl(cpl);
            r.cr0 |= bits::CR0_PG | bits::CR0_WP;
            r.cr4 = bits::CR4_PAE;
            r.efer = bits::EFER_NXE;
            r
        }
        Layout::Level4 => Registers::long_mode(TEST_VENDOR, ROOT, 0, 0).at_cpl(cpl),
        Layout::Level5 => {
            let mut r = Registers::long_mode(TEST_VENDOR, ROOT, 0, 0).at_cpl(cpl);
            r.cr4 |= bits::CR4_LA57;
            r
        }
    };
    let mut regs = regs;
    regs.cr3 = pt.cr3();
    (regs, ram, pt)
}

const ALL: [Layout; 4] = [Layout::Bits32, Layout::Pae, Layout::Level4, Layout::Level5];

// ---- modes and page sizes ----

#[test]
fn non_paged_is_identity_32_bit() {
    let mut ram = TestRam::new(0x1000);
    let regs = Registers::flat_protected32(TEST_VENDOR);
    assert_eq!(
        translate(&regs, &mut ram, 0x1234_5678, Write),
        Ok(0x1234_5678)
    );
    assert_eq!(ram.reads + ram.writes, 0);
    let mut real = Registers::real_mode(TEST_VENDOR);
    real.cr4 = bits::CR4_PAE; // ignored without CR0.PG
    assert_eq!(translate(&real, &mut ram, 0x10_FFEF, Read), Ok(0x10_FFEF));
}

#[test]
fn four_kib_pages_in_every_mode() {
    for layout in ALL {
        let (regs, mut ram, mut pt) = setup(layout, 0);
        pt.map(&mut ram, 0x7000_1000, 0xABC_D000, 1, pte::PWU);
        assert_eq!(
            translate(&regs, &mut ram, 0x7000_1ABC, Read),
            Ok(0xABC_DABC),
            "{layout:?}"
        );
        assert_eq!(
            translate(&regs, &mut ram, 0x7000_1FFF, Write),
            Ok(0xABC_DFFF),
            "{layout:?}"
        );
        // The neighbour page is not mapped.
        assert_eq!(
            translate(&regs, &mut ram, 0x7000_2000, Read),
            pf_err(0x7000_2000, 0),
            "{layout:?}"
        );
    }
}

#[test]
fn pat_bit_in_a_4k_pte_is_not_a_page_size_bit() {
    // SDM tables 4-6, 4-11, 4-20: bit 7 of a PTE that maps a 4 KiB page is
    // PAT. libnvmm fails these walks.
    for layout in ALL {
        let (regs, mut ram, mut pt) = setup(layout, 0);
        pt.map(&mut ram, 0x40_3000, 0x55_5000, 1, pte::PWU | pte::PAT4K);
        assert_eq!(
            translate(&regs, &mut ram, 0x40_3123, Read),
            Ok(0x55_5123),
            "{layout:?}"
        );
    }
}

#[test]
fn bits32_4mib_pages_and_pse36() {
    let (regs, mut ram, mut pt) = setup(Layout::Bits32, 0);
    pt.map(&mut ram, 0x8040_0000, 0x0C00_0000, 2, pte::PWU);
    assert_eq!(
        translate(&regs, &mut ram, 0x807F_FFFF, Read),
        Ok(0x0C3F_FFFF)
    );
    // PSE-36: PDE bits 20:13 are physical bits 39:32; bit 12 is PAT.
    let at = pt.map(
        &mut ram,
        0xC000_0000,
        0x0040_0000 | (0x5A << 13) | (1 << 12),
        2,
        pte::PWU,
    );
    assert_eq!(
        translate(&regs, &mut ram, 0xC012_3456, Read),
        Ok(0x5A_0052_3456)
    );
    // Bit 21 is reserved in a 4 MiB PDE.
    pt.modify(&mut ram, at, 1 << 21, 0);
    assert_eq!(
        translate(&regs, &mut ram, 0xC012_3456, Write),
        pf_err(0xC012_3456, pf::P | pf::W | pf::RSVD)
    );
}

#[test]
fn bits32_ps_is_ignored_without_cr4_pse() {
    // SDM table 4-5: with CR4.PSE = 0 the PS bit of a PDE is ignored and the
    // PDE references a page table.
    let (mut regs, mut ram, mut pt) = setup(Layout::Bits32, 0);
    regs.cr4 = 0;
    let pte_at = pt.map(&mut ram, 0x0040_1000, 0x9000, 1, pte::PWU);
    let pde_at = pt.entry_gpa(&mut ram, 0x0040_1000, 2);
    pt.modify(&mut ram, pde_at, pte::PS, 0);
    assert_eq!(translate(&regs, &mut ram, 0x0040_1004, Read), Ok(0x9004));
    assert_eq!(pt.get(&ram, pte_at) & pte::A, pte::A);
}

#[test]
fn bits32_has_no_nx_and_no_reserved_bits_in_ptes() {
    let (regs, mut ram, mut pt) = setup(Layout::Bits32, 0);
    // Bits 11:9 ignored, bit 8 G.
    pt.map(&mut ram, 0x1000, 0x2000, 1, pte::PWU | 0xF00);
    assert_eq!(translate(&regs, &mut ram, 0x1000, Execute), Ok(0x2000));
}

#[test]
fn pae_2mib_pages_keep_physical_bits_above_32() {
    let (regs, mut ram, mut pt) = setup(Layout::Pae, 0);
    pt.map(&mut ram, 0x4020_0000, 0x12_3460_0000, 2, pte::PWU);
    // libnvmm masks the frame with 0xFFE00000 and loses bits >= 32.
    assert_eq!(
        translate(&regs, &mut ram, 0x402A_BCDE, Read),
        Ok(0x12_346A_BCDE)
    );
}

#[test]
fn pae_pdpte_rules() {
    let (mut regs, mut ram, mut pt) = setup(Layout::Pae, 0);
    pt.map(&mut ram, 0xC000_0000, 0x3000, 1, pte::PWU);
    let pdpte = pt.entry_gpa(&mut ram, 0xC000_0000, 3);
    assert_eq!(pdpte, ROOT + 3 * 8);
    let good = pt.get(&ram, pdpte);
    assert_eq!(translate(&regs, &mut ram, 0xC000_0010, Write), Ok(0x3010));
    // The PDPTE has no accessed bit and is not written.
    assert_eq!(pt.get(&ram, pdpte), good);
    // Reserved: bits 2:1, 8:5 (incl. PS), 63 (not XD, even with NXE), 62:52.
    for bit in [1u32, 2, 5, 6, 7, 8, 52, 62, 63] {
        pt.set(&mut ram, pdpte, good | (1u64 << bit));
        assert_eq!(
            translate(&regs, &mut ram, 0xC000_0010, Read),
            pf_err(0xC000_0010, pf::P | pf::RSVD),
            "PDPTE bit {bit}"
        );
    }
    // Not present: P = 0 in the error code.
    pt.set(&mut ram, pdpte, good & !pte::P);
    assert_eq!(
        translate(&regs, &mut ram, 0xC000_0010, Read),
        pf_err(0xC000_0010, 0)
    );
    // The PDPT is 32-byte aligned: CR3 bits 4:0 are ignored.
    pt.set(&mut ram, pdpte, good);
    regs.cr3 |= 0x18;
    assert_eq!(translate(&regs, &mut ram, 0xC000_0010, Read), Ok(0x3010));
}

#[test]
fn pae_reserved_bits_62_to_52_but_4level_ignores_them() {
    for (layout, reserved) in [(Layout::Pae, true), (Layout::Level4, false)] {
        let (regs, mut ram, mut pt) = setup(layout, 0);
        pt.map(&mut ram, 0x20_0000, 0x7000, 1, pte::PWU | (1 << 55));
        let r = translate(&regs, &mut ram, 0x20_0008, Read);
        if reserved {
            assert_eq!(r, pf_err(0x20_0008, pf::P | pf::RSVD));
        } else {
            assert_eq!(
                r,
                Ok(0x7008),
                "4-level bits 62:52 are ignored, not address bits"
            );
        }
    }
}

#[test]
fn level4_2mib_and_1gib_pages() {
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    pt.map(&mut ram, 0x7FFF_FFE0_0000, 0x1_2340_0000, 2, pte::PWU);
    pt.map(&mut ram, 0xFFFF_8000_4000_0000, 0x40_0000_0000, 3, pte::PWU);
    assert_eq!(
        translate(&regs, &mut ram, 0x7FFF_FFE1_2345, Read),
        Ok(0x1_2341_2345)
    );
    assert_eq!(
        translate(&regs, &mut ram, 0xFFFF_8000_7654_3210, Write),
        Ok(0x40_3654_3210)
    );
    // A frame at 51 bits (MAXPHYADDR taken as 52).
    pt.map(&mut ram, 0x8000_0000, 0x8_0000_4000_0000, 3, pte::PWU);
    assert_eq!(
        translate(&regs, &mut ram, 0x8000_0001, Read),
        Ok(0x8_0000_4000_0001)
    );
}

#[test]
fn level5_walks_57_bit_addresses() {
    let (regs, mut ram, mut pt) = setup(Layout::Level5, 0);
    let high = 0x00FF_8000_0000_1000u64; // needs bits above 47
    pt.map(&mut ram, high, 0x6000, 1, pte::PWU);
    pt.map(&mut ram, 0xFF00_0000_0020_0000, 0x40_0000, 2, pte::PWU);
    assert_eq!(translate(&regs, &mut ram, high + 5, Read), Ok(0x6005));
    assert_eq!(
        translate(&regs, &mut ram, 0xFF00_0000_0023_0000, Read),
        Ok(0x43_0000)
    );
    // The PML5 entry used is index 0x1FF >> ... of bits 56:48.
    let pml5e = pt.entry_gpa(&mut ram, high, 5);
    assert_eq!(pml5e, ROOT + ((high >> 48) & 0x1FF) * 8);
    assert_eq!(pt.get(&ram, pml5e) & pte::A, pte::A);
}

#[test]
fn canonical_checks_48_and_57() {
    let (regs, mut ram, _) = setup(Layout::Level4, 0);
    for a in [
        0x0000_8000_0000_0000u64,
        0xFFFF_7FFF_FFFF_FFFF,
        0x00FF_8000_0000_1000,
    ] {
        assert_eq!(
            translate(&regs, &mut ram, a, Read),
            Err(Error::Exception(Exception::GeneralProtection(0))),
            "{a:#x}"
        );
    }
    let (regs, mut ram, _) = setup(Layout::Level5, 0);
    assert_eq!(
        translate(&regs, &mut ram, 0x0100_0000_0000_0000, Read),
        Err(Error::Exception(Exception::GeneralProtection(0)))
    );
    // Canonical at 57 bits: a walk happens (and finds nothing).
    assert_eq!(
        translate(&regs, &mut ram, 0x0000_8000_0000_0000, Read),
        pf_err(0x0000_8000_0000_0000, 0)
    );
}

#[test]
fn long_mode_without_pae_is_inconsistent() {
    let (mut regs, mut ram, _) = setup(Layout::Level4, 0);
    regs.cr4 &= !bits::CR4_PAE;
    assert_eq!(
        translate(&regs, &mut ram, 0x1000, Read),
        Err(Error::InconsistentState(
            nvmm_assist::InconsistentState::LongModeWithoutPae
        ))
    );
}

// ---- reserved bits (SDM 4.5 tables 4-14 to 4-20) ----

#[test]
fn ps_is_reserved_in_pml4_and_pml5_entries() {
    for (layout, level) in [
        (Layout::Level4, 4),
        (Layout::Level5, 5),
        (Layout::Level5, 4),
    ] {
        let (regs, mut ram, mut pt) = setup(layout, 3);
        pt.map(&mut ram, 0x1000, 0x2000, 1, pte::PWU);
        let at = pt.entry_gpa(&mut ram, 0x1000, level);
        pt.modify(&mut ram, at, pte::PS, 0);
        assert_eq!(
            translate(&regs, &mut ram, 0x1000, Write),
            pf_err(0x1000, pf::P | pf::W | pf::U | pf::RSVD),
            "{layout:?} level {level}"
        );
    }
}

#[test]
fn large_page_low_address_bits_are_reserved() {
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    // 1 GiB: bits 29:13 reserved; bit 12 is PAT.
    pt.map(&mut ram, 0x4000_0000, 0x8000_0000 | (1 << 12), 3, pte::PWU);
    assert_eq!(
        translate(&regs, &mut ram, 0x4000_0000, Read),
        Ok(0x8000_0000)
    );
    pt.map(&mut ram, 0x4000_0000, 0x8000_0000 | (1 << 13), 3, pte::PWU);
    assert_eq!(
        translate(&regs, &mut ram, 0x4000_0000, Read),
        pf_err(0x4000_0000, pf::P | pf::RSVD)
    );
    pt.map(&mut ram, 0x4000_0000, 0x8000_0000 | (1 << 29), 3, pte::PWU);
    assert_eq!(
        translate(&regs, &mut ram, 0x4000_0000, Read),
        pf_err(0x4000_0000, pf::P | pf::RSVD)
    );
    // 2 MiB (4-level and PAE): bits 20:13 reserved.
    for layout in [Layout::Level4, Layout::Pae] {
        let (regs, mut ram, mut pt) = setup(layout, 0);
        pt.map(&mut ram, 0x60_0000, 0x80_0000 | (1 << 12), 2, pte::PWU);
        assert_eq!(translate(&regs, &mut ram, 0x60_0000, Read), Ok(0x80_0000));
        pt.map(&mut ram, 0x60_0000, 0x80_0000 | (1 << 20), 2, pte::PWU);
        assert_eq!(
            translate(&regs, &mut ram, 0x60_0000, Read),
            pf_err(0x60_0000, pf::P | pf::RSVD)
        );
    }
}

#[test]
fn xd_is_reserved_without_nxe() {
    for layout in [Layout::Pae, Layout::Level4] {
        for level in 1..=layout_levels(layout) {
            let (mut regs, mut ram, mut pt) = setup(layout, 0);
            regs.efer &= !bits::EFER_NXE;
            pt.map(&mut ram, 0x1000, 0x2000, 1, pte::PWU);
            let at = pt.entry_gpa(&mut ram, 0x1000, level);
            pt.modify(&mut ram, at, pte::XD, 0);
            assert_eq!(
                translate(&regs, &mut ram, 0x1000, Read),
                pf_err(0x1000, pf::P | pf::RSVD),
                "{layout:?} level {level}"
            );
            // With NXE the same bit is XD: reads pass.
            regs.efer |= bits::EFER_NXE;
            assert_eq!(translate(&regs, &mut ram, 0x1000, Read), Ok(0x2000));
        }
    }
}

fn layout_levels(layout: Layout) -> u32 {
    match layout {
        Layout::Bits32 => 2,
        Layout::Pae => 2, // the PDPTE has its own rules
        Layout::Level4 => 4,
        Layout::Level5 => 5,
    }
}

#[test]
fn reserved_bits_are_checked_before_permissions_and_set_no_bits() {
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 3);
    pt.map(&mut ram, 0x1000, 0x2000, 1, pte::P); // supervisor, read-only
    let pd = pt.entry_gpa(&mut ram, 0x1000, 2);
    pt.modify(&mut ram, pd, pte::XD, 0);
    let mut regs2 = regs.clone();
    regs2.efer &= !bits::EFER_NXE;
    let snapshot = ram.mem.clone();
    assert_eq!(
        translate(&regs2, &mut ram, 0x1000, Write),
        pf_err(0x1000, pf::P | pf::W | pf::U | pf::RSVD)
    );
    assert!(ram.mem == snapshot, "a faulting walk changes no entry");
}

// ---- permissions (SDM 4.6) and error codes (SDM 4.7) ----

/// Maps 0x1000 with leaf `flags` (tables P|RW|US) and translates.
fn access(
    layout: Layout,
    cpl: u8,
    flags: u64,
    acc: AccessType,
    tweak: impl Fn(&mut Registers),
) -> Result<u64, Error> {
    let (mut regs, mut ram, mut pt) = setup(layout, cpl);
    pt.map(&mut ram, 0x1000, 0x5000, 1, flags);
    tweak(&mut regs);
    translate(&regs, &mut ram, 0x1234, acc)
}

const OK: Result<u64, Error> = Ok(0x5234);

#[test]
fn user_accesses() {
    for layout in ALL {
        let n = |_: &mut Registers| {};
        // User page: read/write/execute allowed when RW.
        assert_eq!(access(layout, 3, pte::PWU, Read, n), OK);
        assert_eq!(access(layout, 3, pte::PWU, Write, n), OK);
        assert_eq!(access(layout, 3, pte::PWU, Execute, n), OK);
        // Supervisor page: every user access faults with P|U.
        let id = if layout == Layout::Bits32 { 0 } else { pf::ID };
        assert_eq!(
            access(layout, 3, pte::P | pte::RW, Read, n),
            pf_err(0x1234, pf::P | pf::U)
        );
        assert_eq!(
            access(layout, 3, pte::P | pte::RW, Write, n),
            pf_err(0x1234, pf::P | pf::U | pf::W)
        );
        assert_eq!(
            access(layout, 3, pte::P | pte::RW, Execute, n),
            pf_err(0x1234, pf::P | pf::U | id)
        );
        // Read-only user page: user writes fault even with CR0.WP = 0.
        assert_eq!(
            access(layout, 3, pte::P | pte::US, Write, |r| r.cr0 &=
                !bits::CR0_WP),
            pf_err(0x1234, pf::P | pf::U | pf::W)
        );
        // Not present.
        assert_eq!(
            access(layout, 3, pte::US | pte::RW, Write, n),
            pf_err(0x1234, pf::U | pf::W)
        );
    }
}

#[test]
fn user_bit_must_be_set_at_every_level() {
    for layout in [Layout::Bits32, Layout::Pae, Layout::Level4, Layout::Level5] {
        for level in 2..=layout_levels(layout) {
            let (regs, mut ram, mut pt) = setup(layout, 3);
            pt.map(&mut ram, 0x1000, 0x5000, 1, pte::PWU);
            let at = pt.entry_gpa(&mut ram, 0x1000, level);
            pt.modify(&mut ram, at, 0, pte::US);
            assert_eq!(
                translate(&regs, &mut ram, 0x1000, Read),
                pf_err(0x1000, pf::P | pf::U),
                "{layout:?} {level}"
            );
            let (regs, mut ram, mut pt) = setup(layout, 3);
            pt.map(&mut ram, 0x1000, 0x5000, 1, pte::PWU);
            let at = pt.entry_gpa(&mut ram, 0x1000, level);
            pt.modify(&mut ram, at, 0, pte::RW);
            assert_eq!(
                translate(&regs, &mut ram, 0x1000, Write),
                pf_err(0x1000, pf::P | pf::U | pf::W),
                "{layout:?} {level}"
            );
        }
    }
}

#[test]
fn supervisor_writes_and_cr0_wp() {
    for layout in ALL {
        let wp0 = |r: &mut Registers| r.cr0 &= !bits::CR0_WP;
        let n = |_: &mut Registers| {};
        // Read-only supervisor page: faults with WP=1, allowed with WP=0.
        assert_eq!(
            access(layout, 0, pte::P, Write, n),
            pf_err(0x1234, pf::P | pf::W)
        );
        assert_eq!(access(layout, 0, pte::P, Write, wp0), OK);
        // Read-only user page, SMAP off: same rule.
        assert_eq!(
            access(layout, 0, pte::P | pte::US, Write, n),
            pf_err(0x1234, pf::P | pf::W)
        );
        assert_eq!(access(layout, 0, pte::P | pte::US, Write, wp0), OK);
        assert_eq!(access(layout, 0, pte::P, Read, n), OK);
    }
}

#[test]
fn nx_with_nxe() {
    for layout in [Layout::Pae, Layout::Level4, Layout::Level5] {
        let n = |_: &mut Registers| {};
        assert_eq!(
            access(layout, 0, pte::PWU | pte::XD, Execute, n),
            pf_err(0x1234, pf::P | pf::ID)
        );
        assert_eq!(
            access(layout, 3, pte::PWU | pte::XD, Execute, n),
            pf_err(0x1234, pf::P | pf::U | pf::ID)
        );
        assert_eq!(access(layout, 0, pte::PWU | pte::XD, Read, n), OK);
        // XD at an upper level applies too.
        let (regs, mut ram, mut pt) = setup(layout, 0);
        pt.map(&mut ram, 0x1000, 0x5000, 1, pte::PWU);
        let at = pt.entry_gpa(&mut ram, 0x1000, 2);
        pt.modify(&mut ram, at, pte::XD, 0);
        assert_eq!(
            translate(&regs, &mut ram, 0x1000, Execute),
            pf_err(0x1000, pf::P | pf::ID)
        );
    }
}

#[test]
fn id_bit_only_with_nxe_or_smep() {
    // 4-level without NXE and without SMEP: I/D stays 0 (SDM 4.7).
    let no_nxe = |r: &mut Registers| r.efer &= !bits::EFER_NXE;
    assert_eq!(
        access(Layout::Level4, 3, pte::P | pte::RW, Execute, no_nxe),
        pf_err(0x1234, pf::P | pf::U)
    );
    // 32-bit paging with SMEP: I/D set.
    let smep = |r: &mut Registers| r.cr4 |= bits::CR4_SMEP;
    assert_eq!(
        access(Layout::Bits32, 3, pte::P | pte::RW, Execute, smep),
        pf_err(0x1234, pf::P | pf::U | pf::ID)
    );
    // Not-present fetch reports I/D as well.
    let (regs, mut ram, _) = setup(Layout::Level4, 0);
    assert_eq!(
        translate(&regs, &mut ram, 0x9000, Execute),
        pf_err(0x9000, pf::ID)
    );
}

#[test]
fn smep() {
    for layout in ALL {
        let smep = |r: &mut Registers| r.cr4 |= bits::CR4_SMEP;
        // Supervisor fetch from a user page faults.
        assert_eq!(
            access(layout, 0, pte::PWU, Execute, smep),
            pf_err(0x1234, pf::P | pf::ID)
        );
        // ...from a supervisor page does not; data accesses are unaffected.
        assert_eq!(access(layout, 0, pte::P, Execute, smep), OK);
        assert_eq!(access(layout, 0, pte::PWU, Read, smep), OK);
        // User fetches from user pages are unaffected.
        assert_eq!(access(layout, 3, pte::PWU, Execute, smep), OK);
        // Without SMEP a supervisor fetch from a user page is fine.
        assert_eq!(access(layout, 0, pte::PWU, Execute, |_| {}), OK);
    }
}

#[test]
fn smap_and_rflags_ac() {
    for layout in ALL {
        let smap = |r: &mut Registers| r.cr4 |= bits::CR4_SMAP;
        let smap_ac = |r: &mut Registers| {
            r.cr4 |= bits::CR4_SMAP;
            r.rflags |= bits::RFLAGS_AC;
        };
        assert_eq!(
            access(layout, 0, pte::PWU, Read, smap),
            pf_err(0x1234, pf::P)
        );
        assert_eq!(
            access(layout, 0, pte::PWU, Write, smap),
            pf_err(0x1234, pf::P | pf::W)
        );
        assert_eq!(access(layout, 0, pte::PWU, Read, smap_ac), OK);
        assert_eq!(access(layout, 0, pte::PWU, Write, smap_ac), OK);
        // With AC, a read-only user page still obeys WP.
        assert_eq!(
            access(layout, 0, pte::P | pte::US, Write, smap_ac),
            pf_err(0x1234, pf::P | pf::W)
        );
        // SMAP does not apply to supervisor pages nor to user-mode accesses.
        assert_eq!(access(layout, 0, pte::P | pte::RW, Write, smap), OK);
        assert_eq!(access(layout, 3, pte::PWU, Write, smap), OK);
        // SMAP does not apply to fetches.
        assert_eq!(access(layout, 0, pte::PWU, Execute, smap), OK);
    }
}

#[test]
fn cpl_comes_from_ss_dpl_and_v86_is_user() {
    let (mut regs, mut ram, mut pt) = setup(Layout::Pae, 0);
    pt.map(&mut ram, 0x1000, 0x5000, 1, pte::P | pte::RW);
    assert_eq!(translate(&regs, &mut ram, 0x1000, Read), Ok(0x5000));
    regs.segments[2].attributes =
        SegmentAttributes::new(3, true, 3, true, false, false, true, true);
    assert_eq!(
        translate(&regs, &mut ram, 0x1000, Read),
        pf_err(0x1000, pf::P | pf::U)
    );
    regs.segments[2].attributes =
        SegmentAttributes::new(3, true, 0, true, false, false, true, true);
    regs.rflags |= bits::RFLAGS_VM;
    assert_eq!(
        translate(&regs, &mut ram, 0x1000, Read),
        pf_err(0x1000, pf::P | pf::U)
    );
}

// ---- accessed and dirty bits (SDM 4.8) ----

#[test]
fn accessed_on_every_level_dirty_on_the_leaf_for_writes() {
    for layout in ALL {
        let (regs, mut ram, mut pt) = setup(layout, 0);
        let leaf = pt.map(&mut ram, 0x1000, 0x5000, 1, pte::PWU);
        let levels: std::vec::Vec<u64> = (1..=layout_levels(layout))
            .map(|l| pt.entry_gpa(&mut ram, 0x1000, l))
            .collect();
        translate(&regs, &mut ram, 0x1000, Read).unwrap();
        for (i, &at) in levels.iter().enumerate() {
            assert_eq!(
                pt.get(&ram, at) & (pte::A | pte::D),
                pte::A,
                "{layout:?} level {} after read",
                i + 1
            );
        }
        translate(&regs, &mut ram, 0x1000, Write).unwrap();
        assert_eq!(
            pt.get(&ram, leaf) & (pte::A | pte::D),
            pte::A | pte::D,
            "{layout:?}"
        );
        for &at in &levels[1..] {
            assert_eq!(
                pt.get(&ram, at) & pte::D,
                0,
                "{layout:?}: no D on non-leaf entries"
            );
        }
        // Already set: no further compare-and-write.
        let n = ram.cas_log.len();
        translate(&regs, &mut ram, 0x1000, Write).unwrap();
        assert_eq!(ram.cas_log.len(), n);
    }
}

#[test]
fn dirty_on_a_large_page_entry() {
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    let pde = pt.map(&mut ram, 0x20_0000, 0x40_0000, 2, pte::PWU);
    let pdpte = pt.entry_gpa(&mut ram, 0x20_0000, 3);
    translate(&regs, &mut ram, 0x20_1234, Write).unwrap();
    assert_eq!(pt.get(&ram, pde) & (pte::A | pte::D), pte::A | pte::D);
    assert_eq!(pt.get(&ram, pdpte) & (pte::A | pte::D), pte::A);
    // 32-bit 4 MiB page: the 4-byte PDE.
    let (regs, mut ram, mut pt) = setup(Layout::Bits32, 0);
    let pde = pt.map(&mut ram, 0x40_0000, 0x80_0000, 2, pte::PWU);
    translate(&regs, &mut ram, 0x40_0000, Write).unwrap();
    assert_eq!(pt.get(&ram, pde) & (pte::A | pte::D), pte::A | pte::D);
    assert!(ram.cas_log.iter().all(|&(_, len, _)| len == 4));
}

#[test]
fn a_failed_walk_sets_no_accessed_or_dirty_bit() {
    for layout in ALL {
        let (regs, mut ram, mut pt) = setup(layout, 3);
        pt.map(&mut ram, 0x1000, 0x5000, 1, pte::P | pte::US); // read-only
        let snapshot = ram.mem.clone();
        assert_eq!(
            translate(&regs, &mut ram, 0x1000, Write),
            pf_err(0x1000, pf::P | pf::W | pf::U)
        );
        assert!(ram.mem == snapshot, "{layout:?}");
        assert!(ram.cas_log.is_empty());
    }
}

#[test]
fn compare_and_write_mismatch_restarts_the_walk() {
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    let leaf = pt.map(&mut ram, 0x1000, 0x5000, 1, pte::PWU);
    ram.cas_mismatches = 1;
    assert_eq!(translate(&regs, &mut ram, 0x1000, Write), Ok(0x5000));
    assert_eq!(ram.cas_log[0].2, nvmm_assist::CompareWrite::Mismatch);
    assert_eq!(pt.get(&ram, leaf) & (pte::A | pte::D), pte::A | pte::D);

    // Another vCPU remaps the page between the walk and the update: the
    // restarted walk uses the new entry.
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    let leaf = pt.map(&mut ram, 0x1000, 0x5000, 1, pte::PWU);
    ram.cas_interference
        .push((leaf, (0x9000 | pte::PWU).to_le_bytes().to_vec()));
    // (The interference lands before the first compare-and-write, on the
    // PML4E; the PML4E, PDPTE and PDE updates succeed, the PTE's mismatches.)
    assert_eq!(translate(&regs, &mut ram, 0x1000, Read), Ok(0x9000));

    // ...or unmaps it: the restarted walk faults.
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    let leaf = pt.map(&mut ram, 0x1000, 0x5000, 1, pte::PWU);
    ram.cas_interference
        .push((leaf, 0u64.to_le_bytes().to_vec()));
    assert_eq!(translate(&regs, &mut ram, 0x1000, Read), pf_err(0x1000, 0));
}

#[test]
fn endless_mismatches_give_up_after_a_bound() {
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    pt.map(&mut ram, 0x1000, 0x5000, 1, pte::PWU);
    ram.cas_mismatches = usize::MAX;
    assert_eq!(
        translate(&regs, &mut ram, 0x1000, Read),
        Err(Error::PageTableBusy { gpa: ROOT })
    );
    assert_eq!(ram.cas_log.len(), MAX_WALK_ATTEMPTS);
}

// ---- tables outside RAM, bus errors, address masking ----

#[test]
fn a_page_table_in_mmio_is_a_typed_error() {
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    pt.map(&mut ram, 0x1000, 0x5000, 1, pte::PWU);
    let pde = pt.entry_gpa(&mut ram, 0x1000, 2);
    let pt_table = pt.get(&ram, pde) & 0x000F_FFFF_FFFF_F000;
    let mut ram = ram.hole(pt_table, pt_table + 0x1000);
    assert_eq!(
        translate(&regs, &mut ram, 0x1000, Read),
        Err(Error::PageTableNotRam { gpa: pt_table + 8 })
    );
    // A root beyond RAM.
    let mut regs = regs;
    regs.cr3 = 0x10_0000_0000;
    assert_eq!(
        translate(&regs, &mut ram, 0x1000, Read),
        Err(Error::PageTableNotRam {
            gpa: 0x10_0000_0000
        })
    );
}

#[test]
fn a_bus_error_reading_an_entry_is_passed_through() {
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    pt.map(&mut ram, 0x1000, 0x5000, 1, pte::PWU);
    ram.fail_at = Some(2);
    assert_eq!(
        translate(&regs, &mut ram, 0x1000, Read),
        Err(Error::Bus(BusError(5)))
    );
}

#[test]
fn cr3_flag_and_pcid_bits_and_ignored_entry_bits_are_not_address_bits() {
    let (mut regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    pt.map(
        &mut ram,
        0x1000,
        0x5000,
        1,
        pte::PWU | (0x7F << 52) | (0xF << 59) | 0xE00,
    );
    regs.cr3 |= 0x8000_0000_0000_0000 | 0xFFF; // no-flush bit, PCID
    regs.cr4 |= 1 << 17; // PCIDE
    assert_eq!(translate(&regs, &mut ram, 0x1FFF, Read), Ok(0x5FFF));
}

// ---- MAXPHYADDR from the state ----

#[test]
fn default_maxphyaddr_is_52() {
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    pt.map(&mut ram, 0x1000, 0xF_FFFF_FFFF_F000, 1, pte::PWU);
    assert_eq!(
        translate(&regs, &mut ram, 0x1001, Read),
        Ok(0xF_FFFF_FFFF_F001)
    );
}

#[test]
fn maxphyaddr_36_reserves_bits_51_to_36_in_4level_entries() {
    let (regs, mut ram, mut pt) = setup(Layout::Level4, 0);
    let leaf = pt.map(&mut ram, 0x1000, 0xF_FFFF_F000, 1, pte::PWU);
    let st = WithMaxPhys {
        state: regs,
        max_phys: 36,
    };
    assert_eq!(translate(&st, &mut ram, 0x1001, Read), Ok(0xF_FFFF_F001));
    for bit in [36, 51] {
        pt.set(&mut ram, leaf, 0xF_FFFF_F000 | pte::PWU | (1 << bit));
        assert_eq!(
            translate(&st, &mut ram, 0x1001, Read),
            pf_err(0x1001, pf::P | pf::RSVD),
            "bit {bit}"
        );
    }
    // Bits 62:52 stay ignored.
    pt.set(&mut ram, leaf, 0xF_FFFF_F000 | pte::PWU | (1 << 52));
    assert_eq!(translate(&st, &mut ram, 0x1001, Read), Ok(0xF_FFFF_F001));
    // In a non-leaf entry too.
    let pml4e = pt.entry_gpa(&mut ram, 0x1000, 4);
    pt.modify(&mut ram, pml4e, 1 << 40, 0);
    assert_eq!(
        translate(&st, &mut ram, 0x1001, Write),
        pf_err(0x1001, pf::P | pf::W | pf::RSVD)
    );
}

#[test]
fn maxphyaddr_36_in_pae_and_pse36() {
    let (regs, mut ram, mut pt) = setup(Layout::Pae, 0);
    let leaf = pt.map(&mut ram, 0x1000, 0x1000, 1, pte::PWU | (1 << 40));
    let st = WithMaxPhys {
        state: regs,
        max_phys: 36,
    };
    assert_eq!(
        translate(&st, &mut ram, 0x1000, Read),
        pf_err(0x1000, pf::P | pf::RSVD)
    );
    pt.set(&mut ram, leaf, 0xF_0000_1000 | pte::PWU);
    assert_eq!(translate(&st, &mut ram, 0x1000, Read), Ok(0xF_0000_1000));

    // 32-bit paging, 4 MiB page: PDE bits 16:13 are physical bits 35:32,
    // bits 20:17 are reserved with MAXPHYADDR 36.
    let (regs, mut ram, mut pt) = setup(Layout::Bits32, 0);
    let pde = pt.map(&mut ram, 0x40_0000, 0x80_0000 | (0xF << 13), 2, pte::PWU);
    let st = WithMaxPhys {
        state: regs,
        max_phys: 36,
    };
    assert_eq!(translate(&st, &mut ram, 0x40_0004, Read), Ok(0xF_0080_0004));
    pt.modify(&mut ram, pde, 1 << 17, 0);
    assert_eq!(
        translate(&st, &mut ram, 0x40_0004, Read),
        pf_err(0x40_0004, pf::P | pf::RSVD)
    );
}
