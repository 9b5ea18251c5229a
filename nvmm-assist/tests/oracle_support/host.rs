//! The host-CPU oracle's runner: one case natively, the same case through
//! the assist, and the comparison.
#![allow(dead_code)]

use super::cases::{Case, Layout};
use super::encode::{DF, Expect, STATUS};
use super::mock::{self, Access, RecordingMmio, SparseRam};
use super::native::{Context, MMIO_LEN, Native, RAMWIN_LEN, STACK_LEN};
use nvmm_assist::{Error, Outcome, Registers};

/// The assist under test: state, RAM, MMIO, exit GPA, exit is a write,
/// instruction bytes.
pub type AssistFn<'a> = dyn FnMut(
        &mut Registers,
        &mut SparseRam,
        &mut RecordingMmio,
        u64,
        bool,
        &[u8],
    ) -> Result<Outcome, Error>
    + 'a;

/// The most assist calls one instruction may take (REP batches).
const MAX_CALLS: usize = 20_000;

/// What one case produced.
pub enum Verdict {
    /// Everything matched; `undefined` holds the undefined flags on which
    /// the assist differed from this CPU (masked).
    Match { undefined: u64 },
    /// A mismatch, with the reproducer.
    Mismatch(String),
}

pub struct HostOracle {
    pub native: Native,
    pub layout: Layout,
    base_ram: SparseRam,
    /// The data area as the next case finds it.
    data: Vec<u8>,
    pub fs_base: u64,
    pub gs_base: u64,
    cr3: u64,
    /// Cases checked so far: every fourth gives the assist no instruction
    /// bytes, so that it fetches them through CS and the page walker.
    checked: u64,
}

fn fs_gs() -> (u64, u64) {
    let mut fs = 0u64;
    let mut gs = 0u64;
    // SAFETY: ARCH_GET_FS/GS store one u64 through the valid pointers.
    unsafe {
        libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut fs as *mut u64);
        libc::syscall(libc::SYS_arch_prctl, 0x1004, &mut gs as *mut u64);
    }
    (fs, gs)
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits accesses at 4 KiB boundaries, as the bus contract requires.
fn split(e: &[Expect]) -> Vec<(u64, u64, bool)> {
    let mut v = vec![];
    for x in e {
        let mut a = x.addr;
        let end = x.addr + x.len;
        while a < end {
            let n = (end - a).min(4096 - (a & 4095));
            v.push((a, n, x.write));
            a += n;
        }
    }
    v
}

fn bytes_of(e: impl Iterator<Item = (u64, u64, bool)>, write: bool) -> Vec<u64> {
    let mut v: Vec<u64> = e
        .filter(|x| x.2 == write)
        .flat_map(|x| x.0..x.0 + x.1)
        .collect();
    v.sort_unstable();
    v
}

impl HostOracle {
    pub fn new() -> HostOracle {
        let mut native = Native::new();
        let (fs_base, gs_base) = fs_gs();
        let layout = Layout {
            insn: native.insn_addr(),
            stack: native.stack_addr(),
            ramwin: native.ramwin_addr(),
            mmio: native.mmio_addr(),
            fs_base,
            gs_base,
        };
        let mut ram = SparseRam::default();
        let code_page = layout.insn & !4095;
        let cr3 = mock::identity_tables(
            &mut ram,
            &[
                (code_page, 8192),
                (
                    native.data_addr(),
                    (STACK_LEN + RAMWIN_LEN + MMIO_LEN) as u64,
                ),
            ],
        );
        ram.add(code_page, 8192);
        ram.add(layout.stack, STACK_LEN as u64);
        ram.add(layout.ramwin, RAMWIN_LEN as u64);
        let mut seed = 0x1234_5678_9abc_def1u64;
        let data: Vec<u8> = (0..native.data().len())
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        HostOracle {
            native,
            layout,
            base_ram: ram,
            data,
            fs_base,
            gs_base,
            cr3,
            checked: 0,
        }
    }

    fn off(&self, addr: u64) -> usize {
        (addr - self.native.data_addr()) as usize
    }

    /// Runs `case` natively only: returns the data area before and after
    /// and the context after. Also checks that no byte outside the
    /// expected writes (and the stack) changed, which proves the generator
    /// aimed the operand where it meant to.
    pub fn run_native(&mut self, case: &Case) -> Result<(Vec<u8>, Vec<u8>, Context), String> {
        let mut before = self.data.clone();
        for (a, bytes) in &case.patch {
            let o = self.off(*a);
            before[o..o + bytes.len()].copy_from_slice(bytes);
        }
        self.native.data().copy_from_slice(&before);
        if std::env::var_os("ORACLE_TRACE").is_some() {
            eprintln!("native: {} [{}]", case.name, hex(&case.bytes));
        }
        let after_ctx = self.native.run(&case.bytes, &case.ctx);
        let after = self.native.data().to_vec();
        self.data = after.clone();
        // Targeting check: every changed byte outside the stack must lie in
        // an expected write.
        let writes: Vec<Expect> = match &case.string {
            Some(s) => {
                let n = self.native_elements(case, &after_ctx);
                let mut v = s.expect(n);
                if s.writes_dst && !s.dst_mmio {
                    v.extend(s.expect_all_dst(n));
                }
                v
            }
            None => case.expect.clone(),
        };
        if !case.check_accesses {
            return Ok((before, after, after_ctx));
        }
        let mut allowed = vec![false; before.len()];
        for e in writes.iter().filter(|e| e.write) {
            let o = self.off(e.addr);
            allowed[o..o + e.len as usize].fill(true);
        }
        for start in (STACK_LEN..before.len()).step_by(256) {
            let end = (start + 256).min(before.len());
            if before[start..end] == after[start..end] {
                continue;
            }
            for i in start..end {
                if before[i] != after[i] && !allowed[i] {
                    return Err(format!(
                        "generator check: native run changed byte {:#x} outside the expected writes\n{}",
                        self.native.data_addr() + i as u64,
                        self.repro(case, &before)
                    ));
                }
            }
        }
        Ok((before, after, after_ctx))
    }

    /// How many string elements the native run did.
    fn native_elements(&self, case: &Case, after: &Context) -> u64 {
        let s = case.string.as_ref().expect("string case");
        if !s.rep {
            return 1;
        }
        let m = if s.addr32 { 0xffff_ffff } else { u64::MAX };
        (case.ctx.gprs[1] & m).wrapping_sub(after.gprs[1] & m) & m
    }

    /// A reproducer: bytes, registers, operand bytes.
    pub fn repro(&self, case: &Case, before: &[u8]) -> String {
        let mut s = format!(
            "case: [{}] {}\nbytes: {}\nrip: {:#x}\n",
            case.group,
            case.name,
            hex(&case.bytes),
            self.layout.insn
        );
        for (i, g) in case.ctx.gprs.iter().enumerate() {
            s += &format!(
                "  {:>3} = {g:#018x}\n",
                [
                    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10",
                    "r11", "r12", "r13", "r14", "r15"
                ][i]
            );
        }
        s += &format!("  rflags = {:#x}\n", case.ctx.rflags);
        if case.group == "sse" {
            for (i, x) in case.ctx.xmm.iter().enumerate() {
                s += &format!("  xmm{i} = {x:#034x}\n");
            }
        }
        s += &format!(
            "fs_base {:#x} gs_base {:#x}; mmio buffer at {:#x}, RAM window at {:#x}\n",
            self.fs_base, self.gs_base, self.layout.mmio, self.layout.ramwin
        );
        for e in &case.expect {
            let o = self.off(e.addr);
            s += &format!(
                "memory at {:#x}: {}\n",
                e.addr,
                hex(&before[o..o + e.len as usize])
            );
        }
        s
    }

    /// Runs `case` natively and through `assist`, and compares.
    pub fn check(&mut self, case: &Case, assist: &mut AssistFn<'_>) -> Result<Verdict, String> {
        let (before, after, nctx) = self.run_native(case)?;
        let mut ram = self.base_ram.clone();
        let d0 = self.native.data_addr();
        ram.load(self.layout.stack, &before[..STACK_LEN]);
        ram.load(
            self.layout.ramwin,
            &before[STACK_LEN..STACK_LEN + RAMWIN_LEN],
        );
        ram.load(self.layout.insn, &case.bytes);
        let mmio_off = self.off(self.layout.mmio);
        let mut mmio = RecordingMmio {
            base: self.layout.mmio,
            bytes: before[mmio_off..].to_vec(),
            ..Default::default()
        };
        // The native CPU is the oracle: the assist runs as its vendor.
        let mut st = mock::long_mode_user(
            crate::host_vendor::host_vendor(),
            self.cr3,
            self.fs_base,
            self.gs_base,
        );
        st.gprs = case.ctx.gprs;
        st.rip = self.layout.insn;
        let rflags_in = (case.ctx.rflags & (STATUS | DF)) | 0x202;
        st.rflags = rflags_in;
        st.xmm = Some(case.ctx.xmm);

        let n_el = case
            .string
            .as_ref()
            .map(|_| self.native_elements(case, &nctx));
        let expect = match (&case.string, n_el) {
            (Some(s), Some(n)) => s.expect(n),
            _ => case.expect.clone(),
        };
        let count = case.string.as_ref().map(|s| {
            if s.rep {
                case.ctx.gprs[1] & if s.addr32 { 0xffff_ffff } else { u64::MAX }
            } else {
                1
            }
        });
        self.checked += 1;
        let fetch = self.checked & 3 == 0;
        let mut calls = 0;
        let result = loop {
            calls += 1;
            // The exit the hardware would report: the first device access
            // of the (next) element.
            let (gpa, write) = match (&case.string, count) {
                (Some(s), Some(count)) => {
                    let m = if s.addr32 { 0xffff_ffff } else { u64::MAX };
                    let done = if s.rep {
                        count.wrapping_sub(st.gprs[1] & m) & m
                    } else {
                        0
                    };
                    let step = done.wrapping_mul(s.size);
                    let step = if s.df { step.wrapping_neg() } else { step };
                    if s.uses_src && s.src_mmio {
                        (s.src.wrapping_add(step), false)
                    } else {
                        (s.dst.wrapping_add(step), s.writes_dst)
                    }
                }
                _ => match expect.first() {
                    Some(x) => (
                        // The exit is on the first MMIO byte.
                        x.addr.max(self.layout.mmio),
                        x.write || expect.iter().any(|e| e.write && e.addr == x.addr),
                    ),
                    None => (self.layout.mmio, false),
                },
            };
            let bytes: &[u8] = if fetch { &[] } else { &case.bytes };
            let r = assist(&mut st, &mut ram, &mut mmio, gpa, write, bytes);
            match r {
                Ok(Outcome::Resume) if calls < MAX_CALLS => {
                    if st.rip != self.layout.insn {
                        break Err(format!("Resume with RIP moved to {:#x}", st.rip));
                    }
                    continue;
                }
                Ok(Outcome::Resume) => break Err(format!("still Resume after {MAX_CALLS} calls")),
                Ok(Outcome::Done) => break Ok(()),
                Err(e) => break Err(format!("assist error: {e}")),
            }
        };
        let mut diffs: Vec<String> = vec![];
        if let Err(e) = result {
            diffs.push(e);
        } else {
            let names = [
                "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
                "r12", "r13", "r14", "r15",
            ];
            for ((name, a), n) in names.iter().zip(st.gprs).zip(nctx.gprs) {
                if a != n {
                    diffs.push(format!("{name}: cpu {n:#018x} assist {a:#018x}"));
                }
            }
            let want_rip = self.layout.insn + case.bytes.len() as u64;
            if st.rip != want_rip {
                diffs.push(format!("rip: cpu {want_rip:#x} assist {:#x}", st.rip));
            }
            let defined = (STATUS | DF) & !case.undefined;
            let (nf, ef) = (nctx.rflags, st.rflags);
            if (nf ^ ef) & defined != 0 {
                diffs.push(format!(
                    "rflags: cpu {nf:#x} assist {ef:#x} (differ in {:#x})",
                    (nf ^ ef) & defined
                ));
            }
            if ef & !STATUS != rflags_in & !STATUS {
                diffs.push(format!(
                    "rflags: assist changed non-status bits: {rflags_in:#x} -> {ef:#x}"
                ));
            }
            if st.xmm != Some(nctx.xmm) {
                for i in 0..16 {
                    let a = st.xmm.map(|x| x[i]).unwrap_or_default();
                    if a != nctx.xmm[i] {
                        diffs.push(format!(
                            "xmm{i}: cpu {:#034x} assist {a:#034x}",
                            nctx.xmm[i]
                        ));
                    }
                }
            }
            let mmio_after = &after[mmio_off..];
            if mmio.bytes != mmio_after {
                let first = mmio
                    .bytes
                    .iter()
                    .zip(mmio_after)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                diffs.push(format!(
                    "mmio buffer differs first at {:#x}: cpu {:02x} assist {:02x}",
                    self.layout.mmio + first as u64,
                    mmio_after[first],
                    mmio.bytes[first]
                ));
            }
            let ram_now = [
                ram.dump(self.layout.stack, STACK_LEN),
                ram.dump(self.layout.ramwin, RAMWIN_LEN),
            ]
            .concat();
            if ram_now != after[..STACK_LEN + RAMWIN_LEN] {
                let first = ram_now
                    .iter()
                    .zip(&after)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                diffs.push(format!("RAM differs first at {:#x}", d0 + first as u64));
            }
            let actual: Vec<(u64, u64, bool)> = mmio
                .trace
                .iter()
                .map(|a| (a.gpa, a.data.len() as u64, a.write))
                .collect();
            if !case.check_accesses {
                // Final state only (see Case::check_accesses).
            } else if case.string.is_some() {
                for w in [false, true] {
                    let e = bytes_of(split(&expect).into_iter(), w);
                    let a = bytes_of(actual.iter().copied(), w);
                    if e != a {
                        diffs.push(format!(
                            "{} bytes: expected {} ({:#x?}..) got {} ({:#x?}..)",
                            if w { "written" } else { "read" },
                            e.len(),
                            e.first(),
                            a.len(),
                            a.first()
                        ));
                    }
                }
            } else {
                // Fragments in the RAM window (an operand that starts
                // there and ends in the MMIO buffer) are not device
                // accesses.
                let mmio_only = |v: Vec<(u64, u64, bool)>| -> Vec<(u64, u64, bool)> {
                    v.into_iter().filter(|f| f.0 >= self.layout.mmio).collect()
                };
                let e = mmio_only(split(&expect));
                let alt = case.expect_alt.as_ref().map(|x| mmio_only(split(x)));
                if actual != e && Some(&actual) != alt.as_ref() {
                    diffs.push(format!(
                        "accesses: expected {e:#x?} got {}",
                        trace(&mmio.trace)
                    ));
                }
            }
            diffs.extend(mmio.violations.iter().cloned());
            diffs.extend(ram.violations.iter().cloned());
        }
        if diffs.is_empty() {
            let undefined = (nctx.rflags ^ st.rflags) & case.undefined;
            Ok(Verdict::Match { undefined })
        } else {
            Ok(Verdict::Mismatch(format!(
                "{}assist calls: {calls}{}\ndifferences:\n  {}\naccesses: {}",
                self.repro(case, &before),
                if fetch {
                    " (no bytes in the exit: the assist fetched them)"
                } else {
                    ""
                },
                diffs.join("\n  "),
                trace(&mmio.trace)
            )))
        }
    }
}

fn trace(t: &[Access]) -> String {
    if t.len() > 12 {
        return format!("{} accesses, first {}", t.len(), t[0]);
    }
    t.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
