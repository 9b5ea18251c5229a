//! `Machine::guest_memory` (feature `vm-memory`): a machine's guest RAM as
//! a rust-vmm `GuestMemory`, used by rust-vmm's `linux-loader` to load an
//! ELF image, checked through the crate's own `read_guest`; and what the
//! view holds alive. Runs over the kernel **model** (not NetBSD).

use std::io::Cursor;
use std::sync::Arc;

use linux_loader::loader::{Elf, KernelLoader};
use nvmm::model::KernelModel;
use nvmm::rust_vmm::vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};
use nvmm::sys::OpenMode;
use nvmm::{Error, Machine, Nvmm, Op, Prot, Rejection};

const MIB2: usize = 0x20_0000;

fn setup() -> (Arc<KernelModel>, Machine) {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    (model, machine)
}

/// 4 MiB of guest RAM at 0 from two separate host mappings, the upper one
/// mapped first (so the view must sort them).
fn two_areas(m: &Machine) -> (nvmm::HostMapping, nvmm::HostMapping) {
    let low = m.hva_map(MIB2).unwrap();
    let high = m.hva_map(MIB2).unwrap();
    m.gpa_map(&high, 0, MIB2 as u64, MIB2 as u64, Prot::ALL)
        .unwrap();
    m.gpa_map(&low, 0, 0, MIB2 as u64, Prot::READ | Prot::EXEC)
        .unwrap();
    (low, high)
}

/// One PT_LOAD program header.
struct Load {
    offset: u64,
    paddr: u64,
    data: Vec<u8>,
    memsz: u64,
}

/// A minimal ELF64 x86-64 executable: the file header, its program
/// headers right after it, then each segment's bytes at its offset.
fn elf64(entry: u64, loads: &[Load]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7F, b'E', b'L', b'F', 2, 1, 1, 0]); // ELF64, LSB, v1, SysV
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&0x3Eu16.to_le_bytes()); // e_machine: EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&entry.to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    f.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    f.extend_from_slice(&(loads.len() as u16).to_le_bytes()); // e_phnum
    f.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    assert_eq!(f.len(), EHDR);
    for l in loads {
        f.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
        f.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R|X
        f.extend_from_slice(&l.offset.to_le_bytes());
        f.extend_from_slice(&l.paddr.to_le_bytes()); // p_vaddr
        f.extend_from_slice(&l.paddr.to_le_bytes()); // p_paddr
        f.extend_from_slice(&(l.data.len() as u64).to_le_bytes()); // p_filesz
        f.extend_from_slice(&l.memsz.to_le_bytes());
        f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    }
    assert_eq!(f.len(), EHDR + PHDR * loads.len());
    for l in loads {
        let end = l.offset as usize + l.data.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[l.offset as usize..end].copy_from_slice(&l.data);
    }
    f
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn linux_loader_loads_an_elf_image_through_the_view() {
    let (_model, m) = setup();
    two_areas(&m);
    // A segment straddling the two areas (so two host mappings), and a
    // small one in the low area.
    let text = Load {
        offset: 0x1000,
        paddr: MIB2 as u64 - 0x800,
        data: pattern(0x1000, 7),
        memsz: 0x1800,
    };
    let data = Load {
        offset: 0x2000,
        paddr: 0x10_0000,
        data: pattern(0x40, 99),
        memsz: 0x40,
    };
    let image = elf64(text.paddr, &[text, data]);

    // SAFETY: no VCPU, device thread or other view touches guest RAM
    // while the loader writes it.
    let mem = unsafe { m.guest_memory() };
    let loaded = Elf::load(&mem, None, &mut Cursor::new(&image), None).unwrap();
    drop(mem);
    assert_eq!(loaded.kernel_load, GuestAddress(MIB2 as u64 - 0x800));
    assert_eq!(loaded.kernel_end, MIB2 as u64 + 0x1000);

    // Read back with the crate's own (atomic) accessor.
    let mut got = vec![0u8; 0x1000];
    m.read_guest(MIB2 as u64 - 0x800, &mut got).unwrap();
    assert_eq!(got, pattern(0x1000, 7));
    let mut got = vec![0u8; 0x40];
    m.read_guest(0x10_0000, &mut got).unwrap();
    assert_eq!(got, pattern(0x40, 99));
    // Nothing outside the segments was written.
    let mut around = [0xAAu8; 0x10];
    m.read_guest(MIB2 as u64 - 0x810, &mut around).unwrap();
    assert_eq!(around, [0; 0x10]);
    m.read_guest(MIB2 as u64 + 0x800, &mut around).unwrap();
    assert_eq!(around, [0; 0x10]);
    m.read_guest(0x10_0040, &mut around).unwrap();
    assert_eq!(around, [0; 0x10]);
}

#[test]
fn loading_into_unmapped_guest_memory_fails() {
    let (_model, m) = setup();
    two_areas(&m);
    // The segment runs past the end of guest RAM (4 MiB).
    let load = Load {
        offset: 0x1000,
        paddr: 2 * MIB2 as u64 - 0x10,
        data: pattern(0x20, 1),
        memsz: 0x20,
    };
    let image = elf64(load.paddr, &[load]);
    // SAFETY: as above, nothing else touches guest RAM.
    let mem = unsafe { m.guest_memory() };
    assert!(Elf::load(&mem, None, &mut Cursor::new(&image), None).is_err());
}

#[test]
fn regions_follow_the_guest_areas_in_guest_physical_order() {
    let (_model, m) = setup();
    let (low, high) = two_areas(&m);
    // SAFETY: only this thread accesses guest RAM.
    let mem = unsafe { m.guest_memory() };
    assert_eq!(mem.num_regions(), 2);
    let starts: Vec<u64> = mem.iter().map(|r| r.start_addr().0).collect();
    assert_eq!(starts, [0, MIB2 as u64]);
    assert_eq!(mem.last_addr(), GuestAddress(2 * MIB2 as u64 - 1));

    let r = mem.find_region(GuestAddress(MIB2 as u64 - 1)).unwrap();
    assert_eq!((r.start_addr().0, r.len()), (0, MIB2 as u64));
    assert_eq!(r.prot(), Prot::READ | Prot::EXEC);
    let r = mem.find_region(GuestAddress(MIB2 as u64)).unwrap();
    assert_eq!(r.start_addr().0, MIB2 as u64);
    assert_eq!(r.prot(), Prot::ALL);
    assert!(mem.find_region(GuestAddress(2 * MIB2 as u64)).is_none());

    // Host addresses are the ones the machine registered.
    assert_eq!(
        mem.get_host_address(GuestAddress(0x123)).unwrap(),
        low.as_ptr().wrapping_add(0x123)
    );
    assert_eq!(
        mem.get_host_address(GuestAddress(MIB2 as u64 + 8)).unwrap(),
        high.as_ptr().wrapping_add(8)
    );
    assert_eq!(
        mem.get_host_address(GuestAddress(0x123)).unwrap(),
        m.gpa_to_hva(0x123).unwrap().0
    );
    let r = mem.find_region(GuestAddress(0)).unwrap();
    assert!(
        r.get_host_address(MemoryRegionAddress(MIB2 as u64))
            .is_err()
    );
    assert!(
        r.get_slice(MemoryRegionAddress(MIB2 as u64 - 4), 5)
            .is_err()
    );
    assert_eq!(
        r.get_slice(MemoryRegionAddress(MIB2 as u64 - 4), 4)
            .unwrap()
            .len(),
        4
    );

    // Objects through vm-memory, seen by the crate, and the reverse.
    mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(MIB2 as u64 - 4))
        .unwrap();
    let mut raw = [0u8; 8];
    m.read_guest(MIB2 as u64 - 4, &mut raw).unwrap();
    assert_eq!(u64::from_le_bytes(raw), 0x1122_3344_5566_7788);
    m.write_guest(0x40, &0xCAFE_F00Du32.to_le_bytes()).unwrap();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x40)).unwrap(),
        0xCAFE_F00D
    );
    // Past guest RAM: an error, not a partial write.
    assert!(
        mem.write_obj(0u64, GuestAddress(2 * MIB2 as u64 - 4))
            .is_err()
    );
}

#[test]
fn the_view_pins_host_memory_and_is_a_snapshot() {
    let (_model, m) = setup();
    let ram = m.hva_map(0x4000).unwrap();
    m.gpa_map(&ram, 0, 0x1000, 0x4000, Prot::ALL).unwrap();
    // SAFETY: only this thread accesses guest RAM.
    let mem = unsafe { m.guest_memory() };
    m.gpa_unmap(0x1000, 0x4000).unwrap();
    // The snapshot still has the area, and its memory is still there.
    assert_eq!(mem.num_regions(), 1);
    mem.write_obj(7u8, GuestAddress(0x1000)).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { m.guest_memory() }.num_regions(), 0);
    let busy = m.hva_unmap(ram).unwrap_err();
    assert!(matches!(
        busy,
        Error::Rejected {
            op: Op::HvaUnmap,
            reason: Rejection::HostMappingBusy
        }
    ));
    drop(mem);
    m.hva_unmap(ram).unwrap();
}

#[test]
fn the_view_keeps_the_machine_and_its_memory_alive() {
    let (model, m) = setup();
    let ram = m.hva_map(0x1000).unwrap();
    m.gpa_map(&ram, 0, 0, 0x1000, Prot::ALL).unwrap();
    m.write_guest(0x10, b"nvmm").unwrap();
    let id = m.id();
    // SAFETY: only this thread accesses guest RAM.
    let mem = unsafe { m.guest_memory() };
    drop(m);
    assert!(model.machine_exists(id));
    let mut got = [0u8; 4];
    mem.read_slice(&mut got, GuestAddress(0x10)).unwrap();
    assert_eq!(&got, b"nvmm");
    drop(mem);
    assert!(!model.machine_exists(id));
    assert_eq!(model.live_mappings(), 0);
}

#[test]
fn the_view_can_be_shared_with_device_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let (_model, m) = setup();
    let ram = m.hva_map(0x1000).unwrap();
    m.gpa_map(&ram, 0, 0, 0x1000, Prot::ALL).unwrap();
    // SAFETY: one thread at a time accesses guest RAM below.
    let mem = Arc::new(unsafe { m.guest_memory() });
    send_sync(&mem);
    let device = Arc::clone(&mem);
    std::thread::spawn(move || device.write_obj(0x5Au8, GuestAddress(0x20)).unwrap())
        .join()
        .unwrap();
    let mut got = [0u8];
    m.read_guest(0x20, &mut got).unwrap();
    assert_eq!(got, [0x5A]);
}
