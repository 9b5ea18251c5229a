//! Benchmark of the memory and I/O assists (issue 13's targets).
//!
//! Prints, as medians of interleaved rounds (every runner runs once per
//! round, so a noisy period on a shared machine hurts all figures alike):
//! - per CPU mode (real, 16- and 32-bit protected, compatibility, 64-bit)
//!   and per form (`mov [m], r`, `mov r, [m]`, `or [m], imm8`,
//!   `movzx r, byte [m]`, `movsx r, byte [m]`, and two forms of the
//!   general path, `xchg [m], r` and `bt [m], r`): nanoseconds per full assist (decode + emulate +
//!   device callback + register commit) with the instruction bytes in the
//!   exit (SVM DecodeAssists), the same with the bytes fetched at CS:RIP
//!   through segmentation and the page walker (VMX: no bytes in the exit;
//!   with the VCPU's `FetchCache`, re-validated on every use),
//!   and iced-x86's decode alone of the same bytes (a fresh `Decoder` per
//!   instruction, as a VMM does per exit);
//! - non-string `out dx, al` / `in al, dx` against the `mov` store assist;
//! - one assist call of a 4 KiB `rep outsb` to a per-element device and to
//!   a device that takes the batch in one call, and the same for a 4 KiB
//!   `rep stosd` to a framebuffer behind the MMIO bus;
//! - the number of assist calls (VM exits) a 4 KiB `rep movsb` to MMIO, a
//!   4 KiB `rep stosd` to MMIO and a 4 KiB `rep outsb` take (libnvmm: 4096,
//!   1024 and 128).
//!
//! Each target line ends in `met` or `NOT met`.
//!
//! Run with `cargo bench -p nvmm-assist --bench assist` (or `cargo xtask
//! bench`). `ASSIST_BENCH_ONLY=<text>` times only the runners whose label
//! contains `<text>` (for profiling one under callgrind), and
//! `ASSIST_BENCH_ITERATIONS` changes the calls per round.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use iced_x86::{Decoder, DecoderOptions};
use nvmm_assist::{
    AccessType, BusError, CompareWrite, FetchCache, GuestRam, IoExit, MemExit, MmioBus, Outcome,
    PartialBatch, PortIo, RamStatus, Registers, Segment, SegmentAttributes, SegmentRegister,
    assist_io, assist_mem_cached,
};
use support::memdev::Guest;
use support::{Layout, PageTables, RecordingPorts, TestRam, pte};

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

/// Calls per round; `ASSIST_BENCH_ITERATIONS` overrides it.
fn iterations() -> u32 {
    std::env::var("ASSIST_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

const MMIO: u64 = 0x1000;
const CODE: u64 = 0x2000;
const PT_ROOT: u64 = 0x8_0000;
const RAM_SIZE: usize = 0x10_0000;

/// Interleaved rounds per figure; the median is reported.
const ROUNDS: usize = 15;

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

/// A labelled runner and the calls it makes per round.
struct Timed {
    label: String,
    run: Runner,
    calls: u32,
}

/// ns per call of each runner: after a warm-up, [`ROUNDS`] rounds in which
/// each runner runs its calls in turn; the median round of each is kept.
/// With `ASSIST_BENCH_ONLY` set, runners whose label lacks it are skipped
/// (their figure is NaN).
fn measure(timed: &mut [Timed]) -> Vec<f64> {
    let only = std::env::var("ASSIST_BENCH_ONLY").ok();
    let wanted = |t: &Timed| only.as_deref().is_none_or(|o| t.label.contains(o));
    for t in timed.iter_mut().filter(|t| wanted(t)) {
        (t.run)((t.calls / 10).max(1));
    }
    let mut rounds: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); timed.len()];
    for _ in 0..ROUNDS {
        for (r, t) in rounds.iter_mut().zip(timed.iter_mut()) {
            if wanted(t) {
                r.push((t.run)(t.calls));
            }
        }
    }
    rounds
        .iter_mut()
        .zip(timed.iter())
        .map(|(r, t)| {
            if r.is_empty() {
                return f64::NAN;
            }
            r.sort();
            r[r.len() / 2].as_nanos() as f64 / f64::from(t.calls)
        })
        .collect()
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// A guest CPU mode of the bench, with its state and RAM (page tables and
/// the instruction at CS:RIP = [`CODE`]).
struct ModeSetup {
    name: &'static str,
    /// iced-x86's bitness for the mode.
    bitness: u32,
    regs: Registers,
    mem: Vec<u8>,
    /// Whether ModRM addressing is 16-bit (`[bx]`) rather than `[ebx]`.
    addr16: bool,
}

fn mode_setups() -> Vec<ModeSetup> {
    let vendor = support::TEST_VENDOR;
    let paged = |layout: Layout, regs: &mut Registers| {
        let mut ram = TestRam::new(RAM_SIZE);
        let mut pt = PageTables::new(layout, PT_ROOT);
        for page in 0..128u64 {
            pt.map(&mut ram, page * 4096, page * 4096, 1, pte::PWU);
        }
        regs.cr3 = pt.cr3();
        ram.mem
    };
    let mut out = Vec::new();

    let mut real = Registers::real_mode(vendor);
    real.rip = CODE;
    out.push(ModeSetup {
        name: "real",
        bitness: 16,
        regs: real,
        mem: vec![0; RAM_SIZE],
        addr16: true,
    });

    // 16-bit protected mode (a 286-style kernel or a BIOS thunk): 64 KiB
    // segments at base 0, paging off.
    let mut p16 = Registers::flat_protected32(vendor);
    for (i, s) in p16.segments.iter_mut().enumerate() {
        let code = i == Segment::Cs as usize;
        *s = SegmentRegister {
            selector: if code { 0x08 } else { 0x10 },
            base: 0,
            limit: 0xFFFF,
            attributes: if code {
                SegmentAttributes::code16()
            } else {
                SegmentAttributes::data16()
            },
        };
    }
    p16.rip = CODE;
    out.push(ModeSetup {
        name: "prot16",
        bitness: 16,
        regs: p16,
        mem: vec![0; RAM_SIZE],
        addr16: true,
    });

    // A 32-bit kernel: flat segments, 32-bit paging.
    let mut p32 = Registers::flat_protected32(vendor);
    p32.cr0 |= 1 << 31;
    let mem = paged(Layout::Bits32, &mut p32);
    p32.rip = CODE;
    out.push(ModeSetup {
        name: "prot32",
        bitness: 32,
        regs: p32,
        mem,
        addr16: false,
    });

    let mut compat = Registers::compat_mode(vendor, 0, CODE, 0);
    let mem = paged(Layout::Level4, &mut compat);
    out.push(ModeSetup {
        name: "compat",
        bitness: 32,
        regs: compat,
        mem,
        addr16: false,
    });

    let mut long = Registers::long_mode(vendor, 0, CODE, 0);
    let mem = paged(Layout::Level4, &mut long);
    out.push(ModeSetup {
        name: "64-bit",
        bitness: 64,
        regs: long,
        mem,
        addr16: false,
    });
    out
}

/// The benchmarked forms: (name, bytes with 16-bit addressing `[bx]`,
/// bytes with 32/64-bit addressing `[ebx]`/`[rbx]`). The last two take the
/// general decoder and executors (no fast path).
#[rustfmt::skip]
const FORMS: [(&str, &[u8], &[u8]); 7] = [
    ("mov [m], r", &[0x89, 0x07], &[0x89, 0x03]),
    ("mov r, [m]", &[0x8B, 0x07], &[0x8B, 0x03]),
    ("or [m], imm8", &[0x83, 0x0F, 0x40], &[0x83, 0x0B, 0x40]),
    ("movzx r, byte [m]", &[0x0F, 0xB6, 0x07], &[0x0F, 0xB6, 0x03]),
    ("movsx r, byte [m]", &[0x0F, 0xBE, 0x07], &[0x0F, 0xBE, 0x03]),
    ("xchg [m], r", &[0x87, 0x0F], &[0x87, 0x0B]),
    ("bt [m], r", &[0x0F, 0xA3, 0x07], &[0x0F, 0xA3, 0x03]),
];

/// The full memory assist of `bytes` at CS:RIP = [`CODE`] in `m`'s mode,
/// the access at [`MMIO`] (RBX), with the bytes in the exit or (`fetch`)
/// fetched by the assist.
fn assist_runner(m: &ModeSetup, bytes: &'static [u8], fetch: bool) -> Runner {
    let mut regs = m.regs.clone();
    regs.gprs[3] = MMIO;
    let mut mem = m.mem.clone();
    mem[CODE as usize..CODE as usize + bytes.len()].copy_from_slice(bytes);
    let mut ram = FlatRam { mem };
    let mut dev = Device { reg: 0 };
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Write,
        instruction: if fetch { &[] } else { bytes },
    };
    // The VCPU's fetch cache, as nvmm keeps one per Vcpu (used only when
    // the exit has no bytes).
    let mut cache = FetchCache::new();
    runner(move || {
        regs.rip = CODE;
        regs.gprs[3] = MMIO;
        let r = assist_mem_cached(&mut regs, &mut ram, &mut dev, black_box(&exit), &mut cache);
        assert_eq!(r, Ok(Outcome::Done));
    })
}

fn iced(bitness: u32, bytes: &'static [u8]) -> Runner {
    runner(move || {
        let mut d = Decoder::with_ip(bitness, black_box(bytes), CODE, DecoderOptions::NONE);
        let i = d.decode();
        black_box(i);
    })
}

/// A port device that takes each element as it comes (a UART data register).
#[derive(Default)]
struct SumPort {
    sum: u64,
}

impl PortIo for SumPort {
    fn read(&mut self, _port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        // By size, as a device register file answers.
        let v = (self.sum as u32).to_le_bytes();
        match buf.len() {
            1 => buf[0] = v[0],
            2 => buf.copy_from_slice(&v[..2]),
            4 => buf.copy_from_slice(&v),
            _ => return Err(BusError(1)),
        }
        Ok(())
    }
    fn write(&mut self, _port: u16, data: &[u8]) -> Result<(), BusError> {
        for &b in data {
            self.sum = self.sum.wrapping_add(u64::from(b));
        }
        Ok(())
    }
}

/// A port device that accepts a whole batch in one call (a FIFO).
struct BulkPort {
    fifo: Vec<u8>,
}

impl Default for BulkPort {
    fn default() -> Self {
        BulkPort {
            fifo: Vec::with_capacity(4096),
        }
    }
}

impl PortIo for BulkPort {
    fn read(&mut self, _port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0x5A);
        Ok(())
    }
    fn write(&mut self, _port: u16, data: &[u8]) -> Result<(), BusError> {
        if self.fifo.len() + data.len() > 4096 {
            self.fifo.clear();
        }
        self.fifo.extend_from_slice(data);
        Ok(())
    }
    fn write_batch(&mut self, port: u16, _size: usize, data: &[u8]) -> Result<(), PartialBatch> {
        self.write(port, data)
            .map_err(|error| PartialBatch { done: 0, error })
    }
}

/// Non-string port I/O in 64-bit mode: `out dx, al` or `in al, dx`.
fn io_runner(input: bool) -> Runner {
    let mut regs = Registers::long_mode(support::TEST_VENDOR, PT_ROOT, CODE, 0);
    regs.gprs[2] = 0x3F8;
    let mut ram = FlatRam {
        mem: vec![0; 0x1_0000],
    };
    let mut mmio = Device { reg: 0 };
    let mut ports = SumPort::default();
    let exit = IoExit {
        port: 0x3F8,
        input,
        operand_size: 1,
        address_size: 8,
        rep: false,
        string: false,
        segment: None,
        npc: CODE + 1,
    };
    runner(move || {
        regs.rip = CODE;
        let r = assist_io(&mut regs, &mut ram, &mut mmio, &mut ports, black_box(&exit));
        assert_eq!(r, Ok(Outcome::Done));
    })
}

/// One assist call of a 4 KiB `rep outsb` (page-aligned source, so one
/// batch) to `ports`.
fn rep_outsb_runner<P: PortIo + 'static>(mut ports: P) -> Runner {
    let mut regs = Registers::long_mode(support::TEST_VENDOR, 0, CODE, 0);
    let mem = mode_setups().pop().map(|m| m.mem).unwrap_or_default();
    regs.cr3 = PT_ROOT;
    let mut ram = FlatRam { mem };
    let mut mmio = Device { reg: 0 };
    let exit = IoExit {
        port: 0x3F8,
        input: false,
        operand_size: 1,
        address_size: 8,
        rep: true,
        string: true,
        segment: Some(Segment::Ds),
        npc: CODE + 2,
    };
    runner(move || {
        regs.rip = CODE;
        regs.gprs[6] = 0x4000; // RSI
        regs.gprs[1] = 4096; // RCX
        regs.gprs[2] = 0x3F8; // DX
        let r = assist_io(&mut regs, &mut ram, &mut mmio, &mut ports, black_box(&exit));
        assert_eq!(r, Ok(Outcome::Done));
    })
}

/// A framebuffer page at [`MMIO`]: plain memory behind the MMIO bus.
struct Framebuffer {
    mem: Vec<u8>,
    /// Whether it takes whole batches (`MmioBus::write_batch`).
    batches: bool,
}

impl MmioBus for Framebuffer {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        let at = (gpa & 0xFFF) as usize;
        let src = self.mem.get(at..at + buf.len()).ok_or(BusError(1))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        let at = (gpa & 0xFFF) as usize;
        let dst = self.mem.get_mut(at..at + data.len()).ok_or(BusError(1))?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn write_batch(
        &mut self,
        gpa: u64,
        size: usize,
        descending: bool,
        data: &[u8],
    ) -> Option<Result<(), PartialBatch>> {
        if !self.batches || descending {
            return None;
        }
        let _ = size;
        Some(
            self.write(gpa, data)
                .map_err(|error| PartialBatch { done: 0, error }),
        )
    }
}

/// One assist call of a 4 KiB `rep stosd` (1024 elements) to a framebuffer.
fn rep_stosd_runner(batches: bool) -> Runner {
    let mut regs = Registers::long_mode(support::TEST_VENDOR, PT_ROOT, CODE, 0);
    let mut ram = FlatRam {
        mem: vec![0; 0x1_0000],
    };
    let mut fb = Framebuffer {
        mem: vec![0; 4096],
        batches,
    };
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Write,
        instruction: &[0xF3, 0xAB],
    };
    let mut cache = FetchCache::new();
    runner(move || {
        regs.rip = CODE;
        regs.gprs[7] = MMIO; // RDI
        regs.gprs[1] = 1024; // RCX
        regs.gprs[0] = 0x00FF_00FF; // EAX
        let r = assist_mem_cached(&mut regs, &mut ram, &mut fb, black_box(&exit), &mut cache);
        assert_eq!(r, Ok(Outcome::Done));
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
    let n = iterations().max(1);
    let modes = mode_setups();
    let mut timed: Vec<Timed> = Vec::new();
    let mut push = |label: String, run: Runner, calls: u32| timed.push(Timed { label, run, calls });
    for m in &modes {
        for &(form, b16, b32) in &FORMS {
            let bytes = if m.addr16 { b16 } else { b32 };
            push(
                format!("{} {form} assist", m.name),
                assist_runner(m, bytes, false),
                n,
            );
            push(
                format!("{} {form} fetch", m.name),
                assist_runner(m, bytes, true),
                n,
            );
            push(format!("{} {form} iced", m.name), iced(m.bitness, bytes), n);
        }
    }
    push("out dx, al".into(), io_runner(false), n);
    push("in al, dx".into(), io_runner(true), n);
    // A 4 KiB batch takes microseconds: fewer calls per round.
    let big = (n / 500).max(1);
    push(
        "rep outsb per-element".into(),
        rep_outsb_runner(SumPort::default()),
        big,
    );
    push(
        "rep outsb bulk".into(),
        rep_outsb_runner(BulkPort::default()),
        big,
    );
    push("rep stosd per-element".into(), rep_stosd_runner(false), big);
    push("rep stosd batch".into(), rep_stosd_runner(true), big);
    let t = measure(&mut timed);

    println!("nvmm-assist, ns per call (median of {ROUNDS} interleaved rounds of {n} calls):");
    println!(
        "{:<8} {:<19} {:>10} {:>12} {:>8} {:>12} {:>8}",
        "mode", "form", "assist", "iced decode", "ratio", "assist+fetch", "fetch/"
    );
    let mut worst_ratio = f64::INFINITY;
    let mut worst_fetch: f64 = 0.0;
    let mut mov_store_64 = f64::NAN;
    let mut it = t.iter();
    for m in &modes {
        let mut mode_ratio = f64::INFINITY;
        let mut mode_fetch: f64 = 0.0;
        for &(form, _, _) in &FORMS {
            let (a, f, i) = (
                *it.next().unwrap_or(&f64::NAN),
                *it.next().unwrap_or(&f64::NAN),
                *it.next().unwrap_or(&f64::NAN),
            );
            if m.name == "64-bit" && form == "mov [m], r" {
                mov_store_64 = a;
            }
            let ratio = i / a;
            let fetch = f / a;
            mode_ratio = mode_ratio.min(ratio);
            mode_fetch = mode_fetch.max(fetch);
            println!(
                "{:<8} {form:<19} {a:>10.1} {i:>12.1} {ratio:>7.2}x {f:>12.1} {fetch:>7.2}x",
                m.name
            );
        }
        println!(
            "  {}: assist >= 2x faster than iced decode: worst {mode_ratio:.2}x ({}); \
             fetch <= 1.5x of with-bytes: worst {mode_fetch:.2}x ({})",
            m.name,
            verdict(mode_ratio >= 2.0),
            verdict(mode_fetch <= 1.5)
        );
        worst_ratio = worst_ratio.min(mode_ratio);
        worst_fetch = worst_fetch.max(mode_fetch);
    }
    println!(
        "target: full assist >= 2x faster than iced-x86 decode alone, every mode: worst ratio {worst_ratio:.2}x ({})",
        verdict(worst_ratio >= 2.0)
    );
    println!(
        "target: assist with fetch <= 1.5x of with bytes, every mode: worst {worst_fetch:.2}x ({})",
        verdict(worst_fetch <= 1.5)
    );

    println!();
    let out = *it.next().unwrap_or(&f64::NAN);
    let inp = *it.next().unwrap_or(&f64::NAN);
    println!("port I/O (64-bit), ns per call; 64-bit `mov [m], r` assist {mov_store_64:.1} ns:");
    println!(
        "{:<26} {out:>8.1}  ({:.2}x faster)",
        "out dx, al",
        mov_store_64 / out
    );
    println!(
        "{:<26} {inp:>8.1}  ({:.2}x faster)",
        "in al, dx",
        mov_store_64 / inp
    );
    let io_ratio = (mov_store_64 / out).min(mov_store_64 / inp);
    println!(
        "target: non-string IN/OUT >= 3x faster than the mov assist: worst {io_ratio:.2}x ({})",
        verdict(io_ratio >= 3.0)
    );

    println!();
    let per_elem = *it.next().unwrap_or(&f64::NAN);
    let bulk = *it.next().unwrap_or(&f64::NAN);
    println!("4 KiB rep outsb in one assist call, ns:");
    println!("{:<26} {per_elem:>10.0}", "per-element device");
    println!("{:<26} {bulk:>10.0}", "bulk device");
    println!(
        "target: 4 KiB rep outsb to a bulk device <= 2000 ns: {bulk:.0} ns ({})",
        verdict(bulk <= 2000.0)
    );

    println!();
    let fb_elem = *it.next().unwrap_or(&f64::NAN);
    let fb_batch = *it.next().unwrap_or(&f64::NAN);
    println!("4 KiB rep stosd to a framebuffer (MMIO) in one assist call, ns:");
    println!("{:<26} {fb_elem:>10.0}", "per-element device");
    println!("{:<26} {fb_batch:>10.0}", "batch device");

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
            verdict(calls <= 4)
        );
    }
}
