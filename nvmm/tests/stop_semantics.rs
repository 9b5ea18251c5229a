//! What a run does when a stop or a signal comes before or during it, as
//! the **model** implements NetBSD's `nvmm_return_needed`
//! (`sys/dev/nvmm/nvmm_internal.h`), `nvmm_do_vcpu_run` and `nvmm_vcpu_run`
//! (`nvmm.c`). These are model results, not NetBSD results; each test runs
//! against the SVM and the VMX flavour of the model.

use nvmm::model::{Backend, KernelModel, ScriptedExit};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{Event, Exit, Gpr, Nvmm, StateClasses, StopRequest};

fn setup(backend: Backend) -> (std::sync::Arc<KernelModel>, Nvmm) {
    let model = KernelModel::with_backend(backend);
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    (model, nvmm)
}

#[test]
fn a_stop_before_the_run_commits_nothing_and_keeps_the_event() {
    for b in Backend::BOTH {
        let (model, nvmm) = setup(b);
        let m = nvmm.create_machine().unwrap();
        let mut v = m.create_vcpu(0).unwrap();
        // An exit with distinctive exit state, so stale data would show.
        model.edit_hw(m.id(), 0, |s| s.gprs[sys::NVMM_X64_GPR_RFLAGS] = 0x246);
        model.push_exit(m.id(), 0, ScriptedExit::io(0x80, false, 1, 0xFFF2));
        assert!(matches!(v.run().unwrap(), Exit::Io(_)));
        assert_eq!(v.exit_state().rflags, 0x246);

        v.gprs().unwrap().set(Gpr::Rbx, 0x1234);
        v.inject(Event::Interrupt { vector: 0x30 }).unwrap();
        let cached = v.cached();
        v.stopper().stop();
        assert_eq!(v.run().unwrap(), Exit::Stopped, "{b:?}");
        // Nothing was committed, no event consumed, the cache kept.
        assert!(v.pending_commit().contains(StateClasses::GPRS), "{b:?}");
        assert_eq!(v.cached(), cached, "{b:?}");
        assert!(v.event_pending(), "{b:?}");
        assert!(model.injected(m.id(), 0).is_empty(), "{b:?}");
        assert_ne!(
            model.hw_state(m.id(), 0).gprs[sys::NVMM_X64_GPR_RBX],
            0x1234
        );
        // The exit structure was zeroed before the run: no stale RFLAGS.
        assert_eq!(v.exit_state().rflags, 0, "{b:?}");
        assert_eq!(model.comm_stop(m.id(), 0), 0, "cleared by the run");

        // The next run commits and delivers.
        model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
        assert_eq!(v.run().unwrap(), Exit::Halted);
        assert_eq!(
            model.hw_state(m.id(), 0).gprs[sys::NVMM_X64_GPR_RBX],
            0x1234
        );
        assert_eq!(
            model.injected(m.id(), 0),
            vec![(sys::NVMM_VCPU_EVENT_INTR, 0x30, 0)]
        );
        assert!(!v.event_pending());
    }
}

#[test]
fn a_stop_during_an_io_exit_reexecutes_it_and_during_a_hlt_loses_it() {
    for b in Backend::BOTH {
        let (model, nvmm) = setup(b);
        let m = nvmm.create_machine().unwrap();
        let mut v = m.create_vcpu(0).unwrap();
        // OUT: the hardware does not advance RIP on an I/O exit.
        let s = v.stopper();
        model.push_exit(
            m.id(),
            0,
            ScriptedExit::io(0x80, false, 1, 0xFFF2).with_guest(move |_| s.stop()),
        );
        assert_eq!(v.run().unwrap(), Exit::Stopped, "{b:?}");
        assert_eq!(v.gprs().unwrap().rip(), 0xFFF0, "the OUT runs again");
        assert!(
            matches!(v.run().unwrap(), Exit::Io(io) if io.port == 0x80),
            "{b:?}: and exits again"
        );
        // HLT: the guest is already past the instruction.
        let s = v.stopper();
        model.push_exit(
            m.id(),
            0,
            ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED).with_guest(move |hw| {
                hw.gprs[sys::NVMM_X64_GPR_RIP] += 1;
                s.stop();
            }),
        );
        assert_eq!(v.run().unwrap(), Exit::Stopped, "{b:?}");
        assert_eq!(v.gprs().unwrap().rip(), 0xFFF1, "the HLT is lost");
    }
}

#[test]
fn a_pending_signal_wins_over_the_stop_which_is_then_cleared() {
    for b in Backend::BOTH {
        let (model, nvmm) = setup(b);
        let m = nvmm.create_machine().unwrap();
        let mut v = m.create_vcpu(0).unwrap();
        // Before the run.
        v.stopper().stop();
        model.pend_signal(m.id(), 0);
        assert_eq!(v.run().unwrap(), Exit::None, "{b:?}");
        assert_eq!(model.comm_stop(m.id(), 0), 0, "the stop is gone");
        // During the run: the signal replaces the guest's exit too.
        let s = v.stopper();
        model.push_exit(
            m.id(),
            0,
            ScriptedExit::io(0x80, false, 1, 0xFFF2)
                .with_guest(move |_| s.stop())
                .with_signal(),
        );
        assert_eq!(v.run().unwrap(), Exit::None, "{b:?}");
        assert_eq!(model.comm_stop(m.id(), 0), 0);
        // The OUT was not completed: it exits again, and not as stopped.
        assert!(
            matches!(v.run().unwrap(), Exit::Io(io) if io.port == 0x80),
            "{b:?}: the OUT exits again"
        );
        model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
        assert_eq!(v.run().unwrap(), Exit::Halted, "the stop did not survive");
    }
}

#[test]
fn a_stop_request_survives_the_signal() {
    let (model, nvmm) = setup(Backend::Svm);
    let m = nvmm.create_machine().unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    let stop = StopRequest::new(v.stopper());
    let remote = stop.clone();
    remote.request();
    assert!(stop.is_requested());
    model.pend_signal(m.id(), 0);
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
    // The VMM loop of the StopRequest docs: the flag is checked after
    // every run, whatever it returned.
    let mut runs = 0;
    let stopped = loop {
        let exit = v.run().unwrap();
        runs += 1;
        if stop.take() {
            break Some(exit);
        }
        if exit == Exit::Halted {
            break None;
        }
    };
    assert_eq!(stopped, Some(Exit::None), "seen after the signal's run");
    assert_eq!(runs, 1);
    assert!(!stop.take(), "taken once");
    assert_eq!(v.run().unwrap(), Exit::Halted);
}
