//! The kernel rules the **model** (`nvmm::model`) follows, each tested on
//! its own: CTL, the root owner, host and guest mappings, the reset state,
//! commit sanitising (SVM and VMX), the CPUID exit. These check the model
//! against what NetBSD's source says (the function is named in each test);
//! they are not results from a NetBSD kernel.

use std::ffi::c_void;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nvmm::model::{Backend, GPA_END, KernelModel, ScriptedExit};
use nvmm::nvmm_sys as sys;
use nvmm::sys::{Kernel, OpenMode};
use nvmm::{Cr, Exit, Gpr, Machine, Msr, Nvmm, Prot, Seg, SegAttrib, Vcpu};

fn ioctl<T>(model: &KernelModel, fd: &OwnedFd, request: u64, arg: &mut T) -> Result<(), i32> {
    // SAFETY: each caller passes the argument structure of `request`.
    unsafe { model.ioctl(fd.as_fd(), request, (arg as *mut T).cast::<c_void>()) }
}

fn raw_machine(model: &KernelModel, fd: &OwnedFd) -> u32 {
    let mut a = sys::nvmm_ioc_machine_create { machid: 0 };
    ioctl(model, fd, sys::NVMM_IOC_MACHINE_CREATE, &mut a).unwrap();
    a.machid
}

/// `NVMM_IOC_HVA_MAP` of `size` bytes of fresh model memory into
/// `machid`; the host address.
fn raw_hva_map(model: &KernelModel, fd: &OwnedFd, machid: u32, size: usize) -> usize {
    let hva = model.map_anonymous(size).unwrap().as_ptr() as usize;
    let mut h = sys::nvmm_ioc_hva_map {
        machid,
        hva: hva as _,
        size,
        flags: 0,
    };
    ioctl(model, fd, sys::NVMM_IOC_HVA_MAP, &mut h).unwrap();
    hva
}

/// `NVMM_IOC_GPA_MAP` of `hva` at `gpa`, `size` bytes with `prot`.
fn raw_gpa_map(
    model: &KernelModel,
    fd: &OwnedFd,
    machid: u32,
    (hva, gpa, size, prot): (usize, u64, usize, i32),
) {
    let mut g = sys::nvmm_ioc_gpa_map {
        machid,
        hva: hva as _,
        gpa,
        size,
        prot,
    };
    ioctl(model, fd, sys::NVMM_IOC_GPA_MAP, &mut g).unwrap();
}

/// Maps the two pages at `p` (filled with 0xAA first) into the guest RAM
/// of a machine of `model` at 0 and checks that the guest reads zeroes
/// from them.
///
/// # Safety
/// `p` is the caller's, page-aligned, valid for 0x2000 bytes, not
/// referenced, and kept until this returns (the machine is gone then).
unsafe fn check_hva_map_zeroes(model: &Arc<KernelModel>, p: *mut u8) {
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    // SAFETY: the caller's two pages.
    unsafe { p.write_bytes(0xAA, 0x2000) };
    // SAFETY: the caller's, page-aligned, not referenced, kept until after
    // drop.
    let host = unsafe { m.hva_map_raw(p, 0x2000) }.unwrap();
    m.gpa_map(&host, 0, 0, 0x2000, Prot::ALL).unwrap();
    let mut buf = [0xFFu8; 16];
    m.read_guest(0x1ff0, &mut buf).unwrap();
    assert_eq!(buf, [0; 16], "the old contents are gone");
    drop(m);
}

#[test]
fn ctl_mach_info_sums_host_mappings_and_root_machines_have_pid_0() {
    // nvmm.c nvmm_ctl_mach_info: nram = sum of hmap sizes; pid = owner's.
    let model = KernelModel::new();
    let user = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = user.create_machine().unwrap();
    let ram = m.hva_map(0x8000).unwrap();
    m.gpa_map(&ram, 0, 0, 0x2000, Prot::ALL).unwrap();
    let _extra = m.hva_map(0x3000).unwrap();
    let info = user.machine_info(m.id()).unwrap();
    assert_eq!(info.nram, 0xB000, "host mappings, not guest-mapped bytes");
    assert_eq!(info.pid, 4242);

    let root = Nvmm::open_with(model.clone(), OpenMode::Root).unwrap();
    let rm = root.create_machine().unwrap();
    assert_eq!(root.machine_info(rm.id()).unwrap().pid, 0);
    assert_eq!(root.machine_info(m.id()).unwrap().pid, 4242);
}

#[test]
fn closing_any_root_descriptor_destroys_every_root_machine() {
    // nvmm.c: one nvmm_root_owner shared by every O_WRONLY descriptor;
    // closing one runs nvmm_kill_machines(&nvmm_root_owner).
    let model = KernelModel::new();
    let a = model.open(c"/dev/nvmm", OpenMode::Root).unwrap();
    let b = model.open(c"/dev/nvmm", OpenMode::Root).unwrap();
    let u = model.open(c"/dev/nvmm", OpenMode::User).unwrap();
    let ma = raw_machine(&model, &a);
    let mb = raw_machine(&model, &b);
    let mu = raw_machine(&model, &u);
    model.close(b);
    assert!(
        !model.machine_exists(ma),
        "created through the other root fd"
    );
    assert!(!model.machine_exists(mb));
    assert!(model.machine_exists(mu), "user machines stay");
    model.close(a);
    model.close(u);
}

#[test]
fn hva_map_replaces_the_range_with_zeroed_memory() {
    // nvmm.c nvmm_hva_map: a fresh object mapped UVM_FLAG_FIXED|UVM_FLAG_UNMAP.
    let model = KernelModel::new();
    let p = model.map_anonymous(0x2000).unwrap().as_ptr();
    // SAFETY: the mapping just made, which the model keeps.
    unsafe { check_hva_map_zeroes(&model, p) };
}

/// The same for memory the model did not allocate: it zeroes it through
/// the exposed provenance of its address (which miri's strict-provenance
/// mode, used by `cargo xtask ci`, does not support).
#[cfg(not(miri))]
#[test]
fn hva_map_zeroes_caller_allocated_memory_too() {
    let layout = std::alloc::Layout::from_size_align(0x2000, 0x1000).unwrap();
    // SAFETY: non-zero size; freed below after the machine is gone.
    let p = unsafe { std::alloc::alloc(layout) };
    assert!(!p.is_null());
    // The model gets the address only (as the kernel does).
    p.expose_provenance();
    // SAFETY: the block just allocated, freed only below.
    unsafe { check_hva_map_zeroes(&KernelModel::new(), p) };
    // SAFETY: allocated above with `layout`; the machine is destroyed.
    unsafe { std::alloc::dealloc(p, layout) };
}

#[test]
fn gpa_map_replaces_overlapping_guest_mappings() {
    // nvmm.c nvmm_gpa_map: uvm_map with UVM_FLAG_FIXED|UVM_FLAG_UNMAP.
    // (The crate refuses overlaps itself; this drives the model directly.)
    let model = KernelModel::new();
    let fd = model.open(c"/dev/nvmm", OpenMode::User).unwrap();
    let machid = raw_machine(&model, &fd);
    let hva = raw_hva_map(&model, &fd, machid, 0x10000);
    raw_gpa_map(&model, &fd, machid, (hva, 0, 0x4000, 7));
    raw_gpa_map(&model, &fd, machid, (hva + 0x8000, 0x1000, 0x1000, 1));
    let mut maps = model.gpa_maps(machid);
    maps.sort();
    assert_eq!(
        maps,
        vec![
            (0, 0x1000, hva, 7),
            (0x1000, 0x1000, hva + 0x8000, 1),
            (0x2000, 0x2000, hva + 0x2000, 7),
        ]
    );
    model.close(fd);
}

#[test]
fn gpa_unmap_refuses_size_0_and_ranges_ending_at_the_limit() {
    // nvmm.c nvmm_gpa_unmap: `gpa_end <= gpa` and `gpa_end >= gpa_end
    // limit` are EINVAL, while nvmm_gpa_map only refuses `> limit`.
    let model = KernelModel::new();
    let fd = model.open(c"/dev/nvmm", OpenMode::User).unwrap();
    let machid = raw_machine(&model, &fd);
    let mut u = sys::nvmm_ioc_gpa_unmap {
        machid,
        gpa: 0x1000,
        size: 0,
    };
    assert_eq!(
        ioctl(&model, &fd, sys::NVMM_IOC_GPA_UNMAP, &mut u),
        Err(libc::EINVAL)
    );
    let hva = raw_hva_map(&model, &fd, machid, 0x1000);
    raw_gpa_map(&model, &fd, machid, (hva, GPA_END - 0x1000, 0x1000, 7));
    u.gpa = GPA_END - 0x1000;
    u.size = 0x1000;
    assert_eq!(
        ioctl(&model, &fd, sys::NVMM_IOC_GPA_UNMAP, &mut u),
        Err(libc::EINVAL),
        "mapped, but never unmappable"
    );
    assert_eq!(model.gpa_maps(machid).len(), 1);
    model.close(fd);
}

/// A machine on `backend` and its VCPU 0.
fn vcpu_on(backend: Backend) -> (Arc<KernelModel>, Machine, Vcpu) {
    let model = KernelModel::with_backend(backend);
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let v = m.create_vcpu(0).unwrap();
    (model, m, v)
}

#[test]
fn the_reset_state_is_the_kernels() {
    // nvmm_x86.c nvmm_x86_reset_state.
    for b in Backend::BOTH {
        let (model, m, mut v) = vcpu_on(b);
        assert_eq!(v.gprs().unwrap().get(Gpr::Rdx), 0x600);
        let segs = v.segs().unwrap();
        let gdt = SegAttrib::new(2, true, 0, true, false, false, false, false);
        assert_eq!(segs.get(Seg::Gdt).attrib, gdt, "{b:?}");
        assert_eq!(segs.get(Seg::Idt).attrib, gdt, "{b:?}");
        let ldt = SegAttrib::new(2, false, 0, true, false, false, false, false);
        assert_eq!(segs.get(Seg::Ldt).attrib, ldt, "{b:?}");
        let tr = SegAttrib::new(3, false, 0, true, false, false, false, false);
        assert_eq!(segs.get(Seg::Tr).attrib, tr, "busy 286 TSS");
        let hw = model.hw_state(m.id(), 0);
        assert_eq!(hw.fpu.fx_zero, 0x55);
        assert_eq!(hw.fpu.fx_tw, 0x55);
        // The table has fx_mxcsr_mask = 0, and the create-time setstate
        // masks MXCSR with it (svm/vmx_vcpu_setstate).
        assert_eq!(hw.fpu.fx_mxcsr_mask, 0);
        assert_eq!(hw.fpu.fx_mxcsr, 0, "{b:?}");
    }
}

#[test]
fn committing_sanitises_as_each_backend_does() {
    for b in Backend::BOTH {
        let (model, m, mut v) = vcpu_on(b);
        {
            let mut c = v.crs().unwrap();
            c.set(Cr::Cr0, 0x6000_0011);
            c.set(Cr::Cr4, 0xFFFF_FFFF);
            c.set(Cr::Cr8, 0x1F);
            c.set(Cr::Xcr0, 0xFF);
        }
        v.msrs().unwrap().set(Msr::Efer, 0x500);
        let mut ss = v.segs().unwrap().get(Seg::Ss);
        ss.attrib = SegAttrib::new(3, true, 3, true, false, false, false, false);
        v.segs().unwrap().set(Seg::Ss, ss);
        model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
        assert_eq!(v.run().unwrap(), Exit::Halted);
        let hw = model.hw_state(m.id(), 0);
        // Both: "Clear illegal XCR0 bits, set mandatory X87 bit."
        assert_eq!(hw.crs[sys::NVMM_X64_CR_XCR0], 0x3, "{b:?}");
        let cr8 = v.exit_state().cr8;
        let c = v.crs().unwrap();
        let (cr0, cr4, cr8_read) = (c.get(Cr::Cr0), c.get(Cr::Cr4), c.get(Cr::Cr8));
        let efer = v.msrs().unwrap().get(Msr::Efer);
        let gdt = v.segs().unwrap().get(Seg::Gdt);
        match b {
            Backend::Svm => {
                // svm_vcpu_setstate: EFER gains SVME (hidden by getstate),
                // CR8 goes into the 4-bit V_TPR, CPL = SS.DPL; CR4 and CR0
                // are taken as given.
                assert_eq!(hw.msrs[sys::NVMM_X64_MSR_EFER], 0x500 | (1 << 12));
                assert_eq!(efer, 0x500);
                assert_eq!((cr8_read, cr8), (0xF, 0xF));
                assert_eq!(model.hw_cpl(m.id(), 0), 3);
                assert_eq!(cr4, 0xFFFF_FFFF);
                assert_eq!(cr0, 0x6000_0011);
                assert_eq!(gdt.attrib.typ(), 2);
            }
            Backend::Vmx => {
                // vmx_vcpu_setstate: CR4 & CR4_VALID | VMXE (VMXE hidden),
                // real CR0 with ET|NE set and NW|CD clear, CR8 kept whole;
                // vmx_vcpu_getstate_seg: GDTR/IDTR read back without
                // selector or attributes.
                assert_eq!(cr4, nvmm::model::sanitize::VMX_CR4_VALID);
                assert_eq!(hw.crs[sys::NVMM_X64_CR_CR4] & (1 << 13), 1 << 13);
                assert_eq!(cr0, 0x31);
                assert_eq!((cr8_read, cr8), (0x1F, 0x1F));
                assert_eq!(efer, 0x500);
                assert_eq!(gdt.attrib, SegAttrib(0));
            }
        }
    }
}

#[test]
fn a_cpuid_exit_carries_the_kernels_answer_not_the_leaf() {
    // svm_exit_cpuid / vmx_exit_cpuid: the in-kernel CPUID overwrites
    // RAX-RDX before `cpuid->exit` is checked.
    for b in Backend::BOTH {
        let (model, m, mut v) = vcpu_on(b);
        model.push_exit(
            m.id(),
            0,
            ScriptedExit::cpuid(0xFFF2)
                .with_guest(|hw| hw.gprs[sys::NVMM_X64_GPR_RAX] = 0x4000_0000),
        );
        assert!(matches!(v.run().unwrap(), Exit::Cpuid { npc: 0xFFF2 }));
        let want = nvmm::model::sanitize::kernel_cpuid_answer(0x4000_0000);
        let g = v.gprs().unwrap();
        assert_ne!(g.get(Gpr::Rax), 0x4000_0000, "{b:?}");
        assert_eq!(g.get(Gpr::Rax), u64::from(want[0]));
        assert_eq!(g.get(Gpr::Rdx), u64::from(want[3]));
    }
}
