//! The page walker against the Intel SDM vol. 3A ch. 4 and AMD APM vol. 2
//! ch. 5: every paging mode and page size, permissions and their #PF error
//! codes, reserved bits, accessed/dirty updates.

mod support;

use nvmm_assist::translate::pf;
use nvmm_assist::{AccessType, Error, Exception, translate};
use support::*;

fn pf_err(address: u64, code: u32) -> Result<u64, Error> {
    Err(Error::Exception(Exception::PageFault { address, code }))
}

#[test]
fn non_paged_is_identity_32_bit() {
    let mut ram = TestRam::new(0x1000);
    let regs = flat32(0);
    assert_eq!(
        translate(&regs, &mut ram, 0x1234_5678, AccessType::Write),
        Ok(0x1234_5678)
    );
    assert_eq!(ram.reads + ram.writes, 0);
}

#[test]
fn level4_4k_2m_1g_pages() {
    let mut ram = TestRam::new(0x20_0000);
    let mut pt = PageTables::new(Layout::Level4, 0x1000);
    let regs = long64(pt.cr3(), 0);
    pt.map(&mut ram, 0x7000_1000, 0xABC_D000, 1, pte::PWU);
    pt.map(
        &mut ram,
        0x8000_0000_0000u64 - 0x20_0000,
        0x1_2340_0000,
        2,
        pte::PWU,
    );
    pt.map(&mut ram, 0xFFFF_8000_4000_0000, 0x40_0000_0000, 3, pte::PWU);
    assert_eq!(
        translate(&regs, &mut ram, 0x7000_1ABC, AccessType::Read),
        Ok(0xABC_DABC)
    );
    assert_eq!(
        translate(&regs, &mut ram, 0x7FFF_FFE1_2345, AccessType::Read),
        Ok(0x1_2341_2345)
    );
    assert_eq!(
        translate(&regs, &mut ram, 0xFFFF_8000_7654_3210, AccessType::Write),
        Ok(0x40_3654_3210)
    );
}

#[test]
fn level4_not_present_gives_pf_with_p_clear() {
    let mut ram = TestRam::new(0x20_0000);
    let pt = PageTables::new(Layout::Level4, 0x1000);
    let regs = long64(pt.cr3(), 0);
    assert_eq!(
        translate(&regs, &mut ram, 0x5000, AccessType::Read),
        pf_err(0x5000, 0)
    );
    assert_eq!(
        translate(&regs, &mut ram, 0x5000, AccessType::Write),
        pf_err(0x5000, pf::W)
    );
}

#[test]
fn level4_non_canonical_is_gp() {
    let mut ram = TestRam::new(0x20_0000);
    let pt = PageTables::new(Layout::Level4, 0x1000);
    let regs = long64(pt.cr3(), 0);
    assert_eq!(
        translate(&regs, &mut ram, 0x0000_8000_0000_0000, AccessType::Read),
        Err(Error::Exception(Exception::GeneralProtection(0)))
    );
}
