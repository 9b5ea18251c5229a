//! Unit tests of `access`: page splitting between RAM and MMIO, translation
//! before any access, compare-and-write, and instruction fetch at edges.

use super::*;
use crate::error::Exception;
use crate::testutil::*;
use crate::translate::pf;

fn paged64() -> (TestRam, PageTables, Registers) {
    let ram = TestRam::new(0x40_0000).hole(0x30_0000, 0x31_0000);
    let pt = PageTables::new(Layout::Level4, 0x10_0000);
    let regs = Registers::long_mode(TEST_VENDOR, pt.cr3(), 0, 0);
    (ram, pt, regs)
}

use crate::state::Registers;

/// `fetch` of instruction bytes `have..want` into `buf`, in the mode of
/// `regs`, with a fresh cache (these tests are about the edges, not the
/// cache).
fn fetch_uncached(
    regs: &Registers,
    ram: &mut TestRam,
    mmio: &mut RecordingMmio,
    buf: &mut [u8; 15],
    have: usize,
    want: usize,
) -> Result<(), Error> {
    let mode = CpuMode::of(regs);
    fetch(
        regs,
        mode,
        ram,
        mmio,
        &mut FetchCache::new(),
        buf,
        have,
        want,
    )
}

#[test]
fn page_crossing_read_goes_half_to_ram_half_to_mmio() {
    let (mut ram, mut pt, regs) = paged64();
    // Linear 0x40_0000 -> RAM page 0x2000; 0x40_1000 -> MMIO page 0x30_0000.
    pt.map(&mut ram, 0x40_0000, 0x2000, 1, pte::PWU);
    pt.map(&mut ram, 0x40_1000, 0x30_0000, 1, pte::PWU);
    ram.put(0x2FFC, &[1, 2, 3, 4]);
    let mut mmio = RecordingMmio::default();
    let range = resolve(&regs, &mut ram, 0x40_0FFC, 8, AccessType::Read).unwrap();
    assert_eq!(range.count, 2);
    assert_eq!(range.parts[0], (0x2FFC, 4));
    assert_eq!(range.parts[1], (0x30_0000, 4));
    let mut buf = [0u8; 8];
    read_phys(&mut ram, &mut mmio, &range, &mut buf).unwrap();
    assert_eq!(&buf[..4], &[1, 2, 3, 4]);
    let expect: std::vec::Vec<u8> = (0..4)
        .map(|i| RecordingMmio::byte_at(0x30_0000 + i))
        .collect();
    assert_eq!(&buf[4..], &expect[..]);
    assert_eq!(mmio.log.len(), 1);
    assert_eq!(mmio.log[0].addr, 0x30_0000);
    assert!(!mmio.log[0].write);

    // The write goes the same way.
    write_phys(&mut ram, &mut mmio, &range, &[9, 9, 9, 9, 8, 8, 8, 8]).unwrap();
    assert_eq!(ram.get(0x2FFC, 4), &[9, 9, 9, 9]);
    assert_eq!(mmio.log[1].data, std::vec![8, 8, 8, 8]);
    assert!(mmio.log[1].write);
}

#[test]
fn every_page_is_translated_before_any_access() {
    let (mut ram, mut pt, regs) = paged64();
    pt.map(&mut ram, 0x40_0000, 0x30_0000, 1, pte::PWU);
    // The second page is not mapped: #PF at its first byte, and no access.
    let err = resolve(&regs, &mut ram, 0x40_0FFE, 4, AccessType::Write).unwrap_err();
    assert_eq!(
        err,
        Error::Exception(Exception::PageFault {
            address: 0x40_1000,
            code: pf::W
        })
    );
}

#[test]
fn non_paged_flat_access() {
    let mut ram = TestRam::new(0x10000).hole(0x8000, 0x9000);
    let regs = Registers::flat_protected32(TEST_VENDOR);
    let mut mmio = RecordingMmio::default();
    let range = resolve(&regs, &mut ram, 0x7FFE, 4, AccessType::Write).unwrap();
    assert_eq!(range.count, 2);
    assert_eq!(range.parts, [(0x7FFE, 2), (0x8000, 2)]);
    write_phys(&mut ram, &mut mmio, &range, &[1, 2, 3, 4]).unwrap();
    assert_eq!(ram.get(0x7FFE, 2), &[1, 2]);
    assert_eq!(mmio.log[0].addr, 0x8000);
    assert_eq!(mmio.log[0].data, std::vec![3, 4]);
}

#[test]
fn linear_wraps_at_4gib_outside_long_mode() {
    let mut ram = TestRam::new(0x10000);
    let regs = Registers::flat_protected32(TEST_VENDOR);
    let range = resolve(&regs, &mut ram, 0xFFFF_FFFE, 4, AccessType::Read).unwrap();
    assert_eq!(range.parts, [(0xFFFF_FFFE, 2), (0, 2)]);
}

#[test]
fn compare_and_write_reports_mismatch_and_goes_to_mmio() {
    let mut ram = TestRam::new(0x10000).hole(0x8000, 0x9000);
    let regs = Registers::flat_protected32(TEST_VENDOR);
    let mut mmio = RecordingMmio::default();
    ram.put(0x100, &[1, 2]);
    let r = resolve(&regs, &mut ram, 0x100, 2, AccessType::Write).unwrap();
    assert!(!compare_and_write_phys(&mut ram, &mut mmio, &r, &[0, 0], &[5, 5]).unwrap());
    assert_eq!(ram.get(0x100, 2), &[1, 2]);
    assert!(compare_and_write_phys(&mut ram, &mut mmio, &r, &[1, 2], &[5, 5]).unwrap());
    assert_eq!(ram.get(0x100, 2), &[5, 5]);
    let m = resolve(&regs, &mut ram, 0x8010, 2, AccessType::Write).unwrap();
    assert!(compare_and_write_phys(&mut ram, &mut mmio, &m, &[0, 0], &[7, 7]).unwrap());
    assert_eq!(mmio.log[0].data, std::vec![7, 7]);
}

#[test]
fn fetch_stops_before_an_unmapped_page_it_does_not_need() {
    let (mut ram, mut pt, mut regs) = paged64();
    pt.map(&mut ram, 0x40_0000, 0x2000, 1, pte::PWU);
    // Instruction of 3 bytes ends exactly at the page end; 0x40_1000 unmapped.
    regs.rip = 0x40_0FFD;
    ram.put(0x2FFD, &[0x89, 0x07, 0x90]);
    let mut mmio = RecordingMmio::default();
    let mut buf = [0u8; 15];
    fetch_uncached(&regs, &mut ram, &mut mmio, &mut buf, 0, 3).unwrap();
    assert_eq!(&buf[..3], &[0x89, 0x07, 0x90]);
    // One more byte crosses into the unmapped page: #PF (fetch, I/D with NXE).
    let err = fetch_uncached(&regs, &mut ram, &mut mmio, &mut buf, 3, 4).unwrap_err();
    assert_eq!(
        err,
        Error::Exception(Exception::PageFault {
            address: 0x40_1000,
            code: pf::ID
        })
    );
}

#[test]
fn fetch_stops_at_the_cs_limit_it_does_not_cross() {
    let mut ram = TestRam::new(0x20000);
    let mut regs = Registers::real_mode(TEST_VENDOR);
    regs.segments[1].base = 0x1000;
    regs.segments[1].selector = 0x100;
    regs.rip = 0xFFFE;
    ram.put(0x10FFE, &[0xA1, 0x34]);
    let mut mmio = RecordingMmio::default();
    let mut buf = [0u8; 15];
    fetch_uncached(&regs, &mut ram, &mut mmio, &mut buf, 0, 2).unwrap();
    assert_eq!(&buf[..2], &[0xA1, 0x34]);
    let err = fetch_uncached(&regs, &mut ram, &mut mmio, &mut buf, 2, 3).unwrap_err();
    assert_eq!(err, Error::Exception(Exception::GeneralProtection(0)));
}

#[test]
fn fetch_rejects_bad_ranges() {
    let mut ram = TestRam::new(0x1000);
    let regs = Registers::flat_protected32(TEST_VENDOR);
    let mut mmio = RecordingMmio::default();
    let mut buf = [0u8; 15];
    assert!(fetch_uncached(&regs, &mut ram, &mut mmio, &mut buf, 3, 2).is_err());
    assert!(fetch_uncached(&regs, &mut ram, &mut mmio, &mut buf, 0, 16).is_err());
    assert!(fetch_uncached(&regs, &mut ram, &mut mmio, &mut buf, 4, 4).is_ok());
}
