//! x86 architectural bits a VMM writes into the VCPU state: CR0, CR4,
//! EFER and RFLAGS (Intel SDM vol. 3A §2.5 and §2.2.1, vol. 1 §3.4.3;
//! AMD APM vol. 2 §3.1). Plain `u64` constants, to be or-ed together and
//! used with [`crate::Crs`], [`crate::Msrs`] and [`crate::Gprs`].
//!
//! ```
//! use nvmm::x86::{cr0, cr4, efer, rflags};
//! let long_mode_cr0 = cr0::PE | cr0::ET | cr0::NE | cr0::PG;
//! let long_mode_efer = efer::LME | efer::LMA; // NVMM wants LMA as well
//! assert_eq!(long_mode_cr0, 0x8000_0031);
//! assert_eq!(long_mode_efer | cr4::PAE | rflags::FIXED, 0x0522);
//! ```

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// x87 emulation.
    pub const EM: u64 = 1 << 2;
    /// Task switched.
    pub const TS: u64 = 1 << 3;
    /// Extension type (always 1 on modern CPUs; VMX forces it).
    pub const ET: u64 = 1 << 4;
    /// Numeric error (native x87 error reporting; VMX forces it).
    pub const NE: u64 = 1 << 5;
    /// Write protect (supervisor writes honour read-only pages).
    pub const WP: u64 = 1 << 16;
    /// Alignment mask.
    pub const AM: u64 = 1 << 18;
    /// Not write-through.
    pub const NW: u64 = 1 << 29;
    /// Cache disable.
    pub const CD: u64 = 1 << 30;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    /// Virtual-8086 mode extensions.
    pub const VME: u64 = 1 << 0;
    /// Protected-mode virtual interrupts.
    pub const PVI: u64 = 1 << 1;
    /// RDTSC restricted to CPL 0.
    pub const TSD: u64 = 1 << 2;
    /// Debugging extensions.
    pub const DE: u64 = 1 << 3;
    /// Page size extensions (4 MiB pages in 32-bit paging).
    pub const PSE: u64 = 1 << 4;
    /// Physical address extension (required for long mode).
    pub const PAE: u64 = 1 << 5;
    /// Machine-check enable.
    pub const MCE: u64 = 1 << 6;
    /// Global pages.
    pub const PGE: u64 = 1 << 7;
    /// RDPMC at any CPL.
    pub const PCE: u64 = 1 << 8;
    /// FXSAVE/FXRSTOR and SSE enabled by the OS.
    pub const OSFXSR: u64 = 1 << 9;
    /// Unmasked SIMD floating-point exceptions.
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// User-mode instruction prevention.
    pub const UMIP: u64 = 1 << 11;
    /// 5-level paging.
    pub const LA57: u64 = 1 << 12;
    /// VMX enable.
    pub const VMXE: u64 = 1 << 13;
    /// SMX enable.
    pub const SMXE: u64 = 1 << 14;
    /// RDFSBASE and friends.
    pub const FSGSBASE: u64 = 1 << 16;
    /// Process-context identifiers.
    pub const PCIDE: u64 = 1 << 17;
    /// XSAVE and XCR0 enabled by the OS.
    pub const OSXSAVE: u64 = 1 << 18;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention.
    pub const SMAP: u64 = 1 << 21;
    /// Protection keys.
    pub const PKE: u64 = 1 << 22;
}

/// IA32_EFER bits.
pub mod efer {
    /// The MSR number of IA32_EFER.
    pub const MSR: u32 = 0xC000_0080;
    /// SYSCALL/SYSRET enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active. The CPU sets it when paging is enabled with LME;
    /// a VMM that puts a VCPU straight into long mode sets it itself (NVMM
    /// loads EFER as given).
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
    /// SVM enable (NVMM on AMD sets it in the hardware EFER and hides it
    /// from getstate; `svm_vcpu_setstate` in `nvmm_x86_svm.c`).
    pub const SVME: u64 = 1 << 12;
}

/// RFLAGS bits.
pub mod rflags {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Bit 1, always 1.
    pub const FIXED: u64 = 1 << 1;
    /// Parity.
    pub const PF: u64 = 1 << 2;
    /// Auxiliary carry.
    pub const AF: u64 = 1 << 4;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Sign.
    pub const SF: u64 = 1 << 7;
    /// Trap (single step).
    pub const TF: u64 = 1 << 8;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// Direction.
    pub const DF: u64 = 1 << 10;
    /// Overflow.
    pub const OF: u64 = 1 << 11;
    /// I/O privilege level (two bits).
    pub const IOPL: u64 = 3 << 12;
    /// Nested task.
    pub const NT: u64 = 1 << 14;
    /// Resume (suppresses instruction breakpoints once).
    pub const RF: u64 = 1 << 16;
    /// Virtual-8086 mode.
    pub const VM: u64 = 1 << 17;
    /// Alignment check / access control.
    pub const AC: u64 = 1 << 18;
    /// Virtual interrupt flag.
    pub const VIF: u64 = 1 << 19;
    /// Virtual interrupt pending.
    pub const VIP: u64 = 1 << 20;
    /// CPUID available.
    pub const ID: u64 = 1 << 21;
}
