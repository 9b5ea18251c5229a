//! The comm page offsets of `nvmm.h` (`NVMM_COMM_OFF`, `NVMM_COMM_MACHID`,
//! `NVMM_COMM_CPUID`), as `const fn`s.
//!
//! Each VCPU's comm page is mapped with `mmap(2)` on the `/dev/nvmm`
//! descriptor at an offset that names the machine (bits 20..=27) and the VCPU
//! (bits 12..=19); only the low 8 bits of each id are encoded.

use crate::{nvmm_cpuid_t, nvmm_machid_t};

/// `NVMM_COMM_OFF(machid, cpuid)`: the `mmap` offset of a VCPU's comm page.
#[must_use]
pub const fn nvmm_comm_off(machid: nvmm_machid_t, cpuid: nvmm_cpuid_t) -> u64 {
    ((machid as u64 & 0xFF) << 20) | ((cpuid as u64 & 0xFF) << 12)
}

/// `NVMM_COMM_MACHID(off)`: the machine id encoded in a comm page offset.
#[must_use]
pub const fn nvmm_comm_machid(off: u64) -> nvmm_machid_t {
    ((off >> 20) & 0xFF) as nvmm_machid_t
}

/// `NVMM_COMM_CPUID(off)`: the VCPU id encoded in a comm page offset.
#[must_use]
pub const fn nvmm_comm_cpuid(off: u64) -> nvmm_cpuid_t {
    ((off >> 12) & 0xFF) as nvmm_cpuid_t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_encode_both_ids_page_aligned() {
        assert_eq!(nvmm_comm_off(0, 0), 0);
        assert_eq!(nvmm_comm_off(1, 0), 0x10_0000);
        assert_eq!(nvmm_comm_off(0, 1), 0x1000);
        assert_eq!(nvmm_comm_off(0xAB, 0xCD), 0x0ABC_D000);
        // Only the low 8 bits of each id are encoded, as in the C macro.
        assert_eq!(nvmm_comm_off(0x1FF, 0x3FE), nvmm_comm_off(0xFF, 0xFE));
    }

    #[test]
    fn ids_round_trip_for_every_encodable_pair() {
        for machid in 0..=0xFF {
            for cpuid in 0..=0xFF {
                let off = nvmm_comm_off(machid, cpuid);
                assert_eq!(off % 4096, 0);
                assert_eq!(nvmm_comm_machid(off), machid);
                assert_eq!(nvmm_comm_cpuid(off), cpuid);
            }
        }
    }
}
