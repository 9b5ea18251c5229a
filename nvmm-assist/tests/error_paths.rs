//! The error and fallback paths that no other test reached (found with
//! `cargo xtask coverage`), each driven through the public API the way a
//! hostile guest, a hostile exit or a failing device reaches it:
//!
//! - a paging-structure entry of a cached translation (fetch, data, or
//!   the pair of PUSH m / POP m / MOVS) that is no longer RAM when the
//!   cache re-validates it: the walk's own `PageTableNotRam` for that
//!   entry, as a cold walk gives;
//! - page tables in ROM (read as RAM, `compare_and_write` says not RAM):
//!   the accessed-bit update fails with `PageTableNotRam`;
//! - a locked read-modify-write split over RAM and MMIO, with and without
//!   a lost race on the RAM part;
//! - an exit carrying more than 15 instruction bytes, or only the bytes
//!   before a page edge;
//! - a plain IN/OUT through `assist_io_cached`; string port I/O without
//!   exit segment information (an SS override, fifteen prefixes), and a
//!   backwards batch cut by an expand-down limit;
//! - `FetchCache::clear`, the `&mut T` forwarding impls of the buses, and
//!   rust-vmm memory whose regions are not 8-byte aligned.
//!
//! On every error: the exact typed result, no register changed and no
//! device access made.

use crate::support;
use crate::support::dyn_assist::{assist_io, assist_mem, assist_mem_cached};
use crate::support::memdev::{Guest, PT_ROOT};

use nvmm_assist::{
    AccessType, BusError, CompareWrite, EntryCheck, Error, Exception, FetchCache, GuestRam, IoExit,
    MemExit, MmioBus, Outcome, PartialBatch, PortIo, RamStatus, Registers, Segment,
    SegmentAttributes, translate,
};
use support::{
    BusAccess, Layout, PageTables, RecordingMmio, RecordingPorts, TEST_VENDOR, TestRam, bits, pte,
};

const LAYOUTS: [Layout; 4] = [Layout::Bits32, Layout::Pae, Layout::Level4, Layout::Level5];

fn levels(layout: Layout) -> u32 {
    match layout {
        Layout::Bits32 => 2,
        Layout::Pae => 3,
        Layout::Level4 => 4,
        Layout::Level5 => 5,
    }
}

/// A paged state of `layout` at CPL 0 (flat 32-bit protected mode for
/// 32-bit and PAE paging, 64-bit mode for 4- and 5-level), CR3 = `cr3`.
fn paged_regs(layout: Layout, cr3: u64) -> Registers {
    let mut r = match layout {
        Layout::Bits32 | Layout::Pae => {
            let mut r = Registers::flat_protected32(TEST_VENDOR);
            r.cr0 |= bits::CR0_PG;
            if layout == Layout::Pae {
                r.cr4 |= bits::CR4_PAE;
            }
            r
        }
        Layout::Level4 | Layout::Level5 => {
            let mut r = Registers::long_mode(TEST_VENDOR, 0, 0, 0);
            if layout == Layout::Level5 {
                r.cr4 |= bits::CR4_LA57;
            }
            r
        }
    };
    r.cr3 = cr3;
    r
}

/// The 4 KiB page holding `gpa`, as a hole range.
fn page_of(gpa: u64) -> (u64, u64) {
    let p = gpa & !0xFFF;
    (p, p + 0x1000)
}

// ---- fetch translations -----------------------------------------------

/// Where the fetch tests' code runs (linear), the page it maps to, and the
/// MMIO page its store goes to.
const CODE: u64 = 0x40_0000;
const CODE_PAGE: u64 = 0x5000;
const MMIO: u64 = 0x1000;
/// `mov [ebx], eax` (`mov [rbx], eax` in 64-bit mode).
const STORE: [u8; 2] = [0x89, 0x03];

struct Fetching {
    regs: Registers,
    ram: TestRam,
    mmio: RecordingMmio,
    pt: PageTables,
}

fn fetching(layout: Layout) -> Fetching {
    let mut ram = TestRam::new(0x40_1000).hole(MMIO, MMIO + 0x1000);
    ram.put(CODE_PAGE, &STORE);
    let mut pt = PageTables::new(layout, 0x10000);
    pt.map(&mut ram, CODE, CODE_PAGE, 1, pte::PWU);
    let mut regs = paged_regs(layout, pt.cr3());
    regs.rip = CODE;
    regs.gprs[3] = MMIO;
    regs.gprs[0] = 0x1122_3344;
    Fetching {
        regs,
        ram,
        mmio: RecordingMmio::default(),
        pt,
    }
}

/// An exit with no instruction bytes (VMX): the assist fetches.
const FETCH_EXIT: MemExit<'static> = MemExit {
    gpa: MMIO,
    access: AccessType::Write,
    instruction: &[],
};

impl Fetching {
    fn run(&mut self, cache: &mut FetchCache) -> Result<Outcome, Error> {
        assist_mem_cached(
            &mut self.regs,
            &mut self.ram,
            &mut self.mmio,
            &FETCH_EXIT,
            cache,
        )
    }

    /// Two stores through `cache`, the second served by it.
    fn warm(&mut self) -> FetchCache {
        let mut cache = FetchCache::new();
        for _ in 0..2 {
            self.regs.rip = CODE;
            assert_eq!(self.run(&mut cache), Ok(Outcome::Done));
        }
        assert_eq!((cache.misses(), cache.hits()), (1, 1));
        self.regs.rip = CODE;
        self.mmio.log.clear();
        cache
    }
}

/// A cached fetch translation one of whose paging-structure entries is no
/// longer RAM when the cache re-validates it (the guest's table page was
/// turned into MMIO, or unplugged, without an exit): the result is the
/// walk's own `PageTableNotRam` for that entry, exactly as a cold walk of
/// the same tables gives (the entries above it still lead to it), with no
/// register changed and no MMIO access. Every layout, every level.
#[test]
fn a_fetch_entry_no_longer_in_ram_is_the_walks_error() {
    for layout in LAYOUTS {
        for level in 1..=levels(layout) {
            let what = format!("{layout:?} level {level}");
            let mut s = fetching(layout);
            let mut cache = s.warm();
            let at = s.pt.entry_gpa(&mut s.ram, CODE, level);
            let (start, end) = page_of(at);
            s.ram.holes.push((start, end));
            let before = s.regs.clone();
            let expected = Err(Error::PageTableNotRam { gpa: at });
            // A cold walk (no cache) of the same tables.
            let (mut regs, mut ram, mut mmio) = (s.regs.clone(), s.ram.clone(), s.mmio.clone());
            let cold = assist_mem(&mut regs, &mut ram, &mut mmio, &FETCH_EXIT);
            assert_eq!(cold, expected, "{what}: cold walk");
            // The cached translation, re-validated.
            let r = s.run(&mut cache);
            assert_eq!(r, expected, "{what}: cached");
            assert_eq!(s.regs, before, "{what}: registers changed");
            assert!(s.mmio.log.is_empty(), "{what}: MMIO access");
            // Nothing was cached from the failure: the page back in RAM,
            // the store runs again.
            s.ram.holes.retain(|&h| h != (start, end));
            assert_eq!(s.run(&mut cache), Ok(Outcome::Done), "{what}: after");
            assert_eq!(s.mmio.log.len(), 1);
        }
    }
}

/// `FetchCache::clear` forgets the fetch and the data translations: the
/// next fetch walks (a miss), the next data translation too, and both give
/// what the tables say.
#[test]
fn clear_forgets_every_translation() {
    let mut s = fetching(Layout::Level4);
    let mut cache = s.warm();
    assert_eq!(
        cache.translate_data(&s.regs, &mut s.ram, CODE, AccessType::Read),
        Ok(CODE_PAGE)
    );
    assert_eq!(
        cache.translate_data(&s.regs, &mut s.ram, CODE, AccessType::Read),
        Ok(CODE_PAGE)
    );
    assert_eq!((cache.data_misses(), cache.data_hits()), (1, 1));
    cache.clear();
    // The counters are statistics, kept.
    assert_eq!((cache.misses(), cache.hits()), (1, 1));
    assert_eq!(s.run(&mut cache), Ok(Outcome::Done));
    assert_eq!((cache.misses(), cache.hits()), (2, 1));
    assert_eq!(
        cache.translate_data(&s.regs, &mut s.ram, CODE + 4, AccessType::Read),
        Ok(CODE_PAGE + 4)
    );
    assert_eq!((cache.data_misses(), cache.data_hits()), (2, 1));
    // A cleared cache of another state is as good as a new one.
    let mut other = fetching(Layout::Bits32);
    cache.clear();
    assert_eq!(other.run(&mut cache), Ok(Outcome::Done));
    assert_eq!(other.mmio.log.len(), 1);
}

// ---- data translations ------------------------------------------------

/// The same for a cached data translation (`FetchCache::translate_data`,
/// which PUSH m / POP m and string instructions use): an entry no longer in
/// RAM on re-validation is the walk's `PageTableNotRam` for it, as
/// `translate` gives; 4-byte entries (32-bit paging) and 8-byte ones, a
/// read and a write translation, every level.
#[test]
fn a_data_entry_no_longer_in_ram_is_the_walks_error() {
    for layout in LAYOUTS {
        for access in [AccessType::Read, AccessType::Write] {
            for level in 1..=levels(layout) {
                let what = format!("{layout:?} {access:?} level {level}");
                let mut s = fetching(layout);
                let mut cache = FetchCache::new();
                for _ in 0..2 {
                    let r = cache.translate_data(&s.regs, &mut s.ram, CODE + 8, access);
                    assert_eq!(r, Ok(CODE_PAGE + 8), "{what}");
                }
                assert_eq!((cache.data_misses(), cache.data_hits()), (1, 1), "{what}");
                let at = s.pt.entry_gpa(&mut s.ram, CODE, level);
                s.ram.holes.push(page_of(at));
                let expected = Err(Error::PageTableNotRam { gpa: at });
                let mut cold_ram = s.ram.clone();
                assert_eq!(
                    translate(&s.regs, &mut cold_ram, CODE + 8, access),
                    expected,
                    "{what}: cold walk"
                );
                let (writes, cas) = (s.ram.writes, s.ram.cas_log.len());
                let r = cache.translate_data(&s.regs, &mut s.ram, CODE + 8, access);
                assert_eq!(r, expected, "{what}: cached");
                assert_eq!(s.ram.writes, writes, "{what}: a write");
                assert_eq!(s.ram.cas_log.len(), cas, "{what}: an A/D update");
            }
        }
    }
}

// ---- pair translations (PUSH m, POP m, MOVS) --------------------------

/// The pair tests' stack (linear and physical): a PDPT entry of its own,
/// so that its PD and PT are not the MMIO operand's.
const STACK: u64 = 0x40_0000_0800;
const STACK_PAGE: u64 = 0x3000;

/// A 64-bit guest whose `[rbx]` is the MMIO page (identity-mapped) and
/// whose RSP/RDI is in RAM at `STACK`, with the pair instruction `bytes`.
struct Pair {
    regs: Registers,
    ram: TestRam,
    mmio: RecordingMmio,
    pt: PageTables,
}

fn pair_guest() -> Pair {
    let mut ram = TestRam::new(0x20_0000).hole(MMIO, MMIO + 0x1000);
    let mut pt = PageTables::new(Layout::Level4, 0x10_0000);
    pt.map(&mut ram, MMIO, MMIO, 1, pte::PWU);
    pt.map(&mut ram, STACK & !0xFFF, STACK_PAGE, 1, pte::PWU);
    let mut regs = Registers::long_mode(TEST_VENDOR, pt.cr3(), 0x9000, STACK);
    regs.gprs[3] = MMIO; // rbx
    regs.gprs[6] = MMIO + 0x40; // rsi
    regs.gprs[7] = STACK; // rdi
    Pair {
        regs,
        ram,
        mmio: RecordingMmio::default(),
        pt,
    }
}

/// The pair forms: (name, bytes, whether the MMIO side is the source, the
/// exit's access and GPA).
const PAIR_FORMS: [(&str, &[u8], bool, AccessType, u64); 3] = [
    (
        "push qword [rbx]",
        &[0xFF, 0x33],
        true,
        AccessType::Read,
        MMIO,
    ),
    (
        "pop qword [rbx]",
        &[0x8F, 0x03],
        false,
        AccessType::Write,
        MMIO,
    ),
    ("movsq", &[0x48, 0xA5], true, AccessType::Read, MMIO + 0x40),
];

/// A warm pair record (both translations of one instruction, validated
/// together) one of whose entries is no longer RAM: the error is the first
/// walk's that reaches the entry, source side first, as a cold assist
/// gives, with no register changed and no device access. Every level of
/// both sides (the PML4 and PDPT pages are shared by the two walks, the
/// PD and PT pages are each side's own).
#[test]
fn a_pair_entry_no_longer_in_ram_is_the_walks_error() {
    for (name, bytes, mmio_is_src, access, gpa) in PAIR_FORMS {
        for (side, linear) in [("MMIO side", MMIO), ("stack side", STACK)] {
            for level in 1..=4 {
                let what = format!("{name}: {side} level {level}");
                let mut g = pair_guest();
                let exit = MemExit {
                    gpa,
                    access,
                    instruction: bytes,
                };
                let mut cache = FetchCache::new();
                let start = g.regs.clone();
                for _ in 0..2 {
                    g.regs = start.clone();
                    let r =
                        assist_mem_cached(&mut g.regs, &mut g.ram, &mut g.mmio, &exit, &mut cache);
                    assert_eq!(r, Ok(Outcome::Done), "{what}");
                }
                assert!(cache.data_hits() >= 2, "{what}: the pair is not cached");
                g.regs = start.clone();
                g.mmio.log.clear();
                let at = g.pt.entry_gpa(&mut g.ram, linear, level);
                let hole = page_of(at);
                g.ram.holes.push(hole);
                // The walks in order: the source's entries, then the
                // destination's; the first in the hole decides.
                let (src, dst) = if mmio_is_src {
                    (MMIO, if name == "movsq" { STACK } else { STACK - 8 })
                } else {
                    (STACK, MMIO)
                };
                let mut walked = Vec::new();
                for l in (1..=4).rev() {
                    walked.push(g.pt.entry_gpa(&mut g.ram, src & !0xFFF, l));
                }
                for l in (1..=4).rev() {
                    walked.push(g.pt.entry_gpa(&mut g.ram, dst & !0xFFF, l));
                }
                let first = walked
                    .into_iter()
                    .find(|&e| page_of(e) == hole)
                    .expect("an entry in the hole");
                let expected = Err(Error::PageTableNotRam { gpa: first });
                let (mut regs, mut ram, mut mmio) = (g.regs.clone(), g.ram.clone(), g.mmio.clone());
                let cold = assist_mem(&mut regs, &mut ram, &mut mmio, &exit);
                assert_eq!(cold, expected, "{what}: cold");
                let writes = g.ram.writes;
                let r = assist_mem_cached(&mut g.regs, &mut g.ram, &mut g.mmio, &exit, &mut cache);
                assert_eq!(r, expected, "{what}: cached");
                assert_eq!(g.regs, start, "{what}: registers changed");
                assert!(g.mmio.log.is_empty(), "{what}: MMIO access");
                assert_eq!(g.ram.writes, writes, "{what}: RAM written");
            }
        }
    }
}

// ---- page tables in ROM -----------------------------------------------

/// RAM whose range `rom` reads as RAM but is not writable: its
/// `compare_and_write` (and `write`) say not RAM, as a read-only memory
/// slot's would.
#[derive(Debug, Clone)]
struct Rom {
    inner: TestRam,
    rom: (u64, u64),
    /// Calls of any kind after the first failed `compare_and_write`.
    after: usize,
    failed: bool,
}

impl Rom {
    fn in_rom(&self, gpa: u64) -> bool {
        gpa >= self.rom.0 && gpa < self.rom.1
    }
}

impl GuestRam for Rom {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        self.after += usize::from(self.failed);
        self.inner.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        self.after += usize::from(self.failed);
        if self.in_rom(gpa) {
            return Ok(RamStatus::NotRam);
        }
        self.inner.write(gpa, data)
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError> {
        self.after += usize::from(self.failed);
        if self.in_rom(gpa) {
            self.failed = true;
            return Ok(CompareWrite::NotRam);
        }
        self.inner.compare_and_write(gpa, expected, new)
    }
}

/// Paging structures in ROM with their accessed bits clear: the walk reads
/// them, but its accessed-bit update (a compare-and-write, which the CPU
/// makes as a locked update of the entry: Intel SDM Vol. 3A, "Accessed
/// and Dirty Flags" in the paging chapter) is refused as not RAM. The assist reports
/// `PageTableNotRam` for the first entry it had to update (the crate's
/// contract for a paging structure outside writable RAM), makes no other
/// access after it, and changes no register: for `translate` and for the
/// fetch of an exit without bytes, cached or not (an exit with bytes: the
/// PUSH m test below).
#[test]
fn page_tables_in_rom_fail_the_accessed_bit_update() {
    for layout in LAYOUTS {
        for level in 1..=levels(layout) {
            let what = format!("{layout:?} level {level}");
            let mut s = fetching(layout);
            // Clear every accessed bit (the builder sets none, but be
            // explicit), then make the level's table page ROM.
            for l in 1..=levels(layout) {
                let e = s.pt.entry_gpa(&mut s.ram, CODE, l);
                s.pt.modify(&mut s.ram, e, 0, pte::A);
            }
            let at = s.pt.entry_gpa(&mut s.ram, CODE, level);
            // A PAE PDPTE has no accessed bit (Intel SDM Vol. 3A, "PDPTE
            // Registers"): the PDPT in ROM is fine.
            let pae_pdpt = layout == Layout::Pae && level == 3;
            let mut ram = Rom {
                inner: s.ram.clone(),
                rom: page_of(at),
                after: 0,
                failed: false,
            };
            // The first entry of the walk in the ROM page that needs its A
            // bit (the table pages hold one level each).
            let expected = if pae_pdpt {
                Ok(CODE_PAGE)
            } else {
                Err(Error::PageTableNotRam { gpa: at })
            };
            let r = translate(&s.regs, &mut ram, CODE, AccessType::Read);
            assert_eq!(r, expected, "{what}: translate");
            assert_eq!(ram.after, 0, "{what}: an access after the failure");
            if pae_pdpt {
                continue;
            }
            // The fetch of an exit without bytes walks the same way.
            let mut ram = Rom {
                inner: s.ram.clone(),
                rom: page_of(at),
                after: 0,
                failed: false,
            };
            let before = s.regs.clone();
            let mut cache = FetchCache::new();
            let r = assist_mem_cached(&mut s.regs, &mut ram, &mut s.mmio, &FETCH_EXIT, &mut cache);
            assert_eq!(r, Err(Error::PageTableNotRam { gpa: at }), "{what}: fetch");
            assert_eq!(s.regs, before, "{what}: registers changed");
            assert!(s.mmio.log.is_empty(), "{what}: MMIO access");
            assert_eq!(ram.after, 0, "{what}: an access after the failure");
            let r = assist_mem(&mut s.regs, &mut ram, &mut s.mmio, &FETCH_EXIT);
            assert_eq!(
                r,
                Err(Error::PageTableNotRam { gpa: at }),
                "{what}: uncached"
            );
        }
    }
}

/// The dirty-bit update of a write to a page whose PTE is in ROM (its A
/// bit already set, D clear): `PageTableNotRam` for the PTE, through a
/// PUSH m whose stack slot the assist translates, nothing changed and no
/// MMIO read made (the translations come before the operand's read).
#[test]
fn a_dirty_bit_update_in_rom_fails_the_push() {
    let mut g = pair_guest();
    let pte_at = g.pt.entry_gpa(&mut g.ram, STACK, 1);
    g.pt.modify(&mut g.ram, pte_at, pte::A, pte::D);
    let mut ram = Rom {
        inner: g.ram.clone(),
        rom: page_of(pte_at),
        after: 0,
        failed: false,
    };
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Read,
        instruction: &[0xFF, 0x33],
    };
    let before = g.regs.clone();
    for cached in [false, true] {
        let r = if cached {
            let mut cache = FetchCache::new();
            assist_mem_cached(&mut g.regs, &mut ram, &mut g.mmio, &exit, &mut cache)
        } else {
            assist_mem(&mut g.regs, &mut ram, &mut g.mmio, &exit)
        };
        assert_eq!(
            r,
            Err(Error::PageTableNotRam { gpa: pte_at }),
            "cached {cached}"
        );
        assert_eq!(g.regs, before);
        assert!(g.mmio.log.is_empty());
        assert_eq!(ram.after, 0, "an access after the failure");
        ram.failed = false;
    }
}

// ---- locked read-modify-write over RAM and MMIO -----------------------

/// `Guest::long64` with the accessed and dirty bits of the pages
/// 0x0000-0x2FFF's entries already set, so that the walks make no
/// compare-and-write of their own (the tests count the instruction's).
fn settled_long64() -> Guest {
    let mut g = Guest::long64();
    let pt = PageTables::new(Layout::Level4, PT_ROOT);
    let mut probe = pt.clone();
    for page in [0u64, 0x1000, 0x2000] {
        for level in 1..=4 {
            let at = probe.entry_gpa(&mut g.ram, page, level);
            pt.modify(&mut g.ram, at, pte::A | pte::D, 0);
        }
    }
    g
}

/// `lock add dword [rbx], eax`.
const LOCK_ADD: [u8; 3] = [0xF0, 0x01, 0x03];
/// `lock xadd dword [rbx], eax`.
const LOCK_XADD: [u8; 4] = [0xF0, 0x0F, 0xC1, 0x03];

/// A locked ADD whose dword straddles a RAM page and the MMIO page after
/// it (0xFFE..0x1002): the RAM half is compare-and-written, the MMIO half
/// read and written; with the RAM half changed by another writer between
/// the read and the compare (a mismatch on the first fragment, before any
/// write), the instruction is redone from a fresh read and the result is
/// the sum of what memory held after that writer. (A split lock is one
/// atomic access for the CPU, Intel SDM Vol. 3A, "Software Controlled Bus
/// Locking".)
#[test]
fn a_locked_add_split_over_ram_then_mmio() {
    for race in [false, true] {
        let mut g = settled_long64();
        g.ram.put(0xFFE, &[0xFF, 0xFF]);
        g.mmio.low.put(MMIO, &[0x01, 0x00]);
        g.regs.gprs[3] = 0xFFE;
        g.regs.gprs[0] = 0x0000_0003;
        if race {
            // The other writer stores 0xFFFE before our compare.
            g.ram.cas_interference.push((0xFFE, vec![0xFE, 0xFF]));
        }
        let r = g.exec(&LOCK_ADD, MMIO);
        assert_eq!(r, Ok(Outcome::Done), "race {race}");
        // 0x0001_FFFF + 3 = 0x0002_0002; after the race 0x0001_FFFE + 3 =
        // 0x0002_0001.
        let low = if race { 0x01 } else { 0x02 };
        assert_eq!(g.ram.get(0xFFE, 2), &[low, 0x00], "race {race}");
        assert_eq!(&g.mmio.low.mem[..2], &[0x02, 0x00], "race {race}");
        let cas: Vec<_> = g.ram.cas_log.iter().map(|c| c.2).collect();
        if race {
            assert_eq!(
                cas,
                [
                    CompareWrite::Mismatch,
                    CompareWrite::Written,
                    CompareWrite::NotRam
                ]
            );
        } else {
            assert_eq!(cas, [CompareWrite::Written, CompareWrite::NotRam]);
        }
        // The MMIO half: read once (the retry reads the RAM half again
        // and keeps the device's bytes: the instruction reads it once),
        // written once, by the attempt that succeeded.
        assert_eq!(g.mmio.low.counts(), (1, 1), "race {race}");
        assert_eq!(
            g.mmio.low.log.last(),
            Some(&BusAccess {
                write: true,
                addr: MMIO,
                data: vec![0x02, 0x00],
            })
        );
        assert_eq!(g.regs.rip, 0x2000 + 3);
    }
}

/// A locked ADD whose dword straddles two RAM pages (0x3FFE..0x4002; an
/// exit that names RAM, which the assist still completes on RAM), with
/// the second page's half changed by another writer after the first half
/// was compare-and-written: the first half is put back before the retry,
/// so the retry adds once to what memory held after that writer (0x0001
/// in the upper half): 0x0001_FFFF + 3 = 0x0002_0002. (Left written, the
/// retry would have read its own 0x0002 and given 0x0001_0005.)
#[test]
fn a_locked_add_split_over_two_ram_pages_puts_the_first_half_back() {
    let mut g = settled_long64();
    let pt = PageTables::new(Layout::Level4, PT_ROOT);
    let mut probe = pt.clone();
    for page in [0x3000u64, 0x4000] {
        for level in 1..=4 {
            let at = probe.entry_gpa(&mut g.ram, page, level);
            pt.modify(&mut g.ram, at, pte::A | pte::D, 0);
        }
    }
    g.ram.put(0x3FFE, &[0xFF, 0xFF, 0x00, 0x00]);
    g.regs.gprs[3] = 0x3FFE;
    g.regs.gprs[0] = 3;
    // Before the first compare: nothing (the same bytes); before the
    // second: the other writer's 0x0001 in the upper half.
    g.ram.cas_interference.push((0x3FFE, vec![0xFF, 0xFF]));
    g.ram.cas_interference.push((0x4000, vec![0x01, 0x00]));
    let r = g.exec(&LOCK_ADD, 0x3FFE);
    assert_eq!(r, Ok(Outcome::Done));
    assert_eq!(g.ram.get(0x3FFE, 4), &[0x02, 0x00, 0x02, 0x00]);
    let cas: Vec<_> = g.ram.cas_log.iter().map(|c| (c.0, c.2)).collect();
    assert_eq!(
        cas,
        [
            (0x3FFE, CompareWrite::Written),
            (0x4000, CompareWrite::Mismatch),
            (0x3FFE, CompareWrite::Written),
            (0x3FFE, CompareWrite::Written),
            (0x4000, CompareWrite::Written),
        ],
        "written, mismatch, put back, then the retry"
    );
    assert_eq!(g.mmio.total_accesses(), 0);
}

/// A locked XADD whose dword straddles the MMIO page and the RAM page
/// after it (0x1FFE..0x2002), with the RAM half changed by another writer
/// between the read and the compare. A locked XADD is one atomic access
/// (Intel SDM Vol. 3A, "Software Controlled Bus Locking"; the SDM's XADD:
/// "TEMP := SRC + DEST; SRC := DEST; DEST := TEMP"): the other writer's
/// store comes before it or after it, so the MMIO half is 0x0001 + 0x10 =
/// 0x0011 and EAX gets 0x0001 in its low half. The device write waits
/// until the RAM half's compare-and-write succeeded, and the retry keeps
/// the device's first read: the addition is applied once, the device read
/// once and written once. (This found a bug: the MMIO half used to be
/// written first, and the retry read it back, adding twice.)
#[test]
fn a_locked_xadd_split_over_mmio_then_ram_retries_once_on_the_device() {
    let mut g = settled_long64();
    g.mmio.low.put(0x1FFE, &[0x01, 0x00]);
    g.ram.put(0x2000, &[0x00, 0x00]);
    g.regs.gprs[3] = 0x1FFE;
    g.regs.gprs[0] = 0x10;
    // The other writer stores 0x1122 into the RAM half before our
    // compare.
    g.ram.cas_interference.push((0x2000, vec![0x22, 0x11]));
    let r = g.exec(&LOCK_XADD, 0x1FFE);
    assert_eq!(r, Ok(Outcome::Done));
    assert_eq!(
        &g.mmio.low.mem[0xFFE..],
        &[0x11, 0x00],
        "MMIO half: the addition applied once"
    );
    assert_eq!(g.regs.gprs[0] & 0xFFFF, 0x0001, "XADD's old value");
    // The RAM half: the other writer's 0x1122 plus the carry-free upper
    // half of 0x10 (0), so unchanged; XADD returns it in EAX[31:16].
    assert_eq!(g.ram.get(0x2000, 2), &[0x22, 0x11]);
    assert_eq!(g.regs.gprs[0], 0x1122_0001);
    assert_eq!(g.mmio.low.counts(), (1, 1), "one device read, one write");
}

// ---- instruction bytes ------------------------------------------------

/// An exit carrying more than 15 instruction bytes whose instruction is
/// longer than 15 bytes (a hostile or broken exit: SVM gives 15 at most):
/// the fast path declines them (it takes three prefixes at most, which
/// keeps its longest form within 15 bytes) and the general decoder, which
/// reads the first 15, reports the instruction too long: `#GP(0)` (Intel
/// SDM Vol. 3A, "Interrupt 13—General Protection Exception": "exceeding
/// the instruction length limit of 15 bytes"), no register changed, no
/// MMIO access.
#[test]
fn an_instruction_over_15_bytes_in_the_exit_is_gp0() {
    let mut moffs = vec![0x66; 7];
    // mov ax, [moffs64 = 0x1000]: 7 + 1 + 8 = 16 bytes.
    moffs.extend_from_slice(&[0xA1, 0x00, 0x10, 0, 0, 0, 0, 0, 0]);
    // add dword [rsp + 0x1000], imm32 behind six DS prefixes: 17 bytes.
    let mut alu = vec![0x3E; 6];
    alu.extend_from_slice(&[0x81, 0x84, 0x24, 0x00, 0x10, 0, 0, 0x78, 0x56, 0x34, 0x12]);
    // mov [rbx+disp32], imm32 behind six prefixes: 17 bytes.
    let mut mov = vec![0x3E; 6];
    mov.extend_from_slice(&[0xC7, 0x83, 0, 0, 0, 0, 0x78, 0x56, 0x34, 0x12, 0x00]);
    for bytes in [moffs, alu, mov] {
        let mut g = Guest::long64();
        g.regs.gprs[3] = MMIO; // rbx
        g.regs.gprs[4] = 0; // rsp
        let before = g.regs.clone();
        let r = g.exec(&bytes, MMIO);
        assert_eq!(
            r,
            Err(Error::Exception(Exception::GeneralProtection(0))),
            "{bytes:02x?}"
        );
        assert_eq!(g.regs, before);
        assert_eq!(g.mmio.total_accesses(), 0);
    }
}

/// An exit that carries only the bytes before a page edge (SVM's
/// DecodeAssists stop the fetch early; AMD APM Vol. 2, "Decode Assists"
/// in the SVM chapter): the assist fetches the rest, up to the page edge first and
/// then across it, and the result is the same as with all the bytes or
/// none. `mov [rbx + disp32], eax` starting 3 bytes before a page end,
/// the exit carrying 1 or 2 of its 6 bytes.
#[test]
fn an_exit_with_the_bytes_before_a_page_edge_fetches_the_rest() {
    const INSN: [u8; 6] = [0x89, 0x83, 0x10, 0x00, 0x00, 0x00];
    let rip = 0x2FFD;
    let mut results = Vec::new();
    for given in [0, 1, 2, 6] {
        let mut g = Guest::long64();
        g.regs.rip = rip;
        g.regs.gprs[3] = MMIO;
        g.regs.gprs[0] = 0xAABB_CCDD;
        g.ram.put(rip, &INSN);
        let exit = MemExit {
            gpa: MMIO + 0x10,
            access: AccessType::Write,
            instruction: &INSN[..given],
        };
        let r = assist_mem(&mut g.regs, &mut g.ram, &mut g.mmio, &exit);
        assert_eq!(r, Ok(Outcome::Done), "{given} bytes");
        assert_eq!(g.regs.rip, rip + 6, "{given} bytes");
        assert_eq!(g.mmio.low.u64_at(MMIO + 0x10) as u32, 0xAABB_CCDD);
        results.push((g.regs, g.mmio.low.log));
    }
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
}

// ---- port I/O ----------------------------------------------------------

/// `assist_io_cached` on a plain IN/OUT (not a string instruction): the
/// cache is not needed and not touched, and the result is `assist_io`'s:
/// OUT writes AL/AX/EAX, IN loads them (a 32-bit IN zero-extends into RAX
/// in 64-bit mode, a narrower one keeps the upper bits: Intel SDM Vol. 2A,
/// IN), RIP goes to `npc`; a failing device changes nothing.
#[test]
fn a_plain_in_or_out_through_the_cached_entry() {
    use crate::support::dyn_assist::assist_io_cached;
    for (input, size, fail) in [
        (false, 1u8, false),
        (false, 4, false),
        (true, 1, false),
        (true, 2, false),
        (true, 4, false),
        (true, 4, true),
        (false, 2, true),
    ] {
        let what = format!("input {input} size {size} fail {fail}");
        let exit = IoExit {
            port: 0x60,
            input,
            operand_size: size,
            address_size: 8,
            rep: false,
            string: false,
            segment: None,
            npc: 0x1002,
        };
        let mut results = Vec::new();
        for cached in [false, true] {
            let mut regs = Registers::long_mode(TEST_VENDOR, 0x8_0000, 0x1000, 0);
            regs.gprs[0] = 0xFFFF_FFFF_8765_4321;
            let mut ram = TestRam::new(0x1000);
            let mut ports = RecordingPorts::with_input(&[0xA1, 0xB2, 0xC3, 0xD4]);
            if fail {
                ports.fail_at = Some(0);
            }
            let mut mmio = RecordingMmio::default();
            let mut cache = FetchCache::new();
            let before = regs.clone();
            let r = if cached {
                assist_io_cached(
                    &mut regs, &mut ram, &mut mmio, &mut ports, &exit, &mut cache,
                )
            } else {
                assist_io(&mut regs, &mut ram, &mut mmio, &mut ports, &exit)
            };
            if fail {
                assert_eq!(r, Err(Error::Bus(BusError(9))), "{what}");
                assert_eq!(regs, before, "{what}");
            } else {
                assert_eq!(r, Ok(Outcome::Done), "{what}");
                assert_eq!(regs.rip, 0x1002, "{what}");
            }
            assert_eq!(ram.reads + ram.writes, 0, "{what}: RAM touched");
            assert_eq!((cache.misses(), cache.data_misses()), (0, 0), "{what}");
            results.push((r, regs, ports.log));
        }
        assert_eq!(results[0], results[1], "{what}");
        if !fail {
            let rax = results[0].1.gprs[0];
            let want = match (input, size) {
                (false, _) => 0xFFFF_FFFF_8765_4321,
                (true, 1) => 0xFFFF_FFFF_8765_43A1,
                (true, 2) => 0xFFFF_FFFF_8765_B2A1,
                _ => 0xD4C3_B2A1,
            };
            assert_eq!(rax, want, "{what}");
        }
    }
}

// ---- string port I/O ----------------------------------------------------

/// `rep outsb` with an SS override, the exit not naming the segment (the
/// assist reads the prefixes at CS:RIP): the bytes come from SS:SI, not
/// DS:SI (Intel SDM Vol. 2B, OUTS: "the DS segment may be overridden with a
/// segment override prefix").
#[test]
fn outs_with_an_ss_override_and_no_exit_segment_reads_ss() {
    for (prefix, seg) in [
        (0x36u8, Segment::Ss),
        (0x26, Segment::Es),
        (0x2E, Segment::Cs),
        (0x64, Segment::Fs),
        (0x65, Segment::Gs),
        (0x3E, Segment::Ds),
    ] {
        let mut regs = Registers::real_mode(TEST_VENDOR);
        let mut ram = TestRam::new(0x10_0000);
        regs.rip = 0x100;
        ram.put(0x100, &[prefix, 0xF3, 0x6E]);
        // Each segment's base 0x1000 * (index + 1); data "seg N".
        for s in [
            Segment::Es,
            Segment::Cs,
            Segment::Ss,
            Segment::Ds,
            Segment::Fs,
            Segment::Gs,
        ] {
            let r = &mut regs.segments[s as usize];
            r.selector = 0x100 * (s as u16 + 1);
            r.base = 0x1000 * (s as u64 + 1);
            if s != Segment::Cs {
                ram.put(r.base + 0x20, &[s as u8 + 0x40; 3]);
            }
        }
        // CS's base moves the code too.
        let cs_base = regs.segments[Segment::Cs as usize].base;
        ram.put(cs_base + 0x100, &[prefix, 0xF3, 0x6E]);
        if seg == Segment::Cs {
            ram.put(cs_base + 0x20, &[0x77; 3]);
        }
        regs.gprs[6] = 0x20; // si
        regs.gprs[1] = 3; // cx
        regs.gprs[2] = 0x3F8; // dx
        let mut ports = RecordingPorts::default();
        let exit = IoExit {
            port: 0x3F8,
            input: false,
            operand_size: 1,
            address_size: 2,
            rep: true,
            string: true,
            segment: None,
            npc: 0x103,
        };
        let r = assist_io(
            &mut regs,
            &mut ram,
            &mut RecordingMmio::default(),
            &mut ports,
            &exit,
        );
        assert_eq!(r, Ok(Outcome::Done), "{seg:?}");
        let want = if seg == Segment::Cs {
            0x77
        } else {
            seg as u8 + 0x40
        };
        assert_eq!(ports.output, [want; 3], "{seg:?}");
        assert_eq!((regs.gprs[6], regs.gprs[1], regs.rip), (0x23, 0, 0x103));
    }
}

/// An OUTS exit without segment information whose instruction at CS:RIP is
/// fifteen prefixes and no opcode: the CPU cannot have exited on it (it
/// raises `#GP(0)` for the length), so the exit is inconsistent; no
/// register changed, no port access.
#[test]
fn outs_behind_fifteen_prefixes_is_an_inconsistent_exit() {
    let mut regs = Registers::real_mode(TEST_VENDOR);
    let mut ram = TestRam::new(0x10_0000);
    regs.rip = 0x100;
    ram.put(0x100, &[0x3E; 16]);
    regs.gprs[1] = 3;
    let before = regs.clone();
    let mut ports = RecordingPorts::default();
    let exit = IoExit {
        port: 0x3F8,
        input: false,
        operand_size: 1,
        address_size: 2,
        rep: true,
        string: true,
        segment: None,
        npc: 0x110,
    };
    let r = assist_io(
        &mut regs,
        &mut ram,
        &mut RecordingMmio::default(),
        &mut ports,
        &exit,
    );
    assert_eq!(r, Err(Error::InconsistentExit));
    assert_eq!(regs, before);
    assert!(ports.log.is_empty());
}

/// `rep outsb` going down (DF = 1) through an expand-down data segment
/// whose limit cuts the batch: the elements above the limit are output
/// (Outcome::Resume with RSI and RCX at the first one that faults), and
/// the next call faults on that element with `#GP(0)` (a DS limit
/// violation; Intel SDM Vol. 3A, "Limit Checking", expand-down
/// segments: valid offsets are limit + 1 up to 0xFFFFFFFF with B set),
/// changing nothing.
#[test]
fn a_backwards_outs_batch_cut_by_an_expand_down_limit() {
    let mut regs = Registers::flat_protected32(TEST_VENDOR);
    let mut ram = TestRam::new(0x10_0000);
    let ds = &mut regs.segments[Segment::Ds as usize];
    // Expand-down, writable, accessed; B = 1 (upper bound 4 GiB).
    ds.attributes = SegmentAttributes::data32().with_type(0x7);
    ds.limit = 0x1003;
    ram.put(0x1000, &[0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7]);
    regs.rflags |= bits::RFLAGS_DF;
    regs.gprs[6] = 0x1007; // esi
    regs.gprs[1] = 100; // ecx
    regs.rip = 0x500;
    let mut ports = RecordingPorts::default();
    let exit = IoExit {
        port: 0x80,
        input: false,
        operand_size: 1,
        address_size: 4,
        rep: true,
        string: true,
        segment: Some(Segment::Ds),
        npc: 0x502,
    };
    let mut mmio = RecordingMmio::default();
    let r = assist_io(&mut regs, &mut ram, &mut mmio, &mut ports, &exit);
    assert_eq!(r, Ok(Outcome::Resume));
    assert_eq!(ports.output, [0xA7, 0xA6, 0xA5, 0xA4]);
    assert_eq!((regs.gprs[6], regs.gprs[1], regs.rip), (0x1003, 96, 0x500));
    let before = regs.clone();
    let r = assist_io(&mut regs, &mut ram, &mut mmio, &mut ports, &exit);
    assert_eq!(r, Err(Error::Exception(Exception::GeneralProtection(0))));
    assert_eq!(regs, before);
    assert_eq!(ports.log.len(), 4);
}

// ---- the buses' `&mut T` forwarding -----------------------------------

/// RAM, MMIO and port buses whose calls are answered by a fixed rule and
/// counted, to check that `&mut T` forwards each method (the batch and
/// the `check_entries` / `read_aligned_u64` overrides included) to `T`'s
/// own implementation, not to the trait's default.
#[derive(Default)]
struct Marked {
    calls: Vec<&'static str>,
}

impl GuestRam for Marked {
    fn read(&mut self, _: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        self.calls.push("ram read");
        buf.fill(0x5A);
        Ok(RamStatus::Done)
    }
    fn write(&mut self, _: u64, _: &[u8]) -> Result<RamStatus, BusError> {
        self.calls.push("ram write");
        Ok(RamStatus::NotRam)
    }
    fn read_aligned_u64(&mut self, _: u64) -> Result<Option<u64>, BusError> {
        self.calls.push("ram read_aligned_u64");
        Ok(Some(7))
    }
    fn check_entries(&mut self, _: &[(u64, u64)], _: bool) -> Result<EntryCheck, BusError> {
        self.calls.push("ram check_entries");
        Ok(EntryCheck::Changed { index: 1 })
    }
    fn compare_and_write(&mut self, _: u64, _: &[u8], _: &[u8]) -> Result<CompareWrite, BusError> {
        self.calls.push("ram compare_and_write");
        Ok(CompareWrite::Mismatch)
    }
}

impl MmioBus for Marked {
    fn read(&mut self, _: u64, buf: &mut [u8]) -> Result<(), BusError> {
        self.calls.push("mmio read");
        buf.fill(0x6B);
        Ok(())
    }
    fn write(&mut self, _: u64, _: &[u8]) -> Result<(), BusError> {
        self.calls.push("mmio write");
        Err(BusError(3))
    }
    fn write_batch(
        &mut self,
        _: u64,
        _: usize,
        _: bool,
        _: &[u8],
    ) -> Option<Result<(), PartialBatch>> {
        self.calls.push("mmio write_batch");
        Some(Ok(()))
    }
}

impl PortIo for Marked {
    fn read(&mut self, _: u16, buf: &mut [u8]) -> Result<(), BusError> {
        self.calls.push("port read");
        buf.fill(0x7C);
        Ok(())
    }
    fn write(&mut self, _: u16, _: &[u8]) -> Result<(), BusError> {
        self.calls.push("port write");
        Ok(())
    }
    fn read_batch(&mut self, _: u16, _: usize, _: &mut [u8]) -> Result<(), PartialBatch> {
        self.calls.push("port read_batch");
        Err(PartialBatch {
            done: 1,
            error: BusError(4),
        })
    }
    fn write_batch(&mut self, _: u16, _: usize, _: &[u8]) -> Result<(), PartialBatch> {
        self.calls.push("port write_batch");
        Ok(())
    }
}

#[test]
fn mut_references_forward_every_bus_method() {
    let mut m = Marked::default();
    let mut buf = [0u8; 4];
    {
        let mut r: &mut Marked = &mut m;
        assert_eq!(
            <&mut Marked as GuestRam>::read(&mut r, 0, &mut buf),
            Ok(RamStatus::Done)
        );
        assert_eq!(buf, [0x5A; 4]);
        assert_eq!(
            <&mut Marked as GuestRam>::write(&mut r, 0, &buf),
            Ok(RamStatus::NotRam)
        );
        assert_eq!(
            <&mut Marked as GuestRam>::read_aligned_u64(&mut r, 8),
            Ok(Some(7))
        );
        assert_eq!(
            <&mut Marked as GuestRam>::check_entries(&mut r, &[(0, 0)], true),
            Ok(EntryCheck::Changed { index: 1 })
        );
        assert_eq!(
            <&mut Marked as GuestRam>::compare_and_write(&mut r, 0, &[0], &[1]),
            Ok(CompareWrite::Mismatch)
        );
        assert_eq!(<&mut Marked as MmioBus>::read(&mut r, 0, &mut buf), Ok(()));
        assert_eq!(buf, [0x6B; 4]);
        assert_eq!(
            <&mut Marked as MmioBus>::write(&mut r, 0, &buf),
            Err(BusError(3))
        );
        assert_eq!(
            <&mut Marked as MmioBus>::write_batch(&mut r, 0, 1, false, &buf),
            Some(Ok(()))
        );
        assert_eq!(<&mut Marked as PortIo>::read(&mut r, 0, &mut buf), Ok(()));
        assert_eq!(buf, [0x7C; 4]);
        assert_eq!(<&mut Marked as PortIo>::write(&mut r, 0, &buf), Ok(()));
        assert_eq!(
            <&mut Marked as PortIo>::read_batch(&mut r, 0, 1, &mut buf),
            Err(PartialBatch {
                done: 1,
                error: BusError(4)
            })
        );
        assert_eq!(
            <&mut Marked as PortIo>::write_batch(&mut r, 0, 1, &buf),
            Ok(())
        );
    }
    assert_eq!(
        m.calls,
        [
            "ram read",
            "ram write",
            "ram read_aligned_u64",
            "ram check_entries",
            "ram compare_and_write",
            "mmio read",
            "mmio write",
            "mmio write_batch",
            "port read",
            "port write",
            "port read_batch",
            "port write_batch",
        ]
    );
}

/// The same split locked XADD when every retry loses its race on the RAM
/// half: the assist returns `Resume`, documented as "nothing changed" (the
/// guest re-executes the instruction), and so the device was not written
/// (its write waits for the RAM half) and read once.
#[test]
fn a_split_locked_xadd_that_resumes_has_not_written_its_mmio_half() {
    let mut g = settled_long64();
    g.mmio.low.put(0x1FFE, &[0x01, 0x00]);
    g.regs.gprs[3] = 0x1FFE;
    g.regs.gprs[0] = 0x10;
    // Every compare of the RAM half fails.
    g.ram.cas_mismatches = 1000;
    let before = g.regs.clone();
    let r = g.exec(&LOCK_XADD, 0x1FFE);
    assert_eq!(r, Ok(Outcome::Resume));
    assert_eq!(g.regs, before);
    assert_eq!(
        g.mmio.low.counts(),
        (1, 0),
        "MMIO reads and writes before Resume"
    );
}

// ---- rust-vmm guest memory with unaligned regions ------------------------

/// `GuestRam` over a rust-vmm `GuestMemoryMmap` whose regions meet or start
/// off an 8-byte boundary (vm-memory allows any region size): an aligned
/// compare-and-write that spans two regions, or whose host address is not
/// aligned for an atomic access, takes the non-atomic fallback, with the
/// same results (written, mismatch with nothing written).
#[cfg(feature = "vm-memory")]
#[test]
fn vm_memory_compare_and_write_off_an_atomic_boundary() {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x1804),
        (GuestAddress(0x1804), 0x17FD),
        (GuestAddress(0x3001), 0x1000),
    ])
    .unwrap();
    // 8 bytes at 0x1800 span the regions meeting at 0x1804; 4 bytes at
    // 0x3008 are aligned in the guest but 7 bytes into a region whose host
    // mapping is page-aligned.
    for (gpa, len) in [(0x1800u64, 8usize), (0x3008, 4)] {
        let mut ram = &mem;
        let old = vec![0u8; len];
        let new = vec![0xA5u8; len];
        let other = vec![0x11u8; len];
        assert_eq!(
            GuestRam::compare_and_write(&mut ram, gpa, &old, &new),
            Ok(CompareWrite::Written),
            "{gpa:#x}"
        );
        let mut now = vec![0u8; len];
        mem.read_slice(&mut now, GuestAddress(gpa)).unwrap();
        assert_eq!(now, new, "{gpa:#x}");
        assert_eq!(
            GuestRam::compare_and_write(&mut ram, gpa, &old, &other),
            Ok(CompareWrite::Mismatch),
            "{gpa:#x}"
        );
        mem.read_slice(&mut now, GuestAddress(gpa)).unwrap();
        assert_eq!(now, new, "{gpa:#x}: written on a mismatch");
    }
}

// ---- REP MOVS with both sides in RAM ------------------------------------

/// A REP MOVSB whose exit names RAM (a stale or inconsistent exit: both
/// operands are RAM by the time the assist runs) still completes as the
/// instruction's iterations define it, one byte after the other (Intel SDM
/// Vol. 2, MOVS/REP: the operation is repeated element by element; fast
/// strings keep that result). With the destination one byte above the
/// source the copy replicates the first byte, which a block copy of the
/// batch would not; with disjoint buffers it is a plain copy. Backwards
/// (DF = 1) with the destination one byte below, the same replication
/// from the top.
#[test]
fn rep_movsb_between_overlapping_ram_buffers_runs_element_by_element() {
    const REP_MOVSB: [u8; 2] = [0xF3, 0xA4];
    let pattern: Vec<u8> = (1..=32).collect();
    // (rsi, rdi, df, the bytes expected at 0x3000..0x3020 afterwards)
    let forward_overlap = {
        let mut want = pattern.clone();
        want[1..=16].fill(pattern[0]);
        (0x3000u64, 0x3001u64, false, want)
    };
    let backward_overlap = {
        let mut want = pattern.clone();
        // Element k moves 0x301F - k to 0x301E - k: the top byte fills
        // 0x300F..=0x301E.
        want[15..=30].fill(pattern[31]);
        (0x301F, 0x301E, true, want)
    };
    let disjoint = {
        let mut want = pattern.clone();
        want.copy_within(0..16, 16);
        (0x3000, 0x3010, false, want)
    };
    for (rsi, rdi, df, want) in [forward_overlap, backward_overlap, disjoint] {
        let mut g = Guest::long64();
        g.ram.put(0x3000, &pattern);
        g.regs.gprs[6] = rsi;
        g.regs.gprs[7] = rdi;
        g.regs.gprs[1] = 16;
        if df {
            g.regs.rflags |= 1 << 10;
        }
        let mut outcome = g.exec(&REP_MOVSB, rdi);
        // A batch may stop early (Resume): run the rest as the guest would.
        for _ in 0..16 {
            if outcome != Ok(Outcome::Resume) {
                break;
            }
            outcome = g.exec(&REP_MOVSB, g.regs.gprs[7]);
        }
        assert_eq!(outcome, Ok(Outcome::Done), "{rsi:#x} -> {rdi:#x}");
        assert_eq!(g.ram.get(0x3000, 32), want, "{rsi:#x} -> {rdi:#x} df {df}");
        let step = if df { 16u64.wrapping_neg() } else { 16 };
        assert_eq!(g.regs.gprs[1], 0);
        assert_eq!(g.regs.gprs[6], rsi.wrapping_add(step));
        assert_eq!(g.regs.gprs[7], rdi.wrapping_add(step));
        assert_eq!(g.mmio.total_accesses(), 0);
    }
}
