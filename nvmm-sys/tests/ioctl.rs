//! Every `NVMM_IOC_*` request number, as clang evaluated it from the headers,
//! equals our own `_IOC` encoding of the header's direction, group, number and
//! argument structure.

use nvmm_sys::ioctl::{iocgroup, iocparm_len, ior, iow, iowr};
use nvmm_sys::*;

const N: u8 = b'N';

#[test]
fn every_request_number_matches_our_encoder() {
    let requests: [(&str, core::ffi::c_ulong, core::ffi::c_ulong); 16] = [
        (
            "CAPABILITY",
            NVMM_IOC_CAPABILITY,
            ior::<nvmm_ioc_capability>(N, 0),
        ),
        (
            "MACHINE_CREATE",
            NVMM_IOC_MACHINE_CREATE,
            iowr::<nvmm_ioc_machine_create>(N, 1),
        ),
        (
            "MACHINE_DESTROY",
            NVMM_IOC_MACHINE_DESTROY,
            iow::<nvmm_ioc_machine_destroy>(N, 2),
        ),
        (
            "MACHINE_CONFIGURE",
            NVMM_IOC_MACHINE_CONFIGURE,
            iow::<nvmm_ioc_machine_configure>(N, 3),
        ),
        (
            "VCPU_CREATE",
            NVMM_IOC_VCPU_CREATE,
            iow::<nvmm_ioc_vcpu_create>(N, 4),
        ),
        (
            "VCPU_DESTROY",
            NVMM_IOC_VCPU_DESTROY,
            iow::<nvmm_ioc_vcpu_destroy>(N, 5),
        ),
        (
            "VCPU_CONFIGURE",
            NVMM_IOC_VCPU_CONFIGURE,
            iow::<nvmm_ioc_vcpu_configure>(N, 6),
        ),
        (
            "VCPU_SETSTATE",
            NVMM_IOC_VCPU_SETSTATE,
            iow::<nvmm_ioc_vcpu_setstate>(N, 7),
        ),
        (
            "VCPU_GETSTATE",
            NVMM_IOC_VCPU_GETSTATE,
            iow::<nvmm_ioc_vcpu_getstate>(N, 8),
        ),
        (
            "VCPU_INJECT",
            NVMM_IOC_VCPU_INJECT,
            iow::<nvmm_ioc_vcpu_inject>(N, 9),
        ),
        (
            "VCPU_RUN",
            NVMM_IOC_VCPU_RUN,
            iowr::<nvmm_ioc_vcpu_run>(N, 10),
        ),
        ("GPA_MAP", NVMM_IOC_GPA_MAP, iow::<nvmm_ioc_gpa_map>(N, 11)),
        (
            "GPA_UNMAP",
            NVMM_IOC_GPA_UNMAP,
            iow::<nvmm_ioc_gpa_unmap>(N, 12),
        ),
        ("HVA_MAP", NVMM_IOC_HVA_MAP, iow::<nvmm_ioc_hva_map>(N, 13)),
        (
            "HVA_UNMAP",
            NVMM_IOC_HVA_UNMAP,
            iow::<nvmm_ioc_hva_unmap>(N, 14),
        ),
        ("CTL", NVMM_IOC_CTL, iow::<nvmm_ioc_ctl>(N, 20)),
    ];
    for (name, from_clang, ours) in requests {
        assert_eq!(
            from_clang, ours,
            "NVMM_IOC_{name}: clang {from_clang:#x}, ours {ours:#x}"
        );
        assert_eq!(iocgroup(from_clang), N, "NVMM_IOC_{name}");
    }
}

#[test]
fn known_request_numbers() {
    // Values a NetBSD/amd64 kernel answers to (argument sizes 0x48 and 0x68).
    assert_eq!(NVMM_IOC_VCPU_RUN, 0xC048_4E0A);
    assert_eq!(NVMM_IOC_CAPABILITY, 0x4068_4E00);
    assert_eq!(iocparm_len(NVMM_IOC_VCPU_RUN), 72);
}
