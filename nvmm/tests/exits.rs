//! Every exit reason decoded into its typed payload, and the exit state.

use nvmm::model::{KernelModel, ScriptedExit};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{Exit, ExitState, IoDirection, IoExit, MemAccess, Nvmm, Seg};

#[test]
fn every_reason_has_its_variant() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    let id = m.id();

    let mut io = ScriptedExit::io(0x1f0, true, 2, 0x7c05);
    io.exit.u.io.rep = true;
    io.exit.u.io.str_ = true;
    io.exit.u.io.seg = 3;
    io.exit.u.io.address_size = 4;
    model.push_exit(id, 0, io);
    assert_eq!(
        v.run().unwrap(),
        Exit::Io(IoExit {
            port: 0x1f0,
            direction: IoDirection::In,
            operand_size: 2,
            address_size: 4,
            rep: true,
            string: true,
            segment: Some(Seg::Ds),
            npc: 0x7c05
        })
    );
    model.push_exit(id, 0, ScriptedExit::io(0x80, false, 1, 1));
    assert!(matches!(
        v.run().unwrap(),
        Exit::Io(IoExit {
            direction: IoDirection::Out,
            segment: None,
            rep: false,
            ..
        })
    ));

    model.push_exit(
        id,
        0,
        ScriptedExit::memory(0xfee0_0300, true, &[0x89, 0x0d, 1, 2, 3, 4]),
    );
    match v.run().unwrap() {
        Exit::Memory(mem) => {
            assert_eq!(mem.gpa, 0xfee0_0300);
            assert_eq!(mem.access, MemAccess::Write);
            assert_eq!(mem.instruction, &[0x89, 0x0d, 1, 2, 3, 4]);
        }
        other => panic!("{other:?}"),
    }
    let mut fetch = ScriptedExit::memory(0xd000_0000, false, &[]);
    fetch.exit.u.mem.prot = 4;
    model.push_exit(id, 0, fetch);
    assert!(matches!(
        v.run().unwrap(),
        Exit::Memory(m) if m.access == MemAccess::Exec && m.instruction.is_empty()
    ));
    // A hostile length never reads past the 15 bytes.
    let mut long = ScriptedExit::memory(0x1000, false, &[0x90; 15]);
    long.exit.u.mem.inst_len = 200;
    model.push_exit(id, 0, long);
    assert!(matches!(
        v.run().unwrap(),
        Exit::Memory(m) if m.access == MemAccess::Read && m.instruction.len() == 15
    ));

    let simple = [
        (sys::NVMM_VCPU_EXIT_NONE, Exit::None),
        (sys::NVMM_VCPU_EXIT_HALTED, Exit::Halted),
        (sys::NVMM_VCPU_EXIT_SHUTDOWN, Exit::Shutdown),
        (sys::NVMM_VCPU_EXIT_INT_READY, Exit::IntReady),
        (sys::NVMM_VCPU_EXIT_NMI_READY, Exit::NmiReady),
        (sys::NVMM_VCPU_EXIT_TPR_CHANGED, Exit::TprChanged),
        (sys::NVMM_VCPU_EXIT_STOPPED, Exit::Stopped),
        (0x3000, Exit::Unknown(0x3000)),
    ];
    for (reason, want) in simple {
        model.push_exit(id, 0, ScriptedExit::reason(reason));
        assert_eq!(v.run().unwrap(), want);
    }
    for (reason, mk) in [
        (
            sys::NVMM_VCPU_EXIT_CPUID,
            (|npc| Exit::Cpuid { npc }) as fn(u64) -> Exit<'static>,
        ),
        (sys::NVMM_VCPU_EXIT_MONITOR, |npc| Exit::Monitor { npc }),
        (sys::NVMM_VCPU_EXIT_MWAIT, |npc| Exit::Mwait { npc }),
    ] {
        model.push_exit(id, 0, ScriptedExit::insn(reason, 0x55));
        assert_eq!(v.run().unwrap(), mk(0x55));
    }
    model.push_exit(id, 0, ScriptedExit::invalid(0x7b));
    assert_eq!(v.run().unwrap(), Exit::Invalid { hwcode: 0x7b });
    assert_eq!(v.last_exit(), Exit::Invalid { hwcode: 0x7b });
    model.push_exit(id, 0, ScriptedExit::rdmsr(0xc000_0080, 9));
    assert!(matches!(v.run().unwrap(), Exit::Rdmsr(r) if r.msr == 0xc000_0080 && r.npc == 9));
}

#[test]
fn exit_state_comes_with_every_exit() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED).with_guest(|hw| {
            hw.gprs[sys::NVMM_X64_GPR_RFLAGS] = 0x246;
            hw.crs[sys::NVMM_X64_CR_CR8] = 0xf;
            // SAFETY: the intr bitfield struct is one u64.
            unsafe { (&raw mut hw.intr).cast::<u64>().write(0b1101) };
        }),
    );
    v.run().unwrap();
    let s = model.syscalls();
    assert_eq!(
        v.exit_state(),
        ExitState {
            rflags: 0x246,
            cr8: 0xf,
            int_shadow: true,
            int_window_exiting: false,
            nmi_window_exiting: true,
            evt_pending: true
        }
    );
    assert_eq!(model.syscalls(), s);
}
