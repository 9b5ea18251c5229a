//! The guest CPU's vendor, and every rule of the emulated instructions that
//! depends on it.
//!
//! NVMM runs on Intel (VMX) and AMD (SVM) hosts, and the guest sees the
//! host's CPU. Where Intel and AMD CPUs differ in what an emulated
//! instruction does, the assist does what the guest's CPU would do: the
//! caller states the vendor through [`CpuState::vendor`](crate::CpuState::vendor)
//! (there is no default that would be right on one vendor only).
//!
//! # Vendor-dependent behaviour
//!
//! | behaviour | Intel | AMD | source |
//! |---|---|---|---|
//! | REP string instruction (MOVS, STOS, LODS, CMPS, SCAS; REP/REPE/REPNE) with a zero count, 32-bit address size (`0x67`), 64-bit mode | writes ECX as a 32-bit register (RCX\[63:32\] cleared); MOVS also ESI and EDI, STOS also EDI (their upper halves cleared); LODS, CMPS and SCAS keep RSI/RDI | writes nothing: RCX, RSI and RDI keep their upper halves | Intel: measured by the host-CPU oracle on the previous development host (an Intel CPU). AMD: measured on this project's CI host (AMD EPYC, Zen 3 class) for every string instruction, operand size and direction. [`zero_count_writes`](Vendor::zero_count_writes) |
//!
//! Each rule has a test per vendor (`src/vendor.rs` unit tests and
//! `tests/vendor_rules.rs`); the host-CPU and KVM oracles run with the
//! vendor read from CPUID, so whichever vendor the test machine has is
//! checked against the CPU itself, and the other one by fixed regression
//! cases.

use core::fmt;
use core::str::FromStr;

/// The vendor of the guest's CPU, as far as it changes what an emulated
/// instruction does.
///
/// Vendors that build on one of the two designs map to it: Centaur and
/// Zhaoxin to [`Vendor::Intel`], Hygon to [`Vendor::Amd`] (see
/// [`Vendor::from_id_string`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// Intel, and CPUs that follow Intel's behaviour (Centaur, Zhaoxin).
    Intel,
    /// AMD, and CPUs that follow AMD's behaviour (Hygon).
    Amd,
}

/// The CPUID leaf 0 vendor strings recognised by [`Vendor::from_id_string`].
const VENDOR_IDS: [(&[u8; 12], Vendor); 5] = [
    (b"GenuineIntel", Vendor::Intel),
    (b"CentaurHauls", Vendor::Intel),
    (b"  Shanghai  ", Vendor::Intel),
    (b"AuthenticAMD", Vendor::Amd),
    (b"HygonGenuine", Vendor::Amd),
];

impl Vendor {
    /// The vendor of a CPUID vendor identification string (the 12 bytes of
    /// leaf 0 in EBX, EDX, ECX order, e.g. `b"GenuineIntel"`), or `None` for
    /// one this crate does not know.
    ///
    /// `GenuineIntel`, `CentaurHauls` and `  Shanghai  ` (Zhaoxin) give
    /// [`Vendor::Intel`]; `AuthenticAMD` and `HygonGenuine` give
    /// [`Vendor::Amd`]. Centaur/Zhaoxin and Hygon are mapped to the design
    /// they derive from; no CPU of theirs has been measured.
    pub fn from_id_string(id: &[u8; 12]) -> Option<Vendor> {
        VENDOR_IDS
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, v)| *v)
    }

    /// The vendor from the registers CPUID leaf 0 returns (the string is
    /// EBX, EDX, ECX, each little-endian), or `None` for an unknown vendor.
    ///
    /// ```
    /// use nvmm_assist::Vendor;
    /// // "Auth" "enti" "cAMD"
    /// let (ebx, edx, ecx) = (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    /// assert_eq!(Vendor::from_cpuid_leaf0(ebx, ecx, edx), Some(Vendor::Amd));
    /// ```
    pub fn from_cpuid_leaf0(ebx: u32, ecx: u32, edx: u32) -> Option<Vendor> {
        let mut id = [0u8; 12];
        id[0..4].copy_from_slice(&ebx.to_le_bytes());
        id[4..8].copy_from_slice(&edx.to_le_bytes());
        id[8..12].copy_from_slice(&ecx.to_le_bytes());
        Vendor::from_id_string(&id)
    }

    /// The name used by [`fmt::Display`] and [`FromStr`]: `"intel"` or
    /// `"amd"`.
    pub const fn name(self) -> &'static str {
        match self {
            Vendor::Intel => "intel",
            Vendor::Amd => "amd",
        }
    }

    /// REP string instruction with a zero count, 32-bit address size, in
    /// 64-bit mode (see the table in the [module documentation](self)):
    /// whether the CPU still writes ECX (and the string instruction's
    /// pointer registers) as 32-bit registers, clearing their upper halves.
    /// Intel does; AMD writes nothing.
    pub(crate) const fn zero_count_writes(self) -> bool {
        matches!(self, Vendor::Intel)
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing a [`Vendor`]: the string is neither `intel` nor
/// `amd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseVendorError;

impl fmt::Display for ParseVendorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown CPU vendor (expected \"intel\" or \"amd\")")
    }
}

impl core::error::Error for ParseVendorError {}

impl FromStr for Vendor {
    type Err = ParseVendorError;

    /// Parses `intel` or `amd` (ASCII case-insensitive), or a CPUID vendor
    /// string such as `GenuineIntel` or `AuthenticAMD`.
    fn from_str(s: &str) -> Result<Vendor, ParseVendorError> {
        if s.eq_ignore_ascii_case("intel") {
            return Ok(Vendor::Intel);
        }
        if s.eq_ignore_ascii_case("amd") {
            return Ok(Vendor::Amd);
        }
        <&[u8; 12]>::try_from(s.as_bytes())
            .ok()
            .and_then(Vendor::from_id_string)
            .ok_or(ParseVendorError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    /// The leaf-0 registers of `id` (EBX, ECX, EDX).
    fn leaf0(id: &[u8; 12]) -> (u32, u32, u32) {
        let word = |i: usize| u32::from_le_bytes([id[i], id[i + 1], id[i + 2], id[i + 3]]);
        (word(0), word(8), word(4))
    }

    #[test]
    fn known_vendor_strings() {
        for (id, want) in [
            (b"GenuineIntel", Some(Vendor::Intel)),
            (b"CentaurHauls", Some(Vendor::Intel)),
            (b"  Shanghai  ", Some(Vendor::Intel)),
            (b"AuthenticAMD", Some(Vendor::Amd)),
            (b"HygonGenuine", Some(Vendor::Amd)),
            (b"GenuineIotel", None),
            (b"KVMKVMKVM\0\0\0", None),
            (b"authenticamd", None),
        ] {
            assert_eq!(Vendor::from_id_string(id), want, "{id:?}");
            let (ebx, ecx, edx) = leaf0(id);
            assert_eq!(Vendor::from_cpuid_leaf0(ebx, ecx, edx), want, "{id:?}");
        }
    }

    #[test]
    fn leaf0_register_order_is_ebx_edx_ecx() {
        // GenuineIntel: EBX "Genu", EDX "ineI", ECX "ntel".
        assert_eq!(
            Vendor::from_cpuid_leaf0(0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            Some(Vendor::Intel)
        );
        // ECX and EDX swapped is not a vendor string.
        assert_eq!(
            Vendor::from_cpuid_leaf0(0x756e_6547, 0x4965_6e69, 0x6c65_746e),
            None
        );
    }

    #[test]
    fn names_round_trip() {
        for v in [Vendor::Intel, Vendor::Amd] {
            assert_eq!(v.to_string().parse::<Vendor>(), Ok(v));
        }
        assert_eq!("AMD".parse::<Vendor>(), Ok(Vendor::Amd));
        assert_eq!("Intel".parse::<Vendor>(), Ok(Vendor::Intel));
        assert_eq!("HygonGenuine".parse::<Vendor>(), Ok(Vendor::Amd));
        assert_eq!("via".parse::<Vendor>(), Err(ParseVendorError));
        assert_eq!("".parse::<Vendor>(), Err(ParseVendorError));
    }
}
