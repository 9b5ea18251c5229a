//! Stopping a VCPU thread with a signal, and the refusal without handler.

mod model;

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use model::KernelModel;
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
    stopper
        .stop_and_signal(t.as_pthread_t() as libc::pthread_t, libc::SIGUSR1)
        .unwrap();
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
    // SAFETY: pthread_self is always valid.
    let me = unsafe { libc::pthread_self() };
    let e = v.stopper().stop_and_signal(me, libc::SIGUSR2).unwrap_err();
    assert!(matches!(
        e,
        Error::Rejected { op: Op::Signal, reason: Rejection::SignalNotHandled(s) } if s == libc::SIGUSR2
    ));
    assert_eq!(model.comm_stop(m.id(), 0), 0, "no stop requested either");
}
