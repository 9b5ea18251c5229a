//! The general path on an exit without instruction bytes, with the fast
//! path off (`assist_mem_with(.., false, ..)`, which only the crate's own
//! tests can ask for): its own fetch (`fetch::fetch_first`, in the copy for
//! the mode's default address size) must give what the fast path's fetch
//! gives, in every paged and unpaged mode class, with a cold and a warm
//! fetch cache, for an instruction within a page and one that straddles a
//! page edge. Through the public API an exit without bytes always takes
//! the fast path's fetch in these modes (64-bit mode is always one of the
//! common control-state shapes), so this is the only way to run the
//! general fetch's 64-bit copy and its walk.

use std::vec::Vec;

use crate::access::AccessType;
use crate::fetch_cache::FetchCache;
use crate::mem::{MemExit, assist_mem_with};
use crate::state::Registers;
use crate::testutil::{Layout, PageTables, RecordingMmio, TEST_VENDOR, TestRam, bits, pte};

const MMIO: u64 = 0x1000;

/// (name, registers, RAM) of a guest in each mode class whose code pages
/// 0x2000-0x3FFF and MMIO page are identity-mapped, RBX = MMIO.
fn guests() -> Vec<(&'static str, Registers, TestRam)> {
    let mut out = Vec::new();
    for layout in [Layout::Level4, Layout::Pae, Layout::Bits32] {
        let mut ram = TestRam::new(0x10_0000).hole(MMIO, MMIO + 0x1000);
        let mut pt = PageTables::new(layout, 0x8_0000);
        for page in [MMIO, 0x2000, 0x3000] {
            pt.map(&mut ram, page, page, 1, pte::PWU);
        }
        let regs = if layout == Layout::Level4 {
            Registers::long_mode(TEST_VENDOR, pt.cr3(), 0, 0)
        } else {
            let mut r = Registers::flat_protected32(TEST_VENDOR);
            r.cr0 |= bits::CR0_PG;
            if layout == Layout::Pae {
                r.cr4 |= bits::CR4_PAE;
            }
            r.cr3 = pt.cr3();
            r
        };
        out.push((
            match layout {
                Layout::Level4 => "64-bit",
                Layout::Pae => "PAE",
                _ => "32-bit paging",
            },
            regs,
            ram,
        ));
    }
    out.push((
        "real",
        Registers::real_mode(TEST_VENDOR),
        TestRam::new(0x10_0000).hole(MMIO, MMIO + 0x1000),
    ));
    out
}

#[test]
fn the_general_fetch_agrees_with_the_fast_one() {
    // mov [rbx+0x10], eax (bx+0x10 in real mode: 89 47 10, else 89 43 10),
    // within a page and straddling its end.
    for (name, regs, ram) in guests() {
        let insn: [u8; 3] = if name == "real" {
            [0x89, 0x47, 0x10]
        } else {
            [0x89, 0x43, 0x10]
        };
        for rip in [0x2100u64, 0x2FFE] {
            let mut results = Vec::new();
            for fast in [true, false] {
                let (mut regs, mut ram) = (regs.clone(), ram.clone());
                ram.put(rip, &insn);
                regs.rip = rip;
                regs.gprs[3] = MMIO;
                regs.gprs[0] = 0x1234_5678;
                let mut mmio = RecordingMmio::default();
                let exit = MemExit {
                    gpa: MMIO + 0x10,
                    access: AccessType::Write,
                    instruction: &[],
                };
                let mut cache = FetchCache::new();
                let mut runs = Vec::new();
                // Cold, then warm.
                for _ in 0..2 {
                    regs.rip = rip;
                    let r =
                        assist_mem_with(&mut regs, &mut ram, &mut mmio, &exit, fast, &mut cache);
                    runs.push((r, regs.clone()));
                }
                results.push((runs, mmio.log));
            }
            assert_eq!(results[0], results[1], "{name} at {rip:#x}");
            let (runs, log) = &results[0];
            assert!(
                runs.iter().all(|r| r.0 == Ok(crate::Outcome::Done)),
                "{name} at {rip:#x}"
            );
            assert_eq!(log.len(), 2, "{name} at {rip:#x}");
        }
    }
}
