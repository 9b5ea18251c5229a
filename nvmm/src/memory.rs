//! Guest memory: host mappings (`NVMM_IOC_HVA_MAP`), guest-physical
//! mappings (`NVMM_IOC_GPA_MAP`) and the GPA→HVA area list kept in step
//! with the kernel.
//!
//! Invariants of [`Areas`], kept even when an ioctl fails (the list changes
//! only after the kernel accepted the change):
//! - host mappings do not overlap each other;
//! - every guest area lies wholly inside one host mapping, and guest areas
//!   do not overlap each other;
//! - a host mapping is never released while a guest area uses it.

use crate::error::{Error, Op, Rejection, Result};
use crate::sys::PAGE_SIZE;

bitflags::bitflags! {
    /// Guest access rights of a guest-physical mapping (NetBSD's `PROT_*`
    /// values, which the kernel takes in `NVMM_IOC_GPA_MAP`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Prot: u32 {
        /// Guest reads.
        const READ = 0x1;
        /// Guest writes.
        const WRITE = 0x2;
        /// Guest instruction fetches.
        const EXEC = 0x4;
        /// Read, write and execute.
        const ALL = 0x7;
    }
}

/// A host range registered with the kernel by `NVMM_IOC_HVA_MAP`.
///
/// A copyable token: the memory stays owned by the [`crate::Machine`] until
/// [`crate::Machine::hva_unmap`] (which the machine refuses while a guest
/// mapping uses it) or until the machine is destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostMapping {
    pub(crate) hva: usize,
    pub(crate) size: usize,
}

impl HostMapping {
    /// The start of the range in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.hva as *mut u8
    }
    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.size
    }
    /// Always `false`: zero-length mappings are refused.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct HostArea {
    pub(crate) hva: usize,
    pub(crate) size: usize,
    /// Allocated by this crate (unmapped by it after the machine is gone).
    pub(crate) owned: bool,
}

/// One guest-physical area: `gpa..gpa+size` is `hva..hva+size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaArea {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host start.
    pub hva: usize,
    /// Guest access rights.
    pub prot: Prot,
}

impl GpaArea {
    fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa - self.gpa < self.size
    }
}

#[derive(Debug, Default)]
pub(crate) struct Areas {
    pub(crate) hosts: Vec<HostArea>,
    pub(crate) gpas: Vec<GpaArea>,
}

pub(crate) fn page_aligned(v: u64) -> bool {
    v.is_multiple_of(PAGE_SIZE as u64)
}

fn ranges_overlap(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    // Both ranges are known not to overflow.
    a < b + blen && b < a + alen
}

impl Areas {
    /// Checks a new host range against the rules of `NVMM_IOC_HVA_MAP`.
    pub(crate) fn check_host(&self, hva: usize, size: usize) -> Result<()> {
        let rej = |r| Err(Error::rejected(Op::HvaMap, r));
        if size == 0 {
            return rej(Rejection::ZeroSize);
        }
        if hva == 0 || !page_aligned(hva as u64) || !page_aligned(size as u64) {
            return rej(Rejection::NotPageAligned);
        }
        if hva.checked_add(size).is_none() {
            return rej(Rejection::Overflow);
        }
        // The kernel accepts a range wholly inside an existing one and then
        // replaces those pages under the first mapping; refuse all overlap.
        if self
            .hosts
            .iter()
            .any(|h| ranges_overlap(h.hva as u64, h.size as u64, hva as u64, size as u64))
        {
            return rej(Rejection::HvaOverlap);
        }
        Ok(())
    }

    pub(crate) fn host_index(&self, m: &HostMapping) -> Option<usize> {
        self.hosts
            .iter()
            .position(|h| h.hva == m.hva && h.size == m.size)
    }

    /// Checks a new guest area against the rules of `NVMM_IOC_GPA_MAP` and
    /// the list (libnvmm's overlap check).
    pub(crate) fn check_gpa(&self, area: &GpaArea) -> Result<()> {
        let rej = |r| Err(Error::rejected(Op::GpaMap, r));
        if area.size == 0 {
            return rej(Rejection::ZeroSize);
        }
        if !page_aligned(area.gpa) || !page_aligned(area.size) || !page_aligned(area.hva as u64) {
            return rej(Rejection::NotPageAligned);
        }
        if area.gpa.checked_add(area.size).is_none() {
            return rej(Rejection::Overflow);
        }
        let inside = self.hosts.iter().any(|h| {
            area.hva >= h.hva
                && ((area.hva - h.hva) as u64)
                    .checked_add(area.size)
                    .is_some_and(|end| end <= h.size as u64)
        });
        if !inside {
            return rej(Rejection::NotInHostMapping);
        }
        if self
            .gpas
            .iter()
            .any(|g| ranges_overlap(g.gpa, g.size, area.gpa, area.size))
        {
            return rej(Rejection::GpaOverlap);
        }
        Ok(())
    }

    pub(crate) fn host_in_use(&self, h: &HostArea) -> bool {
        self.gpas
            .iter()
            .any(|g| g.hva >= h.hva && g.hva - h.hva < h.size)
    }

    /// The area holding `gpa`.
    pub(crate) fn find(&self, gpa: u64) -> Option<&GpaArea> {
        self.gpas.iter().find(|a| a.contains(gpa))
    }

    /// The host address of `gpa..gpa+len` if one area holds all of it and
    /// allows `need`.
    #[cfg(feature = "assist")]
    pub(crate) fn host_range(
        &self,
        gpa: u64,
        len: usize,
        need: Prot,
    ) -> Option<std::ptr::NonNull<u8>> {
        let a = self.find(gpa)?;
        let off = gpa - a.gpa;
        if off.checked_add(len as u64)? > a.size || !a.prot.contains(need) {
            return None;
        }
        std::ptr::NonNull::new((a.hva as u64).checked_add(off)? as usize as *mut u8)
    }
}
