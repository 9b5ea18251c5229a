//! Feature `vm-memory`: guest RAM from the rust-vmm [`vm_memory`] crate.
//!
//! [`GuestRam`] is implemented for `&M` where `M` is any
//! [`vm_memory::GuestMemory`] (which includes every
//! [`vm_memory::GuestMemoryBackend`], e.g. `GuestMemoryMmap`), so a VMM
//! built on rust-vmm crates hands its guest memory to the assist as is:
//!
//! ```no_run
//! use nvmm_assist::{CpuState, Error, MemExit, MmioBus, Outcome};
//!
//! fn on_memory_exit<G: vm_memory::GuestMemory>(
//!     guest_memory: &G,
//!     registers: &mut impl CpuState,
//!     mmio: &mut impl MmioBus,
//!     exit: &MemExit<'_>,
//! ) -> Result<Outcome, Error> {
//!     let mut ram = guest_memory; // `&G` is the assist's guest RAM
//!     nvmm_assist::assist_mem(registers, &mut ram, mmio, exit)
//! }
//! ```
//!
//! (`&M` rather than `M` itself: a blanket implementation for every `M`
//! would overlap with `GuestRam for &mut T` in Rust's coherence rules.)
//!
//! Semantics:
//! - An address range is RAM when the memory covers all of it with the
//!   permission the access needs ([`vm_memory::GuestMemory::check_range`]):
//!   otherwise the assist gets [`RamStatus::NotRam`] (or
//!   [`CompareWrite::NotRam`]) and sends the access to the MMIO bus, as for
//!   a read-only page on a write. Nothing is accessed in that case.
//! - Writes go through `vm-memory`'s slices, so its dirty bitmap (if any)
//!   records them.
//! - [`GuestRam::compare_and_write`] of 1, 2, 4 or 8 bytes at an address
//!   aligned to its size, in one region whose host address is aligned too
//!   (as with page-aligned mmap backings), is one atomic compare-exchange
//!   on the host memory (`vm-memory`'s `get_atomic_ref`, sequentially
//!   consistent), and marks the bytes dirty when it writes. **Otherwise**
//!   (16 bytes, i.e. CMPXCHG16B; a misaligned locked access; a range split
//!   between regions; a backing that refuses atomic references) it is a
//!   read, a compare and a write: correct against this vCPU, but not atomic
//!   against other vCPUs or devices writing the same bytes at the same
//!   time. Stable Rust has no 16-byte atomic, and x86 split locks have no
//!   portable host equivalent.
//! - A failure of `vm-memory` after the range check passed (which its
//!   implementations do not produce) is [`VM_MEMORY_FAULT`].

use core::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

use ::vm_memory::bitmap::Bitmap;
use ::vm_memory::{GuestAddress, GuestMemory, Permissions, VolatileMemory, VolatileSlice};

use crate::bus::{BusError, CompareWrite, GuestRam, RamStatus};

/// The error for a `vm-memory` access that failed after its range was
/// found to be RAM: `EFAULT` (14 on NetBSD and Linux).
pub const VM_MEMORY_FAULT: BusError = BusError(14);

/// The error for a compare-and-write whose `expected` and `new` differ in
/// length or are longer than 16 bytes (a caller bug): `EINVAL`.
const INVALID_ARGUMENT: BusError = BusError(22);

/// Copies between guest memory at `gpa` and `len` bytes, slice by slice:
/// `each(slice, offset)` handles the part of the range at `offset` and
/// returns how many bytes it moved.
fn for_each_slice<M, F>(
    mem: &M,
    gpa: u64,
    len: usize,
    access: Permissions,
    mut each: F,
) -> Result<(), BusError>
where
    M: GuestMemory + ?Sized,
    F: FnMut(&VolatileSlice<'_, ::vm_memory::bitmap::BS<'_, M::Bitmap>>, usize) -> usize,
{
    let slices = mem
        .get_slices(GuestAddress(gpa), len, access)
        .map_err(|_| VM_MEMORY_FAULT)?;
    let mut done = 0usize;
    for slice in slices {
        let slice = slice.map_err(|_| VM_MEMORY_FAULT)?;
        let moved = each(&slice, done);
        if moved != slice.len() {
            return Err(VM_MEMORY_FAULT);
        }
        done = done.checked_add(moved).ok_or(VM_MEMORY_FAULT)?;
    }
    if done == len {
        Ok(())
    } else {
        Err(VM_MEMORY_FAULT)
    }
}

fn read_bytes<M: GuestMemory + ?Sized>(mem: &M, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
    let len = buf.len();
    for_each_slice(mem, gpa, len, Permissions::Read, |slice, offset| {
        buf.get_mut(offset..).map_or(0, |part| slice.copy_to(part))
    })
}

fn write_bytes<M: GuestMemory + ?Sized>(mem: &M, gpa: u64, data: &[u8]) -> Result<(), BusError> {
    for_each_slice(
        mem,
        gpa,
        data.len(),
        Permissions::Write,
        |slice, offset| match data.get(offset..) {
            Some(part) => {
                let n = part.len().min(slice.len());
                slice.copy_from(part.get(..n).unwrap_or(&[]));
                n
            }
            None => 0,
        },
    )
}

/// One atomic compare-exchange of `expected` by `new` (both `N` bytes, in
/// memory order) in `slice`, or `None` when the slice does not allow it.
macro_rules! compare_exchange {
    ($slice:expr, $atomic:ty, $int:ty, $expected:expr, $new:expr) => {{
        let cell = $slice.get_atomic_ref::<$atomic>(0).ok();
        let expected = <[u8; size_of::<$int>()]>::try_from($expected).ok();
        let new = <[u8; size_of::<$int>()]>::try_from($new).ok();
        match (cell, expected, new) {
            (Some(cell), Some(expected), Some(new)) => Some(
                cell.compare_exchange(
                    <$int>::from_ne_bytes(expected),
                    <$int>::from_ne_bytes(new),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok(),
            ),
            _ => None,
        }
    }};
}

/// The atomic path of compare-and-write; `None` when it does not apply.
fn atomic_compare_and_write<M: GuestMemory + ?Sized>(
    mem: &M,
    gpa: u64,
    expected: &[u8],
    new: &[u8],
) -> Option<CompareWrite> {
    let len = new.len();
    if !matches!(len, 1 | 2 | 4 | 8) || !gpa.is_multiple_of(len as u64) {
        return None;
    }
    let mut slices = mem
        .get_slices(GuestAddress(gpa), len, Permissions::ReadWrite)
        .ok()?;
    let slice = slices.next()?.ok()?;
    if slices.next().is_some() || slice.len() != len {
        return None;
    }
    let written = match len {
        1 => compare_exchange!(slice, AtomicU8, u8, expected, new),
        2 => compare_exchange!(slice, AtomicU16, u16, expected, new),
        4 => compare_exchange!(slice, AtomicU32, u32, expected, new),
        _ => compare_exchange!(slice, AtomicU64, u64, expected, new),
    }?;
    if written {
        // Atomic references bypass vm-memory's dirty tracking.
        slice.bitmap().mark_dirty(0, len);
        Some(CompareWrite::Written)
    } else {
        Some(CompareWrite::Mismatch)
    }
}

impl<M: GuestMemory + ?Sized> GuestRam for &M {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        if !self.check_range(GuestAddress(gpa), buf.len(), Permissions::Read) {
            return Ok(RamStatus::NotRam);
        }
        read_bytes(*self, gpa, buf)?;
        Ok(RamStatus::Done)
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        if !self.check_range(GuestAddress(gpa), data.len(), Permissions::Write) {
            return Ok(RamStatus::NotRam);
        }
        write_bytes(*self, gpa, data)?;
        Ok(RamStatus::Done)
    }

    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError> {
        if expected.len() != new.len() || new.len() > 16 {
            return Err(INVALID_ARGUMENT);
        }
        if !self.check_range(GuestAddress(gpa), new.len(), Permissions::ReadWrite) {
            return Ok(CompareWrite::NotRam);
        }
        if let Some(result) = atomic_compare_and_write(*self, gpa, expected, new) {
            return Ok(result);
        }
        // Not atomic against other writers: see the module documentation.
        let mut current = [0u8; 16];
        let current = current.get_mut(..new.len()).ok_or(INVALID_ARGUMENT)?;
        read_bytes(*self, gpa, current)?;
        if current != expected {
            return Ok(CompareWrite::Mismatch);
        }
        write_bytes(*self, gpa, new)?;
        Ok(CompareWrite::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::vm_memory::{Bytes, GuestMemoryMmap};

    /// Which compare-and-writes take the atomic path (the integration
    /// tests check the results of both paths).
    #[test]
    fn aligned_sizes_up_to_8_are_atomic() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
        for (gpa, len, atomic) in [
            (0x100, 1, true),
            (0x101, 1, true),
            (0x102, 2, true),
            (0x104, 4, true),
            (0x108, 8, true),
            (0x10C, 8, false),
            (0x103, 2, false),
            (0x110, 16, false),
        ] {
            let old = [0u8; 16];
            let new = [0x5Au8; 16];
            let result = atomic_compare_and_write(&mem, gpa, &old[..len], &new[..len]);
            assert_eq!(
                result,
                atomic.then_some(CompareWrite::Written),
                "{len} bytes at {gpa:#x}"
            );
            if atomic {
                let mut now = [0u8; 16];
                mem.read_slice(&mut now[..len], GuestAddress(gpa)).unwrap();
                assert_eq!(now[..len], new[..len]);
                mem.write_slice(&old[..len], GuestAddress(gpa)).unwrap();
            }
        }
        // A mismatch on the atomic path writes nothing.
        mem.write_obj(7u32, GuestAddress(0x200)).unwrap();
        assert_eq!(
            atomic_compare_and_write(&mem, 0x200, &[0; 4], &[1; 4]),
            Some(CompareWrite::Mismatch)
        );
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x200)).unwrap(), 7);
    }
}
