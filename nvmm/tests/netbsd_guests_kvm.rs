//! NetBSD's `h_io_assist` and `h_mem_assist` guest programs
//! (`tests/guests/netbsd.rs`, also run on the real kernel by
//! `kernel_netbsd_assist.rs`) on KVM, with KVM's decoded port and MMIO
//! exits fed to the same kind of devices and the same results checked.
//! This proves the re-encoded programs and their expected values on
//! hardware virtualization; the NVMM side (exits completed by nvmm-rs's
//! assists) is NetBSD-only.
//!
//! The end marker, an RDMSR of MSR 0xFFFFFFFF, reaches the VMM through
//! `KVM_CAP_X86_USER_SPACE_MSR` (unknown MSRs exit to userland, as every
//! unhandled MSR does on NVMM). Skips, saying why, without /dev/kvm or
//! without that capability.

// Real /dev/kvm ioctls, which miri cannot run.
#![cfg(not(miri))]
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

#[path = "guests/netbsd.rs"]
mod guests;

use std::collections::BTreeMap;
use std::io::Write as _;

use guests::{CODE, DATA, END_MSR, PML4, PORT};
use kvm_bindings::{
    KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_UNKNOWN, kvm_enable_cap, kvm_segment,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

const RAM: usize = 0x10000;

struct Vm {
    vcpu: VcpuFd,
    _vm: VmFd,
    ram: *mut u8,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // SAFETY: the RAM mapping of `new`; the VM is only dropped after
        // this body, but KVM holds no access to it outside KVM_RUN.
        unsafe { libc::munmap(self.ram.cast(), RAM) };
    }
}

/// A VM with RAM at `[0, RAM)` except the page at `hole` (if any), the
/// code and page tables loaded, and the VCPU in long or real mode.
fn vm(
    kvm: &Kvm,
    code: &[u8],
    hole: Option<u64>,
    real_mode: bool,
    data: &[u8],
) -> Result<Vm, String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let _ = vm.set_tss_address(0xfffb_d000);
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(KVM_MSR_EXIT_REASON_UNKNOWN), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)
        .map_err(|e| format!("KVM_CAP_X86_USER_SPACE_MSR: {e}"))?;
    // SAFETY: a fresh anonymous mapping.
    let ram = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RAM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ram == libc::MAP_FAILED {
        return Err("mmap failed".into());
    }
    let ram = ram.cast::<u8>();
    let slots: Vec<(u64, u64)> = match hole {
        Some(h) => vec![(0, h), (h + 0x1000, RAM as u64 - h - 0x1000)],
        None => vec![(0, RAM as u64)],
    };
    for (i, (gpa, len)) in slots.into_iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: i as u32,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: ram as u64 + gpa,
        };
        // SAFETY: the region lies in the RAM mapping, which outlives the VM
        // (unmapped in Drop).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    }
    // SAFETY: RAM bytes of the mapping above.
    let mem = unsafe { std::slice::from_raw_parts_mut(ram, RAM) };
    for (gpa, entry) in guests::page_tables() {
        mem[gpa as usize..gpa as usize + 8].copy_from_slice(&entry.to_le_bytes());
    }
    mem[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
    mem[DATA as usize..DATA as usize + data.len()].copy_from_slice(data);
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut s = vcpu.get_sregs().map_err(|e| e.to_string())?;
    let mut r = vcpu.get_regs().map_err(|e| e.to_string())?;
    r.rflags = 2;
    r.rip = CODE;
    r.rsp = 0x8000;
    if real_mode {
        s.cs.selector = 0;
        s.cs.base = 0;
    } else {
        let seg = |selector, type_, l, db| kvm_segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db,
            s: 1,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        s.cs = seg(0x08, 0xB, 1, 0);
        let d = seg(0x10, 0x3, 0, 1);
        (s.ds, s.es, s.ss, s.fs, s.gs) = (d, d, d, d, d);
        s.cr0 = 0x8000_0031; // PE ET NE PG
        s.cr3 = PML4;
        s.cr4 = 1 << 5; // PAE
        s.efer = (1 << 8) | (1 << 10); // LME LMA
    }
    vcpu.set_sregs(&s).map_err(|e| e.to_string())?;
    vcpu.set_regs(&r).map_err(|e| e.to_string())?;
    Ok(Vm { vcpu, _vm: vm, ram })
}

/// Runs to the end marker, with the port as a byte stream (`input`:
/// what IN reads) and MMIO on `mmio`; returns what OUT wrote.
fn run(v: &mut Vm, input: &[u8], mmio: &mut BTreeMap<u64, u8>) -> Result<Vec<u8>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match v.vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::IoIn(p, d) if p == PORT => {
                for b in d.iter_mut() {
                    *b = input.get(pos).copied().unwrap_or(0);
                    pos += 1;
                }
            }
            VcpuExit::IoOut(p, d) if p == PORT => out.extend_from_slice(d),
            VcpuExit::MmioRead(a, d) => {
                for (i, b) in d.iter_mut().enumerate() {
                    *b = mmio.get(&(a + i as u64)).copied().unwrap_or(0);
                }
            }
            VcpuExit::MmioWrite(a, d) => {
                for (i, b) in d.iter().enumerate() {
                    mmio.insert(a + i as u64, *b);
                }
            }
            VcpuExit::X86Rdmsr(e) if e.index == END_MSR => return Ok(out),
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    Err("no end marker after 10000 exits".into())
}

fn open() -> Option<Kvm> {
    match Kvm::new() {
        Ok(k) => Some(k),
        Err(e) => {
            say(&format!("NetBSD guests on KVM: skipped: /dev/kvm: {e}"));
            None
        }
    }
}

#[test]
fn h_io_assist_programs_on_kvm() {
    let Some(kvm) = open() else { return };
    let mut failed = Vec::new();
    for t in guests::io_tests() {
        let data = if t.input {
            &[][..]
        } else {
            t.wanted.as_bytes()
        };
        let mut v = match vm(&kvm, &t.code, None, false, data) {
            Ok(v) => v,
            Err(e) if e.starts_with("KVM_CAP") => {
                say(&format!("NetBSD guests on KVM: skipped: {e}"));
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let input = if t.input { t.wanted.as_bytes() } else { &[] };
        let got = match run(&mut v, input, &mut BTreeMap::new()) {
            Ok(_) if t.input => {
                // SAFETY: RAM bytes of the VM's mapping, the VCPU not running.
                let mem = unsafe { std::slice::from_raw_parts(v.ram, RAM) };
                mem[DATA as usize..DATA as usize + t.wanted.len()].to_vec()
            }
            Ok(out) => out,
            Err(e) => {
                failed.push(format!("{}: {e}", t.name));
                continue;
            }
        };
        if got == t.wanted.as_bytes() {
            say(&format!("NetBSD guests on KVM: '{}' passed", t.name));
        } else {
            failed.push(format!(
                "{}: wanted {:?}, got {:?}",
                t.name,
                t.wanted,
                String::from_utf8_lossy(&got)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn h_mem_assist_programs_on_kvm() {
    let Some(kvm) = open() else { return };
    let mut failed = Vec::new();
    for t in guests::mem_tests() {
        let mut v = match vm(&kvm, &t.code, Some(DATA), t.real_mode, &[]) {
            Ok(v) => v,
            Err(e) if e.starts_with("KVM_CAP") => {
                say(&format!("NetBSD guests on KVM: skipped: {e}"));
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let mut mmio = BTreeMap::new();
        if let Err(e) = run(&mut v, &[], &mut mmio) {
            failed.push(format!("{}: {e}", t.name));
            continue;
        }
        let got = (0..8).fold(0u64, |acc, i| {
            acc | u64::from(mmio.get(&(t.at + i)).copied().unwrap_or(0)) << (8 * i)
        });
        if got == t.wanted {
            say(&format!("NetBSD guests on KVM: '{}' passed", t.name));
        } else {
            failed.push(format!("{}: wanted {:#x}, got {got:#x}", t.name, t.wanted));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
