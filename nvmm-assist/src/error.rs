//! Errors of the assist: architectural faults for the VMM to inject, or
//! reasons the assist could not act.

use crate::bus::BusError;
use crate::decode::DecodeError;

/// An architectural exception the CPU would have raised; the VMM injects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    /// `#UD`, invalid opcode (vector 6).
    InvalidOpcode,
    /// `#GP(code)`, general protection (vector 13).
    GeneralProtection(u16),
    /// `#SS(code)`, stack-segment fault (vector 12).
    StackSegment(u16),
    /// `#NP(code)`, segment not present (vector 11).
    SegmentNotPresent(u16),
    /// `#PF`, page fault (vector 14): the linear address (CR2) and error code.
    PageFault {
        /// The faulting linear address, for CR2.
        address: u64,
        /// The page-fault error code (P, W/R, U/S, RSVD, I/D, PK, SS bits).
        code: u32,
    },
    /// `#AC(0)`, alignment check (vector 17).
    AlignmentCheck,
}

impl Exception {
    /// The interrupt vector of this exception.
    pub const fn vector(&self) -> u8 {
        match self {
            Exception::InvalidOpcode => 6,
            Exception::SegmentNotPresent(_) => 11,
            Exception::StackSegment(_) => 12,
            Exception::GeneralProtection(_) => 13,
            Exception::PageFault { .. } => 14,
            Exception::AlignmentCheck => 17,
        }
    }

    /// The error code the CPU pushes with this exception, if any.
    pub const fn error_code(&self) -> Option<u32> {
        match self {
            Exception::InvalidOpcode => None,
            Exception::GeneralProtection(c)
            | Exception::StackSegment(c)
            | Exception::SegmentNotPresent(c) => Some(*c as u32),
            Exception::PageFault { code, .. } => Some(*code),
            Exception::AlignmentCheck => Some(0),
        }
    }
}

/// `#PF at 0xdead0000 (error code 0x6)`, `#GP(0x18)`: addresses and
/// codes in hex, as the SDM writes them.
impl core::fmt::Display for Exception {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Exception::InvalidOpcode => write!(f, "#UD"),
            Exception::GeneralProtection(c) => write!(f, "#GP({c:#x})"),
            Exception::StackSegment(c) => write!(f, "#SS({c:#x})"),
            Exception::SegmentNotPresent(c) => write!(f, "#NP({c:#x})"),
            Exception::PageFault { address, code } => {
                write!(f, "#PF at {address:#x} (error code {code:#x})")
            }
            Exception::AlignmentCheck => write!(f, "#AC(0)"),
        }
    }
}

/// Why an assist call failed. In every case no guest register has changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The guest instruction raises this exception; inject it.
    Exception(Exception),
    /// The instruction bytes could not be decoded.
    Decode(DecodeError),
    /// A valid instruction that the assist does not emulate, with its bytes.
    Unsupported {
        /// The instruction bytes (the first `len` are meaningful).
        bytes: [u8; 15],
        /// How many bytes of `bytes` are valid.
        len: u8,
    },
    /// A bus callback failed; its error is passed through unchanged.
    Bus(BusError),
    /// The exit information contradicts the decoded instruction or the
    /// guest state (for example, a memory exit whose GPA the instruction's
    /// operand cannot reach). The kernel or the guest state is inconsistent.
    InconsistentExit,
    /// The guest's control registers (CR0, CR4, EFER, RFLAGS.VM) are in a
    /// combination no CPU can be in, e.g. EFER.LMA = 1 with paging off. The
    /// guest state (as the VMM or kernel holds it) is wrong.
    InconsistentState(crate::mode::InconsistentState),
    /// A guest paging-structure entry at this guest-physical address is not
    /// in RAM (the guest put a page table in MMIO or unmapped space). The
    /// CPU's behaviour there is undefined, so the assist refuses.
    PageTableNotRam {
        /// The guest-physical address of the entry.
        gpa: u64,
    },
    /// The guest's paging-structure entries kept changing while the walker
    /// set their accessed/dirty bits (another vCPU rewriting them); the walk
    /// gave up after a bounded number of restarts. Retrying later is safe.
    PageTableBusy {
        /// The guest-physical address of the top-level entry of the walk.
        gpa: u64,
    },
}

impl From<Exception> for Error {
    fn from(e: Exception) -> Self {
        Error::Exception(e)
    }
}

impl From<BusError> for Error {
    fn from(e: BusError) -> Self {
        Error::Bus(e)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Decode(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Exception(e) => write!(f, "guest exception {e}"),
            Error::Decode(e) => write!(f, "instruction decode failed: {e:?}"),
            Error::Unsupported { bytes, len } => {
                write!(f, "unsupported instruction:")?;
                for b in bytes.iter().take(usize::from(*len).min(15)) {
                    write!(f, " {b:02x}")?;
                }
                Ok(())
            }
            Error::Bus(e) => write!(f, "bus callback failed with code {}", e.0),
            Error::InconsistentExit => write!(f, "exit information contradicts the instruction"),
            Error::InconsistentState(s) => write!(f, "impossible guest control state: {s}"),
            Error::PageTableNotRam { gpa } => {
                write!(f, "guest page-table entry at GPA {gpa:#x} is not in RAM")
            }
            Error::PageTableBusy { gpa } => {
                write!(
                    f,
                    "guest page tables at GPA {gpa:#x} kept changing during the walk"
                )
            }
        }
    }
}

impl core::error::Error for Error {}
