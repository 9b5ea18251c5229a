//! The per-VCPU fetch cache (`FetchCache`, `assist_mem_cached`) is exact:
//! the guest rewrites a paging-structure entry (at every level, in every
//! paging mode), reloads CR3, changes a control bit or its CPL between two
//! assists, without any exit in between, and the second assist must fetch
//! what the guest's tables now say, as a full walk does.

use crate::support;
use crate::support::dyn_assist::{assist_mem, assist_mem_cached};

use nvmm_assist::{
    AccessType, CpuState, Error, Exception, FetchCache, MemExit, Outcome, Registers,
};
use support::{Layout, PageTables, RecordingMmio, TEST_VENDOR, TestRam, pte};

/// Where the code runs (linear) and the two physical pages it can map to.
const CODE: u64 = 0x40_0000;
const PAGE_A: u64 = 0x5000;
const PAGE_B: u64 = 0x6000;
const MMIO: u64 = 0x1000;
/// `mov [ebx], eax` (4-byte store) at A, `mov [ebx], al` (1 byte) at B.
const AT_A: [u8; 2] = [0x89, 0x03];
const AT_B: [u8; 2] = [0x88, 0x03];

struct Setup {
    regs: Registers,
    ram: TestRam,
    mmio: RecordingMmio,
    /// The guest's tables, mapping CODE to A.
    pt: PageTables,
    /// A second tree mapping CODE to B.
    other: PageTables,
}

fn levels(layout: Layout) -> u32 {
    match layout {
        Layout::Bits32 => 2,
        Layout::Pae => 3,
        Layout::Level4 => 4,
        Layout::Level5 => 5,
    }
}

fn setup(layout: Layout) -> Setup {
    // RAM reaches CODE too, for the paging-off case.
    let mut ram = TestRam::new(0x40_1000).hole(MMIO, MMIO + 0x1000);
    ram.put(PAGE_A, &AT_A);
    ram.put(PAGE_B, &AT_B);
    let mut pt = PageTables::new(layout, 0x10000);
    pt.map(&mut ram, CODE, PAGE_A, 1, pte::PWU);
    let mut other = PageTables::new(layout, 0x30000);
    other.map(&mut ram, CODE, PAGE_B, 1, pte::PWU);
    let mut regs = match layout {
        Layout::Bits32 | Layout::Pae => {
            let mut r = Registers::flat_protected32(TEST_VENDOR);
            r.cr0 |= 1 << 31;
            if layout == Layout::Pae {
                r.cr4 |= 1 << 5;
            }
            r
        }
        _ => {
            let mut r = Registers::long_mode(TEST_VENDOR, 0, 0, 0);
            if layout == Layout::Level5 {
                r.cr4 |= 1 << 12;
            }
            r
        }
    };
    regs.cr3 = pt.cr3();
    regs.gprs[3] = MMIO;
    regs.gprs[0] = 0x1122_3344;
    Setup {
        regs,
        ram,
        mmio: RecordingMmio::default(),
        pt,
        other,
    }
}

impl Setup {
    /// One assist at CODE with no instruction bytes in the exit, through
    /// `cache`: Ok(size of the MMIO store it made) or the error.
    fn run(&mut self, cache: &mut FetchCache) -> Result<usize, Error> {
        self.regs.rip = CODE;
        let exit = MemExit {
            gpa: MMIO,
            access: AccessType::Write,
            instruction: &[],
        };
        let before = self.mmio.log.len();
        let r = assist_mem_cached(&mut self.regs, &mut self.ram, &mut self.mmio, &exit, cache)?;
        assert_eq!(r, Outcome::Done);
        assert_eq!(self.mmio.log.len(), before + 1);
        Ok(self.mmio.log.last().map_or(0, |a| a.data.len()))
    }

    /// The same assist without a cache (a full walk), on copies.
    fn run_uncached(&self) -> Result<usize, Error> {
        let (mut regs, mut ram, mut mmio) =
            (self.regs.clone(), self.ram.clone(), self.mmio.clone());
        regs.rip = CODE;
        let exit = MemExit {
            gpa: MMIO,
            access: AccessType::Write,
            instruction: &[],
        };
        assist_mem(&mut regs, &mut ram, &mut mmio, &exit)?;
        Ok(mmio.log.last().map_or(0, |a| a.data.len()))
    }

    /// A warm cache: two assists, the second served from the cache.
    fn warm(&mut self) -> FetchCache {
        let mut cache = FetchCache::new();
        assert_eq!(self.run(&mut cache), Ok(4));
        assert_eq!(self.run(&mut cache), Ok(4));
        assert_eq!(
            (cache.misses(), cache.hits()),
            (1, 1),
            "the cache is not used"
        );
        cache
    }
}

const LAYOUTS: [Layout; 4] = [Layout::Bits32, Layout::Pae, Layout::Level4, Layout::Level5];

/// Every level: the entry the walk read is replaced (in place, no exit,
/// no CR3 reload) by the other tree's entry, which leads to page B.
#[test]
fn a_rewritten_entry_at_any_level_is_noticed() {
    for layout in LAYOUTS {
        for level in 1..=levels(layout) {
            let mut s = setup(layout);
            let mut cache = s.warm();
            let at = s.pt.entry_gpa(&mut s.ram, CODE, level);
            let theirs = s.other.entry_gpa(&mut s.ram, CODE, level);
            let value = s.other.get(&s.ram, theirs);
            s.pt.set(&mut s.ram, at, value);
            assert_eq!(
                s.run(&mut cache),
                Ok(1),
                "{layout:?} level {level}: stale fetch"
            );
            assert_eq!(s.run_uncached(), Ok(1));
            // Not present: a #PF, not the last good translation.
            s.pt.set(&mut s.ram, at, 0);
            let err = s.run(&mut cache).unwrap_err();
            assert!(
                matches!(err, Error::Exception(Exception::PageFault { .. })),
                "{layout:?} level {level}: {err:?}"
            );
            assert_eq!(s.run_uncached(), Err(err));
        }
    }
}

/// Rights: the leaf or a table entry loses U/S (CPL 3), or gains XD.
#[test]
fn a_permission_change_is_noticed() {
    for layout in [Layout::Pae, Layout::Level4] {
        for level in 1..=levels(layout) {
            // PAE PDPTEs have no U/S or XD bits.
            if layout == Layout::Pae && level == 3 {
                continue;
            }
            let mut s = setup(layout);
            s.regs.efer |= 1 << 11; // NXE
            let mut cache = s.warm();
            let at = s.pt.entry_gpa(&mut s.ram, CODE, level);
            s.pt.modify(&mut s.ram, at, pte::XD, 0);
            let err = s.run(&mut cache).unwrap_err();
            assert!(
                matches!(err, Error::Exception(Exception::PageFault { code, .. }) if code & 0x11 == 0x11),
                "{layout:?} level {level}: {err:?}"
            );
            assert_eq!(s.run_uncached(), Err(err));
            s.pt.modify(&mut s.ram, at, 0, pte::XD);
            assert_eq!(s.run(&mut cache), Ok(4));
            // U/S cleared: ring 3 may not fetch.
            s.regs = s.regs.clone().at_cpl(3);
            assert_eq!(s.run(&mut cache), Ok(4));
            s.pt.modify(&mut s.ram, at, 0, pte::US);
            let err = s.run(&mut cache).unwrap_err();
            assert!(
                matches!(err, Error::Exception(Exception::PageFault { .. })),
                "{err:?}"
            );
            assert_eq!(s.run_uncached(), Err(err));
        }
    }
}

/// A CR3 load, a CPL change and a control-bit change without any entry
/// change are noticed too.
#[test]
fn control_state_changes_are_noticed() {
    for layout in LAYOUTS {
        let mut s = setup(layout);
        let mut cache = s.warm();
        s.regs.cr3 = s.other.cr3();
        assert_eq!(s.run(&mut cache), Ok(1), "{layout:?}: CR3 load");
        s.regs.cr3 = s.pt.cr3();
        assert_eq!(s.run(&mut cache), Ok(4), "{layout:?}: CR3 back");

        // Supervisor-only leaf, then CPL 3: #PF although the entries did
        // not change.
        let leaf = s.pt.entry_gpa(&mut s.ram, CODE, 1);
        s.pt.modify(&mut s.ram, leaf, 0, pte::US);
        assert_eq!(s.run(&mut cache), Ok(4));
        s.regs = s.regs.clone().at_cpl(3);
        let err = s.run(&mut cache).unwrap_err();
        assert!(
            matches!(err, Error::Exception(Exception::PageFault { .. })),
            "{layout:?}: {err:?}"
        );
        s.regs = s.regs.clone().at_cpl(0);
        assert_eq!(s.run(&mut cache), Ok(4));

        // Paging off (32-bit layouts: protected mode stays valid): the
        // linear address is the physical one, where page B's form is put.
        let mut off = s.regs.clone();
        off.cr0 &= !(1 << 31);
        off.cr4 &= !((1 << 5) | (1 << 12));
        off.efer = 0;
        if layout == Layout::Bits32 || layout == Layout::Pae {
            std::mem::swap(&mut s.regs, &mut off);
            s.ram.put(CODE, &AT_B);
            assert_eq!(s.run(&mut cache), Ok(1), "{layout:?}: paging off");
            std::mem::swap(&mut s.regs, &mut off);
            assert_eq!(s.run(&mut cache), Ok(4), "{layout:?}: paging on again");
        }
    }
}

/// The accessed bits the walk sets are part of what the cache records: a
/// guest that clears an accessed bit gets it set again on the next fetch,
/// as a full walk would.
#[test]
fn a_cleared_accessed_bit_is_set_again() {
    for layout in LAYOUTS {
        let mut s = setup(layout);
        let mut cache = s.warm();
        let leaf = s.pt.entry_gpa(&mut s.ram, CODE, 1);
        assert_ne!(s.pt.get(&s.ram, leaf) & pte::A, 0);
        s.pt.modify(&mut s.ram, leaf, 0, pte::A);
        assert_eq!(s.run(&mut cache), Ok(4));
        assert_ne!(
            s.pt.get(&s.ram, leaf) & pte::A,
            0,
            "{layout:?}: accessed bit not set again"
        );
    }
}

/// RAM that fails reads at one GPA once armed, and counts calls after a
/// failure.
struct FailAt {
    inner: TestRam,
    gpa: Option<u64>,
    failed: bool,
    after: usize,
}

impl nvmm_assist::GuestRam for FailAt {
    fn read(
        &mut self,
        gpa: u64,
        buf: &mut [u8],
    ) -> Result<nvmm_assist::RamStatus, nvmm_assist::BusError> {
        self.after += usize::from(self.failed);
        if Some(gpa) == self.gpa {
            self.failed = true;
            return Err(nvmm_assist::BusError(4));
        }
        self.inner.read(gpa, buf)
    }
    fn write(
        &mut self,
        gpa: u64,
        data: &[u8],
    ) -> Result<nvmm_assist::RamStatus, nvmm_assist::BusError> {
        self.after += usize::from(self.failed);
        self.inner.write(gpa, data)
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<nvmm_assist::CompareWrite, nvmm_assist::BusError> {
        self.after += usize::from(self.failed);
        self.inner.compare_and_write(gpa, expected, new)
    }
}

/// An entry that cannot be read again while the cache is validated gives
/// the walk's error, and no callback follows the failed read.
#[test]
fn an_entry_read_error_during_validation_is_the_last_callback() {
    for layout in LAYOUTS {
        for level in 1..=levels(layout) {
            let mut s = setup(layout);
            let mut cache = s.warm();
            let at = s.pt.entry_gpa(&mut s.ram, CODE, level);
            let mut ram = FailAt {
                inner: s.ram.clone(),
                gpa: Some(at),
                failed: false,
                after: 0,
            };
            s.regs.rip = CODE;
            let before = s.regs.clone();
            let exit = MemExit {
                gpa: MMIO,
                access: AccessType::Write,
                instruction: &[],
            };
            let r = assist_mem_cached(&mut s.regs, &mut ram, &mut s.mmio, &exit, &mut cache);
            assert_eq!(
                r,
                Err(Error::Bus(nvmm_assist::BusError(4))),
                "{layout:?} level {level}"
            );
            assert_eq!(
                ram.after, 0,
                "{layout:?} level {level}: a callback after the failure"
            );
            assert_eq!(s.regs, before);
            // A full walk fails the same way.
            ram.failed = false;
            let r = assist_mem(&mut s.regs, &mut ram, &mut s.mmio, &exit);
            assert_eq!(r, Err(Error::Bus(nvmm_assist::BusError(4))));
        }
    }
}

/// The modes of the segmentation cases: (name, state at RIP = `SEG_CODE`,
/// whether ModRM addressing is 16-bit). Paged modes identity-map the low
/// 1 MiB, so the code's physical address is its linear one.
fn segmentation_modes() -> Vec<(&'static str, Registers, TestRam, bool)> {
    use nvmm_assist::{Segment, SegmentAttributes, SegmentRegister};
    let ram = || TestRam::new(0x20_0000).hole(MMIO, MMIO + 0x1000);
    let paged = |layout: Layout, regs: &mut Registers| {
        let mut ram = ram();
        let mut pt = PageTables::new(layout, 0x10_0000);
        for page in 0..256u64 {
            pt.map(&mut ram, page * 4096, page * 4096, 1, pte::PWU);
        }
        regs.cr3 = pt.cr3();
        ram
    };
    let mut out = Vec::new();
    let mut real = Registers::real_mode(TEST_VENDOR);
    real.rip = SEG_CODE;
    out.push(("real", real, ram(), true));
    let mut p16 = Registers::flat_protected32(TEST_VENDOR);
    p16.segments[Segment::Cs as usize] = SegmentRegister {
        selector: 0x08,
        base: 0,
        limit: 0xFFFF,
        attributes: SegmentAttributes::code16(),
    };
    p16.rip = SEG_CODE;
    out.push(("prot16", p16, ram(), true));
    let mut p32 = Registers::flat_protected32(TEST_VENDOR);
    p32.cr0 |= 1 << 31;
    let r = paged(Layout::Bits32, &mut p32);
    p32.rip = SEG_CODE;
    out.push(("prot32 paged", p32, r, false));
    let mut compat = Registers::compat_mode(TEST_VENDOR, 0, SEG_CODE, 0);
    let r = paged(Layout::Level4, &mut compat);
    out.push(("compat", compat, r, false));
    let mut long = Registers::long_mode(TEST_VENDOR, 0, SEG_CODE, 0);
    let r = paged(Layout::Level4, &mut long);
    out.push(("64-bit", long, r, false));
    out
}

/// Where the segmentation cases' code starts (linear and physical).
const SEG_CODE: u64 = 0x3000;

/// A change of CS, RIP or the mode between two assists, and the linear
/// address the code is then at (where the test puts it).
type Mutation = fn(&mut Registers) -> u64;

fn cs_linear(r: &Registers) -> u64 {
    let cs = r.segments[nvmm_assist::Segment::Cs as usize];
    if r.efer & (1 << 10) != 0 && cs.attributes.l() {
        r.rip
    } else {
        cs.base.wrapping_add(r.rip & 0xFFFF_FFFF) & 0xFFFF_FFFF
    }
}

#[rustfmt::skip]
const MUTATIONS: [(&str, Mutation); 15] = {
    use nvmm_assist::Segment;
    const CS: usize = Segment::Cs as usize;
    [
        ("nothing", |r| cs_linear(r)),
        ("next instruction", |r| { r.rip += 2; cs_linear(r) }),
        ("last byte of the page", |r| { r.rip = SEG_CODE + 0xFFF; cs_linear(r) }),
        ("last two bytes of the page", |r| { r.rip = SEG_CODE + 0xFFE; cs_linear(r) }),
        ("limit just after the instruction", |r| { r.segments[CS].limit = (r.rip as u32) + 1; cs_linear(r) }),
        ("limit inside the instruction", |r| { r.segments[CS].limit = r.rip as u32; cs_linear(r) }),
        ("RIP past the limit", |r| { r.rip = u64::from(r.segments[CS].limit) + 1; cs_linear(r) }),
        ("RIP at the limit, span cut to 1 byte", |r| { r.segments[CS].limit = 0x3FFF; r.rip = 0x3FFF; cs_linear(r) }),
        ("CS base moved", |r| { r.segments[CS].base += 0x1000; cs_linear(r) }),
        ("CS a data segment", |r| { r.segments[CS].attributes.0 = (r.segments[CS].attributes.0 & !0xF) | 0x3; cs_linear(r) }),
        ("CS not present", |r| { r.segments[CS].attributes.0 &= !(1 << 7); cs_linear(r) }),
        ("CS.L and CS.D toggled", |r| { r.segments[CS].attributes.0 ^= (1 << 13) | (1 << 14); cs_linear(r) }),
        ("non-canonical RIP", |r| { r.rip |= 0x0000_8000_0000_0000; cs_linear(r) }),
        ("ring 3", |r| { *r = r.clone().at_cpl(3); cs_linear(r) }),
        ("virtual-8086 mode", |r| { r.rflags |= 1 << 17; cs_linear(r) }),
    ]
};

/// One byte-less assist of the store at RIP with `cache`: the result, the
/// registers after it and the MMIO accesses it made.
fn seg_run(
    regs: &Registers,
    ram: &TestRam,
    cache: &mut FetchCache,
) -> (Result<Outcome, Error>, Registers, Vec<support::BusAccess>) {
    let (mut regs, mut ram, mut mmio) = (regs.clone(), ram.clone(), RecordingMmio::default());
    regs.gprs[3] = MMIO;
    regs.gprs[0] = 0x1122_3344;
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Write,
        instruction: &[],
    };
    let r = assist_mem_cached(&mut regs, &mut ram, &mut mmio, &exit, cache);
    (r, regs, mmio.log)
}

/// A warm cache never stands in for the fetch's segmentation check: after
/// any change of RIP, CS (base, limit, type, presence, L/D), the CPL or the
/// mode (RFLAGS.VM), in every mode, paged or not, a warm cache gives
/// exactly what a cold one does (the same fault, or the same instruction
/// with the same accesses), and so does the next assist in the changed
/// state (a hit).
#[test]
fn a_warm_cache_agrees_with_a_cold_one_after_any_segment_change() {
    for (mode, base, ram, addr16) in segmentation_modes() {
        let insn: [u8; 2] = if addr16 { [0x89, 0x07] } else { [0x89, 0x03] };
        for (what, mutate) in MUTATIONS {
            let mut ram = ram.clone();
            ram.put(SEG_CODE, &insn);
            let mut cache = FetchCache::new();
            for _ in 0..2 {
                let (r, _, log) = seg_run(&base, &ram, &mut cache);
                assert_eq!(r, Ok(Outcome::Done), "{mode}: warm-up");
                assert_eq!(log.len(), 1, "{mode}: warm-up");
            }
            let mut regs = base.clone();
            let at = mutate(&mut regs);
            // The instruction at the new CS:RIP (physical = linear below
            // 1 MiB; elsewhere the fetch faults either way).
            if at + 2 <= 0x10_0000 && !(MMIO..MMIO + 0x1000).contains(&at) {
                ram.put(at, &insn);
            }
            let cold = seg_run(&regs, &ram, &mut FetchCache::new());
            assert_eq!(seg_run(&regs, &ram, &mut cache), cold, "{mode}, {what}");
            assert_eq!(
                seg_run(&regs, &ram, &mut cache),
                cold,
                "{mode}, {what}: again"
            );
            // And back: the original state is served right too.
            let first = seg_run(&base, &ram, &mut FetchCache::new());
            assert_eq!(
                seg_run(&base, &ram, &mut cache),
                first,
                "{mode}, {what}: back"
            );
        }
    }
}

/// A ROM behind the MMIO bus holding the code at `at`, and a device
/// register file elsewhere that records writes.
struct RomAndDevice {
    at: u64,
    code: Vec<u8>,
    code_reads: Vec<(u64, usize)>,
    writes: Vec<(u64, Vec<u8>)>,
}

impl nvmm_assist::MmioBus for RomAndDevice {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), nvmm_assist::BusError> {
        let start = gpa
            .checked_sub(self.at)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(nvmm_assist::BusError(9))?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.code.get(start + i).copied().unwrap_or(0x90);
        }
        self.code_reads.push((gpa, buf.len()));
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), nvmm_assist::BusError> {
        self.writes.push((gpa, data.to_vec()));
        Ok(())
    }
}

/// Code that is not in RAM (a ROM or flash on the MMIO bus) is fetched
/// from the bus, paged (through the cache, cold and warm) or not, and the
/// instruction runs.
#[test]
fn code_outside_ram_is_fetched_from_the_mmio_bus() {
    const ROM: u64 = 0x3000;
    for (mode, base, ram, addr16) in segmentation_modes() {
        // The mode's RAM (with its page tables), the code page a hole.
        let mut ram = ram.hole(ROM, ROM + 0x1000);
        let insn: Vec<u8> = if addr16 {
            vec![0x89, 0x07]
        } else {
            vec![0x89, 0x03]
        };
        let mut bus = RomAndDevice {
            at: ROM,
            code: insn,
            code_reads: Vec::new(),
            writes: Vec::new(),
        };
        let mut cache = FetchCache::new();
        for round in 0..2 {
            let mut regs = base.clone();
            regs.rip = ROM;
            regs.gprs[3] = MMIO;
            regs.gprs[0] = 0x1122_3344;
            let exit = MemExit {
                gpa: MMIO,
                access: AccessType::Write,
                instruction: &[],
            };
            let r = assist_mem_cached(&mut regs, &mut ram, &mut bus, &exit, &mut cache);
            assert_eq!(r, Ok(Outcome::Done), "{mode}, round {round}");
            assert_eq!(regs.rip, ROM + 2, "{mode}");
            assert_eq!(bus.code_reads.last(), Some(&(ROM, 15)), "{mode}");
            let size = if addr16 { 2 } else { 4 };
            assert_eq!(
                bus.writes.last(),
                Some(&(MMIO, 0x1122_3344u32.to_le_bytes()[..size].to_vec())),
                "{mode}"
            );
        }
        assert_eq!(bus.code_reads.len(), 2, "{mode}");
    }
}

/// Random changes between byte-less assists, each assist compared with a
/// cold one on copies: a bit of an entry of either tree's walk of the code
/// (P, R/W, U/S, A, PS, XD, an address bit; PS makes 2 MiB, 1 GiB and
/// 4 MiB pages, so walks of every length), CR0.WP, CR4.PSE, CR4.SMEP,
/// EFER.NXE, the CPL or CR3, and now and then everything back as set up
/// (with the cache kept). The warm assist gives the same result,
/// registers, MMIO accesses and RAM (accessed bits) as the cold one.
#[test]
fn random_changes_between_assists_agree_with_a_cold_walk() {
    use support::bits;
    let mut rng = support::Rng(0xF37C_4CAC_5EED);
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Write,
        instruction: &[],
    };
    for layout in LAYOUTS {
        let fresh = setup(layout);
        let mut s = setup(layout);
        let mut cache = s.warm();
        let mut entries = Vec::new();
        for level in 1..=levels(layout) {
            entries.push(s.pt.entry_gpa(&mut s.ram, CODE, level));
            entries.push(s.other.entry_gpa(&mut s.ram, CODE, level));
        }
        let mut stored = 0;
        for step in 0..600 {
            match rng.below(8) {
                0..=4 => {
                    let at = entries[rng.below(entries.len() as u64) as usize];
                    let mut choices = vec![pte::P, pte::RW, pte::US, pte::A, pte::PS, 1 << 13];
                    if layout != Layout::Bits32 {
                        choices.push(pte::XD);
                    }
                    let bit = choices[rng.below(choices.len() as u64) as usize];
                    let v = s.pt.get(&s.ram, at);
                    s.pt.set(&mut s.ram, at, v ^ bit);
                }
                5 => {
                    s.ram.mem.clone_from(&fresh.ram.mem);
                    s.regs = fresh.regs.clone();
                }
                _ => match rng.below(6) {
                    0 => s.regs.cr0 ^= bits::CR0_WP,
                    1 => s.regs.cr4 ^= bits::CR4_SMEP,
                    2 => s.regs.efer ^= bits::EFER_NXE,
                    3 if layout == Layout::Bits32 => s.regs.cr4 ^= bits::CR4_PSE,
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
            }
            s.regs.rip = CODE;
            let (mut regs, mut ram, mut mmio) = (s.regs.clone(), s.ram.clone(), s.mmio.clone());
            let cold = assist_mem(&mut regs, &mut ram, &mut mmio, &exit);
            let warm = assist_mem_cached(&mut s.regs, &mut s.ram, &mut s.mmio, &exit, &mut cache);
            let what = format!("{layout:?} step {step}");
            assert_eq!(warm, cold, "{what}");
            assert_eq!(s.regs, regs, "{what}");
            assert!(s.ram.mem == ram.mem, "{what}: RAM");
            assert_eq!(s.mmio.log, mmio.log, "{what}");
            stored += usize::from(warm == Ok(Outcome::Done));
        }
        // Not only faults (about half complete), and the cache served
        // many (most changes make it walk).

        assert!(stored > 150, "{layout:?}: {stored} completed");
        assert!(cache.hits() > 50, "{layout:?}: {} hits", cache.hits());
    }
}

/// What the cache costs in RAM reads: a hit reads each cached entry once
/// and the code once; a miss after a changed leaf reads the entries up to
/// the changed one, then walks (each entry once more), then the code.
#[test]
fn a_hit_and_a_miss_read_each_entry_once_per_pass() {
    for layout in LAYOUTS {
        let n = levels(layout) as usize;
        let mut s = setup(layout);
        let mut cache = s.warm();
        let before = s.ram.reads;
        assert_eq!(s.run(&mut cache), Ok(4));
        assert_eq!(s.ram.reads - before, n + 1, "{layout:?}: hit");
        let leaf = s.pt.entry_gpa(&mut s.ram, CODE, 1);
        let theirs = s.other.entry_gpa(&mut s.ram, CODE, 1);
        let value = s.other.get(&s.ram, theirs);
        s.pt.set(&mut s.ram, leaf, value);
        let before = s.ram.reads;
        assert_eq!(s.run(&mut cache), Ok(1));
        assert_eq!(s.ram.reads - before, 2 * n + 1, "{layout:?}: miss");
        assert_eq!((cache.misses(), cache.hits()), (2, 2), "{layout:?}");
    }
}

/// The cache keeps two code pages: an instruction that straddles a page
/// edge, and code that exits from two pages in turn, are served from it
/// after the first walks (and stay exact: a rewritten leaf of either page
/// is seen).
#[test]
fn two_code_pages_are_kept() {
    for layout in LAYOUTS {
        let mut s = setup(layout);
        // A second code page right after CODE, mapped to page C.
        const PAGE_C: u64 = 0x7000;
        s.pt.map(&mut s.ram, CODE + 0x1000, PAGE_C, 1, pte::PWU);
        // `mov [ebx], eax` straddling CODE's end: 0x89 on A, 0x03 on C.
        s.ram.put(PAGE_A + 0xFFF, &[0x89]);
        s.ram.put(PAGE_C, &[0x03]);
        // `mov [ebx], al` at the start of C's second half.
        s.ram.put(PAGE_C + 0x800, &AT_B);
        let mut cache = FetchCache::new();
        let exit = MemExit {
            gpa: MMIO,
            access: AccessType::Write,
            instruction: &[],
        };
        let at = |s: &mut Setup, cache: &mut FetchCache, rip: u64| {
            s.regs.rip = rip;
            let r = assist_mem_cached(&mut s.regs, &mut s.ram, &mut s.mmio, &exit, cache);
            assert_eq!(r, Ok(Outcome::Done), "{layout:?} at {rip:#x}");
            s.mmio.log.last().map_or(0, |a| a.data.len())
        };
        // Straddling: two walks the first time, none after.
        assert_eq!(at(&mut s, &mut cache, CODE + 0xFFF), 4);
        assert_eq!(cache.misses(), 2, "{layout:?}");
        for _ in 0..3 {
            assert_eq!(at(&mut s, &mut cache, CODE + 0xFFF), 4);
        }
        assert_eq!(cache.misses(), 2, "{layout:?}: the straddling fetch walks");
        // Two pages in turn: CODE (A) and CODE + 0x1800 (C).
        s.ram.put(PAGE_A, &AT_A);
        for _ in 0..3 {
            assert_eq!(at(&mut s, &mut cache, CODE), 4);
            assert_eq!(at(&mut s, &mut cache, CODE + 0x1800), 1);
        }
        assert_eq!(cache.misses(), 2, "{layout:?}: alternating pages walk");
        // Still exact: C's leaf now maps page B (`mov [ebx], al` at 0).
        let leaf_c = s.pt.entry_gpa(&mut s.ram, CODE + 0x1000, 1);
        s.pt.set(&mut s.ram, leaf_c, PAGE_B | pte::PWU | pte::A);
        s.ram.put(PAGE_B + 0x800, &AT_A);
        assert_eq!(at(&mut s, &mut cache, CODE + 0x1800), 4, "{layout:?}");
        assert_eq!(at(&mut s, &mut cache, CODE), 4, "{layout:?}");
        assert_eq!(cache.misses(), 3, "{layout:?}");
    }
}

/// The guest rewrites its code between two assists, without any exit:
/// each assist runs the instruction now at CS:RIP whatever the one before
/// was (another lane of the fast path, the full fast path, the general
/// path), exactly as an assist with a cold cache does. The fetch path
/// guesses the lane of the bytes it fetches from the last one's; a wrong
/// guess must cost time only.
#[test]
fn rewritten_code_of_another_lane_runs_as_written() {
    let codes: [&[u8]; 14] = [
        &[0x89, 0x03],             // mov [rbx], eax
        &[0x88, 0x03],             // mov [rbx], al
        &[0x01, 0x03],             // add [rbx], eax
        &[0x85, 0x03],             // test [rbx], eax
        &[0xFF, 0x03],             // inc dword [rbx]
        &[0xF0, 0x0F, 0xC1, 0x03], // lock xadd [rbx], eax
        &[0x0F, 0xB6, 0x03],       // movzx eax, byte [rbx]
        &[0x66, 0x89, 0x03],       // mov [rbx], ax
        &[0xAA],                   // stosb
        &[0xAC],                   // lodsb
        &[0x0F, 0x11, 0x03],       // movups [rbx], xmm0
        &[0xFF, 0x33],             // push [rbx]
        &[0xF3, 0xAA],             // rep stosb (the general path)
        &[0x0F, 0x0B],             // ud2 (#UD)
    ];
    let mut rng = support::Rng(0x1A7E_5EED);
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Write,
        instruction: &[],
    };
    for layout in [Layout::Bits32, Layout::Level4] {
        let mut s = setup(layout);
        // The string forms' operands at the MMIO page too.
        s.regs.gprs[6] = MMIO;
        s.regs.gprs[7] = MMIO;
        let fresh = s.regs.clone();
        let mut cache = FetchCache::new();
        let mut done = 0;
        for step in 0..400 {
            let code = codes[rng.below(codes.len() as u64) as usize];
            let mut bytes = [0x90u8; 15];
            bytes[..code.len()].copy_from_slice(code);
            s.ram.put(PAGE_A, &bytes);
            s.regs = fresh.clone();
            s.regs.gprs[1] = 3;
            s.regs.rip = CODE;
            let (mut regs, mut ram, mut mmio) = (s.regs.clone(), s.ram.clone(), s.mmio.clone());
            let cold = assist_mem(&mut regs, &mut ram, &mut mmio, &exit);
            let warm = assist_mem_cached(&mut s.regs, &mut s.ram, &mut s.mmio, &exit, &mut cache);
            let what = format!("{layout:?} step {step} {code:02x?}");
            assert_eq!(warm, cold, "{what}");
            assert_eq!(s.regs, regs, "{what}");
            assert!(s.ram.mem == ram.mem, "{what}: RAM");
            assert_eq!(s.mmio.log, mmio.log, "{what}");
            done += usize::from(warm.is_ok());
        }
        assert!(done > 250, "{layout:?}: {done} completed");
        assert!(cache.hits() > 350, "{layout:?}: {} hits", cache.hits());
    }
}
