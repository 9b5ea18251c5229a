//! Opening NVMM: capability, version checks, a host without NVMM.

use std::sync::Arc;

use nvmm::model::{KernelModel, ModelConfig};
use nvmm::sys::OpenMode;
use nvmm::{Error, Nvmm, Op};

#[test]
fn capability_is_read_once_as_typed_fields() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let cap = *nvmm.capability();
    assert_eq!(cap.version, 2);
    assert_eq!(
        cap.state_size as usize,
        size_of::<nvmm::nvmm_sys::nvmm_x64_state>()
    );
    assert_eq!(cap.max_machines, 128);
    assert_eq!(cap.max_vcpus, 256);
    assert_eq!(cap.max_ram, 128 << 30);
    assert_eq!(cap.conf_cpuid_maxops, 32);
    assert_eq!(cap.xcr0_mask, 3);
    assert_eq!(cap.mxcsr_mask, 0xFFBF);
    assert!(cap.supports_cpuid_conf() && cap.supports_tpr_conf());
    // open + one CAPABILITY ioctl, nothing more.
    assert_eq!(model.syscalls(), 2);
    let _ = nvmm.capability();
    assert_eq!(model.syscalls(), 2);
    assert_eq!(model.open_fds(), 1);
    drop(nvmm);
    assert_eq!(model.open_fds(), 0);
}

#[test]
fn missing_device_says_what_nvmm_needs() {
    let model = KernelModel::with_config(ModelConfig {
        absent: Some(libc::ENXIO),
        ..Default::default()
    });
    let e = Nvmm::open_with(model, OpenMode::User).unwrap_err();
    assert!(matches!(e, Error::NotAvailable { errno } if errno == libc::ENXIO));
    let msg = e.to_string();
    assert!(msg.contains("NetBSD/x86_64"), "{msg}");
    assert!(msg.contains("nvmm kernel module"), "{msg}");
    assert_eq!(e.op(), Op::Open);
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
}

// A real open(2): miri (with isolation) cannot make it.
#[cfg(not(miri))]
#[test]
fn real_host_without_nvmm_gives_the_clear_error() {
    if std::path::Path::new("/dev/nvmm").exists() {
        println!("skipped: this host has /dev/nvmm");
        return;
    }
    let e = Nvmm::open().unwrap_err();
    assert!(matches!(e, Error::NotAvailable { .. }), "{e:?}");
    assert!(e.to_string().contains("NetBSD/x86_64"));
    let e = Nvmm::open_root().unwrap_err();
    assert!(matches!(e, Error::NotAvailable { .. }), "{e:?}");
}

#[test]
fn other_kernel_version_is_refused_naming_both_and_closing_the_fd() {
    let model = KernelModel::with_config(ModelConfig {
        version: 1,
        ..Default::default()
    });
    let e = Nvmm::open_with(model.clone(), OpenMode::User).unwrap_err();
    assert!(matches!(
        e,
        Error::VersionMismatch {
            kernel: 1,
            supported: 2
        }
    ));
    let msg = e.to_string();
    assert!(
        msg.contains("version 1") && msg.contains("version 2"),
        "{msg}"
    );
    assert_eq!(model.open_fds(), 0, "descriptor closed on refusal");
}

#[test]
fn other_state_size_is_refused_naming_both() {
    let model = KernelModel::with_config(ModelConfig {
        state_size: 1024,
        ..Default::default()
    });
    let e = Nvmm::open_with(model.clone(), OpenMode::User).unwrap_err();
    let expected = size_of::<nvmm::nvmm_sys::nvmm_x64_state>() as u32;
    assert!(matches!(e, Error::StateSizeMismatch { kernel: 1024, expected: x } if x == expected));
    assert!(e.to_string().contains("1024") && e.to_string().contains(&expected.to_string()));
    assert_eq!(model.open_fds(), 0);
}

#[test]
fn capability_ioctl_failure_names_the_ioctl() {
    let model = KernelModel::new();
    model.fail_next(
        nvmm::model::FailPoint::Ioctl(nvmm::nvmm_sys::NVMM_IOC_CAPABILITY),
        libc::EIO,
    );
    let e = Nvmm::open_with(model.clone(), OpenMode::User).unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::Capability, errno } if errno == libc::EIO));
    assert!(
        e.to_string().starts_with("NVMM_IOC_CAPABILITY failed"),
        "{e}"
    );
    assert_eq!(model.open_fds(), 0);
    let io: std::io::Error = e.into();
    assert_eq!(
        io.kind(),
        std::io::Error::from_raw_os_error(libc::EIO).kind()
    );
}

#[test]
fn nvmm_is_send_sync_and_clones_share_the_fd() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Nvmm>();
    let model = KernelModel::new();
    let a = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let b = a.clone();
    assert_eq!(a.as_raw_fd(), b.as_raw_fd());
    drop(a);
    assert_eq!(model.open_fds(), 1);
    drop(b);
    assert_eq!(model.open_fds(), 0);
    let _ = Arc::strong_count(&model);
}
