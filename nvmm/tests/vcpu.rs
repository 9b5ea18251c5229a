//! VCPUs: lifecycle, state classes, events, configuration, completion
//! helpers, dump.

use std::sync::Arc;

use nvmm::model::{FailPoint, KernelModel, ModelConfig, ScriptedExit};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{
    CpuidConf, CpuidRegs, Dr, Error, Event, Exit, Gpr, IntrState, Machine, Nvmm, Op, Rejection,
    StateClasses, Vcpu,
};

fn setup_with(config: ModelConfig) -> (Arc<KernelModel>, Machine) {
    let model = KernelModel::with_config(config);
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    (model, m)
}

fn setup() -> (Arc<KernelModel>, Machine) {
    setup_with(ModelConfig::default())
}

fn rejected(e: &Error) -> Option<(Op, Rejection)> {
    match e {
        Error::Rejected { op, reason } => Some((*op, *reason)),
        _ => None,
    }
}

// `Vcpu` must be Send and must not be Sync.
trait AmbiguousIfSync<A> {
    fn check() {}
}
impl<T: ?Sized> AmbiguousIfSync<()> for T {}
impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}

#[test]
fn vcpu_is_send_not_sync() {
    fn send<T: Send>() {}
    send::<Vcpu>();
    // Compiles only if exactly one impl applies, i.e. Vcpu is not Sync.
    <Vcpu as AmbiguousIfSync<_>>::check();
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Machine>();
}

#[test]
fn create_maps_and_drop_destroys_then_unmaps() {
    let (model, m) = setup();
    let base = model.live_mappings();
    let v = m.create_vcpu(3).unwrap();
    assert_eq!((v.id(), v.machine_id()), (3, m.id()));
    assert!(model.vcpu_exists(m.id(), 3));
    assert_eq!(model.live_mappings(), base + 1);
    drop(v);
    assert!(!model.vcpu_exists(m.id(), 3));
    assert_eq!(model.live_mappings(), base);
}

#[test]
fn duplicate_vcpu_is_ebusy_and_out_of_range_is_einval() {
    let (model, m) = setup();
    let _v = m.create_vcpu(0).unwrap();
    let e = m.create_vcpu(0).unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::VcpuCreate, errno } if errno == libc::EBUSY));
    let s = model.syscalls();
    let e = m.create_vcpu(256).unwrap_err();
    assert_eq!(
        rejected(&e),
        Some((Op::VcpuCreate, Rejection::InvalidVcpuId(256)))
    );
    assert_eq!(e.errno(), libc::EINVAL);
    assert_eq!(model.syscalls(), s, "refused before the kernel");
    assert_eq!(model.live_mappings(), 1);
}

#[test]
fn a_smaller_vcpu_limit_is_honoured_and_the_kernel_checks_too() {
    let (model, m) = setup_with(ModelConfig {
        max_vcpus: 4,
        ..Default::default()
    });
    m.create_vcpu(3).unwrap();
    let e = m.create_vcpu(4).unwrap_err();
    assert_eq!(
        rejected(&e),
        Some((Op::VcpuCreate, Rejection::InvalidVcpuId(4)))
    );
    // The model itself applies the kernel's rule (EINVAL), for the record.
    use nvmm::sys::Kernel;
    use std::os::fd::AsFd;
    let fd = model.open(c"/dev/nvmm", OpenMode::Root).unwrap();
    let mut args = sys::nvmm_ioc_vcpu_create {
        machid: m.id(),
        cpuid: 300,
    };
    // SAFETY: the argument structure of the request.
    let r = unsafe {
        model.ioctl(
            fd.as_fd(),
            sys::NVMM_IOC_VCPU_CREATE,
            (&raw mut args).cast(),
        )
    };
    assert_eq!(r, Err(libc::EINVAL));
    model.close(fd);
}

#[test]
fn mmap_failure_destroys_the_kernel_vcpu() {
    let (model, m) = setup();
    let base = model.live_mappings();
    model.fail_next(FailPoint::MapCommPage, libc::ENOMEM);
    let e = m.create_vcpu(1).unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::CommPageMap, errno } if errno == libc::ENOMEM));
    assert!(!model.vcpu_exists(m.id(), 1), "no leaked kernel VCPU");
    assert_eq!(model.live_mappings(), base);
    // The id is free again.
    m.create_vcpu(1).unwrap();
}

#[test]
fn vcpu_keeps_the_machine_alive() {
    let (model, m) = setup();
    let id = m.id();
    let v = m.create_vcpu(0).unwrap();
    drop(m);
    assert!(model.machine_exists(id));
    drop(v);
    assert!(!model.machine_exists(id));
    assert_eq!(model.open_fds(), 0);
    assert_eq!(model.live_mappings(), 0);
}

#[test]
fn state_lifecycle_after_each_kind_of_exit() {
    let (model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    let provided = StateClasses::GPRS | StateClasses::SEGS | StateClasses::CRS | StateClasses::MSRS;
    model.push_exit(m.id(), 0, ScriptedExit::io(0x60, true, 1, 0x1002));
    v.run().unwrap();
    assert_eq!(v.cached(), provided);
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::memory(0xfee0_0000, true, &[0x89, 0x08]),
    );
    v.run().unwrap();
    assert_eq!(v.cached(), provided);
    model.push_exit(m.id(), 0, ScriptedExit::rdmsr(0x1b, 0x1004));
    v.run().unwrap();
    assert_eq!(v.cached(), StateClasses::GPRS);
    model.push_exit(m.id(), 0, ScriptedExit::wrmsr(0x1b, 5, 0x1004));
    v.run().unwrap();
    assert_eq!(v.cached(), StateClasses::GPRS);
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
    v.run().unwrap();
    assert_eq!(v.cached(), StateClasses::empty());
    // One GETSTATE brings every missing class; then all reads are free.
    let g = model.getstates();
    let s = model.syscalls();
    v.fetch(StateClasses::ALL).unwrap();
    assert_eq!((model.getstates(), model.syscalls()), (g + 1, s + 1));
    assert_eq!(v.cached(), StateClasses::ALL);
    assert_eq!(v.drs().unwrap().get(Dr::Dr7), 0x400);
    assert_eq!(v.intr().unwrap().get(), IntrState::default());
    assert_eq!(model.syscalls(), s + 1);
}

#[test]
fn guest_changes_are_seen_after_the_exit() {
    let (model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::io(0x3f8, false, 1, 0x2001).with_guest(|hw| {
            hw.gprs[sys::NVMM_X64_GPR_RAX] = 0x41;
            hw.gprs[sys::NVMM_X64_GPR_RIP] = 0x2000;
            hw.drs[sys::NVMM_X64_DR_DR0] = 0xdead;
        }),
    );
    v.run().unwrap();
    let s = model.syscalls();
    assert_eq!(v.gprs().unwrap().get(Gpr::Rax), 0x41);
    assert_eq!(v.gprs().unwrap().rip(), 0x2000);
    assert_eq!(model.syscalls(), s, "GPRS was provided with the I/O exit");
    assert_eq!(v.drs().unwrap().get(Dr::Dr0), 0xdead);
    assert_eq!(model.syscalls(), s + 1, "DRS was not");
}

#[test]
fn intr_state_round_trip() {
    let (model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    let want = IntrState {
        int_window_exiting: true,
        ..Default::default()
    };
    v.intr().unwrap().set(want);
    assert_eq!(v.pending_commit(), StateClasses::INTR);
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_INT_READY),
    );
    assert_eq!(v.run().unwrap(), Exit::IntReady);
    assert!(v.exit_state().int_window_exiting);
    assert_eq!(v.intr().unwrap().get(), want);
}

#[test]
fn event_rules_are_checked_up_front() {
    let (model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    for vector in [0u8, 2, 3, 32, 255] {
        let e = v
            .inject(Event::Exception {
                vector,
                error_code: 0,
            })
            .unwrap_err();
        assert_eq!(
            rejected(&e),
            Some((Op::VcpuInject, Rejection::InvalidExceptionVector(vector)))
        );
        assert!(!v.event_pending(), "nothing written");
    }
    let s = model.syscalls();
    v.inject(Event::Nmi).unwrap();
    assert_eq!(model.syscalls(), s, "inject makes no syscall");
    v.run().unwrap();
    v.inject(Event::Interrupt { vector: 0x30 }).unwrap();
    v.run().unwrap();
    v.inject(Event::Exception {
        vector: 13,
        error_code: 0x18,
    })
    .unwrap();
    v.run().unwrap();
    assert_eq!(
        model.injected(m.id(), 0),
        vec![
            (sys::NVMM_VCPU_EVENT_INTR, 2, 0),
            (sys::NVMM_VCPU_EVENT_INTR, 0x30, 0),
            (sys::NVMM_VCPU_EVENT_EXCP, 13, 0x18)
        ]
    );
}

#[test]
fn the_kernel_validates_events_at_run() {
    let (_model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    // SAFETY: writes only the event fields, as the docs allow.
    unsafe {
        let page = v.comm_page();
        (&raw mut (*page).event.type_).write_volatile(sys::NVMM_VCPU_EVENT_EXCP);
        (&raw mut (*page).event.vector).write_volatile(2);
        (&raw mut (*page).event_commit).write_volatile(true);
    }
    let e = v.run().unwrap_err();
    assert!(matches!(e, Error::Os { op: Op::VcpuRun, errno } if errno == libc::EINVAL));
    assert!(!v.event_pending(), "consumed by the failed run");
}

#[test]
fn completion_helpers() {
    let (model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    model.push_exit(m.id(), 0, ScriptedExit::rdmsr(0x1b, 0x1234));
    assert!(matches!(v.run().unwrap(), Exit::Rdmsr(r) if r.msr == 0x1b && r.npc == 0x1234));
    let s = model.syscalls();
    v.complete_rdmsr(0xfee0_0900_1122_3344).unwrap();
    assert_eq!(model.syscalls(), s, "GPRS provided on MSR exits");
    {
        let g = v.gprs().unwrap();
        assert_eq!(g.get(Gpr::Rax), 0x1122_3344);
        assert_eq!(g.get(Gpr::Rdx), 0xfee0_0900);
        assert_eq!(g.rip(), 0x1234);
    }
    assert_eq!(
        rejected(&v.complete_wrmsr().unwrap_err()),
        Some((Op::CompleteExit, Rejection::WrongExit))
    );
    model.push_exit(m.id(), 0, ScriptedExit::wrmsr(0x10, 99, 0x2000));
    assert!(matches!(v.run().unwrap(), Exit::Wrmsr(w) if w.value == 99));
    v.complete_wrmsr().unwrap();
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::insn(sys::NVMM_VCPU_EXIT_CPUID, 0x3000),
    );
    assert_eq!(v.run().unwrap(), Exit::Cpuid { npc: 0x3000 });
    let g = model.getstates();
    v.complete_cpuid(CpuidRegs {
        eax: 1,
        ebx: 2,
        ecx: 3,
        edx: 0xffff_ffff,
    })
    .unwrap();
    assert_eq!(model.getstates(), g + 1, "CPUID exits provide no state");
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::insn(sys::NVMM_VCPU_EXIT_MWAIT, 0x4000),
    );
    v.run().unwrap();
    let hw = model.hw_state(m.id(), 0);
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RIP], 0x3000);
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RDX], 0xffff_ffff);
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RBX], 2);
    v.skip_instruction().unwrap();
    assert_eq!(v.gprs().unwrap().rip(), 0x4000);
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
    v.run().unwrap();
    assert!(v.skip_instruction().is_err());
    assert!(v.complete_rdmsr(0).is_err());
    assert!(v.complete_cpuid(CpuidRegs::default()).is_err());
}

/// `skip_instruction` takes each skippable exit's `npc`, and only theirs:
/// RDMSR, WRMSR and port I/O besides the CPUID/MWAIT above, and MONITOR.
#[test]
fn skip_instruction_takes_the_npc_of_every_skippable_exit() {
    let (model, m) = setup_with(ModelConfig::default());
    let mut v = m.create_vcpu(0).unwrap();
    let exits = [
        ScriptedExit::rdmsr(0x10, 0x5000),
        ScriptedExit::wrmsr(0x10, 7, 0x5100),
        ScriptedExit::io(0x80, false, 1, 0x5200),
        ScriptedExit::insn(sys::NVMM_VCPU_EXIT_MONITOR, 0x5300),
    ];
    for (i, exit) in exits.into_iter().enumerate() {
        model.push_exit(m.id(), 0, exit);
        v.run().unwrap();
        let before = v.gprs().unwrap().rip();
        v.skip_instruction().unwrap();
        let npc = 0x5000 + 0x100 * i as u64;
        assert_ne!(before, npc);
        assert_eq!(v.gprs().unwrap().rip(), npc, "{:?}", v.last_exit());
        assert!(v.pending_commit().contains(StateClasses::GPRS));
    }
    // A memory exit has no npc (the assist completes it).
    model.push_exit(m.id(), 0, ScriptedExit::memory(0xfee0_0000, true, &[]));
    v.run().unwrap();
    assert_eq!(
        rejected(&v.skip_instruction().unwrap_err()),
        Some((Op::CompleteExit, Rejection::WrongExit))
    );
}

#[test]
fn cpuid_configuration_rules() {
    let (model, m) = setup_with(ModelConfig {
        conf_cpuid_maxops: 2,
        ..Default::default()
    });
    let mut v = m.create_vcpu(0).unwrap();
    let ioctls = model.syscalls();
    let e = v
        .configure_cpuid(CpuidConf::Mask {
            leaf: 1,
            set: CpuidRegs {
                edx: 0x4000,
                ..Default::default()
            },
            del: CpuidRegs {
                edx: 0x4001,
                ..Default::default()
            },
        })
        .unwrap_err();
    assert_eq!(
        rejected(&e),
        Some((Op::VcpuConfigure, Rejection::CpuidSetDelOverlap))
    );
    assert_eq!(model.syscalls(), ioctls);
    v.configure_cpuid(CpuidConf::Mask {
        leaf: 1,
        set: CpuidRegs {
            edx: 0x4080,
            ..Default::default()
        },
        del: CpuidRegs {
            ecx: 1 << 31,
            ..Default::default()
        },
    })
    .unwrap();
    v.configure_cpuid(CpuidConf::Exit { leaf: 0x4000_0000 })
        .unwrap();
    // Reconfiguring a known leaf is not a new leaf.
    v.configure_cpuid(CpuidConf::Exit { leaf: 1 }).unwrap();
    assert_eq!(
        model.cpuid_leaves(m.id(), 0),
        vec![(1, false, true), (0x4000_0000, false, true)]
    );
    let s = model.syscalls();
    let e = v.configure_cpuid(CpuidConf::Exit { leaf: 7 }).unwrap_err();
    assert_eq!(
        rejected(&e),
        Some((Op::VcpuConfigure, Rejection::TooManyCpuidLeaves))
    );
    assert_eq!(e.errno(), libc::ENOBUFS);
    assert_eq!(model.syscalls(), s);
    v.configure_cpuid(CpuidConf::Remove { leaf: 1 }).unwrap();
    v.configure_cpuid(CpuidConf::Exit { leaf: 7 }).unwrap();
    assert_eq!(
        model.cpuid_leaves(m.id(), 0),
        vec![(7, false, true), (0x4000_0000, false, true)]
    );
}

#[test]
fn tpr_configuration_and_capability_checks() {
    let (model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    v.configure_tpr(true).unwrap();
    assert!(model.tpr_exit(m.id(), 0));
    v.configure_tpr(false).unwrap();
    assert!(!model.tpr_exit(m.id(), 0));

    // An SVM-like kernel: CPUID only.
    let (model, m) = setup_with(ModelConfig {
        vcpu_conf_support: sys::NVMM_CAP_ARCH_VCPU_CONF_CPUID,
        ..Default::default()
    });
    let mut v = m.create_vcpu(0).unwrap();
    let s = model.syscalls();
    let e = v.configure_tpr(true).unwrap_err();
    assert!(matches!(
        rejected(&e),
        Some((Op::VcpuConfigure, Rejection::NotSupported(_)))
    ));
    assert_eq!(model.syscalls(), s);
    let (_model, m) = setup_with(ModelConfig {
        vcpu_conf_support: 0,
        ..Default::default()
    });
    let mut v = m.create_vcpu(0).unwrap();
    assert!(v.configure_cpuid(CpuidConf::Exit { leaf: 0 }).is_err());
}

#[test]
fn dump_prints_like_libnvmm() {
    let (_model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    let text = format!("{:?}", v.dump().unwrap());
    assert!(text.contains("RIP=0xfff0"), "{text}");
    assert!(
        text.contains("Cs: sel=0xf000 base=0xffff0000 limit=0xffff"),
        "{text}"
    );
    assert!(text.contains("CR0=0x60000010"), "{text}");
    let short = format!("{v:?}");
    assert!(
        short.contains("Vcpu") && short.contains("state_cached"),
        "{short}"
    );
}
