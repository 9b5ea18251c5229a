//! Race-free accesses to guest RAM from host threads.
//!
//! Guest RAM is shared by nature: the guest writes it from every VCPU, and
//! a VMM touches it from VCPU threads (the assists, `gva_to_gpa`) and from
//! device threads ([`crate::Machine::read_guest`]/`write_guest`) at once.
//! In the Rust memory model two unsynchronised accesses to the same bytes,
//! one of them a write, are a data race (undefined behaviour) unless both
//! are atomic, and atomic accesses of different sizes to the same bytes
//! may not race either. So every access this crate makes to guest RAM is
//! an [`AtomicU8`] operation, one byte at a time, with relaxed ordering:
//! - copies ([`read()`], [`write()`]) are per-byte relaxed loads and stores;
//! - [`compare_and_write`] changes each byte with a one-byte operation.
//!   The accessed and dirty bits of a page-table entry (bits 5 and 6) are
//!   both in its low byte, so the page walker's update is one byte-sized
//!   compare-and-swap: atomic against other host threads *and* against
//!   the guest's own locked instructions on other VCPUs (x86 makes a
//!   `lock cmpxchg` of one byte atomic against accesses of any size).
//!
//! A guest never observes anything that real hardware could not show it
//! under concurrent DMA, except in the one case documented at
//! [`compare_and_write`]: a change of more than one byte (a locked
//! instruction whose RAM part straddles an MMIO page) is not atomic
//! against guest code running on another VCPU.
//!
//! Cost: a relaxed byte load or store is a plain `mov` on x86, but the
//! compiler may not merge atomic accesses into wide ones, so a copy moves
//! about a byte per cycle: 4 GB/s for 64 KiB `read_guest`/`write_guest`
//! copies on a shared 2-core AMD EPYC (`cargo bench -p nvmm --bench
//! comm_page` prints the figure). Exits move a few bytes; a VMM loading a
//! large image before the first run pays milliseconds.
//!
//! # Why not rust-vmm `vm-memory`
//!
//! `vm-memory` 0.16 (`VolatileSlice`, `GuestMemoryMmap`) builds for
//! `x86_64-unknown-netbsd`, but its bulk copies and `Bytes` accessors are
//! volatile accesses (`read_volatile`/`write_volatile`, or `memcpy`), and
//! only its `load`/`store` of a whole aligned integer are atomic. Volatile
//! accesses racing with each other are data races in the Rust memory model
//! (miri reports them), so two host threads copying the same guest bytes
//! would still be undefined behaviour, which is what this module exists to
//! rule out. Its atomics are also of the integer's size, so byte copies
//! and a word-sized compare-and-swap would be mixed-size atomics on the
//! same bytes. This crate therefore keeps its own small module. For
//! rust-vmm code (linux-loader, virtio-queue), `Machine::guest_memory`
//! (feature `vm-memory`) gives a `vm-memory` view of guest RAM whose
//! `unsafe` contract is exactly this: no other host access to the same
//! bytes while one through the view is in progress.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};

/// One byte of guest RAM as an atomic.
///
/// # Safety
///
/// `p` is valid for reads and writes for the whole lifetime `'a`, and every
/// access to it in this process is atomic (guest RAM is only ever touched
/// through this module; the guest and the kernel access it from outside
/// the Rust abstract machine).
#[inline]
unsafe fn byte<'a>(p: NonNull<u8>) -> &'a AtomicU8 {
    // SAFETY: forwarded from the caller; AtomicU8 has the size and
    // alignment of u8.
    unsafe { AtomicU8::from_ptr(p.as_ptr()) }
}

/// Copies `buf.len()` bytes of guest RAM at `src` into `buf`.
///
/// # Safety
///
/// `src..src+buf.len()` lies in one live host mapping of guest RAM that
/// stays mapped during the call, and nothing in this process accesses it
/// other than through this module.
pub(crate) unsafe fn read(src: NonNull<u8>, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: `i < buf.len()`, so `src + i` is inside the range the
        // caller vouches for.
        *b = unsafe { byte(src.add(i)) }.load(Ordering::Relaxed);
    }
}

/// Reads the `N` (at most 8) bytes of guest RAM at `src` as a
/// little-endian integer: the relaxed byte loads of [`read()`], assembled
/// in a register rather than through a buffer (whose byte stores a wide
/// reload could not forward from). The page walker reads its 8-byte
/// entries (and 32-bit paging's 4-byte ones) this way.
///
/// # Safety
///
/// As for [`read()`], for `src..src+N`.
#[cfg(any(feature = "assist", test))]
#[inline(always)]
pub(crate) unsafe fn read_le<const N: usize>(src: NonNull<u8>) -> u64 {
    const { assert!(N <= 8, "a u64 holds at most 8 bytes") };
    let mut value = 0;
    for i in 0..N {
        // SAFETY: `i < N`, so `src + i` is inside the range the caller
        // vouches for.
        let b = unsafe { byte(src.add(i)) }.load(Ordering::Relaxed);
        value |= u64::from(b) << (8 * i);
    }
    value
}

/// [`read()`] of a length known at compile time, unrolled: the assists'
/// 15-byte instruction fetch copies in 30 instructions instead of the
/// 70 of the loop over a slice (its tail a byte per 5).
///
/// # Safety
///
/// As for [`read()`], for `src..src+N`.
#[cfg(any(feature = "assist", test))]
#[inline(never)]
pub(crate) unsafe fn read_array<const N: usize>(src: NonNull<u8>, buf: &mut [u8; N]) {
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: `i < N`, so `src + i` is inside the range the caller
        // vouches for.
        *b = unsafe { byte(src.add(i)) }.load(Ordering::Relaxed);
    }
}

/// Copies `data` into guest RAM at `dst`.
///
/// # Safety
///
/// As for [`read`], for `dst..dst+data.len()`.
pub(crate) unsafe fn write(dst: NonNull<u8>, data: &[u8]) {
    for (i, b) in data.iter().enumerate() {
        // SAFETY: as in `read`.
        unsafe { byte(dst.add(i)) }.store(*b, Ordering::Relaxed);
    }
}

/// Replaces `expected` with `new` at `p` if memory holds `expected`;
/// returns whether it did. `expected` and `new` have the same length.
///
/// What other CPUs can observe:
/// - no byte changes: a comparison (every byte loaded once);
/// - one byte changes (the page walker's accessed/dirty bits; any locked
///   instruction whose result differs in one byte): the other bytes are
///   compared first, then the byte is replaced by a one-byte
///   compare-and-swap. The write is atomic against guest code and host
///   threads alike; a concurrent change of the *other* bytes after they
///   were compared is not detected (the walker may then set A/D in an
///   entry that another CPU rewrote with the same low byte, a spurious A/D
///   bit on a present entry, which the architecture allows);
/// - several bytes change: under `serialise` (one lock per machine) the
///   bytes are compared, then stored one at a time. This is atomic against
///   every other `compare_and_write` of the machine, but a guest on
///   another VCPU may see the value half-written, and a guest or host
///   write landing between the comparison and the stores is overwritten.
///   The assists only get here for the RAM part of a locked operand that
///   straddles an MMIO page, which is not atomic on that boundary anyway.
///
/// # Safety
///
/// As for [`read`], for `p..p+expected.len()`.
// Only the assists (feature `assist`) compare-and-write guest RAM.
#[cfg_attr(not(feature = "assist"), allow(dead_code))]
pub(crate) unsafe fn compare_and_write(
    p: NonNull<u8>,
    expected: &[u8],
    new: &[u8],
    serialise: &Mutex<()>,
) -> bool {
    let mut changed = expected
        .iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (e, n))| e != n);
    let first = changed.next();
    let several = changed.next().is_some();
    let equal_except = |skip: Option<usize>| {
        expected.iter().enumerate().all(|(i, e)| {
            Some(i) == skip
                // SAFETY: `i < expected.len()`, inside the caller's range.
                || unsafe { byte(p.add(i)) }.load(Ordering::Relaxed) == *e
        })
    };
    match (first, several) {
        (None, _) => equal_except(None),
        (Some((i, (&e, &n))), false) => {
            equal_except(Some(i))
                // SAFETY: as above.
                && unsafe { byte(p.add(i)) }
                    .compare_exchange(e, n, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
        }
        (Some(_), true) => {
            let _serialised = serialise.lock().unwrap_or_else(PoisonError::into_inner);
            if !equal_except(None) {
                return false;
            }
            for (i, (e, n)) in expected.iter().zip(new).enumerate() {
                if e != n {
                    // SAFETY: as above.
                    unsafe { byte(p.add(i)) }.store(*n, Ordering::SeqCst);
                }
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(bytes: &mut [u8]) -> NonNull<u8> {
        NonNull::from(bytes).cast()
    }

    #[test]
    fn copies_round_trip() {
        let mut mem = [0u8; 8];
        let p = cell(&mut mem);
        // SAFETY: `mem` is ours and only accessed through `p` here.
        unsafe { write(p, &[1, 2, 3]) };
        let mut out = [0u8; 3];
        // SAFETY: as above.
        unsafe { read(p, &mut out) };
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn read_le_is_the_little_endian_read() {
        let mut mem = [0u8; 16];
        let p = cell(&mut mem);
        let bytes = [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF];
        // SAFETY: `mem` is ours and only accessed through `p` here.
        unsafe {
            write(p.add(8), &bytes);
            assert_eq!(read_le::<8>(p.add(8)), u64::from_le_bytes(bytes));
            assert_eq!(read_le::<8>(p), 0);
            assert_eq!(read_le::<4>(p.add(8)), 0x6745_2301);
            assert_eq!(read_le::<4>(p.add(12)), 0xEFCD_AB89);
            assert_eq!(read_le::<2>(p.add(9)), 0x4523);
            let mut code = [0u8; 15];
            read_array(p.add(1), &mut code);
            assert_eq!(code[7..], bytes);
            assert_eq!(code[..7], [0; 7]);
        }
    }

    #[test]
    fn compare_and_write_one_several_and_no_byte() {
        let lock = Mutex::new(());
        let mut mem = [0x21u8, 0, 0, 0];
        let p = cell(&mut mem);
        // SAFETY: `mem` is ours and only accessed through `p`.
        unsafe {
            // The A/D update: only the low byte differs.
            assert!(compare_and_write(
                p,
                &[0x21, 0, 0, 0],
                &[0x61, 0, 0, 0],
                &lock
            ));
            assert!(!compare_and_write(
                p,
                &[0x21, 0, 0, 0],
                &[0x61, 0, 0, 0],
                &lock
            ));
            // Another byte differs from memory: no write.
            assert!(!compare_and_write(
                p,
                &[0x61, 1, 0, 0],
                &[0x62, 1, 0, 0],
                &lock
            ));
            assert!(compare_and_write(p, &[0x61, 0, 0, 0], &[1, 2, 3, 4], &lock));
            assert!(!compare_and_write(
                p,
                &[0x61, 0, 0, 0],
                &[5, 6, 7, 8],
                &lock
            ));
            assert!(compare_and_write(p, &[1, 2, 3, 4], &[1, 2, 3, 4], &lock));
            let mut out = [0u8; 4];
            read(p, &mut out);
            assert_eq!(out, [1, 2, 3, 4]);
        }
    }

    /// A 4-byte counter incremented by two threads with read +
    /// compare_and_write retries (a `lock add` as the assist runs it).
    /// Every increment changes all four bytes, so the several-bytes path
    /// must be atomic against itself: no increment is lost.
    #[test]
    fn multi_byte_changes_are_atomic_among_themselves() {
        struct Shared(NonNull<u8>);
        // SAFETY: the pointer is only used through this module's atomics.
        unsafe impl Sync for Shared {}
        impl Shared {
            fn ptr(&self) -> NonNull<u8> {
                self.0
            }
        }
        let rounds: u32 = if cfg!(miri) { 40 } else { 20_000 };
        let lock = Mutex::new(());
        let mut mem = [0u8; 4];
        let shared = Shared(cell(&mut mem));
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..rounds {
                        loop {
                            let mut old = [0u8; 4];
                            // SAFETY: `mem` outlives the scope; atomics only.
                            unsafe { read(shared.ptr(), &mut old) };
                            // Every byte changes: the several-bytes path.
                            let new = u32::from_le_bytes(old)
                                .wrapping_add(0x0101_0101)
                                .to_le_bytes();
                            // SAFETY: as above.
                            if unsafe { compare_and_write(shared.ptr(), &old, &new, &lock) } {
                                break;
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(
            u32::from_le_bytes(mem),
            (2 * rounds).wrapping_mul(0x0101_0101)
        );
    }
}
