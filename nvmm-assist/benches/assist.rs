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
        .unwrap_or(2_000_000)
}
const MMIO: u64 = 0x1000;

/// Timed runs per figure; the best is kept (the machine may be shared).
const RUNS: usize = 7;

/// Runs `f` `iterations()` times (after a warm-up) and returns ns per call,
/// the best of [`RUNS`] runs.
fn time(mut f: impl FnMut()) -> f64 {
    let n = iterations().max(1);
    for _ in 0..n / 10 {
        f();
    }
    let mut best = Duration::MAX;
    for _ in 0..RUNS {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.min(start.elapsed());
    }
    best.as_nanos() as f64 / f64::from(n)
}

fn ours(bytes: &[u8]) -> f64 {
    let mut state: Registers = Guest::long64().regs;
    state.gprs[0] = MMIO;
    let mut ram = NoRam;
    let mut dev = Device { reg: 0 };
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Write,
        instruction: bytes,
    };
    time(|| {
        state.rip = 0x2000;
        let r = assist_mem(&mut state, &mut ram, &mut dev, black_box(&exit));
        assert_eq!(r, Ok(Outcome::Done));
    })
}

/// The full assist with the bytes fetched at RIP through 4-level paging.
fn ours_fetched(bytes: &[u8]) -> f64 {
    let mut g = Guest::long64();
    g.regs.gprs[0] = MMIO;
    g.ram.put(0x2000, bytes);
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Write,
        instruction: &[],
    };
    time(|| {
        g.regs.rip = 0x2000;
        let r = assist_mem(&mut g.regs, &mut g.ram, &mut g.mmio, black_box(&exit));
        assert_eq!(r, Ok(Outcome::Done));
    })
}

fn our_decode(bytes: &[u8]) -> f64 {
    time(|| {
        let i = nvmm_assist::decode(black_box(bytes), nvmm_assist::CpuMode::Long64);
        let _ = black_box(i);
    })
}

fn iced(bytes: &[u8]) -> f64 {
    time(|| {
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
    let cases: [(&str, &[u8]); 4] = [
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
        if let Some((name, bytes)) = cases.get(i % 10) {
            match i / 10 {
                0 => println!("{name}: assist {:.1} ns", ours(bytes)),
                1 => println!("{name}: our decode {:.1} ns", our_decode(bytes)),
                _ => println!("{name}: iced decode {:.1} ns", iced(bytes)),
            }
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
    let mut worst_ratio = f64::INFINITY;
    for (name, bytes) in cases {
        let a = ours(bytes);
        let f = ours_fetched(bytes);
        let d = our_decode(bytes);
        let i = iced(bytes);
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
