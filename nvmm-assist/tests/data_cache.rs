//! The data translations of the per-VCPU `FetchCache` are exact: PUSH m,
//! POP m, MOVS and CMPS translate their operands through the page walker
//! (the stack slot and the RAM side are not at the exit's GPA), and with a
//! warm cache those translations come from it after re-validation. Between
//! two assists the guest rewrites an entry at any level, clears an
//! accessed or dirty bit, clears a present bit, changes CR3, CR0.WP,
//! CR4.SMAP, EFER.NXE, the CPL or RFLAGS.AC, or writes where it only read
//! before, and each assist through the warm cache must do exactly what the
//! same assist with a fresh cache (a full walk) does: same result, same
//! registers, same guest RAM (accessed/dirty bits included), same device
//! accesses. In 32-bit, PAE, 4-level and 5-level paging.

use crate::support;
use crate::support::dyn_assist::{assist_mem, assist_mem_cached};

use nvmm_assist::{
    AccessType, CpuState, Error, Exception, FetchCache, MemExit, Outcome, Registers, translate,
};
use support::{Layout, PageTables, RecordingMmio, TEST_VENDOR, TestRam, bits, pte};

/// Linear pages: code, the device, the stack and the RAM source.
const CODE: u64 = 0x40_0000;
const MMIO_LIN: u64 = 0x50_0000;
const STACK: u64 = 0x60_0000;
const SRC: u64 = 0x70_0000;
/// Guest-physical pages.
const MMIO: u64 = 0x1000;
const CODE_PAGE: u64 = 0x5000;
const STACK_PAGE: u64 = 0x7000;
const SRC_PAGE: u64 = 0x8000;
/// Where the other tree maps the stack and the source.
const STACK_PAGE_2: u64 = 0x9000;
const SRC_PAGE_2: u64 = 0xA000;
/// Offsets within the pages.
const DEV_OFF: u64 = 0x10;
const SP_OFF: u64 = 0x800;
const SI_OFF: u64 = 0x100;

const RSP: usize = 4;
const RSI: usize = 6;
const RDI: usize = 7;
const RBX: usize = 3;

/// The instructions, with the exit each one makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insn {
    /// `push [ebx/rbx]`: reads the device, writes the stack.
    Push,
    /// `pop [ebx/rbx]`: reads the stack, writes the device.
    Pop,
    /// `movsb`: reads the RAM source, writes the device.
    Movsb,
    /// `cmpsb`: reads the RAM source and the device.
    Cmpsb,
    /// `rep movsb` of 16 bytes: one batch, the source translated once.
    RepMovsb,
}

const ALL: [Insn; 4] = [Insn::Push, Insn::Pop, Insn::Movsb, Insn::Cmpsb];

impl Insn {
    fn bytes(self) -> &'static [u8] {
        match self {
            Insn::Push => &[0xFF, 0x33],
            Insn::Pop => &[0x8F, 0x03],
            Insn::Movsb => &[0xA4],
            Insn::Cmpsb => &[0xA6],
            Insn::RepMovsb => &[0xF3, 0xA4],
        }
    }

    fn access(self) -> AccessType {
        match self {
            Insn::Push | Insn::Cmpsb => AccessType::Read,
            Insn::Pop | Insn::Movsb | Insn::RepMovsb => AccessType::Write,
        }
    }
}

#[derive(Clone)]
struct Setup {
    layout: Layout,
    regs: Registers,
    ram: TestRam,
    mmio: RecordingMmio,
    pt: PageTables,
    other: PageTables,
    /// RSP before each instruction.
    sp: u64,
}

fn levels(layout: Layout) -> u32 {
    match layout {
        Layout::Bits32 => 2,
        Layout::Pae => 3,
        Layout::Level4 => 4,
        Layout::Level5 => 5,
    }
}

const LAYOUTS: [Layout; 4] = [Layout::Bits32, Layout::Pae, Layout::Level4, Layout::Level5];

fn setup(layout: Layout) -> Setup {
    let mut ram = TestRam::new(0x5_0000).hole(MMIO, MMIO + 0x1000);
    let mut pt = PageTables::new(layout, 0x10000);
    let mut other = PageTables::new(layout, 0x30000);
    for (t, stack, src) in [
        (&mut pt, STACK_PAGE, SRC_PAGE),
        (&mut other, STACK_PAGE_2, SRC_PAGE_2),
    ] {
        t.map(&mut ram, CODE, CODE_PAGE, 1, pte::PWU);
        t.map(&mut ram, MMIO_LIN, MMIO, 1, pte::PWU);
        t.map(&mut ram, STACK, stack, 1, pte::PWU);
        t.map(&mut ram, SRC, src, 1, pte::PWU);
        // The page below the stack, for page-crossing pushes and pops.
        t.map(&mut ram, STACK - 0x1000, src + 0x2000, 1, pte::PWU);
    }
    // Distinct contents, so that a wrong page shows in the results.
    for (page, seed) in [
        (STACK_PAGE, 0x11u8),
        (SRC_PAGE, 0x22),
        (STACK_PAGE_2, 0x33),
        (SRC_PAGE_2, 0x44),
    ] {
        let bytes: Vec<u8> = (0..4096u32).map(|i| seed ^ (i as u8)).collect();
        ram.put(page, &bytes);
    }
    let mut regs = match layout {
        Layout::Bits32 | Layout::Pae => {
            let mut r = Registers::flat_protected32(TEST_VENDOR);
            r.cr0 |= bits::CR0_PG;
            if layout == Layout::Pae {
                r.cr4 |= bits::CR4_PAE;
            }
            r
        }
        _ => {
            let mut r = Registers::long_mode(TEST_VENDOR, 0, 0, 0);
            if layout == Layout::Level5 {
                r.cr4 |= bits::CR4_LA57;
            }
            r
        }
    };
    regs.cr3 = pt.cr3();
    Setup {
        layout,
        regs,
        ram,
        mmio: RecordingMmio::default(),
        pt,
        other,
        sp: STACK + SP_OFF,
    }
}

type Snapshot = (Result<Outcome, Error>, Registers, Vec<u8>, RecordingMmio);

impl Setup {
    /// Puts the instruction's registers at their start values.
    fn prepare(&mut self, insn: Insn) {
        self.regs.rip = CODE;
        self.regs.gprs[RSP] = self.sp;
        self.regs.gprs[1] = 16; // RCX, for REP
        self.regs.gprs[RBX] = MMIO_LIN + DEV_OFF;
        self.regs.gprs[RSI] = SRC + SI_OFF;
        self.regs.gprs[RDI] = MMIO_LIN + DEV_OFF;
        self.ram.put(CODE_PAGE, insn.bytes());
    }

    fn exit(insn: Insn, fetch: bool) -> MemExit<'static> {
        MemExit {
            gpa: MMIO + DEV_OFF,
            access: insn.access(),
            instruction: if fetch { &[] } else { insn.bytes() },
        }
    }

    /// `insn` through `cache` on this setup, and the same on a copy with a
    /// fresh cache; asserts that both did the same and returns the result.
    fn step(&mut self, cache: &mut FetchCache, insn: Insn, fetch: bool, what: &str) -> Snapshot {
        self.prepare(insn);
        let exit = Setup::exit(insn, fetch);
        let mut cold = self.clone();
        let r_cold = assist_mem(&mut cold.regs, &mut cold.ram, &mut cold.mmio, &exit);
        let r = assist_mem_cached(&mut self.regs, &mut self.ram, &mut self.mmio, &exit, cache);
        let what = format!("{:?} {insn:?} (fetched: {fetch}) {what}", self.layout);
        assert_eq!(r, r_cold, "{what}: result");
        assert_eq!(self.regs, cold.regs, "{what}: registers");
        assert!(self.ram.mem == cold.ram.mem, "{what}: guest RAM differs");
        assert_eq!(self.mmio.log, cold.mmio.log, "{what}: device accesses");
        (
            r,
            self.regs.clone(),
            self.ram.mem.clone(),
            self.mmio.clone(),
        )
    }

    /// Every instruction, with the bytes and fetched, each compared with a
    /// cold assist.
    fn all(&mut self, cache: &mut FetchCache, what: &str) -> Vec<Result<Outcome, Error>> {
        let mut out = Vec::new();
        for fetch in [false, true] {
            for insn in ALL {
                out.push(self.step(cache, insn, fetch, what).0);
            }
        }
        out
    }

    /// A warm cache: every instruction twice, all succeeding, the second
    /// time with data translations served from the cache.
    fn warm(&mut self) -> FetchCache {
        let mut cache = FetchCache::new();
        for r in self.all(&mut cache, "warming") {
            assert_eq!(r, Ok(Outcome::Done), "{:?}: warming", self.layout);
        }
        let misses = cache.data_misses();
        let hits = cache.data_hits();
        for r in self.all(&mut cache, "warm") {
            assert_eq!(r, Ok(Outcome::Done), "{:?}: warm", self.layout);
        }
        assert_eq!(
            cache.data_misses(),
            misses,
            "{:?}: a warm cache walks",
            self.layout
        );
        assert!(cache.data_hits() > hits, "{:?}: cache unused", self.layout);
        cache
    }

    fn entry(&mut self, linear: u64, level: u32) -> u64 {
        self.pt.entry_gpa(&mut self.ram, linear, level)
    }
}

fn is_page_fault(r: &Result<Outcome, Error>) -> bool {
    matches!(r, Err(Error::Exception(Exception::PageFault { .. })))
}

/// An entry at any level of any walked page is replaced by the other
/// tree's (another page, same rights), without any exit or CR3 load.
#[test]
fn a_rewritten_entry_at_any_level_is_noticed() {
    for layout in LAYOUTS {
        for linear in [STACK, SRC, MMIO_LIN] {
            for level in 1..=levels(layout) {
                let mut s = setup(layout);
                let mut cache = s.warm();
                let at = s.entry(linear, level);
                let theirs = s.other.entry_gpa(&mut s.ram, linear, level);
                let value = s.other.get(&s.ram, theirs);
                s.pt.set(&mut s.ram, at, value);
                let what = format!("{linear:#x} level {level} rewritten");
                for r in s.all(&mut cache, &what) {
                    assert_eq!(r, Ok(Outcome::Done), "{layout:?} {what}");
                }
            }
        }
    }
}

/// A cleared accessed bit at any level, or the stack leaf's dirty bit:
/// the next assists walk and set them again, as a cold one does.
#[test]
fn cleared_accessed_and_dirty_bits_are_set_again() {
    for layout in LAYOUTS {
        for linear in [STACK, SRC, MMIO_LIN] {
            for level in 1..=levels(layout) {
                for bit in [pte::A, pte::D] {
                    if bit == pte::D && level != 1 {
                        continue;
                    }
                    let mut s = setup(layout);
                    let mut cache = s.warm();
                    let at = s.entry(linear, level);
                    let before = s.pt.get(&s.ram, at);
                    s.pt.modify(&mut s.ram, at, 0, bit);
                    let what = format!("{linear:#x} level {level} bit {bit:#x} cleared");
                    s.all(&mut cache, &what);
                    // The walks restored the bit (PAE PDPTEs have no
                    // accessed bit, and only written pages get D).
                    assert_eq!(s.pt.get(&s.ram, at), before, "{layout:?} {what}");
                }
            }
        }
    }
}

/// A not-present entry at any level: every assist through it faults as
/// a cold one does, and after it is present again they succeed.
#[test]
fn a_not_present_entry_is_noticed() {
    for layout in LAYOUTS {
        for linear in [STACK, SRC] {
            for level in 1..=levels(layout) {
                let mut s = setup(layout);
                let mut cache = s.warm();
                let at = s.entry(linear, level);
                s.pt.modify(&mut s.ram, at, 0, pte::P);
                let what = format!("{linear:#x} level {level} not present");
                let results = s.all(&mut cache, &what);
                assert!(results.iter().any(is_page_fault), "{layout:?} {what}");
                s.pt.modify(&mut s.ram, at, pte::P, 0);
                for r in s.all(&mut cache, "present again") {
                    assert_eq!(r, Ok(Outcome::Done), "{layout:?} {what}");
                }
            }
        }
    }
}

/// Rights taken away in an entry at any level: R/W (at CPL 3, or with
/// CR0.WP at CPL 0) and U/S (at CPL 3).
#[test]
fn rights_taken_away_are_noticed() {
    for layout in LAYOUTS {
        for level in 1..=levels(layout) {
            // PAE PDPTEs have no R/W or U/S.
            if layout == Layout::Pae && level == 3 {
                continue;
            }
            for (cpl, wp, bit) in [(3, false, pte::RW), (0, true, pte::RW), (3, false, pte::US)] {
                let mut s = setup(layout);
                s.regs = s.regs.clone().at_cpl(cpl);
                if wp {
                    s.regs.cr0 |= bits::CR0_WP;
                }
                let mut cache = s.warm();
                let at = s.entry(STACK, level);
                s.pt.modify(&mut s.ram, at, 0, bit);
                let what = format!("CPL {cpl} WP {wp} level {level} bit {bit:#x} cleared");
                let results = s.all(&mut cache, &what);
                assert!(results.iter().any(is_page_fault), "{layout:?} {what}");
            }
        }
    }
}

/// A write after a read-only cached translation of the same page: POP
/// (reads the stack) then PUSH (writes it). The write walks: it sets the
/// dirty bit, or faults on a read-only page, as a cold walk does.
#[test]
fn a_write_after_a_cached_read_walks() {
    for layout in LAYOUTS {
        for read_only in [false, true] {
            let mut s = setup(layout);
            s.regs = s.regs.clone().at_cpl(3);
            let leaf = s.entry(STACK, 1);
            if read_only {
                s.pt.modify(&mut s.ram, leaf, 0, pte::RW);
            }
            let mut cache = FetchCache::new();
            for _ in 0..3 {
                let r = s.step(&mut cache, Insn::Pop, false, "pop").0;
                assert_eq!(r, Ok(Outcome::Done), "{layout:?}");
            }
            assert_eq!(
                s.pt.get(&s.ram, leaf) & pte::D,
                0,
                "{layout:?}: D after reads"
            );
            let r = s.step(&mut cache, Insn::Push, false, "push").0;
            if read_only {
                assert!(is_page_fault(&r), "{layout:?}: {r:?}");
            } else {
                assert_eq!(r, Ok(Outcome::Done), "{layout:?}");
                assert_ne!(s.pt.get(&s.ram, leaf) & pte::D, 0, "{layout:?}: D not set");
            }
            // And a read after the write is served by the write's walk.
            let hits = cache.data_hits();
            let _ = s.step(&mut cache, Insn::Pop, false, "pop after push");
            if !read_only {
                assert!(cache.data_hits() > hits, "{layout:?}");
            }
        }
    }
}

/// Control-state changes with no entry change: each makes the assists
/// fault (or succeed) as a cold walk says.
#[test]
fn control_state_changes_are_noticed() {
    type Prep = fn(&mut Setup);
    let cases: [(&str, Prep, Prep); 7] = [
        ("CR3 load", |_| {}, |s| s.regs.cr3 = s.other.cr3()),
        (
            "CR0.WP set on a read-only stack",
            |s| {
                s.regs.cr0 &= !bits::CR0_WP;
                let leaf = s.entry(STACK, 1);
                s.pt.modify(&mut s.ram, leaf, 0, pte::RW);
            },
            |s| s.regs.cr0 |= bits::CR0_WP,
        ),
        (
            "CR4.SMAP set on user pages at CPL 0",
            |_| {},
            |s| s.regs.cr4 |= bits::CR4_SMAP,
        ),
        (
            "RFLAGS.AC cleared with SMAP",
            |s| {
                s.regs.cr4 |= bits::CR4_SMAP;
                s.regs.rflags |= bits::RFLAGS_AC;
            },
            |s| s.regs.rflags &= !bits::RFLAGS_AC,
        ),
        (
            "EFER.NXE cleared with XD in the stack leaf",
            |s| {
                s.regs.efer |= bits::EFER_NXE;
                if s.layout != Layout::Bits32 {
                    let leaf = s.entry(STACK, 1);
                    s.pt.modify(&mut s.ram, leaf, pte::XD, 0);
                }
            },
            |s| s.regs.efer &= !bits::EFER_NXE,
        ),
        (
            "CPL 3 on a supervisor stack",
            |s| {
                let leaf = s.entry(STACK, 1);
                s.pt.modify(&mut s.ram, leaf, 0, pte::US);
            },
            |s| s.regs = s.regs.clone().at_cpl(3),
        ),
        (
            "CPL 0 to 3 to 0",
            |_| {},
            |s| s.regs = s.regs.clone().at_cpl(3).at_cpl(0),
        ),
    ];
    for layout in LAYOUTS {
        for (what, before, after) in cases {
            let mut s = setup(layout);
            before(&mut s);
            let mut cache = s.warm();
            after(&mut s);
            let results = s.all(&mut cache, what);
            let faults = results.iter().any(is_page_fault);
            // Those that must fault do (NXE only matters with 64-bit
            // entries; a CR3 load leads to the other pages, same rights).
            let expect_fault = match what {
                "CR3 load" | "CPL 0 to 3 to 0" => false,
                "EFER.NXE cleared with XD in the stack leaf" => layout != Layout::Bits32,
                _ => true,
            };
            assert_eq!(faults, expect_fault, "{layout:?} {what}: {results:?}");
            // And changed back (where it can be), the cache serves again.
            let mut t = setup(layout);
            before(&mut t);
            t.ram = s.ram.clone();
            t.mmio = s.mmio.clone();
            s = t;
            for r in s.all(&mut cache, "changed back") {
                assert_eq!(r, Ok(Outcome::Done), "{layout:?} {what}: changed back");
            }
        }
    }
}

/// `FetchCache::translate_data` against `translate`, directly: the same
/// address, error and RAM for reads and writes of each page, cold and warm,
/// with the leaf toggled between writable and read-only under CR0.WP.
#[test]
fn translate_data_matches_translate() {
    for layout in LAYOUTS {
        let mut s = setup(layout);
        s.regs.cr0 |= bits::CR0_WP;
        let mut cache = FetchCache::new();
        let leaf = s.entry(SRC, 1);
        for round in 0..12 {
            if round % 3 == 2 {
                s.pt.modify(&mut s.ram, leaf, 0, pte::RW | pte::D);
            } else if round % 3 == 0 {
                s.pt.modify(&mut s.ram, leaf, pte::RW, 0);
            }
            let cases = [STACK + 8, SRC + 0xFFF, 0x123_4000]
                .into_iter()
                .flat_map(|l| [(l, AccessType::Read), (l, AccessType::Write)])
                .chain([(CODE + 3, AccessType::Execute)]);
            for (linear, access) in cases {
                {
                    let mut cold = s.ram.clone();
                    let want = translate(&s.regs, &mut cold, linear, access);
                    let got = cache.translate_data(&s.regs, &mut s.ram, linear, access);
                    let what = format!("{layout:?} round {round} {linear:#x} {access:?}");
                    assert_eq!(got, want, "{what}");
                    assert!(s.ram.mem == cold.mem, "{what}: RAM");
                }
            }
        }
        assert!(
            cache.data_hits() > 0,
            "{layout:?} {} {}",
            cache.data_hits(),
            cache.data_misses()
        );
    }
}

/// Page-crossing stack accesses (each page through the cache) and a REP
/// batch (its source range translated once through the cache): a
/// rewritten leaf of either stack page, or of the source, is noticed.
#[test]
fn page_crossing_and_rep_operands_are_exact() {
    for layout in LAYOUTS {
        // PUSH crosses below STACK from STACK + 2, POP from STACK - 2.
        for sp in [STACK + 2, STACK - 2] {
            for (linear, insns) in [
                (STACK, [Insn::Push, Insn::Pop]),
                (STACK - 0x1000, [Insn::Push, Insn::Pop]),
                (SRC, [Insn::RepMovsb, Insn::Movsb]),
            ] {
                let mut s = setup(layout);
                s.sp = sp;
                let mut cache = FetchCache::new();
                for _ in 0..2 {
                    for insn in insns {
                        let r = s.step(&mut cache, insn, false, "warming").0;
                        assert!(r.is_ok(), "{layout:?} {insn:?}: {r:?}");
                    }
                }
                let hits = cache.data_hits();
                for insn in insns {
                    let _ = s.step(&mut cache, insn, false, "warm");
                }
                assert!(cache.data_hits() > hits, "{layout:?}: cache unused");
                let leaf = s.entry(linear, 1);
                let theirs = s.other.entry_gpa(&mut s.ram, linear, 1);
                let value = s.other.get(&s.ram, theirs);
                s.pt.set(&mut s.ram, leaf, value);
                for insn in insns {
                    let r = s.step(&mut cache, insn, false, "leaf rewritten").0;
                    assert!(r.is_ok(), "{layout:?} {insn:?}: {r:?}");
                }
                s.pt.modify(&mut s.ram, leaf, 0, pte::P);
                // The instruction whose operand is on that page.
                let crossing = match (linear, sp) {
                    (SRC, _) => Insn::RepMovsb,
                    (_, sp) if sp == STACK + 2 => Insn::Push,
                    _ => Insn::Pop,
                };
                let r = s.step(&mut cache, crossing, false, "leaf not present").0;
                assert!(is_page_fault(&r), "{layout:?} {sp:#x} {linear:#x}: {r:?}");
            }
        }
    }
}

/// Random changes between assists, against a cold assist after each: a
/// bit of a walked entry (P, R/W, U/S, A, D, PS, XD, an address bit),
/// CR0.WP, CR4.SMAP, EFER.NXE, RFLAGS.AC, the CPL or CR3, followed by a
/// random instruction, with or without bytes. Faults and errors must
/// agree too.
#[test]
fn random_changes_between_assists_agree_with_a_cold_walk() {
    let mut rng = support::Rng(0x0DA7_A7B1_5EED);
    for layout in LAYOUTS {
        let mut s = setup(layout);
        let mut cache = s.warm();
        let insns = [
            Insn::Push,
            Insn::Pop,
            Insn::Movsb,
            Insn::Cmpsb,
            Insn::RepMovsb,
        ];
        // The entries, located before any change (a flipped address bit
        // would lead the test's own table walker astray).
        let mut entries = Vec::new();
        for linear in [STACK, SRC, MMIO_LIN, STACK - 0x1000] {
            for level in 1..=levels(layout) {
                entries.push(s.entry(linear, level));
            }
        }
        let mut done = 0;
        for step in 0..600 {
            match rng.below(4) {
                0 | 1 => {
                    let at = entries[rng.below(entries.len() as u64) as usize];
                    let mut choices =
                        vec![pte::P, pte::RW, pte::US, pte::A, pte::D, pte::PS, 1 << 13];
                    if layout != Layout::Bits32 {
                        choices.push(pte::XD);
                    }
                    let bit = choices[rng.below(choices.len() as u64) as usize];
                    let v = s.pt.get(&s.ram, at);
                    s.pt.set(&mut s.ram, at, v ^ bit);
                }
                2 => match rng.below(6) {
                    0 => s.regs.cr0 ^= bits::CR0_WP,
                    1 => s.regs.cr4 ^= bits::CR4_SMAP,
                    2 => s.regs.efer ^= bits::EFER_NXE,
                    3 => s.regs.rflags ^= bits::RFLAGS_AC,
                    4 => {
                        let cpl = if s.regs.cpl() == 0 { 3 } else { 0 };
                        s.regs = s.regs.clone().at_cpl(cpl);
                    }
                    _ => {
                        s.regs.cr3 = if s.regs.cr3 == s.pt.cr3() {
                            s.other.cr3()
                        } else {
                            s.pt.cr3()
                        };
                    }
                },
                _ => {}
            }
            let insn = insns[rng.below(insns.len() as u64) as usize];
            let fetch = rng.below(2) == 0;
            let r = s
                .step(&mut cache, insn, fetch, &format!("random step {step}"))
                .0;
            done += usize::from(r.is_ok());
        }
        // Not only faults: the walks mostly succeed.
        assert!(done > 100, "{layout:?}: {done} succeeded");
        assert!(cache.data_hits() > 100, "{layout:?}: {}", cache.data_hits());
    }
}
