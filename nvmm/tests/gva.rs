//! Guest-virtual translation: libnvmm's read-only query (`gva_to_gpa`)
//! and the assist's access-checked walk (`gva_to_gpa_checked`), over the
//! comm-page state and the area list.
#![cfg(feature = "assist")]

use std::sync::Arc;

use nvmm::model::{KernelModel, ScriptedExit};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{Cr, Error, GvaAccess, Machine, Msr, Nvmm, Prot, Vcpu};

const P: u64 = 1;
const RW: u64 = 2;
const PS: u64 = 1 << 7;
const A: u64 = 1 << 5;

/// A machine with 4 MiB of RAM at GPA 0 and its VCPU 0.
fn vcpu_with_ram() -> (Arc<KernelModel>, Machine, Vcpu) {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let ram = m.hva_map(4 << 20).unwrap();
    m.gpa_map(&ram, 0, 0, 4 << 20, Prot::ALL).unwrap();
    let v = m.create_vcpu(0).unwrap();
    (model, m, v)
}

/// Writes the page-table `entries` (address, entry) and turns on 4-level
/// paging with CR3 = 0x1000 and EFER = LME | LMA | `efer`.
fn four_level_paging(m: &Machine, v: &mut Vcpu, entries: &[(u64, u64)], efer: u64) {
    for &(at, entry) in entries {
        m.write_guest(at, &entry.to_le_bytes()).unwrap();
    }
    {
        let mut c = v.crs().unwrap();
        c.set(Cr::Cr3, 0x1000);
        c.set(Cr::Cr4, 1 << 5);
        c.set(Cr::Cr0, (1 << 31) | 1);
    }
    v.msrs()
        .unwrap()
        .set(Msr::Efer, (1 << 8) | (1 << 10) | efer);
}

#[test]
fn checked_translation_follows_the_guest_page_tables() {
    let (model, m, mut v) = vcpu_with_ram();

    // Paging off: the linear address is the physical one.
    assert_eq!(
        v.gva_to_gpa_checked(0x1234_5678, GvaAccess::Read).unwrap(),
        0x1234_5678
    );

    // 4-level paging: 0x4000_1234 -> 2 MiB page at 0x20_0000.
    let entries = [
        (0x1000, 0x2000 | P | RW),
        (0x2000 + 8, 0x3000 | P | RW),
        (0x3000, 0x20_0000 | P | RW | PS),
    ];
    four_level_paging(&m, &mut v, &entries, 0);
    let s = model.syscalls();
    assert_eq!(
        v.gva_to_gpa_checked(0x4000_1234, GvaAccess::Read).unwrap(),
        0x20_1234
    );
    assert_eq!(model.syscalls(), s, "state cached: no syscall");
    // The walker set the accessed bit through the host mapping.
    let mut pde = [0u8; 8];
    m.read_guest(0x3000, &mut pde).unwrap();
    assert_ne!(u64::from_le_bytes(pde) & A, 0);

    // Not present: a #PF to inject.
    let e = v
        .gva_to_gpa_checked(0x8000_0000, GvaAccess::Write)
        .unwrap_err();
    match e {
        Error::Assist {
            op: nvmm::Op::GvaToGpa,
            source,
        } => assert!(
            matches!(
                source,
                nvmm::nvmm_assist::Error::Exception(nvmm::nvmm_assist::Exception::PageFault {
                    address: 0x8000_0000,
                    ..
                })
            ),
            "{source:?}"
        ),
        other => panic!("{other:?}"),
    }

    // After an exit that provides no state, translation fetches it once.
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
    v.run().unwrap();
    let g = model.getstates();
    assert_eq!(
        v.gva_to_gpa_checked(0x4000_0010, GvaAccess::Read).unwrap(),
        0x20_0010
    );
    assert_eq!(model.getstates(), g + 1);
}

const US: u64 = 4;
const XD: u64 = 1 << 63;

#[test]
fn the_query_is_read_only_keeps_64_bits_and_returns_the_rights() {
    let (model, m, mut v) = vcpu_with_ram();

    // Paging off: the address unchanged, all 64 bits, every right.
    let t = v.gva_to_gpa(0x1_2345_6789).unwrap();
    assert_eq!(t.gpa, 0x1_2345_6789, "not truncated to 32 bits");
    assert_eq!((t.prot, t.user), (Prot::ALL, true));

    // 4-level paging: a user, read-only, no-execute 4 KiB page.
    let entries = [
        (0x1000, 0x2000 | P | RW | US),
        (0x2000 + 8, 0x3000 | P | RW | US),
        (0x3000, 0x4000 | P | RW | US),
        (0x4000 + 8, 0x5_0000 | P | US | XD),
    ];
    // EFER.NXE, so that XD counts.
    four_level_paging(&m, &mut v, &entries, 1 << 11);
    let mut before = vec![0u8; 0x5000];
    m.read_guest(0, &mut before).unwrap();
    let t = v.gva_to_gpa(0x4000_1234).unwrap();
    assert_eq!(t.gpa, 0x5_0234);
    assert_eq!(t.prot, Prot::READ, "not writable, not executable");
    assert!(t.user);
    let mut after = vec![0u8; 0x5000];
    m.read_guest(0, &mut after).unwrap();
    assert_eq!(before, after, "no accessed/dirty bit written");

    // A fetch faults in the checked walk (XD); the query just reports it.
    assert!(
        v.gva_to_gpa_checked(0x4000_1234, GvaAccess::Execute)
            .is_err()
    );
    // Unmapped: an error (libnvmm's EFAULT).
    assert!(matches!(
        v.gva_to_gpa(0x8000_0000).unwrap_err(),
        Error::Assist {
            op: nvmm::Op::GvaToGpa,
            ..
        }
    ));

    // After an exit that provides nothing, the query fetches CRS|MSRS once
    // (as libnvmm) and not GPRS/SEGS.
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
    v.run().unwrap();
    let g = model.getstates();
    assert_eq!(v.gva_to_gpa(0x4000_1000).unwrap().gpa, 0x5_0000);
    assert_eq!(model.getstates(), g + 1);
    assert_eq!(
        v.cached(),
        nvmm::StateClasses::CRS | nvmm::StateClasses::MSRS
    );
}
