//! The x86 instruction assist of nvmm-rs: decode the guest instruction behind
//! an MMIO or port-I/O exit, walk the guest page tables, perform the access
//! through the caller's buses and update the guest registers exactly as the
//! CPU would have.
//!
//! The crate knows nothing about any hypervisor. The caller implements
//! [`CpuState`] (registers, possibly straight over a shared page), [`GuestRam`],
//! [`MmioBus`] and [`PortIo`], then calls [`assist_mem`] or [`assist_io`].
//!
//! The crate keeps no state between calls. Two optional pieces make the
//! hot paths cheaper without changing any result:
//! - a [`FetchCache`] per VCPU, passed to [`assist_mem_cached`] and
//!   [`assist_io_cached`], saves most of the page walk of exits that carry
//!   no instruction bytes (VMX), and of the operands the assist translates
//!   itself (the stack of PUSH/POP m, the RAM side of MOVS/CMPS, the memory
//!   side of INS/OUTS); it is re-validated against the guest's tables and
//!   control state on every use;
//! - batch methods on the buses ([`PortIo::read_batch`],
//!   [`PortIo::write_batch`], [`MmioBus::write_batch`]) let a device take a
//!   whole `REP INS`/`OUTS`/`STOS`/`MOVS` batch in one call; their defaults
//!   keep one call per element.
//!
//! Guarantees, for any input a guest or a kernel can produce:
//! - the result is [`Outcome::Done`], [`Outcome::Resume`] or an [`Error`]:
//!   never a panic, an unbounded loop or an out-of-bounds access;
//! - on an error no guest register has changed and no further device access
//!   happens after the failing one;
//! - a REP instruction is done in bounded batches ([`Outcome::Resume`]).
//!
//! Feature `vm-memory`: [`GuestRam`] for any rust-vmm
//! `vm_memory::GuestMemory` (module `rust_vmm`), so that a VMM built on the
//! rust-vmm crates, on NVMM or any other hypervisor, passes its guest memory
//! as is; locked instructions and page-table accessed/dirty updates use
//! atomic compare-exchanges on it where the size and alignment allow.
//!
//! To see what the assist does with the bytes a VMM logged from a failing
//! exit, run the `explain` example (no hypervisor needed): it prints the
//! decoded instruction, its operands and addresses, every RAM, MMIO and port
//! access, and the register and flag changes, or the exact refusal:
//!
//! ```text
//! $ cargo run -p nvmm-assist --example explain -- --mode prot32 8b 00 rax=0x1000 ds.limit=0xfff
//! ...
//! result: refused: #GP(0x0) (general protection): the VMM injects it
//! ```
#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "vm-memory"))]
extern crate std;
// Lets the shared test support name the crate as the integration tests do.
#[cfg(test)]
extern crate self as nvmm_assist;

pub mod access;
pub mod bus;
mod data_cache;
pub mod decode;
pub mod error;
mod exec;
mod fetch;
pub mod fetch_cache;
pub mod flags;
pub mod io;
mod mem;
pub mod mode;
#[cfg(feature = "vm-memory")]
pub mod rust_vmm;
pub mod segment;
pub mod state;
pub mod translate;
pub mod vendor;

#[cfg(test)]
mod general_fetch_tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use access::AccessType;
pub use bus::{
    BusError, CompareWrite, EntryCheck, GuestRam, MmioBus, PartialBatch, PortIo, RamStatus,
    check_entries_in_order,
};
pub use decode::{DecodeError, Instruction, decode};
pub use error::{Error, Exception};
pub use fetch_cache::FetchCache;
pub use io::{IoExit, assist_io, assist_io_cached};
pub use mem::{MemExit, assist_mem, assist_mem_cached};
pub use mode::{CpuMode, InconsistentState};
pub use segment::linear_address;
pub use state::{CpuState, Gpr, Registers, Segment, SegmentAttributes, SegmentRegister};
pub use translate::{PageTranslation, translate, translate_query};
pub use vendor::Vendor;

/// How an assist call ended when it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The instruction completed; RIP points past it.
    Done,
    /// A bounded batch of a REP instruction was performed: RCX, RSI and RDI
    /// reflect the completed iterations and RIP is unchanged, so the guest
    /// re-executes the instruction (and exits again) for the rest.
    ///
    /// [`assist_mem`] also returns it, with nothing changed, when a locked
    /// read-modify-write on RAM kept losing the race against another writer
    /// (a bounded number of retries): re-executing the instruction retries.
    Resume,
}
