//! The guest page walker: linear to guest-physical addresses in every x86
//! paging mode, with the CPU's permission checks and accessed/dirty updates.
//!
//! Modes (Intel SDM vol. 3A ch. 4, AMD APM vol. 2 ch. 5):
//! - CR0.PG = 0: no paging, the physical address is the 32-bit linear one.
//! - 32-bit paging (CR4.PAE = 0): 4 KiB pages, and 4 MiB pages when CR4.PSE
//!   is set (with PSE-36 physical bits 39:32 in PDE bits 20:13). With
//!   CR4.PSE = 0 the PS bit of a PDE is ignored.
//! - PAE paging (CR4.PAE = 1, EFER.LMA = 0): the four PDPTEs, 4 KiB and
//!   2 MiB pages.
//! - 4-level and 5-level paging (EFER.LMA = 1, CR4.LA57 = 0/1): 4 KiB,
//!   2 MiB and 1 GiB pages.
//!
//! Choices:
//! - **MAXPHYADDR** (M) comes from [`CpuState::max_phys_addr`], whose
//!   default is 52, the architectural maximum: then physical-address bits
//!   51:M are never reported as reserved. A VMM that knows the guest's
//!   CPUID should return its value, so that entries with bits at or above M
//!   get the `#PF` with RSVD the CPU raises; with the default, such bits are
//!   used as address bits (most likely landing outside RAM: on the MMIO bus
//!   for the final access, or [`Error::PageTableNotRam`] for a table).
//! - **PAE PDPTEs** are read from CR3 on every walk. The CPU loads them into
//!   internal registers when CR3 (or CR0/CR4 paging bits) is written and does
//!   not re-read memory, so a guest that edits its PDPT without reloading
//!   CR3 sees a difference; the assist cannot know the cached copies.
//! - Checked against the CPU for 4-level paging with 4 KiB/2 MiB pages at
//!   CPL 0/3 with WP, NXE, SMEP, SMAP and AC (tests/oracle_kvm_paging.rs);
//!   the other modes against the SDM (tests/translate.rs).
//! - 1 GiB pages and PSE-36 are taken as supported.
//! - Protection keys (CR4.PKE/PKS) are not evaluated.
//!
//! Accessed and dirty bits are set only once the whole translation has
//! succeeded (a faulting access sets none), each with
//! [`GuestRam::compare_and_write`] on the entry; if an entry changed since
//! it was read, the walk restarts from the top, at most
//! [`MAX_WALK_ATTEMPTS`] times.

use crate::access::AccessType;
use crate::bus::{CompareWrite, GuestRam, RamStatus};
use crate::error::{Error, Exception};
use crate::segment::is_canonical;
use crate::state::CpuState;

const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const EFER_LMA: u64 = 1 << 10;
const EFER_LMSLE: u64 = 1 << 13;
const EFER_NXE: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_XD: u64 = 1 << 63;

/// The page-fault error code bits (SDM vol. 3A §4.7).
pub mod pf {
    /// P: the fault was a protection violation (0: a not-present entry).
    pub const P: u32 = 1 << 0;
    /// W/R: the access was a write.
    pub const W: u32 = 1 << 1;
    /// U/S: the access was a user-mode access (CPL = 3).
    pub const U: u32 = 1 << 2;
    /// RSVD: a reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
    /// I/D: the access was an instruction fetch (reported only with
    /// EFER.NXE under PAE/4-level/5-level paging, or with CR4.SMEP).
    pub const ID: u32 = 1 << 4;
}

/// The architectural maximum physical-address width, the default
/// MAXPHYADDR.
pub const MAXPHYADDR: u32 = 52;

/// How many times a walk restarts when an entry changes under the
/// accessed/dirty update before [`Error::PageTableBusy`] is returned.
pub const MAX_WALK_ATTEMPTS: usize = 8;

/// The physical-address layout for a MAXPHYADDR.
#[derive(Debug, Clone, Copy)]
struct PhysBits {
    /// M, clamped to 32..=52.
    m: u32,
    /// Bits `M-1:12`: the frame address of a 64-bit entry.
    addr: u64,
    /// Bits `51:M`, reserved in 4/5-level entries (62:52 are ignored there,
    /// or protection keys).
    rsvd_long: u64,
    /// Bits `62:M`, reserved in PAE entries (SDM tables 4-8 to 4-11).
    rsvd_pae: u64,
}

impl PhysBits {
    fn new(max_phys_addr: u8) -> PhysBits {
        let m = u32::from(max_phys_addr).clamp(32, MAXPHYADDR);
        let below_m = (1u64 << m) - 1;
        PhysBits {
            m,
            addr: below_m & !0xFFF,
            rsvd_long: ((1u64 << 52) - 1) & !below_m,
            rsvd_pae: !below_m & !PTE_XD,
        }
    }
}

/// A completed walk before the accessed/dirty update.
struct Walk<'r> {
    gpa: u64,
    /// The entries read, top level first, with the values read (the
    /// caller's record, filled in place).
    record: &'r mut WalkRecord,
    /// Whether the first entry is a PAE PDPTE (which has no accessed bit).
    pdpte: bool,
    /// The AND of the entries that carry U/S, R/W (all but a PAE PDPTE).
    all: u64,
    /// The OR of the same entries (for XD).
    any: u64,
}

impl Walk<'_> {
    /// Every entry has U/S set.
    fn user(&self) -> bool {
        self.all & PTE_US != 0
    }

    /// Every entry has R/W set.
    fn writable(&self) -> bool {
        self.all & PTE_RW != 0
    }

    /// Some entry has XD set, and EFER.NXE makes XD meaningful.
    fn no_exec(&self, nxe: bool) -> bool {
        nxe && self.any & PTE_XD != 0
    }

    /// Appends an entry read at `gpa`.
    fn push(&mut self, gpa: u64, value: u64) -> Result<(), Error> {
        let slot = self
            .record
            .entries
            .get_mut(self.record.count)
            .ok_or(Error::InconsistentExit)?;
        *slot = (gpa, value);
        self.record.count += 1;
        Ok(())
    }
}

/// The paging mode in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PagingMode {
    None,
    Bits32,
    Pae,
    Level4,
    Level5,
}

fn paging_mode<S: CpuState + ?Sized>(state: &S) -> Result<PagingMode, Error> {
    // EFER.LMA without paging would otherwise truncate addresses to 32 bits.
    crate::mode::check_control_state(state)?;
    if state.cr0() & CR0_PG == 0 {
        return Ok(PagingMode::None);
    }
    let cr4 = state.cr4();
    if state.efer() & EFER_LMA != 0 {
        Ok(if cr4 & CR4_LA57 != 0 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        })
    } else if cr4 & CR4_PAE != 0 {
        Ok(PagingMode::Pae)
    } else {
        Ok(PagingMode::Bits32)
    }
}

/// Translates `linear` to a guest-physical address as the CPU would for an
/// access of type `access` at the state's CPL, setting accessed/dirty bits.
/// On failure: `Error::Exception(Exception::PageFault { .. })` with the exact
/// error code, `#GP(0)` for a non-canonical address under 4/5-level paging,
/// [`Error::InconsistentState`] for an impossible control state (such as
/// EFER.LMA with paging off, see [`crate::mode::check_control_state`]),
/// [`Error::PageTableNotRam`] when a paging structure is not in RAM,
/// [`Error::PageTableBusy`] when the entries keep changing under the
/// accessed/dirty update, or a bus error from reading an entry.
pub fn translate<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    ram: &mut R,
    linear: u64,
    access: AccessType,
) -> Result<u64, Error> {
    translate_recorded(state, ram, linear, access, None)
}

/// The entries a successful translation read, with the values they hold
/// after its accessed/dirty update, for [`crate::fetch_cache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WalkRecord {
    /// `(gpa, value)` of each entry, top level first.
    pub entries: [(u64, u64); 5],
    /// How many of `entries` are used (0 with paging off).
    pub count: usize,
    /// Whether the entries are 8 bytes wide (all but 32-bit paging, whose
    /// entries are 4 bytes).
    pub wide: bool,
}

/// Whether [`translate`] maps every linear address of `state` to itself
/// (modulo 4 GiB), with nothing to check or walk: CR0.PG, EFER.LMA and
/// EFER.LMSLE all clear (with any of them set, the control-state check or
/// the walk has something to say). Callers that translate one page
/// themselves use it to skip the call.
#[inline(always)]
pub(crate) fn unpaged<S: CpuState + ?Sized>(state: &S) -> bool {
    state.cr0() & CR0_PG == 0 && state.efer() & (EFER_LMA | EFER_LMSLE) == 0
}

/// [`translate`], filling `record` (when given) with the walked entries
/// as they are after the accessed/dirty update. Its content is meaningful
/// only when the translation succeeds.
pub(crate) fn translate_recorded<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    ram: &mut R,
    linear: u64,
    access: AccessType,
    record: Option<&mut WalkRecord>,
) -> Result<u64, Error> {
    // Paging off, the common case of real and unpaged protected mode (two
    // operands of MOVS or PUSH m each come here): with CR0.PG, EFER.LMA and
    // EFER.LMSLE all clear, `check_control_state` has nothing to object to
    // (its other cases need paging or long mode), so skip it and the
    // scratch record.
    if unpaged(state) {
        if let Some(record) = record {
            *record = WalkRecord::default();
        }
        return Ok(linear & 0xFFFF_FFFF);
    }
    let mode = paging_mode(state)?;
    let mut scratch;
    let mut record = match record {
        Some(r) => r,
        None => {
            scratch = WalkRecord::default();
            &mut scratch
        }
    };
    if mode == PagingMode::None {
        *record = WalkRecord::default();
        return Ok(linear & 0xFFFF_FFFF);
    }
    let mut attempts = 0;
    loop {
        let mut walk = walk(state, ram, mode, linear, access, record)?;
        check_permissions(state, mode, &walk, linear, access)?;
        if update_accessed_dirty(ram, &mut walk, access)? {
            return Ok(walk.gpa);
        }
        attempts += 1;
        if attempts >= MAX_WALK_ATTEMPTS {
            let gpa = walk.record.entries[0].0;
            return Err(Error::PageTableBusy { gpa });
        }
        record = walk.record;
    }
}

/// What the paging structures say about one linear address: its
/// guest-physical address and the rights they grant to the page (the AND
/// of R/W and U/S over the walked entries, and XD where EFER.NXE makes it
/// meaningful).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTranslation {
    /// The guest-physical address of `linear`.
    pub gpa: u64,
    /// Every entry has R/W set.
    pub writable: bool,
    /// Every entry has U/S set (user-mode accessible).
    pub user: bool,
    /// No entry has XD set with EFER.NXE on.
    pub executable: bool,
}

/// A read-only translation query: walks the guest page tables for `linear`
/// like [`translate`] but checks no access rights and **writes nothing**
/// (no accessed or dirty bit), and returns the page's rights instead. With
/// paging off the address is returned unchanged (all 64 bits) with every
/// right. Errors are those of the walk: a not-present or reserved-bit
/// entry gives a `#PF` (its error code describes a read at the state's
/// CPL; no access is being made), a non-canonical address under 4/5-level paging
/// `#GP(0)`, a table outside RAM [`Error::PageTableNotRam`].
pub fn translate_query<S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    ram: &mut R,
    linear: u64,
) -> Result<PageTranslation, Error> {
    let mode = paging_mode(state)?;
    if mode == PagingMode::None {
        return Ok(PageTranslation {
            gpa: linear,
            writable: true,
            user: true,
            executable: true,
        });
    }
    let mut scratch = WalkRecord::default();
    let w = walk(state, ram, mode, linear, AccessType::Read, &mut scratch)?;
    Ok(PageTranslation {
        gpa: w.gpa,
        writable: w.writable(),
        user: w.user(),
        executable: !w.no_exec(state.efer() & EFER_NXE != 0),
    })
}

/// The error-code bits that describe the access itself.
fn access_code<S: CpuState + ?Sized>(state: &S, mode: PagingMode, access: AccessType) -> u32 {
    let mut code = 0;
    if access == AccessType::Write {
        code |= pf::W;
    }
    if state.cpl() == 3 {
        code |= pf::U;
    }
    if access == AccessType::Execute {
        let nx_mode = mode != PagingMode::Bits32 && state.efer() & EFER_NXE != 0;
        if nx_mode || state.cr4() & CR4_SMEP != 0 {
            code |= pf::ID;
        }
    }
    code
}

fn page_fault<S: CpuState + ?Sized>(
    state: &S,
    mode: PagingMode,
    linear: u64,
    access: AccessType,
    extra: u32,
) -> Error {
    Error::Exception(Exception::PageFault {
        address: linear,
        code: access_code(state, mode, access) | extra,
    })
}

/// Reads one entry of `wide` (8) or 4 bytes at `gpa`.
fn read_entry<R: GuestRam + ?Sized>(ram: &mut R, gpa: u64, wide: bool) -> Result<u64, Error> {
    if wide {
        return ram
            .read_aligned_u64(gpa)?
            .ok_or(Error::PageTableNotRam { gpa });
    }
    // A fixed-size buffer: a RAM implementation inlined here copies the
    // entry with one load instead of a variable-length copy.
    let mut buf = [0u8; 4];
    match ram.read(gpa, &mut buf)? {
        RamStatus::Done => Ok(u64::from(u32::from_le_bytes(buf))),
        RamStatus::NotRam => Err(Error::PageTableNotRam { gpa }),
    }
}

/// Walks the tables for `linear` without changing anything.
fn walk<'r, S: CpuState + ?Sized, R: GuestRam + ?Sized>(
    state: &S,
    ram: &mut R,
    mode: PagingMode,
    linear: u64,
    access: AccessType,
    record: &'r mut WalkRecord,
) -> Result<Walk<'r>, Error> {
    let nxe = state.efer() & EFER_NXE != 0;
    let phys = PhysBits::new(state.max_phys_addr());
    let rsvd = |extra: u32| page_fault(state, mode, linear, access, pf::P | pf::RSVD | extra);
    let not_present = || page_fault(state, mode, linear, access, 0);

    record.count = 0;
    record.wide = mode != PagingMode::Bits32;
    let mut w = Walk {
        gpa: 0,
        record,
        pdpte: false,
        all: !0,
        any: 0,
    };

    if mode == PagingMode::Bits32 {
        let linear = linear & 0xFFFF_FFFF;
        let pde_gpa = (state.cr3() & 0xFFFF_F000) | ((linear >> 22) << 2);
        let pde = read_entry(ram, pde_gpa, false)?;
        if pde & PTE_P == 0 {
            return Err(not_present());
        }
        w.push(pde_gpa, pde)?;
        w.all &= pde;
        if pde & PTE_PS != 0 && state.cr4() & CR4_PSE != 0 {
            // 4 MiB page. Bit 21 is reserved; bits 20:13 are physical address
            // bits 39:32 (PSE-36), of which those at or above
            // min(MAXPHYADDR, 40) are reserved (SDM table 4-4).
            let high_bits = phys.m.min(40) - 32;
            let reserved = (1u64 << 21) | (0xFF << 13) & !(((1u64 << high_bits) - 1) << 13);
            if pde & reserved != 0 {
                return Err(rsvd(0));
            }
            let high = ((pde >> 13) & 0xFF) << 32;
            w.gpa = high | (pde & 0xFFC0_0000) | (linear & 0x003F_FFFF);
            return Ok(w);
        }
        let pte_gpa = (pde & 0xFFFF_F000) | (((linear >> 12) & 0x3FF) << 2);
        let pte = read_entry(ram, pte_gpa, false)?;
        if pte & PTE_P == 0 {
            return Err(not_present());
        }
        w.push(pte_gpa, pte)?;
        w.all &= pte;
        // Bit 7 of a 4 KiB PTE is PAT, not PS.
        w.gpa = (pte & 0xFFFF_F000) | (linear & 0xFFF);
        return Ok(w);
    }

    // 64-bit entries: PAE, 4-level, 5-level.
    let xd_rsvd = if nxe { 0 } else { PTE_XD };
    // (table address, first level): level 5 = PML5, 4 = PML4, 3 = PDPT,
    // 2 = PD, 1 = PT.
    let (mut table, top) = match mode {
        PagingMode::Level5 => {
            if !is_canonical(linear, 57) {
                return Err(Error::Exception(Exception::GeneralProtection(0)));
            }
            (state.cr3() & phys.addr, 5)
        }
        PagingMode::Level4 => {
            if !is_canonical(linear, 48) {
                return Err(Error::Exception(Exception::GeneralProtection(0)));
            }
            (state.cr3() & phys.addr, 4)
        }
        _ => {
            // PAE: the PDPTE comes from the 32-byte aligned PDPT at CR3.
            let linear = linear & 0xFFFF_FFFF;
            let gpa = (state.cr3() & 0xFFFF_FFE0) | ((linear >> 30) << 3);
            let pdpte = read_entry(ram, gpa, true)?;
            if pdpte & PTE_P == 0 {
                return Err(not_present());
            }
            // PAE PDPTE: bits 2:1, 8:5 and 63:M are reserved (bit 63 is not
            // XD here, whatever EFER.NXE says). It has no U/S, R/W or XD,
            // so it is left out of `all` and `any`.
            let reserved = 0x6 | 0x1E0 | PTE_XD | phys.rsvd_pae;
            if pdpte & reserved != 0 {
                return Err(rsvd(0));
            }
            w.push(gpa, pdpte)?;
            w.pdpte = true;
            (pdpte & phys.addr, 2)
        }
    };
    let high_rsvd = if mode == PagingMode::Pae {
        phys.rsvd_pae
    } else {
        phys.rsvd_long
    };
    let linear_bits = if mode == PagingMode::Pae {
        linear & 0xFFFF_FFFF
    } else {
        linear
    };

    let mut level = top;
    loop {
        let shift = 12 + 9 * (level - 1);
        let index = (linear_bits >> shift) & 0x1FF;
        let gpa = table | (index << 3);
        let entry = read_entry(ram, gpa, true)?;
        if entry & PTE_P == 0 {
            return Err(not_present());
        }
        let mut reserved = xd_rsvd | high_rsvd;
        let large = entry & PTE_PS != 0 && level <= 3;
        match level {
            // PS is reserved in PML5Es and PML4Es.
            4 | 5 => reserved |= PTE_PS,
            // 1 GiB page: bits 29:13 reserved (bit 12 is PAT).
            3 if large => reserved |= 0x3FFF_E000,
            // 2 MiB page: bits 20:13 reserved.
            2 if large => reserved |= 0x001F_E000,
            _ => {}
        }
        if entry & reserved != 0 {
            return Err(rsvd(0));
        }
        w.push(gpa, entry)?;
        w.all &= entry;
        w.any |= entry;

        if level == 1 || large {
            // Level 1: bit 7 is PAT, not PS.
            let page_mask = (1u64 << shift) - 1;
            w.gpa = (entry & phys.addr & !page_mask) | (linear_bits & page_mask);
            return Ok(w);
        }
        table = entry & phys.addr;
        level -= 1;
    }
}

/// The permission checks of SDM vol. 3A §4.6 on a completed walk.
fn check_permissions<S: CpuState + ?Sized>(
    state: &S,
    mode: PagingMode,
    w: &Walk,
    linear: u64,
    access: AccessType,
) -> Result<(), Error> {
    let cr0 = state.cr0();
    let cr4 = state.cr4();
    let user_access = state.cpl() == 3;
    let wp = cr0 & CR0_WP != 0;
    let smap_blocks = cr4 & CR4_SMAP != 0 && state.rflags() & RFLAGS_AC == 0;
    let (user, writable) = (w.user(), w.writable());
    let allowed = match access {
        AccessType::Read => {
            if user_access {
                user
            } else {
                !(user && smap_blocks)
            }
        }
        AccessType::Write => {
            if user_access {
                user && writable
            } else if user && smap_blocks {
                false
            } else {
                writable || !wp
            }
        }
        AccessType::Execute => {
            let user_ok = if user_access {
                user
            } else {
                !(user && cr4 & CR4_SMEP != 0)
            };
            user_ok && !w.no_exec(state.efer() & EFER_NXE != 0)
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(page_fault(state, mode, linear, access, pf::P))
    }
}

/// Sets the accessed bits of every walked entry and the dirty bit of the
/// final one for a write, and records the values so set in `w.record`.
/// Returns `false` when an entry changed since the walk read it (the caller
/// walks again).
fn update_accessed_dirty<R: GuestRam + ?Sized>(
    ram: &mut R,
    w: &mut Walk<'_>,
    access: AccessType,
) -> Result<bool, Error> {
    let count = w.record.count.min(w.record.entries.len());
    let wide = w.record.wide;
    // A PAE PDPTE has no accessed bit.
    let first = usize::from(w.pdpte);
    for i in first..count {
        let Some(&(gpa, value)) = w.record.entries.get(i) else {
            return Err(Error::InconsistentExit);
        };
        let mut want = value | PTE_A;
        if i + 1 == count && access == AccessType::Write {
            want |= PTE_D;
        }
        if want == value {
            continue;
        }
        let len = if wide { 8 } else { 4 };
        let old = value.to_le_bytes();
        let new = want.to_le_bytes();
        let (Some(old), Some(new)) = (old.get(..len), new.get(..len)) else {
            return Err(Error::InconsistentExit);
        };
        match ram.compare_and_write(gpa, old, new)? {
            CompareWrite::Written => {}
            CompareWrite::Mismatch => return Ok(false),
            CompareWrite::NotRam => return Err(Error::PageTableNotRam { gpa }),
        }
        if let Some(e) = w.record.entries.get_mut(i) {
            e.1 = want;
        }
    }
    Ok(true)
}
