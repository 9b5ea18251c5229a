//! The two walks of one two-operand instruction (MOVS, CMPS, PUSH m,
//! POP m: one operand at the device, the other in RAM) share the entries
//! they start with: with a warm cache, the second re-validation reads only
//! the entries below those the first has just read. Measured here by the
//! guest-RAM reads of a warm assist, for pages in the same 2 MiB region,
//! 1 GiB region, 512 GiB region, nothing in common, and 2 MiB / 1 GiB
//! pages, in every paging layout; and exactness: a shared entry rewritten
//! between two assists, a control-state change (CR3, CPL, EFER.NXE,
//! CR4.SMAP) between them, each assist compared with a cold one (a fresh
//! walk of every entry).

use crate::support;
use crate::support::dyn_assist::{assist_mem, assist_mem_cached};

use nvmm_assist::{AccessType, Error, Exception, FetchCache, MemExit, Outcome, Registers};
use support::{Layout, PageTables, RecordingMmio, TEST_VENDOR, TestRam, bits, pte};

/// The device's guest-physical page (not RAM) and offset.
const MMIO: u64 = 0x1000;
const DEV_OFF: u64 = 0x10;
/// The RAM operand's page in each tree, and its offset.
const RAM_PAGE: u64 = 0x6000;
const RAM_PAGE_2: u64 = 0x7000;
const RAM_OFF: u64 = 0x100;
/// The stack slot's offset from the string source (the same page).
const STACK_OFF: u64 = 0x100;
/// The roots of the two trees (the second maps the RAM operand to
/// RAM_PAGE_2).
const ROOT: u64 = 0x10000;
const ROOT_2: u64 = 0x40000;

const RSP: usize = 4;
const RSI: usize = 6;
const RDI: usize = 7;
const RBX: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insn {
    /// `movsb`: reads RAM (rSI), writes the device (rDI).
    Movsb,
    /// `cmpsb`: reads RAM (rSI), then the device (rDI).
    Cmpsb,
    /// `push [rbx]`: reads the device, writes the stack (RAM).
    Push,
    /// `pop [rbx]`: reads the stack (RAM), writes the device.
    Pop,
}

const INSNS: [Insn; 4] = [Insn::Movsb, Insn::Cmpsb, Insn::Push, Insn::Pop];

impl Insn {
    fn bytes(self) -> &'static [u8] {
        match self {
            Insn::Movsb => &[0xA4],
            Insn::Cmpsb => &[0xA6],
            Insn::Push => &[0xFF, 0x33],
            Insn::Pop => &[0x8F, 0x03],
        }
    }

    /// Guest-RAM reads besides the walks: the RAM operand's, when read,
    /// and the device operand's, when read (which asks the RAM first).
    fn data_reads(self) -> usize {
        match self {
            Insn::Movsb | Insn::Push | Insn::Pop => 1,
            Insn::Cmpsb => 2,
        }
    }
}

/// Where an operand is mapped: a 4 KiB page at `linear`, or the large
/// page (`level` 2: 2 MiB, 3: 1 GiB) at `linear` rounded down, mapping
/// guest-physical 0 (so that the operand's GPA is its offset in it).
#[derive(Debug, Clone, Copy)]
struct Place {
    linear: u64,
    level: u32,
}

const fn small(linear: u64) -> Place {
    Place { linear, level: 1 }
}

/// A pair of placements, the walk lengths and the entries the two walks
/// start with in common.
#[derive(Debug, Clone, Copy)]
struct Case {
    what: &'static str,
    layout: Layout,
    /// The RAM operand's linear address (its page's, for a large page:
    /// the operand is at `linear + RAM_PAGE`).
    ram: Place,
    dev: Place,
    ram_entries: usize,
    dev_entries: usize,
    shared: usize,
}

const MIB2: u64 = 0x20_0000;
const GIB: u64 = 0x4000_0000;

const CASES: [Case; 14] = [
    Case {
        what: "same 2 MiB region",
        layout: Layout::Level4,
        ram: small(MIB2 + 0x3000),
        dev: small(MIB2 + 0x5000),
        ram_entries: 4,
        dev_entries: 4,
        shared: 3,
    },
    Case {
        what: "same 1 GiB region",
        layout: Layout::Level4,
        ram: small(MIB2 + 0x3000),
        dev: small(2 * MIB2 + 0x5000),
        ram_entries: 4,
        dev_entries: 4,
        shared: 2,
    },
    Case {
        what: "same 512 GiB region",
        layout: Layout::Level4,
        ram: small(MIB2 + 0x3000),
        dev: small(GIB + 0x5000),
        ram_entries: 4,
        dev_entries: 4,
        shared: 1,
    },
    Case {
        what: "nothing in common",
        layout: Layout::Level4,
        ram: small(MIB2 + 0x3000),
        dev: small((1 << 39) + 0x5000),
        ram_entries: 4,
        dev_entries: 4,
        shared: 0,
    },
    Case {
        what: "RAM in a 2 MiB page, the device in a 4 KiB page beside it",
        layout: Layout::Level4,
        ram: Place {
            linear: 3 * MIB2,
            level: 2,
        },
        dev: small(MIB2 + 0x5000),
        ram_entries: 3,
        dev_entries: 4,
        shared: 2,
    },
    Case {
        what: "the device in a 2 MiB page, RAM in a 4 KiB page beside it",
        layout: Layout::Level4,
        ram: small(MIB2 + 0x3000),
        dev: Place {
            linear: 3 * MIB2,
            level: 2,
        },
        ram_entries: 4,
        dev_entries: 3,
        shared: 2,
    },
    Case {
        what: "RAM in a 1 GiB page, the device in another 1 GiB region",
        layout: Layout::Level4,
        ram: Place {
            linear: GIB,
            level: 3,
        },
        dev: small(MIB2 + 0x5000),
        ram_entries: 2,
        dev_entries: 4,
        shared: 1,
    },
    Case {
        what: "both in one 2 MiB page (the second walk reads nothing)",
        layout: Layout::Level4,
        ram: Place {
            linear: 3 * MIB2,
            level: 2,
        },
        dev: Place {
            linear: 3 * MIB2,
            level: 2,
        },
        ram_entries: 3,
        dev_entries: 3,
        shared: 3,
    },
    Case {
        what: "both in one 1 GiB page",
        layout: Layout::Level4,
        ram: Place {
            linear: GIB,
            level: 3,
        },
        dev: Place {
            linear: GIB,
            level: 3,
        },
        ram_entries: 2,
        dev_entries: 2,
        shared: 2,
    },
    Case {
        what: "5-level, same 2 MiB region",
        layout: Layout::Level5,
        ram: small(MIB2 + 0x3000),
        dev: small(MIB2 + 0x5000),
        ram_entries: 5,
        dev_entries: 5,
        shared: 4,
    },
    Case {
        what: "PAE, same 2 MiB region",
        layout: Layout::Pae,
        ram: small(MIB2 + 0x3000),
        dev: small(MIB2 + 0x5000),
        ram_entries: 3,
        dev_entries: 3,
        shared: 2,
    },
    Case {
        what: "PAE, another 1 GiB region (another PDPTE)",
        layout: Layout::Pae,
        ram: small(MIB2 + 0x3000),
        dev: small(GIB + 0x5000),
        ram_entries: 3,
        dev_entries: 3,
        shared: 0,
    },
    Case {
        what: "32-bit, same 4 MiB region",
        layout: Layout::Bits32,
        ram: small(0x40_3000),
        dev: small(0x40_5000),
        ram_entries: 2,
        dev_entries: 2,
        shared: 1,
    },
    Case {
        what: "32-bit, another 4 MiB region",
        layout: Layout::Bits32,
        ram: small(0x40_3000),
        dev: small(0x80_5000),
        ram_entries: 2,
        dev_entries: 2,
        shared: 0,
    },
];

/// The operand's linear address for `place` on `gpa`'s page (its
/// offset in a large page mapping GPA 0).
fn operand(place: Place, page: u64, offset: u64) -> u64 {
    if place.level == 1 {
        place.linear + offset
    } else {
        place.linear + page + offset
    }
}

#[derive(Clone)]
struct Machine {
    case: Case,
    regs: Registers,
    ram: TestRam,
    mmio: RecordingMmio,
    tables: PageTables,
    other: PageTables,
}

fn machine(case: Case) -> Machine {
    let mut ram = TestRam::new(0x8_0000).hole(MMIO, MMIO + 0x1000);
    let mut tables = PageTables::new(case.layout, ROOT);
    let mut other = PageTables::new(case.layout, ROOT_2);
    for (t, page) in [(&mut tables, RAM_PAGE), (&mut other, RAM_PAGE_2)] {
        // The device first: a large page holding both is mapped once.
        for (place, gpa) in [(case.dev, MMIO), (case.ram, page)] {
            if place.level == 1 {
                t.map(&mut ram, place.linear, gpa, 1, pte::PWU);
            } else {
                t.map(&mut ram, place.linear, 0, place.level, pte::PWU);
            }
        }
    }
    for (page, seed) in [(RAM_PAGE, 0x5Au8), (RAM_PAGE_2, 0xC3)] {
        let bytes: Vec<u8> = (0..4096u32).map(|i| seed ^ (i as u8)).collect();
        ram.put(page, &bytes);
    }
    let regs = match case.layout {
        Layout::Bits32 | Layout::Pae => {
            let mut r = Registers::flat_protected32(TEST_VENDOR);
            r.cr0 |= bits::CR0_PG | bits::CR0_WP;
            if case.layout == Layout::Pae {
                r.cr4 |= bits::CR4_PAE;
            }
            r.cr3 = ROOT;
            r
        }
        _ => {
            let mut r = Registers::long_mode(TEST_VENDOR, ROOT, 0, 0);
            if case.layout == Layout::Level5 {
                r.cr4 |= bits::CR4_LA57;
            }
            r
        }
    };
    Machine {
        case,
        regs,
        ram,
        mmio: RecordingMmio::default(),
        tables,
        other,
    }
}

impl Machine {
    fn ram_linear(&self) -> u64 {
        operand(self.case.ram, RAM_PAGE, RAM_OFF)
    }

    fn dev_linear(&self) -> u64 {
        operand(self.case.dev, MMIO, DEV_OFF)
    }

    fn prepare(&mut self, insn: Insn) {
        let (ram, dev) = (self.ram_linear(), self.dev_linear());
        self.regs.gprs[RSI] = ram;
        self.regs.gprs[RDI] = dev;
        self.regs.gprs[RBX] = dev;
        // The stack slot: STACK_OFF past the string source in its page
        // (PUSH writes the 8 bytes, 4 outside 64-bit mode, below rSP).
        let slot = if self.case.layout == Layout::Level4 || self.case.layout == Layout::Level5 {
            8
        } else {
            4
        };
        let stack = ram + STACK_OFF;
        self.regs.gprs[RSP] = if insn == Insn::Push {
            stack + slot
        } else {
            stack
        };
    }

    /// `insn` through `cache`, and the same on a copy with no cache: both
    /// must do the same. The result, and the guest-RAM reads of the cached
    /// assist.
    fn step(
        &mut self,
        cache: &mut FetchCache,
        insn: Insn,
        what: &str,
    ) -> (Result<Outcome, Error>, usize) {
        self.prepare(insn);
        let exit = MemExit {
            gpa: MMIO + DEV_OFF,
            access: match insn {
                Insn::Movsb | Insn::Pop => AccessType::Write,
                Insn::Cmpsb | Insn::Push => AccessType::Read,
            },
            instruction: insn.bytes(),
        };
        let mut cold = self.clone();
        let r_cold = assist_mem(&mut cold.regs, &mut cold.ram, &mut cold.mmio, &exit);
        let reads = self.ram.reads;
        let r = assist_mem_cached(&mut self.regs, &mut self.ram, &mut self.mmio, &exit, cache);
        let reads = self.ram.reads - reads;
        let what = format!("{}: {insn:?}: {what}", self.case.what);
        assert_eq!(r, r_cold, "{what}: result");
        assert_eq!(self.regs, cold.regs, "{what}: registers");
        assert!(self.ram.mem == cold.ram.mem, "{what}: guest RAM differs");
        assert_eq!(self.mmio.log, cold.mmio.log, "{what}: device accesses");
        (r, reads)
    }

    /// The last byte the device saw written.
    fn last_written(&self) -> u8 {
        let last = self.mmio.log.last().expect("a device access");
        assert!(last.write);
        last.data[0]
    }
}

/// A warm assist of each instruction reads each shared entry once: the
/// first walk's entries, the second's below the shared ones, and the RAM
/// operand.
#[test]
fn a_warm_pair_reads_each_shared_entry_once() {
    for case in CASES {
        for insn in INSNS {
            let mut m = machine(case);
            let mut cache = FetchCache::new();
            // Twice: where both operands share their leaf (one large
            // page), the second operand's walk sets a dirty bit the
            // first operand's record does not have yet.
            for _ in 0..2 {
                let (r, _) = m.step(&mut cache, insn, "warming");
                assert_eq!(r, Ok(Outcome::Done), "{}: {insn:?}", case.what);
            }
            let (hits, misses) = (cache.data_hits(), cache.data_misses());
            for round in 0..3 {
                let (r, reads) = m.step(&mut cache, insn, "warm");
                assert_eq!(r, Ok(Outcome::Done), "{}: {insn:?}", case.what);
                assert_eq!(
                    reads,
                    case.ram_entries + case.dev_entries - case.shared + insn.data_reads(),
                    "{}: {insn:?}, warm round {round}: guest-RAM reads",
                    case.what
                );
            }
            assert_eq!(cache.data_misses(), misses, "{}: {insn:?}", case.what);
            assert_eq!(cache.data_hits(), hits + 6, "{}: {insn:?}", case.what);
        }
    }
}

/// A machine for `case` with every instruction's translations cached
/// (each run twice: see the dirty bits in
/// [`a_warm_pair_reads_each_shared_entry_once`]).
fn warmed(case: Case) -> (Machine, FetchCache) {
    let mut m = machine(case);
    let mut cache = FetchCache::new();
    for _ in 0..2 {
        for insn in INSNS {
            let (r, _) = m.step(&mut cache, insn, "warming");
            assert_eq!(r, Ok(Outcome::Done), "{}: {insn:?}: warming", case.what);
        }
    }
    (m, cache)
}

/// Each entry of the RAM operand's walk (those it shares with the
/// device's, and those below), rewritten between two assists to the
/// other tree's: the RAM operand is then another page. Or cleared (not
/// present), or rewritten and restored. Each instruction is the first to
/// run after the change, so that the changed entry is, in turn, in the
/// first walk of the pair and in the second (PUSH walks the device
/// first); each assist does what a cold one does, and the moved operand
/// shows.
#[test]
fn a_shared_entry_rewritten_between_assists_is_noticed() {
    for case in CASES {
        let levels = case.ram_entries.max(case.dev_entries) as u32;
        for level in case.ram.level..=levels {
            for first in INSNS {
                let (mut m, mut cache) = warmed(case);
                let ram_linear = m.ram_linear();
                let at = m.tables.clone().entry_gpa(&mut m.ram, ram_linear, level);
                let theirs = m.other.clone().entry_gpa(&mut m.ram, ram_linear, level);
                let (mine, value) = (m.tables.get(&m.ram, at), m.other.get(&m.ram, theirs));
                let what = format!("level {level} rewritten");
                m.tables.set(&mut m.ram, at, value);
                let (r, _) = m.step(&mut cache, first, &what);
                assert_eq!(r, Ok(Outcome::Done), "{}: {first:?}: {what}", case.what);
                if case.ram.level == 1 && first == Insn::Movsb {
                    // The other tree maps the operand to RAM_PAGE_2.
                    let expected = 0xC3 ^ (RAM_OFF as u8);
                    assert_eq!(m.last_written(), expected, "{}: {what}", case.what);
                }
                for insn in INSNS {
                    assert_eq!(
                        m.step(&mut cache, insn, &what).0,
                        Ok(Outcome::Done),
                        "{}",
                        case.what
                    );
                }
                let what = format!("level {level} rewritten, then restored");
                m.tables.set(&mut m.ram, at, mine);
                assert_eq!(
                    m.step(&mut cache, first, &what).0,
                    Ok(Outcome::Done),
                    "{}",
                    case.what
                );
                for insn in INSNS {
                    let (r, _) = m.step(&mut cache, insn, &what);
                    assert_eq!(r, Ok(Outcome::Done), "{}: {insn:?}: {what}", case.what);
                }

                let (mut m, mut cache) = warmed(case);
                let what = format!("level {level} not present");
                m.tables.set(&mut m.ram, at, mine & !pte::P);
                let (r, _) = m.step(&mut cache, first, &what);
                assert!(
                    matches!(r, Err(Error::Exception(Exception::PageFault { .. }))),
                    "{}: {first:?}: {what}: {r:?}",
                    case.what
                );
                m.tables.set(&mut m.ram, at, mine);
                let what = format!("level {level} present again");
                for insn in INSNS {
                    let (r, _) = m.step(&mut cache, insn, &what);
                    assert_eq!(r, Ok(Outcome::Done), "{}: {insn:?}: {what}", case.what);
                }
                assert_eq!(
                    m.step(&mut cache, Insn::Movsb, &what).0,
                    Ok(Outcome::Done),
                    "{}",
                    case.what
                );
                assert_eq!(m.last_written(), 0x5A ^ (RAM_OFF as u8), "{}", case.what);
            }
        }
    }
}

/// A control-state change between two assists: the cached walks are not
/// used under the new state (each pair walks again, then is served), and
/// changed back, the pair walks again too. CR3 to the other tree, CPL 3,
/// EFER.NXE cleared, CR4.SMAP set at CPL 0 over user pages (which then
/// fault).
#[test]
fn a_control_change_between_assists_walks_again() {
    type Change = fn(&mut Registers);
    let changes: [(&str, Change, bool); 4] = [
        ("CR3 load", |r| r.cr3 = ROOT_2, true),
        ("CPL 3", |r| *r = r.clone().at_cpl(3), true),
        ("EFER.NXE cleared", |r| r.efer &= !bits::EFER_NXE, true),
        ("CR4.SMAP set", |r| r.cr4 |= bits::CR4_SMAP, false),
    ];
    for case in CASES {
        if case.layout != Layout::Level4 {
            continue;
        }
        for (what, change, succeeds) in changes {
            let mut m = machine(case);
            let mut cache = FetchCache::new();
            for insn in INSNS {
                assert_eq!(
                    m.step(&mut cache, insn, "warming").0,
                    Ok(Outcome::Done),
                    "{}",
                    case.what
                );
            }
            let before = m.regs.clone();
            change(&mut m.regs);
            let misses = cache.data_misses();
            let (r, _) = m.step(&mut cache, Insn::Movsb, what);
            assert_eq!(r.is_ok(), succeeds, "{}: {what}: {r:?}", case.what);
            assert!(
                cache.data_misses() > misses,
                "{}: {what}: no walk",
                case.what
            );
            if succeeds {
                // (Twice: the new tables' dirty bits, as in warming.)
                assert_eq!(
                    m.step(&mut cache, Insn::Movsb, what).0,
                    Ok(Outcome::Done),
                    "{}",
                    case.what
                );
                let hits = cache.data_hits();
                let misses = cache.data_misses();
                assert_eq!(
                    m.step(&mut cache, Insn::Movsb, what).0,
                    Ok(Outcome::Done),
                    "{}",
                    case.what
                );
                assert_eq!(cache.data_hits(), hits + 2, "{}: {what}", case.what);
                assert_eq!(cache.data_misses(), misses, "{}: {what}", case.what);
            }
            if what == "CR3 load" && case.ram.level == 1 {
                assert_eq!(m.last_written(), 0xC3 ^ (RAM_OFF as u8), "{}", case.what);
            }
            // Changed back: walks again, then served.
            m.regs = before;
            let misses = cache.data_misses();
            let (r, _) = m.step(&mut cache, Insn::Movsb, "changed back");
            assert_eq!(r, Ok(Outcome::Done), "{}: {what} changed back", case.what);
            assert_eq!(cache.data_misses(), misses + 2, "{}: {what}", case.what);
            let hits = cache.data_hits();
            assert_eq!(
                m.step(&mut cache, Insn::Movsb, "changed back").0,
                Ok(Outcome::Done),
                "{}",
                case.what
            );
            assert_eq!(cache.data_hits(), hits + 2, "{}: {what}", case.what);
            assert_eq!(m.last_written(), 0x5A ^ (RAM_OFF as u8), "{}", case.what);
        }
    }
}

/// Only the second operand's leaf (an entry of its walk that the first
/// operand's walk does not read) rewritten between two assists: the pair
/// record's one check finds the change past the first operand's entries,
/// so the first operand is a hit and only the second walks again, as the
/// slot path does; each assist does what a cold one does, and the next
/// pair is served whole again. The leaf is rewritten with its accessed
/// bit cleared (the walk sets it again) and then to the other tree's leaf
/// (the operand moves), for each instruction and 4 KiB layout. (CMPSB
/// reads the device page whose slot a write made: the read's walk must
/// replace that stale slot, or the search finds it first on every later
/// read and the pair is never served again.)
#[test]
fn only_the_second_operands_leaf_rewritten_walks_the_second_alone() {
    for case in CASES {
        if case.ram.level != 1 || case.dev.level != 1 {
            continue;
        }
        for insn in INSNS {
            for rewrite in ["accessed bit cleared", "other tree's leaf"] {
                let (mut m, mut cache) = warmed(case);
                // PUSH reads the device and writes the stack (RAM); the
                // others read RAM first and then the device.
                let second = if insn == Insn::Push {
                    m.ram_linear()
                } else {
                    m.dev_linear()
                };
                let at = m.tables.clone().entry_gpa(&mut m.ram, second, 1);
                let theirs = m.other.clone().entry_gpa(&mut m.ram, second, 1);
                let mine = m.tables.get(&m.ram, at);
                let value = if rewrite == "accessed bit cleared" {
                    mine & !pte::A
                } else {
                    m.other.get(&m.ram, theirs)
                };
                assert_ne!(value, mine, "{}: {insn:?}: {rewrite}", case.what);
                m.tables.set(&mut m.ram, at, value);
                let what = format!("second operand's leaf: {rewrite}");
                let (hits, misses) = (cache.data_hits(), cache.data_misses());
                let (r, _) = m.step(&mut cache, insn, &what);
                assert_eq!(r, Ok(Outcome::Done), "{}: {insn:?}: {what}", case.what);
                assert_eq!(
                    (cache.data_hits(), cache.data_misses()),
                    (hits + 1, misses + 1),
                    "{}: {insn:?}: {what}: the first operand a hit, the second a walk",
                    case.what
                );
                // The next pair: both hits, no walk.
                let (hits, misses) = (cache.data_hits(), cache.data_misses());
                let (r, _) = m.step(&mut cache, insn, &what);
                assert_eq!(r, Ok(Outcome::Done), "{}: {insn:?}: {what}", case.what);
                assert_eq!(
                    (cache.data_hits(), cache.data_misses()),
                    (hits + 2, misses),
                    "{}: {insn:?}: {what}: served again",
                    case.what
                );
            }
        }
    }
}
