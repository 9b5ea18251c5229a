//! The vendor of the CPU these tests run on (CPUID leaf 0), for the
//! oracles: the native CPU and KVM guests on it behave as this vendor's
//! CPUs do, so the assist under comparison is given the same vendor.
#![allow(dead_code)]

use nvmm_assist::Vendor;
use std::sync::OnceLock;

/// The host CPU's vendor. Panics (a test-harness failure, not an oracle
/// mismatch) on a vendor `nvmm_assist::Vendor` does not know.
pub fn host_vendor() -> Vendor {
    static VENDOR: OnceLock<Vendor> = OnceLock::new();
    *VENDOR.get_or_init(|| {
        // `__cpuid` is a safe function from Rust 1.89 on; the block keeps
        // the crate building with its minimum supported Rust (1.88).
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86_64 CPU; leaf 0 only reads.
        let r = unsafe { core::arch::x86_64::__cpuid(0) };
        Vendor::from_cpuid_leaf0(r.ebx, r.ecx, r.edx).unwrap_or_else(|| {
            let mut id = r.ebx.to_le_bytes().to_vec();
            id.extend(r.edx.to_le_bytes());
            id.extend(r.ecx.to_le_bytes());
            panic!(
                "host CPU vendor {:?} is unknown to nvmm_assist::Vendor: add it",
                String::from_utf8_lossy(&id)
            )
        })
    })
}
