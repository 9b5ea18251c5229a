//! [`VcpuStopper`]: makes a running (or the next) `Vcpu::run` return
//! [`crate::Exit::Stopped`], from any thread or from a signal handler.

use std::fmt;
use std::sync::Arc;

use crate::comm::CommMapping;
use crate::error::{Error, Op, Rejection, Result};

/// A handle that stops a VCPU's run (libnvmm's `nvmm_vcpu_stop`).
///
/// [`VcpuStopper::stop`] is one atomic store of 1 to the comm page's `stop`
/// word: async-signal-safe, callable from any thread while the VCPU's
/// thread is inside `run`. What the kernel does with it (NetBSD
/// `nvmm_internal.h` `nvmm_return_needed`, `nvmm.c` `nvmm_do_vcpu_run` and
/// `nvmm_vcpu_run`, the backends' `*_vcpu_run`):
/// - set before a run: the run returns [`crate::Exit::Stopped`] at once,
///   committing no state and consuming no event;
/// - set during a run: the run returns [`crate::Exit::Stopped`] at the
///   guest's next exit **in place of that exit** (an I/O instruction is
///   re-executed by the next run; a HLT is lost, since RIP is past it);
/// - a signal pending for the VCPU thread wins: the run returns
///   [`crate::Exit::None`];
/// - in every case the kernel clears `stop` when the run ends.
///
/// So a request can be consumed by a run that reports something else (a
/// signal's [`crate::Exit::None`]). A VMM that must not lose a stop uses
/// [`crate::StopRequest`] (its own flag, set before `stop`, checked after
/// every run), as QEMU does with `exit_request`.
///
/// A VCPU executing guest code that causes no exit only notices the flag at
/// the next exit; to bound that delay, also send the VCPU's thread a signal
/// that has a handler ([`VcpuStopper::stop_and_signal`]): the signal forces
/// an exit and the run returns ([`crate::Exit::None`], the signal winning).
///
/// The handle keeps the comm-page mapping alive (an `Arc` it shares with
/// the `Vcpu`), so a stop can never write to an unmapped page, even after
/// the `Vcpu` is dropped.
#[derive(Clone)]
pub struct VcpuStopper {
    pub(crate) comm: Arc<CommMapping>,
}

impl fmt::Debug for VcpuStopper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcpuStopper")
            .field("comm_page", &self.comm.as_ptr())
            .finish()
    }
}

impl VcpuStopper {
    /// Requests the stop: an atomic store, no syscall, async-signal-safe.
    ///
    /// ```no_run
    /// let nvmm = nvmm::Nvmm::open()?;
    /// let machine = nvmm.create_machine()?;
    /// let mut vcpu = machine.create_vcpu(0)?;
    /// let stopper = vcpu.stopper();
    /// std::thread::spawn(move || stopper.stop());
    /// let exit = vcpu.run()?; // returns Exit::Stopped at the latest at the next exit
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    #[inline]
    pub fn stop(&self) {
        self.comm.page().store_stop(1);
    }

    /// Requests the stop, then sends `signal` to `thread` (the VCPU's
    /// thread, e.g. from `JoinHandleExt::as_pthread_t`) so that a guest
    /// that makes no exit leaves the kernel now. The signal must have a
    /// handler installed (an empty one is enough; `SA_RESTART` is fine);
    /// with its default action or ignored it would kill the process or do
    /// nothing, so that is refused.
    pub fn stop_and_signal(&self, thread: libc::pthread_t, signal: i32) -> Result<()> {
        let mut old = std::mem::MaybeUninit::<libc::sigaction>::uninit();
        // SAFETY: querying (not changing) the disposition; `old` is written
        // by the call.
        let rc = unsafe { libc::sigaction(signal, std::ptr::null(), old.as_mut_ptr()) };
        if rc != 0 {
            return Err(Error::rejected(
                Op::Signal,
                Rejection::SignalNotHandled(signal),
            ));
        }
        // SAFETY: sigaction returned 0, so it filled `old`.
        let old = unsafe { old.assume_init() };
        if old.sa_sigaction == libc::SIG_DFL || old.sa_sigaction == libc::SIG_IGN {
            return Err(Error::rejected(
                Op::Signal,
                Rejection::SignalNotHandled(signal),
            ));
        }
        self.stop();
        // SAFETY: pthread_kill with a thread id from the caller; an id of a
        // thread that has exited yields ESRCH, not undefined behaviour, for
        // joinable threads whose handle is still held.
        let rc = unsafe { libc::pthread_kill(thread, signal) };
        if rc != 0 {
            return Err(Error::os(Op::Signal, rc));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
