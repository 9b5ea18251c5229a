//! toyvm: a small VMM on NVMM that exercises what a real one does.
//!
//! Its guest (`guest.rs`) starts in real mode, switches to 32-bit
//! protected mode and then to long mode with page tables, and uses every
//! device toyvm offers (`devices.rs`): a serial port (`out`, `rep outsb`),
//! an MMIO register bank (`mov`, `or`, `movzx`, `rep movsb`, `lock xadd`),
//! a CPUID leaf the VMM configures in mask mode, and an interrupt the VMM
//! injects when the guest opens its interrupt window; then it halts.
//!
//! toyvm completes the I/O and memory exits with nvmm's assists, injects
//! at `Exit::IntReady`, and has a watchdog thread that stops the VCPU with
//! a `VcpuStopper` (and a signal) if the guest runs too long. It prints
//! what the guest did and exits 0 only if every step checked out, 1 if
//! one did not, and 2 (with one line) where NVMM cannot be opened.
//!
//! The same guest and devices run on KVM in `tests/toyvm_kvm.rs`.
//!
//! Run it on NetBSD with the nvmm module loaded (as a user who can open
//! `/dev/nvmm`): `cargo run --example toyvm`.

pub(crate) mod devices;
pub(crate) mod guest;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use devices::Devices;
use nvmm::x86::efer;
use nvmm::{CpuidConf, CpuidRegs, Event, Exit, Msr, Nvmm, Prot, Vcpu};

/// How long the guest may run. It needs a few hundred exits; a guest stuck
/// in a loop without exits is stopped by the watchdog after this.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The signal that kicks the VCPU thread out of the kernel.
const KICK: i32 = libc::SIGUSR1;
/// An upper bound on exits: the guest makes about 60.
const MAX_EXITS: u32 = 10_000;

fn main() -> ExitCode {
    let nvmm = match Nvmm::open() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("toyvm: cannot use NVMM here: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&nvmm) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("toyvm: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and its sources, `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// What the VMM itself saw, beyond the device log.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) exits: u32,
    pub(crate) io: u32,
    pub(crate) memory: u32,
    /// `Exit::IntReady` came with the guest able to take the interrupt.
    pub(crate) window_open_at_int_ready: Option<bool>,
    pub(crate) halted: bool,
    /// The first thing that went wrong, if anything did.
    pub(crate) failure: Option<String>,
}

impl Seen {
    fn fail(&mut self, why: String) {
        self.failure.get_or_insert(why);
    }
}

/// Runs the guest and checks every step; `Ok(true)` if all checked out.
pub(crate) fn run(nvmm: &Nvmm) -> Result<bool, Box<dyn std::error::Error>> {
    let cap = nvmm.capability();
    println!(
        "toyvm: NVMM version {}, up to {} VCPUs, CPUID conf: {}",
        cap.version,
        cap.max_vcpus,
        cap.supports_cpuid_conf()
    );
    let machine = nvmm.create_machine()?;
    let ram = machine.hva_map(guest::RAM_SIZE)?;
    machine.gpa_map(&ram, 0, 0, guest::RAM_SIZE as u64, Prot::ALL)?;
    let image = guest::build()?;
    for (gpa, bytes) in &image.pieces {
        machine.write_guest(*gpa, bytes)?;
    }

    let mut vcpu = machine.create_vcpu(0)?;
    vcpu.configure_cpuid(CpuidConf::Mask {
        leaf: guest::CPUID_LEAF,
        set: CpuidRegs {
            ecx: guest::CPUID_SET_ECX,
            ..Default::default()
        },
        del: CpuidRegs {
            edx: guest::CPUID_DEL_EDX,
            ..Default::default()
        },
    })?;
    let entry = u16::try_from(image.entries.real)?;
    vcpu.setup_real_mode(0, entry)?;
    // The guest starts with interrupts off; ask for the window now, and
    // inject when the kernel reports it open.
    vcpu.request_interrupt_window()?;

    // The watchdog. The VMM-side flag is set BEFORE the stop: the kernel
    // drops a stop when a pending signal ends the run first (the run
    // returns Exit::None and clears `stop`, `nvmm_vcpu_run()` in
    // sys/dev/nvmm/nvmm.c), so the flag is what the loop trusts.
    nvmm::install_kick_handler(KICK)?;
    let timed_out = Arc::new(AtomicBool::new(false));
    let (done, wait) = mpsc::channel::<()>();
    let watchdog = {
        let stopper = vcpu.stopper();
        let timed_out = timed_out.clone();
        // SAFETY: pthread_self has no preconditions; this thread joins the
        // watchdog before it returns, so the id stays valid.
        let me = unsafe { libc::pthread_self() };
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(TIMEOUT) {
                timed_out.store(true, Ordering::SeqCst);
                // SAFETY: `me` is the VCPU (main) thread, which joins this
                // watchdog before it returns, so it is alive for the call.
                if let Err(e) = unsafe { stopper.stop_and_signal_raw(me, KICK) } {
                    eprintln!("toyvm: watchdog: {}", chain(&e));
                }
            }
        })
    };

    let mut dev = Devices::new();
    let mut seen = Seen::default();
    let result = run_loop(&mut vcpu, &mut dev, &mut seen, &timed_out);
    drop(done);
    let _ = watchdog.join();
    result?;

    // Print what the guest did.
    println!("toyvm: the guest did, in order:");
    for e in &dev.log {
        println!("  {e}");
    }
    if !dev.pending_serial().is_empty() {
        println!(
            "  serial (no newline yet): {:?}",
            String::from_utf8_lossy(dev.pending_serial())
        );
    }
    println!(
        "toyvm: {} exits ({} port I/O, {} MMIO)",
        seen.exits, seen.io, seen.memory
    );

    // Check every step.
    let (lines, mut all) = devices::check(&dev.log, &devices::expected_steps());
    println!("toyvm: steps:");
    for l in &lines {
        println!("  {l}");
    }
    let mut vmm_step = |ok: bool, what: &str| {
        all &= ok;
        println!("  {}  {what}", if ok { "ok  " } else { "FAIL" });
    };
    vmm_step(
        seen.window_open_at_int_ready == Some(true),
        "Exit::IntReady came with IF set and no interrupt shadow",
    );
    vmm_step(seen.halted, "the guest halted");
    if let Some(f) = &seen.failure {
        vmm_step(false, f);
    }
    // A stop requested between runs ends the next run before the guest
    // runs (nvmm_do_vcpu_run() checks `stop` before entering the guest).
    vcpu.stopper().stop();
    let stopped = vcpu.run()?;
    vmm_step(
        stopped == Exit::Stopped,
        &format!("a stop requested between runs ends the next run at once ({stopped:?})"),
    );
    println!(
        "toyvm: {}",
        if all {
            "every step checked out"
        } else {
            "some steps FAILED"
        }
    );
    Ok(all)
}

/// Runs the guest to its HLT (or a failure), completing every exit.
pub(crate) fn run_loop(
    vcpu: &mut Vcpu,
    dev: &mut Devices,
    seen: &mut Seen,
    timed_out: &AtomicBool,
) -> Result<(), nvmm::Error> {
    loop {
        if seen.exits >= MAX_EXITS {
            seen.fail(format!("no HLT after {MAX_EXITS} exits"));
            return Ok(());
        }
        seen.exits += 1;
        let exit = vcpu.run()?;
        match exit {
            Exit::Io(_) => {
                seen.io += 1;
                // The guest's string OUT reads guest RAM only: no MMIO bus.
                if let Err(e) = vcpu.assist_port_io(dev) {
                    fault_or_fail(vcpu, e, seen)?;
                }
            }
            Exit::Memory(_) => {
                seen.memory += 1;
                if let Err(e) = vcpu.assist_mem(dev) {
                    fault_or_fail(vcpu, e, seen)?;
                }
            }
            Exit::IntReady => {
                seen.window_open_at_int_ready = Some(vcpu.exit_state().can_take_interrupt());
                vcpu.inject(Event::Interrupt {
                    vector: guest::IRQ_VECTOR,
                })?;
            }
            Exit::Halted => {
                seen.halted = true;
                return Ok(());
            }
            // NVMM handles EFER in the kernel; should a kernel pass it on,
            // the guest's mode switch still works.
            Exit::Rdmsr(r) if r.msr == efer::MSR => {
                let v = vcpu.msrs()?.get(Msr::Efer);
                vcpu.complete_rdmsr(v)?;
            }
            Exit::Wrmsr(w) if w.msr == efer::MSR => {
                vcpu.msrs()?.set(Msr::Efer, w.value);
                vcpu.complete_wrmsr()?;
            }
            // A stop overrides the exit reason (nvmm_return_needed() in
            // sys/dev/nvmm/nvmm_internal.h): an I/O instruction is simply
            // re-executed at the next run. Only the watchdog stops this
            // VCPU, so a stop is the timeout.
            Exit::Stopped | Exit::None => {}
            Exit::Shutdown => {
                seen.fail(format!("triple fault\n{:?}", vcpu.dump()?));
                return Ok(());
            }
            other => {
                let what = format!("{other:?}");
                seen.fail(format!("unexpected exit {what}\n{:?}", vcpu.dump()?));
                return Ok(());
            }
        }
        // The VMM-side flag, not the exit reason: a pending signal turns
        // the stop into Exit::None, and the kernel clears `stop` then.
        if timed_out.load(Ordering::SeqCst) {
            seen.fail(format!(
                "stopped by the watchdog after {TIMEOUT:?} (last exit {exit:?})",
                exit = vcpu.last_exit()
            ));
            return Ok(());
        }
    }
}

/// An assist error: a guest fault is injected (and reported as a failed
/// step: this guest makes none); anything else ends the run.
fn fault_or_fail(vcpu: &mut Vcpu, e: nvmm::Error, seen: &mut Seen) -> Result<(), nvmm::Error> {
    if vcpu.inject_assist_fault(&e)? {
        seen.fail(format!("the guest faulted in an assist: {}", chain(&e)));
        Ok(())
    } else {
        Err(e)
    }
}
