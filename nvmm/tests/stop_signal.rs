//! Stopping a VCPU thread with a signal, and the refusal without handler.
//!
//! Real signals (sigaction, pthread_kill): miri cannot run them, so this
//! file is empty under miri; ThreadSanitizer runs it.
#![cfg(not(miri))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use nvmm::model::KernelModel;
use nvmm::sys::OpenMode;
use nvmm::{Error, Exit, Nvmm, Op, Rejection};

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn stop_and_signal_interrupts_the_vcpu_thread() {
    // SAFETY: installing a handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    let stopper = v.stopper();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        // Wait until the signal was delivered to this thread.
        while SIGNALS.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        v.run().unwrap() == Exit::Stopped
    });
    ready_rx.recv().unwrap();
    stopper.stop_and_signal(&t, libc::SIGUSR1).unwrap();
    go_tx.send(()).unwrap();
    assert!(t.join().unwrap(), "the run returned Stopped");
    assert!(SIGNALS.load(Ordering::SeqCst) >= 1);
}

#[test]
fn a_signal_without_handler_is_refused() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let v = m.create_vcpu(0).unwrap();
    // SAFETY: pthread_self names the current thread, alive for the call.
    let e = unsafe {
        v.stopper()
            .stop_and_signal_raw(libc::pthread_self(), libc::SIGUSR2)
            .unwrap_err()
    };
    assert!(matches!(
        e,
        Error::Rejected { op: Op::Signal, reason: Rejection::SignalNotHandled(s) } if s == libc::SIGUSR2
    ));
    assert_eq!(model.comm_stop(m.id(), 0), 0, "no stop requested either");
}

/// A number that is no signal at all (sigaction fails with EINVAL) is
/// refused the same way, before any stop is requested.
#[test]
fn a_number_that_is_no_signal_is_refused() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let v = m.create_vcpu(0).unwrap();
    for signal in [0, -1, 4096] {
        // SAFETY: pthread_self names the current thread, alive for the call.
        let e = unsafe {
            v.stopper()
                .stop_and_signal_raw(libc::pthread_self(), signal)
                .unwrap_err()
        };
        assert!(
            matches!(
                e,
                Error::Rejected { op: Op::Signal, reason: Rejection::SignalNotHandled(s) } if s == signal
            ),
            "{signal}: {e:?}"
        );
    }
    assert_eq!(model.comm_stop(m.id(), 0), 0, "no stop requested");
}

#[test]
fn a_finished_but_unjoined_thread_can_be_signalled() {
    // SAFETY: installing a handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let v = m.create_vcpu(0).unwrap();
    let t = std::thread::spawn(|| ());
    while !t.is_finished() {
        std::thread::yield_now();
    }
    // The handle keeps the id valid: ESRCH or success, never a crash.
    match v.stopper().stop_and_signal(&t, libc::SIGUSR1) {
        Ok(())
        | Err(Error::Os {
            op: Op::Signal,
            errno: libc::ESRCH,
        }) => {}
        Err(other) => panic!("{other:?}"),
    }
    assert_eq!(model.comm_stop(m.id(), 0), 1);
    t.join().unwrap();
}
