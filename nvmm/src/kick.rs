//! [`install_kick_handler`]: the do-nothing signal handler that makes a
//! signal usable to kick a VCPU thread out of `NVMM_IOC_VCPU_RUN` (see
//! [`crate::VcpuStopper::stop_and_signal`]), so that no VMM writes its own
//! `sigaction`.

use crate::error::{Error, Op, Result};

/// The handler: it only has to exist. A pending signal makes the kernel
/// leave the run (`nvmm_return_needed()` in `sys/dev/nvmm/nvmm_internal.h`
/// checks `LW_USERRET`, and the run returns [`crate::Exit::None`]); the
/// work is done by the stop flag and the VMM's own state.
extern "C" fn kick(_signal: libc::c_int) {}

/// Installs a handler that does nothing for `signal` (with `SA_RESTART`,
/// so other system calls of the process are not interrupted by it),
/// process-wide, replacing any handler the signal had. Call it once before
/// [`crate::VcpuStopper::stop_and_signal`] with the same signal; use a
/// signal the program does not otherwise use (`SIGUSR1`, `SIGUSR2` or a
/// real-time signal).
///
/// ```no_run
/// nvmm::install_kick_handler(libc::SIGUSR1)?;
/// # Ok::<(), nvmm::Error>(())
/// ```
pub fn install_kick_handler(signal: i32) -> Result<()> {
    // SAFETY: a zeroed sigaction is a valid value (no handler, empty
    // flags); the fields set below make it a plain handler.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa.sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&raw mut sa.sa_mask) };
    // SAFETY: installs `kick`, which is async-signal-safe (it does
    // nothing); no old action is requested.
    let rc = unsafe { libc::sigaction(signal, &raw const sa, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(Error::os(
            Op::Signal,
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL),
        ));
    }
    Ok(())
}

// Real sigaction calls, which miri cannot run (as the other tests that
// need the OS, they are left out of the miri run).
#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn the_handler_is_installed_and_bad_signals_are_refused() {
        install_kick_handler(libc::SIGUSR2).unwrap();
        let mut old = std::mem::MaybeUninit::<libc::sigaction>::uninit();
        // SAFETY: reads the current action into `old`.
        let rc = unsafe { libc::sigaction(libc::SIGUSR2, std::ptr::null(), old.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: sigaction succeeded and filled `old`.
        let old = unsafe { old.assume_init() };
        // Function addresses do not compare reliably (they differed in a
        // release build): check that a handler with SA_RESTART is there,
        // then that the signal no longer kills the process.
        assert!(old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN);
        assert_ne!(old.sa_flags & libc::SA_RESTART, 0);
        // The signal is harmless now: raising it does not kill the test.
        // SAFETY: raising a signal that has a do-nothing handler.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        let e = install_kick_handler(libc::SIGKILL).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
    }
}
