//! The fast path's families beyond MOV and the ALU group: the SSE moves
//! ([`sse`]), single string instructions
//! ([`string`]) and PUSH/POP m ([`stack`]),
//! tried when the MOV/ALU decoder declined the bytes.

use super::prefix;
use super::{sse, stack, string};
use crate::Outcome;
use crate::bus::{GuestRam, MmioBus};
use crate::error::Error;
use crate::mode::CpuMode;
use crate::state::CpuState;

/// Tries the forms of this module's families in a mode whose default
/// address size is `ADDR`. `None`: not handled, nothing done.
#[inline(always)]
fn try_mode<const ADDR: u8, S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let (p, i) = prefix::parse(bytes, ADDR == 8)?;
    match *bytes.get(i)? {
        0x0F => sse::try_exec::<ADDR, S, R, M>(state, mode, ram, mmio, exit_gpa, bytes, &p, i + 1),
        op @ (0xA4..=0xA7 | 0xAA..=0xAF) => {
            string::try_exec::<ADDR, S, R, M>(state, mode, ram, mmio, exit_gpa, &p, op, i + 1)
        }
        0xFF | 0x8F => stack::try_exec::<ADDR, S, R, M>(state, mode, ram, mmio, bytes, &p, i),
        _ => None,
    }
}

/// Tries the SSE moves, single string instructions and PUSH/POP m on a
/// memory exit in `mode` with instruction `bytes`.
#[inline(never)]
pub(super) fn try_exec<S, R, M>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    match mode.default_address_size() {
        8 => try_mode::<8, S, R, M>(state, mode, ram, mmio, exit_gpa, bytes),
        4 => try_mode::<4, S, R, M>(state, mode, ram, mmio, exit_gpa, bytes),
        _ => try_mode::<2, S, R, M>(state, mode, ram, mmio, exit_gpa, bytes),
    }
}

#[cfg(test)]
#[path = "families_tests.rs"]
mod tests;
