//! Guest memory: host and guest mappings, the area list, its consistency
//! with the kernel on every failure.

use std::sync::Arc;

use nvmm::model::{FailPoint, KernelModel};
use nvmm::nvmm_sys as sys;
use nvmm::sys::{Kernel, OpenMode};
use nvmm::{Error, Machine, Nvmm, Op, Prot, Rejection};

fn setup() -> (Arc<KernelModel>, Machine) {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    (model, m)
}

fn rejected(e: &Error) -> Option<(Op, Rejection)> {
    match e {
        Error::Rejected { op, reason } => Some((*op, *reason)),
        _ => None,
    }
}

#[test]
fn map_write_read_translate() {
    let (model, m) = setup();
    let ram = m.hva_map(0x10000).unwrap();
    assert_eq!(ram.len(), 0x10000);
    assert_eq!(
        model.hva_maps(m.id()),
        vec![(ram.as_ptr() as usize, 0x10000)]
    );
    m.gpa_map(&ram, 0x2000, 0x100000, 0x4000, Prot::READ | Prot::EXEC)
        .unwrap();
    assert_eq!(
        model.gpa_maps(m.id()),
        vec![(0x100000, 0x4000, ram.as_ptr() as usize + 0x2000, 0x5)]
    );
    let before = model.syscalls();
    m.write_guest(0x100ffe, &[1, 2, 3, 4]).unwrap();
    let mut buf = [0u8; 4];
    m.read_guest(0x100ffe, &mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3, 4]);
    let (hva, prot) = m.gpa_to_hva(0x100fff).unwrap();
    assert_eq!(hva as usize, ram.as_ptr() as usize + 0x2fff);
    assert_eq!(prot, Prot::READ | Prot::EXEC);
    // SAFETY: inside the live mapping.
    assert_eq!(unsafe { hva.read() }, 2);
    assert_eq!(
        model.syscalls(),
        before,
        "lookups and copies make no syscall"
    );
    let e = m.gpa_to_hva(0x104000).unwrap_err();
    assert_eq!(
        rejected(&e),
        Some((Op::GpaToHva, Rejection::NotMapped(0x104000)))
    );
    assert_eq!(e.errno(), libc::ENOENT);
    let e = m.read_guest(0x103fff, &mut buf).unwrap_err();
    assert_eq!(
        rejected(&e),
        Some((Op::GuestMemory, Rejection::NotMapped(0x104000)))
    );
}

#[test]
fn reads_and_writes_span_adjacent_areas() {
    let (_model, m) = setup();
    let a = m.hva_map(0x1000).unwrap();
    let b = m.hva_map(0x1000).unwrap();
    m.gpa_map(&a, 0, 0x0, 0x1000, Prot::ALL).unwrap();
    m.gpa_map(&b, 0, 0x1000, 0x1000, Prot::ALL).unwrap();
    m.write_guest(0xffe, &[9, 8, 7, 6]).unwrap();
    let mut buf = [0u8; 4];
    m.read_guest(0xffe, &mut buf).unwrap();
    assert_eq!(buf, [9, 8, 7, 6]);
    // SAFETY: inside the live mapping `b`.
    assert_eq!(unsafe { b.as_ptr().read() }, 7);
}

#[test]
fn rules_are_checked_before_the_kernel_sees_them() {
    let (model, m) = setup();
    let ram = m.hva_map(0x4000).unwrap();
    m.gpa_map(&ram, 0, 0x10000, 0x2000, Prot::ALL).unwrap();
    let ioctls = model
        .counters
        .ioctl
        .load(std::sync::atomic::Ordering::Relaxed);
    let cases: &[(usize, u64, u64, Rejection)] = &[
        (0, 0x20001, 0x1000, Rejection::NotPageAligned),
        (0, 0x20000, 0x1001, Rejection::NotPageAligned),
        (1, 0x20000, 0x1000, Rejection::NotPageAligned),
        (0, 0x20000, 0, Rejection::ZeroSize),
        (0, u64::MAX - 0xfff, 0x2000, Rejection::Overflow),
        (0x3000, 0x20000, 0x2000, Rejection::NotInHostMapping),
        // An offset past the host mapping's end (the pointer it would
        // give lies outside the mapping): refused before any arithmetic.
        (0x5000, 0x20000, 0x1000, Rejection::NotInHostMapping),
        (
            usize::MAX & !0xfff,
            0x20000,
            0x1000,
            Rejection::NotInHostMapping,
        ),
        (
            0x3000,
            0,
            0xFFFF_FFFF_FFFF_E000,
            Rejection::NotInHostMapping,
        ),
        (0x2000, 0x11000, 0x1000, Rejection::GpaOverlap),
        (0x2000, 0xf000, 0x2000, Rejection::GpaOverlap),
        (0, 0xf000, 0x4000, Rejection::GpaOverlap),
    ];
    for &(off, gpa, size, why) in cases {
        let e = m.gpa_map(&ram, off, gpa, size, Prot::ALL).unwrap_err();
        assert_eq!(
            rejected(&e),
            Some((Op::GpaMap, why)),
            "{off:#x} {gpa:#x} {size:#x}"
        );
    }
    assert_eq!(
        model
            .counters
            .ioctl
            .load(std::sync::atomic::Ordering::Relaxed),
        ioctls
    );
    assert_eq!(m.gpa_areas().len(), 1);
    // A host mapping of another machine is not usable here.
    let other = Nvmm::open_with(model.clone(), OpenMode::User)
        .unwrap()
        .create_machine()
        .unwrap();
    let foreign = other.hva_map(0x1000).unwrap();
    let e = m
        .gpa_map(&foreign, 0, 0x40000, 0x1000, Prot::ALL)
        .unwrap_err();
    assert_eq!(
        rejected(&e),
        Some((Op::GpaMap, Rejection::NotInHostMapping))
    );
    // Host mapping rules.
    assert_eq!(
        rejected(&m.hva_map(0).unwrap_err()),
        Some((Op::HvaMap, Rejection::ZeroSize))
    );
    assert_eq!(
        rejected(&m.hva_map(0x1001).unwrap_err()),
        Some((Op::HvaMap, Rejection::NotPageAligned))
    );
    // SAFETY: refused before anything is registered (overlaps `ram`).
    let e = unsafe { m.hva_map_raw(ram.as_ptr().add(0x1000), 0x1000) }.unwrap_err();
    assert_eq!(rejected(&e), Some((Op::HvaMap, Rejection::HvaOverlap)));
    assert_eq!(e.errno(), libc::EEXIST);
}

#[test]
fn kernel_refusals_leave_the_area_list_unchanged() {
    let (model, m) = setup();
    let ram = m.hva_map(0x4000).unwrap();
    // The kernel's own limit (128 GiB) is not duplicated here: it answers.
    let e = m
        .gpa_map(&ram, 0, 128 << 30, 0x1000, Prot::ALL)
        .unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::GpaMap, errno } if errno == libc::EINVAL));
    assert!(m.gpa_areas().is_empty());
    model.fail_next(FailPoint::Ioctl(sys::NVMM_IOC_GPA_MAP), libc::ENOMEM);
    let e = m.gpa_map(&ram, 0, 0, 0x4000, Prot::ALL).unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::GpaMap, errno } if errno == libc::ENOMEM));
    assert!(m.gpa_areas().is_empty());
    assert!(m.gpa_to_hva(0).is_err());
    m.gpa_map(&ram, 0, 0, 0x4000, Prot::ALL).unwrap();
    model.fail_next(FailPoint::Ioctl(sys::NVMM_IOC_GPA_UNMAP), libc::EIO);
    let e = m.gpa_unmap(0, 0x4000).unwrap_err();
    assert!(matches!(
        e,
        Error::Os {
            op: Op::GpaUnmap,
            ..
        }
    ));
    assert_eq!(m.gpa_areas().len(), 1, "kept: the kernel still maps it");
    assert_eq!(model.gpa_maps(m.id()).len(), 1);
    m.gpa_unmap(0, 0x4000).unwrap();
    assert!(m.gpa_areas().is_empty());
    assert!(model.gpa_maps(m.id()).is_empty());
    let e = m.gpa_unmap(0, 0x4000).unwrap_err();
    assert_eq!(rejected(&e), Some((Op::GpaUnmap, Rejection::NoSuchMapping)));
}

#[test]
fn host_memory_cannot_be_freed_while_the_guest_can_reach_it() {
    let (model, m) = setup();
    let base = model.live_mappings();
    let ram = m.hva_map(0x2000).unwrap();
    assert_eq!(model.live_mappings(), base + 1);
    m.gpa_map(&ram, 0x1000, 0x5000, 0x1000, Prot::READ).unwrap();
    let e = m.hva_unmap(ram).unwrap_err();
    assert_eq!(
        rejected(&e),
        Some((Op::HvaUnmap, Rejection::HostMappingInUse))
    );
    assert_eq!(e.errno(), libc::EBUSY);
    m.gpa_unmap(0x5000, 0x1000).unwrap();
    model.fail_next(FailPoint::Ioctl(sys::NVMM_IOC_HVA_UNMAP), libc::EIO);
    assert!(m.hva_unmap(ram).is_err());
    assert_eq!(model.hva_maps(m.id()).len(), 1, "still registered");
    m.hva_unmap(ram).unwrap();
    assert!(model.hva_maps(m.id()).is_empty());
    assert_eq!(model.live_mappings(), base, "the kernel unmapped it");
    let e = m.hva_unmap(ram).unwrap_err();
    assert_eq!(rejected(&e), Some((Op::HvaUnmap, Rejection::NoSuchMapping)));
    let e = m.gpa_map(&ram, 0, 0, 0x1000, Prot::ALL).unwrap_err();
    assert_eq!(
        rejected(&e),
        Some((Op::GpaMap, Rejection::NotInHostMapping))
    );
}

#[test]
fn failed_host_registration_frees_the_allocation() {
    let (model, m) = setup();
    let base = model.live_mappings();
    model.fail_next(FailPoint::Ioctl(sys::NVMM_IOC_HVA_MAP), libc::ENOMEM);
    let e = m.hva_map(0x1000).unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::HvaMap, errno } if errno == libc::ENOMEM));
    assert_eq!(model.live_mappings(), base);
    model.fail_next(FailPoint::MapAnonymous, libc::ENOMEM);
    assert!(matches!(
        m.hva_map(0x1000).unwrap_err(),
        Error::Os { op: Op::HvaMap, errno } if errno == libc::ENOMEM
    ));
    assert_eq!(model.live_mappings(), base);
}

#[test]
fn thirty_three_host_mappings_is_enobufs() {
    let (_model, m) = setup();
    for _ in 0..32 {
        m.hva_map(0x1000).unwrap();
    }
    let e = m.hva_map(0x1000).unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::HvaMap, errno } if errno == libc::ENOBUFS));
}

#[test]
fn owned_memory_is_released_after_the_machine_is_destroyed() {
    let (model, m) = setup();
    let base = model.live_mappings();
    let ram = m.hva_map(0x3000).unwrap();
    m.gpa_map(&ram, 0, 0, 0x3000, Prot::ALL).unwrap();
    let _other = m.hva_map(0x1000).unwrap();
    assert_eq!(model.live_mappings(), base + 2);
    let id = m.id();
    drop(m);
    assert!(!model.machine_exists(id));
    assert_eq!(model.live_mappings(), base);
}

#[test]
fn caller_owned_memory_through_the_unsafe_path() {
    let (model, m) = setup();
    let mem = model.map_anonymous(0x2000).unwrap();
    // SAFETY: `mem` is a fresh page-aligned mapping nobody references.
    let host = unsafe { m.hva_map_raw(mem.as_ptr(), 0x2000) }.unwrap();
    m.gpa_map(&host, 0, 0x8000, 0x2000, Prot::ALL).unwrap();
    m.write_guest(0x8010, b"abc").unwrap();
    // SAFETY: inside the live mapping.
    assert_eq!(unsafe { mem.as_ptr().add(0x10).read() }, b'a');
    m.gpa_unmap(0x8000, 0x2000).unwrap();
    let live = model.live_mappings();
    m.hva_unmap(host).unwrap();
    assert_eq!(
        model.live_mappings(),
        live - 1,
        "HVA_UNMAP unmaps from the process"
    );
    // A caller-owned mapping still registered at drop stays the caller's.
    let mem2 = model.map_anonymous(0x1000).unwrap();
    // SAFETY: as above.
    unsafe { m.hva_map_raw(mem2.as_ptr(), 0x1000) }.unwrap();
    let live = model.live_mappings();
    drop(m);
    assert_eq!(model.live_mappings(), live);
    // SAFETY: the machine is gone; the range is ours again.
    unsafe { model.munmap(mem2, 0x1000) }.unwrap();
}
