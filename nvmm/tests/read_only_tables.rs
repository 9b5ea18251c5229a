//! Page tables the guest may only read (an area mapped `Prot::READ`, as a
//! ROM holding boot page tables would be): the walker reads them, but its
//! accessed-bit update is a write, which such an area refuses. Against the
//! kernel model; unreached by the other files before (found by `cargo
//! xtask coverage`).
#![cfg(feature = "assist")]

use nvmm::model::KernelModel;
use nvmm::nvmm_assist::Error as AssistError;
use nvmm::sys::OpenMode;
use nvmm::{Cr, Error, GvaAccess, Msr, Nvmm, Op, Prot};

const P: u64 = 1;
const RW: u64 = 2;
const A: u64 = 1 << 5;
const PS: u64 = 1 << 7;

/// Where the read-only area with the page tables starts.
const TABLES: u64 = 0x40_0000;

/// Translates linear 0x4000_1234 (a 2 MiB page at GPA 0x20_0000) under
/// 4-level paging whose three tables lie in a read-only area, their
/// entries written with `flags` besides P|RW; returns the result and the
/// page-directory entry afterwards.
fn translate_with_tables(flags: u64) -> (nvmm::Result<u64>, u64) {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model, OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let ram = m.hva_map(4 << 20).unwrap();
    m.gpa_map(&ram, 0, 0, 4 << 20, Prot::ALL).unwrap();
    let rom = m.hva_map(0x10000).unwrap();
    m.gpa_map(&rom, 0, TABLES, 0x10000, Prot::READ).unwrap();
    let pde_at = TABLES + 0x2000;
    for (at, entry) in [
        (TABLES, (TABLES + 0x1000) | P | RW | flags),
        (TABLES + 0x1000 + 8, (TABLES + 0x2000) | P | RW | flags),
        (pde_at, 0x20_0000 | P | RW | PS | flags),
    ] {
        // The host side writes with no protection check.
        m.write_guest(at, &entry.to_le_bytes()).unwrap();
    }
    let mut v = m.create_vcpu(0).unwrap();
    {
        let mut c = v.crs().unwrap();
        c.set(Cr::Cr3, TABLES);
        c.set(Cr::Cr4, 1 << 5);
        c.set(Cr::Cr0, (1 << 31) | 1);
    }
    v.msrs().unwrap().set(Msr::Efer, (1 << 8) | (1 << 10));
    let result = v.gva_to_gpa_checked(0x4000_1234, GvaAccess::Read);
    let mut pde = [0u8; 8];
    m.read_guest(pde_at, &mut pde).unwrap();
    (result, u64::from_le_bytes(pde))
}

/// With every accessed bit already set, the walk writes nothing, so
/// read-only tables serve it.
#[test]
fn read_only_tables_with_accessed_bits_set_translate() {
    let (result, pde) = translate_with_tables(A);
    assert_eq!(result.unwrap(), 0x20_1234);
    assert_ne!(pde & A, 0);
}

/// With an accessed bit clear the walk must set it (SDM vol. 3A §4.8:
/// the processor sets A in each entry it uses), a write the read-only
/// area refuses: the walk fails as for an entry outside RAM
/// (`PageTableNotRam`, naming the first entry it could not update) and
/// leaves the tables as they were.
#[test]
fn read_only_tables_needing_an_accessed_bit_are_not_ram_to_the_walk() {
    let (result, pde) = translate_with_tables(0);
    match result.unwrap_err() {
        Error::Assist {
            op: Op::GvaToGpa,
            source,
        } => assert_eq!(source, AssistError::PageTableNotRam { gpa: TABLES }),
        e => panic!("{e:?}"),
    }
    assert_eq!(pde & A, 0, "nothing written");
}
