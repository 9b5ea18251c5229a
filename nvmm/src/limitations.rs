//! What NVMM does not have that other hypervisors (KVM in particular) do,
//! and how a VMM built on this crate copes. (Documentation only.)
//!
//! NVMM's whole kernel interface is the ioctls of `dev/nvmm/nvmm_ioctl.h`:
//! capability, machine and VCPU create/destroy/configure, VCPU
//! get/set state, inject and run, GPA and HVA map/unmap, and `NVMM_IOC_CTL`.
//! Everything else is the VMM's job.
//!
//! # No dirty-page tracking
//!
//! There is no equivalent of KVM's dirty log. To learn which guest pages
//! are written (live migration, incremental snapshots, a framebuffer):
//!
//! 1. Map the pages to track read-only for the guest: `Machine::gpa_unmap`
//!    them and `Machine::gpa_map` them again with `Prot::READ | Prot::EXEC`
//!    (NVMM has no "change protection" ioctl). The host mapping stays
//!    writable for the VMM.
//! 2. A guest write to such a page becomes a memory exit
//!    ([`Exit::Memory`](crate::Exit::Memory), a write): the kernel's run
//!    loop first tries to resolve the fault (`uvm_fault` in
//!    `sys/dev/nvmm/nvmm.c`, `nvmm_vcpu_run`), which fails for a write to a
//!    read-only mapping, so the exit reaches userland. The VMM tells it from
//!    MMIO by its own list of tracked pages.
//! 3. Record the page, map it read-write again, and run without touching
//!    RIP: the guest re-executes the write, which now succeeds in the guest.
//!
//! The cost is one exit and two ioctls per page and tracking round, so track
//! only what needs it. Writes the VMM makes itself (through the host
//! mapping) it knows about. A snapshot without tracking copies all guest RAM
//! while every VCPU is stopped, together with [`Vcpu::save`](crate::Vcpu::save)
//! of each VCPU.
//!
//! # No in-kernel interrupt controller, no timers
//!
//! NVMM emulates no local APIC, I/O APIC, PIC, PIT, HPET or APIC timer (KVM's
//! "irqchip"). The VMM emulates them in userland:
//!
//! - Their registers are MMIO (the local APIC page, usually at
//!   `0xFEE0_0000`; the I/O APIC at `0xFEC0_0000`) or ports (PIC `0x20`/`0xA0`,
//!   PIT `0x40`-`0x43`): memory and I/O exits handled with the assists
//!   (`Vcpu::assist_mem`, `Vcpu::assist_io`: feature `assist`). `IA32_APIC_BASE` and the
//!   x2APIC MSRs arrive as [`Exit::Rdmsr`](crate::Exit::Rdmsr) and
//!   [`Exit::Wrmsr`](crate::Exit::Wrmsr): the kernel handles only a few MSRs
//!   itself.
//! - To deliver an interrupt, [`Vcpu::inject`](crate::Vcpu::inject) an
//!   [`Event::Interrupt`](crate::Event::Interrupt) when the guest can take
//!   it (RFLAGS.IF set and no interrupt shadow, both in
//!   [`Vcpu::exit_state`](crate::Vcpu::exit_state)); otherwise set
//!   `int_window_exiting` in the INTR state and inject at
//!   [`Exit::IntReady`](crate::Exit::IntReady). NMIs likewise with
//!   [`Event::Nmi`](crate::Event::Nmi) and
//!   [`Exit::NmiReady`](crate::Exit::NmiReady).
//! - Timers are host timers of the VMM (a thread, or a kqueue timer). When
//!   one fires while a VCPU runs, [`VcpuStopper::stop`](crate::VcpuStopper)
//!   ends the run ([`Exit::Stopped`](crate::Exit::Stopped)) so that the
//!   VCPU's thread can inject. A guest `HLT` is
//!   [`Exit::Halted`](crate::Exit::Halted) (RIP already past it): the VCPU's
//!   thread waits until an interrupt is due.
//! - An IPI is a write to the emulated local APIC on the sending VCPU; the
//!   VMM stops the target VCPU with its stopper and injects on its thread.
//!
//! # TSC frequency: the host's
//!
//! The guest reads the TSC without exits, at the host TSC's rate plus an
//! offset: writing the [`Msr::Tsc`](crate::Msr::Tsc) slot of the state sets
//! the guest's TSC value (the kernel turns it into the offset), so a
//! restored snapshot continues from the saved value, at the new host's
//! rate. NVMM cannot scale the rate and does not tell the guest what it is.
//! A guest that would otherwise calibrate the TSC against an emulated PIT
//! or HPET (slow, and imprecise under virtualization) can be told: the VMM
//! reads the host frequency (`sysctl machdep.tsc_freq` on NetBSD/x86) and
//! reports it through CPUID, in leaves 0x15/0x16 or a hypervisor leaf the
//! guest reads (such as 0x4000_0010, frequency in kHz in EAX, a convention
//! VMware introduced), configured with
//! [`CpuidConf::Exit`](crate::CpuidConf::Exit) and answered at
//! [`Exit::Cpuid`](crate::Exit::Cpuid). The kernel makes `RDTSCP` raise
//! `#UD` in the guest, so a guest must not rely on it.
