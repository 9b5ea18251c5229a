//! The batch port methods (`PortIo::read_batch` / `write_batch`) against
//! the per-element ones: a device that takes each `REP INS`/`REP OUTS`
//! batch in one call must see the same accesses in the same order, and the
//! guest must end in the same state (registers, RAM, MMIO, outcome of every
//! call), with DF in both directions, every element size, page-crossing
//! buffers, MMIO buffers and a port failure at any element.

use crate::support;
use crate::support::dyn_assist::assist_io;

use nvmm_assist::{BusError, IoExit, Outcome, PartialBatch, PortIo, Segment};
use support::Rng;
use support::memdev::Guest;
use support::{BusAccess, RecordingPorts};

/// A device that overrides the batch methods: one call per batch, doing
/// the whole batch at once (and failing at the same element as the
/// per-element device would, with the elements before it done).
#[derive(Debug, Clone, Default)]
struct BatchPorts {
    inner: RecordingPorts,
    /// How many batch calls it got.
    batches: usize,
}

impl PortIo for BatchPorts {
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        self.inner.read(port, buf)
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        self.inner.write(port, data)
    }
    fn read_batch(&mut self, port: u16, size: usize, buf: &mut [u8]) -> Result<(), PartialBatch> {
        self.batches += 1;
        let count = buf.len() / size;
        let first = self.inner.log.len();
        let failing = self
            .inner
            .fail_at
            .filter(|&f| f >= first && f < first + count);
        let ok = failing.map_or(count, |f| f - first);
        // The whole (or partial) batch from the input at once.
        let bytes = ok * size;
        let pos = self.inner.pos;
        for (i, b) in buf[..bytes].iter_mut().enumerate() {
            *b = self.inner.input.get(pos + i).copied().unwrap_or(0);
        }
        self.inner.pos += bytes;
        for element in buf[..bytes].chunks_exact(size) {
            self.inner.log.push(BusAccess {
                write: false,
                addr: u64::from(port),
                data: element.to_vec(),
            });
        }
        match failing {
            Some(_) => Err(PartialBatch {
                done: ok,
                error: BusError(9),
            }),
            None => Ok(()),
        }
    }
    fn write_batch(&mut self, port: u16, size: usize, data: &[u8]) -> Result<(), PartialBatch> {
        self.batches += 1;
        let count = data.len() / size;
        let first = self.inner.log.len();
        let failing = self
            .inner
            .fail_at
            .filter(|&f| f >= first && f < first + count);
        let ok = failing.map_or(count, |f| f - first);
        self.inner.output.extend_from_slice(&data[..ok * size]);
        for element in data[..ok * size].chunks_exact(size) {
            self.inner.log.push(BusAccess {
                write: true,
                addr: u64::from(port),
                data: element.to_vec(),
            });
        }
        match failing {
            Some(_) => Err(PartialBatch {
                done: ok,
                error: BusError(9),
            }),
            None => Ok(()),
        }
    }
}

#[test]
fn batch_ports_match_per_element_ports() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut batched_calls = 0;
    let mut partial = 0;
    // Recognisable RAM contents, set up once and copied for each case.
    let mut template = Guest::long64();
    for (i, b) in template.ram.mem.iter_mut().enumerate().take(0x20000) {
        *b = (i as u8).wrapping_mul(7) ^ (i >> 8) as u8;
    }
    // The ports' input: each case reads from its own random start.
    let input_bytes: Vec<u8> = (0..40_000).map(|_| rng.next() as u8).collect();
    for case in 0..3000 {
        let mut g = template.clone();
        let input = rng.below(2) == 0;
        let size = [1u8, 2, 4][rng.below(3) as usize];
        let rep = rng.below(8) != 0;
        let base = [0x4000u64, 0x1000, 0x8000, 0x6000][rng.below(4) as usize];
        let addr = base + rng.below(0x2000) - if rng.below(2) == 0 { 0 } else { 0x800 };
        let reg = if input { 7 } else { 6 };
        g.regs.gprs[reg] = addr;
        g.regs.gprs[1] = rng.below(3000);
        if rng.below(2) == 0 {
            g.regs.rflags |= 1 << 10; // DF
        }
        g.regs.gprs[2] = 0x3F8;
        let start = rng.below(20_000) as usize;
        let mut single = RecordingPorts::with_input(&input_bytes[start..start + 20_000]);
        if rng.below(3) == 0 {
            single.fail_at = Some(rng.below(3000) as usize);
        }
        let mut batch = BatchPorts {
            inner: single.clone(),
            batches: 0,
        };
        let exit = IoExit {
            port: 0x3F8,
            input,
            operand_size: size,
            address_size: 8,
            rep,
            string: true,
            segment: Some(Segment::Ds),
            npc: 0x2002,
        };
        let mut g2 = g.clone();
        for call in 0..64 {
            let a = assist_io(&mut g.regs, &mut g.ram, &mut g.mmio, &mut single, &exit);
            let b = assist_io(&mut g2.regs, &mut g2.ram, &mut g2.mmio, &mut batch, &exit);
            let ctx = format!("case {case} call {call}: {exit:?} addr {addr:#x}");
            assert_eq!(a, b, "{ctx}");
            assert_eq!(g.regs, g2.regs, "{ctx}");
            assert!(g.ram.mem == g2.ram.mem, "{ctx}: RAM differs");
            assert_eq!(g.mmio.low.log, g2.mmio.low.log, "{ctx}");
            assert_eq!(g.mmio.high.log, g2.mmio.high.log, "{ctx}");
            assert_eq!(single.log, batch.inner.log, "{ctx}");
            assert_eq!(single.output, batch.inner.output, "{ctx}");
            // A batch cut by the port failure (the failing element is next).
            if matches!(a, Ok(Outcome::Resume)) && single.fail_at == Some(single.log.len()) {
                partial += 1;
            }
            if !matches!(a, Ok(Outcome::Resume)) {
                break;
            }
        }
        batched_calls += batch.batches;
    }
    assert!(batched_calls > 3000, "only {batched_calls} batch calls");
    assert!(partial > 50, "only {partial} partial batches");
}

/// A 4 KiB `rep outsb` reaches a batch device in one call with the bytes
/// in memory order, and with DF=1 in descending order.
#[test]
fn rep_outsb_is_one_batch_call_in_iteration_order() {
    for df in [false, true] {
        let mut g = Guest::long64();
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
        g.ram.put(0x4000, &data);
        g.regs.gprs[6] = if df { 0x4FFF } else { 0x4000 };
        g.regs.gprs[1] = 4096;
        if df {
            g.regs.rflags |= 1 << 10;
        }
        let mut ports = BatchPorts::default();
        let exit = IoExit {
            port: 0x3F8,
            input: false,
            operand_size: 1,
            address_size: 8,
            rep: true,
            string: true,
            segment: Some(Segment::Ds),
            npc: 0x2002,
        };
        let r = assist_io(&mut g.regs, &mut g.ram, &mut g.mmio, &mut ports, &exit);
        assert_eq!(r, Ok(Outcome::Done));
        assert_eq!(ports.batches, 1);
        let mut expected = data.clone();
        if df {
            expected.reverse();
        }
        assert_eq!(ports.inner.output, expected);
        assert_eq!(g.regs.gprs[1], 0);
        assert_eq!(g.regs.gprs[6], if df { 0x3FFF } else { 0x5000 });
    }
}
