//! Test support for the integration tests: the same file the unit tests use
//! as `crate::testutil` (RAM with MMIO holes and page-table builders,
//! recording MMIO and port buses, CPU state builders).
#![allow(dead_code, unused_imports)]

#[path = "../../src/testutil.rs"]
mod testutil;

pub use testutil::*;

pub mod memdev;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod kvm_flat;

#[cfg(target_arch = "x86_64")]
#[path = "../oracle_support/host_vendor.rs"]
pub mod host_vendor;

/// The assists with the state, RAM and buses as trait objects, for the
/// integration tests: each distinct (state, RAM, MMIO) type compiles its
/// own copy of the whole assist (every lane, per address size, with the
/// locked read-modify-write closures: about 1 MB of release code each),
/// and the suite's devices used to make eleven. Through these the suite
/// compiles one (the bench, which measures concrete types, and
/// `support::memdev`, which the bench shares, keep theirs). Semantics are
/// the same code's: only the trait calls are dynamic.
pub mod dyn_assist {
    use nvmm_assist::{
        CpuState, Error, FetchCache, GuestRam, IoExit, MemExit, MmioBus, Outcome, PortIo,
    };

    /// [`nvmm_assist::assist_mem`] through trait objects.
    pub fn assist_mem(
        state: &mut dyn CpuState,
        ram: &mut dyn GuestRam,
        mmio: &mut dyn MmioBus,
        exit: &MemExit<'_>,
    ) -> Result<Outcome, Error> {
        nvmm_assist::assist_mem(state, ram, mmio, exit)
    }

    /// [`nvmm_assist::assist_mem_cached`] through trait objects.
    pub fn assist_mem_cached(
        state: &mut dyn CpuState,
        ram: &mut dyn GuestRam,
        mmio: &mut dyn MmioBus,
        exit: &MemExit<'_>,
        cache: &mut FetchCache,
    ) -> Result<Outcome, Error> {
        nvmm_assist::assist_mem_cached(state, ram, mmio, exit, cache)
    }

    /// [`nvmm_assist::assist_io`] through trait objects.
    pub fn assist_io(
        state: &mut dyn CpuState,
        ram: &mut dyn GuestRam,
        mmio: &mut dyn MmioBus,
        ports: &mut dyn PortIo,
        exit: &IoExit,
    ) -> Result<Outcome, Error> {
        nvmm_assist::assist_io(state, ram, mmio, ports, exit)
    }

    /// [`nvmm_assist::assist_io_cached`] through trait objects.
    pub fn assist_io_cached(
        state: &mut dyn CpuState,
        ram: &mut dyn GuestRam,
        mmio: &mut dyn MmioBus,
        ports: &mut dyn PortIo,
        exit: &IoExit,
        cache: &mut FetchCache,
    ) -> Result<Outcome, Error> {
        nvmm_assist::assist_io_cached(state, ram, mmio, ports, exit, cache)
    }
}
