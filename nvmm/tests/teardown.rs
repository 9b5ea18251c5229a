//! Failures inside Drop go to the teardown hook and never panic.

use std::sync::Mutex;

use nvmm::model::{FailPoint, KernelModel};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{Error, Nvmm, Op};

static SEEN: Mutex<Vec<(Op, i32)>> = Mutex::new(Vec::new());
/// The hook is process-wide: the tests of this file take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn hook(e: &Error) {
    SEEN.lock().unwrap().push((e.op(), e.errno()));
}

#[test]
fn failed_vcpu_and_machine_destroy_reach_the_hook() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    SEEN.lock().unwrap().clear();
    nvmm::set_teardown_error_hook(Some(hook));
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let v = m.create_vcpu(0).unwrap();
    model.fail_next(FailPoint::Ioctl(sys::NVMM_IOC_VCPU_DESTROY), libc::EIO);
    drop(v);
    model.fail_next(
        FailPoint::Ioctl(sys::NVMM_IOC_MACHINE_DESTROY),
        libc::ENOENT,
    );
    drop(m);
    nvmm::set_teardown_error_hook(None);
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (Op::VcpuDestroy, libc::EIO),
            (Op::MachineDestroy, libc::ENOENT)
        ]
    );
}

fn panicking_hook(_: &Error) {
    panic!("a hook that panics");
}

/// Before: the panic escaped `Vcpu::drop` (and, during unwinding, aborted).
#[test]
fn a_panicking_hook_does_not_escape_drop() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    nvmm::set_teardown_error_hook(Some(panicking_hook));
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let v = m.create_vcpu(0).unwrap();
    model.fail_next(FailPoint::Ioctl(sys::NVMM_IOC_VCPU_DESTROY), libc::EIO);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(v)));
    nvmm::set_teardown_error_hook(None);
    assert!(dropped.is_ok(), "the hook's panic escaped Drop");
}

fn reentrant_hook(e: &Error) {
    // Replaces itself, as a hook that reports only the first failure would.
    nvmm::set_teardown_error_hook(Some(hook));
    hook(e);
}

/// Before: the hook ran under the hook lock's read guard, and setting the
/// hook from inside it deadlocked.
#[test]
fn a_hook_may_set_the_hook() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    SEEN.lock().unwrap().clear();
    nvmm::set_teardown_error_hook(Some(reentrant_hook));
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let v = m.create_vcpu(0).unwrap();
    model.fail_next(FailPoint::Ioctl(sys::NVMM_IOC_VCPU_DESTROY), libc::EIO);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(v);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("setting the hook from the hook deadlocked");
    nvmm::set_teardown_error_hook(None);
    assert_eq!(
        SEEN.lock().unwrap().clone(),
        vec![(Op::VcpuDestroy, libc::EIO)]
    );
}
