//! Safe, zero-copy Rust interface to NetBSD's NVMM hypervisor, replacing
//! libnvmm: it talks to `/dev/nvmm` by ioctl and reads and writes each
//! VCPU's state in place in its comm page.
//!
//! - [`Nvmm`]: the open device and its [`Capability`];
//! - [`Machine`]: a virtual machine, its guest memory ([`Machine::hva_map`],
//!   [`Machine::gpa_map`]) and the GPA→HVA area list;
//! - [`Vcpu`]: a virtual CPU: state by class ([`Vcpu::gprs`], ...), events
//!   ([`Vcpu::inject`]), [`Vcpu::run`] returning a typed [`Exit`], the
//!   assists ([`Vcpu::assist_io`], [`Vcpu::assist_mem`]);
//! - [`VcpuStopper`]: stops a run from another thread or a signal handler;
//! - [`VcpuState`]: a snapshot of every state class, from [`Vcpu::save`]
//!   and applied by [`Vcpu::restore`] (feature `serde`: serializable).
//!
//! Features: `assist` (default) adds the assists and re-exports
//! `nvmm_assist`; `serde` makes [`VcpuState`] serializable; `model` adds
//! `nvmm::model`, an in-process **model** of the NVMM kernel (not NetBSD),
//! for testing a VMM's run loop with scripted exits on any Unix;
//! `vm-memory` adds `Machine::guest_memory` (module `rust_vmm`): the guest
//! RAM as a rust-vmm `vm_memory::GuestMemory`, for linux-loader,
//! virtio-queue and other rust-vmm crates.
//!
//! NVMM has no dirty-page tracking, no in-kernel interrupt controller or
//! timers, and gives the guest the host's TSC rate: [`limitations`] says
//! how a VMM copes.
//!
//! Costs, as in libnvmm: reading a cached class and every write are free
//! (no syscall); a run invalidates the state except what the kernel
//! provides with the exit (GPRS|SEGS|CRS|MSRS on I/O and memory exits), so
//! handling an I/O or memory exit costs exactly one syscall, the next run.
//!
//! ```no_run
//! use nvmm::{Exit, Gpr, Nvmm, Prot, Seg};
//!
//! let nvmm = Nvmm::open()?;
//! let machine = nvmm.create_machine()?;
//! let ram = machine.hva_map(1 << 20)?;
//! machine.gpa_map(&ram, 0, 0, 1 << 20, Prot::ALL)?;
//! machine.write_guest(0x1000, &[0xB0, 0x2A, 0xE6, 0x80, 0xF4])?; // mov al, 42; out 0x80, al; hlt
//! let mut vcpu = machine.create_vcpu(0)?;
//! let mut cs = vcpu.segs()?.get(Seg::Cs);
//! (cs.selector, cs.base) = (0, 0);
//! vcpu.segs()?.set(Seg::Cs, cs); // real mode, CS:IP = 0:0x1000
//! vcpu.gprs()?.set_rip(0x1000);
//! loop {
//!     match vcpu.run()? {
//!         Exit::Io(io) => {
//!             println!("port {:#x} <- {:#x}", io.port, vcpu.gprs()?.get(Gpr::Rax) & 0xFF);
//!             vcpu.skip_instruction()?;
//!         }
//!         Exit::Halted => break,
//!         other => println!("exit {other:?}"),
//!     }
//! }
//! # Ok::<(), nvmm::Error>(())
//! ```
//!
//! Coming from libnvmm: see [`migration`] for every libnvmm function's
//! counterpart, the semantic differences, and where this crate is stricter
//! than the kernel.
//!
//! The crate compiles on any Unix so that its tests run against an
//! in-process model of the kernel (`model`, feature `model`); on a host
//! without NVMM, [`Nvmm::open`] returns [`Error::NotAvailable`].

#[cfg(test)]
extern crate self as nvmm;

#[cfg(feature = "assist")]
mod assist;
mod comm;
mod device;
mod dump;
mod error;
mod exit;
mod guest_ram;
mod interrupt;
mod kick;
pub mod limitations;
mod machine;
mod memory;
pub mod migration;
#[cfg(any(test, feature = "model"))]
pub mod model;
#[cfg(feature = "assist")]
mod port_io;
#[cfg(feature = "vm-memory")]
pub mod rust_vmm;
mod setup;
mod snapshot;
mod state;
mod stop_request;
pub mod sys;
mod vcpu;
pub mod x86;

#[cfg(feature = "assist")]
pub use assist::{GvaAccess, GvaTranslation, Outcome, host_vendor};
pub use comm::stop::VcpuStopper;
pub use device::{Capability, MachineInfo, Nvmm, SUPPORTED_VERSION};
pub use dump::StateDump;
pub use error::{Error, Op, Rejection, Result, TeardownHook, set_teardown_error_hook};
pub use exit::{Exit, ExitState, IoDirection, IoExit, MemAccess, MemoryExit, RdmsrExit, WrmsrExit};
pub use kick::install_kick_handler;
pub use machine::{Machine, MachineConf};
pub use memory::{GpaArea, HostMapping, Prot};
/// The CPU vendor whose behaviour the assists emulate
/// ([`Vcpu::guest_vendor`]).
#[cfg(feature = "assist")]
pub use nvmm_assist::Vendor;
pub use setup::{SegFields, selectors};
pub use snapshot::{FXSAVE_SIZE, FxsaveArea, VcpuState};
pub use state::{
    Cr, Crs, DEFAULT_MXCSR_MASK, Dr, Drs, Fpu, Gpr, Gprs, Intr, IntrState, Msr, Msrs, Seg,
    SegAttrib, Segment, Segs, StateClasses,
};
pub use stop_request::StopRequest;
pub use vcpu::{CpuidConf, CpuidRegs, Event, PROVIDED_ON_IO_AND_MEMORY, Vcpu};

#[cfg(feature = "assist")]
pub use nvmm_assist;
/// The raw bindings this crate is built on.
pub use nvmm_sys;
