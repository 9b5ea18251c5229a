//! Comm-page costs, measured against the kernel model (no NVMM needed):
//! syscalls per handled I/O and memory exit, nanoseconds of cached state
//! access, and the bytes of VCPU state the crate copies per access.
//!
//! The model stands in for the kernel, so the syscall counts are exact but
//! the nanoseconds exclude any real kernel entry: they measure this crate's
//! share of the work. Run with `cargo bench -p nvmm --bench comm_page`.

#[path = "../tests/model/mod.rs"]
mod model;

use std::hint::black_box;
use std::time::Instant;

use model::{KernelModel, ScriptedExit};
use nvmm::sys::OpenMode;
use nvmm::{Exit, Gpr, Nvmm, PROVIDED_ON_IO_AND_MEMORY, StateClasses};

const EXITS: u64 = 10_000;
const ITERS: u64 = 20_000_000;

fn ns_per(iters: u64, f: impl FnMut(u64)) -> f64 {
    let mut f = f;
    let t = Instant::now();
    for i in 0..iters {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

fn main() -> Result<(), nvmm::Error> {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User)?;
    let machine = nvmm.create_machine()?;
    let mut vcpu = machine.create_vcpu(0)?;
    let id = machine.id();

    // I/O exits: getstate of the provided classes, emulate (read RAX,
    // write RAX, RIP = npc), setstate, run.
    for i in 0..=EXITS {
        model.push_exit(id, 0, ScriptedExit::io(0x3f8, false, 1, 0x1000 + i));
    }
    vcpu.run()?;
    let start = model.syscalls();
    let t = Instant::now();
    for _ in 0..EXITS {
        vcpu.fetch(PROVIDED_ON_IO_AND_MEMORY)?;
        let Exit::Io(io) = vcpu.last_exit() else {
            panic!("expected an I/O exit");
        };
        let mut g = vcpu.gprs()?;
        let rax = g.get(Gpr::Rax);
        g.set(Gpr::Rax, black_box(rax) ^ 1);
        g.set_rip(io.npc);
        vcpu.run()?;
    }
    let io_ns = t.elapsed().as_nanos() as f64 / EXITS as f64;
    let io_syscalls = (model.syscalls() - start) as f64 / EXITS as f64;

    // Memory exits, handled the same way (RIP advanced past the access).
    for _ in 0..=EXITS {
        model.push_exit(
            id,
            0,
            ScriptedExit::memory(0xfee0_00b0, true, &[0x89, 0x08]),
        );
    }
    vcpu.run()?;
    let start = model.syscalls();
    for _ in 0..EXITS {
        vcpu.fetch(PROVIDED_ON_IO_AND_MEMORY)?;
        let mut g = vcpu.gprs()?;
        let rip = g.rip();
        g.set_rip(rip + 2);
        vcpu.run()?;
    }
    let mem_syscalls = (model.syscalls() - start) as f64 / EXITS as f64;

    // Cached state access: no syscall at all (checked below).
    vcpu.fetch(StateClasses::ALL)?;
    let before = model.syscalls();
    let read_ns = ns_per(ITERS, |_| {
        let g = vcpu.gprs().expect("cached");
        black_box(g.get(black_box(Gpr::Rbx)));
    });
    let set_ns = ns_per(ITERS, |i| {
        vcpu.gprs().expect("cached").set(black_box(Gpr::Rbx), i);
    });
    let rmw_ns = ns_per(ITERS, |_| {
        vcpu.fetch(StateClasses::GPRS).expect("cached");
        let mut g = vcpu.gprs().expect("cached");
        let v = g.get(Gpr::Rcx);
        g.set(Gpr::Rcx, black_box(v).wrapping_add(1));
    });
    assert_eq!(model.syscalls(), before, "cached access made a syscall");

    println!("nvmm comm page (against the kernel model; ns exclude kernel entry)");
    println!("  syscalls per handled I/O exit      {io_syscalls:.3}");
    println!("  syscalls per handled memory exit   {mem_syscalls:.3}");
    println!("  ns per handled I/O exit (model)    {io_ns:.1}");
    println!("  ns cached GPRS read                {read_ns:.2}");
    println!("  ns setstate (one GPR write)        {set_ns:.2}");
    println!("  ns getstate->modify->setstate GPRS {rmw_ns:.2}");
    println!(
        "  state bytes copied per access      0 (registers are read and written in place \
         in the comm page; a whole-state copy would be {} bytes)",
        size_of::<nvmm::nvmm_sys::nvmm_x64_state>()
    );
    Ok(())
}
