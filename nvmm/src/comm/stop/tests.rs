//! Stopper tests (their path contains `comm`, so the miri filter runs them).

use std::sync::Arc;
use std::thread;

use crate::model::{KernelModel, ScriptedExit};
use crate::sys::OpenMode;
use crate::{Exit, Nvmm};
use nvmm_sys as sys;

fn assert_send_sync_clone<T: Send + Sync + Clone>() {}

#[test]
fn stopper_is_send_sync_clone() {
    assert_send_sync_clone::<crate::VcpuStopper>();
}

#[test]
fn stop_before_run_returns_stopped_and_is_cleared() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    model.push_exit(
        machine.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED),
    );
    let stopper = vcpu.stopper();
    stopper.stop();
    assert_eq!(model.comm_stop(machine.id(), 0), 1);
    assert_eq!(vcpu.run().unwrap(), Exit::Stopped);
    assert_eq!(model.comm_stop(machine.id(), 0), 0, "kernel clears stop");
    // The scripted exit was not consumed by the stopped run.
    assert_eq!(vcpu.run().unwrap(), Exit::Halted);
}

#[test]
fn stop_from_another_thread() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    let stopper = vcpu.stopper();
    let clones: Vec<_> = (0..3).map(|_| stopper.clone()).collect();
    let handles: Vec<_> = clones
        .into_iter()
        .map(|s| thread::spawn(move || s.stop()))
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(vcpu.run().unwrap(), Exit::Stopped);
}

#[test]
fn stopper_outlives_vcpu_without_touching_unmapped_memory() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let vcpu = machine.create_vcpu(0).unwrap();
    let stopper = vcpu.stopper();
    let mappings = model.live_mappings();
    drop(vcpu);
    assert!(!model.vcpu_exists(machine.id(), 0), "destroyed at drop");
    assert_eq!(model.live_mappings(), mappings, "page kept for the stopper");
    let t = {
        let s = stopper.clone();
        thread::spawn(move || s.stop())
    };
    t.join().unwrap();
    stopper.stop();
    drop(stopper);
    assert_eq!(
        model.live_mappings(),
        mappings - 1,
        "unmapped with the last handle"
    );
    let _ = Arc::strong_count(&model);
}

#[test]
fn stop_during_a_run_replaces_the_exit_and_is_cleared() {
    // The model follows nvmm_return_needed (nvmm_internal.h), checked after
    // every exit: a stop requested while the guest runs is reported in
    // place of the I/O exit the guest was making, and cleared at the end.
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    let stopper = vcpu.stopper();
    model.push_exit(
        machine.id(),
        0,
        ScriptedExit::io(0x80, false, 1, 0x10).with_guest(move |_| stopper.stop()),
    );
    model.push_exit(
        machine.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED),
    );
    assert_eq!(vcpu.run().unwrap(), Exit::Stopped);
    assert_eq!(
        model.comm_stop(machine.id(), 0),
        0,
        "cleared at the end of the run"
    );
    // The kernel did not complete the OUT (RIP was not advanced): the
    // guest executes it again and the next run takes the I/O exit.
    assert!(
        matches!(vcpu.run().unwrap(), Exit::Io(io) if io.port == 0x80),
        "the interrupted instruction exits again"
    );
    assert_eq!(vcpu.run().unwrap(), Exit::Halted, "the next run goes on");
}

/// Before VCPUs retired their comm-page mapping when dropped, the stale
/// stopper's store reached the page the kernel (and the model, which
/// aliases the page of a machine+cpuid as the kernel does) gives to the
/// next VCPU with the same id: `comm_stop` read 1 and the run returned
/// `Exit::Stopped`.
#[test]
fn a_stale_stopper_never_stops_a_vcpu_created_again_with_the_same_id() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let old = machine.create_vcpu(0).unwrap();
    let stale = old.stopper();
    drop(old);
    let mut new = machine.create_vcpu(0).unwrap();
    let from_another_thread = stale.clone();
    thread::spawn(move || from_another_thread.stop())
        .join()
        .unwrap();
    stale.stop();
    assert_eq!(
        model.comm_stop(machine.id(), 0),
        0,
        "the new VCPU's stop word"
    );
    model.push_exit(
        machine.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED),
    );
    assert_eq!(new.run().unwrap(), Exit::Halted);
    // The new VCPU's own stopper still works.
    new.stopper().stop();
    assert_eq!(new.run().unwrap(), Exit::Stopped);
    drop(stale);
}

/// A stopper racing with the re-creation of its VCPU's id (the model
/// clears the page atomically around `stop`, as the kernel's `stop` must
/// only be accessed atomically): run under miri, no data race.
#[test]
fn a_stale_stopper_racing_with_vcpu_creation() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let stale = machine.create_vcpu(0).unwrap().stopper();
    let t = thread::spawn(move || {
        for _ in 0..4 {
            stale.stop();
            thread::yield_now();
        }
    });
    for _ in 0..4 {
        let v = machine.create_vcpu(0).unwrap();
        assert_eq!(model.comm_stop(machine.id(), 0), 0);
        drop(v);
    }
    t.join().unwrap();
}
