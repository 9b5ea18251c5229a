//! Feature `vm-memory`: `GuestRam` over a rust-vmm `GuestMemoryMmap` (with
//! a dirty bitmap), directly and through the assist and the page walker.
#![cfg(feature = "vm-memory")]

use crate::support::dyn_assist::assist_mem;
use nvmm_assist::rust_vmm::VM_MEMORY_FAULT;
use nvmm_assist::{
    AccessType, CompareWrite, CpuState, Gpr, GuestRam, MemExit, MmioBus, Outcome, RamStatus,
    Registers, Vendor, translate,
};
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MmapRegion};

type Memory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// RAM at 0..0x3000 in two regions that meet at 0x1800 (inside a page),
/// a hole, and RAM at 0x10000..0x20000.
fn memory() -> Memory {
    Memory::from_ranges(&[
        (GuestAddress(0), 0x1800),
        (GuestAddress(0x1800), 0x1800),
        (GuestAddress(0x10000), 0x10000),
    ])
    .unwrap()
}

/// Clears the dirty bitmap of every region.
fn clean(mem: &Memory) {
    for region in mem.iter() {
        MmapRegion::bitmap(region).reset();
    }
}

// `vm_memory::Bytes` has `read`/`write` too: the calls below name the trait.

fn dirty(mem: &Memory, gpa: u64) -> bool {
    let (region, offset) = mem.to_region_addr(GuestAddress(gpa)).unwrap();
    region.bitmap().dirty_at(offset.0 as usize)
}

#[test]
fn read_and_write_ram_and_report_holes() {
    let mem = memory();
    let mut ram = &mem;
    mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x10010))
        .unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        GuestRam::read(&mut ram, 0x10010, &mut buf),
        Ok(RamStatus::Done)
    );
    assert_eq!(u64::from_le_bytes(buf), 0x1122_3344_5566_7788);

    clean(&mem);
    assert!(!dirty(&mem, 0x10100));
    assert_eq!(
        GuestRam::write(&mut ram, 0x10100, &[1, 2, 3]),
        Ok(RamStatus::Done)
    );
    assert_eq!(
        mem.read_obj::<[u8; 3]>(GuestAddress(0x10100)).unwrap(),
        [1, 2, 3]
    );
    assert!(
        dirty(&mem, 0x10100),
        "a write is recorded in the dirty bitmap"
    );

    // The hole, and a range that runs from RAM into it: not RAM, untouched.
    assert_eq!(
        GuestRam::read(&mut ram, 0x8000, &mut buf),
        Ok(RamStatus::NotRam)
    );
    assert_eq!(
        GuestRam::write(&mut ram, 0x2FFC, &[9; 8]),
        Ok(RamStatus::NotRam)
    );
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x2FFC)).unwrap(), 0);
    assert_eq!(
        GuestRam::compare_and_write(&mut ram, 0x8000, &[0; 4], &[1; 4]),
        Ok(CompareWrite::NotRam)
    );
}

#[test]
fn accesses_across_two_regions() {
    let mem = memory();
    let mut ram = &mem;
    let data: Vec<u8> = (1..=16).collect();
    assert_eq!(
        GuestRam::write(&mut ram, 0x17F8, &data),
        Ok(RamStatus::Done)
    );
    let mut back = [0u8; 16];
    assert_eq!(
        GuestRam::read(&mut ram, 0x17F8, &mut back),
        Ok(RamStatus::Done)
    );
    assert_eq!(back.to_vec(), data);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1800)).unwrap(), 9);
    // A compare-and-write split between regions takes the non-atomic path.
    let new = [0xEE; 8];
    assert_eq!(
        GuestRam::compare_and_write(&mut ram, 0x17FC, &data[4..12], &new),
        Ok(CompareWrite::Written)
    );
    assert_eq!(mem.read_obj::<[u8; 8]>(GuestAddress(0x17FC)).unwrap(), new);
}

#[test]
fn compare_and_write_every_size() {
    let mem = memory();
    let mut ram = &mem;
    for (gpa, len) in [
        (0x11000, 1), // atomic
        (0x11010, 2),
        (0x11020, 4),
        (0x11030, 8),
        (0x11041, 8),  // misaligned: read-compare-write
        (0x11050, 16), // CMPXCHG16B: read-compare-write
    ] {
        let old: Vec<u8> = (0..len).map(|i| 0x10 + i as u8).collect();
        let new: Vec<u8> = (0..len).map(|i| 0xA0 + i as u8).collect();
        mem.write_slice(&old, GuestAddress(gpa)).unwrap();
        clean(&mem);

        // Expected value differs: nothing is written.
        let wrong: Vec<u8> = old.iter().map(|b| b ^ 1).collect();
        assert_eq!(
            GuestRam::compare_and_write(&mut ram, gpa, &wrong, &new),
            Ok(CompareWrite::Mismatch),
            "{len} bytes at {gpa:#x}"
        );
        let mut now = vec![0u8; len];
        mem.read_slice(&mut now, GuestAddress(gpa)).unwrap();
        assert_eq!(now, old);
        assert!(!dirty(&mem, gpa), "a mismatch writes nothing");

        assert_eq!(
            GuestRam::compare_and_write(&mut ram, gpa, &old, &new),
            Ok(CompareWrite::Written)
        );
        mem.read_slice(&mut now, GuestAddress(gpa)).unwrap();
        assert_eq!(now, new, "{len} bytes at {gpa:#x}");
        assert!(dirty(&mem, gpa), "compare-and-write marks the page dirty");
    }
    assert_eq!(
        GuestRam::compare_and_write(&mut ram, 0x11000, &[0; 4], &[0; 2]),
        Err(nvmm_assist::BusError(22))
    );
    assert_ne!(VM_MEMORY_FAULT.0, 22);
}

/// MMIO that must not be reached: every access here is RAM.
struct NoMmio;

impl MmioBus for NoMmio {
    fn read(&mut self, gpa: u64, _: &mut [u8]) -> Result<(), nvmm_assist::BusError> {
        panic!("unexpected MMIO read at {gpa:#x}")
    }
    fn write(&mut self, gpa: u64, _: &[u8]) -> Result<(), nvmm_assist::BusError> {
        panic!("unexpected MMIO write at {gpa:#x}")
    }
}

/// 64-bit mode, flat segments, 4-level paging with CR3 = `cr3` (no
/// vendor-dependent instruction is used here).
fn long_mode(cr3: u64) -> Registers {
    Registers::long_mode(Vendor::Intel, cr3, 0, 0)
}

#[test]
fn page_walk_sets_accessed_and_dirty_bits_in_vm_memory() {
    let mem = memory();
    // PML4 at 0x10000 -> PDPT 0x11000 -> PD 0x12000 -> PT 0x13000 -> page 0x14000,
    // none accessed yet.
    let present_writable = 0x3u64;
    for (entry, value) in [
        (0x10000, 0x11000 | present_writable),
        (0x11000, 0x12000 | present_writable),
        (0x12000, 0x13000 | present_writable),
        (0x13000 + 8 * 5, 0x14000 | present_writable),
    ] {
        mem.write_obj(value, GuestAddress(entry)).unwrap();
    }
    let regs = long_mode(0x10000);
    let mut ram = &mem;
    let gpa = translate(&regs, &mut ram, 0x5123, AccessType::Write).unwrap();
    assert_eq!(gpa, 0x14123);
    let accessed_dirty = 0x60u64;
    assert_eq!(
        mem.read_obj::<u64>(GuestAddress(0x13028)).unwrap(),
        0x14000 | present_writable | accessed_dirty
    );
    assert_eq!(
        mem.read_obj::<u64>(GuestAddress(0x10000)).unwrap() & 0x20,
        0x20,
        "the PML4 entry is accessed"
    );
}

#[test]
fn locked_cmpxchg_on_vm_memory_through_the_assist() {
    let mem = memory();
    mem.write_obj(5u64, GuestAddress(0x15008)).unwrap();
    // 64-bit mode has paging on. Identity-map 0..2 MiB with one 2 MiB page: PML4 0x10000, PDPT 0x11000, PD 0x12000.
    mem.write_obj(0x11003u64, GuestAddress(0x10000)).unwrap();
    mem.write_obj(0x12003u64, GuestAddress(0x11000)).unwrap();
    mem.write_obj(0x83u64 | 0x60, GuestAddress(0x12000))
        .unwrap();
    let mut regs = long_mode(0x10000);
    regs.gprs[Gpr::Rax.index()] = 5;
    regs.gprs[Gpr::Rcx.index()] = 0x1234;
    regs.gprs[Gpr::Rbx.index()] = 0x15008;
    // lock cmpxchg [rbx], rcx
    let bytes = [0xF0, 0x48, 0x0F, 0xB1, 0x0B];
    let exit = MemExit {
        gpa: 0x15008,
        access: AccessType::Write,
        instruction: &bytes,
    };
    let mut ram = &mem;
    assert_eq!(
        assist_mem(&mut regs, &mut ram, &mut NoMmio, &exit),
        Ok(Outcome::Done)
    );
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x15008)).unwrap(), 0x1234);
    assert_eq!(regs.rip(), 5);
    assert_ne!(regs.rflags() & 0x40, 0, "ZF: the comparison succeeded");
}
