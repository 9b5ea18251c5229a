//! Comm-page costs, measured against the kernel model (no NVMM needed):
//! syscalls per handled I/O and memory exit, nanoseconds of cached state
//! access, and the bytes of VCPU state the crate copies per access.
//!
//! The model stands in for the kernel, so the syscall counts are exact but
//! the nanoseconds exclude any real kernel entry: they measure this crate's
//! share of the work. Run with `cargo bench -p nvmm --bench comm_page`.
//!
//! The two `assist_mem` rows run the same memory assist, with the same
//! state, exit, device and guest RAM, once through `Vcpu::assist_mem` on
//! the comm page and once straight through `nvmm_assist` on a plain
//! `Registers` struct; their difference is what the comm page and this
//! crate's wrapper cost (see the comments in `main`). For instruction
//! counts, run one row under callgrind:
//! `COMM_PAGE_BENCH_ONLY=assist-page COMM_PAGE_BENCH_SCALE=20 valgrind
//! --tool=callgrind <bench binary> --bench`, and again with
//! `COMM_PAGE_BENCH_ONLY=none` for the fixed set-up cost to subtract.

use std::hint::black_box;
use std::time::Instant;

use nvmm::model::{KernelModel, ScriptedExit};
use nvmm::nvmm_assist::{BusError, MmioBus, PortIo};
use nvmm::sys::OpenMode;
use nvmm::{Gpr, Nvmm, Prot, Seg, StateClasses};

/// Devices that accept everything.
struct Sink;
impl PortIo for Sink {
    fn read(&mut self, _: u16, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0);
        Ok(())
    }
    fn write(&mut self, _: u16, data: &[u8]) -> Result<(), BusError> {
        black_box(data);
        Ok(())
    }
}
impl MmioBus for Sink {
    fn read(&mut self, _: u64, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0);
        Ok(())
    }
    fn write(&mut self, _: u64, data: &[u8]) -> Result<(), BusError> {
        black_box(data);
        Ok(())
    }
}

const EXITS: u64 = 10_000;
const ITERS: u64 = 20_000_000;
/// The guest RAM: one area at GPA 0.
const RAM_SIZE: usize = 0x10000;
/// Real-mode `mov [0x300], al`, which writes MMIO at GPA 0xfee00300.
const MOV_TO_MMIO: [u8; 3] = [0xA2, 0x00, 0x03];

/// `COMM_PAGE_BENCH_SCALE=<n>` divides the iteration counts by `n` (for
/// profiling under callgrind).
fn scaled(n: u64) -> u64 {
    let scale = std::env::var("COMM_PAGE_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    (n / scale).max(1)
}

/// The plain-struct row's guest RAM: the same single area as the VCPU's
/// machine (`gpa..gpa+len` backed by host memory), looked up the way a VMM
/// with its state in a plain struct would, so both rows route the MMIO
/// address through one area check before reaching the device.
struct PlainRam {
    gpa: u64,
    mem: Vec<u8>,
}
impl PlainRam {
    fn range(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]> {
        let off = usize::try_from(gpa.checked_sub(self.gpa)?).ok()?;
        self.mem.get_mut(off..off.checked_add(len)?)
    }
}
impl nvmm::nvmm_assist::GuestRam for PlainRam {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<nvmm::nvmm_assist::RamStatus, BusError> {
        Ok(match self.range(gpa, buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                nvmm::nvmm_assist::RamStatus::Done
            }
            None => nvmm::nvmm_assist::RamStatus::NotRam,
        })
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<nvmm::nvmm_assist::RamStatus, BusError> {
        Ok(match self.range(gpa, data.len()) {
            Some(dst) => {
                dst.copy_from_slice(data);
                nvmm::nvmm_assist::RamStatus::Done
            }
            None => nvmm::nvmm_assist::RamStatus::NotRam,
        })
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<nvmm::nvmm_assist::CompareWrite, BusError> {
        Ok(match self.range(gpa, new.len()) {
            Some(p) if p == expected => {
                p.copy_from_slice(new);
                nvmm::nvmm_assist::CompareWrite::Written
            }
            Some(_) => nvmm::nvmm_assist::CompareWrite::Mismatch,
            None => nvmm::nvmm_assist::CompareWrite::NotRam,
        })
    }
}

/// The plain-struct rows' state: the VCPU's registers copied into a plain
/// struct, guest RAM like the machine's, and a fetch cache of their own.
fn plain_state(
    vcpu: &mut nvmm::Vcpu,
) -> Result<
    (
        nvmm::nvmm_assist::Registers,
        PlainRam,
        nvmm::nvmm_assist::FetchCache,
    ),
    nvmm::Error,
> {
    let ram = PlainRam {
        gpa: 0,
        mem: vec![0; RAM_SIZE],
    };
    Ok((
        plain_registers(vcpu)?,
        ram,
        nvmm::nvmm_assist::FetchCache::new(),
    ))
}

/// The plain-struct memory assist on `Sink`, as both plain rows time it
/// (inlined, so that the rows time the call itself and not this one).
#[inline(always)]
fn assist_mem_plain(
    regs: &mut nvmm::nvmm_assist::Registers,
    ram: &mut PlainRam,
    exit: &nvmm::nvmm_assist::MemExit<'_>,
    cache: &mut nvmm::nvmm_assist::FetchCache,
) {
    nvmm::nvmm_assist::assist_mem_cached(regs, ram, &mut Sink, exit, cache).expect("assist");
}

/// `exit` with the guest's RIP at 0x1000 when it is taken.
fn at_rip_1000(exit: ScriptedExit) -> ScriptedExit {
    exit.with_guest(|hw| {
        hw.gprs[nvmm::nvmm_sys::NVMM_X64_GPR_RIP] = 0x1000;
    })
}

/// Handles `EXITS` exits that `exit` makes, each with `handle` then a run
/// (after a first run to the first of them); ns and syscalls per exit.
fn per_exit(
    model: &KernelModel,
    vcpu: &mut nvmm::Vcpu,
    exit: impl Fn() -> ScriptedExit,
    mut handle: impl FnMut(&mut nvmm::Vcpu) -> Result<nvmm::Outcome, nvmm::Error>,
) -> Result<(f64, f64), nvmm::Error> {
    for _ in 0..=EXITS {
        model.push_exit(vcpu.machine_id(), vcpu.id(), at_rip_1000(exit()));
    }
    vcpu.run()?;
    let start = model.syscalls();
    let t = Instant::now();
    for _ in 0..EXITS {
        handle(vcpu)?;
        vcpu.run()?;
    }
    let ns = t.elapsed().as_nanos() as f64 / EXITS as f64;
    let syscalls = (model.syscalls() - start) as f64 / EXITS as f64;
    Ok((ns, syscalls))
}

/// The VCPU's registers copied into a plain struct.
fn plain_registers(vcpu: &mut nvmm::Vcpu) -> Result<nvmm::nvmm_assist::Registers, nvmm::Error> {
    use nvmm::nvmm_assist::{Registers, SegmentAttributes, SegmentRegister};
    let mut r = Registers::zeroed(vcpu.guest_vendor());
    let g = vcpu.gprs()?;
    for (i, reg) in Gpr::ALL.iter().take(16).enumerate() {
        r.gprs[i] = g.get(*reg);
    }
    r.rip = g.rip();
    r.rflags = g.rflags();
    let segs = vcpu.segs()?;
    for (i, seg) in Seg::ALL.iter().take(6).enumerate() {
        let s = segs.get(*seg);
        r.segments[i] = SegmentRegister {
            selector: s.selector,
            base: s.base,
            limit: s.limit,
            attributes: SegmentAttributes(s.attrib.0),
        };
    }
    let crs = vcpu.crs()?;
    r.cr0 = crs.get(nvmm::Cr::Cr0);
    r.cr3 = crs.get(nvmm::Cr::Cr3);
    r.cr4 = crs.get(nvmm::Cr::Cr4);
    r.efer = vcpu.msrs()?.get(nvmm::Msr::Efer);
    Ok(r)
}

fn ns_per(iters: u64, f: impl FnMut(u64)) -> f64 {
    let mut f = f;
    let t = Instant::now();
    for i in 0..iters {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// Throughput of `f`, which moves `bytes` bytes, in MB/s.
fn mb_per_s(bytes: u64, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// `COMM_PAGE_BENCH_ONLY=<text>` runs only the sections whose name contains
/// `<text>`: `exits`, `assist-page`, `assist-struct`, `assist-lastexit`
/// (all three with `assist`), `io-page`, `io-struct` (both with `io-`),
/// `last_exit`, `state`, `ram`. For callgrind: run one assist row alone and divide the
/// instruction count by the iterations it prints.
fn enabled(section: &str) -> bool {
    std::env::var("COMM_PAGE_BENCH_ONLY").map_or(true, |only| section.contains(&only))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints the row `label` with the median of `rounds` to `decimals`
/// places, if the row ran.
fn print_median(label: &str, rounds: &mut [f64], decimals: usize) {
    if !rounds.is_empty() {
        println!("  {label}{:.decimals$}", median(rounds));
    }
}

fn main() -> Result<(), nvmm::Error> {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User)?;
    let machine = nvmm.create_machine()?;
    let mut vcpu = machine.create_vcpu(0)?;
    let id = machine.id();

    let ram = machine.hva_map(RAM_SIZE)?;
    machine.gpa_map(&ram, 0, 0, RAM_SIZE as u64, Prot::ALL)?;
    let mut cs = vcpu.segs()?.get(Seg::Cs);
    (cs.selector, cs.base) = (0, 0);
    vcpu.segs()?.set(Seg::Cs, cs);

    println!("nvmm comm page (against the kernel model; ns exclude kernel entry)");

    if enabled("exits") {
        // I/O exits (`out 0x80, al`), each handled by the I/O assist:
        // getstate of the provided classes, emulate, setstate, run.
        let (io_ns, io_syscalls) = per_exit(
            &model,
            &mut vcpu,
            || ScriptedExit::io(0x80, false, 1, 0x1002),
            |v| v.assist_io(&mut Sink, &mut Sink),
        )?;
        // Memory exits (`mov [0x300], al` to MMIO), handled by the memory
        // assist.
        let (mem_ns, mem_syscalls) = per_exit(
            &model,
            &mut vcpu,
            || ScriptedExit::memory(0xfee0_0300, true, &MOV_TO_MMIO),
            |v| v.assist_mem(&mut Sink),
        )?;
        println!("  syscalls per handled I/O exit      {io_syscalls:.3}");
        println!("  syscalls per handled memory exit   {mem_syscalls:.3}");
        println!("  ns per I/O exit, assist + model run {io_ns:.1}");
        println!("  ns per mem exit, assist + model run {mem_ns:.1}");
    }

    if enabled("assist-page") || enabled("assist-struct") || enabled("assist-lastexit") {
        // The memory assist alone, on the comm page and on a plain struct,
        // like with like. Both rows:
        // - emulate the same exit: real-mode `mov [0x300], al` (bytes in
        //   the exit) writing MMIO at GPA 0xfee00300;
        // - start from the same state (the plain `Registers` are a copy of
        //   the VCPU's), with RIP reset to 0x1000 before each round, outside
        //   the timing, and advancing by 3 per call (a 16-bit IP: a round
        //   stays below the 64 KiB CS limit);
        // - see the same guest RAM: one 64 KiB area at GPA 0, which the
        //   MMIO address misses (the comm-page row through the machine's
        //   area list, the plain row through `PlainRam`);
        // - write the same `Sink` device and keep a per-VCPU `FetchCache`.
        // The comm-page row is `Vcpu::assist_mem` as a VMM calls it, so it
        // also includes the cached-state check, decoding the exit from the
        // run arguments and the guest-RAM bookkeeping that keeps host
        // mappings alive under callbacks: that is the overhead measured.
        // Interleaved rounds (median of each): a noisy period on a shared
        // machine hurts both alike.
        let iters = scaled(20_000);
        assert!(0x1000 + 3 * iters < 0xFFFF, "a round must not wrap IP");
        if !matches!(vcpu.last_exit(), nvmm::Exit::Memory(_)) {
            model.push_exit(
                id,
                0,
                at_rip_1000(ScriptedExit::memory(0xfee0_0300, true, &MOV_TO_MMIO)),
            );
            vcpu.run()?;
        }
        let before = model.syscalls();
        let (mut regs, mut plain_ram, mut plain_cache) = plain_state(&mut vcpu)?;
        let exit = nvmm::nvmm_assist::MemExit {
            gpa: 0xfee0_0300,
            access: nvmm::nvmm_assist::AccessType::Write,
            instruction: &MOV_TO_MMIO,
        };
        let (mut pages, mut structs, mut decoded) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..15 {
            if enabled("assist-page") {
                vcpu.gprs()?.set_rip(0x1000);
                pages.push(ns_per(iters, |_| {
                    vcpu.assist_mem(&mut Sink).expect("assist");
                }));
                assert_eq!(vcpu.gprs()?.rip(), 0x1000 + 3 * iters);
            }
            if enabled("assist-struct") {
                regs.rip = 0x1000;
                structs.push(ns_per(iters, |_| {
                    assist_mem_plain(&mut regs, &mut plain_ram, &exit, &mut plain_cache);
                }));
                assert_eq!(regs.rip, 0x1000 + 3 * iters);
            }
            if enabled("assist-lastexit") {
                // For reference: the plain struct with the exit read from
                // the VCPU's last exit, as a VMM keeping its registers in a
                // struct also has to (the target is against the row above).
                regs.rip = 0x1000;
                decoded.push(ns_per(iters, |_| {
                    let nvmm::Exit::Memory(m) = vcpu.last_exit() else {
                        unreachable!("a memory exit is pending");
                    };
                    let exit = nvmm::nvmm_assist::MemExit {
                        gpa: m.gpa,
                        access: match m.access {
                            nvmm::MemAccess::Read => nvmm::nvmm_assist::AccessType::Read,
                            nvmm::MemAccess::Write => nvmm::nvmm_assist::AccessType::Write,
                            nvmm::MemAccess::Exec => nvmm::nvmm_assist::AccessType::Execute,
                        },
                        instruction: m.instruction,
                    };
                    assist_mem_plain(&mut regs, &mut plain_ram, &exit, &mut plain_cache);
                }));
                assert_eq!(regs.rip, 0x1000 + 3 * iters);
            }
        }
        assert_eq!(model.syscalls(), before, "the assist made a syscall");
        println!("  assist_mem calls per row            {}", 15 * iters);
        print_median("ns assist_mem on the comm page      ", &mut pages, 1);
        print_median("ns assist_mem on a plain struct     ", &mut structs, 1);
        print_median("ns ... plain struct, exit from last_exit ", &mut decoded, 1);
        if !pages.is_empty() && !structs.is_empty() {
            let (on_page, on_struct) = (median(&mut pages), median(&mut structs));
            println!(
                "  ns nvmm's share (comm page, exit decoding, RAM lookup) {:.1}",
                on_page - on_struct
            );
            let ratio = on_page / on_struct;
            println!(
                "  target: assist_mem on the comm page <= 1.2x the plain struct: {ratio:.2}x ({})",
                if ratio <= 1.2 { "met" } else { "NOT met" }
            );
        }
    }

    if enabled("nobytes-paged64") {
        // A memory exit without instruction bytes (as on Intel): a 64-bit
        // paged guest's `mov [rbx], al` at linear 0x1000 writing MMIO at
        // GPA 0xfee00300 (linear 0x2300), so every assist fetches through
        // the VCPU's fetch cache, which re-reads the cached walk's four
        // entries, and walks the data address. A second VCPU in long mode
        // (CR0.PE|PG, CR4.PAE, EFER.LME|LMA, CS.L); RIP is reset before
        // each call. For instruction counts, difference two
        // `COMM_PAGE_BENCH_SCALE`s under callgrind.
        use nvmm::{Cr, Msr, SegAttrib};
        const PML4: u64 = 0x8000;
        const CODE: u64 = 0xC000;
        for (at, entry) in [
            (PML4, 0x9000 | 7),
            (0x9000, 0xA000 | 7),
            (0xA000, 0xB000 | 7),
            (0xB000 + 8, CODE | 7),
            (0xB000 + 16, 0xfee0_0000 | 7),
        ] {
            machine.write_guest(at, &u64::to_le_bytes(entry))?;
        }
        machine.write_guest(CODE, &[0x88, 0x03])?;
        let mut v = machine.create_vcpu(1)?;
        {
            let mut c = v.crs()?;
            c.set(Cr::Cr3, PML4);
            c.set(Cr::Cr4, 1 << 5);
            c.set(Cr::Cr0, (1 << 31) | 1);
        }
        v.msrs()?.set(Msr::Efer, (1 << 8) | (1 << 10));
        {
            let mut s = v.segs()?;
            let mut cs = s.get(Seg::Cs);
            cs.attrib = SegAttrib::new(0xb, true, 0, true, false, true, false, true);
            s.set(Seg::Cs, cs);
        }
        v.gprs()?.set(Gpr::Rbx, 0x2300);
        model.push_exit(id, 1, ScriptedExit::memory(0xfee0_0300, true, &[]));
        v.run()?;
        let before = model.syscalls();
        let iters = scaled(20_000);
        let mut rounds = Vec::new();
        for _ in 0..15 {
            rounds.push(ns_per(iters, |_| {
                v.gprs().expect("cached").set_rip(0x1000);
                v.assist_mem(&mut Sink).expect("assist");
            }));
            assert_eq!(v.gprs()?.rip(), 0x1002);
        }
        assert_eq!(model.syscalls(), before, "the assist made a syscall");
        println!(
            "  ns assist_mem, 64-bit paged, no instruction bytes {:.1}",
            median(&mut rounds)
        );
    }

    if enabled("last_exit") {
        // Decoding the last exit (a memory exit) as a VMM's exit loop
        // does: match on the kind, use the fields.
        if !matches!(vcpu.last_exit(), nvmm::Exit::Memory(_)) {
            model.push_exit(id, 0, ScriptedExit::memory(0xfee0_0300, true, &MOV_TO_MMIO));
            vcpu.run()?;
        }
        let mut rounds = Vec::new();
        for _ in 0..15 {
            rounds.push(ns_per(scaled(ITERS / 20), |_| {
                if let nvmm::Exit::Memory(m) = black_box(&vcpu).last_exit() {
                    black_box((m.gpa, m.access, m.instruction.len()));
                }
            }));
        }
        println!(
            "  ns last_exit (a memory exit)       {:.2}",
            median(&mut rounds)
        );
    }

    if enabled("io-page") || enabled("io-struct") {
        // The I/O assist alone for a plain `out 0x80, al`, on the comm page
        // and on a plain struct, like with like: the same exit (on the
        // comm page the run arguments' `io` member, on the struct
        // nvmm-assist's `IoExit` of the same values), the same state
        // (RIP = the exit's next-instruction RIP after every call, so each
        // call does the same work), the same `Sink` port. The comm-page
        // row is `Vcpu::assist_io` as a VMM calls it: its overhead is the
        // cached-state check, decoding the exit and the guest-RAM
        // bookkeeping, as in the `assist_mem` rows.
        model.push_exit(id, 0, at_rip_1000(ScriptedExit::io(0x80, false, 1, 0x1002)));
        vcpu.run()?;
        let before = model.syscalls();
        let (mut regs, mut plain_ram, mut plain_cache) = plain_state(&mut vcpu)?;
        let exit = nvmm::nvmm_assist::IoExit {
            port: 0x80,
            input: false,
            operand_size: 1,
            address_size: 8,
            rep: false,
            string: false,
            segment: None,
            npc: 0x1002,
        };
        let iters = scaled(ITERS / 20);
        let (mut pages, mut structs) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            if enabled("io-page") {
                pages.push(ns_per(iters, |_| {
                    vcpu.assist_io(&mut Sink, &mut Sink).expect("assist");
                }));
                assert_eq!(vcpu.gprs()?.rip(), 0x1002);
            }
            if enabled("io-struct") {
                structs.push(ns_per(iters, |_| {
                    nvmm::nvmm_assist::assist_io_cached(
                        &mut regs,
                        &mut plain_ram,
                        &mut Sink,
                        &mut Sink,
                        &exit,
                        &mut plain_cache,
                    )
                    .expect("assist");
                }));
                assert_eq!(regs.rip, 0x1002);
            }
        }
        assert_eq!(model.syscalls(), before, "the assist made a syscall");
        println!("  assist_io calls per row             {}", 15 * iters);
        print_median("ns assist_io (out) on the comm page ", &mut pages, 2);
        print_median("ns assist_io (out) on a plain struct ", &mut structs, 2);
    }

    if enabled("state") {
        // Cached state access: no syscall at all (checked below).
        vcpu.fetch(StateClasses::ALL)?;
        let before = model.syscalls();
        let read_ns = ns_per(scaled(ITERS), |_| {
            let g = vcpu.gprs().expect("cached");
            black_box(g.get(black_box(Gpr::Rbx)));
        });
        let set_ns = ns_per(scaled(ITERS), |i| {
            vcpu.gprs().expect("cached").set(black_box(Gpr::Rbx), i);
        });
        let rmw_ns = ns_per(scaled(ITERS), |_| {
            vcpu.fetch(StateClasses::GPRS).expect("cached");
            let mut g = vcpu.gprs().expect("cached");
            let v = g.get(Gpr::Rcx);
            g.set(Gpr::Rcx, black_box(v).wrapping_add(1));
        });
        assert_eq!(model.syscalls(), before, "cached access made a syscall");
        println!("  ns cached GPRS read                {read_ns:.2}");
        println!("  ns setstate (one GPR write)        {set_ns:.2}");
        println!("  ns getstate->modify->setstate GPRS {rmw_ns:.2}");
    }

    if enabled("ram") {
        // Guest RAM copies (one-byte atomic accesses, see the guest_ram
        // module).
        let copy_rounds = 2_000u64;
        let mut buf = vec![0u8; RAM_SIZE];
        let read_mbs = mb_per_s(copy_rounds * buf.len() as u64, || {
            for _ in 0..copy_rounds {
                machine.read_guest(0, black_box(&mut buf)).expect("mapped");
            }
        });
        let write_mbs = mb_per_s(copy_rounds * buf.len() as u64, || {
            for _ in 0..copy_rounds {
                machine.write_guest(0, black_box(&buf)).expect("mapped");
            }
        });
        println!("  MB/s read_guest (64 KiB copies)    {read_mbs:.0}");
        println!("  MB/s write_guest (64 KiB copies)   {write_mbs:.0}");
    }
    println!(
        "  state bytes copied per access      0 (registers are read and written in place \
         in the comm page; a whole-state copy would be {} bytes)",
        size_of::<nvmm::nvmm_sys::nvmm_x64_state>()
    );
    Ok(())
}
