//! A per-VCPU cache of the instruction-fetch translation, for exits that
//! carry no instruction bytes (VMX; SVM without DecodeAssists), where every
//! assist fetches at CS:RIP through the page walker.
//!
//! The assist stays stateless: the cache is a plain value the caller owns,
//! one per VCPU, and passes to [`assist_mem_cached`](crate::assist_mem_cached)
//! (the `nvmm` crate keeps one in each `Vcpu`). It can be dropped, cloned or
//! reset ([`FetchCache::clear`]) at any time; an empty or stale cache only
//! costs a full walk.
//!
//! **Exactness.** The guest can rewrite its page tables without any exit
//! (and INVLPG and CR3 loads need not exit either), so a cached translation
//! is never trusted as is. It is used only after checking that
//! - CR0, CR3, CR4, EFER, RFLAGS.VM, the CPL, MAXPHYADDR and CS (selector, base, limit,
//!   attributes) equal what they were when the walk was made, and the linear
//!   page is the same (segmentation itself is always recomputed), and
//! - every paging-structure entry the walk read still holds the value it
//!   had after that walk's accessed-bit update (each is read again from
//!   guest RAM).
//!
//! The walk is a function of exactly these inputs, so when they all match, a
//! new walk would read the same entries, reach the same page with the same
//! rights and find every accessed bit already set (it would write nothing):
//! the cached result is the walk's result. A changed entry or state falls
//! back to the full walk, which reports whatever the guest's tables now
//! say; an entry that cannot be read again (a bus error, or no longer RAM)
//! gives the error the walk would give there, since the entries above it
//! still lead to it. Only execute accesses use
//! the cache (an execute translation sets no dirty bit and does not depend
//! on RFLAGS.AC).

use crate::access::AccessType;
use crate::bus::GuestRam;
use crate::error::Error;
use crate::state::{CpuState, Segment, SegmentRegister};
use crate::translate::{WalkRecord, read_entry, translate_recorded};

const RFLAGS_VM: u64 = 1 << 17;
const CR0_PG: u64 = 1 << 31;

/// The state a cached translation depends on besides the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    cs: SegmentRegister,
    cpl: u8,
    max_phys_addr: u8,
    /// RFLAGS.VM (part of the control-state check of every walk).
    vm: bool,
    /// The linear page (address >> 12).
    page: u64,
}

impl Key {
    fn of<S: CpuState + ?Sized>(state: &S, linear: u64) -> Key {
        Key {
            cr0: state.cr0(),
            cr3: state.cr3(),
            cr4: state.cr4(),
            efer: state.efer(),
            cs: state.segment(Segment::Cs),
            cpl: state.cpl(),
            max_phys_addr: state.max_phys_addr(),
            vm: state.rflags() & RFLAGS_VM != 0,
            page: linear >> 12,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    key: Key,
    /// The guest-physical page (address >> 12).
    gpa_page: u64,
    walk: WalkRecord,
}

/// The last instruction-fetch translation of one VCPU, re-validated before
/// every use (see the [module documentation](self)).
#[derive(Debug, Clone, Default)]
pub struct FetchCache {
    entry: Option<Cached>,
    hits: u64,
    misses: u64,
}

impl FetchCache {
    /// An empty cache.
    pub const fn new() -> FetchCache {
        FetchCache {
            entry: None,
            hits: 0,
            misses: 0,
        }
    }

    /// Forgets the cached translation.
    pub fn clear(&mut self) {
        self.entry = None;
    }

    /// How many translations were served from the cache after
    /// re-validation.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// How many translations needed a full walk (empty cache, another page
    /// or state, or an entry that changed).
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Translates `linear` for an instruction fetch, as
    /// [`translate`](fn@crate::translate) does, using and refreshing the cache.
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
        if let Some(c) = &self.entry
            && c.key == key
            && still_holds(ram, &c.walk)?
        {
            self.hits += 1;
            return Ok((c.gpa_page << 12) | (linear & 0xFFF));
        }
        self.misses += 1;
        self.entry = None;
        let mut record = None;
        let gpa = translate_recorded(state, ram, linear, AccessType::Execute, |w| {
            record = Some(*w);
        })?;
        if let Some(walk) = record {
            self.entry = Some(Cached {
                key,
                gpa_page: gpa >> 12,
                walk,
            });
        }
        Ok(gpa)
    }
}

/// Whether every entry of `walk` still holds its recorded value, reading
/// them top level first as the walk does.
///
/// A read that fails is the walk's own result: the entries above it held
/// their recorded values, so a full walk would take the same path and read
/// the same entry next. Its error is returned as is (and no callback
/// follows a failed one).
fn still_holds<R: GuestRam + ?Sized>(ram: &mut R, walk: &WalkRecord) -> Result<bool, Error> {
    for &(gpa, value, wide) in walk.entries.iter().take(walk.count) {
        if read_entry(ram, gpa, wide)? != value {
            return Ok(false);
        }
    }
    Ok(true)
}
