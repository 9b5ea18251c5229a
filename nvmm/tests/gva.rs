//! Guest-virtual translation through nvmm-assist's page walker, over the
//! comm-page state and the area list.
#![cfg(feature = "assist")]

mod model;

use model::{KernelModel, ScriptedExit};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{Cr, Error, GvaAccess, Msr, Nvmm, Prot};

const P: u64 = 1;
const RW: u64 = 2;
const PS: u64 = 1 << 7;
const A: u64 = 1 << 5;

#[test]
fn translation_follows_the_guest_page_tables() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let ram = m.hva_map(4 << 20).unwrap();
    m.gpa_map(&ram, 0, 0, 4 << 20, Prot::ALL).unwrap();
    let mut v = m.create_vcpu(0).unwrap();

    // Paging off: the linear address is the physical one.
    assert_eq!(
        v.gva_to_gpa(0x1234_5678, GvaAccess::Read).unwrap(),
        0x1234_5678
    );

    // 4-level paging: 0x4000_1234 -> 2 MiB page at 0x20_0000.
    m.write_guest(0x1000, &(0x2000 | P | RW).to_le_bytes())
        .unwrap();
    m.write_guest(0x2000 + 8, &(0x3000 | P | RW).to_le_bytes())
        .unwrap();
    m.write_guest(0x3000, &(0x20_0000 | P | RW | PS).to_le_bytes())
        .unwrap();
    {
        let mut c = v.crs().unwrap();
        c.set(Cr::Cr3, 0x1000);
        c.set(Cr::Cr4, 1 << 5);
        c.set(Cr::Cr0, (1 << 31) | 1);
    }
    v.msrs().unwrap().set(Msr::Efer, (1 << 8) | (1 << 10));
    let s = model.syscalls();
    assert_eq!(
        v.gva_to_gpa(0x4000_1234, GvaAccess::Read).unwrap(),
        0x20_1234
    );
    assert_eq!(model.syscalls(), s, "state cached: no syscall");
    // The walker set the accessed bit through the host mapping.
    let mut pde = [0u8; 8];
    m.read_guest(0x3000, &mut pde).unwrap();
    assert_ne!(u64::from_le_bytes(pde) & A, 0);

    // Not present: a #PF to inject.
    let e = v.gva_to_gpa(0x8000_0000, GvaAccess::Write).unwrap_err();
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
        v.gva_to_gpa(0x4000_0010, GvaAccess::Read).unwrap(),
        0x20_0010
    );
    assert_eq!(model.getstates(), g + 1);
}
