//! The bridge to nvmm-assist: [`nvmm_assist::CpuState`] implemented straight
//! over the comm page (zero copy) and [`nvmm_assist::GuestRam`] over the
//! machine's GPA→HVA area list.

use std::sync::Mutex;

use nvmm_assist::{
    AccessType, BusError, CompareWrite, CpuState, GuestRam, RamStatus, SegmentAttributes,
    SegmentRegister,
};

use crate::comm::CommPage;
use crate::error::{Error, Op, Result};
use crate::guest_ram;
use crate::memory::{Areas, Prot};
use crate::state::{Cr, Crs, Gpr, Gprs, Msr, Msrs, Seg, Segs, StateClasses, set_xmm_of, xmm_of};
use crate::vcpu::{PROVIDED_ON_IO_AND_MEMORY, Vcpu};

/// The assist's view of the VCPU registers: reads and writes go to the comm
/// page in place; a setter marks only its own class (GPRS for GPRs, RIP and
/// RFLAGS; FPU for XMM) in `state_commit`/`state_cached`.
///
/// Built only after GPRS|SEGS|CRS|MSRS are cached; XMM registers are
/// offered only when FPU is cached too (an SSE move through MMIO then
/// works; otherwise the assist reports it unsupported).
pub(crate) struct CommState<'a> {
    page: CommPage<'a>,
}

impl<'a> CommState<'a> {
    pub(crate) fn new(page: CommPage<'a>) -> Self {
        CommState { page }
    }
}

fn seg_of(s: nvmm_assist::Segment) -> Seg {
    match s {
        nvmm_assist::Segment::Es => Seg::Es,
        nvmm_assist::Segment::Cs => Seg::Cs,
        nvmm_assist::Segment::Ss => Seg::Ss,
        nvmm_assist::Segment::Ds => Seg::Ds,
        nvmm_assist::Segment::Fs => Seg::Fs,
        nvmm_assist::Segment::Gs => Seg::Gs,
    }
}

fn gpr_of(r: nvmm_assist::Gpr) -> Gpr {
    Gpr::ALL.get(r.index()).copied().unwrap_or(Gpr::Rax)
}

impl CpuState for CommState<'_> {
    fn gpr(&self, reg: nvmm_assist::Gpr) -> u64 {
        Gprs::new(self.page).get(gpr_of(reg))
    }
    fn set_gpr(&mut self, reg: nvmm_assist::Gpr, value: u64) {
        Gprs::new(self.page).set(gpr_of(reg), value);
    }
    fn rip(&self) -> u64 {
        Gprs::new(self.page).rip()
    }
    fn set_rip(&mut self, value: u64) {
        Gprs::new(self.page).set_rip(value);
    }
    fn rflags(&self) -> u64 {
        Gprs::new(self.page).rflags()
    }
    fn set_rflags(&mut self, value: u64) {
        Gprs::new(self.page).set_rflags(value);
    }
    fn segment(&self, seg: nvmm_assist::Segment) -> SegmentRegister {
        let s = Segs::new(self.page).get(seg_of(seg));
        SegmentRegister {
            selector: s.selector,
            base: s.base,
            limit: s.limit,
            attributes: SegmentAttributes(s.attrib.0),
        }
    }
    fn cr0(&self) -> u64 {
        Crs::new(self.page).get(Cr::Cr0)
    }
    fn cr3(&self) -> u64 {
        Crs::new(self.page).get(Cr::Cr3)
    }
    fn cr4(&self) -> u64 {
        Crs::new(self.page).get(Cr::Cr4)
    }
    fn efer(&self) -> u64 {
        Msrs::new(self.page).get(Msr::Efer)
    }
    fn xmm(&self, index: u8) -> Option<u128> {
        if self.page.cached().contains(StateClasses::FPU) && index < 16 {
            Some(xmm_of(self.page, index))
        } else {
            None
        }
    }
    fn set_xmm(&mut self, index: u8, value: u128) {
        if self.page.cached().contains(StateClasses::FPU) && index < 16 {
            set_xmm_of(self.page, index, value);
        }
    }
}

/// Guest RAM as the assist sees it: a snapshot of the machine's areas,
/// read and written through their host mappings with the one-byte atomic
/// accesses of [`guest_ram`]. A GPA outside every area, or not allowed by
/// the area's protection, is "not RAM" and goes to the caller's MMIO bus.
///
/// No lock is held while the assist runs: the caller's `MmioBus` and
/// `PortIo` callbacks may map and unmap guest memory (the snapshot keeps
/// the host mappings it names from being unmapped until it is dropped).
pub(crate) struct AreaRam<'a> {
    pub(crate) areas: &'a Areas,
    pub(crate) cas_lock: &'a Mutex<()>,
}

impl GuestRam for AreaRam<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> std::result::Result<RamStatus, BusError> {
        let Some(src) = self.areas.host_range(gpa, buf.len(), Prot::READ) else {
            return Ok(RamStatus::NotRam);
        };
        // SAFETY: `src..src+len` lies in a registered host mapping that the
        // snapshot (held by our creator) keeps mapped; guest RAM is only
        // accessed through `guest_ram` in this process.
        unsafe { guest_ram::read(src, buf) };
        Ok(RamStatus::Done)
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> std::result::Result<RamStatus, BusError> {
        let Some(dst) = self.areas.host_range(gpa, data.len(), Prot::WRITE) else {
            return Ok(RamStatus::NotRam);
        };
        // SAFETY: as in `read`.
        unsafe { guest_ram::write(dst, data) };
        Ok(RamStatus::Done)
    }

    /// See [`guest_ram::compare_and_write`] for what other CPUs observe.
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> std::result::Result<CompareWrite, BusError> {
        if expected.len() != new.len() || expected.len() > 16 {
            return Err(BusError(libc::EINVAL));
        }
        let Some(p) = self
            .areas
            .host_range(gpa, new.len(), Prot::READ | Prot::WRITE)
        else {
            return Ok(CompareWrite::NotRam);
        };
        // SAFETY: as in `read`.
        let written = unsafe { guest_ram::compare_and_write(p, expected, new, self.cas_lock) };
        Ok(if written {
            CompareWrite::Written
        } else {
            CompareWrite::Mismatch
        })
    }
}

/// The guest access whose translation [`Vcpu::gva_to_gpa`] performs.
pub use nvmm_assist::AccessType as GvaAccess;

impl Vcpu {
    /// Translates guest-virtual `gva` to guest-physical for an access of
    /// kind `access`, walking the guest page tables as the CPU would
    /// (nvmm-assist's walker: every paging mode, permission checks, A/D
    /// bits set). Fetches GPRS|SEGS|CRS|MSRS first (no syscall after an I/O
    /// or memory exit). A fault comes back as [`Error::Assist`] holding the
    /// `#PF` to inject.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// let rip = vcpu.gprs()?.rip();
    /// let cs_base = vcpu.segs()?.get(nvmm::Seg::Cs).base;
    /// let gpa = vcpu.gva_to_gpa(cs_base + rip, nvmm::GvaAccess::Execute)?;
    /// println!("the guest executes at guest-physical {gpa:#x}");
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn gva_to_gpa(&mut self, gva: u64, access: AccessType) -> Result<u64> {
        self.fetch(PROVIDED_ON_IO_AND_MEMORY)?;
        let page = self.page();
        let machine = self.machine();
        let areas = machine.snapshot();
        let state = CommState::new(page);
        let mut ram = AreaRam {
            areas: &areas,
            cas_lock: &machine.cas_lock,
        };
        nvmm_assist::translate(&state, &mut ram, gva, access).map_err(|source| Error::Assist {
            op: Op::GvaToGpa,
            source,
        })
    }
}

/// How an assist ended when it succeeded (nvmm-assist's `Outcome`).
pub use nvmm_assist::Outcome;

fn assist_segment(s: Seg) -> Option<nvmm_assist::Segment> {
    u8::try_from(s.index())
        .ok()
        .and_then(nvmm_assist::Segment::from_index)
}

impl Vcpu {
    /// Completes the last [`crate::Exit::Io`] exit (libnvmm's
    /// `nvmm_assist_io`): performs the port access on `ports` (and, for
    /// INS/OUTS, the memory side on guest RAM through the area list, or on
    /// `mmio` where the GPA is not RAM) and updates the registers in place
    /// in the comm page. The kernel provides every class the assist needs
    /// with the exit, so this makes no syscall; the changes are committed
    /// by the next run.
    ///
    /// [`Outcome::Resume`]: a bounded batch of a REP INS/OUTS was done; run
    /// again and the guest re-executes the rest. On error no register has
    /// changed (an [`Error::Assist`] holding a fault to inject, a bus
    /// error, ...).
    ///
    /// ```no_run
    /// use nvmm::nvmm_assist::{BusError, MmioBus, PortIo};
    /// struct Serial;
    /// impl PortIo for Serial {
    ///     fn read(&mut self, _port: u16, buf: &mut [u8]) -> Result<(), BusError> {
    ///         buf.fill(0xff);
    ///         Ok(())
    ///     }
    ///     fn write(&mut self, _port: u16, data: &[u8]) -> Result<(), BusError> {
    ///         print!("{}", String::from_utf8_lossy(data));
    ///         Ok(())
    ///     }
    /// }
    /// struct NoMmio;
    /// impl MmioBus for NoMmio {
    ///     fn read(&mut self, _gpa: u64, _buf: &mut [u8]) -> Result<(), BusError> {
    ///         Err(BusError(libc::EFAULT))
    ///     }
    ///     fn write(&mut self, _gpa: u64, _data: &[u8]) -> Result<(), BusError> {
    ///         Err(BusError(libc::EFAULT))
    ///     }
    /// }
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// if let nvmm::Exit::Io(_) = vcpu.run()? {
    ///     vcpu.assist_io(&mut NoMmio, &mut Serial)?;
    /// }
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn assist_io<M, P>(&mut self, mmio: &mut M, ports: &mut P) -> Result<Outcome>
    where
        M: nvmm_assist::MmioBus + ?Sized,
        P: nvmm_assist::PortIo + ?Sized,
    {
        self.fetch(PROVIDED_ON_IO_AND_MEMORY)?;
        let crate::Exit::Io(io) = self.last_exit() else {
            return Err(Error::rejected(
                Op::AssistIo,
                crate::error::Rejection::WrongExit,
            ));
        };
        let exit = nvmm_assist::IoExit {
            port: io.port,
            input: io.direction == crate::IoDirection::In,
            operand_size: io.operand_size,
            address_size: io.address_size,
            rep: io.rep,
            string: io.string,
            segment: io.segment.and_then(assist_segment),
            npc: io.npc,
        };
        let machine = self.machine();
        let areas = machine.snapshot();
        let mut state = CommState::new(self.page());
        let mut ram = AreaRam {
            areas: &areas,
            cas_lock: &machine.cas_lock,
        };
        nvmm_assist::assist_io(&mut state, &mut ram, mmio, ports, &exit).map_err(|source| {
            Error::Assist {
                op: Op::AssistIo,
                source,
            }
        })
    }

    /// Completes the last [`crate::Exit::Memory`] exit (libnvmm's
    /// `nvmm_assist_mem`): decodes the instruction (from the exit's bytes,
    /// or fetched at CS:RIP), performs its accesses on `mmio` (and on guest
    /// RAM for the other operand of MOVS/CMPS and the like), and updates
    /// the registers in place. No syscall after a memory exit. SSE moves
    /// to MMIO need the FPU class: call [`Vcpu::fetch`] with
    /// [`StateClasses::FPU`] first (one GETSTATE), otherwise they are
    /// reported unsupported.
    ///
    /// ```no_run
    /// use nvmm::nvmm_assist::{BusError, MmioBus};
    /// /// A device with one 32-bit register at 0xfed00000.
    /// struct Timer(u32);
    /// impl MmioBus for Timer {
    ///     fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
    ///         let off = (gpa & 3) as usize;
    ///         for (i, b) in buf.iter_mut().enumerate() {
    ///             *b = self.0.to_le_bytes().get(off + i).copied().unwrap_or(0);
    ///         }
    ///         Ok(())
    ///     }
    ///     fn write(&mut self, _gpa: u64, data: &[u8]) -> Result<(), BusError> {
    ///         let mut v = [0u8; 4];
    ///         v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
    ///         self.0 = u32::from_le_bytes(v);
    ///         Ok(())
    ///     }
    /// }
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// let mut timer = Timer(0);
    /// if let nvmm::Exit::Memory(_) = vcpu.run()? {
    ///     vcpu.assist_mem(&mut timer)?;
    /// }
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn assist_mem<M>(&mut self, mmio: &mut M) -> Result<Outcome>
    where
        M: nvmm_assist::MmioBus + ?Sized,
    {
        self.fetch(PROVIDED_ON_IO_AND_MEMORY)?;
        let crate::Exit::Memory(m) = self.last_exit() else {
            return Err(Error::rejected(
                Op::AssistMem,
                crate::error::Rejection::WrongExit,
            ));
        };
        let exit = nvmm_assist::MemExit {
            gpa: m.gpa,
            access: match m.access {
                crate::MemAccess::Read => AccessType::Read,
                crate::MemAccess::Write => AccessType::Write,
                crate::MemAccess::Exec => AccessType::Execute,
            },
            instruction: m.instruction,
        };
        let machine = self.machine();
        let areas = machine.snapshot();
        let mut state = CommState::new(self.page());
        let mut ram = AreaRam {
            areas: &areas,
            cas_lock: &machine.cas_lock,
        };
        nvmm_assist::assist_mem(&mut state, &mut ram, mmio, &exit).map_err(|source| Error::Assist {
            op: Op::AssistMem,
            source,
        })
    }
}
