//! The host CPU as the assist's oracle: every generated instruction runs
//! natively on a real buffer and through `assist_mem` with the same
//! registers and the buffer behind the MMIO bus; registers, RIP, flags,
//! memory and the device access sequence must agree.
//!
//! Undefined flags (masked, counted and printed, never failing):
//! - AF after AND/OR/XOR/TEST (SDM: "AF is undefined");
//! - OF, SF, AF, PF after BT/BTS/BTR/BTC (SDM: "The OF, SF, AF, and PF flags
//!   are undefined"); ZF is defined as unchanged on current CPUs and is
//!   compared.
//!
//! The assist runs as this CPU's vendor (CPUID leaf 0), so the comparison
//! holds on Intel and AMD hosts alike; the vendor-dependent rules, and what
//! was measured where, are listed in `nvmm_assist::vendor`.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

/// Prints a figure line past libtest's output capture (straight to the
/// process's stdout), so that `cargo test` and `cargo xtask ci` show the
/// oracle's case counts without `--nocapture`.
macro_rules! figure {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

use crate::host_vendor;
use crate::oracle_support::{cases, encode, host, mock, native};
use crate::support::dyn_assist::assist_mem;

use mock::assist;

use encode::Rng;
use native::{Context, Native};

/// The stub itself: a NOP keeps every register; ADD's flags and result
/// match a Rust computation; `mov al, [m]` keeps RAX[63:8]; the XMM
/// registers round-trip.
#[test]
fn native_stub_self_check() {
    let mut n = Native::new();
    let mut rng = Rng(0x5eed);
    for _ in 0..1000 {
        let mut c = Context::default();
        for g in c.gprs.iter_mut() {
            *g = rng.next();
        }
        for x in c.xmm.iter_mut() {
            *x = (rng.next() as u128) << 64 | rng.next() as u128;
        }
        c.rflags = 2 | (rng.next() & 0x8d5);
        let after = n.run(&[0x90], &c);
        assert_eq!(after.gprs, c.gprs);
        assert_eq!(after.xmm, c.xmm);
        assert_eq!(after.rflags & 0xcd5, c.rflags & 0xcd5);
        // add rax, rbx
        let after = n.run(&[0x48, 0x01, 0xd8], &c);
        let (a, b) = (c.gprs[0], c.gprs[3]);
        let r = a.wrapping_add(b);
        assert_eq!(after.gprs[0], r);
        let cf = (r < a) as u64;
        let zf = (r == 0) as u64;
        let sf = r >> 63;
        let of = ((!(a ^ b) & (a ^ r)) >> 63) & 1;
        let af = ((a ^ b ^ r) >> 4) & 1;
        let pf = ((r as u8).count_ones() & 1 == 0) as u64;
        let want = cf | pf << 2 | af << 4 | zf << 6 | sf << 7 | of << 11;
        assert_eq!(after.rflags & 0x8d5, want, "add flags");
    }
    // mov al, [rdi]
    let addr = n.mmio_addr();
    n.data()[native::STACK_LEN + native::RAMWIN_LEN] = 0xa5;
    let mut c = Context::default();
    c.gprs[0] = 0x1122_3344_5566_7788;
    c.gprs[7] = addr;
    c.gprs[4] = n.stack_addr() + 4096;
    let after = n.run(&[0x8a, 0x07], &c);
    assert_eq!(after.gprs[0], 0x1122_3344_5566_77a5);
}

/// The vendor table's REP zero-count row, measured on this CPU: every
/// string instruction with a 32-bit address size, ECX = 0 and the upper
/// halves of RCX, RSI and RDI set, run natively, must leave the registers
/// as the row says for this CPU's vendor (read by CPUID): Intel writes
/// ECX, and ESI/EDI for MOVS, EDI for STOS, as 32-bit registers; AMD
/// writes nothing.
#[test]
fn host_cpu_follows_its_vendor_row_for_zero_count_rep() {
    let vendor = host_vendor::host_vendor();
    let mut n = Native::new();
    let hi = 0xF7BE_B5AB_0000_0000u64;
    // (bytes, Intel writes RSI, Intel writes RDI)
    let cases: [(&[u8], bool, bool); 12] = [
        (&[0x67, 0xF3, 0xA4], true, true),         // rep movsb
        (&[0x67, 0xF3, 0x48, 0xA5], true, true),   // rep movsq
        (&[0x67, 0xF3, 0xAA], false, true),        // rep stosb
        (&[0x66, 0x67, 0xF3, 0xAB], false, true),  // rep stosw
        (&[0x67, 0xF3, 0xAC], false, false),       // rep lodsb
        (&[0x67, 0xF3, 0x48, 0xAD], false, false), // rep lodsq
        (&[0x67, 0xF3, 0xA6], false, false),       // repe cmpsb
        (&[0x67, 0xF2, 0xA7], false, false),       // repne cmpsd
        (&[0x67, 0xF3, 0xAE], false, false),       // repe scasb
        (&[0x67, 0xF2, 0x66, 0xAF], false, false), // repne scasw
        (&[0x67, 0x67, 0x67, 0xF2, 0xF2, 0xA6], false, false),
        (&[0x67, 0xF2, 0x48, 0xAB], false, true), // repne stosq
    ];
    for (bytes, w_rsi, w_rdi) in cases {
        for df in [0, encode::DF] {
            let mut c = Context::default();
            c.gprs[1] = hi;
            c.gprs[6] = 0x1234_5678_0000_1000;
            c.gprs[7] = 0x9ABC_DEF0_0000_2000;
            c.gprs[4] = n.stack_addr() + 4096;
            c.rflags = 2 | df;
            let after = n.run(bytes, &c);
            let (rcx, rsi, rdi) = match vendor {
                nvmm_assist::Vendor::Intel => {
                    let low = |v: u64, w: bool| if w { v & 0xFFFF_FFFF } else { v };
                    (0, low(c.gprs[6], w_rsi), low(c.gprs[7], w_rdi))
                }
                nvmm_assist::Vendor::Amd => (c.gprs[1], c.gprs[6], c.gprs[7]),
            };
            assert_eq!(
                (after.gprs[1], after.gprs[6], after.gprs[7]),
                (rcx, rsi, rdi),
                "{vendor} CPU, {bytes:02x?}, DF {df:#x}: RCX, RSI, RDI"
            );
        }
    }
    figure!("zero-count REP: this {vendor} CPU follows the {vendor} row of the vendor table");
}

/// The generator and the stub together: every generated case runs
/// natively and writes only where its expected accesses say.
#[test]
fn generator_targets_the_operand() {
    let mut o = host::HostOracle::new();
    let forms = encode::forms();
    let mut rng = Rng(0x0ddba11);
    let mut n = 0;
    for _ in 0..20 {
        for f in &forms {
            if let Some(c) = cases::modrm_case(&mut rng, f, &o.layout) {
                o.run_native(&c).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        for _ in 0..20 {
            if let Some(c) = cases::moffs_case(&mut rng, &o.layout) {
                o.run_native(&c).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
            if let Some(c) = cases::string_case(&mut rng, &o.layout) {
                o.run_native(&c).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
    }
    println!("generator check: {n} native cases wrote only their operands");
    assert!(n > 2000);
}

/// A known-open mismatch: the title of its issue and which cases it covers.
type KnownOpen = (&'static str, fn(&cases::Case) -> bool);

/// Known-open emulator bugs (each filed as a project issue with a
/// reproducer). Matching cases are compared and counted as
/// known-open mismatches in the printed figures, not asserted; a matching
/// case that now passes is counted as a pass. Remove an entry once fixed.
const KNOWN_OPEN: &[KnownOpen] = &[
    // Empty: the one bug this suite found (a32 REP with ECX=0 kept
    // RCX[63:32]) is fixed and its cases are asserted like every other.
];

/// Cases per form (and per moffs/string round); fewer in debug builds.
fn rounds() -> usize {
    if let Some(n) = std::env::var("ORACLE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if cfg!(debug_assertions) { 30 } else { 150 }
}

#[test]
fn host_cpu_oracle() {
    let seed = std::env::var("ORACLE_SEED")
        .ok()
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x0a11_ce5e_ed00_0001);
    let mut rng = Rng(seed);
    let mut o = host::HostOracle::new();
    let forms = encode::forms();
    let mut per_group: std::collections::BTreeMap<&str, (u64, u64, u64, std::time::Duration)> =
        Default::default();
    let mut undefined_seen: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut known_open = 0u64;
    let split_cases = std::cell::Cell::new(0u64);
    let mut known_titles: std::collections::BTreeMap<&str, u64> = Default::default();
    // ORACLE_KEEP_GOING=1 prints every mismatch instead of stopping at the
    // first (still failing at the end).
    let keep_going = std::env::var_os("ORACLE_KEEP_GOING").is_some();
    let mut unknown = 0u64;
    let first_failure: std::cell::RefCell<Option<String>> = Default::default();
    let mut check = |o: &mut host::HostOracle, c: cases::Case| {
        if c.name.ends_with("ram|mmio") {
            split_cases.set(split_cases.get() + 1);
        }
        let t0 = std::time::Instant::now();
        let verdict = o.check(&c, &mut assist);
        let e = per_group.entry(c.group).or_default();
        e.3 += t0.elapsed();
        match verdict {
            Err(harness) => panic!("harness: {harness}"),
            Ok(host::Verdict::Match { undefined }) => {
                e.0 += 1;
                if undefined != 0 {
                    e.2 += 1;
                    *undefined_seen.entry(c.group).or_default() |= undefined;
                }
            }
            Ok(host::Verdict::Mismatch(r)) => {
                e.0 += 1;
                e.1 += 1;
                if let Some((bug, _)) = KNOWN_OPEN.iter().find(|k| (k.1)(&c)) {
                    known_open += 1;
                    *known_titles.entry(*bug).or_default() += 1;
                } else if keep_going {
                    unknown += 1;
                    println!("MISMATCH\n{r}");
                } else if first_failure.borrow().is_none() {
                    *first_failure.borrow_mut() = Some(r);
                }
            }
        }
    };
    for _ in 0..rounds() {
        for f in &forms {
            for _ in 0..4 {
                if let Some(c) = cases::modrm_case(&mut rng, f, &o.layout) {
                    check(&mut o, c);
                }
            }
        }
        for _ in 0..40 {
            if let Some(c) = cases::moffs_case(&mut rng, &o.layout) {
                check(&mut o, c);
            }
            if let Some(c) = cases::string_case(&mut rng, &o.layout) {
                check(&mut o, c);
            }
        }
        if first_failure.borrow().is_some() {
            break;
        }
    }
    let total: u64 = per_group.values().map(|v| v.0).sum();
    let mism: u64 = per_group.values().map(|v| v.1).sum();
    figure!(
        "host-cpu oracle: {total} cases compared, {mism} mismatches ({known_open} of them known-open, each a filed issue), seed {seed:#x}"
    );
    for (g, (n, m, u, t)) in &per_group {
        figure!(
            "  {g:<8} {n:>6} cases, {m} mismatches, {u} with masked undefined-flag differences ({:.0} us/case)",
            t.as_secs_f64() * 1e6 / (*n).max(1) as f64
        );
    }
    figure!(
        "  of which {} with an operand split between RAM and MMIO",
        split_cases.get()
    );
    for (t, n) in &known_titles {
        figure!("  known-open (filed issue): {n} cases: {t}");
    }
    for (g, f) in &undefined_seen {
        figure!("  masked undefined flags where the assist differs from this CPU: {g}: {f:#x}");
    }
    assert_eq!(
        unknown, 0,
        "host-cpu oracle: {unknown} mismatches (printed above)"
    );
    if let Some(r) = first_failure.into_inner() {
        panic!("host-cpu oracle mismatch (reproduce with ORACLE_SEED={seed:x}):\n{r}");
    }
}

/// The oracle can fail: an assist that is wrong in one flag, or that
/// writes one byte wrong, is caught (and an undefined flag is only
/// counted).
#[test]
fn oracle_detects_a_broken_assist() {
    let mut o = host::HostOracle::new();
    let forms = encode::forms();
    let mut rng = Rng(0xbad5eed);
    // AF inverted after every instruction.
    let mut af_broken = |st: &mut nvmm_assist::Registers,
                         ram: &mut mock::SparseRam,
                         mmio: &mut mock::RecordingMmio,
                         gpa: u64,
                         write: bool,
                         bytes: &[u8]| {
        let r = assist(st, ram, mmio, gpa, write, bytes);
        st.rflags ^= encode::AF;
        r
    };
    let (mut add_caught, mut add_total, mut xor_masked) = (0, 0, 0);
    for f in forms.iter().filter(|f| f.name == "add" || f.name == "xor") {
        for _ in 0..20 {
            let Some(c) = cases::modrm_case(&mut rng, f, &o.layout) else {
                continue;
            };
            match o.check(&c, &mut af_broken).expect("harness") {
                host::Verdict::Mismatch(_) if f.name == "add" => add_caught += 1,
                host::Verdict::Match { undefined } if f.name == "xor" && undefined != 0 => {
                    xor_masked += 1
                }
                _ => {}
            }
            add_total += (f.name == "add") as u32;
        }
    }
    assert_eq!(
        add_caught, add_total,
        "every ADD with a wrong AF is a mismatch"
    );
    assert!(xor_masked > 0, "XOR's undefined AF is masked and counted");
    // The last byte of every MMIO write corrupted.
    struct Corrupt<'a>(&'a mut mock::RecordingMmio);
    impl nvmm_assist::MmioBus for Corrupt<'_> {
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), nvmm_assist::BusError> {
            self.0.read(gpa, buf)
        }
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), nvmm_assist::BusError> {
            let mut d = data.to_vec();
            if let Some(b) = d.last_mut() {
                *b ^= 0x40;
            }
            self.0.write(gpa, &d)
        }
    }
    let mut byte_broken = |st: &mut nvmm_assist::Registers,
                           ram: &mut mock::SparseRam,
                           mmio: &mut mock::RecordingMmio,
                           gpa: u64,
                           write: bool,
                           bytes: &[u8]| {
        let exit = nvmm_assist::MemExit {
            gpa,
            access: if write {
                nvmm_assist::AccessType::Write
            } else {
                nvmm_assist::AccessType::Read
            },
            instruction: bytes,
        };
        assist_mem(st, ram, &mut Corrupt(mmio), &exit)
    };
    let mov = forms
        .iter()
        .find(|f| f.name == "mov m,r")
        .expect("mov form");
    for _ in 0..20 {
        let Some(c) = cases::modrm_case(&mut rng, mov, &o.layout) else {
            continue;
        };
        assert!(matches!(
            o.check(&c, &mut byte_broken).expect("harness"),
            host::Verdict::Mismatch(_)
        ));
    }
}
