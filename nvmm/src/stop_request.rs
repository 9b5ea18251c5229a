//! [`StopRequest`]: a VMM-side "stop requested" flag that survives the
//! kernel clearing the comm page's `stop` word.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::comm::stop::VcpuStopper;

/// A stop request that is never lost: a flag of the VMM's own, set before
/// the comm page's `stop` word, and checked by the VCPU thread after every
/// run (the pattern QEMU's NVMM accelerator follows with `exit_request`).
///
/// Why the flag is needed: the kernel reports a stop only as the reason of
/// the run during which it sees `stop`, and clears `stop` when that run
/// ends (NetBSD `sys/dev/nvmm/nvmm_internal.h` `nvmm_return_needed`,
/// `nvmm.c` `nvmm_vcpu_run`). A run that ends for another reason in
/// between — a pending signal gives [`crate::Exit::None`] and wins over the
/// stop — consumes the request without saying so. Checking
/// [`StopRequest::take`] after every run, whatever it returned, sees every
/// request.
///
/// [`StopRequest::request`] is two atomic stores: async-signal-safe,
/// usable from any thread. Clones share the flag.
///
/// ```no_run
/// use nvmm::{Exit, StopRequest};
/// # let nvmm = nvmm::Nvmm::open()?;
/// # let machine = nvmm.create_machine()?;
/// let mut vcpu = machine.create_vcpu(0)?;
/// let stop = StopRequest::new(vcpu.stopper());
/// let remote = stop.clone();
/// std::thread::spawn(move || remote.request()); // e.g. from a monitor thread
/// loop {
///     let exit = vcpu.run()?;
///     if stop.take() {
///         break; // whatever the exit was: Stopped, None, or an I/O exit
///     }
///     match exit {
///         Exit::Halted => break,
///         Exit::Stopped | Exit::None => continue, // another stopper, or a signal
///         _ => { /* handle the exit */ }
///     }
/// }
/// # Ok::<(), nvmm::Error>(())
/// ```
#[derive(Clone)]
pub struct StopRequest {
    requested: Arc<AtomicBool>,
    stopper: VcpuStopper,
}

impl fmt::Debug for StopRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopRequest")
            .field("requested", &self.is_requested())
            .finish()
    }
}

impl StopRequest {
    /// A request flag for the VCPU of `stopper` (see
    /// [`crate::Vcpu::stopper`]), initially clear.
    pub fn new(stopper: VcpuStopper) -> StopRequest {
        StopRequest {
            requested: Arc::new(AtomicBool::new(false)),
            stopper,
        }
    }

    /// Requests the stop: sets the flag, then the comm page's `stop` (so a
    /// run in progress returns at its next exit, and a run that has not
    /// started returns at once). No syscall, async-signal-safe.
    #[inline]
    pub fn request(&self) {
        // The flag first: a VCPU thread that sees the run end because of
        // `stop` must find the flag set.
        self.requested.store(true, Ordering::SeqCst);
        self.stopper.stop();
    }

    /// Whether a stop was requested and not yet taken.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Takes the request: returns whether one was pending and clears the
    /// flag. The VCPU thread calls it after every run.
    pub fn take(&self) -> bool {
        self.requested.swap(false, Ordering::SeqCst)
    }

    /// The stopper this request writes through.
    pub fn stopper(&self) -> &VcpuStopper {
        &self.stopper
    }
}
