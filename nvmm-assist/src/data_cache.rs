//! The data-translation half of [`FetchCache`](crate::FetchCache): the last
//! few linear-to-physical translations of data accesses (the stack slot of
//! PUSH m / POP m, the RAM side of MOVS and CMPS, any operand that is not
//! at the exit's GPA), re-validated before every use exactly as the fetch
//! translations are.
//!
//! **Exactness.** A cached translation is used only when
//! - CR0, CR3, CR4, EFER, RFLAGS.VM and RFLAGS.AC, the CPL and MAXPHYADDR
//!   equal what they were when the walk was made, and the linear page is
//!   the same: these are every input of the walk and of its permission
//!   checks besides the entries (the paging mode and control-state check
//!   come from CR0/CR4/EFER/RFLAGS.VM; the reserved bits from EFER.NXE and
//!   MAXPHYADDR; the rights from the CPL, CR0.WP, CR4.SMAP/SMEP,
//!   RFLAGS.AC and EFER.NXE; protection keys are not modelled by the
//!   walker, see [`translate`](fn@crate::translate));
//! - the cached walk was made for an access that needs at least the
//!   rights and the accessed/dirty state of this one: the same access
//!   type, or a write serving a read (a write that was allowed implies the
//!   read is, for user and supervisor accesses alike, and it left every
//!   accessed bit set); and
//! - every entry the walk read still holds the value it had after that
//!   walk's accessed/dirty update (each read again, on every use; see
//!   below for the one read that serves two walks).
//!
//! Then a new walk would read the same entries, make the same checks with
//! the same result, and find every accessed bit (and, for a write, the
//! leaf's dirty bit) already set: it would write nothing, so the cached
//! page is its result. A read-only cached translation never serves a
//! write (the walk must set D, and check R/W), and anything else that
//! differs takes the full walk, which sets A/D or faults as the tables now
//! say. An entry that cannot be read again gives the error the walk would
//! give there (the entries above it still lead to it).
//!
//! **The control state** (everything above but the linear page and the
//! access) is kept once for all slots, not per slot: the slots are those
//! of the last control state seen, and a translation under another one
//! empties them first. It is compared once per translation, or once for
//! both operands of a pair ([`DataSlots::translate_pair`]), and a slot is
//! then found by its linear page alone. (A guest that switches control
//! state between exits, say CR3 on a task switch, walks once after each
//! switch; a slot of another control state could not serve anyway.)
//!
//! **Shared entries.** The two operands of one instruction (MOVS, CMPS,
//! PUSH m, POP m) are translated one after the other with no guest-memory
//! access between them. When their walks start with the same entries
//! (the same GPAs holding the same recorded values: both pages in the same
//! 2 MiB or 1 GiB region, say), the second re-validation takes the entries
//! the first one has just read (or written, for a walk) instead of reading
//! them again. One read serves both walks, as if the second walk had read
//! those entries at the same instant as the first, top level first as
//! always: a valid interleaving with whatever the guest's other VCPUs do,
//! and every entry is still read on this use. Only consecutive
//! translations within one instruction share (the fast path's
//! [`DataSlots::translate_pair`], the general path's
//! [`DataSlots::share_walks`] scope around the operands' translations), never
//! translations of different assists, and the general path shares exactly
//! where the fast path does, so both make the same guest-RAM reads.
//!
//! **The pair record.** The fast path's [`DataSlots::translate_pair`]
//! keeps its last pair's slots with the entries their re-validations read,
//! in one list: a warm pair is then one comparison (the control state and
//! both pages) and one [`GuestRam::check_entries`] call, the same reads
//! in the same order as the two slot hits, with the same hits and misses
//! (the entry that decides says which slot the slot path finds changed).
//! It mirrors the slots and is dropped whenever a slot changes (see
//! `Pair`), so both paths still read, walk and count alike.
//!
//! **The probe.** The fast path's stack and string lanes take the warm
//! pair alone ([`DataSlots::probe_pair`]: the record's comparison and
//! check, the same reads and hits as [`DataSlots::translate_pair`] makes
//! there). Anything else, they leave to the full fast path behind them,
//! having changed nothing, which translates the pair from the start: an
//! entry the probe found changed is then read again (a plain RAM read,
//! without effect; the rules above hold for each of the two uses), and
//! the hits, misses and walks are those of one `translate_pair`.

use crate::access::AccessType;
use crate::bus::{EntryCheck, GuestRam, RamStatus};
use crate::error::Error;
use crate::state::CpuState;
use crate::translate::{WalkRecord, translate, translate_recorded};

const CR0_PG: u64 = 1 << 31;
const RFLAGS_VM: u64 = 1 << 17;
const RFLAGS_AC: u64 = 1 << 18;

/// How many data translations are kept: enough for the stack page and
/// both sides of a string instruction, plus one.
pub(crate) const DATA_SLOTS: usize = 4;

/// The state every cached data translation depends on besides the
/// entries, the linear page and the access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Control {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    /// RFLAGS.VM and RFLAGS.AC (bits 17 and 18), the CPL (bits 39:32) and
    /// MAXPHYADDR (bits 47:40).
    packed: u64,
}

impl Control {
    #[inline(always)]
    fn of<S: CpuState + ?Sized>(state: &S) -> Control {
        Control {
            cr0: state.cr0(),
            cr3: state.cr3(),
            cr4: state.cr4(),
            efer: state.efer(),
            packed: (state.rflags() & (RFLAGS_VM | RFLAGS_AC))
                | u64::from(state.cpl()) << 32
                | u64::from(state.max_phys_addr()) << 40,
        }
    }

    /// `==`, as one OR of XORs.
    #[inline(always)]
    fn same_as(&self, other: &Control) -> bool {
        ((self.cr0 ^ other.cr0)
            | (self.cr3 ^ other.cr3)
            | (self.cr4 ^ other.cr4)
            | (self.efer ^ other.efer)
            | (self.packed ^ other.packed))
            == 0
    }
}

/// The rights a successful walk for `access` proves, with nothing left to
/// write: a write's walk proves the read too (bit 0 read, 1 write, 2
/// execute).
#[inline(always)]
fn proves(access: AccessType) -> u8 {
    match access {
        AccessType::Read => 0b001,
        AccessType::Write => 0b011,
        AccessType::Execute => 0b100,
    }
}

/// The right `access` needs ([`proves`]'s bits).
#[inline(always)]
fn needs(access: AccessType) -> u8 {
    match access {
        AccessType::Read => 0b001,
        AccessType::Write => 0b010,
        AccessType::Execute => 0b100,
    }
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    /// The linear page (address >> 12); [`EMPTY_PAGE`] for an empty slot.
    page: u64,
    /// What the walk proves ([`proves`] of the access it was made for).
    rights: u8,
    /// The guest-physical page (address >> 12).
    gpa_page: u64,
    /// The entries the walk read, after its accessed/dirty update.
    walk: WalkRecord,
}

/// The `page` of an empty slot, which no linear page is (they are below
/// 2^52), so that an empty slot never matches.
const EMPTY_PAGE: u64 = u64::MAX;

const EMPTY: Cached = Cached {
    page: EMPTY_PAGE,
    rights: 0,
    gpa_page: 0,
    walk: WalkRecord {
        entries: [(0, 0); 5],
        count: 0,
        wide: false,
    },
};

/// The last pair of translations ([`DataSlots::translate_pair`]): the
/// slots that served it and what the slot path reads to re-validate them
/// (the source's entries, then the destination's below those it shares
/// with the source), in one list, so that a warm pair is one comparison
/// and one [`GuestRam::check_entries`] call instead of two slot searches
/// (the entry that decides, [`EntryCheck::Changed`]'s `index`, says which
/// of the two the slot path would have found changed).
/// A shortcut of the slot path, not a cache of its own: it is dropped
/// whenever a slot changes (any walk, a clear), and made only when the
/// slot searches of the same pages and accesses find `s` and `d`, so a
/// pair it serves is one the slots serve, with the same reads, hits and
/// misses (the general path, which translates one operand at a time,
/// counts and reads the same).
#[derive(Debug, Clone, Copy)]
struct Pair {
    /// The source's linear page; [`EMPTY_PAGE`] for no record.
    src: u64,
    /// The destination's linear page.
    dst: u64,
    /// [`needs`] of the destination's access.
    dst_need: u8,
    /// Whether the entries are 8 bytes wide (both walks are under the
    /// same paging mode).
    wide: bool,
    /// The slots of the source and the destination.
    s: usize,
    d: usize,
    /// The guest-physical pages of the source and the destination, as
    /// addresses (the page offset zero), which the offsets complete.
    src_gpa_base: u64,
    dst_gpa_base: u64,
    /// Slot `s`'s entries (the first `src_count`), then the destination
    /// slot's past those it shares with `s`: `count` in all.
    entries: [(u64, u64); 10],
    count: usize,
    src_count: usize,
    /// [`shape`] of `count` and `wide`: the common shapes' checks are
    /// one dispatch on it, each with its count and width constants.
    shape: u8,
}

/// A pair record's count and width as one byte (the count below 16).
#[inline(always)]
const fn shape(count: usize, wide: bool) -> u8 {
    (count as u8 & 0xF) | (wide as u8) << 4
}

/// [`shape`] of two 4-level walks that share all but the destination's
/// leaf (both pages in one 2 MiB region, as a stack and a nearby
/// operand usually are): the source's four entries and one.
const WIDE_5: u8 = shape(5, true);
/// [`shape`] of two 32-bit-paging walks that share all but the leaf.
const NARROW_3: u8 = shape(3, false);

const NO_PAIR: Pair = Pair {
    src: EMPTY_PAGE,
    dst: EMPTY_PAGE,
    dst_need: 0,
    wide: false,
    s: NONE,
    d: NONE,
    src_gpa_base: 0,
    dst_gpa_base: 0,
    entries: [(0, 0); 10],
    count: 0,
    src_count: 0,
    shape: 0,
};

/// Where [`DataSlots::translate_pair_slots`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The slot path from the start.
    Fresh,
    /// The pair's source entries changed: the source's walk.
    SrcChanged,
    /// The source was served (at this GPA); the pair's destination
    /// entries changed: the destination's walk.
    DstChanged(u64),
}

/// What [`DataSlots::probe_pair`] leaves to
/// [`DataSlots::translate_pair_rest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairMiss {
    /// No pair record of these pages, accesses and control state (or
    /// paging off): the slot path from the start.
    Fresh,
    /// The pair record's check found this (not [`EntryCheck::Held`]).
    Check(EntryCheck),
}

/// What [`DataSlots::probe_pair`] gives: the two addresses (the warm
/// pair), what it left, or the RAM's error.
pub(crate) type PairProbe = Result<Result<(u64, u64), PairMiss>, Error>;

/// No previous translation to share entries with: the row of
/// [`DataSlots::shared`] that shares nothing.
const NONE: usize = DATA_SLOTS;

/// The data translations of one VCPU.
#[derive(Debug, Clone)]
pub(crate) struct DataSlots {
    /// The control state of every filled slot.
    control: Control,
    slots: [Cached; DATA_SLOTS],
    /// `shared[a][b]`: how many entries the walks of slots `a` and `b`
    /// start with in common ([`shared_prefix`]), kept up to date whenever
    /// a slot's walk changes (a walk, a clear), so that a hit does not
    /// compare the records. Row [`NONE`] is zeros.
    shared: [[u8; DATA_SLOTS]; DATA_SLOTS + 1],
    /// The slot a miss fills next (round robin).
    victim: usize,
    /// The last pair, of the slots' control state.
    pair: Pair,
    /// Within a [`share_walks`](Self::share_walks) scope.
    sharing: bool,
    /// Within a scope, the slot of the previous translation (its entries
    /// as just read or written), [`NONE`] before the first; always
    /// [`NONE`] outside.
    prev: usize,
    pub hits: u64,
    pub misses: u64,
}

impl DataSlots {
    pub(crate) const fn new() -> DataSlots {
        DataSlots {
            control: Control {
                cr0: 0,
                cr3: 0,
                cr4: 0,
                efer: 0,
                packed: 0,
            },
            slots: [EMPTY; DATA_SLOTS],
            shared: [[0; DATA_SLOTS]; DATA_SLOTS + 1],
            victim: 0,
            pair: NO_PAIR,
            sharing: false,
            prev: NONE,
            hits: 0,
            misses: 0,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.slots = [EMPTY; DATA_SLOTS];
        self.shared = [[0; DATA_SLOTS]; DATA_SLOTS + 1];
        self.victim = 0;
        self.pair = NO_PAIR;
        self.prev = NONE;
    }

    /// Makes the slots those of `state`'s control state: emptied if it
    /// is another one.
    #[inline(always)]
    fn enter<S: CpuState + ?Sized>(&mut self, state: &S) {
        let control = Control::of(state);
        if !control.same_as(&self.control) {
            self.control = control;
            self.clear();
        }
    }

    /// Runs `f` with the translations it makes sharing the entries they
    /// have in common with the one before ([module documentation](self)):
    /// `f` must make no guest-memory access and no state change the walks
    /// depend on between its translations (it translates the operands of
    /// one instruction). `slots` gives `x`'s cache.
    #[inline(always)]
    pub(crate) fn share_walks<X, T>(
        x: &mut X,
        slots: impl Fn(&mut X) -> &mut DataSlots,
        f: impl FnOnce(&mut X) -> T,
    ) -> T {
        let s = slots(x);
        s.sharing = true;
        s.prev = NONE;
        let result = f(x);
        let s = slots(x);
        s.sharing = false;
        s.prev = NONE;
        result
    }

    /// Translates `linear` for `access` as [`translate`] does, through the
    /// cache (see the [module documentation](self)).
    #[inline(always)]
    pub(crate) fn translate<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        linear: u64,
        access: AccessType,
    ) -> Result<u64, Error> {
        if state.cr0() & CR0_PG == 0 {
            // No paging: nothing to walk (the walker still checks the
            // control state).
            return translate(state, ram, linear, access);
        }
        self.enter(state);
        let (gpa, slot) = self.translate_after(state, ram, linear, access, self.prev)?;
        if self.sharing {
            self.prev = slot;
        }
        Ok(gpa)
    }

    /// The translations of a source (read) at `src` and then a
    /// destination (`dst_access`) at `dst`, as two [`translate`](Self::translate)
    /// calls in a [`share_walks`](Self::share_walks) scope make them (the
    /// same results, hits, walks and guest-RAM accesses), the control
    /// state compared once. (One difference, in the statistics only: a
    /// read that fails in the caller's RAM, an error the assist returns
    /// as is, leaves the hit counter as it was, where the slot path has
    /// counted the source's hit when the failing entry is the
    /// destination's.) [`probe_pair`](Self::probe_pair), then what it
    /// leaves, [`translate_pair_rest`](Self::translate_pair_rest).
    #[inline(always)]
    pub(crate) fn translate_pair<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        src: u64,
        dst: u64,
        dst_access: AccessType,
    ) -> Result<(u64, u64), Error> {
        match self.probe_pair(state, ram, src, dst, dst_access)? {
            Ok(pair) => Ok(pair),
            Err(miss) => self.translate_pair_rest(state, ram, src, dst, dst_access, miss),
        }
    }

    /// [`translate_pair`](Self::translate_pair)'s warm case alone: with
    /// paging on and the pair record of these pages and this control
    /// state, its one [`GuestRam::check_entries`] call; the two addresses
    /// if every entry held (two hits). Else ([`PairMiss`]) nothing is done
    /// but that check, and [`translate_pair_rest`](Self::translate_pair_rest)
    /// with the same arguments finishes the translations from there (or
    /// the caller leaves the pair to a `translate_pair` of its own: see
    /// "The probe" in the [module documentation](self)). It makes no call
    /// but the RAM's check, so that the fast path's lanes keep their
    /// values in registers on the warm path.
    #[inline(always)]
    pub(crate) fn probe_pair<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        src: u64,
        dst: u64,
        dst_access: AccessType,
    ) -> PairProbe {
        if state.cr0() & CR0_PG == 0 {
            return Ok(Err(PairMiss::Fresh));
        }
        // The control state and both pages in one test (the pair record
        // is of `self.control`'s state: `clear` empties it).
        let (c, p) = (Control::of(state), &self.pair);
        let o = &self.control;
        let differ = (c.cr0 ^ o.cr0)
            | (c.cr3 ^ o.cr3)
            | (c.cr4 ^ o.cr4)
            | (c.efer ^ o.efer)
            | (c.packed ^ o.packed)
            | ((src >> 12) ^ p.src)
            | ((dst >> 12) ^ p.dst);
        if differ == 0 && p.dst_need == needs(dst_access) {
            let check = pair_check(ram, p)?;
            if check == EntryCheck::Held {
                self.hits += 2;
                let (src_gpa_base, dst_gpa_base) = (p.src_gpa_base, p.dst_gpa_base);
                return Ok(Ok((
                    src_gpa_base | (src & 0xFFF),
                    dst_gpa_base | (dst & 0xFFF),
                )));
            }
            return Ok(Err(PairMiss::Check(check)));
        }
        Ok(Err(PairMiss::Fresh))
    }

    /// The rest of [`translate_pair`](Self::translate_pair) after
    /// [`probe_pair`](Self::probe_pair) of the same arguments found `miss`.
    #[inline(always)]
    pub(crate) fn translate_pair_rest<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        src: u64,
        dst: u64,
        dst_access: AccessType,
        miss: PairMiss,
    ) -> Result<(u64, u64), Error> {
        if state.cr0() & CR0_PG == 0 {
            let src = translate(state, ram, src, AccessType::Read)?;
            return Ok((src, translate(state, ram, dst, dst_access)?));
        }
        match miss {
            PairMiss::Fresh => {
                self.translate_pair_slots(state, ram, src, dst, dst_access, Stage::Fresh)
            }
            PairMiss::Check(check) => self.pair_changed(state, ram, src, dst, dst_access, check),
        }
    }

    /// A warm pair whose [`pair_check`] found `check` (not
    /// [`EntryCheck::Held`]): what the slot path does from the entry that
    /// decided. Within the source's entries, the source's walk; past
    /// them, the source was a hit and the destination walks. An entry that
    /// is not RAM is the walk's error there (after the source's hit if it
    /// is past the source's entries: its first occurrence in the list is
    /// where the check stopped).
    #[cold]
    #[inline(never)]
    fn pair_changed<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        src: u64,
        dst: u64,
        dst_access: AccessType,
        check: EntryCheck,
    ) -> Result<(u64, u64), Error> {
        let p = &self.pair;
        let used = p.entries.get(..p.count).unwrap_or(&[]);
        let index = match check {
            EntryCheck::Held => return Err(Error::InconsistentExit),
            EntryCheck::Changed { index } => index,
            EntryCheck::NotRam { gpa } => {
                let index = used.iter().position(|e| e.0 == gpa).unwrap_or(0);
                if index >= p.src_count {
                    self.hits += 1;
                }
                return Err(Error::PageTableNotRam { gpa });
            }
        };
        if index < p.src_count {
            return self.translate_pair_slots(state, ram, src, dst, dst_access, Stage::SrcChanged);
        }
        self.hits += 1;
        let src_gpa = p.src_gpa_base | (src & 0xFFF);
        let stage = Stage::DstChanged(src_gpa);
        self.translate_pair_slots(state, ram, src, dst, dst_access, stage)
    }

    /// [`translate_pair`](Self::translate_pair) through the slots, from
    /// `stage` (what the pair record found: the slot path would have found
    /// the same), then the pair recorded.
    #[inline(never)]
    fn translate_pair_slots<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        src: u64,
        dst: u64,
        dst_access: AccessType,
        stage: Stage,
    ) -> Result<(u64, u64), Error> {
        let ((src_gpa, s), (dst_gpa, d)) = match stage {
            Stage::Fresh => {
                self.enter(state);
                let src = self.translate_after(state, ram, src, AccessType::Read, NONE)?;
                (
                    src,
                    self.translate_after(state, ram, dst, dst_access, src.1)?,
                )
            }
            Stage::SrcChanged => {
                let src = self.walk(state, ram, src, AccessType::Read, self.pair.s)?;
                (
                    src,
                    self.translate_after(state, ram, dst, dst_access, src.1)?,
                )
            }
            Stage::DstChanged(src_gpa) => {
                let (s, d) = (self.pair.s, self.pair.d);
                ((src_gpa, s), self.walk(state, ram, dst, dst_access, d)?)
            }
        };
        self.record_pair(s, d, src_gpa, dst_gpa, dst_access);
        Ok((src_gpa, dst_gpa))
    }

    /// The slot the slot path's search finds for `page` and `need`.
    fn find(&self, page: u64, need: u8) -> Option<usize> {
        self.slots
            .iter()
            .position(|c| c.page == page && c.rights & need != 0)
    }

    /// Makes the pair record that of slots `s` (the source) and `d` (the
    /// destination), both just validated or walked, if both hold one and
    /// the slot searches find them.
    fn record_pair(
        &mut self,
        s: usize,
        d: usize,
        src_gpa: u64,
        dst_gpa: u64,
        dst_access: AccessType,
    ) {
        self.pair = NO_PAIR;
        let (Some(a), Some(b)) = (self.slots.get(s), self.slots.get(d)) else {
            return;
        };
        let dst_need = needs(dst_access);
        if self.find(a.page, needs(AccessType::Read)) != Some(s)
            || self.find(b.page, dst_need) != Some(d)
            || a.walk.wide != b.walk.wide
        {
            return;
        }
        let shared = self
            .shared
            .get(s)
            .and_then(|row| row.get(d))
            .map_or(0, |&n| usize::from(n));
        let Some(rest) = b.walk.entries.get(shared..b.walk.count) else {
            return;
        };
        let (src_count, count) = (a.walk.count, a.walk.count + rest.len());
        let mut pair = Pair {
            src: a.page,
            dst: b.page,
            dst_need,
            wide: a.walk.wide,
            s,
            d,
            src_gpa_base: src_gpa & !0xFFF,
            dst_gpa_base: dst_gpa & !0xFFF,
            count,
            src_count,
            shape: shape(count, a.walk.wide),
            ..NO_PAIR
        };
        let from = a.walk.entries.iter().take(src_count).chain(rest);
        for (to, from) in pair.entries.iter_mut().zip(from) {
            *to = *from;
        }
        self.pair = pair;
    }

    /// [`translate`](Self::translate) with paging on, the slots those of
    /// the current control state, right after the translation that used
    /// slot `prev` (or [`NONE`]): the translation and the slot that now
    /// holds its walk ([`NONE`] if none does).
    #[inline(always)]
    fn translate_after<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        linear: u64,
        access: AccessType,
        prev: usize,
    ) -> Result<(u64, usize), Error> {
        let page = linear >> 12;
        let need = needs(access);
        let found = self
            .slots
            .iter()
            .position(|c| c.page == page && c.rights & need != 0);
        if let Some(i) = found
            && let Some(c) = self.slots.get(i)
        {
            // (NONE is a constant where there is no previous translation.)
            let shared = if prev == NONE {
                0
            } else {
                self.shared
                    .get(prev)
                    .and_then(|row| row.get(i))
                    .map_or(0, |&n| usize::from(n))
            };
            if holds_past(ram, &c.walk, shared)? {
                let gpa_page = c.gpa_page;
                self.hits += 1;
                return Ok(((gpa_page << 12) | (linear & 0xFFF), i));
            }
            return self.walk(state, ram, linear, access, i);
        }
        self.walk(state, ram, linear, access, NONE)
    }

    /// The full walk of a miss. Its record replaces `stale` (not
    /// [`NONE`]: the slot the search found, whose entries changed, so that
    /// it can serve nothing), else a slot of the same page that it serves
    /// too (which was made for a read when this is a write), else fills an
    /// empty slot, else the victim. With the slot it filled ([`NONE`] if
    /// it failed).
    ///
    /// (Without `stale` first, a read's walk kept a stale write slot of
    /// the page in place, which the search finds first: every later read
    /// of the page was a miss.)
    #[inline(never)]
    fn walk<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        linear: u64,
        access: AccessType,
        stale: usize,
    ) -> Result<(u64, usize), Error> {
        self.misses += 1;
        // A slot changes: the pair record no longer mirrors the slots.
        self.pair = NO_PAIR;
        let page = linear >> 12;
        let rights = proves(access);
        let same = || {
            self.slots
                .iter()
                .position(|c| c.page == page && c.rights & !rights == 0)
        };
        // Then an empty slot (a failed walk leaves its slot empty), then
        // round robin.
        let stale = (stale != NONE).then_some(stale);
        let empty = || self.slots.iter().position(|c| c.page == EMPTY_PAGE);
        let i = match stale.or_else(same).or_else(empty) {
            Some(i) => i,
            None => {
                let v = self.victim % DATA_SLOTS;
                self.victim = (v + 1) % DATA_SLOTS;
                v
            }
        };
        let Some(slot) = self.slots.get_mut(i) else {
            return Err(Error::InconsistentExit);
        };
        *slot = EMPTY;
        let result = translate_recorded(state, ram, linear, access, Some(&mut slot.walk));
        let filled = match result {
            // A walk with paging on reads one entry at least.
            Ok(gpa) if slot.walk.count > 0 => {
                slot.page = page;
                slot.rights = rights;
                slot.gpa_page = gpa >> 12;
                i
            }
            _ => {
                *slot = EMPTY;
                NONE
            }
        };
        self.refresh_shared(i);
        result.map(|gpa| (gpa, filled))
    }

    /// Recomputes row and column `i` of [`DataSlots::shared`] after slot
    /// `i`'s walk changed.
    fn refresh_shared(&mut self, i: usize) {
        let Some(walk) = self.slots.get(i).map(|c| c.walk) else {
            return;
        };
        for (j, other) in self.slots.iter().enumerate() {
            // At most 5 entries.
            let n = shared_prefix(&other.walk, &walk) as u8;
            if let Some(cell) = self.shared.get_mut(i).and_then(|row| row.get_mut(j)) {
                *cell = n;
            }
            if let Some(cell) = self.shared.get_mut(j).and_then(|row| row.get_mut(i)) {
                *cell = n;
            }
        }
    }
}

/// The [`GuestRam::check_entries`] of a pair record's entries: the
/// common shapes ([`WIDE_5`], [`NARROW_3`]) with the count and the width
/// constants, so that an inlined implementation unrolls and drops its
/// other width's code, then PAE's four (three and a leaf) with the width a
/// runtime value, then any count.
#[inline(always)]
fn pair_check<R: GuestRam + ?Sized>(ram: &mut R, p: &Pair) -> Result<EntryCheck, Error> {
    let entries = &p.entries;
    Ok(match p.shape {
        WIDE_5 => ram.check_entries(&entries[..5], true)?,
        NARROW_3 => ram.check_entries(&entries[..3], false)?,
        _ => pair_check_other(ram, entries, p.count, p.wide)?,
    })
}

/// [`pair_check`] past the common shapes, out of line.
#[inline(never)]
fn pair_check_other<R: GuestRam + ?Sized>(
    ram: &mut R,
    entries: &[(u64, u64); 10],
    count: usize,
    wide: bool,
) -> Result<EntryCheck, Error> {
    Ok(match count {
        4 => ram.check_entries(&entries[..4], wide)?,
        _ => ram.check_entries(entries.get(..count).unwrap_or(entries), wide)?,
    })
}

/// How many entries `walk` starts with that `before` starts with too (the
/// same GPAs with the same values, hence the same tables down to there).
#[inline(always)]
fn shared_prefix(before: &WalkRecord, walk: &WalkRecord) -> usize {
    if before.wide != walk.wide {
        return 0;
    }
    let n = before.count.min(walk.count);
    let mut k = 0;
    for (a, b) in before.entries.iter().zip(&walk.entries) {
        if k == n || a != b {
            break;
        }
        k += 1;
    }
    k
}

/// Whether every entry of `walk` past its first `shared` still holds its
/// recorded value, read top level first as the walk does, each with one
/// fixed-size read ([`GuestRam::read_aligned_u64`] for 8-byte entries).
/// (The first `shared` are the previous translation's, just read.)
///
/// A read that fails is the walk's own result: the entries above it held
/// their recorded values, so a full walk would take the same path and read
/// the same entry next. Its error is returned as is (and no callback
/// follows a failed one).
#[inline(always)]
fn holds_past<R: GuestRam + ?Sized>(
    ram: &mut R,
    walk: &WalkRecord,
    shared: usize,
) -> Result<bool, Error> {
    let Some(used) = walk.entries.get(shared..walk.count) else {
        // shared <= count <= 5 (shared_prefix), so not reached.
        return Ok(false);
    };
    if walk.wide {
        // The usual shapes unrolled (a 4 KiB page under 4-level paging;
        // a second walk that shares all but its leaf); `&&` stops at the
        // first entry that changed, as the loop does.
        match used {
            [a, b, c, d] => {
                return Ok(holds_u64(ram, a)?
                    && holds_u64(ram, b)?
                    && holds_u64(ram, c)?
                    && holds_u64(ram, d)?);
            }
            [a] => return holds_u64(ram, a),
            _ => {}
        }
        for entry in used {
            if !holds_u64(ram, entry)? {
                return Ok(false);
            }
        }
    } else {
        // 32-bit paging: two entries, or the leaf of a second walk.
        match used {
            [a, b] => return Ok(holds_u32(ram, a)? && holds_u32(ram, b)?),
            [a] => return holds_u32(ram, a),
            _ => {}
        }
        for entry in used {
            if !holds_u32(ram, entry)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether the 4-byte entry `(gpa, value)` still holds `value`, read with
/// one fixed-size read (see [`holds_past`]).
///
/// `fetch_cache.rs` has the same two readers, with the not-RAM error built
/// in a cold function, which saves the fetch path about 8 instructions.
/// Here the cold error costs instead: the pair forms measured 24-38
/// instructions more per call with those (64-bit `movsb` 493 -> 531), so
/// the data cache keeps its own.
#[inline(always)]
fn holds_u32<R: GuestRam + ?Sized>(ram: &mut R, &(gpa, value): &(u64, u64)) -> Result<bool, Error> {
    let mut buf = [0u8; 4];
    if ram.read(gpa, &mut buf)? != RamStatus::Done {
        return Err(Error::PageTableNotRam { gpa });
    }
    Ok(u64::from(u32::from_le_bytes(buf)) == value)
}

/// Whether the 8-byte entry `(gpa, value)` still holds `value` (see
/// [`holds_past`]).
#[inline(always)]
fn holds_u64<R: GuestRam + ?Sized>(ram: &mut R, &(gpa, value): &(u64, u64)) -> Result<bool, Error> {
    match ram.read_aligned_u64(gpa)? {
        Some(now) => Ok(now == value),
        None => Err(Error::PageTableNotRam { gpa }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Registers;
    use crate::testutil::{Layout, PageTables, TEST_VENDOR, TestRam, pte};
    use std::format;
    use std::vec::Vec;

    /// Linear pages of the two trees: pairs in one 2 MiB region, one
    /// 1 GiB region, one 512 GiB region and none, and a 2 MiB page.
    const PAGES: [u64; 6] = [
        0x20_3000,
        0x20_5000,
        0x40_1000,
        0x4000_2000,
        (1 << 39) + 0x3000,
        0x60_0000,
    ];

    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Random translations (single, in a sharing scope, and pairs) while
    /// entries and the control state change: each gives what a cold walk
    /// gives, with the same guest RAM after it, and the shared-prefix
    /// matrix always equals the prefixes of the slots' walks.
    #[test]
    fn translations_match_cold_walks_and_the_shared_matrix_stays_exact() {
        let mut ram = TestRam::new(0x8_0000);
        let mut trees = [
            PageTables::new(Layout::Level4, 0x10000),
            PageTables::new(Layout::Level4, 0x40000),
        ];
        let mut entries = Vec::new();
        for (t, tree) in trees.iter_mut().enumerate() {
            for (i, &linear) in PAGES.iter().enumerate() {
                if linear == 0x60_0000 {
                    tree.map(&mut ram, linear, 0, 2, pte::PWU);
                } else {
                    let gpa = 0x1000 * (1 + i as u64 + 8 * t as u64);
                    tree.map(&mut ram, linear, gpa, 1, pte::PWU);
                }
                for level in 1..=4 {
                    if linear != 0x60_0000 || level >= 2 {
                        entries.push(tree.entry_gpa(&mut ram, linear, level));
                    }
                }
            }
        }
        let base = Registers::long_mode(TEST_VENDOR, 0x10000, 0, 0);
        let mut regs = base.clone();
        let mut slots = DataSlots::new();
        let mut seed = 0x1234_5678_9ABC_DEF1u64;
        let mut hits_seen = 0;
        for step in 0..6000 {
            let r = next(&mut seed);
            let linear = |k: u64| PAGES[(k % PAGES.len() as u64) as usize] + (k >> 20 & 0xFF8);
            let access = |k: u64| {
                if k & 1 == 0 {
                    AccessType::Read
                } else {
                    AccessType::Write
                }
            };
            match r % 16 {
                0 => {
                    let at = entries[(r >> 8) as usize % entries.len()];
                    let bit = [pte::A, pte::D, pte::P, pte::RW][(r >> 32) as usize % 4];
                    let v = ram.read_u64(at);
                    ram.write_u64(at, v ^ bit);
                }
                1 => {
                    regs.cr3 = if regs.cr3 == 0x10000 {
                        0x40000
                    } else {
                        0x10000
                    }
                }
                2 => {
                    regs = if regs.cpl() == 0 {
                        regs.clone().at_cpl(3)
                    } else {
                        regs.clone().at_cpl(0)
                    };
                }
                3..=6 => {
                    let (a, b) = (next(&mut seed), next(&mut seed));
                    let mut cold = ram.clone();
                    let want = translate(&regs, &mut cold, linear(a), AccessType::Read)
                        .and_then(|s| Ok((s, translate(&regs, &mut cold, linear(b), access(b))?)));
                    let got =
                        slots.translate_pair(&regs, &mut ram, linear(a), linear(b), access(b));
                    assert_eq!(got, want, "step {step}: pair");
                    assert!(ram.mem == cold.mem, "step {step}: pair: RAM");
                }
                7..=10 => {
                    let mut cold = ram.clone();
                    let keys: [u64; 3] = [next(&mut seed), next(&mut seed), next(&mut seed)];
                    let want: Vec<_> = keys
                        .iter()
                        .map(|&k| translate(&regs, &mut cold, linear(k), access(k)))
                        .collect();
                    let got: Vec<_> = DataSlots::share_walks(
                        &mut (&mut slots, &mut ram),
                        |x| &mut *x.0,
                        |x| {
                            keys.iter()
                                .map(|&k| x.0.translate(&regs, &mut *x.1, linear(k), access(k)))
                                .collect()
                        },
                    );
                    assert_eq!(got, want, "step {step}: scope");
                    assert!(ram.mem == cold.mem, "step {step}: scope: RAM");
                    assert_eq!(slots.prev, NONE, "the scope's end forgets the slot");
                }
                _ => {
                    let k = next(&mut seed);
                    let mut cold = ram.clone();
                    let want = translate(&regs, &mut cold, linear(k), access(k));
                    let got = slots.translate(&regs, &mut ram, linear(k), access(k));
                    assert_eq!(got, want, "step {step}: single");
                    assert!(ram.mem == cold.mem, "step {step}: single: RAM");
                }
            }
            for (a, row) in slots.shared.iter().take(DATA_SLOTS).enumerate() {
                for (b, &n) in row.iter().enumerate() {
                    let want = shared_prefix(&slots.slots[a].walk, &slots.slots[b].walk);
                    assert_eq!(usize::from(n), want, "step {step}: shared[{a}][{b}]");
                }
            }
            assert_eq!(slots.shared[NONE], [0; DATA_SLOTS]);
            hits_seen = slots.hits;
        }
        // The cache served, not only walked.
        assert!(hits_seen > 300, "{hits_seen} hits");
    }

    /// The probe serves exactly the warm pairs `translate_pair` serves
    /// from the record (the same addresses, reads and hits), and leaves
    /// the rest having changed nothing but its reads: a cold pair, another
    /// page, another access, another control state, a rewritten entry (of
    /// either walk) and paging off. `translate_pair` then does what it
    /// does without the probe before it.
    #[test]
    fn the_probe_serves_the_warm_pair_alone_and_changes_nothing_else() {
        let mut ram = TestRam::new(0x8_0000);
        let mut tree = PageTables::new(Layout::Level4, 0x10000);
        tree.map(&mut ram, 0x20_3000, 0x3000, 1, pte::PWU);
        tree.map(&mut ram, 0x20_5000, 0x5000, 1, pte::PWU);
        tree.map(&mut ram, 0x20_7000, 0x7000, 1, pte::PWU);
        let regs = Registers::long_mode(TEST_VENDOR, 0x10000, 0, 0);
        let (src, dst) = (0x20_3010, 0x20_5020);
        let mut slots = DataSlots::new();
        let probe = |slots: &mut DataSlots, regs: &Registers, ram: &mut TestRam, dst, access| {
            let (hits, misses, reads) = (slots.hits, slots.misses, ram.reads);
            let before = (slots.slots.map(|c| (c.page, c.gpa_page)), ram.mem.clone());
            let got = slots.probe_pair(regs, ram, src, dst, access);
            if !matches!(got, Ok(Ok(_))) {
                assert_eq!((slots.hits, slots.misses), (hits, misses));
                assert!(before == (slots.slots.map(|c| (c.page, c.gpa_page)), ram.mem.clone()));
            }
            (got, ram.reads - reads)
        };
        let write = AccessType::Write;
        // Cold: no record, nothing read.
        assert_eq!(
            probe(&mut slots, &regs, &mut ram, dst, write),
            (Ok(Err(PairMiss::Fresh)), 0)
        );
        assert_eq!(
            slots.translate_pair(&regs, &mut ram, src, dst, write),
            Ok((0x3010, 0x5020))
        );
        assert_eq!(
            slots.translate_pair(&regs, &mut ram, src, dst, write),
            Ok((0x3010, 0x5020))
        );
        // Warm: served, five entries read, two hits.
        let hits = slots.hits;
        assert_eq!(
            probe(&mut slots, &regs, &mut ram, dst, write),
            (Ok(Ok((0x3010, 0x5020))), 5)
        );
        assert_eq!(slots.hits, hits + 2);
        // Another destination page, another access: not the record's.
        let other = probe(&mut slots, &regs, &mut ram, 0x20_7020, write);
        assert_eq!(other, (Ok(Err(PairMiss::Fresh)), 0));
        let read = probe(&mut slots, &regs, &mut ram, dst, AccessType::Read);
        assert_eq!(read, (Ok(Err(PairMiss::Fresh)), 0));
        // Another control state.
        let mut cr3 = regs.clone();
        cr3.cr3 = 0x40000;
        assert_eq!(
            probe(&mut slots, &cr3, &mut ram, dst, write),
            (Ok(Err(PairMiss::Fresh)), 0)
        );
        // Paging off (a protected-mode state): the caller's.
        let flat = Registers::flat_protected32(TEST_VENDOR);
        assert_eq!(
            probe(&mut slots, &flat, &mut ram, dst, write),
            (Ok(Err(PairMiss::Fresh)), 0)
        );
        // Each entry rewritten: the probe leaves it, the slot path walks.
        let mut entries: Vec<u64> = (1..=4).map(|l| tree.entry_gpa(&mut ram, src, l)).collect();
        entries.push(tree.entry_gpa(&mut ram, dst, 1));
        for (k, &at) in entries.iter().enumerate() {
            let mut slots = slots.clone();
            let mut ram = ram.clone();
            let old = tree.get(&ram, at);
            tree.set(&mut ram, at, old ^ pte::A);
            let (got, _) = probe(&mut slots, &regs, &mut ram, dst, write);
            assert!(
                matches!(got, Ok(Err(PairMiss::Check(EntryCheck::Changed { .. })))),
                "{k}: {got:?}"
            );
            let mut cold = ram.clone();
            let want = translate(&regs, &mut cold, src, AccessType::Read)
                .and_then(|s| Ok((s, translate(&regs, &mut cold, dst, write)?)));
            let misses = slots.misses;
            assert_eq!(
                slots.translate_pair(&regs, &mut ram, src, dst, write),
                want,
                "{k}"
            );
            assert!(ram.mem == cold.mem, "{k}: RAM");
            assert!(slots.misses > misses, "{k}: walked");
        }
    }

    /// A warm pair is served by the pair record with one read of each
    /// entry (the source's, then the destination's below those the two
    /// walks share), in every shape the record's check dispatches on (4-level
    /// walks sharing all but a leaf, 32-bit ones alike, and the others),
    /// and a rewrite of any entry either walk read, or of a control
    /// register, between two pairs gives what a cold walk gives (the same
    /// RAM after it).
    #[test]
    fn the_pair_record_rereads_every_entry_and_the_control_state() {
        // The layout, the destination's linear page (the source's is
        // 0x20_3000, or 0x40_3000 under 32-bit paging) and how many
        // levels the two walks share.
        let cases = [
            (Layout::Level4, 0x20_5000, 3),
            (Layout::Level4, 0x4000_5000, 1),
            (Layout::Level5, 0x20_5000, 4),
            (Layout::Pae, 0x20_5000, 2),
            (Layout::Pae, 0x4000_5000, 0),
            (Layout::Bits32, 0x40_5000, 1),
            (Layout::Bits32, 0x80_5000, 0),
        ];
        for (layout, dst_page, shared) in cases {
            let levels = match layout {
                Layout::Bits32 => 2,
                Layout::Pae => 3,
                Layout::Level4 => 4,
                Layout::Level5 => 5,
            };
            let src_page = if layout == Layout::Bits32 {
                0x40_3000
            } else {
                0x20_3000
            };
            let (src, dst) = (src_page | 0x10, dst_page | 0x20);
            let mut ram = TestRam::new(0x8_0000);
            let mut tree = PageTables::new(layout, 0x10000);
            tree.map(&mut ram, src_page, 0x3000, 1, pte::PWU);
            tree.map(&mut ram, dst_page, 0x5000, 1, pte::PWU);
            tree.map(&mut ram, src_page + 0x4000, 0x7000, 1, pte::PWU);
            let mut entries: Vec<u64> = (1..=levels)
                .map(|level| tree.entry_gpa(&mut ram, src, level))
                .collect();
            for level in 1..=levels - shared {
                entries.push(tree.entry_gpa(&mut ram, dst, level));
            }
            let regs = match layout {
                Layout::Bits32 | Layout::Pae => {
                    let mut r = Registers::flat_protected32(TEST_VENDOR);
                    r.cr0 |= CR0_PG | 1 << 16;
                    if layout == Layout::Pae {
                        r.cr4 |= 1 << 5;
                    }
                    r.cr3 = 0x10000;
                    r
                }
                _ => {
                    let mut r = Registers::long_mode(TEST_VENDOR, 0x10000, 0, 0);
                    if layout == Layout::Level5 {
                        r.cr4 |= 1 << 12;
                    }
                    r
                }
            };
            let pair = |slots: &mut DataSlots, regs: &Registers, ram: &mut TestRam| {
                let mut cold = ram.clone();
                let want = translate(regs, &mut cold, src, AccessType::Read)
                    .and_then(|s| Ok((s, translate(regs, &mut cold, dst, AccessType::Write)?)));
                let got = slots.translate_pair(regs, ram, src, dst, AccessType::Write);
                assert_eq!(got, want, "{layout:?} {dst_page:#x}");
                assert!(
                    ram.mem == cold.mem,
                    "{layout:?} {dst_page:#x}: RAM after the pair"
                );
                got
            };
            let what = |k: usize, change: u32| {
                format!("{layout:?} {dst_page:#x}: entry {k}, change {change}")
            };
            for (k, &at) in entries.iter().enumerate() {
                for change in 0..4 {
                    let mut slots = DataSlots::new();
                    let mut ram = ram.clone();
                    let mut regs = regs.clone();
                    let _ = pair(&mut slots, &regs, &mut ram);
                    let reads = ram.reads;
                    let hits = slots.hits;
                    assert_eq!(pair(&mut slots, &regs, &mut ram), Ok((0x3010, 0x5020)));
                    assert_eq!(slots.pair.count, entries.len(), "{}", what(k, change));
                    assert_eq!(
                        ram.reads - reads,
                        entries.len(),
                        "{}: a warm pair reads each entry once",
                        what(k, change)
                    );
                    assert_eq!(slots.hits, hits + 2);
                    let old = tree.get(&ram, at);
                    let new = match change {
                        // Another page (the leaf's address bits), or
                        // another table.
                        0 => old ^ 0x2000,
                        // Not present.
                        1 => old & !pte::P,
                        // Read-only (the destination is written; not a
                        // right of a PAE PDPTE: no change there).
                        2 => old & !pte::RW,
                        // Another CR3 (no tables there: a page fault).
                        _ => {
                            regs.cr3 = 0x40000;
                            old
                        }
                    };
                    tree.set(&mut ram, at, new);
                    let misses = slots.misses;
                    let got = pair(&mut slots, &regs, &mut ram);
                    if new != old || change == 3 {
                        assert!(slots.misses > misses, "{}: {got:?}", what(k, change));
                    }
                    // And once more, from whatever the miss left.
                    let _ = pair(&mut slots, &regs, &mut ram);
                }
            }
        }
    }
}
