//! `assist_io_cached`: INS and OUTS translate their memory operand through
//! the VCPU's `FetchCache` (data translations, re-validated on every use)
//! and must give exactly what `assist_io` gives, walk by walk, while the
//! guest rewrites its page tables between exits without telling anyone.

use crate::support;
use crate::support::dyn_assist::{assist_io, assist_io_cached};

use nvmm_assist::translate::pf;
use nvmm_assist::{Error, Exception, FetchCache, Gpr, IoExit, Outcome, Registers, Segment};
use support::Rng;
use support::*;

const PORT: u16 = 0x3F8;
const RIP: u64 = 0x40_0000;
/// The data page the tests move between frames.
const DATA: u64 = 0x20_0000;
/// Frames the data page can be mapped to (RAM), and one in a hole (MMIO).
const FRAMES: [u64; 3] = [0x10_0000, 0x11_0000, 0x12_0000];
const MMIO_FRAME: u64 = 0x13_0000;

/// A 64-bit guest with 4-level paging: code at RIP, the data page at
/// DATA (4 KiB leaf) and the page after it. Returns the state, RAM, the
/// tables and the data page's leaf entry.
fn guest() -> (Registers, TestRam, PageTables, u64) {
    let mut ram = TestRam::new(0x80_0000).hole(MMIO_FRAME, MMIO_FRAME + 0x1000);
    let mut pt = PageTables::new(Layout::Level4, 0x30_0000);
    pt.map(&mut ram, RIP, RIP, 2, pte::PWU);
    let leaf = pt.map(&mut ram, DATA, FRAMES[0], 1, pte::PWU);
    pt.map(&mut ram, DATA + 0x1000, 0x14_0000, 1, pte::PWU);
    // OUTS without a segment in the exit reads its prefixes at CS:RIP.
    ram.put(RIP, &[0x2E, 0xF3, 0x6E]);
    let mut regs = Registers::long_mode(TEST_VENDOR, pt.cr3(), 0, 0);
    regs.rip = RIP;
    (regs, ram, pt, leaf)
}

fn string_exit(input: bool, size: u8, rep: bool, segment: Option<Segment>) -> IoExit {
    IoExit {
        port: PORT,
        input,
        operand_size: size,
        address_size: 8,
        rep,
        string: true,
        segment,
        npc: RIP + 3,
    }
}

#[test]
fn cached_ins_follows_a_rewritten_entry() {
    let (mut regs, mut ram, pt, leaf) = guest();
    let mut mmio = RecordingMmio::default();
    let mut ports = RecordingPorts::with_input(b"abcdefghijkl");
    let mut cache = FetchCache::new();
    let e = string_exit(true, 1, true, Some(Segment::Es));
    let mut ins = |regs: &mut Registers, ram: &mut TestRam, ports: &mut RecordingPorts| {
        regs.rip = RIP;
        regs.gprs[Gpr::Rdi as usize] = DATA + 0x10;
        regs.gprs[Gpr::Rcx as usize] = 4;
        assist_io_cached(regs, ram, &mut mmio, ports, &e, &mut cache)
    };
    assert_eq!(ins(&mut regs, &mut ram, &mut ports), Ok(Outcome::Done));
    assert_eq!(ram.get(FRAMES[0] + 0x10, 4), b"abcd");
    assert_eq!(ins(&mut regs, &mut ram, &mut ports), Ok(Outcome::Done));
    assert_eq!(ram.get(FRAMES[0] + 0x10, 4), b"efgh");
    // The guest moves the page without an exit: the next INS writes to
    // the new frame, not through the cached translation.
    pt.set(&mut ram, leaf, FRAMES[1] | pte::PWU);
    assert_eq!(ins(&mut regs, &mut ram, &mut ports), Ok(Outcome::Done));
    assert_eq!(ram.get(FRAMES[1] + 0x10, 4), b"ijkl");
    assert_eq!(ram.get(FRAMES[0] + 0x10, 4), b"efgh");
    // Write-protected: #PF (present, write) before any port access, and
    // no register changes.
    pt.set(&mut ram, leaf, FRAMES[1] | pte::P | pte::US);
    let reads = ports.log.len();
    regs.gprs[Gpr::Rdi as usize] = DATA + 0x10;
    regs.gprs[Gpr::Rcx as usize] = 4;
    let before_call = regs.clone();
    assert_eq!(
        assist_io_cached(&mut regs, &mut ram, &mut mmio, &mut ports, &e, &mut cache),
        Err(Error::Exception(Exception::PageFault {
            address: DATA + 0x10,
            code: pf::P | pf::W
        }))
    );
    assert_eq!(regs, before_call);
    assert_eq!(ports.log.len(), reads);
    assert!(cache.data_hits() >= 1, "the unchanged walk was reused");
    assert!(cache.data_misses() >= 2, "the changed walks were redone");
}

#[test]
fn a_cached_read_translation_never_serves_ins() {
    // OUTS reads the page (caching a read translation) while it is
    // read-only; INS to the same page must still fault as a write.
    let (mut regs, mut ram, pt, leaf) = guest();
    pt.set(&mut ram, leaf, FRAMES[0] | pte::P | pte::US);
    ram.put(FRAMES[0], b"xy");
    let mut mmio = RecordingMmio::default();
    let mut ports = RecordingPorts::with_input(b"zz");
    let mut cache = FetchCache::new();
    regs.gprs[Gpr::Rsi as usize] = DATA;
    regs.gprs[Gpr::Rcx as usize] = 2;
    assert_eq!(
        assist_io_cached(
            &mut regs,
            &mut ram,
            &mut mmio,
            &mut ports,
            &string_exit(false, 1, true, Some(Segment::Ds)),
            &mut cache
        ),
        Ok(Outcome::Done)
    );
    assert_eq!(ports.output, b"xy");
    regs.rip = RIP;
    regs.gprs[Gpr::Rdi as usize] = DATA;
    regs.gprs[Gpr::Rcx as usize] = 2;
    let before = regs.clone();
    assert_eq!(
        assist_io_cached(
            &mut regs,
            &mut ram,
            &mut mmio,
            &mut ports,
            &string_exit(true, 1, true, Some(Segment::Es)),
            &mut cache
        ),
        Err(Error::Exception(Exception::PageFault {
            address: DATA,
            code: pf::P | pf::W
        }))
    );
    assert_eq!(regs, before);
    assert_eq!(ram.get(FRAMES[0], 2), b"xy");
}

/// Random INS/OUTS (sizes, REP counts, DF, page-crossing buffers, OUTS
/// with and without the segment in the exit) with one cache kept across
/// calls, while the data page's entry is rewritten at random between
/// calls (another frame, an MMIO frame, not present, read-only,
/// supervisor-only with CPL 3, accessed/dirty cleared): every call gives
/// the same result, registers, RAM, MMIO and port accesses as
/// `assist_io` with no cache.
#[test]
fn cached_string_io_matches_the_uncached_assist_under_page_table_changes() {
    let mut rng = Rng(0x10ca_c4ed_0000_0001);
    let (regs0, ram0, pt, leaf) = guest();
    let input: Vec<u8> = (0..=255u8).cycle().take(20_000).collect();
    let mut cache = FetchCache::new();
    let base = regs0.clone();
    let mut cached = (regs0.clone(), ram0.clone());
    let mut plain = (regs0, ram0);
    let (mut calls, mut faults) = (0u32, 0u32);
    // Fewer in debug builds (the CI runs both).
    let rounds = if cfg!(debug_assertions) { 1000 } else { 3000 };
    for round in 0..rounds {
        // Rewrite the data page's entry (in both copies) between exits.
        if rng.below(3) == 0 {
            let frame = match rng.below(5) {
                0..=2 => FRAMES[rng.below(3) as usize],
                3 => MMIO_FRAME,
                _ => FRAMES[0],
            };
            let flags = match rng.below(8) {
                0 => 0,                          // not present
                1 => pte::P | pte::US,           // read-only
                2 => pte::P | pte::RW,           // supervisor only
                3 => pte::PWU | pte::A | pte::D, // accessed and dirty
                _ => pte::PWU,
            };
            pt.set(&mut cached.1, leaf, frame | flags);
            pt.set(&mut plain.1, leaf, frame | flags);
        }
        let input_dir = rng.below(2) == 0;
        let size = [1u8, 2, 4][rng.below(3) as usize];
        let rep = rng.below(4) != 0;
        let segment = if input_dir {
            Some(Segment::Es)
        } else if rng.below(2) == 0 {
            None
        } else {
            Some(Segment::Ds)
        };
        let e = string_exit(input_dir, size, rep, segment);
        let offset = match rng.below(3) {
            0 => rng.below(0x1000),
            1 => 0x1000 - rng.below(16),
            _ => rng.below(32),
        };
        let mut regs = base.clone();
        regs.rip = RIP;
        regs.rflags = 2 | if rng.below(4) == 0 { 1 << 10 } else { 0 };
        regs.gprs[Gpr::Rsi as usize] = DATA + offset;
        regs.gprs[Gpr::Rdi as usize] = DATA + offset;
        regs.gprs[Gpr::Rcx as usize] = rng.below(0x1800);
        // CPL 3 in one call of eight: a supervisor-only page faults.
        if rng.below(8) == 0 {
            regs = regs.at_cpl(3);
        }
        cached.0 = regs.clone();
        plain.0 = regs;
        let start = rng.below(10_000) as usize;
        let mut cports = RecordingPorts::with_input(&input[start..]);
        let mut pports = cports.clone();
        let (mut cmmio, mut pmmio) = (RecordingMmio::default(), RecordingMmio::default());
        let c = assist_io_cached(
            &mut cached.0,
            &mut cached.1,
            &mut cmmio,
            &mut cports,
            &e,
            &mut cache,
        );
        let p = assist_io(&mut plain.0, &mut plain.1, &mut pmmio, &mut pports, &e);
        let at = format!("round {round}: {e:?} offset {offset:#x}");
        assert_eq!(c, p, "{at}");
        assert_eq!(cached.0, plain.0, "{at}: registers");
        assert!(cached.1.mem == plain.1.mem, "{at}: RAM");
        assert_eq!(cmmio.log, pmmio.log, "{at}: MMIO");
        assert_eq!(cports.log, pports.log, "{at}: ports");
        calls += 1;
        faults += u32::from(c.is_err());
    }
    assert!(
        faults > calls / 30 && faults < calls / 2,
        "{faults} of {calls}"
    );
    let (hits, misses) = (cache.data_hits(), cache.data_misses());
    assert!(
        hits > u64::from(calls) / 6 && misses > u64::from(calls) / 6,
        "hits {hits} misses {misses}"
    );
}
