//! Benchmark of the memory and I/O assists (issue 13's targets).
//!
//! Prints, as medians of interleaved rounds (every runner runs once per
//! round, so a noisy period on a shared machine hurts all figures alike):
//! - per CPU mode (real, 16- and 32-bit protected, compatibility, 64-bit)
//!   and per form, for a representative form of every instruction family
//!   the memory assist emulates (the table in `forms.rs`: MOV including
//!   moffs and immediates, MOVZX/MOVSX/MOVSXD, the ALU group, TEST,
//!   INC/DEC/NEG/NOT, XCHG, XADD, CMPXCHG/8B/16B, the BT family, SETcc,
//!   CMOVcc, PUSH/POP m, single MOVS/STOS/LODS/CMPS/SCAS, MOVNTI, the SSE
//!   moves incl. the non-temporal stores, LOCK forms; REX forms in 64-bit
//!   mode only; every mnemonic of the memory assist): nanoseconds per
//!   full assist (decode + emulate + device callback + register commit)
//!   with the instruction bytes in the exit (SVM DecodeAssists), iced-x86's
//!   decode alone of the same bytes (a fresh `Decoder` per instruction, as
//!   a VMM does per exit) and their ratio, and the assist with the bytes
//!   fetched at CS:RIP through segmentation and the page walker (VMX: no
//!   bytes in the exit; with the VCPU's `FetchCache`, re-validated on every
//!   use) and its ratio to the assist with bytes;
//! - non-string `out dx, al` / `in al, dx` against the `mov` store assist;
//! - one assist call of a 4 KiB `rep outsb` to a per-element device and to
//!   a device that takes the batch in one call, and the same for a 4 KiB
//!   `rep stosd` to a framebuffer behind the MMIO bus;
//! - the number of assist calls (VM exits) a 4 KiB `rep movsb` to MMIO, a
//!   4 KiB `rep stosd` to MMIO and a 4 KiB `rep outsb` take (libnvmm: 4096,
//!   1024 and 128).
//!
//! Before any timing, every memory case is checked once (`memory::check`):
//! it must decode (iced-x86) as the intended instruction, complete with
//! `Done`, advance RIP by its length and make exactly the expected device
//! accesses, with the bytes and fetched; a broken row panics instead of
//! timing an error path. The table must also hold a form of every
//! mnemonic the memory assist emulates (`forms::EMULATED`), as
//! nvmm-assist's decoder names them.
//!
//! Each target line ends in `met` or `NOT met`.
//!
//! Run with `cargo bench -p nvmm-assist --bench assist` (or `cargo xtask
//! bench`). `ASSIST_BENCH_ONLY=<text>` times only the runners whose label
//! (`<mode> <form> assist|fetch|iced`, `out dx, al`, `rep outsb bulk`, ...)
//! contains `<text>` (for profiling one under callgrind), and
//! `ASSIST_BENCH_ITERATIONS` changes the calls per round.

#[path = "../../tests/support/mod.rs"]
mod support;

mod devices;
mod forms;
mod io;
mod memory;
mod modes;
mod timing;

use std::collections::HashSet;
use std::time::Instant;

use devices::{BulkPort, SumPort};
use forms::FORMS;
use memory::Case;
use timing::{ROUNDS, Runner, Timed, measure, verdict};

/// GPA (and linear address) of the MMIO page: the device's register.
const MMIO: u64 = 0x1000;
/// GPA of the code page: CS:RIP of every case.
const CODE: u64 = 0x2000;
/// A RAM operand of the string forms (and the `rep outsb` source).
const RAM_OPERAND: u64 = 0x4000;
/// The initial stack pointer of PUSH m / POP m, in RAM.
const STACK: u64 = 0x6000;
/// The guest page tables of the paged modes (above the mapped pages).
const PT_ROOT: u64 = 0x2_0000;
/// Guest RAM: the mapped pages and the page tables.
const RAM_SIZE: usize = 0x3_0000;

/// The figures of one row, in ns per call.
struct Row {
    mode: &'static str,
    form: &'static str,
    assist: f64,
    iced: f64,
    fetch: f64,
}

impl Row {
    /// iced-x86 decode time over assist time (target: >= 2).
    fn ratio(&self) -> f64 {
        self.iced / self.assist
    }
    /// Assist-with-fetch time over assist-with-bytes time (target: <= 1.5).
    fn fetch_ratio(&self) -> f64 {
        self.fetch / self.assist
    }
}

/// The worst row of `rows` by `key` (the one `better` does not prefer),
/// skipping NaN figures (runners left out by `ASSIST_BENCH_ONLY`).
fn worst<'a>(
    rows: impl Iterator<Item = &'a Row>,
    key: impl Fn(&Row) -> f64,
    better: impl Fn(f64, f64) -> bool,
) -> Option<(&'a Row, f64)> {
    rows.map(|r| (r, key(r)))
        .filter(|(_, v)| !v.is_nan())
        .fold(None, |acc, (r, v)| match acc {
            Some((_, w)) if better(v, w) || v == w => acc,
            _ => Some((r, v)),
        })
}

/// One summary line pair (ratio and fetch targets) over `rows`.
fn summarize<'a>(scope: &str, rows: impl Iterator<Item = &'a Row> + Clone, with_mode: bool) {
    let name = |r: &Row| {
        if with_mode {
            format!("{} {}", r.mode, r.form)
        } else {
            r.form.to_string()
        }
    };
    match worst(rows.clone(), Row::ratio, |a, b| a > b) {
        Some((r, v)) => println!(
            "{scope}: full assist >= 2x faster than iced-x86 decode alone: worst {v:.2}x ({}) ({})",
            name(r),
            verdict(v >= 2.0)
        ),
        None => println!("{scope}: full assist >= 2x faster than iced-x86 decode alone: not run"),
    }
    match worst(rows, Row::fetch_ratio, |a, b| a < b) {
        Some((r, v)) => println!(
            "{scope}: assist with fetch <= 1.5x of with bytes: worst {v:.2}x ({}) ({})",
            name(r),
            verdict(v <= 1.5)
        ),
        None => println!("{scope}: assist with fetch <= 1.5x of with bytes: not run"),
    }
}

fn main() {
    let started = Instant::now();
    let n = timing::iterations();
    let modes = modes::mode_setups();
    let mut timed: Vec<Timed> = Vec::new();
    let mut push = |label: String, run: Runner, calls: u32| {
        timed.push(Timed { label, run, calls });
        timed.len() - 1
    };

    // Every form in every mode where it exists: checked, then three
    // runners (assist with bytes, assist fetching, iced decode).
    let mut cases = Vec::new();
    let mut covered = HashSet::new();
    for m in &modes {
        for form in FORMS {
            let Some(case) = Case::new(m, form) else {
                continue;
            };
            covered.insert(memory::check(m, form, &case));
            let bytes = case.bytes();
            let label = format!("{} {}", m.name, form.name);
            let first = push(
                format!("{label} assist"),
                memory::assist_runner(case.clone(), false),
                n,
            );
            push(
                format!("{label} fetch"),
                memory::assist_runner(case, true),
                n,
            );
            push(
                format!("{label} iced"),
                memory::iced_runner(m.bitness, bytes),
                n,
            );
            cases.push((m.name, form.name, first));
        }
    }
    let missing: Vec<_> = forms::EMULATED
        .iter()
        .filter(|e| !covered.contains(*e))
        .collect();
    assert!(missing.is_empty(), "no form of {missing:?} in the table");
    let out_at = push("out dx, al".into(), io::io_runner(false), n);
    push("in al, dx".into(), io::io_runner(true), n);
    // A 4 KiB batch takes 0.3-10 us: fewer calls per round (200 by
    // default, as many as before the default iterations went down).
    let big = (n / 100).max(1);
    let outsb_at = push(
        "rep outsb per-element".into(),
        io::rep_outsb_runner(SumPort::default()),
        big,
    );
    push(
        "rep outsb bulk".into(),
        io::rep_outsb_runner(BulkPort::default()),
        big,
    );
    let stosd_at = push(
        "rep stosd per-element".into(),
        io::rep_stosd_runner(false),
        big,
    );
    push("rep stosd batch".into(), io::rep_stosd_runner(true), big);
    let runners = timed.len();
    let t = measure(&mut timed);

    let rows: Vec<Row> = cases
        .iter()
        .map(|&(mode, form, at)| Row {
            mode,
            form,
            assist: t[at],
            fetch: t[at + 1],
            iced: t[at + 2],
        })
        .collect();

    println!(
        "nvmm-assist, ns per call (median of {ROUNDS} interleaved rounds of {n} calls; \
         {} forms covering all {} mnemonics of the memory assist, {} rows, {runners} runners):",
        FORMS.len(),
        forms::EMULATED.len(),
        rows.len()
    );
    println!(
        "{:<8} {:<21} {:>8} {:>12} {:>8} {:>12} {:>8}",
        "mode", "form", "assist", "iced decode", "ratio", "assist+fetch", "fetch/"
    );
    for m in &modes {
        let mode_rows = || rows.iter().filter(|r| r.mode == m.name);
        for r in mode_rows() {
            println!(
                "{:<8} {:<21} {:>8.1} {:>12.1} {:>7.2}x {:>12.1} {:>7.2}x",
                r.mode,
                r.form,
                r.assist,
                r.iced,
                r.ratio(),
                r.fetch,
                r.fetch_ratio()
            );
        }
        summarize(&format!("  {}", m.name), mode_rows(), false);
    }
    summarize("target, every form in every mode", rows.iter(), true);

    println!();
    let mov_store_64 = rows
        .iter()
        .find(|r| r.mode == "64-bit" && r.form == FORMS[0].name)
        .map_or(f64::NAN, |r| r.assist);
    let (out, inp) = (t[out_at], t[out_at + 1]);
    println!(
        "port I/O (64-bit), ns per call; 64-bit `{}` assist {mov_store_64:.1} ns:",
        FORMS[0].name
    );
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
    let (per_elem, bulk) = (t[outsb_at], t[outsb_at + 1]);
    println!("4 KiB rep outsb in one assist call, ns:");
    println!("{:<26} {per_elem:>10.0}", "per-element device");
    println!("{:<26} {bulk:>10.0}", "bulk device");
    println!(
        "target: 4 KiB rep outsb to a bulk device <= 2000 ns: {bulk:.0} ns ({})",
        verdict(bulk <= 2000.0)
    );

    println!();
    let (fb_elem, fb_batch) = (t[stosd_at], t[stosd_at + 1]);
    println!("4 KiB rep stosd to a framebuffer (MMIO) in one assist call, ns:");
    println!("{:<26} {fb_elem:>10.0}", "per-element device");
    println!("{:<26} {fb_batch:>10.0}", "batch device");

    println!();
    println!("assist calls (VM exits) for 4 KiB string operations:");
    for (name, calls, libnvmm) in io::exit_counts() {
        println!(
            "{name:<26} {calls:>6} calls (libnvmm {libnvmm}; target <= 4: {})",
            verdict(calls <= 4)
        );
    }
    println!();
    println!(
        "bench time: {:.1} s ({n} calls per round, {ROUNDS} rounds)",
        started.elapsed().as_secs_f64()
    );
}
