//! toyvm's NVMM loop against the in-process kernel MODEL (not NetBSD):
//! scripted exits check how it handles the kernel's stop rules
//! (`nvmm_return_needed()` in sys/dev/nvmm/nvmm_internal.h: a pending
//! signal ends a run with `NONE` and the kernel clears `stop`; a stop ends
//! it with `STOPPED`): the VMM-side flag decides, not the exit reason.
#![cfg(feature = "assist")]

use crate::toyvm;

use std::sync::atomic::AtomicBool;

use nvmm::Nvmm;
use nvmm::model::{KernelModel, ScriptedExit};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use toyvm::devices::Devices;

fn vcpu() -> (std::sync::Arc<KernelModel>, nvmm::Machine) {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    (model, m)
}

#[test]
fn a_run_ended_by_a_signal_with_the_flag_set_is_the_timeout() {
    let (model, m) = vcpu();
    let mut v = m.create_vcpu(0).unwrap();
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_NONE));
    let mut seen = toyvm::Seen::default();
    let timed_out = AtomicBool::new(true);
    toyvm::run_loop(&mut v, &mut Devices::new(), &mut seen, &timed_out).unwrap();
    assert!(!seen.halted);
    let f = seen.failure.expect("a failure");
    assert!(f.contains("stopped by the watchdog"), "{f}");
    assert_eq!(seen.exits, 1);
}

#[test]
fn stops_and_signals_without_the_flag_run_again_until_hlt() {
    let (model, m) = vcpu();
    let mut v = m.create_vcpu(0).unwrap();
    for r in [
        sys::NVMM_VCPU_EXIT_STOPPED,
        sys::NVMM_VCPU_EXIT_NONE,
        sys::NVMM_VCPU_EXIT_HALTED,
    ] {
        model.push_exit(m.id(), 0, ScriptedExit::reason(r));
    }
    let mut seen = toyvm::Seen::default();
    let timed_out = AtomicBool::new(false);
    toyvm::run_loop(&mut v, &mut Devices::new(), &mut seen, &timed_out).unwrap();
    assert!(seen.halted && seen.failure.is_none());
    assert_eq!(seen.exits, 3);
}

#[test]
fn int_ready_injects_the_vector_and_records_the_window() {
    let (model, m) = vcpu();
    let mut v = m.create_vcpu(0).unwrap();
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_INT_READY).with_guest(|hw| {
            hw.gprs[sys::NVMM_X64_GPR_RFLAGS] = 0x202; // IF set
        }),
    );
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
    let mut seen = toyvm::Seen::default();
    toyvm::run_loop(
        &mut v,
        &mut Devices::new(),
        &mut seen,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(seen.window_open_at_int_ready, Some(true));
    assert_eq!(
        model.injected(m.id(), 0),
        vec![(sys::NVMM_VCPU_EVENT_INTR, toyvm::guest::IRQ_VECTOR, 0)]
    );
}

#[test]
fn a_triple_fault_is_a_failure_with_the_dump() {
    let (model, m) = vcpu();
    let mut v = m.create_vcpu(0).unwrap();
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_SHUTDOWN),
    );
    let mut seen = toyvm::Seen::default();
    toyvm::run_loop(
        &mut v,
        &mut Devices::new(),
        &mut seen,
        &AtomicBool::new(false),
    )
    .unwrap();
    let f = seen.failure.expect("a failure");
    assert!(f.contains("triple fault") && f.contains("RIP="), "{f}");
}
