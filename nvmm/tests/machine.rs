//! Machines: RAII, configure, control, ownership by descriptor.

use nvmm::model::{FailPoint, KernelModel, ModelConfig};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{Error, Nvmm, Op, Prot, Rejection};

#[test]
fn create_and_drop_destroy_the_machine() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let id = m.id();
    assert!(model.machine_exists(id));
    drop(m);
    assert!(!model.machine_exists(id));
}

#[test]
fn machine_keeps_the_descriptor_open() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    drop(nvmm);
    assert_eq!(model.open_fds(), 1, "the machine holds the fd");
    assert!(model.machine_exists(m.id()));
    let id = m.id();
    drop(m);
    assert!(!model.machine_exists(id));
    assert_eq!(model.open_fds(), 0);
}

#[test]
fn too_many_machines_is_enobufs() {
    let model = KernelModel::with_config(ModelConfig {
        max_machines: 2,
        ..Default::default()
    });
    let nvmm = Nvmm::open_with(model, OpenMode::User).unwrap();
    let _a = nvmm.create_machine().unwrap();
    let _b = nvmm.create_machine().unwrap();
    let e = nvmm.create_machine().unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::MachineCreate, errno } if errno == libc::ENOBUFS));
}

#[test]
fn machine_configure_raw_reaches_the_kernel_which_has_no_x86_op() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model, OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let mut dummy = 0u64;
    // SAFETY: the kernel refuses the op before reading `conf`.
    let e = unsafe { m.configure_raw(200, (&raw mut dummy).cast()) }.unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::MachineConfigure, errno } if errno == libc::EINVAL));
}

#[test]
fn machine_info_control_operation() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let ram = m.hva_map(0x8000).unwrap();
    m.gpa_map(&ram, 0, 0, 0x4000, Prot::ALL).unwrap();
    let _v0 = m.create_vcpu(0).unwrap();
    let _v1 = m.create_vcpu(1).unwrap();
    let info = nvmm.machine_info(m.id()).unwrap();
    assert_eq!(info.machid, m.id());
    assert_eq!(info.nvcpus, 2);
    // The model follows nvmm.c nvmm_ctl_mach_info: the host mappings, not
    // the 0x4000 guest-mapped bytes.
    assert_eq!(info.nram, 0x8000);
    assert_eq!(info.pid, 4242);
    assert_eq!(info.time, 1_700_000_000 + i64::from(m.id()));
    let e = nvmm.machine_info(77).unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::Ctl, errno } if errno == libc::ENOENT));
    let e = nvmm.machine_info(1000).unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::Ctl, errno } if errno == libc::EINVAL));
}

#[test]
fn machines_belong_to_their_descriptor() {
    let model = KernelModel::new();
    let owner = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let other = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let root = Nvmm::open_with(model.clone(), OpenMode::Root).unwrap();
    let m = owner.create_machine().unwrap();
    let e = other.machine_info(m.id()).unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::Ctl, errno } if errno == libc::EPERM));
    assert_eq!(root.machine_info(m.id()).unwrap().nvcpus, 0);
}

#[test]
fn closing_the_descriptor_destroys_its_machines_in_the_model() {
    // The kernel behaviour the crate's Arc structure relies on: the machine
    // is gone with the fd, so the crate never closes the fd first.
    let model = KernelModel::new();
    use nvmm::sys::Kernel;
    use std::os::fd::AsFd;
    let fd = model.open(c"/dev/nvmm", OpenMode::User).unwrap();
    let mut args = sys::nvmm_ioc_machine_create { machid: 0 };
    // SAFETY: the right argument structure for the request.
    unsafe {
        model
            .ioctl(
                fd.as_fd(),
                sys::NVMM_IOC_MACHINE_CREATE,
                (&raw mut args).cast(),
            )
            .unwrap()
    };
    assert!(model.machine_exists(args.machid));
    model.close(fd);
    assert!(!model.machine_exists(args.machid));
}

#[test]
fn failed_destroy_in_drop_does_not_panic() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let ram = m.hva_map(0x1000).unwrap();
    let before = model.live_mappings();
    model.fail_next(FailPoint::Ioctl(sys::NVMM_IOC_MACHINE_DESTROY), libc::EIO);
    drop(m);
    // Memory the kernel may still map into the guest is leaked, not freed.
    assert_eq!(model.live_mappings(), before);
    let _ = ram;
}

#[test]
fn a_machine_id_of_256_or_more_is_refused_and_destroyed() {
    // NVMM_COMM_OFF keeps 8 bits of the machine id: machine 256 would map
    // machine 0's comm pages. The real kernel never hands out such an id
    // (128 machines at most); this model is configured to.
    let model = KernelModel::with_config(ModelConfig {
        max_machines: 258,
        ..Default::default()
    });
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let kept: Vec<_> = (0..256).map(|_| nvmm.create_machine().unwrap()).collect();
    assert_eq!(kept.last().unwrap().id(), 255);
    let e = nvmm.create_machine().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Rejected {
                op: Op::MachineCreate,
                reason: Rejection::InvalidMachineId(256)
            }
        ),
        "{e:?}"
    );
    assert!(!model.machine_exists(256), "destroyed again");
}
