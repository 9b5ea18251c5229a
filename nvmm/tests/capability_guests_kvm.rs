//! The long-mode guest programs of the real-kernel capability tests
//! (`tests/guests/long.rs`, run on NVMM by `kernel_capabilities.rs`) on
//! KVM: MSR exits (`KVM_CAP_X86_USER_SPACE_MSR` makes the unhandled MSR
//! exit to userland, as on NVMM), an injected #UD (`KVM_SET_VCPU_EVENTS`)
//! and an interrupt at the window (`request_interrupt_window`,
//! `KVM_INTERRUPT`), MMIO with a `rep movsb` across pages, and port I/O.
//! This proves the encodings, the GDT/IDT layout and the expected results
//! on hardware virtualization; the CPUID program is not run here (KVM on
//! this project's host does not apply `KVM_SET_CPUID2`, see
//! `toyvm_kvm.rs`). Skips without /dev/kvm or the MSR capability.

// Real /dev/kvm ioctls, which miri cannot run.
#![cfg(not(miri))]
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use crate::kvm_support;
use crate::long_guests as guests;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use guests::*;
use kvm_ioctls::{Kvm, VcpuExit};
use kvm_support::{KvmVm, say, set_flat_long_mode, user_space_msr_exits};

/// `KVM_INTERRUPT` (no kvm-ioctls wrapper; valid without an irqchip).
const KVM_INTERRUPT: libc::c_ulong = 0x4004_AE86;

fn vm(kvm: &Kvm, program: &Program) -> Result<KvmVm, String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    user_space_msr_exits(&vm)?;
    let v = KvmVm::new(vm, RAM, &[(0, RAM as u64)], |mem| {
        for (gpa, bytes) in program.image() {
            mem[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(&bytes);
        }
    })?;
    let mut s = v.vcpu.get_sregs().map_err(|e| e.to_string())?;
    set_flat_long_mode(&mut s, PML4);
    (s.gdt.base, s.gdt.limit) = (GDT, GDT_LIMIT as u16);
    (s.idt.base, s.idt.limit) = (IDT, IDT_LIMIT as u16);
    v.vcpu.set_sregs(&s).map_err(|e| e.to_string())?;
    let mut r = v.vcpu.get_regs().map_err(|e| e.to_string())?;
    (r.rip, r.rsp, r.rflags) = (CODE, STACK, 2);
    v.vcpu.set_regs(&r).map_err(|e| e.to_string())?;
    Ok(v)
}

/// `Some(vm)`, or `None` after saying why the test is skipped.
fn vm_or_skip(test: &str, program: &Program) -> Option<KvmVm> {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            say(&format!("{test}: skipped: /dev/kvm: {e}"));
            return None;
        }
    };
    match vm(&kvm, program) {
        Ok(v) => Some(v),
        Err(e) if e.starts_with("KVM_CAP") => {
            say(&format!("{test}: skipped: {e}"));
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

#[test]
fn msr_program_on_kvm() {
    let Some(mut v) = vm_or_skip("msr_program_on_kvm", &msr()) else {
        return;
    };
    let mut written = None;
    loop {
        match v.vcpu.run().expect("KVM_RUN") {
            VcpuExit::X86Wrmsr(e) => written = Some((e.index, e.data)),
            VcpuExit::X86Rdmsr(e) => {
                assert_eq!(e.index, UNHANDLED_MSR);
                *e.data = 0xAABB_CCDD_EEFF_0011;
            }
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(written, Some((UNHANDLED_MSR, MSR_WRITTEN)));
    let at = DATA as usize;
    assert_eq!(
        &v.ram()[at..at + 8],
        &0xAABB_CCDD_EEFF_0011u64.to_le_bytes()
    );
}

extern "C" fn kick(_: libc::c_int) {}

#[test]
fn injection_program_on_kvm() {
    let Some(mut v) = vm_or_skip("injection_program_on_kvm", &injection()) else {
        return;
    };
    // A #UD to deliver at the first entry, as NVMM's exception event.
    let mut events = v.vcpu.get_vcpu_events().expect("KVM_GET_VCPU_EVENTS");
    events.exception.injected = 1;
    events.exception.nr = 6;
    events.exception.has_error_code = 0;
    v.vcpu
        .set_vcpu_events(&events)
        .expect("KVM_SET_VCPU_EVENTS");
    // The guest spins (`jmp $`) until the interrupt: a watchdog kicks it
    // out of KVM_RUN if the window never opens.
    // SAFETY: a do-nothing handler, without SA_RESTART.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    // SAFETY: this thread's id; it joins the watchdog below.
    let me = unsafe { libc::pthread_self() };
    let (done, wait) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(Duration::from_secs(30)) {
            // SAFETY: the test thread is alive (it joins this thread).
            unsafe { libc::pthread_kill(me, libc::SIGUSR2) };
        }
    });
    let mut injected = false;
    let outcome = loop {
        v.vcpu.get_kvm_run().request_interrupt_window = u8::from(!injected);
        match v.vcpu.run() {
            Ok(VcpuExit::IrqWindowOpen) => {
                let irq = kvm_bindings::kvm_interrupt {
                    irq: u32::from(IRQ),
                };
                // SAFETY: KVM_INTERRUPT on our VCPU fd with a live argument.
                let rc = unsafe { libc::ioctl(v.vcpu.as_raw_fd(), KVM_INTERRUPT, &irq) };
                assert_eq!(rc, 0, "KVM_INTERRUPT");
                injected = true;
            }
            Ok(VcpuExit::Hlt) => break Ok(()),
            Ok(other) => break Err(format!("unexpected exit {other:?}")),
            Err(e) => break Err(format!("KVM_RUN: {e} (the window never opened?)")),
        }
    };
    drop(done);
    watchdog.join().unwrap();
    outcome.unwrap();
    assert_eq!(v.ram()[DATA as usize], 6, "#UD handler ran");
    assert_eq!(v.ram()[DATA as usize + 1], IRQ, "interrupt handler ran");
}

#[test]
fn memory_program_on_kvm() {
    let Some(mut v) = vm_or_skip("memory_program_on_kvm", &memory()) else {
        return;
    };
    let mut mmio = BTreeMap::new();
    loop {
        match v.vcpu.run().expect("KVM_RUN") {
            VcpuExit::MmioWrite(a, d) => {
                for (i, b) in d.iter().enumerate() {
                    mmio.insert(a + i as u64, *b);
                }
            }
            VcpuExit::MmioRead(_, d) => d.fill(0),
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    let at = |a: u64| mmio.get(&a).copied();
    let stored: Vec<u8> = (0..4).filter_map(|i| at(MMIO + i)).collect();
    assert_eq!(stored, MMIO_STORED.to_le_bytes());
    let copied: Vec<u8> = (0..u64::from(MOVSB_LEN))
        .map(|i| at(MMIO + 8 + i).expect("every byte written"))
        .collect();
    assert_eq!(&copied[..], &v.ram()[..MOVSB_LEN as usize]);
}

#[test]
fn report_al_program_on_kvm() {
    let Some(mut v) = vm_or_skip("report_al_program_on_kvm", &report_al()) else {
        return;
    };
    let mut r = v.vcpu.get_regs().unwrap();
    r.rax = 0x41;
    v.vcpu.set_regs(&r).unwrap();
    let mut seen = None;
    loop {
        match v.vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x80, d) => seen = Some(d.to_vec()),
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(seen, Some(vec![0x41]));
}
