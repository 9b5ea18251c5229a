//! Segmentation against the CPU: a 32-bit protected-mode KVM guest (no
//! paging) accesses `ds:[ebx]` or `ss:[ebx]` (1, 2 or 4 bytes, read or
//! write) through a data or code segment with a random base, limit, type
//! (expand-up/down, read-only/writable) and D/B bit, or an unusable one.
//! [`linear_address`] must agree with the CPU on `#GP(0)`, `#SS(0)` or
//! success, and on success on the linear address (which the guest's MMIO
//! exit reveals: RAM is only 1 MiB, everything above it is MMIO).
//! Skips with a printed reason where /dev/kvm is absent.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use crate::support;

use kvm_bindings::kvm_segment;
use kvm_ioctls::{Kvm, VcpuExit};
use nvmm_assist::{
    AccessType, CpuMode, Error, Exception, Segment, SegmentAttributes, SegmentRegister,
    linear_address,
};
use support::kvm_flat::FlatVm;
use support::*;

const MEM: usize = 0x10_0000;
const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const STUBS: u64 = 0x3000;
const CODE: u64 = 0x4000;
const STACK: u64 = 0x8000;
const DONE_PORT: u16 = 0x80;

#[derive(Debug, Clone, Copy)]
struct Case {
    ss: bool,
    write: bool,
    size: u8,
    seg: SegmentRegister,
    unusable: bool,
    offset: u32,
    /// ESP for SS cases (valid in the test segment).
    esp: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The access reached memory; the linear address when it hit MMIO.
    Ok(Option<u64>),
    Gp0,
    Ss0,
    Other(String),
}

fn kvm_seg(s: &SegmentRegister, unusable: bool) -> kvm_segment {
    let a = s.attributes;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: a.typ(),
        present: u8::from(a.present()),
        dpl: a.dpl(),
        db: u8::from(a.db()),
        s: u8::from(a.s()),
        l: u8::from(a.l()),
        g: u8::from(a.g()),
        avl: 0,
        unusable: u8::from(unusable),
        padding: 0,
    }
}

fn flat(selector: u16, typ: u8) -> SegmentRegister {
    SegmentRegister {
        selector,
        base: 0,
        limit: 0xFFFF_FFFF,
        attributes: SegmentAttributes::new(typ, true, 0, true, false, false, true, true),
    }
}

fn image(case: &Case) -> Vec<u8> {
    let mut ram = TestRam::new(MEM);
    ram.write_u64(GDT + 8, 0x00CF_9B00_0000_FFFF);
    ram.write_u64(GDT + 16, 0x00CF_9300_0000_FFFF);
    for v in 0..32u64 {
        let stub = STUBS + v * 16;
        let gate = (stub & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((stub >> 16) & 0xFFFF) << 48);
        ram.write_u64(IDT + v * 8, gate);
        let has_code = matches!(v, 8 | 10..=14 | 17);
        let mut code = Vec::new();
        if has_code {
            code.push(0x5E); // pop esi
        }
        code.extend_from_slice(&[0xBF, v as u8, 0, 0, 0, 0xF4]); // mov edi, v; hlt
        ram.put(stub, &code);
    }
    let mut code = Vec::new();
    if case.ss {
        code.push(0x36);
    }
    match (case.size, case.write) {
        (1, false) => code.extend_from_slice(&[0x8A, 0x03]),
        (1, true) => code.extend_from_slice(&[0x88, 0x03]),
        (2, false) => code.extend_from_slice(&[0x66, 0x8B, 0x03]),
        (2, true) => code.extend_from_slice(&[0x66, 0x89, 0x03]),
        (_, false) => code.extend_from_slice(&[0x8B, 0x03]),
        (_, true) => code.extend_from_slice(&[0x89, 0x03]),
    }
    code.extend_from_slice(&[0xE6, 0x80]);
    ram.put(CODE, &code);
    ram.mem
}

fn run_kvm(kvm: &Kvm, case: &Case) -> Result<Outcome, String> {
    let mut guest = FlatVm::new(kvm, &image(case))?;
    let vcpu = &mut guest.vcpu;
    let mut sregs = vcpu.get_sregs().map_err(|e| format!("get_sregs: {e}"))?;
    sregs.cs = kvm_seg(&flat(0x08, 0xB), false);
    let data = kvm_seg(&flat(0x10, 0x3), false);
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ds = data;
    sregs.ss = data;
    let test = kvm_seg(&case.seg, case.unusable);
    if case.ss {
        sregs.ss = test;
    } else {
        sregs.ds = test;
    }
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 23;
    sregs.idt.base = IDT;
    sregs.idt.limit = 32 * 8 - 1;
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("set_sregs: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("get_regs: {e}"))?;
    regs.rip = CODE;
    regs.rsp = if case.ss { u64::from(case.esp) } else { STACK };
    regs.rflags = 2;
    regs.rbx = u64::from(case.offset);
    regs.rdi = 0xFF;
    vcpu.set_regs(&regs).map_err(|e| format!("set_regs: {e}"))?;
    let outcome = match vcpu.run().map_err(|e| format!("run: {e}"))? {
        VcpuExit::IoOut(DONE_PORT, _) => Outcome::Ok(None),
        VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _) => Outcome::Ok(Some(addr)),
        VcpuExit::Hlt => {
            let r = vcpu.get_regs().map_err(|e| format!("get_regs: {e}"))?;
            match (r.rdi, r.rsi) {
                (13, 0) => Outcome::Gp0,
                (12, 0) => Outcome::Ss0,
                (v, c) => Outcome::Other(format!("vector {v} code {c:#x}")),
            }
        }
        other => Outcome::Other(format!("exit {other:?}")),
    };
    Ok(outcome)
}

fn run_model(case: &Case) -> Result<u64, Error> {
    // KVM runs the guest on this CPU: the assist runs as its vendor.
    let mut regs = nvmm_assist::Registers::flat_protected32(support::host_vendor::host_vendor());
    let mut seg = case.seg;
    if case.unusable {
        seg.attributes = SegmentAttributes(seg.attributes.0 & !(1 << 7));
    }
    let which = if case.ss { Segment::Ss } else { Segment::Ds };
    regs.segments[which as usize] = seg;
    let access = if case.write {
        AccessType::Write
    } else {
        AccessType::Read
    };
    linear_address(
        &regs,
        CpuMode::Protected32,
        which,
        u64::from(case.offset),
        u64::from(case.size),
        access,
    )
}

fn random_case(rng: &mut Rng) -> Option<Case> {
    let ss = rng.next().is_multiple_of(3);
    let typ = if ss {
        rng.pick(&[0x3, 0x7])
    } else {
        rng.pick(&[0x1, 0x3, 0x5, 0x7, 0xB, 0xF])
    };
    let db = rng.next().is_multiple_of(2);
    let random_limit = (rng.next() as u32) | 0xFFF;
    let limit: u32 = rng.pick(&[
        0xFFF,
        0xFFFF,
        0x1_0000,
        0xF_FFFF,
        0xFFFF_FFFF,
        0x7FF,
        random_limit,
    ]);
    let base = rng.pick(&[0u64, 0x10_0000, 0xFFFF_0000, 0x4_0000]);
    let expand_down = typ & 0x8 == 0 && typ & 0x4 != 0;
    // Byte-granular limits below 1 MiB; page-granular (low 12 bits set) above.
    let g = limit > 0xF_FFFF;
    let seg = SegmentRegister {
        selector: 0x10,
        base,
        limit,
        attributes: SegmentAttributes::new(typ, true, 0, true, false, false, db, g),
    };
    let upper: u64 = if db { 0xFFFF_FFFF } else { 0xFFFF };
    let l = u64::from(limit);
    let size = rng.pick(&[1u8, 2, 4]);
    let edge = if expand_down { l + 1 } else { l };
    let near = |d: i64| edge.wrapping_add(d as u64) as u32;
    let random_offset = rng.next() as u32;
    let offset = rng.pick(&[
        near(-3),
        near(-1),
        near(0),
        near(1),
        near(2),
        0,
        0xFFFE,
        0xFFFF,
        0x1_0000,
        0xFFFF_FFFD,
        0xFFFF_FFFF,
        random_offset,
    ]);
    // For SS cases the handler's pushes need a valid, RAM-backed stack.
    let esp = if ss {
        let e: u64 = if expand_down {
            l + 0x1000
        } else {
            l.min(0x7FFF) + 1
        };
        if e > upper || e < 0x100 || base + e > MEM as u64 || (expand_down && e - 0x20 <= l) {
            return None;
        }
        e as u32 & !3
    } else {
        0
    };
    Some(Case {
        ss,
        write: rng.next().is_multiple_of(2),
        size,
        seg,
        unusable: !ss && rng.next().is_multiple_of(16),
        offset,
        esp,
    })
}

#[test]
fn segmentation_matches_the_cpu() {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            println!("skipped: /dev/kvm unavailable ({e})");
            return;
        }
    };
    let mut rng = Rng(0x5E6_0000_1234_5678);
    let mut counts = [0usize; 3];
    let mut n = 0;
    while n < 500 {
        let Some(case) = random_case(&mut rng) else {
            continue;
        };
        n += 1;
        let cpu = match run_kvm(&kvm, &case) {
            Ok(o) => o,
            Err(e) if n == 1 => {
                println!("skipped: KVM refused the protected-mode setup: {e}");
                return;
            }
            Err(e) => panic!("case {n} {case:?}: {e}"),
        };
        let model = run_model(&case);
        match (&model, &cpu) {
            (Ok(lin), Outcome::Ok(seen)) => {
                counts[0] += 1;
                if let Some(addr) = seen {
                    // The exit reports the first byte's address, or for an
                    // access split by the MMIO boundary, a later piece.
                    assert!(
                        *addr == *lin || (*addr > *lin && *addr < lin + u64::from(case.size)),
                        "case {n}: linear {lin:#x}, CPU accessed {addr:#x}: {case:?}"
                    );
                }
            }
            (Err(Error::Exception(Exception::GeneralProtection(0))), Outcome::Gp0) => {
                counts[1] += 1
            }
            (Err(Error::Exception(Exception::StackSegment(0))), Outcome::Ss0) => counts[2] += 1,
            _ => panic!("case {n}: model {model:?}, CPU {cpu:?}: {case:?}"),
        }
    }
    println!("KVM segmentation oracle: ok/#GP/#SS = {counts:?}, all agree");
    assert!(counts.iter().all(|&c| c > 10));
}
