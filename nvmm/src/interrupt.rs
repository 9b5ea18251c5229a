//! Interrupt delivery helpers: whether the guest can take an interrupt
//! now, asking for the interrupt window, and turning an assist fault into
//! the event to inject.
//!
//! The rules a VMM must follow (NetBSD `sys/dev/nvmm/x86/nvmm_x86_svm.c`
//! and `nvmm_x86_vmx.c`, `*_vcpu_inject` and `*_exit_*`):
//! - the kernel does not check whether the guest can take an external
//!   interrupt: an [`crate::Event::Interrupt`] injected while RFLAGS.IF is
//!   clear or during an interrupt shadow is delivered anyway, against the
//!   architecture. Inject only when [`ExitState::can_take_interrupt`]
//!   says so, else ask for the window and inject at [`crate::Exit::IntReady`];
//! - the kernel clears `int_window_exiting` when it reports
//!   [`crate::Exit::IntReady`], so each window is asked for once;
//! - exceptions are injected whatever the interrupt state (they are
//!   synchronous to the instruction).

use crate::error::Result;
use crate::exit::ExitState;
use crate::state::{Intr, IntrState, StateClasses};
use crate::vcpu::Vcpu;
use crate::x86::rflags;

impl ExitState {
    /// Whether the guest could take an external interrupt at this exit:
    /// RFLAGS.IF set, no interrupt shadow (STI or MOV SS just executed),
    /// and no event already being delivered.
    pub const fn can_take_interrupt(&self) -> bool {
        self.rflags & rflags::IF != 0 && !self.int_shadow && !self.evt_pending
    }
}

impl Vcpu {
    /// Asks for an [`crate::Exit::IntReady`] exit as soon as the guest can
    /// take an interrupt (sets `int_window_exiting` in the INTR class),
    /// keeping the interrupt shadow and the other bits as they are.
    ///
    /// No syscall: if INTR is cached it is updated in place; otherwise the
    /// whole class is rebuilt from the last exit's state (the kernel
    /// reports the same bits there), and the next run commits it.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// let irq = 0x30;
    /// if vcpu.exit_state().can_take_interrupt() {
    ///     vcpu.inject(nvmm::Event::Interrupt { vector: irq })?;
    /// } else {
    ///     vcpu.request_interrupt_window()?;
    ///     // ... and inject at Exit::IntReady.
    /// }
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn request_interrupt_window(&mut self) -> Result<()> {
        self.set_window(|s| s.int_window_exiting = true)
    }

    /// Like [`Vcpu::request_interrupt_window`], for NMIs
    /// (`nmi_window_exiting`, answered by [`crate::Exit::NmiReady`]).
    pub fn request_nmi_window(&mut self) -> Result<()> {
        self.set_window(|s| s.nmi_window_exiting = true)
    }

    fn set_window(&mut self, f: impl FnOnce(&mut IntrState)) -> Result<()> {
        let mut state = if self.cached().contains(StateClasses::INTR) {
            self.intr()?.get()
        } else {
            let e = self.exit_state();
            IntrState {
                int_shadow: e.int_shadow,
                int_window_exiting: e.int_window_exiting,
                nmi_window_exiting: e.nmi_window_exiting,
                evt_pending: e.evt_pending,
            }
        };
        f(&mut state);
        // The whole class is written, so it need not be fetched first.
        Intr::new(self.page()).set(state);
        Ok(())
    }
}

#[cfg(feature = "assist")]
mod assist_fault {
    use crate::error::{Error, Result};
    use crate::state::Cr;
    use crate::vcpu::{Event, Vcpu};
    use nvmm_assist::Exception;

    impl From<Exception> for Event {
        /// The exception as an event ([`Exception::vector`] and its error
        /// code, 0 where it has none). CR2 for a `#PF` is not part of the
        /// event: [`Vcpu::inject_exception`] sets it.
        fn from(e: Exception) -> Event {
            Event::Exception {
                vector: e.vector(),
                error_code: u64::from(e.error_code().unwrap_or(0)),
            }
        }
    }

    impl Vcpu {
        /// Injects `exception` as the CPU would raise it: the event, and
        /// for a `#PF` the faulting address in CR2 (one GETSTATE of CRS
        /// at most; none after an I/O or memory exit).
        pub fn inject_exception(&mut self, exception: Exception) -> Result<()> {
            if let Exception::PageFault { address, .. } = exception {
                self.crs()?.set(Cr::Cr2, address);
            }
            self.inject(exception.into())
        }

        /// If `error` is an assist that failed with an architectural
        /// exception, injects it ([`Vcpu::inject_exception`]) and returns
        /// `true`; otherwise changes nothing and returns `false`.
        ///
        /// ```no_run
        /// # let nvmm = nvmm::Nvmm::open()?;
        /// # let machine = nvmm.create_machine()?;
        /// # let mut vcpu = machine.create_vcpu(0)?;
        /// # struct NoMmio;
        /// # impl nvmm::nvmm_assist::MmioBus for NoMmio {
        /// #     fn read(&mut self, _: u64, b: &mut [u8]) -> Result<(), nvmm::nvmm_assist::BusError> { b.fill(0xff); Ok(()) }
        /// #     fn write(&mut self, _: u64, _: &[u8]) -> Result<(), nvmm::nvmm_assist::BusError> { Ok(()) }
        /// # }
        /// if let nvmm::Exit::Memory(_) = vcpu.run()? {
        ///     if let Err(e) = vcpu.assist_mem(&mut NoMmio) {
        ///         if !vcpu.inject_assist_fault(&e)? {
        ///             return Err(e); // not a guest fault: the VMM's problem
        ///         }
        ///     }
        /// }
        /// # Ok::<(), nvmm::Error>(())
        /// ```
        pub fn inject_assist_fault(&mut self, error: &Error) -> Result<bool> {
            match error {
                Error::Assist {
                    source: nvmm_assist::Error::Exception(x),
                    ..
                } => {
                    self.inject_exception(*x)?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        }
    }
}
