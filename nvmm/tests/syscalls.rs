//! Syscall counts of the steady state, checked against the model.

use nvmm::model::{KernelModel, ScriptedExit};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{Cr, Exit, Gpr, Msr, Nvmm, Seg, StateClasses};

#[test]
fn handling_an_io_exit_costs_exactly_the_next_run() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    for i in 0..100u64 {
        model.push_exit(
            m.id(),
            0,
            ScriptedExit::io(0x60, true, 1, 0x1000 + i).with_guest(move |hw| {
                hw.gprs[sys::NVMM_X64_GPR_RIP] = 0xfff + i;
            }),
        );
    }
    v.run().unwrap();
    let start = model.syscalls();
    for i in 1..100u64 {
        // getstate of the provided classes, "emulate", setstate, run.
        v.fetch(StateClasses::GPRS | StateClasses::SEGS | StateClasses::CRS | StateClasses::MSRS)
            .unwrap();
        let npc = match v.last_exit() {
            Exit::Io(io) => io.npc,
            other => panic!("{other:?}"),
        };
        let _ = v.segs().unwrap().get(Seg::Cs);
        let _ = v.crs().unwrap().get(Cr::Cr0);
        let _ = v.msrs().unwrap().get(Msr::Efer);
        let mut g = v.gprs().unwrap();
        g.set(Gpr::Rax, 0xab);
        g.set_rip(npc);
        v.run().unwrap();
        assert_eq!(model.syscalls() - start, i, "one syscall per handled exit");
    }
    // Each handled exit's writes reached the "hardware".
    assert_eq!(model.hw_state(m.id(), 0).gprs[sys::NVMM_X64_GPR_RAX], 0xab);
}

#[test]
fn handling_a_memory_exit_costs_exactly_the_next_run() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    for _ in 0..50 {
        model.push_exit(
            m.id(),
            0,
            ScriptedExit::memory(0xfee0_00b0, true, &[0x89, 0x08]),
        );
    }
    v.run().unwrap();
    let start = model.syscalls();
    for i in 1..50u64 {
        v.fetch(nvmm::PROVIDED_ON_IO_AND_MEMORY).unwrap();
        let mut g = v.gprs().unwrap();
        let rip = g.rip();
        g.set_rip(rip + 2);
        v.run().unwrap();
        assert_eq!(model.syscalls() - start, i);
    }
}

#[test]
fn cached_getstate_and_setstate_cost_zero() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    let s = model.syscalls();
    for _ in 0..1000 {
        v.fetch(StateClasses::ALL).unwrap();
        let x = v.gprs().unwrap().get(Gpr::R15);
        v.gprs().unwrap().set(Gpr::R15, x + 1);
        v.fpu().unwrap().set_mxcsr(0x1f80);
        v.drs().unwrap().set(nvmm::Dr::Dr0, x);
    }
    assert_eq!(model.syscalls(), s);
    assert_eq!(v.gprs().unwrap().get(Gpr::R15), 1000);
}
