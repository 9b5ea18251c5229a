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
//!   walk's accessed/dirty update (each read again, on every use).
//!
//! Then a new walk would read the same entries, make the same checks with
//! the same result, and find every accessed bit (and, for a write, the
//! leaf's dirty bit) already set: it would write nothing, so the cached
//! page is its result. A read-only cached translation never serves a
//! write (the walk must set D, and check R/W), and anything else that
//! differs takes the full walk, which sets A/D or faults as the tables now
//! say. An entry that cannot be read again gives the error the walk would
//! give there (the entries above it still lead to it).

use crate::access::AccessType;
use crate::bus::GuestRam;
use crate::error::Error;
use crate::fetch_cache::still_holds;
use crate::state::CpuState;
use crate::translate::{WalkRecord, translate, translate_recorded};

const CR0_PG: u64 = 1 << 31;
const RFLAGS_VM: u64 = 1 << 17;
const RFLAGS_AC: u64 = 1 << 18;

/// How many data translations are kept: enough for the stack page and
/// both sides of a string instruction, plus one.
pub(crate) const DATA_SLOTS: usize = 4;

/// The state a cached data translation depends on besides the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    /// RFLAGS.VM and RFLAGS.AC (bits 17 and 18), the CPL (bits 39:32) and
    /// MAXPHYADDR (bits 47:40).
    packed: u64,
    /// The linear page (address >> 12).
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
            packed: (state.rflags() & (RFLAGS_VM | RFLAGS_AC))
                | u64::from(state.cpl()) << 32
                | u64::from(state.max_phys_addr()) << 40,
            page: linear >> 12,
        }
    }

    /// `==`, as one OR of XORs.
    #[inline(always)]
    fn same_as(&self, other: &Key) -> bool {
        ((self.cr0 ^ other.cr0)
            | (self.cr3 ^ other.cr3)
            | (self.cr4 ^ other.cr4)
            | (self.efer ^ other.efer)
            | (self.packed ^ other.packed)
            | (self.page ^ other.page))
            == 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    key: Key,
    /// The access the walk was made for.
    access: AccessType,
    /// The guest-physical page (address >> 12).
    gpa_page: u64,
    /// The entries the walk read, after its accessed/dirty update.
    walk: WalkRecord,
}

/// Whether a successful walk made for `made` proves `access` allowed with
/// nothing to write: the same access, or a read after a write.
#[inline(always)]
fn covers(made: AccessType, access: AccessType) -> bool {
    made == access || (access == AccessType::Read && made == AccessType::Write)
}

/// The data translations of one VCPU.
#[derive(Debug, Clone, Default)]
pub(crate) struct DataSlots {
    slots: [Option<Cached>; DATA_SLOTS],
    /// The slot a miss fills next (round robin).
    victim: usize,
    pub hits: u64,
    pub misses: u64,
}

impl DataSlots {
    pub(crate) const fn new() -> DataSlots {
        DataSlots {
            slots: [None; DATA_SLOTS],
            victim: 0,
            hits: 0,
            misses: 0,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.slots = [None; DATA_SLOTS];
        self.victim = 0;
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
        let key = Key::of(state, linear);
        let found = self
            .slots
            .iter()
            .flatten()
            .find(|c| c.key.same_as(&key) && covers(c.access, access));
        if let Some(c) = found
            && still_holds(ram, &c.walk)?
        {
            let gpa_page = c.gpa_page;
            self.hits += 1;
            return Ok((gpa_page << 12) | (linear & 0xFFF));
        }
        self.walk(state, ram, linear, access, key)
    }

    /// The full walk of a miss. Its record replaces a slot of the same
    /// page and state that it serves too (whose entries changed, or which
    /// was made for a read when this is a write), else fills an empty
    /// slot, else the victim.
    #[inline(never)]
    fn walk<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
        &mut self,
        state: &S,
        ram: &mut R,
        linear: u64,
        access: AccessType,
        key: Key,
    ) -> Result<u64, Error> {
        self.misses += 1;
        let same = self.slots.iter().position(|c| {
            c.as_ref()
                .is_some_and(|c| c.key.same_as(&key) && covers(access, c.access))
        });
        // Then an empty slot (a failed walk leaves its slot empty), then
        // round robin.
        let i = match same.or_else(|| self.slots.iter().position(Option::is_none)) {
            Some(i) => i,
            None => {
                let v = self.victim % DATA_SLOTS;
                self.victim = (v + 1) % DATA_SLOTS;
                v
            }
        };
        let Some(entry) = self.slots.get_mut(i) else {
            return Err(Error::InconsistentExit);
        };
        let slot = entry.insert(Cached {
            key,
            access,
            gpa_page: 0,
            walk: WalkRecord::default(),
        });
        let result = translate_recorded(state, ram, linear, access, Some(&mut slot.walk));
        match result {
            // A walk with paging on reads one entry at least.
            Ok(gpa) if slot.walk.count > 0 => slot.gpa_page = gpa >> 12,
            _ => *entry = None,
        }
        result
    }
}
