//! `MmioBus::write_batch` against the per-element path: a device that takes
//! whole `REP STOS` / `REP MOVS` batches must end with the same contents,
//! see the same writes in the same order, and leave the guest in the same
//! state (registers, RAM, outcome of every call) as a device that gets one
//! write per element, with DF in both directions, every element size,
//! page-crossing operands, overlapping RAM operands, a failure at any element, and a
//! device that declines some batches.

use crate::support;
use crate::support::dyn_assist::assist_mem;

use nvmm_assist::{BusError, MmioBus, Outcome, PartialBatch};
use support::Rng;
use support::memdev::{Guest, MmioPair};

/// The guest's MMIO pair, taking batches in one call (and failing where the
/// per-element device would, with the elements before it done).
#[derive(Debug, Clone)]
struct BatchMmio {
    inner: MmioPair,
    batches: usize,
    /// Decline every batch whose first GPA has this low bit set (when on).
    decline_odd: bool,
}

impl MmioBus for BatchMmio {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        self.inner.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.inner.write(gpa, data)
    }
    fn write_batch(
        &mut self,
        gpa: u64,
        size: usize,
        descending: bool,
        data: &[u8],
    ) -> Option<Result<(), PartialBatch>> {
        if self.decline_odd && gpa & 1 != 0 {
            return None;
        }
        self.batches += 1;
        let count = data.len() / size;
        assert_eq!(count * size, data.len());
        let last = if descending {
            gpa - (count as u64 - 1) * size as u64
        } else {
            gpa + (count as u64 - 1) * size as u64
        };
        assert_eq!(gpa >> 12, last >> 12, "batch crosses a page");
        for (i, element) in data.chunks_exact(size).enumerate() {
            let at = if descending {
                gpa - (i * size) as u64
            } else {
                gpa + (i * size) as u64
            };
            if let Err(error) = self.inner.write(at, element) {
                return Some(Err(PartialBatch { done: i, error }));
            }
        }
        Some(Ok(()))
    }
}

#[test]
fn batch_device_matches_per_element_device() {
    let mut rng = Rng(0x5851_F42D_4C95_7F2D);
    let mut batches = 0;
    let mut cut = 0;
    // Recognisable RAM contents, set up once and copied for each case.
    let mut template = Guest::long64();
    for (i, b) in template.ram.mem.iter_mut().enumerate().take(0x20000) {
        *b = (i as u8).wrapping_mul(13) ^ (i >> 9) as u8;
    }
    for case in 0..3000 {
        let mut g = template.clone();
        let stos = rng.below(2) == 0;
        // F3 [REX.W] AA/AB (STOS) or A4/A5 (MOVS).
        let size = [1u64, 2, 4, 8][rng.below(4) as usize];
        let mut bytes = vec![0xF3];
        if size == 8 {
            bytes.push(0x48);
        } else if size == 2 {
            bytes.insert(0, 0x66);
        }
        bytes.push(match (stos, size) {
            (true, 1) => 0xAA,
            (true, _) => 0xAB,
            (false, 1) => 0xA4,
            (false, _) => 0xA5,
        });
        // Destination in one of the MMIO regions; source mostly RAM,
        // sometimes MMIO or overlapping the destination.
        // (A RAM destination too: a copy the CPU makes element by element
        // when the operands overlap.)
        let dst = [0x1000u64, 0x8000, 0x9000, 0x5000][rng.below(4) as usize] + rng.below(0x1000);
        let src = match rng.below(8) {
            0 => 0x8000 + rng.below(0x2000),
            1 | 2 => dst.wrapping_add(rng.below(64)).wrapping_sub(32),
            _ => 0x4000 + rng.below(0x3000),
        };
        g.regs.gprs[7] = dst;
        g.regs.gprs[6] = src;
        g.regs.gprs[1] = rng.below(2500);
        g.regs.gprs[0] = rng.next();
        if rng.below(2) == 0 {
            g.regs.rflags |= 1 << 10; // DF
        }
        if rng.below(3) == 0 {
            let f = Some(rng.below(3000) as usize);
            g.mmio.low.fail_at = f;
            g.mmio.high.fail_at = f;
        }
        let mut batch = BatchMmio {
            inner: g.mmio.clone(),
            batches: 0,
            decline_odd: rng.below(4) == 0,
        };
        let (mut regs2, mut ram2) = (g.regs.clone(), g.ram.clone());
        for call in 0..64 {
            let gpa = g.regs.gprs[7];
            let a = g.exec(&bytes, gpa);
            let exit = nvmm_assist::MemExit {
                gpa: regs2.gprs[7],
                access: nvmm_assist::AccessType::Read,
                instruction: &bytes,
            };
            let b = assist_mem(&mut regs2, &mut ram2, &mut batch, &exit);
            let ctx = format!("case {case} call {call}: {bytes:02x?} dst {dst:#x} src {src:#x}");
            assert_eq!(a, b, "{ctx}");
            assert_eq!(g.regs, regs2, "{ctx}");
            assert!(g.ram.mem == ram2.mem, "{ctx}: RAM differs");
            assert_eq!(g.mmio.low.log, batch.inner.low.log, "{ctx}");
            assert_eq!(g.mmio.high.log, batch.inner.high.log, "{ctx}");
            assert!(g.mmio.low.mem == batch.inner.low.mem, "{ctx}");
            assert!(g.mmio.high.mem == batch.inner.high.mem, "{ctx}");
            if matches!(a, Ok(Outcome::Resume))
                && g.mmio
                    .low
                    .fail_at
                    .is_some_and(|f| f == g.mmio.low.log.len() || f == g.mmio.high.log.len())
            {
                cut += 1;
            }
            if !matches!(a, Ok(Outcome::Resume)) {
                break;
            }
        }
        batches += batch.batches;
    }
    assert!(batches > 2000, "only {batches} batches taken");
    assert!(cut > 20, "only {cut} batches cut by a failure");
}

/// A 4 KiB `rep stosd` to a batch device is one device call.
#[test]
fn rep_stosd_to_a_framebuffer_is_one_call() {
    let mut g = Guest::long64();
    g.regs.gprs[7] = 0x8000;
    g.regs.gprs[1] = 1024;
    g.regs.gprs[0] = 0x5A5A_5A5A;
    let mut dev = BatchMmio {
        inner: g.mmio.clone(),
        batches: 0,
        decline_odd: false,
    };
    let exit = nvmm_assist::MemExit {
        gpa: 0x8000,
        access: nvmm_assist::AccessType::Write,
        instruction: &[0xF3, 0xAB],
    };
    let r = assist_mem(&mut g.regs, &mut g.ram, &mut dev, &exit);
    assert_eq!(r, Ok(Outcome::Done));
    assert_eq!(dev.batches, 1);
    assert!(dev.inner.high.mem[..4096].iter().all(|&b| b == 0x5A));
    assert_eq!((g.regs.gprs[1], g.regs.gprs[7]), (0, 0x9000));
}

/// An overlapping `rep movs` in RAM copies element by element, as the CPU
/// does (a byte copied early is copied again), in both directions: the
/// batch path must not turn it into a block copy.
#[test]
fn overlapping_rep_movs_in_ram_propagates_like_the_cpu() {
    for (shift, df) in [
        (4i64, false),
        (-4, true),
        (1, false),
        (-1, true),
        (-8, false),
        (8, true),
    ] {
        for size in [1u64, 4] {
            let mut g = Guest::long64();
            for (i, b) in g.ram.mem.iter_mut().enumerate().take(0x8000) {
                *b = (i as u8).wrapping_mul(29) ^ 0x5C;
            }
            let count = 200u64;
            let src = 0x5400u64;
            let dst = src.wrapping_add(shift as u64);
            let (start_src, start_dst) = if df {
                (src + (count - 1) * size, dst + (count - 1) * size)
            } else {
                (src, dst)
            };
            g.regs.gprs[6] = start_src;
            g.regs.gprs[7] = start_dst;
            g.regs.gprs[1] = count;
            if df {
                g.regs.rflags |= 1 << 10;
            }
            // The CPU's order: element i read whole, then written, one by
            // one.
            let mut expected = g.ram.mem.clone();
            for i in 0..count {
                let k = if df { count - 1 - i } else { i };
                let from = (src + k * size) as usize;
                let to = (dst + k * size) as usize;
                let element = expected[from..from + size as usize].to_vec();
                expected[to..to + size as usize].copy_from_slice(&element);
            }
            let bytes: &[u8] = if size == 1 {
                &[0xF3, 0xA4]
            } else {
                &[0xF3, 0xA5]
            };
            let calls = g.run_rep(bytes, |r| r.gprs[7], 100);
            assert!(calls >= 1);
            assert!(
                g.ram.mem[0x5000..0x6000] == expected[0x5000..0x6000],
                "shift {shift} df {df} size {size}"
            );
        }
    }
}

/// RAM that fails every read longer than 8 bytes (the one-piece read of a
/// MOVS batch, not a page-table entry) and counts calls after a failure.
struct FailBigReads {
    inner: support::TestRam,
    failed: bool,
    after: usize,
}

impl nvmm_assist::GuestRam for FailBigReads {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<nvmm_assist::RamStatus, BusError> {
        self.after += usize::from(self.failed);
        if buf.len() > 8 {
            self.failed = true;
            return Err(BusError(3));
        }
        self.inner.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<nvmm_assist::RamStatus, BusError> {
        self.after += usize::from(self.failed);
        self.inner.write(gpa, data)
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<nvmm_assist::CompareWrite, BusError> {
        self.after += usize::from(self.failed);
        self.inner.compare_and_write(gpa, expected, new)
    }
}

/// A RAM error on the batch's one-piece read is the assist's error: no
/// callback follows it, no register changes.
#[test]
fn a_ram_error_on_a_batch_is_the_last_callback() {
    let g = Guest::long64();
    let mut regs = g.regs.clone();
    regs.gprs[6] = 0x4000; // RSI: RAM
    regs.gprs[7] = 0x8000; // RDI: MMIO
    regs.gprs[1] = 64;
    let before = regs.clone();
    let mut ram = FailBigReads {
        inner: g.ram.clone(),
        failed: false,
        after: 0,
    };
    let mut dev = BatchMmio {
        inner: g.mmio.clone(),
        batches: 0,
        decline_odd: false,
    };
    let exit = nvmm_assist::MemExit {
        gpa: 0x8000,
        access: nvmm_assist::AccessType::Write,
        instruction: &[0xF3, 0xA4],
    };
    let r = assist_mem(&mut regs, &mut ram, &mut dev, &exit);
    assert_eq!(r, Err(nvmm_assist::Error::Bus(BusError(3))));
    assert!(ram.failed);
    assert_eq!(ram.after, 0, "a callback after the failed one");
    assert_eq!(dev.batches, 0);
    assert_eq!(dev.inner.total_accesses(), 0);
    assert_eq!(regs, before);
}
