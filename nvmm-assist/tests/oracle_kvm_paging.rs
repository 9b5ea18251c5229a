//! The page walker against the CPU: a 64-bit KVM guest (4-level paging,
//! 4 KiB and 2 MiB pages, CPL 0 and 3, CR0.WP, EFER.NXE, CR4.SMEP/SMAP,
//! RFLAGS.AC) reads, writes or jumps to a test address; its #PF handler
//! records CR2 and the error code. [`translate`] on the same memory image
//! must agree on success or on the exact fault, and on a successful access
//! leave the page tables with the same accessed/dirty bits as the CPU.
//!
//! Only 4-level paging with 4 KiB/2 MiB pages runs under this machine's KVM
//! (see HELPERS.md); the other modes are covered by the SDM-derived tests in
//! `tests/translate.rs`. Skips with a printed reason where /dev/kvm is
//! absent or refuses the setup.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use crate::support;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_segment};
use kvm_ioctls::{Kvm, VcpuExit};
use nvmm_assist::{AccessType, Error, Exception, translate};
use support::kvm_flat::FlatVm;
use support::*;

const MEM: usize = 0x40_0000;
const ROOT: u64 = 0x10_0000;
const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const HANDLERS: u64 = 0x3000;
const TSS: u64 = 0x4000;
const USER_CODE: u64 = 0x5000;
const USER_STACK_PAGE: u64 = 0x6000;
const KERNEL_CODE: u64 = 0xB000;
const KERNEL_STACK_PAGE: u64 = 0x9000;
/// The test linear addresses: PML4 slot 1, away from the low identity map.
const T4K: u64 = 0x80_0000_0100;
const T2M: u64 = 0x80_4000_0100;
const FRAME_4K: u64 = 0x30_0000;
const FRAME_2M: u64 = 0x20_0000;
/// `out 0x80, al`: the success signal.
const DONE_PORT: u16 = 0x80;

#[derive(Debug, Clone, Copy)]
struct Case {
    cpl: u8,
    access: AccessType,
    large: bool,
    leaf: u64,
    /// Bits cleared from / set in the entry above the leaf.
    upper_clear: u64,
    upper_set: u64,
    /// PS set in the PML4E (a reserved bit).
    pml4_ps: bool,
    wp: bool,
    nxe: bool,
    smep: bool,
    smap: bool,
    ac: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Result2 {
    Ok,
    PageFault { address: u64, code: u32 },
    Other(String),
}

struct Image {
    ram: TestRam,
    upper: u64,
    leaf: u64,
}

fn build(case: &Case) -> Image {
    let mut ram = TestRam::new(MEM);
    let mut pt = PageTables::new(Layout::Level4, ROOT);
    let ad = pte::A | pte::D;
    // Low identity map, 4 KiB pages, all accessed and dirty already.
    let sup = pte::P | pte::RW | ad;
    for page in [GDT, IDT, HANDLERS, TSS, KERNEL_CODE, KERNEL_STACK_PAGE] {
        pt.map(&mut ram, page, page, 1, sup);
    }
    pt.map(&mut ram, USER_CODE, USER_CODE, 1, pte::P | pte::US | ad);
    pt.map(&mut ram, USER_STACK_PAGE, USER_STACK_PAGE, 1, pte::PWU | ad);
    for level in 2..=4 {
        let at = pt.entry_gpa(&mut ram, GDT, level);
        pt.modify(&mut ram, at, pte::A, 0);
    }
    // The test mapping.
    let (linear, frame, leaf_level) = if case.large {
        (T2M, FRAME_2M, 2)
    } else {
        (T4K, FRAME_4K, 1)
    };
    let leaf = pt.map(&mut ram, linear & !0xFFF, frame, leaf_level, case.leaf);
    let upper = pt.entry_gpa(&mut ram, linear & !0xFFF, leaf_level + 1);
    pt.modify(&mut ram, upper, case.upper_set, case.upper_clear);
    if case.pml4_ps {
        let at = pt.entry_gpa(&mut ram, linear, 4);
        pt.modify(&mut ram, at, pte::PS, 0);
    }
    // out 0x80, al at the test address for fetches.
    ram.put(frame + 0x100, &[0xE6, 0x80]);

    // GDT: null, kernel code64, kernel data, user data, user code64, TSS.
    let gdt: [u64; 7] = [
        0,
        0x00AF_9B00_0000_FFFF,
        0x00CF_9300_0000_FFFF,
        0x00CF_F300_0000_FFFF,
        0x00AF_FB00_0000_FFFF,
        0x67 | ((TSS & 0xFF_FFFF) << 16) | (0x8B << 40) | (((TSS >> 24) & 0xFF) << 56),
        TSS >> 32,
    ];
    for (i, d) in gdt.iter().enumerate() {
        ram.write_u64(GDT + 8 * i as u64, *d);
    }
    ram.write_u64(TSS + 4, KERNEL_STACK_PAGE + 0x1000);
    // IDT: vector 14 -> #PF handler; every other vector -> a stub that
    // records its number in r15 and halts.
    for v in 0..32u64 {
        let handler = if v == 14 {
            HANDLERS
        } else {
            HANDLERS + 0x200 + v * 8
        };
        let lo =
            (handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((handler >> 16) & 0xFFFF) << 48);
        ram.write_u64(IDT + 16 * v, lo);
        ram.write_u64(IDT + 16 * v + 8, handler >> 32);
        // mov r15d, v; hlt
        ram.put(
            HANDLERS + 0x200 + v * 8,
            &[0x41, 0xBF, v as u8, 0, 0, 0, 0xF4],
        );
    }
    // #PF: pop rdx (error code); mov rcx, cr2; mov r15d, 14; hlt.
    ram.put(
        HANDLERS,
        &[0x5A, 0x0F, 0x20, 0xD1, 0x41, 0xBF, 14, 0, 0, 0, 0xF4],
    );
    // The test instruction, then out 0x80, al.
    let code: &[u8] = match case.access {
        AccessType::Read => &[0x8A, 0x03, 0xE6, 0x80],
        AccessType::Write => &[0x88, 0x03, 0xE6, 0x80],
        AccessType::Execute => &[0xFF, 0xE3],
    };
    ram.put(USER_CODE, code);
    ram.put(KERNEL_CODE, code);
    Image { ram, upper, leaf }
}

fn seg(selector: u16, code: bool, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn control(case: &Case) -> (u64, u64, u64, u64) {
    let cr0 = 0x8000_0031 | if case.wp { bits::CR0_WP } else { 0 };
    let cr4 = bits::CR4_PAE
        | if case.smep { bits::CR4_SMEP } else { 0 }
        | if case.smap { bits::CR4_SMAP } else { 0 };
    let efer = bits::EFER_LME | bits::EFER_LMA | if case.nxe { bits::EFER_NXE } else { 0 };
    let rflags = 2 | 0x3000 | if case.ac { bits::RFLAGS_AC } else { 0 };
    (cr0, cr4, efer, rflags)
}

fn linear(case: &Case) -> u64 {
    if case.large { T2M } else { T4K }
}

/// Runs the case on KVM: the outcome and the guest memory afterwards.
fn run_kvm(kvm: &Kvm, case: &Case, image: &Image) -> Result<(Result2, Vec<u8>), String> {
    let mut guest = FlatVm::new(kvm, &image.ram.mem)?;
    let vcpu = &mut guest.vcpu;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("cpuid: {e}"))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| format!("set_cpuid2: {e}"))?;
    let (cr0, cr4, efer, rflags) = control(case);
    let mut sregs = vcpu.get_sregs().map_err(|e| format!("get_sregs: {e}"))?;
    let user = case.cpl == 3;
    sregs.cs = if user {
        seg(0x23, true, 3)
    } else {
        seg(0x08, true, 0)
    };
    let data = if user {
        seg(0x1B, false, 3)
    } else {
        seg(0x10, false, 0)
    };
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS,
        limit: 0x67,
        selector: 0x28,
        type_: 11,
        present: 1,
        s: 0,
        ..seg(0, false, 0)
    };
    sregs.tr.db = 0;
    sregs.tr.g = 0;
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 7 * 8 - 1;
    sregs.idt.base = IDT;
    sregs.idt.limit = 32 * 16 - 1;
    sregs.cr0 = cr0;
    sregs.cr3 = ROOT;
    sregs.cr4 = cr4;
    sregs.efer = efer;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("set_sregs: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("get_regs: {e}"))?;
    regs.rip = if user { USER_CODE } else { KERNEL_CODE };
    regs.rsp = if user {
        USER_STACK_PAGE + 0x1000
    } else {
        KERNEL_STACK_PAGE + 0x1000
    };
    regs.rflags = rflags;
    regs.rbx = linear(case);
    regs.r15 = 0;
    vcpu.set_regs(&regs).map_err(|e| format!("set_regs: {e}"))?;
    let outcome = match vcpu.run().map_err(|e| format!("run: {e}"))? {
        VcpuExit::IoOut(DONE_PORT, _) => Result2::Ok,
        VcpuExit::Hlt => {
            let r = vcpu.get_regs().map_err(|e| format!("get_regs: {e}"))?;
            if r.r15 == 14 {
                Result2::PageFault {
                    address: r.rcx,
                    code: r.rdx as u32,
                }
            } else {
                Result2::Other(format!("exception vector {} at rip {:#x}", r.r15, r.rip))
            }
        }
        other => Result2::Other(format!("exit {other:?}")),
    };
    Ok((outcome, guest.ram()))
}

fn run_model(case: &Case, image: &mut Image) -> Result2 {
    let (cr0, cr4, efer, rflags) = control(case);
    // KVM runs the guest on this CPU: the assist runs as its vendor.
    let mut regs =
        nvmm_assist::Registers::long_mode(support::host_vendor::host_vendor(), ROOT, 0, 0)
            .at_cpl(case.cpl);
    regs.cr0 = cr0;
    regs.cr4 = cr4;
    regs.efer = efer;
    regs.rflags = rflags;
    match translate(&regs, &mut image.ram, linear(case), case.access) {
        Ok(_) => Result2::Ok,
        Err(Error::Exception(Exception::PageFault { address, code })) => {
            Result2::PageFault { address, code }
        }
        Err(e) => Result2::Other(format!("{e:?}")),
    }
}

fn random_case(rng: &mut Rng) -> Case {
    let access =
        [AccessType::Read, AccessType::Write, AccessType::Execute][(rng.next() % 3) as usize];
    let mut leaf = pte::P;
    if rng.chance(5) {
        leaf = 0;
    }
    if rng.chance(60) {
        leaf |= pte::RW;
    }
    if rng.chance(60) {
        leaf |= pte::US;
    }
    if rng.chance(25) {
        leaf |= pte::XD;
    }
    let upper_clear = [0, 0, 0, pte::US, pte::RW][(rng.next() % 5) as usize];
    let upper_set = if rng.chance(15) { pte::XD } else { 0 };
    Case {
        cpl: if rng.chance(50) { 3 } else { 0 },
        access,
        large: rng.chance(40),
        leaf,
        upper_clear,
        upper_set,
        pml4_ps: rng.chance(4),
        wp: rng.chance(70),
        nxe: rng.chance(80),
        smep: rng.chance(40),
        smap: rng.chance(40),
        ac: rng.chance(40),
    }
}

#[test]
fn page_walker_matches_the_cpu() {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            println!("skipped: /dev/kvm unavailable ({e})");
            return;
        }
    };
    let mut rng = Rng(0x0DDB_A11C_0FFE_E123);
    let (mut faults, mut oks) = (0, 0);
    let mut ad_diffs_on_fault = 0;
    for n in 0..400 {
        let case = random_case(&mut rng);
        let mut image = build(&case);
        let (cpu, cpu_mem) = match run_kvm(&kvm, &case, &image) {
            Ok(r) => r,
            Err(e) if n == 0 => {
                println!("skipped: KVM refused the 64-bit setup: {e}");
                return;
            }
            Err(e) => panic!("case {n} {case:?}: {e}"),
        };
        let model = run_model(&case, &mut image);
        assert_eq!(model, cpu, "case {n}: {case:?}");
        let entries = [image.upper, image.leaf];
        for at in entries {
            let ours = image.ram.read_u64(at);
            let theirs =
                u64::from_le_bytes(cpu_mem[at as usize..at as usize + 8].try_into().unwrap());
            if cpu == Result2::Ok {
                assert_eq!(
                    ours, theirs,
                    "case {n}: entry at {at:#x} after success, {case:?}"
                );
            } else if ours != theirs {
                ad_diffs_on_fault += 1;
            }
        }
        match cpu {
            Result2::Ok => oks += 1,
            _ => faults += 1,
        }
    }
    println!(
        "KVM oracle: {oks} successful and {faults} faulting accesses agree; \
         {ad_diffs_on_fault} entries whose accessed bit the CPU set on a faulting walk"
    );
    assert!(oks > 20 && faults > 20);
}
