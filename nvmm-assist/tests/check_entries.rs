//! `GuestRam::check_entries`: the default implementation compares the
//! entries in order, one read each, and stops at the first that is not RAM,
//! differs or fails; the bench RAM's override (one flat buffer with an MMIO
//! page, checking a whole walk at once) gives the default's result for
//! every input, including entries below its RAM, past its end, misaligned
//! or on the MMIO page.

use crate::support;

/// The bench's MMIO page (`suite.rs` holds it: `devices.rs` takes it from
/// its crate root).
use crate::MMIO;

#[allow(dead_code)]
#[path = "../benches/assist/devices.rs"]
mod devices;

use devices::FlatRam;
use nvmm_assist::{BusError, CompareWrite, EntryCheck, GuestRam, RamStatus};
use support::Rng;

/// A RAM that forwards everything but `check_entries` (which is then the
/// default) to `inner`, counts the reads and fails the read of one GPA.
struct Plain<R> {
    inner: R,
    reads: Vec<u64>,
    fail_at: Option<u64>,
}

impl<R: GuestRam> GuestRam for Plain<R> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        self.reads.push(gpa);
        if Some(gpa) == self.fail_at {
            return Err(BusError(5));
        }
        self.inner.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        self.inner.write(gpa, data)
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError> {
        self.inner.compare_and_write(gpa, expected, new)
    }
}

fn plain<R>(inner: R) -> Plain<R> {
    Plain {
        inner,
        reads: Vec::new(),
        fail_at: None,
    }
}

/// What the entries' check must give, written out: each entry read in
/// order with `read` (8 or 4 bytes), the first not RAM, different or
/// failing deciding.
fn reference<R: GuestRam>(
    ram: &mut R,
    entries: &[(u64, u64)],
    wide: bool,
) -> Result<EntryCheck, BusError> {
    for (index, &(gpa, value)) in entries.iter().enumerate() {
        let mut buf = [0u8; 8];
        let size = if wide { 8 } else { 4 };
        if ram.read(gpa, &mut buf[..size])? == RamStatus::NotRam {
            return Ok(EntryCheck::NotRam { gpa });
        }
        if u64::from_le_bytes(buf) != value {
            return Ok(EntryCheck::Changed { index });
        }
    }
    Ok(EntryCheck::Held)
}

const RAM_SIZE: usize = 0x3_0000;

/// A flat RAM of `RAM_SIZE` bytes of random contents.
fn random_ram(rng: &mut Rng) -> FlatRam {
    let mut mem = vec![0u8; RAM_SIZE];
    for chunk in mem.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
    }
    FlatRam { mem }
}

/// One to five entries, most in RAM above the MMIO page and holding their
/// values (as a cached walk's), some changed, below the MMIO page, on it,
/// past the end, misaligned or anywhere.
fn random_entries(rng: &mut Rng, ram: &mut FlatRam, wide: bool) -> Vec<(u64, u64)> {
    let size = if wide { 8 } else { 4 };
    let count = 1 + rng.below(5) as usize;
    (0..count)
        .map(|_| {
            let gpa = match rng.below(16) {
                0 => rng.below(MMIO) & !(size - 1),
                1 => MMIO + (rng.below(0x1000) & !(size - 1)),
                2 => RAM_SIZE as u64 - size + rng.below(3) * size,
                3 => 0x2000 + rng.below(RAM_SIZE as u64 - 0x2000),
                4 => rng.next(),
                5 => rng.next() & !(size - 1),
                6 => (1u64 << 63) + rng.below(0x3000) * size,
                _ => 0x2000 + (rng.below(RAM_SIZE as u64 - 0x2000) & !(size - 1)),
            };
            let mut buf = [0u8; 8];
            let held = match ram.read(gpa, &mut buf[..size as usize]) {
                Ok(RamStatus::Done) => u64::from_le_bytes(buf),
                _ => rng.next() >> (64 - 8 * size),
            };
            let value = match rng.below(8) {
                0 => held ^ (1 << rng.below(8 * size)),
                1 => rng.next() >> (64 - 8 * size),
                _ => held,
            };
            (gpa, value)
        })
        .collect()
}

/// The default `check_entries` is the in-order check, with exactly the
/// reads it needs: those of the entries up to the deciding one.
#[test]
fn the_default_reads_in_order_and_stops_at_the_deciding_entry() {
    let mut rng = Rng(0x5EED_0001);
    let mut outcomes = [0usize; 3];
    // One RAM for all cases: the checks only read it, and the entries
    // (their GPAs and the values they are to hold) are what varies.
    let mut flat = random_ram(&mut rng);
    for i in 0..20_000 {
        let wide = i % 2 == 0;
        let entries = random_entries(&mut rng, &mut flat, wide);
        let mut ram = plain(&mut flat);
        let got = ram.check_entries(&entries, wide);
        let got_reads = std::mem::take(&mut ram.reads);
        let want = reference(&mut ram, &entries, wide);
        assert_eq!(got, want, "{entries:x?} wide {wide}");
        assert_eq!(got_reads, ram.reads, "{entries:x?} wide {wide}");
        let decided = match want {
            Ok(EntryCheck::Held) => entries.len(),
            Ok(EntryCheck::Changed { .. }) => ram.reads.len(),
            Ok(EntryCheck::NotRam { gpa }) => {
                assert_eq!(Some(&gpa), ram.reads.last());
                ram.reads.len()
            }
            Err(_) => unreachable!("no failing read"),
        };
        assert_eq!(ram.reads.len(), decided);
        outcomes[match want {
            Ok(EntryCheck::Held) => 0,
            Ok(EntryCheck::Changed { .. }) => 1,
            _ => 2,
        }] += 1;
    }
    // Every outcome is exercised.
    assert!(outcomes.iter().all(|&n| n > 1000), "{outcomes:?}");
}

/// A failed read in the default `check_entries` is its result, after the
/// entries before it held, and nothing is read after it.
#[test]
fn the_default_returns_a_read_error_and_reads_nothing_after_it() {
    let mut rng = Rng(0x5EED_0002);
    let mut flat = random_ram(&mut rng);
    for i in 0..2_000 {
        let wide = i % 2 == 0;
        let size = if wide { 8 } else { 4 };
        // Entries that all hold, one of which fails to read.
        let entries: Vec<(u64, u64)> = (0..1 + rng.below(5))
            .map(|_| {
                let gpa = 0x2000 + (rng.below(RAM_SIZE as u64 - 0x2000) & !(size - 1));
                let mut buf = [0u8; 8];
                let _ = flat.read(gpa, &mut buf[..size as usize]);
                (gpa, u64::from_le_bytes(buf))
            })
            .collect();
        let failing = rng.below(entries.len() as u64) as usize;
        let mut ram = plain(&mut flat);
        ram.fail_at = Some(entries[failing].0);
        assert_eq!(ram.check_entries(&entries, wide), Err(BusError(5)));
        // Up to the first entry at the failing GPA (one may repeat it).
        let first = entries.iter().position(|e| e.0 == entries[failing].0);
        assert_eq!(ram.reads.len(), first.unwrap_or(usize::MAX) + 1);
    }
}

/// The bench RAM's override gives the default's result for any entries.
#[test]
fn the_bench_ram_override_agrees_with_the_default() {
    let mut rng = Rng(0x5EED_0003);
    let mut outcomes = [0usize; 3];
    let mut flat = random_ram(&mut rng);
    for i in 0..50_000 {
        let wide = i % 2 == 0;
        let entries = random_entries(&mut rng, &mut flat, wide);
        let got = flat.check_entries(&entries, wide);
        let mut ram = plain(&mut flat);
        let want = ram.check_entries(&entries, wide);
        assert_eq!(got, want, "{entries:x?} wide {wide}");
        outcomes[match want {
            Ok(EntryCheck::Held) => 0,
            Ok(EntryCheck::Changed { .. }) => 1,
            _ => 2,
        }] += 1;
    }
    assert!(outcomes.iter().all(|&n| n > 2000), "{outcomes:?}");
}

/// A RAM whose `check_entries` says one thing whatever the entries.
struct Fixed(FlatRam);

impl GuestRam for Fixed {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        self.0.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        self.0.write(gpa, data)
    }
    fn check_entries(&mut self, _: &[(u64, u64)], _: bool) -> Result<EntryCheck, BusError> {
        Ok(EntryCheck::NotRam { gpa: 42 })
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError> {
        self.0.compare_and_write(gpa, expected, new)
    }
}

/// Through `&mut`, `check_entries` is the referent's override.
#[test]
fn a_mutable_reference_forwards_check_entries() {
    let mut rng = Rng(0x5EED_0004);
    let mut fixed = Fixed(random_ram(&mut rng));
    let entries = random_entries(&mut rng, &mut fixed.0, true);
    let mut by_ref = &mut fixed;
    assert_eq!(
        GuestRam::check_entries(&mut by_ref, &entries, true),
        Ok(EntryCheck::NotRam { gpa: 42 })
    );
}
