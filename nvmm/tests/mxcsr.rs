//! MXCSR: the FPU view gives the comm page a valid `fx_mxcsr_mask` before
//! any FPU write, so the MXCSR the user sets is the one the kernel commits.
//! Checked against the **model**'s setstate, which follows NetBSD's
//! `svm_vcpu_setstate`/`vmx_vcpu_setstate` (mask with the host's mask, then
//! MXCSR with the mask).

use nvmm::model::{Backend, KernelModel, ScriptedExit};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{DEFAULT_MXCSR_MASK, Exit, Nvmm};

#[test]
fn the_mxcsr_set_is_the_mxcsr_committed() {
    for b in Backend::BOTH {
        let model = KernelModel::with_backend(b);
        let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
        let m = nvmm.create_machine().unwrap();
        let mut v = m.create_vcpu(0).unwrap();
        assert_eq!(v.fpu().unwrap().mxcsr_mask(), 0, "the kernel's reset state");
        // FZ, all exceptions masked, RC = toward zero.
        v.fpu().unwrap().set_mxcsr(0xFF80);
        assert_eq!(v.fpu().unwrap().mxcsr_mask(), DEFAULT_MXCSR_MASK);
        model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
        assert_eq!(v.run().unwrap(), Exit::Halted);
        let hw = model.hw_state(m.id(), 0);
        assert_eq!(hw.fpu.fx_mxcsr, 0xFF80, "{b:?}");
        assert_eq!(v.fpu().unwrap().mxcsr(), 0xFF80);
    }
}

#[test]
fn any_fpu_write_fixes_the_mask_and_an_explicit_mask_is_honoured() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    // An XMM write alone commits the whole FPU class, MXCSR included.
    v.fpu().unwrap().set_xmm(3, 0x1234);
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
    v.run().unwrap();
    assert_eq!(model.hw_state(m.id(), 0).fpu.fx_mxcsr, 0x1F80, "not 0");

    // A mask without DAZ (bit 6): the kernel drops DAZ.
    {
        let mut f = v.fpu().unwrap();
        f.set_mxcsr_mask(0xFFBF);
        f.set_mxcsr(0x1FC0);
    }
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
    v.run().unwrap();
    assert_eq!(model.hw_state(m.id(), 0).fpu.fx_mxcsr, 0x1F80);
}

/// A snapshot of a VCPU that never ran carries the reset state's zero
/// `fx_mxcsr_mask`; restoring it must still commit the snapshot's MXCSR
/// (`Fpu::set_area` gives the area a valid mask), not 0.
#[test]
fn restoring_a_snapshot_with_a_zero_mask_commits_its_mxcsr() {
    for b in Backend::BOTH {
        let model = KernelModel::with_backend(b);
        let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
        let m = nvmm.create_machine().unwrap();
        let mut fresh = m.create_vcpu(0).unwrap();
        let state = fresh.save().unwrap();
        assert_eq!(state.fpu.0[28..32], [0; 4], "the reset state's mask");

        let mut target = m.create_vcpu(1).unwrap();
        target.restore(&state);
        assert_eq!(target.fpu().unwrap().mxcsr_mask(), DEFAULT_MXCSR_MASK);
        model.push_exit(m.id(), 1, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
        target.run().unwrap();
        let hw = model.hw_state(m.id(), 1);
        assert_eq!(hw.fpu.fx_mxcsr, 0x1F80, "{b:?}");
    }
}
