//! The real-kernel suite: each capability of nvmm-rs exercised against
//! `/dev/nvmm`, with the kernel behaviour it relies on (NetBSD's
//! `sys/dev/nvmm`, see the comments) checked. Skips where `/dev/nvmm`
//! cannot be opened; fails instead under `NVMM_VMTEST=1`.
//!
//! The guests run in long mode (`Vcpu::setup_long_mode`) over 64 KiB of
//! RAM identity-mapped by one 2 MiB page, with a GDT and an IDT built
//! here; guest-physical 0x10000-0x1FFFF is not RAM (MMIO).

// A real open of /dev/nvmm (then its ioctls), which miri cannot run.
#![cfg(not(miri))]
#![cfg(feature = "assist")]

use crate::kernel_support;
use crate::long_guests as guests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use crate::dyn_assist::AssistDyn;
use guests::*;
use kernel_support::{Vm, say};
use nvmm::nvmm_assist::{BusError, MmioBus, PortIo};
use nvmm::x86::{cr4, rflags};
use nvmm::{
    CpuidConf, CpuidRegs, Cr, Dr, Event, Exit, Gpr, Msr, Nvmm, Outcome, Seg, StateClasses, Vcpu,
    VcpuStopper,
};

/// The machine of `program` (`tests/guests/long.rs`), its VCPU in long
/// mode at `CODE` with the GDT and IDT loaded.
fn long_vm(nvmm: &Nvmm, program: &Program) -> Vm {
    let image = program.image();
    let pieces: Vec<(u64, &[u8])> = image.iter().map(|(g, b)| (*g, &b[..])).collect();
    let mut vm = Vm::new(nvmm, &[], &pieces).expect("machine");
    vm.vcpu
        .setup_long_mode(PML4, CODE, STACK)
        .expect("long mode");
    let mut s = vm.vcpu.segs().expect("segs");
    let mut gdtr = s.get(Seg::Gdt);
    (gdtr.base, gdtr.limit) = (GDT, GDT_LIMIT);
    s.set(Seg::Gdt, gdtr);
    let mut idtr = s.get(Seg::Idt);
    (idtr.base, idtr.limit) = (IDT, IDT_LIMIT);
    s.set(Seg::Idt, idtr);
    vm
}

/// Stops a VCPU (stop + SIGUSR1 to the thread that made the watchdog)
/// unless dropped within the time given; dropping it also joins its thread,
/// so the signal never targets a thread that has exited.
struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(stopper: VcpuStopper, after: Duration) -> Watchdog {
        nvmm::install_kick_handler(libc::SIGUSR1).expect("kick handler");
        let (tx, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        // SAFETY: the calling thread's id; it joins the watchdog's thread
        // (Drop) before it can exit.
        let me = unsafe { libc::pthread_self() };
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
                // The VMM-side flag first: the kernel may drop the stop.
                f.store(true, Ordering::SeqCst);
                // SAFETY: `me` joins this thread (Watchdog::drop) before it
                // can exit, so it is alive for the call.
                let _ = unsafe { stopper.stop_and_signal_raw(me, libc::SIGUSR1) };
            }
        });
        Watchdog {
            done: Some(tx),
            fired,
            thread: Some(thread),
        }
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn byte_at(vm: &Vm, gpa: u64) -> u8 {
    let mut b = [0u8];
    vm.machine.read_guest(gpa, &mut b).expect("read_guest");
    b[0]
}

fn u32_at(vm: &Vm, gpa: u64) -> u32 {
    let mut b = [0u8; 4];
    vm.machine.read_guest(gpa, &mut b).expect("read_guest");
    u32::from_le_bytes(b)
}

/// Runs until HLT, failing on anything but `None`/`Stopped` (with the
/// watchdog's flag checked).
fn run_to_hlt(vcpu: &mut Vcpu, fired: &AtomicBool) {
    loop {
        let exit = vcpu.run().expect("run");
        match exit {
            Exit::Halted => return,
            Exit::None | Exit::Stopped => {}
            other => panic!("unexpected exit {other:?}"),
        }
        assert!(!fired.load(Ordering::SeqCst), "watchdog fired");
    }
}

#[test]
fn reset_state_is_the_kernels() {
    let Some(nvmm) = kernel_support::open("reset_state_is_the_kernels") else {
        return;
    };
    let machine = nvmm.create_machine().unwrap();
    let mut v = machine.create_vcpu(0).unwrap();
    // nvmm_x86_reset_state() in sys/dev/nvmm/x86/nvmm_x86.c.
    let g = v.gprs().unwrap();
    assert_eq!(g.get(Gpr::Rdx), 0x600);
    assert_eq!((g.rip(), g.rflags()), (0xFFF0, rflags::FIXED));
    let cs = v.segs().unwrap().get(Seg::Cs);
    assert_eq!((cs.selector, cs.base), (0xF000, 0xFFFF_0000));
    assert_eq!(v.crs().unwrap().get(Cr::Cr0) & 0x6000_0010, 0x6000_0010);
    assert_eq!(v.drs().unwrap().get(Dr::Dr7), 0x400);
    assert_eq!(v.msrs().unwrap().get(Msr::Pat), 0x0007_0406_0007_0406);
}

#[test]
fn every_state_class_round_trips_through_a_run_and_is_sanitised() {
    let Some(nvmm) = kernel_support::open("state_round_trip") else {
        return;
    };
    let mut vm = long_vm(&nvmm, &Program::plain(vec![HLT]));
    let v = &mut vm.vcpu;
    let mut g = v.gprs().unwrap();
    for (i, r) in [
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ]
    .into_iter()
    .enumerate()
    {
        g.set(r, 0x1111_0000_0000 + i as u64);
    }
    let mut sg = v.segs().unwrap();
    let mut fs = sg.get(Seg::Fs);
    fs.base = 0x1234_5000;
    sg.set(Seg::Fs, fs);
    let mut gs = sg.get(Seg::Gs);
    gs.base = 0xFFFF_8000_0000_0000;
    sg.set(Seg::Gs, gs);
    let mut c = v.crs().unwrap();
    c.set(Cr::Cr2, 0xdead_0000);
    // Sanitising on commit (nvmm_x86.c/svm/vmx setstate): CR4 is masked
    // to the valid bits, XCR0 gets its x87 bit.
    c.set(Cr::Cr4, cr4::PAE | (1 << 31));
    c.set(Cr::Xcr0, 0);
    let mut d = v.drs().unwrap();
    for (i, r) in [Dr::Dr0, Dr::Dr1, Dr::Dr2, Dr::Dr3].into_iter().enumerate() {
        d.set(r, 0x4000 + 8 * i as u64);
    }
    let mut m = v.msrs().unwrap();
    m.set(Msr::Lstar, 0xFFFF_8000_0000_1000);
    m.set(Msr::Star, 0x0023_0010_0000_0000);
    m.set(Msr::Sfmask, 0x4700);
    m.set(Msr::KernelGsBase, 0xFFFF_8000_0000_2000);
    let mut f = v.fpu().unwrap();
    f.set_xmm(3, 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210);
    // (MXCSR is not checked: committing FPU state with the reset
    // mxcsr_mask of 0 zeroes it, svm/vmx setstate `mxcsr &= mask`.)
    let fired = AtomicBool::new(false);
    run_to_hlt(v, &fired);
    v.fetch(StateClasses::ALL).unwrap();
    let g = v.gprs().unwrap();
    assert_eq!(g.get(Gpr::R15), 0x1111_0000_0007);
    let sg = v.segs().unwrap();
    assert_eq!(sg.get(Seg::Fs).base, 0x1234_5000);
    assert_eq!(sg.get(Seg::Gs).base, 0xFFFF_8000_0000_0000);
    let c = v.crs().unwrap();
    assert_eq!(c.get(Cr::Cr2), 0xdead_0000);
    assert_eq!(c.get(Cr::Cr4) & (1 << 31), 0, "reserved CR4 bit masked");
    assert_eq!(c.get(Cr::Xcr0) & 1, 1, "x87 bit forced in XCR0");
    assert_eq!(v.drs().unwrap().get(Dr::Dr3), 0x4018);
    let m = v.msrs().unwrap();
    assert_eq!(m.get(Msr::Lstar), 0xFFFF_8000_0000_1000);
    assert_eq!(m.get(Msr::KernelGsBase), 0xFFFF_8000_0000_2000);
    assert_eq!(m.get(Msr::Sfmask), 0x4700);
    let f = v.fpu().unwrap();
    assert_eq!(f.xmm(3), 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210);
}

#[test]
fn cpuid_mask_and_exit_leaves() {
    let Some(nvmm) = kernel_support::open("cpuid_mask_and_exit_leaves") else {
        return;
    };
    let mut vm = long_vm(&nvmm, &cpuid());
    let set_ecx = 1 << 31;
    let del_edx = 1 << 23;
    vm.vcpu
        .configure_cpuid(CpuidConf::Mask {
            leaf: 1,
            set: CpuidRegs {
                ecx: set_ecx,
                ..Default::default()
            },
            del: CpuidRegs {
                edx: del_edx,
                ..Default::default()
            },
        })
        .unwrap();
    vm.vcpu
        .configure_cpuid(CpuidConf::Exit {
            leaf: CPUID_EXIT_LEAF,
        })
        .unwrap();
    let mut cpuid_exits = 0;
    loop {
        match vm.vcpu.run().unwrap() {
            Exit::Cpuid { .. } => {
                cpuid_exits += 1;
                vm.vcpu
                    .complete_cpuid(CpuidRegs {
                        eax: 0xA11C_E000,
                        ebx: 0xB0B0_B0B0,
                        ecx: 0,
                        edx: 0,
                    })
                    .unwrap();
            }
            Exit::Halted => break,
            Exit::None | Exit::Stopped => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(cpuid_exits, 1, "only the exit leaf exits");
    assert_eq!(u32_at(&vm, DATA) & set_ecx, set_ecx);
    assert_eq!(u32_at(&vm, DATA + 4) & del_edx, 0);
    assert_eq!(u32_at(&vm, DATA + 8), 0xA11C_E000);
    assert_eq!(u32_at(&vm, DATA + 12), 0xB0B0_B0B0);
}

#[test]
fn msr_exits_are_completed_by_the_vmm() {
    let Some(nvmm) = kernel_support::open("msr_exits") else {
        return;
    };
    let mut vm = long_vm(&nvmm, &msr());
    let mut written = None;
    loop {
        match vm.vcpu.run().unwrap() {
            Exit::Wrmsr(w) => {
                written = Some((w.msr, w.value));
                vm.vcpu.complete_wrmsr().unwrap();
            }
            Exit::Rdmsr(r) => {
                assert_eq!(r.msr, UNHANDLED_MSR);
                vm.vcpu.complete_rdmsr(0xAABB_CCDD_EEFF_0011).unwrap();
            }
            Exit::Halted => break,
            Exit::None | Exit::Stopped => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(written, Some((UNHANDLED_MSR, MSR_WRITTEN)));
    assert_eq!(u32_at(&vm, DATA), 0xEEFF_0011);
    assert_eq!(u32_at(&vm, DATA + 4), 0xAABB_CCDD);
}

#[test]
fn exception_and_interrupt_injection_with_the_window_exit() {
    let Some(nvmm) = kernel_support::open("injection") else {
        return;
    };
    let mut vm = long_vm(&nvmm, &injection());
    let watchdog = Watchdog::new(vm.vcpu.stopper(), Duration::from_secs(10));
    // An exception is injected whatever the interrupt state.
    vm.vcpu
        .inject(Event::Exception {
            vector: 6,
            error_code: 0,
        })
        .unwrap();
    vm.vcpu.request_interrupt_window().unwrap();
    let mut window = None;
    loop {
        let exit = vm.vcpu.run().unwrap();
        match exit {
            Exit::IntReady => {
                window = Some(vm.vcpu.exit_state());
                vm.vcpu.inject(Event::Interrupt { vector: IRQ }).unwrap();
            }
            Exit::Halted => break,
            Exit::None | Exit::Stopped => {}
            other => panic!("unexpected exit {other:?}"),
        }
        assert!(!watchdog.fired(), "watchdog fired: no window exit");
    }
    drop(watchdog);
    let w = window.expect("an IntReady exit");
    assert!(w.can_take_interrupt(), "IntReady with {w:?}");
    assert_eq!(byte_at(&vm, DATA), 6, "#UD handler ran");
    assert_eq!(byte_at(&vm, DATA + 1), IRQ, "interrupt handler ran");
}

#[test]
fn stop_from_another_thread_ends_a_run_that_makes_no_exit() {
    let Some(nvmm) = kernel_support::open("stop_from_thread") else {
        return;
    };
    let mut vm = long_vm(&nvmm, &Program::plain(vec![0xEB, 0xFE])); // jmp $
    let watchdog = Watchdog::new(vm.vcpu.stopper(), Duration::from_millis(200));
    // The VMM-side flag (`watchdog.fired()`) is what the loop trusts: a pending
    // signal ends the run with Exit::None and the kernel then clears
    // `stop` (nvmm_return_needed(), nvmm_vcpu_run()).
    let mut exits = 0;
    loop {
        let exit = vm.vcpu.run().unwrap();
        exits += 1;
        assert!(
            matches!(exit, Exit::None | Exit::Stopped),
            "unexpected exit {exit:?}"
        );
        if watchdog.fired() {
            break;
        }
        assert!(exits < 1_000_000, "the stop never came");
    }
    // A stop between runs ends the next run before the guest runs.
    vm.vcpu.stopper().stop();
    assert_eq!(vm.vcpu.run().unwrap(), Exit::Stopped);
}

static SIGNAL_STOPPER: std::sync::OnceLock<VcpuStopper> = std::sync::OnceLock::new();

extern "C" fn stop_from_handler(_: libc::c_int) {
    // VcpuStopper::stop is one atomic store: async-signal-safe.
    if let Some(s) = SIGNAL_STOPPER.get() {
        s.stop();
    }
}

#[test]
fn stop_from_a_signal_handler() {
    let Some(nvmm) = kernel_support::open("stop_from_signal") else {
        return;
    };
    let mut vm = long_vm(&nvmm, &Program::plain(vec![0xEB, 0xFE]));
    let _ = SIGNAL_STOPPER.set(vm.vcpu.stopper());
    // SAFETY: installs a handler that only does an atomic store.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = stop_from_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    // SAFETY: this thread's id; it outlives the sender thread (joined).
    let me = unsafe { libc::pthread_self() };
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: signals a live thread that has a handler for SIGUSR2.
        unsafe { libc::pthread_kill(me, libc::SIGUSR2) };
    });
    // The signal makes the run return: Exit::None (the pending signal
    // wins, and the kernel clears the stop) or Exit::Stopped.
    let exit = vm.vcpu.run().unwrap();
    assert!(matches!(exit, Exit::None | Exit::Stopped), "{exit:?}");
    t.join().unwrap();
}

#[test]
fn several_vcpus_on_several_threads() {
    let Some(nvmm) = kernel_support::open("several_vcpus") else {
        return;
    };
    // out 0x80, al; hlt: each VCPU reports its AL.
    let Vm {
        machine,
        vcpu: first,
        ram: _ram,
    } = long_vm(&nvmm, &report_al());
    let n = nvmm.capability().max_vcpus.clamp(1, 4);
    let mut vcpus = vec![first];
    for id in 1..n {
        let mut v = machine.create_vcpu(id).unwrap();
        v.setup_long_mode(PML4, CODE, STACK).unwrap();
        vcpus.push(v);
    }
    let threads: Vec<_> = vcpus
        .into_iter()
        .map(|mut v| {
            std::thread::spawn(move || {
                let id = v.id();
                v.gprs().unwrap().set(Gpr::Rax, 0x40 + u64::from(id));
                let mut seen = None;
                loop {
                    match v.run().unwrap() {
                        Exit::Io(io) => {
                            assert_eq!(io.port, 0x80);
                            seen = Some(v.gprs().unwrap().get(Gpr::Rax) & 0xFF);
                            v.skip_instruction().unwrap();
                        }
                        Exit::Halted => break,
                        Exit::None | Exit::Stopped => {}
                        other => panic!("VCPU {id}: unexpected exit {other:?}"),
                    }
                }
                (id, seen)
            })
        })
        .collect();
    for t in threads {
        let (id, seen) = t.join().unwrap();
        assert_eq!(seen, Some(0x40 + u64::from(id)), "VCPU {id}");
    }
    say(&format!("several_vcpus: {n} VCPUs ran on {n} threads"));
}

/// A memory-like MMIO region counting accesses.
struct Mmio {
    bytes: Vec<u8>,
    writes: usize,
}

impl MmioBus for Mmio {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        let off = (gpa - MMIO) as usize;
        buf.copy_from_slice(&self.bytes[off..off + buf.len()]);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        let off = (gpa - MMIO) as usize;
        self.bytes[off..off + data.len()].copy_from_slice(data);
        self.writes += 1;
        Ok(())
    }
}

struct NoPorts;

impl PortIo for NoPorts {
    fn read(&mut self, _: u16, _: &mut [u8]) -> Result<(), BusError> {
        Err(BusError(libc::EIO))
    }
    fn write(&mut self, _: u16, _: &[u8]) -> Result<(), BusError> {
        Err(BusError(libc::EIO))
    }
}

#[test]
fn memory_exits_and_rep_batches_across_real_re_exits() {
    let Some(nvmm) = kernel_support::open("memory_exits") else {
        return;
    };
    let mut vm = long_vm(&nvmm, &memory());
    let mut mmio = Mmio {
        bytes: vec![0; 0x10000],
        writes: 0,
    };
    let (mut exits, mut resumes, mut with_bytes) = (0, 0, 0);
    loop {
        let exit = vm.vcpu.run().unwrap();
        match exit {
            Exit::Memory(m) => {
                exits += 1;
                if !m.instruction.is_empty() {
                    with_bytes += 1;
                }
                if vm.vcpu.assist_mem_dyn(&mut mmio).unwrap() == Outcome::Resume {
                    resumes += 1;
                }
            }
            Exit::Io(_) => {
                vm.vcpu.assist_io_dyn(&mut mmio, &mut NoPorts).unwrap();
            }
            Exit::Halted => break,
            Exit::None | Exit::Stopped => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
    say(&format!(
        "memory_exits: {exits} memory exits ({with_bytes} with instruction bytes from the \
         kernel: {}), {resumes} REP batches resumed by re-exits",
        if with_bytes > 0 {
            "SVM decode assists"
        } else {
            "none, fetched by the assist"
        }
    ));
    assert_eq!(&mmio.bytes[..4], &MMIO_STORED.to_le_bytes());
    let mut ram = vec![0u8; MOVSB_LEN as usize];
    vm.machine.read_guest(0, &mut ram).unwrap();
    assert_eq!(&mmio.bytes[8..8 + MOVSB_LEN as usize], &ram[..]);
    assert!(resumes >= 2, "{resumes} resumes: the REP crossed pages");
    assert_eq!(vm.vcpu.gprs().unwrap().get(Gpr::Rcx), 0);
}

#[test]
fn tpr_changes_exit_where_the_kernel_offers_it() {
    let Some(nvmm) = kernel_support::open("tpr") else {
        return;
    };
    if !nvmm.capability().supports_tpr_conf() {
        say("tpr: this kernel does not offer TPR configuration (SVM): nothing to test");
        return;
    }
    // mov eax, 5; mov cr8, rax; hlt
    let code = [mov32(EAX, 5), vec![0x44, 0x0F, 0x22, 0xC0], vec![HLT]].concat();
    let mut vm = long_vm(&nvmm, &Program::plain(code));
    vm.vcpu.configure_tpr(true).unwrap();
    let mut changed = false;
    loop {
        match vm.vcpu.run().unwrap() {
            Exit::TprChanged => changed = true,
            Exit::Halted => break,
            Exit::None | Exit::Stopped => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert!(changed);
    assert_eq!(vm.vcpu.exit_state().cr8, 5);
}

#[test]
fn machine_info_as_root() {
    let Some(nvmm) = kernel_support::open("machine_info_as_root") else {
        return;
    };
    let root = match Nvmm::open_root() {
        Ok(r) => r,
        Err(e) if e.errno() == libc::EACCES || e.errno() == libc::EPERM => {
            say(&format!("machine_info_as_root: skipped: not root ({e})"));
            return;
        }
        Err(e) => panic!("open_root: {e}"),
    };
    let vm = long_vm(&nvmm, &Program::plain(vec![HLT]));
    let info = root.machine_info(vm.machine.id()).unwrap();
    // NVMM_CTL_MACH_INFO (nvmm.c): nram sums the machine's HVA mappings.
    assert_eq!(info.nvcpus, 1);
    assert_eq!(info.nram, kernel_support::RAM as u64);
    drop(vm);
}

#[test]
fn mapping_errors_and_a_gpa_remap() {
    let Some(nvmm) = kernel_support::open("mapping_errors") else {
        return;
    };
    let machine = nvmm.create_machine().unwrap();
    let ram = machine.hva_map(0x2000).unwrap();
    assert!(
        machine
            .gpa_map(&ram, 0x1000, 0, 0x2000, nvmm::Prot::ALL)
            .is_err(),
        "a GPA range larger than what is left of the host mapping"
    );
    assert!(
        machine
            .gpa_map(&ram, 0, 0x123, 0x1000, nvmm::Prot::ALL)
            .is_err(),
        "an unaligned GPA"
    );
    machine
        .gpa_map(&ram, 0, 0x10_0000, 0x2000, nvmm::Prot::ALL)
        .unwrap();
    machine.write_guest(0x10_0000, b"nvmm").unwrap();
    let mut back = [0u8; 4];
    machine.read_guest(0x10_0000, &mut back).unwrap();
    assert_eq!(&back, b"nvmm");
    // A GPA no mapping covers is not guest memory on the host side either.
    assert!(machine.read_guest(0x20_0000, &mut back).is_err());
}
