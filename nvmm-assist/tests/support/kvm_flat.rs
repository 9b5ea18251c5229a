//! A KVM VM whose guest-physical memory `0..image.len()` is one RAM slot
//! holding a test-built image; every address above it is unbacked, so the
//! guest's accesses there exit as MMIO. Shared by the page-walker and
//! segmentation KVM suites, which build their own guests in that layout.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// The VM, its one vCPU and its RAM. Fields drop in declaration order, so
/// the RAM is unmapped only after the vCPU and VM that reference it close.
pub struct FlatVm {
    /// vCPU 0, ready for the caller's CPUID, registers and `run()`.
    pub vcpu: VcpuFd,
    _vm: VmFd,
    ram: Mapping,
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `FlatVm::new`, of `len` bytes; the VM
        // that used it has been closed (FlatVm's fields drop in order).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

impl FlatVm {
    /// Creates the VM with `image` (a whole number of 4 KiB pages) as its
    /// RAM at guest-physical 0, and vCPU 0.
    pub fn new(kvm: &Kvm, image: &[u8]) -> Result<FlatVm, String> {
        let len = image.len();
        if len == 0 || !len.is_multiple_of(4096) {
            return Err(format!("guest image of {len:#x} bytes is not whole pages"));
        }
        // SAFETY: a fresh anonymous private mapping of `len` bytes, owned by
        // the `Mapping` below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err("mmap of guest RAM failed".into());
        }
        let ram = Mapping {
            ptr: ptr.cast(),
            len,
        };
        // SAFETY: `ram` maps exactly `len` bytes, readable and writable, and
        // nothing else refers to them yet.
        unsafe { std::slice::from_raw_parts_mut(ram.ptr, len) }.copy_from_slice(image);
        // Created after `ram`, so on an early return it drops (closes) first.
        let vm = kvm.create_vm().map_err(|e| format!("create_vm: {e}"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: len as u64,
            userspace_addr: ram.ptr as u64,
        };
        // SAFETY: the region is the mapping above, which outlives the VM
        // (it is FlatVm's last field, and a local declared before `vm` on
        // the error paths, so it drops after `vm` either way).
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("memory region: {e}"))?;
        let vcpu = vm.create_vcpu(0).map_err(|e| format!("create_vcpu: {e}"))?;
        Ok(FlatVm { vcpu, _vm: vm, ram })
    }

    /// A copy of guest RAM as it is now.
    pub fn ram(&self) -> Vec<u8> {
        // SAFETY: `ram` maps `len` initialised bytes for as long as self
        // lives; the vCPU is not running (run() needs `&mut self.vcpu`).
        unsafe { std::slice::from_raw_parts(self.ram.ptr, self.ram.len) }.to_vec()
    }
}
