//! Failures inside Drop go to the teardown hook and never panic.

mod model;

use std::sync::Mutex;

use model::{FailPoint, KernelModel};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{Error, Nvmm, Op};

static SEEN: Mutex<Vec<(Op, i32)>> = Mutex::new(Vec::new());

fn hook(e: &Error) {
    SEEN.lock().unwrap().push((e.op(), e.errno()));
}

#[test]
fn failed_vcpu_and_machine_destroy_reach_the_hook() {
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
