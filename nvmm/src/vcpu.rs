//! [`Vcpu`]: one virtual CPU, its comm page, its state, events and runs.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use nvmm_sys as sys;

use crate::comm::stop::VcpuStopper;
use crate::comm::{CommMapping, CommPage, PageAddr};
use crate::device::ioc;
use crate::error::{Error, Op, Rejection, Result, report_teardown};
use crate::exit::{self, Exit, ExitState};
use crate::machine::MachineInner;
use crate::state::{Crs, Drs, Fpu, Gpr, Gprs, Intr, Msrs, Segs, StateClasses};

/// An event to inject at the next run.
///
/// The kernel does not check whether the guest can take an external
/// interrupt (`svm_vcpu_inject`/`vmx_vcpu_inject` in NetBSD's
/// `nvmm_x86_svm.c`/`nvmm_x86_vmx.c` only validate the vector): inject an
/// [`Event::Interrupt`] when [`crate::ExitState::can_take_interrupt`]
/// holds, else call [`Vcpu::request_interrupt_window`] and inject at
/// [`crate::Exit::IntReady`] (the kernel clears the window request when it
/// reports that exit). An assist fault converts with `Event::from` or,
/// with CR2 for `#PF`, [`Vcpu::inject_assist_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An exception with its error code (used by the kernel for vectors 8,
    /// 10-14, 17 and 30, ignored for the others). The kernel refuses
    /// vectors 0, 2, 3 and >= 32; so does [`Vcpu::inject`], up front.
    Exception {
        /// The vector.
        vector: u8,
        /// The error code.
        error_code: u64,
    },
    /// An external interrupt (vector 2 is delivered as an NMI).
    Interrupt {
        /// The vector.
        vector: u8,
    },
    /// A non-maskable interrupt (an interrupt event with vector 2).
    Nmi,
}

/// Values for the four registers a CPUID leaf returns, or masks of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidRegs {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

impl CpuidRegs {
    fn overlaps(&self, o: &CpuidRegs) -> bool {
        self.eax & o.eax != 0
            || self.ebx & o.ebx != 0
            || self.ecx & o.ecx != 0
            || self.edx & o.edx != 0
    }
}

/// A CPUID configuration of one leaf (`NVMM_VCPU_CONF_CPUID`). The kernel's
/// "mask and exit both set" error cannot be expressed with this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuidConf {
    /// The kernel answers the leaf itself, forcing the `set` bits to 1 and
    /// the `del` bits to 0 (they must not overlap).
    Mask {
        /// The leaf (EAX).
        leaf: u32,
        /// Bits forced on.
        set: CpuidRegs,
        /// Bits forced off.
        del: CpuidRegs,
    },
    /// CPUID of this leaf exits to userland ([`Exit::Cpuid`]). The exit
    /// arrives with RAX-RDX already overwritten by the kernel's own answer,
    /// so the leaf is no longer in RAX: configure one exit leaf per known
    /// purpose (e.g. the hypervisor leaf `0x4000_0000`), or prefer
    /// [`CpuidConf::Mask`].
    Exit {
        /// The leaf (EAX).
        leaf: u32,
    },
    /// Removes the configuration of this leaf.
    Remove {
        /// The leaf (EAX).
        leaf: u32,
    },
}

/// What an assist works with ([`Vcpu::assist_parts`]).
#[cfg(feature = "assist")]
pub(crate) struct AssistParts<'a> {
    /// The registers in the comm page, and the vendor.
    pub(crate) state: &'a mut crate::assist::CommState,
    /// The last exit, as the kernel wrote it.
    pub(crate) exit: &'a sys::nvmm_x86_exit,
    pub(crate) ram: &'a mut crate::assist::VcpuRam,
    pub(crate) fetch_cache: &'a mut nvmm_assist::FetchCache,
    /// The comm page (the one `state` works on).
    pub(crate) page: CommPage<'a>,
}

/// The state classes the kernel provides on I/O and memory exits.
pub const PROVIDED_ON_IO_AND_MEMORY: StateClasses = StateClasses::GPRS
    .union(StateClasses::SEGS)
    .union(StateClasses::CRS)
    .union(StateClasses::MSRS);

/// One VCPU (`NVMM_IOC_VCPU_CREATE` + its comm page); dropping it does
/// `NVMM_IOC_VCPU_DESTROY`, and the comm page is unmapped after that, when
/// the last [`VcpuStopper`] is gone too.
///
/// `Vcpu` is `Send` (drive it from any one thread) but not `Sync`: the
/// kernel requires one thread per VCPU; other threads use a
/// [`VcpuStopper`]. Everything that may make a syscall, or whose data a
/// run would change, takes `&mut self`.
///
/// A failed destroy in `Drop` is passed to the hook of
/// [`crate::set_teardown_error_hook`].
pub struct Vcpu {
    machine: Arc<MachineInner>,
    id: u32,
    comm: Arc<CommMapping>,
    /// `comm.addr()`, kept here so that reaching the page costs one load.
    page: PageAddr,
    run_args: sys::nvmm_ioc_vcpu_run,
    cpuid_leaves: Vec<u32>,
    /// The assists' view of the registers in the comm page, with the
    /// vendor they emulate (`Vcpu::guest_vendor`).
    #[cfg(feature = "assist")]
    pub(crate) assist_state: crate::assist::CommState,
    /// The instruction-fetch translation cache of `Vcpu::assist_mem`
    /// (re-validated against the guest's tables on every use).
    #[cfg(feature = "assist")]
    pub(crate) fetch_cache: nvmm_assist::FetchCache,
    /// The assists' guest RAM: the machine's areas, with the copy of the
    /// guest ranges that answers "not RAM" without a snapshot while it is
    /// current (see [`crate::memory::GuestRanges`]).
    #[cfg(feature = "assist")]
    pub(crate) ram: crate::assist::VcpuRam,
    _not_sync: PhantomData<Cell<()>>,
}

impl fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let page = self.comm.page();
        f.debug_struct("Vcpu")
            .field("machine", &self.machine.id)
            .field("id", &self.id)
            .field("state_cached", &page.cached())
            .field("state_commit", &page.commit())
            .field("last_exit", &self.last_exit())
            .finish()
    }
}

impl Vcpu {
    pub(crate) fn create(machine: Arc<MachineInner>, id: u32) -> Result<Vcpu> {
        // The kernel refuses these too; checking first also guarantees that
        // NVMM_COMM_OFF (which keeps 8 bits of the id) names this VCPU's page.
        if id >= machine.cap().max_vcpus.min(256) {
            return Err(Error::rejected(
                Op::VcpuCreate,
                Rejection::InvalidVcpuId(id),
            ));
        }
        let nvmm = machine.nvmm.clone();
        let mut args = sys::nvmm_ioc_vcpu_create {
            machid: machine.id,
            cpuid: id,
        };
        // SAFETY: the argument of NVMM_IOC_VCPU_CREATE; no pointers.
        unsafe {
            nvmm.ioctl(
                Op::VcpuCreate,
                ioc(sys::NVMM_IOC_VCPU_CREATE),
                &raw mut args,
            )
        }?;
        // mmap only after create: the kernel initialises the page there.
        let page = match nvmm
            .kernel
            .map_comm_page(nvmm.fd(), sys::nvmm_comm_off(machine.id, id))
        {
            Ok(p) => p,
            Err(errno) => {
                destroy(&machine, id);
                return Err(Error::os(Op::CommPageMap, errno));
            }
        };
        // SAFETY: a fresh comm-page mapping from the kernel layer.
        let comm = Arc::new(unsafe { CommMapping::new(page, nvmm) });
        // SAFETY: all-zero is a valid value of this plain C structure
        // (integers, bools, unions of integers).
        let mut run_args: sys::nvmm_ioc_vcpu_run = unsafe { std::mem::zeroed() };
        run_args.machid = machine.id;
        run_args.cpuid = id;
        #[cfg(feature = "assist")]
        let ram = crate::assist::VcpuRam::new(machine.clone());
        // SAFETY: the address of this VCPU's own mapping, stored in this
        // VCPU.
        #[cfg(feature = "assist")]
        let assist_state =
            unsafe { crate::assist::CommState::new(comm.addr(), crate::assist::host_vendor()) };
        Ok(Vcpu {
            machine,
            id,
            page: comm.addr(),
            comm,
            run_args,
            cpuid_leaves: Vec::new(),
            #[cfg(feature = "assist")]
            assist_state,
            #[cfg(feature = "assist")]
            fetch_cache: nvmm_assist::FetchCache::new(),
            #[cfg(feature = "assist")]
            ram,
            _not_sync: PhantomData,
        })
    }

    /// What an assist works with, as separate borrows.
    #[cfg(feature = "assist")]
    #[inline]
    pub(crate) fn assist_parts(&mut self) -> AssistParts<'_> {
        AssistParts {
            state: &mut self.assist_state,
            exit: &self.run_args.exit,
            ram: &mut self.ram,
            fetch_cache: &mut self.fetch_cache,
            // SAFETY: `self.page` is `self.comm.addr()` (set in `create`,
            // never changed).
            page: unsafe { self.page.page(&self.comm) },
        }
    }

    /// The VCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The id of the machine this VCPU belongs to.
    pub fn machine_id(&self) -> u32 {
        self.machine.id
    }

    #[inline]
    pub(crate) fn page(&self) -> CommPage<'_> {
        // SAFETY: `self.page` is `self.comm.addr()` (set in `create`,
        // never changed).
        unsafe { self.page.page(&self.comm) }
    }

    /// The classes currently valid in the comm page (`state_cached`).
    pub fn cached(&self) -> StateClasses {
        self.page().cached()
    }

    /// The classes written since the last run, which the next run applies
    /// (`state_commit`).
    pub fn pending_commit(&self) -> StateClasses {
        self.page().commit()
    }

    /// Makes `classes` valid in the comm page (libnvmm's
    /// `nvmm_vcpu_getstate`): no syscall if all are cached, otherwise one
    /// `NVMM_IOC_VCPU_GETSTATE` for the missing ones. Classes with pending
    /// writes are cached, so they are never overwritten.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// use nvmm::StateClasses;
    /// vcpu.fetch(StateClasses::GPRS | StateClasses::SEGS)?; // one syscall at most
    /// let rip = vcpu.gprs()?.rip(); // none
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    #[inline]
    pub fn fetch(&mut self, classes: StateClasses) -> Result<()> {
        let missing = classes.difference(self.page().cached()) & StateClasses::ALL;
        if missing.is_empty() {
            return Ok(());
        }
        self.getstate(missing)
    }

    /// `NVMM_IOC_VCPU_GETSTATE` of `missing` (the slow part of
    /// [`Vcpu::fetch`]).
    #[cold]
    fn getstate(&mut self, missing: StateClasses) -> Result<()> {
        self.page().set_wanted(missing);
        let mut args = sys::nvmm_ioc_vcpu_getstate {
            machid: self.machine.id,
            cpuid: self.id,
        };
        // SAFETY: the argument of NVMM_IOC_VCPU_GETSTATE; the kernel writes
        // the comm page, which we only access through raw pointers.
        unsafe {
            self.machine.nvmm.ioctl(
                Op::VcpuGetState,
                ioc(sys::NVMM_IOC_VCPU_GETSTATE),
                &raw mut args,
            )
        }
    }

    /// GPRs, RIP and RFLAGS ([`Vcpu::fetch`] of GPRS, then a view).
    pub fn gprs(&mut self) -> Result<Gprs<'_>> {
        self.fetch(StateClasses::GPRS)?;
        Ok(Gprs::new(self.page()))
    }
    /// Segment registers ([`Vcpu::fetch`] of SEGS, then a view).
    pub fn segs(&mut self) -> Result<Segs<'_>> {
        self.fetch(StateClasses::SEGS)?;
        Ok(Segs::new(self.page()))
    }
    /// Control registers ([`Vcpu::fetch`] of CRS, then a view).
    pub fn crs(&mut self) -> Result<Crs<'_>> {
        self.fetch(StateClasses::CRS)?;
        Ok(Crs::new(self.page()))
    }
    /// Debug registers ([`Vcpu::fetch`] of DRS, then a view).
    pub fn drs(&mut self) -> Result<Drs<'_>> {
        self.fetch(StateClasses::DRS)?;
        Ok(Drs::new(self.page()))
    }
    /// MSR slots ([`Vcpu::fetch`] of MSRS, then a view).
    pub fn msrs(&mut self) -> Result<Msrs<'_>> {
        self.fetch(StateClasses::MSRS)?;
        Ok(Msrs::new(self.page()))
    }
    /// Interrupt state ([`Vcpu::fetch`] of INTR, then a view).
    pub fn intr(&mut self) -> Result<Intr<'_>> {
        self.fetch(StateClasses::INTR)?;
        Ok(Intr::new(self.page()))
    }
    /// The x87/SSE area ([`Vcpu::fetch`] of FPU, then a view).
    pub fn fpu(&mut self) -> Result<Fpu<'_>> {
        self.fetch(StateClasses::FPU)?;
        Ok(Fpu::new(self.page()))
    }

    /// Queues `event` for the next run (libnvmm's `nvmm_vcpu_inject`: the
    /// event is written into the comm page, no syscall). The kernel's rules
    /// are checked here: exception vectors 0, 2, 3 and >= 32 are refused.
    /// Whether the guest can take an interrupt is NOT checked, here or by
    /// the kernel: see [`Event`] for the interrupt-window rules.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// vcpu.inject(nvmm::Event::Exception { vector: 13, error_code: 0 })?; // #GP(0)
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn inject(&mut self, event: Event) -> Result<()> {
        let (kind, vector, error) = match event {
            Event::Exception { vector, error_code } => {
                if matches!(vector, 0 | 2 | 3) || vector >= 32 {
                    return Err(Error::rejected(
                        Op::VcpuInject,
                        Rejection::InvalidExceptionVector(vector),
                    ));
                }
                (sys::NVMM_VCPU_EVENT_EXCP, vector, error_code)
            }
            Event::Interrupt { vector } => (sys::NVMM_VCPU_EVENT_INTR, vector, 0),
            Event::Nmi => (sys::NVMM_VCPU_EVENT_INTR, 2, 0),
        };
        self.page().write_event(kind, vector, error);
        Ok(())
    }

    /// Whether an injected event waits for the next run.
    pub fn event_pending(&self) -> bool {
        self.page().event_pending()
    }

    /// Runs the guest until the next exit (`NVMM_IOC_VCPU_RUN`), as
    /// libnvmm's `nvmm_vcpu_run`: the exit structure is zeroed first, so
    /// [`Vcpu::exit_state`] never shows a previous exit's RFLAGS, CR8 or
    /// interrupt bits.
    ///
    /// When the guest runs, the pending state writes and the pending event
    /// are applied first; afterwards no class is cached except what the
    /// kernel provides with the exit (GPRS|SEGS|CRS|MSRS on I/O and memory
    /// exits, GPRS on MSR exits).
    ///
    /// # Early returns
    ///
    /// The kernel checks, before entering the guest and after every guest
    /// exit (NetBSD `nvmm_internal.h` `nvmm_return_needed`, called from
    /// `nvmm.c` `nvmm_do_vcpu_run` and `svm_vcpu_run`/`vmx_vcpu_run`):
    /// - a signal pending for this thread (or a reschedule, or a host
    ///   suspend): the run returns [`Exit::None`];
    /// - otherwise a requested stop ([`VcpuStopper::stop`]): the run
    ///   returns [`Exit::Stopped`].
    ///
    /// Checked *before* the guest runs, either one returns at once and
    /// nothing happens: no state is committed (`pending_commit()` keeps its
    /// classes), `cached()` is unchanged, the injected event stays pending
    /// ([`Vcpu::event_pending`] is still true), and only the exit reason is
    /// written. Checked *after* an exit, either one replaces that exit's
    /// reason: an I/O or memory access is then re-executed by the next run
    /// (RIP was not advanced), but a HLT is lost (RIP is already past it).
    /// In every case the kernel clears the stop flag when the run ends, so
    /// a stop that loses to a signal is gone: keep a VMM-side flag
    /// ([`crate::StopRequest`]) and check it after every run.
    ///
    /// Kernel versions differ in the check before the guest runs: the
    /// NetBSD source this crate follows (`nvmm.c` 1.50) passes the VCPU to
    /// `nvmm_return_needed` there, so a stop is seen before any commit;
    /// older `nvmm.c` revisions and DragonFly's copy check only signals and
    /// rescheduling there, so a stop set before the run is seen at the
    /// guest's first exit, after the state and event were committed. Code
    /// that checks a [`crate::StopRequest`] after every run is correct with
    /// both.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// loop {
    ///     match vcpu.run()? {
    ///         nvmm::Exit::Halted | nvmm::Exit::Shutdown => break,
    ///         other => println!("{other:?}"),
    ///     }
    /// }
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn run(&mut self) -> Result<Exit<'_>> {
        // libnvmm nvmm_vcpu_run: memset(&args.exit, 0, ...). The kernel's
        // early returns write only `exit->reason` (nvmm.c
        // nvmm_do_vcpu_run), so the rest would otherwise be stale.
        // SAFETY: all-zero is a valid value of this plain C structure.
        self.run_args.exit = unsafe { std::mem::zeroed() };
        // SAFETY: the argument of NVMM_IOC_VCPU_RUN, passed as *mut: the
        // kernel writes the exit into it.
        unsafe {
            self.machine.nvmm.ioctl(
                Op::VcpuRun,
                ioc(sys::NVMM_IOC_VCPU_RUN),
                &raw mut self.run_args,
            )
        }?;
        Ok(exit::decode(&self.run_args.exit))
    }

    /// The exit of the last run (no syscall).
    // Inline, with `exit::decode`: see there.
    #[inline]
    pub fn last_exit(&self) -> Exit<'_> {
        exit::decode(&self.run_args.exit)
    }

    /// RFLAGS, CR8 and the interrupt-shadow/window state at the last exit
    /// (no syscall, no getstate).
    pub fn exit_state(&self) -> ExitState {
        exit::exit_state(&self.run_args.exit)
    }

    /// Completes an [`Exit::Rdmsr`]: EDX:EAX = `value` (upper halves of RAX
    /// and RDX cleared), RIP = next instruction. GPRS is provided with MSR
    /// exits, so this makes no syscall.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// if let nvmm::Exit::Rdmsr(r) = vcpu.run()? {
    ///     let value = if r.msr == 0x1b { 0xfee0_0900 } else { 0 }; // APIC base
    ///     vcpu.complete_rdmsr(value)?;
    /// }
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn complete_rdmsr(&mut self, value: u64) -> Result<()> {
        let Exit::Rdmsr(r) = self.last_exit() else {
            return Err(Error::rejected(Op::CompleteExit, Rejection::WrongExit));
        };
        let mut g = self.gprs()?;
        g.set(Gpr::Rax, value & 0xFFFF_FFFF);
        g.set(Gpr::Rdx, value >> 32);
        g.set_rip(r.npc);
        Ok(())
    }

    /// Completes an [`Exit::Wrmsr`] (after the VMM applied the value):
    /// RIP = next instruction. No syscall.
    pub fn complete_wrmsr(&mut self) -> Result<()> {
        let Exit::Wrmsr(w) = self.last_exit() else {
            return Err(Error::rejected(Op::CompleteExit, Rejection::WrongExit));
        };
        self.gprs()?.set_rip(w.npc);
        Ok(())
    }

    /// Completes an [`Exit::Cpuid`]: EAX/EBX/ECX/EDX = `regs` (zero-extended),
    /// RIP = next instruction. The kernel provides no state with CPUID
    /// exits, so this costs one GETSTATE of GPRS. The guest's leaf is not
    /// available here (RAX-RDX hold the kernel's answer, see
    /// [`Exit::Cpuid`]); the VMM knows it from the one leaf it configured.
    ///
    /// ```no_run
    /// use nvmm::{CpuidConf, CpuidRegs, Exit};
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// // Only the hypervisor leaf exits, so an Exit::Cpuid is always that leaf.
    /// vcpu.configure_cpuid(CpuidConf::Exit { leaf: 0x4000_0000 })?;
    /// if let Exit::Cpuid { .. } = vcpu.run()? {
    ///     // "NVMMRS" signature; RAX-RDX held the kernel's answer, not the leaf.
    ///     let sig = CpuidRegs { eax: 0x4000_0000, ebx: 0x4d4d_564e, ecx: 0x5352, edx: 0 };
    ///     vcpu.complete_cpuid(sig)?;
    /// }
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn complete_cpuid(&mut self, regs: CpuidRegs) -> Result<()> {
        let Exit::Cpuid { npc } = self.last_exit() else {
            return Err(Error::rejected(Op::CompleteExit, Rejection::WrongExit));
        };
        let mut g = self.gprs()?;
        g.set(Gpr::Rax, u64::from(regs.eax));
        g.set(Gpr::Rbx, u64::from(regs.ebx));
        g.set(Gpr::Rcx, u64::from(regs.ecx));
        g.set(Gpr::Rdx, u64::from(regs.edx));
        g.set_rip(npc);
        Ok(())
    }

    /// Skips the instruction of the last RDMSR, WRMSR, CPUID, MONITOR, MWAIT
    /// or port I/O exit (RIP = its `npc`).
    pub fn skip_instruction(&mut self) -> Result<()> {
        let npc = match self.last_exit() {
            Exit::Rdmsr(r) => r.npc,
            Exit::Wrmsr(w) => w.npc,
            Exit::Cpuid { npc } | Exit::Monitor { npc } | Exit::Mwait { npc } => npc,
            Exit::Io(io) => io.npc,
            _ => return Err(Error::rejected(Op::CompleteExit, Rejection::WrongExit)),
        };
        self.gprs()?.set_rip(npc);
        Ok(())
    }

    /// Configures CPUID handling of one leaf (`NVMM_IOC_VCPU_CONFIGURE`,
    /// `NVMM_VCPU_CONF_CPUID`). Checked first: the capability bit, set/del
    /// overlap, and the `conf_cpuid_maxops` limit on configured leaves.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// use nvmm::{CpuidConf, CpuidRegs};
    /// // Leaf 1: report MCE, MCA and MTRR (EDX bits 7, 14, 12), as QEMU does.
    /// let edx = (1 << 7) | (1 << 14) | (1 << 12);
    /// let set = CpuidRegs { edx, ..Default::default() };
    /// vcpu.configure_cpuid(CpuidConf::Mask { leaf: 1, set, del: CpuidRegs::default() })?;
    /// vcpu.configure_cpuid(CpuidConf::Exit { leaf: 0x4000_0000 })?; // hypervisor leaf to userland
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn configure_cpuid(&mut self, conf: CpuidConf) -> Result<()> {
        let rej = |r| Err(Error::rejected(Op::VcpuConfigure, r));
        if !self.machine.cap().supports_cpuid_conf() {
            return rej(Rejection::NotSupported("CPUID configuration"));
        }
        // SAFETY: all-zero is a valid nvmm_vcpu_conf_cpuid (integers).
        let mut c: sys::nvmm_vcpu_conf_cpuid = unsafe { std::mem::zeroed() };
        let leaf = match conf {
            CpuidConf::Mask { leaf, set, del } => {
                if set.overlaps(&del) {
                    return rej(Rejection::CpuidSetDelOverlap);
                }
                c.set_mask(1);
                // Writing a union member of plain integers is safe.
                c.u.mask.set.eax = set.eax;
                c.u.mask.set.ebx = set.ebx;
                c.u.mask.set.ecx = set.ecx;
                c.u.mask.set.edx = set.edx;
                c.u.mask.del.eax = del.eax;
                c.u.mask.del.ebx = del.ebx;
                c.u.mask.del.ecx = del.ecx;
                c.u.mask.del.edx = del.edx;
                leaf
            }
            CpuidConf::Exit { leaf } => {
                c.set_exit(1);
                leaf
            }
            CpuidConf::Remove { leaf } => leaf,
        };
        c.leaf = leaf;
        let adding = !matches!(conf, CpuidConf::Remove { .. });
        let known = self.cpuid_leaves.contains(&leaf);
        if adding
            && !known
            && self.cpuid_leaves.len() >= self.machine.cap().conf_cpuid_maxops as usize
        {
            return rej(Rejection::TooManyCpuidLeaves);
        }
        self.configure_raw(sys::NVMM_VCPU_CONF_CPUID, (&raw mut c).cast())?;
        if adding && !known {
            self.cpuid_leaves.push(leaf);
        } else if !adding {
            self.cpuid_leaves.retain(|l| *l != leaf);
        }
        Ok(())
    }

    /// Configures TPR handling (`NVMM_VCPU_CONF_TPR`): with `exit_changed`,
    /// guest CR8 writes exit with [`Exit::TprChanged`]. Refused up front
    /// when the kernel lacks the capability (SVM).
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// if machine.capability().supports_tpr_conf() {
    ///     vcpu.configure_tpr(true)?;
    /// }
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn configure_tpr(&mut self, exit_changed: bool) -> Result<()> {
        if !self.machine.cap().supports_tpr_conf() {
            return Err(Error::rejected(
                Op::VcpuConfigure,
                Rejection::NotSupported("TPR configuration"),
            ));
        }
        let mut c = sys::nvmm_vcpu_conf_tpr::default();
        c.set_exit_changed(u32::from(exit_changed));
        self.configure_raw(sys::NVMM_VCPU_CONF_TPR, (&raw mut c).cast())
    }

    fn configure_raw(&mut self, op: u64, conf: *mut std::ffi::c_void) -> Result<()> {
        let mut args = sys::nvmm_ioc_vcpu_configure {
            machid: self.machine.id,
            cpuid: self.id,
            op,
            conf,
        };
        // SAFETY: the argument of NVMM_IOC_VCPU_CONFIGURE; `conf` points to
        // the live structure of `op` (built by the callers above).
        unsafe {
            self.machine.nvmm.ioctl(
                Op::VcpuConfigure,
                ioc(sys::NVMM_IOC_VCPU_CONFIGURE),
                &raw mut args,
            )
        }
    }

    /// A handle other threads and signal handlers use to stop this VCPU's
    /// run (see [`VcpuStopper`]).
    pub fn stopper(&self) -> VcpuStopper {
        VcpuStopper {
            comm: self.comm.clone(),
        }
    }

    /// The whole state, fetched (one GETSTATE at most) for printing like
    /// libnvmm's `nvmm_vcpu_dump`.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// eprintln!("{:?}", vcpu.dump()?);
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn dump(&mut self) -> Result<crate::dump::StateDump<'_>> {
        self.fetch(StateClasses::ALL)?;
        #[cfg(feature = "assist")]
        let code = crate::dump::code_at_rip(self);
        #[cfg(not(feature = "assist"))]
        let code = None;
        Ok(crate::dump::StateDump::new(self.page(), self.id, code))
    }

    /// The raw comm page, for what the safe API lacks.
    ///
    /// # Safety
    ///
    /// The page is shared with the kernel and with [`VcpuStopper`]s: never
    /// create a reference to the whole page or to `stop`; write state only
    /// for classes that are cached and then add them to `state_commit` and
    /// `state_cached`; the pointer is valid while this `Vcpu` lives.
    pub unsafe fn comm_page(&mut self) -> *mut sys::nvmm_comm_page {
        self.comm.as_ptr()
    }
}

fn destroy(machine: &MachineInner, id: u32) -> Option<Error> {
    let mut args = sys::nvmm_ioc_vcpu_destroy {
        machid: machine.id,
        cpuid: id,
    };
    // SAFETY: the argument of NVMM_IOC_VCPU_DESTROY; no pointers.
    let r = unsafe {
        machine.nvmm.ioctl(
            Op::VcpuDestroy,
            ioc(sys::NVMM_IOC_VCPU_DESTROY),
            &raw mut args,
        )
    };
    match r {
        Ok(()) => None,
        Err(e) => {
            report_teardown(&e);
            Some(e)
        }
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // Retire the comm-page mapping before VCPU_DESTROY, so that no
        // stopper store reaches the page once the id can be reused; the
        // mapping is unmapped when `self.comm` (and every stopper's clone
        // of it) is dropped, after this.
        self.comm.retire();
        let _ = destroy(&self.machine, self.id);
    }
}
