//! Tests of the assist adapters: the comm-page state view and the guest
//! RAM of `VcpuRam` (lookups, `check_entries`, snapshots).

use super::*;
use crate::Nvmm;
use crate::model::KernelModel;
use crate::sys::OpenMode;

/// Each of nvmm-assist's sixteen registers is the comm-page slot of the
/// register of the same name, read and written (the assist's index is
/// used as the comm-page index as is).
#[test]
fn assist_registers_are_the_comm_page_slots_of_the_same_name() {
    use nvmm_assist::Gpr as A;
    let pairs = [
        (A::Rax, Gpr::Rax),
        (A::Rcx, Gpr::Rcx),
        (A::Rdx, Gpr::Rdx),
        (A::Rbx, Gpr::Rbx),
        (A::Rsp, Gpr::Rsp),
        (A::Rbp, Gpr::Rbp),
        (A::Rsi, Gpr::Rsi),
        (A::Rdi, Gpr::Rdi),
        (A::R8, Gpr::R8),
        (A::R9, Gpr::R9),
        (A::R10, Gpr::R10),
        (A::R11, Gpr::R11),
        (A::R12, Gpr::R12),
        (A::R13, Gpr::R13),
        (A::R14, Gpr::R14),
        (A::R15, Gpr::R15),
    ];
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model, OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    vcpu.fetch(PROVIDED_ON_IO_AND_MEMORY).unwrap();
    for (k, &(a, _)) in (1u64..).zip(&pairs) {
        vcpu.assist_state.set_gpr(a, k * 0x0101_0101);
    }
    vcpu.assist_state.set_rip(0x1234);
    vcpu.assist_state.set_rflags(0x202);
    let mut g = vcpu.gprs().unwrap();
    for (k, &(_, n)) in (1u64..).zip(&pairs) {
        assert_eq!(g.get(n), k * 0x0101_0101, "{n:?}");
        g.set(n, !k);
    }
    assert_eq!((g.rip(), g.rflags()), (0x1234, 0x202));
    for (k, &(a, _)) in (1u64..).zip(&pairs) {
        assert_eq!(vcpu.assist_state.gpr(a), !k, "{a:?}");
    }
}

/// The snapshot is taken only when a lookup needs it: never for an
/// MMIO address while the VCPU's copy is current, at once when the
/// address is RAM or the list changed; once taken, it serves the rest
/// of the assist, whatever happens to the list meanwhile.
#[test]
fn the_snapshot_is_taken_only_when_a_lookup_needs_it() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model, OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let ram = machine.hva_map(0x2000).unwrap();
    machine.gpa_map(&ram, 0, 0, 0x1000, Prot::ALL).unwrap();
    machine.write_guest(0x10, &[0x5a]).unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    let mut byte = [0u8; 1];

    // A fresh VCPU's copy is of no list yet: the first lookup, even
    // of MMIO, takes the snapshot and brings the copy up to date.
    let parts = vcpu.assist_parts();
    let mut area_ram = AreaRam::new(parts.ram);
    assert_eq!(
        area_ram.get().read(0xfee0_0000, &mut byte),
        Ok(RamStatus::NotRam)
    );
    assert!(area_ram.has_snapshot());
    drop(area_ram);

    // Current copy: MMIO needs no snapshot, even across lookups.
    let parts = vcpu.assist_parts();
    let mut area_ram = AreaRam::new(parts.ram);
    assert_eq!(
        area_ram.get().write(0xfee0_0000, &[1]),
        Ok(RamStatus::NotRam)
    );
    assert_eq!(
        area_ram.get().read(0x1000, &mut byte),
        Ok(RamStatus::NotRam)
    );
    assert!(!area_ram.has_snapshot());
    // RAM does.
    assert_eq!(area_ram.get().read(0x10, &mut byte), Ok(RamStatus::Done));
    assert_eq!(byte, [0x5a]);
    assert!(area_ram.has_snapshot());
    // From then on the snapshot answers: a page mapped now is not
    // seen by this assist, and the mapping it uses stays pinned.
    machine
        .gpa_map(&ram, 0x1000, 0x1000, 0x1000, Prot::ALL)
        .unwrap();
    assert_eq!(
        area_ram.get().read(0x1000, &mut byte),
        Ok(RamStatus::NotRam)
    );
    machine.gpa_unmap(0x1000, 0x1000).unwrap();
    machine.gpa_unmap(0, 0x1000).unwrap();
    assert!(machine.hva_unmap(ram).is_err());
    assert_eq!(area_ram.get().read(0x10, &mut byte), Ok(RamStatus::Done));
    drop(area_ram);

    // The list changed since the copy was made: the next lookup, of
    // MMIO or not, takes a snapshot of the new list.
    let parts = vcpu.assist_parts();
    let mut area_ram = AreaRam::new(parts.ram);
    assert_eq!(area_ram.get().read(0x10, &mut byte), Ok(RamStatus::NotRam));
    assert!(area_ram.has_snapshot());
    drop(area_ram);
    // Nothing holds the host mapping any more.
    machine.hva_unmap(ram).unwrap();
}

/// The end of an assist drops the snapshot the assist took, and
/// otherwise changes nothing: after an assist that made no lookup on a
/// VCPU whose copy was never made, the copy still answers for no list
/// (the next lookup takes a snapshot); after one that took a snapshot,
/// the slot is empty, the copy answers for the snapshot's list (the
/// next MMIO lookup needs none) and no host mapping stays pinned.
#[test]
fn the_end_of_an_assist_drops_only_a_snapshot_it_took() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model, OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let ram = machine.hva_map(0x1000).unwrap();
    machine.gpa_map(&ram, 0, 0, 0x1000, Prot::ALL).unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    let mut byte = [0u8; 1];

    // No lookup: nothing taken, nothing changed.
    drop(AreaRam::new(vcpu.assist_parts().ram));
    let parts = vcpu.assist_parts();
    assert!(parts.ram.snapshot.is_none());
    assert_eq!(parts.ram.answers_for, UNMADE);
    // So the copy is still unmade: even MMIO takes a snapshot.
    let mut area_ram = AreaRam::new(parts.ram);
    assert_eq!(
        area_ram.get().read(0xfee0_0000, &mut byte),
        Ok(RamStatus::NotRam)
    );
    assert!(area_ram.has_snapshot());
    drop(area_ram);
    let parts = vcpu.assist_parts();
    assert!(parts.ram.snapshot.is_none());
    assert_ne!(parts.ram.answers_for, NO_GENERATION);
    assert_eq!(parts.ram.answers_for, parts.ram.copy.generation());
    let mut area_ram = AreaRam::new(parts.ram);
    assert_eq!(
        area_ram.get().read(0xfee0_0000, &mut byte),
        Ok(RamStatus::NotRam)
    );
    assert!(!area_ram.has_snapshot());
    drop(area_ram);

    // A snapshot (taken by a RAM access) pins the mapping only until
    // the end of its assist.
    let mut area_ram = AreaRam::new(vcpu.assist_parts().ram);
    assert_eq!(area_ram.get().read(0x10, &mut byte), Ok(RamStatus::Done));
    assert!(area_ram.has_snapshot());
    machine.gpa_unmap(0, 0x1000).unwrap();
    assert!(machine.hva_unmap(ram).is_err());
    drop(area_ram);
    assert!(vcpu.assist_parts().ram.snapshot.is_none());
    machine.hva_unmap(ram).unwrap();
}

/// `VcpuRam` with `check_entries` left to the default.
struct Default<'a>(&'a mut VcpuRam);
impl GuestRam for Default<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> std::result::Result<RamStatus, BusError> {
        self.0.read(gpa, buf)
    }
    fn read_aligned_u64(&mut self, gpa: u64) -> std::result::Result<Option<u64>, BusError> {
        self.0.read_aligned_u64(gpa)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> std::result::Result<RamStatus, BusError> {
        self.0.write(gpa, data)
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> std::result::Result<CompareWrite, BusError> {
        self.0.compare_and_write(gpa, expected, new)
    }
}

/// `VcpuRam::check_entries` gives the default's answer on random
/// walks over several areas (adjacent ones, one without read access)
/// and addresses outside any area, misaligned and straddling an area's
/// end included, both in a fresh assist and in one holding a snapshot.
#[test]
fn check_entries_agrees_with_the_default() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model, OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let ram = machine.hva_map(0x4000).unwrap();
    // GPA 0x0000..0x2000 and 0x2000..0x3000 (adjacent areas), 0x5000
    // write-only; the rest is not RAM.
    machine.gpa_map(&ram, 0, 0, 0x2000, Prot::ALL).unwrap();
    machine
        .gpa_map(&ram, 0x2000, 0x2000, 0x1000, Prot::READ)
        .unwrap();
    machine
        .gpa_map(&ram, 0x3000, 0x5000, 0x1000, Prot::WRITE)
        .unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut bytes = vec![0u8; 0x4000];
    bytes.iter_mut().for_each(|b| *b = next() as u8);
    machine.write_guest(0, &bytes[..0x3000]).unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    let rounds = if cfg!(miri) { 40 } else { 4000 };
    let mut seen = [0usize; 3];
    for round in 0..rounds {
        let wide = next() & 1 == 0;
        let n = (next() % 5) as usize;
        let entries: Vec<(u64, u64)> = (0..n)
            .map(|_| {
                let r = next();
                let gpa = match r % 4 {
                    // Near an area's edge.
                    0 => [0x2000u64, 0x3000, 0x5000, 0x6000][(r >> 8) as usize % 4]
                        .wrapping_add((r >> 16) % 16)
                        .wrapping_sub(8),
                    1 => (r >> 8) % 0x7000,
                    _ => ((r >> 8) % 0x7000) & !7,
                };
                let held = gpa < 0x2FF8 && r & (1 << 40) != 0;
                let value = if held {
                    let at = gpa as usize;
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&bytes[at..at + 8]);
                    let v = u64::from_le_bytes(v);
                    if wide { v } else { v & 0xFFFF_FFFF }
                } else {
                    next()
                };
                (gpa, value)
            })
            .collect();
        // Most rounds in an assist already holding a snapshot, whose
        // last area found is the first area, the second (read-only),
        // or none after a lookup of MMIO.
        let before = [None, Some(0x10u64), Some(0x2010), Some(0x7010)][round % 4];
        let lookup = |area_ram: &mut AreaRam<'_>| {
            if let Some(gpa) = before {
                let mut b = [0u8; 1];
                let want = if gpa < 0x3000 {
                    RamStatus::Done
                } else {
                    RamStatus::NotRam
                };
                assert_eq!(area_ram.get().read(gpa, &mut b), Ok(want));
                // The MMIO lookup took no snapshot: take it now.
                assert_eq!(area_ram.get().read(0x10, &mut b), Ok(RamStatus::Done));
                assert_eq!(area_ram.get().read(gpa, &mut b), Ok(want));
            }
        };
        let parts = vcpu.assist_parts();
        let mut area_ram = AreaRam::new(parts.ram);
        lookup(&mut area_ram);
        let want = Default(area_ram.get()).check_entries(&entries, wide);
        drop(area_ram);
        let parts = vcpu.assist_parts();
        let mut area_ram = AreaRam::new(parts.ram);
        lookup(&mut area_ram);
        let got = area_ram.get().check_entries(&entries, wide);
        assert_eq!(got, want, "{entries:x?} wide {wide}");
        seen[match got {
            Ok(EntryCheck::Held) => 0,
            Ok(EntryCheck::Changed { .. }) => 1,
            _ => 2,
        }] += 1;
    }
    // Each answer comes up (more than a tenth of the time here).
    assert!(seen.iter().all(|&k| k * 10 > rounds), "{seen:?}");
}

/// Within an assist holding a snapshot, every lookup (through the
/// last area found, the page the copy remembers as not RAM, or the
/// list) gives the snapshot's own answer, whatever the lookups before
/// it: random lookups over adjacent areas, areas with other rights, a
/// gap and MMIO, with page-straddling and area-straddling ranges.
#[test]
fn lookups_in_a_snapshot_answer_as_its_list() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model, OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let ram = machine.hva_map(0x6000).unwrap();
    machine.gpa_map(&ram, 0, 0, 0x2000, Prot::ALL).unwrap();
    machine
        .gpa_map(&ram, 0x2000, 0x2000, 0x1000, Prot::READ)
        .unwrap();
    machine
        .gpa_map(&ram, 0x3000, 0x5000, 0x2000, Prot::WRITE)
        .unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let rounds = if cfg!(miri) { 10 } else { 300 };
    for _ in 0..rounds {
        let parts = vcpu.assist_parts();
        let mut area_ram = AreaRam::new(parts.ram);
        let mut b = [0u8; 1];
        // Take the snapshot, with no last area yet or the first one.
        let first = if next() & 1 == 0 { 0x10 } else { 0x9010 };
        let _ = area_ram.get().read(first, &mut b);
        let _ = area_ram.get().read(0x10, &mut b);
        let ram = area_ram.get();
        let snapshot = Arc::clone(ram.snapshot.as_ref().unwrap());
        for _ in 0..32 {
            let r = next();
            let gpa = match r % 3 {
                0 => [0x2000u64, 0x3000, 0x5000, 0x7000][(r >> 8) as usize % 4]
                    .wrapping_add((r >> 16) % 32)
                    .wrapping_sub(16),
                1 => 0xfee0_0000 + (r >> 8) % 0x1000,
                _ => (r >> 8) % 0x8000,
            };
            let len = [0usize, 1, 2, 4, 8, 15][(r >> 32) as usize % 6];
            let need = [Prot::READ, Prot::WRITE, Prot::READ | Prot::WRITE][(r >> 40) as usize % 3];
            let want = snapshot.host_range(gpa, len, need);
            assert_eq!(
                ram.host_range(gpa, len, need),
                want,
                "{gpa:#x}+{len} {need:?}"
            );
        }
        drop(area_ram);
    }
}

/// A change of the area list between two assists is seen by the next
/// one, whatever the last assist cached: the area it found last (a
/// page remapped to other host memory, or unmapped) and the page it
/// remembered as not RAM (mapped since).
#[test]
fn the_next_assist_sees_a_changed_list() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model, OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let one = machine.hva_map(0x1000).unwrap();
    let two = machine.hva_map(0x1000).unwrap();
    machine.gpa_map(&one, 0, 0, 0x1000, Prot::ALL).unwrap();
    machine.write_guest(0x10, &[0x11]).unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    let mut byte = [0u8; 1];
    let mut read = |vcpu: &mut crate::Vcpu, gpa: u64| {
        let mut area_ram = AreaRam::new(vcpu.assist_parts().ram);
        // MMIO first: after a change of the list it takes the
        // snapshot and finds no area, so the next read goes through
        // the last area (which must not be one of the old list) or
        // the remembered page. Then RAM, and `gpa` again through what
        // that left.
        let _ = area_ram.get().read(0xfee0_0000, &mut byte);
        let first = area_ram.get().read(gpa, &mut byte).map(|s| (s, byte[0]));
        let _ = area_ram.get().read(0x10, &mut byte);
        let again = area_ram.get().read(gpa, &mut byte).map(|s| (s, byte[0]));
        assert_eq!(first, again, "{gpa:#x}");
        first
    };
    assert_eq!(read(&mut vcpu, 0x10), Ok((RamStatus::Done, 0x11)));
    assert_eq!(read(&mut vcpu, 0x1010).map(|r| r.0), Ok(RamStatus::NotRam));
    // Remapped to other host memory: the new bytes.
    machine.gpa_unmap(0, 0x1000).unwrap();
    machine.gpa_map(&two, 0, 0, 0x1000, Prot::ALL).unwrap();
    machine.write_guest(0x10, &[0x22]).unwrap();
    assert_eq!(read(&mut vcpu, 0x10), Ok((RamStatus::Done, 0x22)));
    // The page remembered as not RAM is RAM now.
    machine.gpa_map(&one, 0, 0x1000, 0x1000, Prot::ALL).unwrap();
    assert_eq!(read(&mut vcpu, 0x1010), Ok((RamStatus::Done, 0x11)));
    // Unmapped: not RAM, and nothing pins the host memory.
    machine.gpa_unmap(0, 0x1000).unwrap();
    machine.gpa_unmap(0x1000, 0x1000).unwrap();
    assert_eq!(read(&mut vcpu, 0x1010).map(|r| r.0), Ok(RamStatus::NotRam));
    assert_eq!(read(&mut vcpu, 0x10).map(|r| r.0), Ok(RamStatus::NotRam));
    assert!(vcpu.assist_parts().ram.snapshot.is_none());
    machine.hva_unmap(one).unwrap();
    machine.hva_unmap(two).unwrap();
}

/// `check_entries` after the page holding the entries was remapped to
/// other host memory between two assists reads the new memory, though
/// the area the last assist found held every entry.
#[test]
fn check_entries_sees_a_remapped_table() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model, OpenMode::User).unwrap();
    let machine = nvmm.create_machine().unwrap();
    let one = machine.hva_map(0x1000).unwrap();
    let two = machine.hva_map(0x1000).unwrap();
    machine.gpa_map(&one, 0, 0, 0x1000, Prot::ALL).unwrap();
    machine.write_guest(0x100, &7u64.to_le_bytes()).unwrap();
    machine.write_guest(0x108, &9u64.to_le_bytes()).unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    let entries = [(0x100, 7), (0x108, 9)];
    let check = |vcpu: &mut crate::Vcpu| {
        let mut area_ram = AreaRam::new(vcpu.assist_parts().ram);
        area_ram.get().check_entries(&entries, true)
    };
    assert_eq!(check(&mut vcpu), Ok(EntryCheck::Held));
    assert_eq!(check(&mut vcpu), Ok(EntryCheck::Held));
    machine.gpa_unmap(0, 0x1000).unwrap();
    machine.gpa_map(&two, 0, 0, 0x1000, Prot::ALL).unwrap();
    machine.write_guest(0x100, &7u64.to_le_bytes()).unwrap();
    assert_eq!(check(&mut vcpu), Ok(EntryCheck::Changed { index: 1 }));
    machine.gpa_unmap(0, 0x1000).unwrap();
    assert_eq!(check(&mut vcpu), Ok(EntryCheck::NotRam { gpa: 0x100 }));
    machine.hva_unmap(one).unwrap();
    machine.hva_unmap(two).unwrap();
}
