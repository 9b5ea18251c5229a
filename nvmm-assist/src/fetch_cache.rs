//! A per-VCPU cache of the instruction fetch at CS:RIP (its segmentation
//! check and its translation), for exits that carry no instruction bytes
//! (VMX; SVM without DecodeAssists), where every assist fetches at CS:RIP
//! through segmentation and the page walker. It keeps the two most
//! recently used code pages, so that an instruction that straddles a page
//! edge, or code that exits from two pages in turn, is served too (a
//! straddling `mov` costs about 1,900 instructions with two slots against
//! 3,000 with one, which walks both pages on every exit).
//!
//! **Data translations.** It also keeps the last four data translations
//! (the stack slot of PUSH m / POP m, the RAM side of MOVS and CMPS, an
//! operand that crosses a page: every operand the assist translates
//! rather than taking the exit's GPA), used by the memory assist and
//! available to callers as [`FetchCache::translate_data`]. They are
//! re-validated the same way (every entry the walk read, then CR0, CR3,
//! CR4, EFER, RFLAGS.VM, RFLAGS.AC, the CPL, MAXPHYADDR and the linear
//! page, which are all the inputs of the walk and of its permission
//! checks). Besides, a cached data translation serves only an access it
//! proves allowed with nothing to write: one of the same type, or a read
//! after a write (the write's walk passed stricter checks and set every
//! accessed bit). A write after a read-only translation walks, which
//! checks R/W and sets the dirty bit, as does a write whose cached walk
//! found D clear (its entries would then differ: the walk sets D).
//! The two translations of one instruction (both sides of MOVS/CMPS, the
//! stack slot and the operand of PUSH m / POP m) read an entry their walks
//! share once for both, as if both walks read it at that instant; every
//! other entry is read for each (the rule in full: `data_cache.rs`). The
//! data slots hold one control state: a change of CR3, the CPL or any
//! other walk input empties them, so a guest that switches address spaces
//! walks once more after each switch.
//!
//! The assist stays stateless: the cache is a plain value the caller owns,
//! one per VCPU, and passes to [`assist_mem_cached`](crate::assist_mem_cached)
//! (the `nvmm` crate keeps one in each `Vcpu`). It can be dropped, cloned or
//! reset ([`FetchCache::clear`]) at any time; an empty or stale cache only
//! costs a full check and walk.
//!
//! **Exactness.** The guest can rewrite its page tables without any exit
//! (and INVLPG and CR3 loads need not exit either), so a cached translation
//! is never trusted as is. It is used only after checking that
//! - CR0, CR3, CR4, EFER, RFLAGS.VM, the CPL and MAXPHYADDR
//!   equal what they were when the walk was made, and the linear page is
//!   the same, and
//! - every paging-structure entry the walk read still holds the value it
//!   had after that walk's accessed-bit update (each is read again from
//!   guest RAM, on every use).
//!
//! The walk is a function of exactly these inputs, so when they all match, a
//! new walk would read the same entries, reach the same page with the same
//! rights and find every accessed bit already set (it would write nothing):
//! the cached result is the walk's result. A changed entry or state falls
//! back to the full walk, which reports whatever the guest's tables now
//! say; an entry that cannot be read again (a bus error, or no longer RAM)
//! gives the error the walk would give there, since the entries above it
//! still lead to it. Only execute accesses use
//! the fetch slots (an execute translation sets no dirty bit and does not
//! depend on RFLAGS.AC); data accesses have their own slots (below).
//!
//! **Segmentation** is not cached: every fetch makes its own check through
//! CS first (inline for the usual cases, which costs less than a key
//! holding CS would), and only its linear address reaches the cache. With
//! paging off nothing is cached. The instruction bytes themselves are read
//! again every time (self-modifying code), so is every entry.

use crate::access::{AccessType, PAGE_SIZE};
use crate::bus::{BusError, EntryCheck, GuestRam};
use crate::data_cache::DataSlots;
use crate::error::Error;
use crate::state::CpuState;
use crate::translate::{WalkRecord, translate_recorded};

const RFLAGS_VM: u64 = 1 << 17;
const CR0_PG: u64 = 1 << 31;

/// The state a cached fetch translation depends on besides the entries:
/// every input of the walk and of its permission checks for an execute
/// access (the paging mode and the control-state check come from CR0, CR4,
/// EFER and RFLAGS.VM; the reserved bits from EFER.NXE and MAXPHYADDR; the
/// rights from the CPL, CR4.SMEP and EFER.NXE), and the linear page.
///
/// An empty slot has CR0 = 0: with CR0.PG clear nothing is cached or
/// looked up, so an empty slot never matches and a lookup needs no
/// separate emptiness test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    /// The linear page (address >> 12, below 2^52) in bits 51:0, the CPL
    /// in bits 54:52 (values above 4 as 4: the walk only asks whether it
    /// is 3, so this is stricter than that question and still tells 3
    /// apart), RFLAGS.VM in bit 55 and MAXPHYADDR in bits 63:56, compared
    /// at once. The CPL itself rather than whether it is 3: from a CpuState
    /// that computes it (the default `cpl`), it costs fewer instructions on
    /// every lookup (8 fewer in the bench's fetch rows), and a slot made at
    /// CPL 0 that CPL 1 or 2 cannot use only walks once more.
    page: u64,
}

impl Key {
    #[inline(always)]
    fn of<S: CpuState + ?Sized>(state: &S, linear: u64) -> Key {
        Key {
            cr0: state.cr0(),
            cr3: state.cr3(),
            cr4: state.cr4(),
            efer: state.efer(),
            page: linear >> 12
                | u64::from(state.cpl().min(4)) << 52
                | (state.rflags() & RFLAGS_VM) << (55 - 17)
                | u64::from(state.max_phys_addr()) << 56,
        }
    }

    /// Whether `self` and `other` are equal, as `==`, written as one OR of
    /// XORs (every field is compared on a hit anyway).
    #[inline(always)]
    fn same_as(&self, other: &Key) -> bool {
        ((self.page ^ other.page)
            | (self.cr3 ^ other.cr3)
            | (self.cr0 ^ other.cr0)
            | (self.cr4 ^ other.cr4)
            | (self.efer ^ other.efer))
            == 0
    }
}

/// Re-validation of a cached walk: whether every entry still holds its
/// recorded value, read again from guest RAM top level first as the walk
/// reads them ([`GuestRam::check_entries`], which a RAM implementation can
/// make one bounds test and one comparison for the whole walk). An entry
/// that is no longer RAM is the walk's own result: the entries above it
/// held their recorded values, so a full walk would take the same path and
/// read the same entry next. A bus error is returned as is.
///
/// The shape of a walk record picks how many entries of which width the
/// re-validation passes: the usual ones with a constant count, so that an
/// inlined `check_entries` reads them in a row (its loop unrolled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Four 8-byte entries: a 4 KiB page under 4-level paging.
    Wide4,
    /// Three 8-byte entries: a 2 MiB page under 4-level paging (a 64-bit
    /// kernel's text), a 4 KiB page under PAE paging.
    Wide3,
    /// Two 4-byte entries: a 4 KiB page under 32-bit paging.
    Narrow2,
    /// Anything else (1 GiB pages, large pages under PAE or 32-bit
    /// paging, 5-level paging).
    Other,
}

impl Shape {
    #[inline(always)]
    fn of(walk: &WalkRecord) -> Shape {
        match (walk.count, walk.wide) {
            (4, true) => Shape::Wide4,
            (3, true) => Shape::Wide3,
            (2, false) => Shape::Narrow2,
            _ => Shape::Other,
        }
    }
}

/// Whether the entries of the cached walk `c` still hold their values
/// (see [`Shape`]).
#[inline(always)]
fn holds<R: GuestRam + ?Sized>(ram: &mut R, c: &Cached) -> Result<bool, Error> {
    let walk = &c.walk;
    // The 4-level case first, with one test, then 32-bit paging's, each
    // on a flag of its own: tests of one shape field became a jump table
    // (or a chain of compares in another order), with the spills of every
    // shape's cold path at its head.
    let check = if c.wide4 {
        ram.check_entries(&walk.entries[..4], true)?
    } else if c.narrow2 {
        ram.check_entries(&walk.entries[..2], false)?
    } else if c.shape == Shape::Wide3 {
        ram.check_entries(&walk.entries[..3], true)?
    } else {
        holds_any(ram, walk)?
    };
    match check {
        EntryCheck::Held => Ok(true),
        EntryCheck::Changed { .. } => Ok(false),
        EntryCheck::NotRam { gpa } => Err(not_ram(gpa)),
    }
}

/// The re-validation of any record (out of line: the rarer shapes).
#[inline(never)]
fn holds_any<R: GuestRam + ?Sized>(ram: &mut R, walk: &WalkRecord) -> Result<EntryCheck, BusError> {
    let used = walk.entries.get(..walk.count).unwrap_or(&walk.entries);
    ram.check_entries(used, walk.wide)
}

/// The error of an entry that is no longer in RAM: out of line and cold,
/// so that the re-validation's straight path does not prepare it.
#[cold]
#[inline(never)]
fn not_ram(gpa: u64) -> Error {
    Error::PageTableNotRam { gpa }
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    /// CR0 = 0 for an empty slot.
    key: Key,
    /// The guest-physical page's address (its low 12 bits clear: a hit
    /// ORs in the page offset, with no shift).
    gpa_page: u64,
    /// The paging-structure entries the walk read, top level first, with
    /// the values they held after its accessed-bit update.
    walk: WalkRecord,
    /// `Shape::of(&walk)`, kept so that a hit picks its reads at once.
    shape: Shape,
    /// Whether `shape` is [`Shape::Wide4`].
    wide4: bool,
    /// Whether `shape` is [`Shape::Narrow2`].
    narrow2: bool,
}

/// An empty slot: its CR0 (0, paging off) is never looked up.
const EMPTY: Cached = Cached {
    key: Key {
        cr0: 0,
        cr3: 0,
        cr4: 0,
        efer: 0,
        page: 0,
    },
    gpa_page: 0,
    walk: WalkRecord {
        entries: [(0, 0); 5],
        count: 0,
        wide: false,
    },
    shape: Shape::Other,
    wide4: false,
    narrow2: false,
};

/// How many translations a [`FetchCache`] keeps: two, so that an
/// instruction that straddles a page edge, or code that exits from two
/// pages in turn, does not walk on every exit.
const SLOTS: usize = 2;

/// The last instruction-fetch and data translations of one VCPU,
/// re-validated before every use (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct FetchCache {
    slots: [Cached; SLOTS],
    /// The data translations (the memory assist's two-operand forms use
    /// them directly: `DataSlots::translate_pair`, `share_walks`).
    pub(crate) data: DataSlots,
    /// The slot a miss fills next: the one not filled last (a hit leaves
    /// it, which keeps the hit path short).
    victim: usize,
    hits: u64,
    misses: u64,
}

impl Default for FetchCache {
    fn default() -> FetchCache {
        FetchCache::new()
    }
}

impl FetchCache {
    /// An empty cache.
    pub const fn new() -> FetchCache {
        FetchCache {
            slots: [EMPTY; SLOTS],
            data: DataSlots::new(),
            victim: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Forgets the cached translations.
    pub fn clear(&mut self) {
        self.slots = [EMPTY; SLOTS];
        self.victim = 0;
        self.data.clear();
    }

    /// The slot holding `key`, if any.
    #[inline(always)]
    fn find(&self, key: &Key) -> Option<usize> {
        let [a, b] = &self.slots;
        if a.key.same_as(key) {
            Some(0)
        } else if b.key.same_as(key) {
            Some(1)
        } else {
            None
        }
    }

    /// How many instruction-fetch translations were served from the cache
    /// after re-validation.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// How many instruction-fetch translations needed a full walk (empty
    /// cache, another page or state, or an entry that changed).
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// How many data translations were served from the cache after
    /// re-validation.
    pub fn data_hits(&self) -> u64 {
        self.data.hits
    }

    /// How many data translations needed a full walk (with paging on).
    pub fn data_misses(&self) -> u64 {
        self.data.misses
    }

    /// Translates `linear` for a data access (`Read` or `Write`; an
    /// `Execute` translation is cached apart from the fetch slots) of the
    /// current state, exactly as [`translate`](fn@crate::translate) does:
    /// the same guest-physical address, the same fault or error, the same
    /// accessed/dirty updates. A cached translation of the page is used
    /// after re-validating it (every entry its walk read still holds its
    /// value, the control state, CPL, RFLAGS.AC and MAXPHYADDR match, and
    /// it was made for this access or, serving a read, for a write; see
    /// the [module documentation](self)); otherwise the page is walked and the walk
    /// cached. With paging off this is [`translate`](fn@crate::translate).
    ///
    /// The caller has made the access's segmentation check (the linear
    /// address is what it translates). For an access that crosses a page,
    /// translate each page.
    #[inline]
    pub fn translate_data<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        linear: u64,
        access: AccessType,
    ) -> Result<u64, Error> {
        self.data.translate(state, ram, linear, access)
    }

    /// The guest-physical address of the instruction fetch at `linear`
    /// when the cache proves its translation current, `Ok(None)` when it
    /// cannot (the caller then walks, [`translate_fetch_miss`](Self::translate_fetch_miss)).
    /// Paging is on, and the caller has made the fetch's segmentation
    /// check at `linear` (the cache holds translations only).
    #[inline(always)]
    pub(crate) fn lookup<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        linear: u64,
    ) -> Result<Option<u64>, Error> {
        let key = Key::of(state, linear);
        Ok(self
            .validated(ram, &key)?
            .map(|gpa_page| gpa_page | (linear & (PAGE_SIZE - 1))))
    }

    /// The guest-physical page of the slot holding `key`, if its entries
    /// still hold their values (a hit).
    #[inline(always)]
    fn validated<R: GuestRam + ?Sized>(
        &mut self,
        ram: &mut R,
        key: &Key,
    ) -> Result<Option<u64>, Error> {
        let [a, b] = &self.slots;
        let c = if a.key.same_as(key) {
            a
        } else if b.key.same_as(key) {
            b
        } else {
            return Ok(None);
        };
        if !holds(ram, c)? {
            return Ok(None);
        }
        let gpa_page = c.gpa_page;
        self.hits += 1;
        Ok(Some(gpa_page))
    }

    /// Translates `linear` for an instruction fetch, as
    /// [`translate`](fn@crate::translate) does, using and refreshing the
    /// cache. The caller has checked the fetch's segmentation
    /// ([`linear_address`](crate::linear_address), execute access through
    /// CS) at `linear`: the cache holds translations only.
    #[inline]
    pub(crate) fn translate_fetch<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        linear: u64,
    ) -> Result<u64, Error> {
        if state.cr0() & CR0_PG == 0 {
            // No paging: nothing to walk, nothing to cache. (The assists
            // have checked the control state, CpuMode::try_of, before any
            // fetch.)
            return Ok(linear & 0xFFFF_FFFF);
        }
        let key = Key::of(state, linear);
        if let Some(gpa_page) = self.validated(ram, &key)? {
            return Ok(gpa_page | (linear & 0xFFF));
        }
        self.walk(state, ram, linear, key)
    }

    /// [`translate_fetch`](Self::translate_fetch) after a failed
    /// [`lookup`](Self::lookup) of the same fetch: the full walk, without
    /// validating the cached entries a second time.
    pub(crate) fn translate_fetch_miss<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        linear: u64,
    ) -> Result<u64, Error> {
        if state.cr0() & CR0_PG == 0 {
            return Ok(linear & 0xFFFF_FFFF);
        }
        self.walk(state, ram, linear, Key::of(state, linear))
    }

    /// The full walk of a miss, whose record replaces the slot with the
    /// same key (its entries changed) or else the victim.
    #[inline(never)]
    fn walk<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        linear: u64,
        key: Key,
    ) -> Result<u64, Error> {
        self.misses += 1;
        let i = self.find(&key).unwrap_or(self.victim) & 1;
        self.victim = i ^ 1;
        let Some(slot) = self.slots.get_mut(i) else {
            return Err(Error::InconsistentExit);
        };
        // The walk records its entries straight into the cache's slot,
        // which is empty (its page matches nothing) until the walk succeeds.
        *slot = EMPTY;
        let result = translate_recorded(
            state,
            ram,
            linear,
            AccessType::Execute,
            Some(&mut slot.walk),
        );
        // A walk with paging on reads one entry at least.
        if let Ok(gpa) = result
            && slot.walk.count > 0
        {
            slot.key = key;
            slot.gpa_page = gpa & !(PAGE_SIZE - 1);
            slot.shape = Shape::of(&slot.walk);
            slot.wide4 = slot.shape == Shape::Wide4;
            slot.narrow2 = slot.shape == Shape::Narrow2;
        }
        result
    }
}
