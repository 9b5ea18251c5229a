//! The model's reset state and what the kernel does to a state when it
//! commits it to the VMCB/VMCS (setstate) and reads it back (getstate).
//!
//! **Model, not NetBSD**: every rule below is transcribed from the NetBSD
//! source named next to it; the model keeps a "hardware" copy of the state
//! (`VcpuModel::hw`) in the committed form, and `readback` turns it into
//! what the kernel's getstate would write into the comm page.

use crate::nvmm_sys as sys;

use super::{Backend, CRS, DRS, FPU, MSRS, SEGS};

/// The host's MXCSR mask the model pretends to have (`x86_fpu_mxcsr_mask`;
/// also what the model's capability reports as `mxcsr_mask`).
pub const HOST_MXCSR_MASK: u32 = 0xFFBF;
/// The XCR0 mask the model's capability reports (`svm_xcr0_mask`,
/// `vmx_xcr0_mask`: x87|SSE).
pub const XCR0_MASK: u64 = 0x3;

const XCR0_X87: u64 = 1;
const EFER_SVME: u64 = 1 << 12;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
/// nvmm_x86_vmx.c `CR0_STATIC_MASK`.
const CR0_STATIC_MASK: u64 = CR0_ET | CR0_NW | CR0_CD;
/// nvmm_x86_vmx.c `CR4_VALID`: VME PVI TSD DE PSE PAE MCE PGE PCE OSFXSR
/// OSXMMEXCPT UMIP FSGSBASE PCIDE OSXSAVE SMEP SMAP.
pub const VMX_CR4_VALID: u64 = 0x0037_0FFF;
const CR4_VMXE: u64 = 1 << 13;

/// A segment attribute word (type:4 s:1 dpl:2 p:1 avl:1 l:1 def:1 g:1).
pub(crate) fn attrib(typ: u16, s: bool, dpl: u16, p: bool) -> u16 {
    (typ & 0xF) | (u16::from(s) << 4) | ((dpl & 3) << 5) | (u16::from(p) << 7)
}

pub(crate) fn get_attrib(seg: &sys::nvmm_x64_state_seg) -> u16 {
    // SAFETY: the attribute bitfield is one u16.
    unsafe { (&raw const seg.attrib).cast::<u16>().read() }
}

pub(crate) fn set_attrib(seg: &mut sys::nvmm_x64_state_seg, a: u16) {
    // SAFETY: the attribute bitfield is one u16.
    unsafe { (&raw mut seg.attrib).cast::<u16>().write(a) }
}

/// nvmm_x86.c `nvmm_x86_reset_state`.
pub fn reset_state() -> sys::nvmm_x64_state {
    // SAFETY: plain C data; all-zero is valid.
    let mut s: sys::nvmm_x64_state = unsafe { std::mem::zeroed() };
    for (i, seg) in s.segs.iter_mut().enumerate() {
        seg.selector = 0;
        seg.base = 0;
        seg.limit = 0xFFFF;
        let a = match i {
            // ES CS SS DS FS GS: type 3 (data RW accessed), S, P.
            0..=5 => attrib(3, true, 0, true),
            // GDTR, IDTR: type 2, S, P.
            sys::NVMM_X64_SEG_GDT | sys::NVMM_X64_SEG_IDT => attrib(2, true, 0, true),
            // LDTR: SDT_SYSLDT (2), P.
            sys::NVMM_X64_SEG_LDT => attrib(2, false, 0, true),
            // TR: SDT_SYS286BSY (3, busy 286 TSS), P.
            _ => attrib(3, false, 0, true),
        };
        set_attrib(seg, a);
    }
    s.segs[sys::NVMM_X64_SEG_CS].selector = 0xF000;
    s.segs[sys::NVMM_X64_SEG_CS].base = 0xFFFF_0000;
    s.gprs[sys::NVMM_X64_GPR_RDX] = 0x600;
    s.gprs[sys::NVMM_X64_GPR_RIP] = 0xFFF0;
    s.gprs[sys::NVMM_X64_GPR_RFLAGS] = 0x2;
    s.crs[sys::NVMM_X64_CR_CR0] = 0x6000_0010;
    s.crs[sys::NVMM_X64_CR_XCR0] = 1;
    s.drs[sys::NVMM_X64_DR_DR6] = 0xFFFF_0FF0;
    s.drs[sys::NVMM_X64_DR_DR7] = 0x400;
    s.msrs[sys::NVMM_X64_MSR_PAT] = 0x0007_0406_0007_0406;
    s.fpu.fx_cw = 0x40;
    s.fpu.fx_tw = 0x55;
    s.fpu.fx_zero = 0x55;
    s.fpu.fx_mxcsr = 0x1F80;
    // fx_mxcsr_mask stays 0, as in the kernel's table.
    s
}

/// What the "hardware" holds after the kernel commits the classes `flags`
/// of `src` (svm_vcpu_setstate / vmx_vcpu_setstate). `cpl` is the SVM
/// VMCB's CPL field.
pub(crate) fn commit(
    backend: Backend,
    hw: &mut sys::nvmm_x64_state,
    cpl: &mut u8,
    src: &sys::nvmm_x64_state,
    flags: u64,
) {
    if flags & SEGS != 0 {
        hw.segs = src.segs;
        if backend == Backend::Svm {
            // svm_vcpu_setstate: vmcb->state.cpl = segs[SS].attrib.dpl.
            *cpl = ((get_attrib(&src.segs[sys::NVMM_X64_SEG_SS]) >> 5) & 3) as u8;
        }
    }
    if flags & super::GPRS != 0 {
        hw.gprs = src.gprs;
    }
    if flags & CRS != 0 {
        hw.crs = src.crs;
        match backend {
            Backend::Svm => {
                // svm_vcpu_setstate: CR8 goes into the 4-bit V_TPR field.
                hw.crs[sys::NVMM_X64_CR_CR8] &= 0xF;
            }
            Backend::Vmx => {
                // vmx_vcpu_setstate: the real CR0 gets ET|NE and loses the
                // CR0_STATIC_MASK bits (NW, CD); CR4 is masked with
                // CR4_VALID and gets the mandatory VMXE.
                let cr0 = src.crs[sys::NVMM_X64_CR_CR0];
                hw.crs[sys::NVMM_X64_CR_CR0] = (cr0 & !CR0_STATIC_MASK) | CR0_ET | CR0_NE;
                hw.crs[sys::NVMM_X64_CR_CR4] =
                    (src.crs[sys::NVMM_X64_CR_CR4] & VMX_CR4_VALID) | CR4_VMXE;
            }
        }
        // Both: "Clear illegal XCR0 bits, set mandatory X87 bit."
        hw.crs[sys::NVMM_X64_CR_XCR0] = (src.crs[sys::NVMM_X64_CR_XCR0] & XCR0_MASK) | XCR0_X87;
    }
    if flags & DRS != 0 {
        hw.drs = src.drs;
        if backend == Backend::Vmx {
            // vmx_vcpu_setstate: cpudata->drs[DR6] &= 0xFFFFFFFF.
            hw.drs[sys::NVMM_X64_DR_DR6] &= 0xFFFF_FFFF;
        }
    }
    if flags & MSRS != 0 {
        hw.msrs = src.msrs;
        if backend == Backend::Svm {
            // svm_vcpu_setstate: "EFER_SVME is mandatory."
            hw.msrs[sys::NVMM_X64_MSR_EFER] |= EFER_SVME;
        }
    }
    if flags & super::INTR != 0 {
        hw.intr = src.intr;
    }
    if flags & FPU != 0 {
        hw.fpu = src.fpu;
        // svm/vmx_vcpu_setstate: fx_mxcsr_mask &= x86_fpu_mxcsr_mask;
        // fx_mxcsr &= fx_mxcsr_mask.
        hw.fpu.fx_mxcsr_mask &= HOST_MXCSR_MASK;
        hw.fpu.fx_mxcsr &= hw.fpu.fx_mxcsr_mask;
    }
}

/// What the kernel's getstate writes into the comm page for `flags`
/// (svm_vcpu_getstate / vmx_vcpu_getstate).
pub(crate) fn readback(
    backend: Backend,
    hw: &sys::nvmm_x64_state,
    cpl: u8,
    dst: &mut sys::nvmm_x64_state,
    flags: u64,
) {
    if flags & SEGS != 0 {
        dst.segs = hw.segs;
        match backend {
            Backend::Svm => {
                // svm_vcpu_getstate: segs[SS].attrib.dpl = vmcb->state.cpl.
                let ss = &mut dst.segs[sys::NVMM_X64_SEG_SS];
                let a = (get_attrib(ss) & !(3 << 5)) | (u16::from(cpl & 3) << 5);
                set_attrib(ss, a);
            }
            Backend::Vmx => {
                // vmx_vcpu_getstate_seg: GDTR and IDTR have only a base and
                // a limit in the VMCS; selector and attributes read as 0.
                for i in [sys::NVMM_X64_SEG_GDT, sys::NVMM_X64_SEG_IDT] {
                    dst.segs[i].selector = 0;
                    set_attrib(&mut dst.segs[i], 0);
                }
            }
        }
    }
    if flags & super::GPRS != 0 {
        dst.gprs = hw.gprs;
    }
    if flags & CRS != 0 {
        dst.crs = hw.crs;
        if backend == Backend::Vmx {
            // vmx_vcpu_getstate: "Hide VMXE."
            dst.crs[sys::NVMM_X64_CR_CR4] &= !CR4_VMXE;
        }
    }
    if flags & DRS != 0 {
        dst.drs = hw.drs;
    }
    if flags & MSRS != 0 {
        dst.msrs = hw.msrs;
        if backend == Backend::Svm {
            // svm_vcpu_getstate: "Hide SVME."
            dst.msrs[sys::NVMM_X64_MSR_EFER] &= !EFER_SVME;
        }
    }
    if flags & super::INTR != 0 {
        dst.intr = hw.intr;
    }
    if flags & FPU != 0 {
        dst.fpu = hw.fpu;
    }
}

/// The model's stand-in for the CPUID answer the kernel computes
/// (svm_inkernel_exec_cpuid + svm_inkernel_handle_cpuid): arbitrary values
/// derived from the leaf, so tests can tell them from the guest's leaf.
pub fn kernel_cpuid_answer(leaf: u32) -> [u32; 4] {
    [
        0x4E56_0000 | (leaf & 0xFFFF),
        0x4D4D_0000 ^ leaf,
        !leaf,
        leaf.rotate_left(16),
    ]
}
