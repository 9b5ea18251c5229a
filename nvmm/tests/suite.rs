//! nvmm's integration tests, one module per file of this folder, built as
//! ONE test binary.
//!
//! Why one binary: each separate test binary linked nvmm and instantiated
//! the assist's generic code again, in every build that CI makes of the
//! tests (debug, release, NetBSD cross-build, ThreadSanitizer). The files
//! keep their paths (documentation refers to them), and each is loaded
//! with `#[path]` so that its own `#[path]` and `mod` items resolve from
//! this folder, as they did when it was a crate root. The shared set-up
//! modules are declared once here, and the files `use` them.
//!
//! Tests of every file run in parallel in one process, so process-wide
//! state must not be shared between files. Signal dispositions are:
//! `stop_signal.rs` needs SIGUSR2 to have NO handler, so it stays a binary
//! of its own (Cargo.toml). The two files here that install a SIGUSR2
//! handler cannot meet: `capability_guests_kvm` exists on Linux only and
//! `kernel_capabilities` returns before its handler where `/dev/nvmm` is
//! absent (every Linux).
//! Run one file's tests with a filter: `cargo test -p nvmm --test suite
//! concurrency::`.

/// `Vcpu::assist_mem` and `Vcpu::assist_io` with the buses as trait
/// objects. Each device type passed to them compiles its own copy of the
/// whole assist (every lane, per address size) into this binary, in every
/// build CI makes of it (debug, release, NetBSD, both sanitizers); the
/// files' devices go through these so that they share one. The assist is
/// the same code: only the bus calls are dynamic.
#[cfg(feature = "assist")]
mod dyn_assist {
    use nvmm::nvmm_assist::{MmioBus, PortIo};
    use nvmm::{Outcome, Result, Vcpu};

    pub trait AssistDyn {
        /// [`Vcpu::assist_mem`] with `mmio` as a trait object.
        fn assist_mem_dyn(&mut self, mmio: &mut dyn MmioBus) -> Result<Outcome>;
        /// [`Vcpu::assist_io`] with the buses as trait objects.
        fn assist_io_dyn(
            &mut self,
            mmio: &mut dyn MmioBus,
            ports: &mut dyn PortIo,
        ) -> Result<Outcome>;
    }

    impl AssistDyn for Vcpu {
        fn assist_mem_dyn(&mut self, mmio: &mut dyn MmioBus) -> Result<Outcome> {
            self.assist_mem(mmio)
        }

        fn assist_io_dyn(
            &mut self,
            mmio: &mut dyn MmioBus,
            ports: &mut dyn PortIo,
        ) -> Result<Outcome> {
            self.assist_io(mmio, ports)
        }
    }
}

#[cfg(all(not(miri), target_arch = "x86_64", target_os = "linux"))]
mod kvm_support;

#[cfg(all(not(miri), feature = "assist"))]
mod kernel_support;

/// The toyvm example (its VMM, devices and guest), run by `kernel_toyvm`,
/// `toyvm_loop` and (devices and guest) `toyvm_kvm`.
#[cfg(feature = "assist")]
#[path = "../examples/toyvm/main.rs"]
#[allow(dead_code)]
mod toyvm;

/// The long-mode capability guests, run on KVM (`capability_guests_kvm`)
/// and on NVMM (`kernel_capabilities`).
#[cfg(not(miri))]
#[path = "guests/long.rs"]
mod long_guests;

/// The NetBSD-test guests, run on KVM (`netbsd_guests_kvm`) and on NVMM
/// (`kernel_netbsd_assist`).
#[cfg(not(miri))]
#[path = "guests/netbsd.rs"]
mod netbsd_guests;

#[path = "assist.rs"]
mod assist;
#[path = "assist_state.rs"]
mod assist_state;
#[path = "capability_guests_kvm.rs"]
mod capability_guests_kvm;
#[path = "concurrency.rs"]
mod concurrency;
#[path = "exits.rs"]
mod exits;
#[path = "fetch_cache.rs"]
mod fetch_cache;
#[path = "gva.rs"]
mod gva;
#[path = "kernel_capabilities.rs"]
mod kernel_capabilities;
#[path = "kernel_netbsd_assist.rs"]
mod kernel_netbsd_assist;
#[path = "kernel_toyvm.rs"]
mod kernel_toyvm;
#[path = "machine.rs"]
mod machine;
#[path = "memory.rs"]
mod memory;
#[path = "model_rules.rs"]
mod model_rules;
#[path = "mxcsr.rs"]
mod mxcsr;
#[path = "netbsd_guests_kvm.rs"]
mod netbsd_guests_kvm;
#[path = "open.rs"]
mod open;
#[path = "read_only_tables.rs"]
mod read_only_tables;
#[path = "snapshot.rs"]
mod snapshot;
#[path = "stop_semantics.rs"]
mod stop_semantics;
#[path = "syscalls.rs"]
mod syscalls;
#[path = "teardown.rs"]
mod teardown;
#[path = "toyvm_kvm.rs"]
mod toyvm_kvm;
#[path = "toyvm_loop.rs"]
mod toyvm_loop;
#[path = "vcpu.rs"]
mod vcpu;
#[cfg(feature = "vm-memory")]
#[path = "vm_memory.rs"]
mod vm_memory;
#[path = "vmm_helpers.rs"]
mod vmm_helpers;
