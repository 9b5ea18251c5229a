//! toyvm's NVMM loop against the in-process kernel MODEL (not NetBSD):
//! scripted exits check how it handles the kernel's stop rules
//! (`nvmm_return_needed()` in sys/dev/nvmm/nvmm_internal.h: a pending
//! signal ends a run with `NONE` and the kernel clears `stop`; a stop ends
//! it with `STOPPED`): the VMM-side flag decides, not the exit reason.
#![cfg(feature = "assist")]

use crate::toyvm;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use nvmm::model::{KernelModel, ScriptedExit};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{Machine, Nvmm, Vcpu};
use toyvm::devices::Devices;

/// What toyvm's loop saw on a fresh VCPU 0 whose runs end with the
/// scripted exits, and the model to ask about the rest. (Fields drop in
/// this order: the VCPU before its machine.)
struct Ran {
    seen: toyvm::Seen,
    _vcpu: Vcpu,
    m: Machine,
    model: Arc<KernelModel>,
}

/// Runs toyvm's loop on VCPU 0 of a new machine, its runs ending with
/// `exits` in order, with the watchdog's flag `timed_out`.
fn run_loop(exits: impl IntoIterator<Item = ScriptedExit>, timed_out: bool) -> Ran {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    for e in exits {
        model.push_exit(m.id(), 0, e);
    }
    let mut seen = toyvm::Seen::default();
    let timed_out = AtomicBool::new(timed_out);
    toyvm::run_loop(&mut v, &mut Devices::new(), &mut seen, &timed_out).unwrap();
    Ran {
        seen,
        _vcpu: v,
        m,
        model,
    }
}

#[test]
fn a_run_ended_by_a_signal_with_the_flag_set_is_the_timeout() {
    let Ran { seen, .. } = run_loop([ScriptedExit::reason(sys::NVMM_VCPU_EXIT_NONE)], true);
    assert!(!seen.halted);
    let f = seen.failure.expect("a failure");
    assert!(f.contains("stopped by the watchdog"), "{f}");
    assert_eq!(seen.exits, 1);
}

#[test]
fn stops_and_signals_without_the_flag_run_again_until_hlt() {
    let exits = [
        sys::NVMM_VCPU_EXIT_STOPPED,
        sys::NVMM_VCPU_EXIT_NONE,
        sys::NVMM_VCPU_EXIT_HALTED,
    ]
    .map(ScriptedExit::reason);
    let Ran { seen, .. } = run_loop(exits, false);
    assert!(seen.halted && seen.failure.is_none());
    assert_eq!(seen.exits, 3);
}

#[test]
fn int_ready_injects_the_vector_and_records_the_window() {
    let exits = [
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_INT_READY).with_guest(|hw| {
            hw.gprs[sys::NVMM_X64_GPR_RFLAGS] = 0x202; // IF set
        }),
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED),
    ];
    let ran = run_loop(exits, false);
    assert_eq!(ran.seen.window_open_at_int_ready, Some(true));
    assert_eq!(
        ran.model.injected(ran.m.id(), 0),
        vec![(sys::NVMM_VCPU_EVENT_INTR, toyvm::guest::IRQ_VECTOR, 0)]
    );
}

#[test]
fn a_triple_fault_is_a_failure_with_the_dump() {
    let exits = [ScriptedExit::reason(sys::NVMM_VCPU_EXIT_SHUTDOWN)];
    let Ran { seen, .. } = run_loop(exits, false);
    let f = seen.failure.expect("a failure");
    assert!(f.contains("triple fault") && f.contains("RIP="), "{f}");
}
