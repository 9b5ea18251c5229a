//! Benchmark of the memory and I/O assists.
//!
//! Prints:
//! - nanoseconds per full assist (decode + emulate + device callback +
//!   register commit) for `mov [mmio], eax`, `mov eax, [mmio]`,
//!   `or dword [mmio], imm8` and `movzx eax, byte [mmio]`, with the
//!   instruction bytes in the exit (SVM DecodeAssists), and the same with
//!   the bytes fetched through the page walker (VMX);
//! - nanoseconds for iced-x86 to decode the same bytes with a fresh
//!   `Decoder` per instruction (as a VMM does per exit), and the ratio;
//! - the number of assist calls (VM exits) a 4 KiB `rep movsb` to MMIO, a
//!   4 KiB `rep stosd` to MMIO and a 4 KiB `rep outsb` take (libnvmm: 4096,
//!   1024 and 128).
//!
//! Run with `cargo bench -p nvmm-assist --bench assist`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use iced_x86::{Decoder, DecoderOptions};
use nvmm_assist::{
    AccessType, BusError, CompareWrite, GuestRam, IoExit, MemExit, MmioBus, Outcome, RamStatus,
    Registers, assist_io, assist_mem,
};
use support::memdev::Guest;
use support::{RecordingPorts, TestRam};

/// RAM with no RAM at all: every GPA is MMIO.
struct NoRam;

impl GuestRam for NoRam {
    fn read(&mut self, _: u64, _: &mut [u8]) -> Result<RamStatus, BusError> {
        Ok(RamStatus::NotRam)
    }
    fn write(&mut self, _: u64, _: &[u8]) -> Result<RamStatus, BusError> {
        Ok(RamStatus::NotRam)
    }
    fn compare_and_write(&mut self, _: u64, _: &[u8], _: &[u8]) -> Result<CompareWrite, BusError> {
        Ok(CompareWrite::NotRam)
    }
}

/// Guest RAM as a flat buffer from GPA 0, with the page at [`MMIO`] (and
/// anything beyond the buffer) not RAM: what a VMM's RAM lookup does.
struct FlatRam {
    mem: Vec<u8>,
}

impl FlatRam {
    fn range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        if gpa >> 12 == MMIO >> 12 {
            return None;
        }
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.mem.len()).then_some(start..end)
    }
}

impl GuestRam for FlatRam {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        match self.range(gpa, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&self.mem[r]);
                Ok(RamStatus::Done)
            }
            None => Ok(RamStatus::NotRam),
        }
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        match self.range(gpa, data.len()) {
            Some(r) => {
                self.mem[r].copy_from_slice(data);
                Ok(RamStatus::Done)
            }
            None => Ok(RamStatus::NotRam),
        }
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError> {
        match self.range(gpa, new.len()) {
            Some(r) if self.mem[r.clone()] == *expected => {
                self.mem[r].copy_from_slice(new);
                Ok(CompareWrite::Written)
            }
            Some(_) => Ok(CompareWrite::Mismatch),
            None => Ok(CompareWrite::NotRam),
        }
    }
}

/// A device with one 64-bit register, as a typical MMIO register file
/// handles accesses: by size.
struct Device {
    reg: u64,
}

impl MmioBus for Device {
    fn read(&mut self, _gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        let v = self.reg.to_le_bytes();
        match buf.len() {
            1 => buf[0] = v[0],
            2 => buf.copy_from_slice(&v[..2]),
            4 => buf.copy_from_slice(&v[..4]),
            8 => buf.copy_from_slice(&v),
            _ => return Err(BusError(1)),
        }
        Ok(())
    }
    fn write(&mut self, _gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.reg = match *data {
            [a] => u64::from(a),
            [a, b] => u64::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => return Err(BusError(1)),
        };
        Ok(())
    }
}

/// Calls per timed run; `ASSIST_BENCH_ITERATIONS` overrides it (for
/// profiling under callgrind).
fn iterations() -> u32 {
    std::env::var("ASSIST_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}
const MMIO: u64 = 0x1000;

/// Timed runs per figure; the best is kept (the machine may be shared).
const RUNS: usize = 15;

/// A timed loop: runs the operation `n` times and returns the time taken.
type Runner = Box<dyn FnMut(u32) -> Duration>;

/// Wraps one operation in a monomorphic timed loop.
fn runner(mut f: impl FnMut() + 'static) -> Runner {
    Box::new(move |n| {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed()
    })
}

/// ns per call of each runner: after a warm-up, [`RUNS`] rounds in which
/// each runner runs `iterations()` times in turn (so a noisy period hurts
/// all of them alike); the best round of each is kept.
fn measure(runners: &mut [Runner]) -> Vec<f64> {
    let n = iterations().max(1);
    for r in runners.iter_mut() {
        r(n / 10);
    }
    let mut best = vec![Duration::MAX; runners.len()];
    for _ in 0..RUNS {
        for (b, r) in best.iter_mut().zip(runners.iter_mut()) {
            *b = (*b).min(r(n));
        }
    }
    best.iter()
        .map(|d| d.as_nanos() as f64 / f64::from(n))
        .collect()
}

fn ours(bytes: &'static [u8]) -> Runner {
    let mut state: Registers = Guest::long64().regs;
    state.gprs[0] = MMIO;
    let mut ram = NoRam;
    let mut dev = Device { reg: 0 };
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Write,
        instruction: bytes,
    };
    runner(move || {
        state.rip = 0x2000;
        let r = assist_mem(&mut state, &mut ram, &mut dev, black_box(&exit));
        assert_eq!(r, Ok(Outcome::Done));
    })
}

/// The full assist with the bytes fetched at RIP through 4-level paging
/// (VMX exits carry no instruction bytes).
fn ours_fetched(bytes: &'static [u8]) -> Runner {
    let mut g = Guest::long64();
    g.regs.gprs[0] = MMIO;
    g.ram.put(0x2000, bytes);
    let mut ram = FlatRam {
        mem: g.ram.mem.clone(),
    };
    let mut dev = Device { reg: 0 };
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Write,
        instruction: &[],
    };
    runner(move || {
        g.regs.rip = 0x2000;
        let r = assist_mem(&mut g.regs, &mut ram, &mut dev, black_box(&exit));
        assert_eq!(r, Ok(Outcome::Done));
    })
}

fn our_decode(bytes: &'static [u8]) -> Runner {
    runner(move || {
        let i = nvmm_assist::decode(black_box(bytes), nvmm_assist::CpuMode::Long64);
        let _ = black_box(i);
    })
}

fn iced(bytes: &'static [u8]) -> Runner {
    runner(move || {
        let mut d = Decoder::with_ip(64, black_box(bytes), 0x2000, DecoderOptions::NONE);
        let i = d.decode();
        black_box(i);
    })
}

/// Assist calls until a REP memory instruction is done.
fn rep_calls(
    bytes: &[u8],
    setup: impl Fn(&mut Guest),
    exit_gpa: impl Fn(&Registers) -> u64,
) -> usize {
    let mut g = Guest::long64();
    setup(&mut g);
    g.run_rep(bytes, exit_gpa, 1_000_000)
}

fn rep_outsb_calls() -> usize {
    let mut g = Guest::long64();
    let mut ports = RecordingPorts::default();
    g.regs.gprs[6] = 0x4000; // RSI: 4 KiB of RAM
    g.regs.gprs[1] = 4096; // RCX
    g.regs.gprs[2] = 0x3F8; // DX
    let exit = IoExit {
        port: 0x3F8,
        input: false,
        operand_size: 1,
        address_size: 8,
        rep: true,
        string: true,
        segment: None,
        npc: 0x2002,
    };
    g.ram.put(0x2000, &[0xF3, 0x6E]);
    let mut ram: TestRam = g.ram.clone();
    for calls in 1..=1_000_000 {
        match assist_io(&mut g.regs, &mut ram, &mut g.mmio, &mut ports, &exit) {
            Ok(Outcome::Done) => {
                assert_eq!(ports.output.len(), 4096);
                return calls;
            }
            Ok(Outcome::Resume) => {}
            Err(e) => panic!("rep outsb failed: {e:?}"),
        }
    }
    usize::MAX
}

fn main() {
    let cases: [(&str, &'static [u8]); 4] = [
        ("mov [mmio], eax", &[0x89, 0x00]),
        ("mov eax, [mmio]", &[0x8B, 0x00]),
        ("or dword [mmio], imm8", &[0x83, 0x08, 0x40]),
        ("movzx eax, byte [mmio]", &[0x0F, 0xB6, 0x00]),
    ];
    // Profiling aid: `ASSIST_BENCH_PROFILE=<case index>` times only our
    // full assist of that case (run it under callgrind).
    if let Some(i) = std::env::var("ASSIST_BENCH_PROFILE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        if let Some(&(name, bytes)) = cases.get(i % 10) {
            let (what, r) = match i / 10 {
                0 => ("assist", ours(bytes)),
                1 => ("our decode", our_decode(bytes)),
                3 => ("assist+fetch", ours_fetched(bytes)),
                _ => ("iced decode", iced(bytes)),
            };
            println!("{name}: {what} {:.1} ns", measure(&mut [r])[0]);
        }
        return;
    }
    println!(
        "nvmm-assist, ns per call (best of {RUNS} x {}):",
        iterations()
    );
    println!(
        "{:<26} {:>12} {:>14} {:>12} {:>12} {:>8}",
        "instruction", "assist_mem", "assist+fetch", "our decode", "iced decode", "ratio"
    );
    // All cases' runners in one interleaved measurement, so that a noisy
    // period on a shared machine hurts every figure alike.
    let mut runners: Vec<Runner> = Vec::new();
    for &(_, bytes) in &cases {
        runners.push(ours(bytes));
        runners.push(ours_fetched(bytes));
        runners.push(our_decode(bytes));
        runners.push(iced(bytes));
    }
    let t = measure(&mut runners);
    let mut worst_ratio = f64::INFINITY;
    for ((name, _), t) in cases.iter().zip(t.chunks(4)) {
        let (a, f, d, i) = (t[0], t[1], t[2], t[3]);
        let ratio = i / a;
        worst_ratio = worst_ratio.min(ratio);
        println!("{name:<26} {a:>12.1} {f:>14.1} {d:>12.1} {i:>12.1} {ratio:>7.2}x");
    }
    println!(
        "target: full assist >= 2x faster than iced-x86 decode alone: worst ratio {worst_ratio:.2}x ({})",
        if worst_ratio >= 2.0 { "met" } else { "NOT met" }
    );

    println!();
    println!("assist calls (VM exits) for 4 KiB string operations:");
    let movsb = rep_calls(
        &[0xF3, 0xA4],
        |g| {
            g.regs.gprs[6] = 0x4000; // RSI in RAM
            g.regs.gprs[7] = 0x8000; // RDI in MMIO (two pages)
            g.regs.gprs[1] = 4096;
        },
        |r| r.gprs[7],
    );
    let stosd = rep_calls(
        &[0xF3, 0xAB],
        |g| {
            g.regs.gprs[7] = 0x8000;
            g.regs.gprs[1] = 1024;
        },
        |r| r.gprs[7],
    );
    let outsb = rep_outsb_calls();
    for (name, calls, libnvmm) in [
        ("rep movsb  RAM -> MMIO", movsb, 4096),
        ("rep stosd  -> MMIO", stosd, 1024),
        ("rep outsb  RAM -> port", outsb, 128),
    ] {
        println!(
            "{name:<26} {calls:>6} calls (libnvmm {libnvmm}; target <= 4: {})",
            if calls <= 4 { "met" } else { "NOT met" }
        );
    }
}
