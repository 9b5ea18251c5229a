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

use crate::kvm_support;
use crate::netbsd_guests as guests;

use std::collections::BTreeMap;

use guests::{CODE, DATA, END_MSR, PML4, PORT};
use kvm_ioctls::{Kvm, VcpuExit};
use kvm_support::{KvmVm, say, set_flat_long_mode, user_space_msr_exits};

const RAM: usize = 0x10000;

/// A VM with RAM at `[0, RAM)` except the page at `hole` (if any), the
/// code and page tables loaded, and the VCPU in long or real mode.
fn vm(
    kvm: &Kvm,
    code: &[u8],
    hole: Option<u64>,
    real_mode: bool,
    data: &[u8],
) -> Result<KvmVm, String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let _ = vm.set_tss_address(0xfffb_d000);
    user_space_msr_exits(&vm)?;
    let slots: Vec<(u64, u64)> = match hole {
        Some(h) => vec![(0, h), (h + 0x1000, RAM as u64 - h - 0x1000)],
        None => vec![(0, RAM as u64)],
    };
    let v = KvmVm::new(vm, RAM, &slots, |mem| {
        for (gpa, entry) in guests::page_tables() {
            mem[gpa as usize..gpa as usize + 8].copy_from_slice(&entry.to_le_bytes());
        }
        mem[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
        mem[DATA as usize..DATA as usize + data.len()].copy_from_slice(data);
    })?;
    let mut s = v.vcpu.get_sregs().map_err(|e| e.to_string())?;
    let mut r = v.vcpu.get_regs().map_err(|e| e.to_string())?;
    r.rflags = 2;
    r.rip = CODE;
    r.rsp = 0x8000;
    if real_mode {
        s.cs.selector = 0;
        s.cs.base = 0;
    } else {
        set_flat_long_mode(&mut s, PML4);
    }
    v.vcpu.set_sregs(&s).map_err(|e| e.to_string())?;
    v.vcpu.set_regs(&r).map_err(|e| e.to_string())?;
    Ok(v)
}

/// Runs to the end marker, with the port as a byte stream (`input`:
/// what IN reads) and MMIO on `mmio`; returns what OUT wrote.
fn run(v: &mut KvmVm, input: &[u8], mmio: &mut BTreeMap<u64, u8>) -> Result<Vec<u8>, String> {
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
            Ok(_) if t.input => v.ram()[DATA as usize..DATA as usize + t.wanted.len()].to_vec(),
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
