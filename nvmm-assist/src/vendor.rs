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
//! Every behaviour of the emulated instructions (the
//! [`Mnemonic`](crate::decode::Mnemonic)s) that the manuals leave undefined or implementation-specific, or
//! in which Intel and AMD are known to differ, audited for this crate. Rows
//! marked *same* were checked and agree; they are listed so the audit is
//! visible and tested.
//!
//! "This host" is the project's CI machine, an AMD EPYC (Zen 3 class,
//! `AuthenticAMD`), where the host-CPU oracle (`tests/oracle_host.rs`,
//! instructions run natively and through the assist) and the KVM oracles
//! run; "the Intel host" is the previous development machine, an Intel CPU,
//! where the same oracles ran before the vendor became an input.
//!
//! | # | behaviour | Intel | AMD | source |
//! |---|---|---|---|---|
//! | 1 | REP MOVS/STOS/LODS/CMPS/SCAS (REP, REPE or REPNE) with a zero count and a 32-bit address size (`0x67`) in 64-bit mode | **writes** ECX as a 32-bit register (RCX\[63:32\] cleared); MOVS also ESI and EDI, STOS also EDI (upper halves cleared); LODS, CMPS and SCAS keep RSI and RDI | **writes nothing**: RCX, RSI and RDI keep their upper halves | Intel: the host-CPU oracle on the Intel host (its finding "a32 REP with ECX = 0 clears RCX\[63:32\]"). AMD: this host, every string instruction, operand size and direction (`tests/oracle_host.rs`, `host_cpu_follows_its_vendor_row_for_zero_count_rep`, and the issue's two cases). Neither manual describes it. |
//! | 2 | the same with a 16-bit or 64-bit address size, or outside 64-bit mode, or a non-zero count | *same*: zero count writes nothing; otherwise rCX/rSI/rDI are written at the address size (a 32-bit write zero-extends) | *same* | SDM vol. 1 §3.4.1.1 and APM vol. 1 §3.1.2.3 (32-bit register writes zero-extend); host-CPU oracle on both hosts; outside 64-bit mode (bits 63:32 undefined in the manuals), this host through KVM, which also holds for IN EAX and INS/OUTS ([`crate::assist_io`]; `tests/oracle_kvm.rs`, `thirty_two_bit_register_writes_outside_64_bit_mode_match_kvm_and_this_cpu`) |
//! | 3 | REP INS/OUTS with a zero count, 32-bit address size, 64-bit mode ([`crate::assist_io`]) | **not measured**; the assist writes nothing but RIP, as on AMD. Row 1 suggests Intel may write ECX (and EDI for INS) here too: an open question | writes nothing (RIP advances) | AMD: this host, through KVM (`tests/oracle_kvm.rs`, `zero_count_rep_ins_outs_a32_match_this_cpu`; port I/O cannot run in the host-CPU oracle). Intel: no measurement; run that test on an Intel host to settle it. |
//! | 4 | AF after AND, OR, XOR, TEST ("undefined") | *same*: cleared | *same*: cleared | AMD: this host, no difference in any case (the host-CPU oracle masks the flag, compares and counts differences: none in a release run of 32 804 ALU cases, AND/OR/XOR among them, and 3 503 TEST cases). Intel: the assist's choice on the Intel host under the same oracle. |
//! | 5 | OF, SF, AF, PF after BT, BTS, BTR, BTC ("undefined"); ZF | *same*: all unchanged | *same*: all unchanged | AMD: this host, 0 differences in 4 683 cases (release run). Intel: the assist's choice on the Intel host (`exec/bits.rs`). |
//! | 6 | BT* on memory with a register bit offset | *same*: the signed offset selects the operand-sized word at `ea + size * floor(offset / bits)` | *same* | SDM vol. 2A "BT"; APM vol. 3 "BT"; the host-CPU oracle and the `host_oracle` fuzz target (offsets -256..255) on both hosts |
//! | 7 | CMPXCHG, CMPXCHG8B/16B when the comparison fails | *same*: the destination is written back with its old value (a write access) | *same*: a write access (a failing CMPXCHG or CMPXCHG8B on a read-only page faults as a write, locked or not) | SDM vol. 2A "CMPXCHG" ("the destination operand is written back if the comparison fails"); AMD: measured on this host with a small native program (fork, `mprotect` read-only, fault observed); whether the bus sees the write cannot be observed from user mode |
//! | 8 | segment limits in 64-bit mode | *same*: none checked (FS/GS bases only) | *same*, with EFER.LMSLE = 0 | SDM vol. 3A §5.3.1; APM vol. 2 §4.8.2. AMD's long-mode segment-limit enable (EFER.LMSLE, bit 13) exists only on older AMD CPUs, and NVMM never lets a guest set it (`sys/dev/nvmm/x86/nvmm_x86_svm.c`, `EFER_VALID`, "Does not include EFER_LMSLE"); on Intel the bit is reserved. A state with the bit set is refused on both: [`InconsistentState::LongModeSegmentLimits`](crate::InconsistentState::LongModeSegmentLimits). |
//! | 9 | an access running past offset 0xFFFFFFFF of a segment whose upper bound is 0xFFFFFFFF | *same*: only the first byte is checked, the access wraps | *same* | implementation-specific per SDM vol. 3A §5.3; measured through KVM on both hosts (`tests/oracle_kvm_segment.rs`) |
//! | 10 | shifts and rotates, MUL/IMUL, BSF/BSR, and other instructions with undefined results | — | — | not emulated (the assist reports them [`crate::Error::Unsupported`]) |
//!
//! Row 1 is implemented by `Vendor::zero_count_writes` (crate-private); rows
//! 1 to 9 each have a test per vendor in `tests/vendor_rules.rs` (row 3's
//! Intel test pins the unmeasured choice). The host-CPU and KVM
//! oracles run the assist as the host's vendor (CPUID leaf 0), so whichever
//! vendor the test machine has is compared with the CPU itself, and the
//! other vendor's results are pinned by those fixed cases.

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
    /// 64-bit mode (row 1 of the table in the [module documentation](self)):
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
