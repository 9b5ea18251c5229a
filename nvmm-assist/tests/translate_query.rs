//! `translate_query`: the read-only walk behind libnvmm-style
//! `gva_to_gpa` (libnvmm_x86.c `nvmm_gva_to_gpa`): no access check, no
//! accessed/dirty write, the page's rights returned, paging off = identity
//! on all 64 bits.

use crate::support;

use nvmm_assist::{Error, Exception, PageTranslation, Registers, translate_query};
use support::*;

const ROOT: u64 = 0x10_0000;

fn setup(layout: Layout) -> (Registers, TestRam, PageTables) {
    let ram = TestRam::new(0x100_0000);
    let pt = PageTables::new(layout, ROOT);
    let mut regs = match layout {
        Layout::Bits32 | Layout::Pae => {
            let mut r = Registers::flat_protected32(TEST_VENDOR).at_cpl(3);
            r.cr0 |= bits::CR0_PG | bits::CR0_WP;
            r.cr4 = if layout == Layout::Pae {
                bits::CR4_PAE
            } else {
                bits::CR4_PSE
            };
            r.efer = if layout == Layout::Pae {
                bits::EFER_NXE
            } else {
                0
            };
            r
        }
        Layout::Level4 => Registers::long_mode(TEST_VENDOR, ROOT, 0, 0).at_cpl(3),
        Layout::Level5 => {
            let mut r = Registers::long_mode(TEST_VENDOR, ROOT, 0, 0).at_cpl(3);
            r.cr4 |= bits::CR4_LA57;
            r
        }
    };
    regs.cr3 = pt.cr3();
    (regs, ram, pt)
}

#[test]
fn paging_off_returns_the_address_unchanged() {
    let mut ram = TestRam::new(0x1000);
    let regs = Registers::flat_protected32(TEST_VENDOR);
    let t = translate_query(&regs, &mut ram, 0xFFFF_0001_2345_6789).unwrap();
    assert_eq!(t.gpa, 0xFFFF_0001_2345_6789);
    assert!(t.writable && t.user && t.executable);
}

#[test]
fn rights_are_reported_and_nothing_is_written() {
    for layout in [Layout::Bits32, Layout::Pae, Layout::Level4, Layout::Level5] {
        let (regs, mut ram, mut pt) = setup(layout);
        // Read-only, supervisor, and no-execute where XD exists.
        let xd = if layout == Layout::Bits32 { 0 } else { pte::XD };
        pt.map(&mut ram, 0x7000_1000, 0xABC_D000, 1, pte::P | xd);
        pt.map(&mut ram, 0x7000_2000, 0xABC_E000, 1, pte::PWU);
        let writes = ram.writes;
        let cas = ram.cas_log.len();
        // At CPL 3 the checked walk would fault on both accesses below;
        // the query reports the rights instead.
        let t = translate_query(&regs, &mut ram, 0x7000_1ABC).unwrap();
        assert_eq!(
            t,
            PageTranslation {
                gpa: 0xABC_DABC,
                writable: false,
                user: false,
                executable: layout == Layout::Bits32,
            },
            "{layout:?}"
        );
        let t = translate_query(&regs, &mut ram, 0x7000_2001).unwrap();
        assert_eq!(
            (t.gpa, t.writable, t.user, t.executable),
            (0xABC_E001, true, true, true)
        );
        assert_eq!(ram.writes, writes, "{layout:?}");
        assert_eq!(ram.cas_log.len(), cas, "no A/D bit written ({layout:?})");
        assert!(
            matches!(
                translate_query(&regs, &mut ram, 0x7000_3000),
                Err(Error::Exception(Exception::PageFault {
                    address: 0x7000_3000,
                    ..
                }))
            ),
            "{layout:?}"
        );
    }
}
