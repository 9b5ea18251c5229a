//! Comm-page tests (run under miri: `cargo +nightly miri test -p nvmm --lib comm`).
//! They drive the real `Vcpu` code over the kernel model's shared page.

use std::sync::Arc;

use crate::model::{KernelModel, ScriptedExit};
use crate::sys::OpenMode;
use crate::{Cr, Gpr, Msr, Nvmm, Seg, SegAttrib, Segment, StateClasses};
use nvmm_sys as sys;

fn setup() -> (Arc<KernelModel>, crate::Machine) {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).expect("open");
    let machine = nvmm.create_machine().expect("machine");
    (model, machine)
}

#[test]
fn reset_state_is_cached_and_read_in_place() {
    let (model, machine) = setup();
    let mut vcpu = machine.create_vcpu(0).expect("vcpu");
    let before = model.syscalls();
    assert_eq!(vcpu.cached(), StateClasses::ALL);
    assert_eq!(vcpu.gprs().unwrap().rip(), 0xFFF0);
    assert_eq!(vcpu.gprs().unwrap().rflags(), 0x2);
    let cs = vcpu.segs().unwrap().get(Seg::Cs);
    assert_eq!(
        (cs.selector, cs.base, cs.limit),
        (0xF000, 0xFFFF_0000, 0xFFFF)
    );
    assert!(cs.attrib.p() && cs.attrib.s() && cs.attrib.typ() == 3);
    assert_eq!(vcpu.crs().unwrap().get(Cr::Cr0), 0x6000_0010);
    assert_eq!(vcpu.msrs().unwrap().get(Msr::Pat), 0x0007_0406_0007_0406);
    assert_eq!(vcpu.fpu().unwrap().mxcsr(), 0x1F80);
    assert_eq!(vcpu.fpu().unwrap().fcw(), 0x40);
    assert_eq!(model.syscalls(), before, "cached reads make no syscall");
}

#[test]
fn setters_mark_only_their_class_and_apply_at_run() {
    let (model, machine) = setup();
    let mut vcpu = machine.create_vcpu(0).expect("vcpu");
    let before = model.syscalls();
    vcpu.gprs().unwrap().set(Gpr::Rbx, 0x1234);
    assert_eq!(vcpu.pending_commit(), StateClasses::GPRS);
    let seg = Segment {
        selector: 0x10,
        attrib: SegAttrib::new(0xB, true, 0, true, false, true, false, true),
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    vcpu.segs().unwrap().set(Seg::Cs, seg);
    vcpu.fpu()
        .unwrap()
        .set_xmm(3, 0x0102_0304_0506_0708_090A_0B0C_0D0E_0F10);
    assert_eq!(
        vcpu.pending_commit(),
        StateClasses::GPRS | StateClasses::SEGS | StateClasses::FPU
    );
    assert_eq!(model.syscalls(), before, "setstate makes no syscall");
    // Not applied to the "hardware" until the run.
    assert_eq!(
        model.hw_state(machine.id(), 0).gprs[sys::NVMM_X64_GPR_RBX],
        0
    );
    model.push_exit(
        machine.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED),
    );
    vcpu.run().unwrap();
    let hw = model.hw_state(machine.id(), 0);
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RBX], 0x1234);
    assert_eq!(hw.segs[sys::NVMM_X64_SEG_CS].selector, 0x10);
    assert_eq!(hw.segs[sys::NVMM_X64_SEG_CS].limit, 0xFFFF_FFFF);
    assert_eq!(hw.fpu.fx_xmm[3].xmm_bytes[0], 0x10);
    assert_eq!(vcpu.pending_commit(), StateClasses::empty());
    assert_eq!(vcpu.cached(), StateClasses::empty(), "stale after a run");
    // Reading back costs one GETSTATE and returns the applied value.
    let g = model.getstates();
    assert_eq!(vcpu.gprs().unwrap().get(Gpr::Rbx), 0x1234);
    assert_eq!(model.getstates(), g + 1);
    assert_eq!(vcpu.segs().unwrap().get(Seg::Cs), seg);
    assert_eq!(model.getstates(), g + 2);
}

#[test]
fn pending_writes_survive_a_fetch_of_other_classes() {
    let (model, machine) = setup();
    let mut vcpu = machine.create_vcpu(0).expect("vcpu");
    model.push_exit(
        machine.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED),
    );
    vcpu.run().unwrap();
    vcpu.gprs().unwrap().set(Gpr::Rax, 7);
    vcpu.fetch(StateClasses::ALL).unwrap();
    assert_eq!(vcpu.gprs().unwrap().get(Gpr::Rax), 7);
}

#[test]
fn events_are_written_to_the_page_and_consumed_by_run() {
    let (model, machine) = setup();
    let mut vcpu = machine.create_vcpu(0).expect("vcpu");
    vcpu.inject(crate::Event::Exception {
        vector: 14,
        error_code: 6,
    })
    .unwrap();
    assert!(vcpu.event_pending());
    model.push_exit(
        machine.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED),
    );
    vcpu.run().unwrap();
    assert!(!vcpu.event_pending());
    assert_eq!(
        model.injected(machine.id(), 0),
        vec![(sys::NVMM_VCPU_EVENT_EXCP, 14, 6)]
    );
}
