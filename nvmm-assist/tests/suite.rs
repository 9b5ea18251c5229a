//! nvmm-assist's integration tests, one module per file of this folder,
//! built as ONE test binary.
//!
//! Why one binary: every test file instantiates the assist's generic code
//! (`assist_mem`/`assist_io` over its own RAM, MMIO and port types) again,
//! and in a release build each separate binary paid that optimisation and
//! its link again: thirty binaries made `cargo test --release` spend most
//! of its time compiling. One crate instantiates each monomorphization once.
//! The files keep their paths (documentation refers to them), and each is
//! loaded with `#[path]` so that its own `#[path]` and `mod` items resolve
//! from this folder, as they did when it was a crate root. Shared helpers
//! (`support`) are one module here, which the files `use`.
//!
//! Run one file's tests with a filter: `cargo test -p nvmm-assist --test
//! suite oracle_kvm::`.

mod support;

// The oracle harness (`oracle_support/`) names the host's vendor as
// `crate::host_vendor`, as each oracle file's crate root had it.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
use support::host_vendor;

/// The decoder's differential oracle (iced-x86), shared by `decode_iced`
/// and `decode_iced_host_cases`.
mod decode_oracle;
/// The generator `decode_oracle` names as `super::Rng`.
use support::Rng;

/// The hardware oracles' harness, shared by `oracle_host`, `oracle_kvm`
/// and `decode_iced_host_cases`: the files name each other as `super::`.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(dead_code)]
mod oracle_support {
    /// The generator `encode` names as `super::Rng`.
    pub use crate::support::Rng;
    pub mod cases;
    pub mod encode;
    pub mod host;
    pub mod kvm;
    pub mod kvm_cases;
    pub mod kvm_modes;
    pub mod mock;
    pub mod native;
}

/// The bench's MMIO page: `check_entries.rs` includes the bench's
/// `devices.rs`, which takes it from its crate root, as the bench has it.
const MMIO: u64 = 0x1000;

#[path = "check_entries.rs"]
mod check_entries;
#[path = "data_cache.rs"]
mod data_cache;
#[path = "decode_iced.rs"]
mod decode_iced;
#[path = "decode_iced_host_cases.rs"]
mod decode_iced_host_cases;
#[path = "decode_segment_hw.rs"]
mod decode_segment_hw;
#[path = "error_paths.rs"]
mod error_paths;
#[path = "explain.rs"]
mod explain;
#[path = "fetch_cache.rs"]
mod fetch_cache;
#[path = "fetch_lanes.rs"]
mod fetch_lanes;
#[path = "fuzz_regressions.rs"]
mod fuzz_regressions;
#[path = "io.rs"]
mod io;
#[path = "io_batch.rs"]
mod io_batch;
#[path = "io_cached.rs"]
mod io_cached;
#[path = "mem_assist.rs"]
mod mem_assist;
#[path = "mem_assist_netbsd.rs"]
mod mem_assist_netbsd;
#[path = "mem_assist_robust.rs"]
mod mem_assist_robust;
#[path = "mmio_batch.rs"]
mod mmio_batch;
#[path = "oracle_host.rs"]
mod oracle_host;
#[path = "oracle_kvm.rs"]
mod oracle_kvm;
#[path = "oracle_kvm_paging.rs"]
mod oracle_kvm_paging;
#[path = "oracle_kvm_segment.rs"]
mod oracle_kvm_segment;
#[path = "pair_walks.rs"]
mod pair_walks;
#[path = "register_writes.rs"]
mod register_writes;
#[path = "robustness.rs"]
mod robustness;
#[path = "segment.rs"]
mod segment;
#[path = "state_setup.rs"]
mod state_setup;
#[path = "translate.rs"]
mod translate;
#[path = "translate_query.rs"]
mod translate_query;
#[path = "vendor_rules.rs"]
mod vendor_rules;
#[path = "vm_memory.rs"]
mod vm_memory;
