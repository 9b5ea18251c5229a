//! The KVM VM set-up shared by the KVM guest tests
//! (`capability_guests_kvm.rs`, `netbsd_guests_kvm.rs`, `toyvm_kvm.rs`):
//! anonymous guest RAM registered with `KVM_SET_USER_MEMORY_REGION`, the
//! program loaded, VCPU 0 created, and the flat long-mode segment state.
//! Each test keeps its own capabilities, register set-up and exit handling.
// Each test uses only part of this module.
#![allow(dead_code)]

use std::io::Write as _;

use kvm_bindings::{
    KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_UNKNOWN, kvm_enable_cap, kvm_segment,
    kvm_sregs, kvm_userspace_memory_region,
};
use kvm_ioctls::{VcpuFd, VmFd};

/// Prints past libtest's capture, so skips show in `cargo test` output.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Makes the MSRs KVM does not know exit to userland
/// (`KVM_CAP_X86_USER_SPACE_MSR`), as every unhandled MSR does on NVMM.
/// The error starts with `KVM_CAP` (the tests skip on it).
pub fn user_space_msr_exits(vm: &VmFd) -> Result<(), String> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(KVM_MSR_EXIT_REASON_UNKNOWN), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)
        .map_err(|e| format!("KVM_CAP_X86_USER_SPACE_MSR: {e}"))
}

/// An anonymous read-write mapping that backs the guest RAM.
struct GuestRam {
    ptr: *mut u8,
    len: usize,
}

impl GuestRam {
    fn new(len: usize) -> Result<GuestRam, String> {
        // SAFETY: a fresh anonymous mapping; it replaces no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mmap of guest RAM failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(GuestRam {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `GuestRam::new`; `KvmVm` drops it
        // after the VCPU and VM fds, so KVM no longer uses it.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A VM with VCPU 0 and its guest RAM. The fields drop in declaration
/// order: the VCPU and VM fds are closed before the RAM is unmapped.
pub struct KvmVm {
    /// VCPU 0.
    pub vcpu: VcpuFd,
    vm: VmFd,
    ram: GuestRam,
}

impl Drop for KvmVm {
    /// Nothing to do beyond the fields' own drops; the impl exists so no
    /// field can be moved out (a VCPU fd must not outlive the RAM it runs
    /// on).
    fn drop(&mut self) {}
}

impl KvmVm {
    /// Maps `ram_size` bytes of guest RAM, registers each `(gpa, size)` of
    /// `slots` (slot number = index; the RAM at offset `gpa` backs guest
    /// physical `gpa`), lets `load` write the program into the RAM, then
    /// creates VCPU 0.
    pub fn new(
        vm: VmFd,
        ram_size: usize,
        slots: &[(u64, u64)],
        load: impl FnOnce(&mut [u8]),
    ) -> Result<KvmVm, String> {
        let ram = GuestRam::new(ram_size)?;
        for (i, &(gpa, size)) in slots.iter().enumerate() {
            if gpa
                .checked_add(size)
                .is_none_or(|end| end > ram_size as u64)
            {
                return Err(format!("slot {i} ({gpa:#x}, {size:#x}) is outside the RAM"));
            }
            let region = kvm_userspace_memory_region {
                slot: i as u32,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: ram.ptr as u64 + gpa,
            };
            // SAFETY: the region lies in the RAM mapping (checked above).
            // On success the mapping is unmapped only after the VCPU and VM
            // fds are closed (field order of `KvmVm`); on an error return
            // here no VCPU exists, so no guest runs on it.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        }
        // SAFETY: the bytes of the mapping above, not yet used by a VCPU.
        load(unsafe { std::slice::from_raw_parts_mut(ram.ptr, ram.len) });
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        Ok(KvmVm { vcpu, vm, ram })
    }

    /// The guest RAM; read while the VCPU is stopped (outside `KVM_RUN`).
    pub fn ram(&self) -> &[u8] {
        // SAFETY: the bytes of the mapping owned by self; the VCPU does not
        // run while the shared borrow of self lives (`run` takes `&mut`).
        unsafe { std::slice::from_raw_parts(self.ram.ptr, self.ram.len) }
    }

    /// The guest RAM, writable, while the VCPU is stopped.
    pub fn ram_mut(&mut self) -> &mut [u8] {
        // SAFETY: the bytes of the mapping owned by self, borrowed
        // exclusively with self, so the VCPU does not run meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ram.ptr, self.ram.len) }
    }
}

/// Puts flat 64-bit long mode in `s`: CS 0x08 (L=1), data segments 0x10,
/// paging with PAE at `pml4`, EFER.LME and LMA.
pub fn set_flat_long_mode(s: &mut kvm_sregs, pml4: u64) {
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
    s.cr3 = pml4;
    s.cr4 = 1 << 5; // PAE
    s.efer = (1 << 8) | (1 << 10); // LME LMA
}
