//! [`VcpuStopper`]: makes a running (or the next) `Vcpu::run` return
//! [`crate::Exit::Stopped`], from any thread or from a signal handler.

use std::fmt;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::thread::JoinHandle;

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
/// the `Vcpu` is dropped. The kernel reuses a comm page for the next VCPU
/// created with the same id, so dropping the `Vcpu` first replaces its
/// mapping by private memory: a stop from a handle that outlived its VCPU
/// lands there and never stops a later VCPU with the same id. The mapping
/// is unmapped when the last handle goes.
///
/// Dropping the last handle unmaps the page and frees memory, which is not
/// async-signal-safe: a signal handler may call [`VcpuStopper::stop`] but
/// must not drop the last handle (keep one outside the handler, e.g. in a
/// `static` `OnceLock` or leaked `Box`).
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
        if self.comm.stores_are_safe() {
            self.comm.page().store_stop(1);
        }
    }

    /// Requests the stop, then sends `signal` to the VCPU's thread so that
    /// a guest that makes no exit leaves the kernel now. The signal must
    /// have a handler installed (an empty one is enough; `SA_RESTART` is
    /// fine); with its default action or ignored it would kill the process
    /// or do nothing, so that is refused.
    ///
    /// The thread is named by its `JoinHandle`: while the handle exists the
    /// thread is not joined nor detached, so its id is valid even if the
    /// thread has finished (`pthread_kill` on a stale or made-up id is
    /// undefined behaviour). For a thread without a `JoinHandle` (the main
    /// thread, a scoped or foreign thread) use
    /// [`VcpuStopper::stop_and_signal_raw`].
    ///
    /// A raw thread id is not accepted:
    ///
    /// ```compile_fail,E0308
    /// # fn f(stopper: nvmm::VcpuStopper) {
    /// // SAFETY: pthread_self is always valid.
    /// let me = unsafe { libc::pthread_self() };
    /// stopper.stop_and_signal(me, libc::SIGUSR1);
    /// # }
    /// ```
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// let mut vcpu = machine.create_vcpu(0)?;
    /// let stopper = vcpu.stopper();
    /// let thread = std::thread::spawn(move || vcpu.run().map(|e| format!("{e:?}")));
    /// // A handler for SIGUSR1 is installed (e.g. with sigaction).
    /// stopper.stop_and_signal(&thread, libc::SIGUSR1)?;
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn stop_and_signal<T>(&self, thread: &JoinHandle<T>, signal: i32) -> Result<()> {
        // SAFETY: the JoinHandle keeps the thread joinable, so its id is
        // valid for pthread_kill (ESRCH at worst once it has finished).
        unsafe { self.stop_and_signal_raw(thread.as_pthread_t() as libc::pthread_t, signal) }
    }

    /// [`VcpuStopper::stop_and_signal`] with a raw thread id.
    ///
    /// # Safety
    ///
    /// `thread` is the id of a thread of this process that is alive, or has
    /// finished but is neither joined nor detached, for the whole call (for
    /// instance `pthread_self()`, or the VCPU thread while it is known not
    /// to have been joined).
    pub unsafe fn stop_and_signal_raw(&self, thread: libc::pthread_t, signal: i32) -> Result<()> {
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
        // SAFETY: the caller guarantees `thread` names a joinable (or
        // current) thread of this process.
        let rc = unsafe { libc::pthread_kill(thread, signal) };
        if rc != 0 {
            return Err(Error::os(Op::Signal, rc));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
