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
