//! **A MODEL of NetBSD's NVMM kernel, not NetBSD** (feature `model`): an
//! in-process [`Kernel`] that a [`Nvmm`](crate::Nvmm) opens in place of
//! `/dev/nvmm`, so that a VMM's run loop can be tested on Linux (or any
//! Unix) with scripted exits, as this crate's own test suite is.
//!
//! What passes against the model proves nothing about the real kernel: a
//! VMM still has to be run on NetBSD with NVMM. No guest code runs here:
//! each `NVMM_IOC_VCPU_RUN` returns the next [`ScriptedExit`] queued with
//! [`KernelModel::push_exit`], whose optional closure plays the guest by
//! editing the VCPU's "hardware" state. Everything around the exit follows
//! the kernel's source (NetBSD `sys/dev/nvmm/nvmm.c`, `nvmm_internal.h`,
//! `x86/nvmm_x86.c`, `x86/nvmm_x86_svm.c`, `x86/nvmm_x86_vmx.c`), each rule
//! citing the file and function it comes from in the model's source, so a
//! VMM's use of the protocol (state classes, commits, events, memory
//! mappings, stops, errnos) is exercised as the kernel would answer it:
//! - ownership by descriptor (EPERM for another owner); every `O_WRONLY`
//!   descriptor is the one shared root owner (nvmm.c `nvmm_root_owner`);
//!   closing a descriptor destroys its owner's machines;
//! - the comm page: reset state after VCPU_CREATE with every class cached;
//!   GETSTATE fills `state_wanted` and caches it; RUN leaves early on a
//!   pending signal or stop, else commits `state_commit` (sanitised as the
//!   backend does), makes everything stale, validates and consumes the
//!   event, provides GPRS|SEGS|CRS|MSRS on I/O and memory exits and GPRS
//!   on MSR exits, checks for a signal or stop again (which replaces the
//!   exit; the guest re-executes an instruction userland was to complete,
//!   so that exit comes again), and clears `stop`;
//! - SVM and VMX differences ([`Backend`]);
//! - the errno of each failure the kernel reports;
//! - guest execution is scripted: each RUN pops one [`ScriptedExit`],
//!   whose optional closure plays the guest (edits the "hardware" state);
//! - a counter of every system call.
//!
//! Memory: comm pages and anonymous mappings are heap allocations the model
//! owns; `munmap`, `NVMM_IOC_HVA_UNMAP` (which unmaps from the process, as
//! the kernel does) and machine teardown free them, so leaks and
//! use-after-unmap show up in tests (and under miri).
//!
//! Comm pages: as in the kernel, the page of VCPU `n` belongs to the
//! machine, not to the VCPU (`sys/dev/nvmm/nvmm.c`: one per-machine UAO,
//! page `n` cleared by `nvmm_vcpu_create`, mapped by `nvmm_mmap`), so a
//! VCPU created again with the same id gets the same page, and every
//! mapping of it is the same memory. The model hands out one address per
//! page (the crate maps each page once); `retire_comm_page` stands for
//! `mmap(MAP_FIXED|MAP_ANON)` over a mapping by detaching the page from
//! the machine: the retired address stays valid memory that no VCPU uses.
//!
//! Descriptors are real ones (one end of a socket pair), so that they are
//! unique and I/O-safe, and their numbers name the owner as in the kernel.
//!
//! # Example: testing a run loop against scripted exits
//!
//! A VMM's loop (here: log port-0x80 bytes until HLT), run against two
//! scripted exits: an `out 0x80, al` whose guest put 42 in AL, then HLT.
//!
//! ```
//! use nvmm::model::{KernelModel, ScriptedExit};
//! use nvmm::nvmm_sys as sys;
//! use nvmm::sys::OpenMode;
//! use nvmm::{Exit, Gpr, Nvmm, Vcpu};
//!
//! /// The VMM code under test.
//! fn run_until_halt(vcpu: &mut Vcpu) -> nvmm::Result<Vec<u8>> {
//!     let mut post_codes = Vec::new();
//!     loop {
//!         match vcpu.run()? {
//!             Exit::Io(io) if io.port == 0x80 => {
//!                 post_codes.push(vcpu.gprs()?.get(Gpr::Rax) as u8);
//!                 vcpu.skip_instruction()?;
//!             }
//!             Exit::Halted => return Ok(post_codes),
//!             _ => {}
//!         }
//!     }
//! }
//!
//! let model = KernelModel::new();
//! let nvmm = Nvmm::open_with(model.clone(), OpenMode::User)?;
//! let machine = nvmm.create_machine()?;
//! let mut vcpu = machine.create_vcpu(0)?;
//! vcpu.gprs()?.set_rip(0x1000);
//!
//! // `out 0x80, al` at 0x1000 (2 bytes: the next instruction is 0x1002).
//! let out = ScriptedExit::io(0x80, false, 1, 0x1002)
//!     .with_guest(|hw| hw.gprs[sys::NVMM_X64_GPR_RAX] = 42);
//! model.push_exit(machine.id(), 0, out);
//! model.push_exit(machine.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
//!
//! assert_eq!(run_until_halt(&mut vcpu)?, [42]);
//! assert_eq!(vcpu.gprs()?.rip(), 0x1002); // the loop skipped the OUT
//! assert_eq!(model.runs(), 2);
//! # Ok::<(), nvmm::Error>(())
//! ```

mod memory;
pub mod sanitize;
mod script;
mod vcpu;

use std::alloc::Layout;
use std::cell::UnsafeCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, c_void};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::nvmm_sys as sys;
use crate::sys::{Kernel, OpenMode, PAGE_SIZE};

pub use sanitize::reset_state;
use script::zeroed_exit;
pub use script::{GuestFn, ScriptedExit};
use vcpu::{RunEnd, VcpuModel};

const MAX_VCPUS: u32 = 256;
/// nvmm.h NVMM_MAX_HMAPPINGS.
const MAX_HMAPPINGS: usize = 32;
/// The machine's `gpa_end` (nvmm.c `nvmm_machine_create`: NVMM_MAX_RAM).
pub const GPA_END: u64 = 128 << 30;

const SEGS: u64 = sys::NVMM_X64_STATE_SEGS;
const GPRS: u64 = sys::NVMM_X64_STATE_GPRS;
const CRS: u64 = sys::NVMM_X64_STATE_CRS;
const DRS: u64 = sys::NVMM_X64_STATE_DRS;
const MSRS: u64 = sys::NVMM_X64_STATE_MSRS;
const INTR: u64 = sys::NVMM_X64_STATE_INTR;
const FPU: u64 = sys::NVMM_X64_STATE_FPU;
const ALL: u64 = sys::NVMM_X64_STATE_ALL;

/// Which backend the model imitates where SVM and VMX differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// nvmm_x86_svm.c (AMD).
    Svm,
    /// nvmm_x86_vmx.c (Intel).
    Vmx,
}

impl Backend {
    /// Both backends, for tests that must hold on AMD and Intel alike.
    pub const BOTH: [Backend; 2] = [Backend::Svm, Backend::Vmx];
}

/// What the model's capability reports and how it behaves.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// `/dev/nvmm` open fails with this errno when set (no NVMM).
    pub absent: Option<i32>,
    /// The capability's `version` (NetBSD's kernel reports 2, the
    /// `NVMM_KERN_VERSION` of nvmm.h).
    pub version: u32,
    /// The capability's `state_size`: `sizeof(struct nvmm_x64_state)`.
    pub state_size: u32,
    /// The capability's `max_machines` and the size of the machine table
    /// (nvmm.c `machines[NVMM_MAX_MACHINES]`: 128).
    pub max_machines: u32,
    /// The capability's `max_vcpus` (NVMM_MAX_VCPUS: 256); VCPU_CREATE
    /// refuses ids at or above it.
    pub max_vcpus: u32,
    /// The capability's `arch.vcpu_conf_support`
    /// (`NVMM_CAP_ARCH_VCPU_CONF_*`); VCPU_CONFIGURE of TPR fails with
    /// EINVAL without `NVMM_CAP_ARCH_VCPU_CONF_TPR`.
    pub vcpu_conf_support: u64,
    /// The capability's `arch.conf_cpuid_maxops`: how many CPUID leaves a
    /// VCPU may configure (ENOBUFS past it; `SVM_NCPUIDS`/`VMX_NCPUIDS`).
    pub conf_cpuid_maxops: u32,
    /// The pid of the (non-root) owner.
    pub pid: i32,
    /// The backend whose differences the model imitates.
    pub backend: Backend,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            absent: None,
            version: 2,
            state_size: size_of::<sys::nvmm_x64_state>() as u32,
            max_machines: 128,
            max_vcpus: 256,
            vcpu_conf_support: sys::NVMM_CAP_ARCH_VCPU_CONF_CPUID
                | sys::NVMM_CAP_ARCH_VCPU_CONF_TPR,
            conf_cpuid_maxops: 32,
            pid: 4242,
            backend: Backend::Svm,
        }
    }
}

/// Where the next failure is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// The next ioctl with this request number.
    Ioctl(u64),
    /// The next mmap of a comm page.
    MapCommPage,
    /// The next anonymous mmap (guest memory from `Machine::hva_map`).
    MapAnonymous,
}

/// A page of shared memory (a comm page).
#[repr(C, align(4096))]
pub(crate) struct PageBox(UnsafeCell<[u8; PAGE_SIZE]>);
// SAFETY: accessed through raw pointers only; concurrent accesses are the
// atomic `stop` word (the same discipline as the real shared page).
unsafe impl Sync for PageBox {}
// SAFETY: see Sync.
unsafe impl Send for PageBox {}

impl PageBox {
    fn new() -> Arc<PageBox> {
        Arc::new(PageBox(UnsafeCell::new([0; PAGE_SIZE])))
    }
    fn comm(&self) -> *mut sys::nvmm_comm_page {
        self.0.get().cast()
    }
}

/// Who owns a machine (nvmm.c `struct nvmm_owner`): one owner per
/// descriptor, except that every `O_WRONLY` descriptor is the single
/// `nvmm_root_owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Fd(RawFd),
    Root,
}

/// The pointer of an anonymous mapping the model allocated.
struct AnonPtr(NonNull<u8>);
// SAFETY: only the model's bookkeeping, under its mutex; the memory itself
// is accessed by the crate.
unsafe impl Send for AnonPtr {}

pub(crate) struct MachineModel {
    owner: Owner,
    vcpus: BTreeMap<u32, VcpuModel>,
    pages: HashMap<u32, Arc<PageBox>>,
    hmaps: Vec<(usize, usize)>,
    gmaps: Vec<(u64, u64, usize, i32)>,
    created: i64,
}

#[derive(Default)]
pub(crate) struct ModelState {
    /// Open descriptors: whether each is a root (`O_WRONLY`) descriptor.
    fds: HashMap<RawFd, bool>,
    machines: Vec<Option<MachineModel>>,
    /// Anonymous mappings by address: the allocation's pointer (with its
    /// provenance, to free it) and length.
    anon: HashMap<usize, (AnonPtr, usize)>,
    mapped: HashMap<usize, (Arc<PageBox>, usize)>,
    /// Pages detached from their machine by `retire_comm_page` (still
    /// mapped at their address until munmap).
    retired: Vec<Arc<PageBox>>,
    fail: Option<(FailPoint, i32)>,
}

/// Counters of the system calls made to the model, by kind.
#[derive(Debug, Default)]
pub struct Counters {
    /// Every call (open, close, ioctl, mmap, munmap).
    pub total: AtomicU64,
    /// Every ioctl.
    pub ioctl: AtomicU64,
    /// `NVMM_IOC_VCPU_RUN` ioctls.
    pub run: AtomicU64,
    /// `NVMM_IOC_VCPU_GETSTATE` ioctls.
    pub getstate: AtomicU64,
    /// Comm-page and anonymous mmaps (and comm-page retirements).
    pub mmap: AtomicU64,
    /// munmaps.
    pub munmap: AtomicU64,
}

/// The kernel model (**a model of NetBSD's NVMM kernel, not NetBSD**; see
/// the [module docs](self)). Share it as `Arc<KernelModel>` and pass a
/// clone to [`Nvmm::open_with`](crate::Nvmm::open_with).
///
/// The methods that name a VCPU or machine (`push_exit`, `hw_state`, ...)
/// are test helpers: they panic when it does not exist, which fails the
/// test that misused them.
pub struct KernelModel {
    config: ModelConfig,
    state: Mutex<ModelState>,
    /// The system calls made so far, by kind.
    pub counters: Counters,
}

impl KernelModel {
    /// The default model: NVMM version 2, the SVM (AMD) backend.
    pub fn new() -> Arc<Self> {
        Self::with_config(ModelConfig::default())
    }

    /// The default model imitating `backend`.
    pub fn with_backend(backend: Backend) -> Arc<Self> {
        Self::with_config(ModelConfig {
            backend,
            ..ModelConfig::default()
        })
    }

    /// A model that reports and behaves as `config` says.
    pub fn with_config(config: ModelConfig) -> Arc<Self> {
        let machines = (0..config.max_machines).map(|_| None).collect();
        Arc::new(KernelModel {
            config,
            state: Mutex::new(ModelState {
                machines,
                ..Default::default()
            }),
            counters: Counters::default(),
        })
    }

    /// The backend the model imitates.
    pub fn backend(&self) -> Backend {
        self.config.backend
    }

    fn st(&self) -> MutexGuard<'_, ModelState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, c: &AtomicU64) {
        self.counters.total.fetch_add(1, Ordering::Relaxed);
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Every syscall so far.
    pub fn syscalls(&self) -> u64 {
        self.counters.total.load(Ordering::Relaxed)
    }
    /// VCPU_RUN ioctls so far.
    pub fn runs(&self) -> u64 {
        self.counters.run.load(Ordering::Relaxed)
    }
    /// VCPU_GETSTATE ioctls so far.
    pub fn getstates(&self) -> u64 {
        self.counters.getstate.load(Ordering::Relaxed)
    }

    /// Makes the next call at `point` fail with `errno`.
    pub fn fail_next(&self, point: FailPoint, errno: i32) {
        self.st().fail = Some((point, errno));
    }

    fn take_fail(&self, st: &mut ModelState, point: FailPoint) -> Result<(), i32> {
        match st.fail {
            Some((p, e)) if p == point => {
                st.fail = None;
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// Queues an exit for the next run of `(machid, cpuid)`.
    pub fn push_exit(&self, machid: u32, cpuid: u32, exit: ScriptedExit) {
        let mut st = self.st();
        if let Some(Some(m)) = st.machines.get_mut(machid as usize)
            && let Some(v) = m.vcpus.get_mut(&cpuid)
        {
            v.script.push_back(exit);
        } else {
            panic!("model: no VCPU {machid}/{cpuid} to script");
        }
    }

    fn with_vcpu<R>(&self, machid: u32, cpuid: u32, f: impl FnOnce(&mut VcpuModel) -> R) -> R {
        let mut st = self.st();
        let v = st
            .machines
            .get_mut(machid as usize)
            .and_then(|m| m.as_mut())
            .and_then(|m| m.vcpus.get_mut(&cpuid))
            .expect("model: no such VCPU");
        f(v)
    }

    /// A copy of the "hardware" state (what the kernel loaded into the
    /// VMCB/VMCS, in committed form).
    pub fn hw_state(&self, machid: u32, cpuid: u32) -> sys::nvmm_x64_state {
        self.with_vcpu(machid, cpuid, |v| *v.hw)
    }

    /// The VMCB's CPL field (SVM).
    pub fn hw_cpl(&self, machid: u32, cpuid: u32) -> u8 {
        self.with_vcpu(machid, cpuid, |v| v.cpl)
    }

    /// Edits the hardware state (a guest running between exits).
    pub fn edit_hw(&self, machid: u32, cpuid: u32, f: impl FnOnce(&mut sys::nvmm_x64_state)) {
        self.with_vcpu(machid, cpuid, |v| f(&mut v.hw))
    }

    /// Makes a signal pending for the VCPU's thread (seen by its next run).
    pub fn pend_signal(&self, machid: u32, cpuid: u32) {
        self.with_vcpu(machid, cpuid, |v| v.signal_pending = true)
    }

    /// Events the VCPU received: (type, vector, error).
    pub fn injected(&self, machid: u32, cpuid: u32) -> Vec<(u32, u8, u64)> {
        self.with_vcpu(machid, cpuid, |v| v.injected.clone())
    }

    /// Configured CPUID leaves: leaf → (mask, exit).
    pub fn cpuid_leaves(&self, machid: u32, cpuid: u32) -> Vec<(u32, bool, bool)> {
        self.with_vcpu(machid, cpuid, |v| {
            v.cpuid
                .iter()
                .map(|(l, c)| (*l, c.mask() != 0, c.exit() != 0))
                .collect()
        })
    }

    /// Whether the VCPU asked for TPR-change exits (VCPU_CONFIGURE of
    /// `NVMM_VCPU_CONF_TPR`).
    pub fn tpr_exit(&self, machid: u32, cpuid: u32) -> bool {
        self.with_vcpu(machid, cpuid, |v| v.tpr_exit)
    }

    /// Whether VCPU `cpuid` of machine `machid` exists (created and not
    /// destroyed).
    pub fn vcpu_exists(&self, machid: u32, cpuid: u32) -> bool {
        let st = self.st();
        st.machines
            .get(machid as usize)
            .and_then(|m| m.as_ref())
            .is_some_and(|m| m.vcpus.contains_key(&cpuid))
    }

    /// Whether machine `machid` exists (created and not destroyed).
    pub fn machine_exists(&self, machid: u32) -> bool {
        self.st()
            .machines
            .get(machid as usize)
            .is_some_and(|m| m.is_some())
    }

    /// (gpa, size, hva, prot) of a machine's guest mappings.
    pub fn gpa_maps(&self, machid: u32) -> Vec<(u64, u64, usize, i32)> {
        let st = self.st();
        st.machines
            .get(machid as usize)
            .and_then(|m| m.as_ref())
            .map(|m| m.gmaps.clone())
            .unwrap_or_default()
    }

    /// (hva, size) of a machine's host mappings.
    pub fn hva_maps(&self, machid: u32) -> Vec<(usize, usize)> {
        let st = self.st();
        st.machines
            .get(machid as usize)
            .and_then(|m| m.as_ref())
            .map(|m| m.hmaps.clone())
            .unwrap_or_default()
    }

    /// Anonymous mappings plus comm-page mappings still alive in the
    /// "process" (0 once every machine is gone: nothing leaked).
    pub fn live_mappings(&self) -> usize {
        let st = self.st();
        st.anon.len() + st.mapped.len()
    }

    /// Descriptors of `/dev/nvmm` still open.
    pub fn open_fds(&self) -> usize {
        self.st().fds.len()
    }

    /// Reads the `stop` word of a mapped comm page (as the kernel would).
    pub fn comm_stop(&self, machid: u32, cpuid: u32) -> i32 {
        let st = self.st();
        let page = st
            .machines
            .get(machid as usize)
            .and_then(|m| m.as_ref())
            .and_then(|m| m.pages.get(&cpuid))
            .expect("model: no page")
            .clone();
        drop(st);
        stop_word(page.comm()).load(Ordering::SeqCst)
    }

    /// nvmm.c `nvmm_machine_get`: EINVAL past the table, ENOENT when
    /// absent, EPERM unless the caller owns it or is the root owner.
    fn lookup<'a>(
        &self,
        st: &'a mut ModelState,
        fd: RawFd,
        machid: u32,
    ) -> Result<&'a mut MachineModel, i32> {
        let root = *st.fds.get(&fd).ok_or(libc::EBADF)?;
        let m = st
            .machines
            .get_mut(machid as usize)
            .ok_or(libc::EINVAL)?
            .as_mut()
            .ok_or(libc::ENOENT)?;
        if !root && m.owner != Owner::Fd(fd) {
            return Err(libc::EPERM);
        }
        Ok(m)
    }
}

/// The end of the "process": what the crate deliberately leaked (memory a
/// kernel that failed MACHINE_DESTROY might still map into a guest) is
/// unmapped by the OS at exit; the model frees it here so that miri's leak
/// check sees only real leaks.
impl Drop for KernelModel {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, (p, len)) in st.anon.drain() {
            // SAFETY: a block the model allocated in `map_anonymous` with this length and
            // alignment, forgotten by the bookkeeping here, so freed once.
            unsafe {
                std::alloc::dealloc(
                    p.0.as_ptr(),
                    Layout::from_size_align_unchecked(len, PAGE_SIZE),
                )
            };
        }
    }
}

fn stop_word<'a>(comm: *mut sys::nvmm_comm_page) -> &'a AtomicI32 {
    // SAFETY: `stop` is an aligned int of a live page, only ever accessed
    // atomically (by the crate and by the model).
    unsafe { AtomicI32::from_ptr((&raw mut (*comm).stop).cast()) }
}

fn owned_cstr(p: &CStr) -> String {
    p.to_string_lossy().into_owned()
}

// SAFETY: the model honours the contracts of each call: ioctls touch only
// their argument structure (and `conf`/`data` as NVMM defines), mappings are
// page-aligned heap blocks kept alive until unmapped.
unsafe impl Kernel for KernelModel {
    fn open(&self, path: &CStr, mode: OpenMode) -> Result<OwnedFd, i32> {
        self.counters.total.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.config.absent {
            return Err(e);
        }
        if owned_cstr(path) != "/dev/nvmm" {
            return Err(libc::ENOENT);
        }
        let (ours, _peer) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let fd = OwnedFd::from(ours);
        self.st().fds.insert(fd.as_raw_fd(), mode == OpenMode::Root);
        Ok(fd)
    }

    fn close(&self, owned: OwnedFd) {
        self.counters.total.fetch_add(1, Ordering::Relaxed);
        let fd = owned.as_raw_fd();
        let mut st = self.st();
        if let Some(root) = st.fds.remove(&fd) {
            // nvmm_close → nvmm_kill_machines(owner): every machine of this
            // owner; for any root descriptor that is the shared root owner.
            let owner = if root { Owner::Root } else { Owner::Fd(fd) };
            for slot in st.machines.iter_mut() {
                if slot.as_ref().is_some_and(|m| m.owner == owner) {
                    *slot = None;
                }
            }
        }
    }

    unsafe fn ioctl(&self, fd: BorrowedFd<'_>, request: u64, arg: *mut c_void) -> Result<(), i32> {
        let fd = fd.as_raw_fd();
        self.count(&self.counters.ioctl);
        let mut st = self.st();
        self.take_fail(&mut st, FailPoint::Ioctl(request))?;
        let backend = self.config.backend;
        // SAFETY (all casts below): the crate passes the argument structure
        // the request encodes; the size in the request is checked first.
        let size = sys::ioctl::iocparm_len(request as _);
        let expect = |n: usize| if size == n { Ok(()) } else { Err(libc::EINVAL) };
        match request {
            sys::NVMM_IOC_CAPABILITY => {
                expect(size_of::<sys::nvmm_ioc_capability>())?;
                st.fds.get(&fd).ok_or(libc::EBADF)?;
                let cap = sys::nvmm_capability {
                    version: self.config.version,
                    state_size: self.config.state_size,
                    max_machines: self.config.max_machines,
                    max_vcpus: self.config.max_vcpus,
                    max_ram: GPA_END,
                    arch: sys::nvmm_cap_md {
                        vcpu_conf_support: self.config.vcpu_conf_support,
                        xcr0_mask: sanitize::XCR0_MASK,
                        mxcsr_mask: sanitize::HOST_MXCSR_MASK,
                        conf_cpuid_maxops: self.config.conf_cpuid_maxops,
                        ..Default::default()
                    },
                };
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                unsafe { (*arg.cast::<sys::nvmm_ioc_capability>()).cap = cap };
                Ok(())
            }
            sys::NVMM_IOC_MACHINE_CREATE => {
                expect(size_of::<sys::nvmm_ioc_machine_create>())?;
                let root = *st.fds.get(&fd).ok_or(libc::EBADF)?;
                let slot = st
                    .machines
                    .iter()
                    .position(|m| m.is_none())
                    .ok_or(libc::ENOBUFS)?;
                st.machines[slot] = Some(MachineModel {
                    owner: if root { Owner::Root } else { Owner::Fd(fd) },
                    vcpus: BTreeMap::new(),
                    pages: HashMap::new(),
                    hmaps: Vec::new(),
                    gmaps: Vec::new(),
                    created: 1_700_000_000 + slot as i64,
                });
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                unsafe { (*arg.cast::<sys::nvmm_ioc_machine_create>()).machid = slot as u32 };
                Ok(())
            }
            sys::NVMM_IOC_MACHINE_DESTROY => {
                expect(size_of::<sys::nvmm_ioc_machine_destroy>())?;
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_machine_destroy>() };
                self.lookup(&mut st, fd, a.machid)?;
                st.machines[a.machid as usize] = None;
                Ok(())
            }
            sys::NVMM_IOC_MACHINE_CONFIGURE => {
                expect(size_of::<sys::nvmm_ioc_machine_configure>())?;
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_machine_configure>() };
                self.lookup(&mut st, fd, a.machid)?;
                // x86 has no machine configuration operation.
                Err(libc::EINVAL)
            }
            sys::NVMM_IOC_VCPU_CREATE => {
                expect(size_of::<sys::nvmm_ioc_vcpu_create>())?;
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_vcpu_create>() };
                let max = self.config.max_vcpus.min(MAX_VCPUS);
                let m = self.lookup(&mut st, fd, a.machid)?;
                // nvmm.c nvmm_vcpu_alloc: EINVAL past the table, EBUSY when
                // present.
                if a.cpuid >= max {
                    return Err(libc::EINVAL);
                }
                if m.vcpus.contains_key(&a.cpuid) {
                    return Err(libc::EBUSY);
                }
                let page = m.pages.entry(a.cpuid).or_insert_with(PageBox::new).clone();
                // SAFETY: `page` is this VCPU's comm page, kept alive by the `Arc` held here.
                let v = unsafe { vcpu::create(backend, &page) };
                m.vcpus.insert(a.cpuid, v);
                Ok(())
            }
            sys::NVMM_IOC_VCPU_DESTROY => {
                expect(size_of::<sys::nvmm_ioc_vcpu_destroy>())?;
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_vcpu_destroy>() };
                let m = self.lookup(&mut st, fd, a.machid)?;
                if a.cpuid >= MAX_VCPUS {
                    return Err(libc::EINVAL);
                }
                m.vcpus.remove(&a.cpuid).ok_or(libc::ENOENT)?;
                Ok(())
            }
            sys::NVMM_IOC_VCPU_CONFIGURE => {
                expect(size_of::<sys::nvmm_ioc_vcpu_configure>())?;
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_vcpu_configure>() };
                let maxops = self.config.conf_cpuid_maxops as usize;
                let tpr_ok = self.config.vcpu_conf_support & sys::NVMM_CAP_ARCH_VCPU_CONF_TPR != 0;
                let m = self.lookup(&mut st, fd, a.machid)?;
                let v = m.vcpus.get_mut(&a.cpuid).ok_or(libc::ENOENT)?;
                // SAFETY: `a` is the VCPU_CONFIGURE argument, whose `conf` points to the structure
                // of `a.op` (`Kernel::ioctl` contract).
                unsafe { vcpu::configure(v, &a, maxops, tpr_ok) }
            }
            sys::NVMM_IOC_VCPU_GETSTATE => {
                expect(size_of::<sys::nvmm_ioc_vcpu_getstate>())?;
                self.counters.getstate.fetch_add(1, Ordering::Relaxed);
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_vcpu_getstate>() };
                let m = self.lookup(&mut st, fd, a.machid)?;
                let page = m.pages.get(&a.cpuid).ok_or(libc::ENOENT)?.clone();
                let v = m.vcpus.get_mut(&a.cpuid).ok_or(libc::ENOENT)?;
                // SAFETY: `page` is this VCPU's comm page, kept alive by the `Arc` held here.
                unsafe { vcpu::getstate(backend, v, page.comm()) };
                Ok(())
            }
            sys::NVMM_IOC_VCPU_RUN => {
                expect(size_of::<sys::nvmm_ioc_vcpu_run>())?;
                self.counters.run.fetch_add(1, Ordering::Relaxed);
                let args = arg.cast::<sys::nvmm_ioc_vcpu_run>();
                // SAFETY: `args` is the VCPU_RUN argument structure (`Kernel::ioctl` contract, size
                // checked above).
                let (machid, cpuid) = unsafe { ((*args).machid, (*args).cpuid) };
                let m = self.lookup(&mut st, fd, machid)?;
                let page = m.pages.get(&cpuid).ok_or(libc::ENOENT)?.clone();
                let v = m.vcpus.get_mut(&cpuid).ok_or(libc::ENOENT)?;
                let comm = page.comm();
                // SAFETY: `page` is this VCPU's comm page, kept alive by the `Arc` held here.
                let end = unsafe { vcpu::run(backend, v, comm) };
                // `stop` is cleared once the run is over, whatever its
                // outcome: the project's reference places this in nvmm.c
                // 1.50 `nvmm_vcpu_run`; QEMU's nvmm_vcpu_loop relies on
                // "The kernel cleared the immediate exit flag". (Not found
                // in the older nvmm.c copies that could be searched.)
                stop_word(comm).store(0, Ordering::SeqCst);
                match end? {
                    // Only the reason is written; the rest of the exit is
                    // copied back as userland passed it.
                    // SAFETY: `args` is the VCPU_RUN argument structure (`Kernel::ioctl` contract,
                    // size checked above).
                    RunEnd::Early(reason) => unsafe { (*args).exit.reason = reason },
                    // SAFETY: `args` is the VCPU_RUN argument structure (`Kernel::ioctl` contract,
                    // size checked above).
                    RunEnd::Full(exit) => unsafe { (&raw mut (*args).exit).write(exit) },
                }
                Ok(())
            }
            sys::NVMM_IOC_HVA_MAP => {
                expect(size_of::<sys::nvmm_ioc_hva_map>())?;
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_hva_map>() };
                self.lookup(&mut st, fd, a.machid)?;
                memory::hva_map(&mut st, a.machid, &a)
            }
            sys::NVMM_IOC_HVA_UNMAP => {
                expect(size_of::<sys::nvmm_ioc_hva_unmap>())?;
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_hva_unmap>() };
                self.lookup(&mut st, fd, a.machid)?;
                memory::hva_unmap(&mut st, a.machid, &a)
            }
            sys::NVMM_IOC_GPA_MAP => {
                expect(size_of::<sys::nvmm_ioc_gpa_map>())?;
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_gpa_map>() };
                let m = self.lookup(&mut st, fd, a.machid)?;
                memory::gpa_map(m, &a)
            }
            sys::NVMM_IOC_GPA_UNMAP => {
                expect(size_of::<sys::nvmm_ioc_gpa_unmap>())?;
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_gpa_unmap>() };
                let m = self.lookup(&mut st, fd, a.machid)?;
                memory::gpa_unmap(m, &a)
            }
            sys::NVMM_IOC_CTL => {
                expect(size_of::<sys::nvmm_ioc_ctl>())?;
                // SAFETY: the caller passes the argument structure of `request`, whose size was
                // checked above (`Kernel::ioctl` contract).
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_ctl>() };
                if a.op != sys::NVMM_CTL_MACH_INFO {
                    return Err(libc::EINVAL);
                }
                if a.size != size_of::<sys::nvmm_ctl_mach_info>() {
                    return Err(libc::EINVAL);
                }
                let info = a.data.cast::<sys::nvmm_ctl_mach_info>();
                // SAFETY: `data` of NVMM_CTL_MACH_INFO points to an `nvmm_ctl_mach_info` of `size`
                // bytes (checked above; `Kernel::ioctl` contract).
                let machid = unsafe { (*info).machid };
                let pid = self.config.pid;
                let m = self.lookup(&mut st, fd, machid)?;
                // nvmm.c nvmm_ctl_mach_info: nram sums the host mappings;
                // pid is the owner's, and the root owner's pid is 0.
                let nram: u64 = m.hmaps.iter().map(|h| h.1 as u64).sum();
                let pid = if m.owner == Owner::Root { 0 } else { pid };
                // SAFETY: `data` of NVMM_CTL_MACH_INFO points to an `nvmm_ctl_mach_info` of `size`
                // bytes (checked above; `Kernel::ioctl` contract).
                unsafe {
                    (*info).nvcpus = m.vcpus.len() as u32;
                    (*info).nram = nram;
                    (*info).pid = pid;
                    (*info).time = m.created;
                }
                Ok(())
            }
            _ => Err(libc::EINVAL),
        }
    }

    fn map_comm_page(&self, fd: BorrowedFd<'_>, offset: u64) -> Result<NonNull<u8>, i32> {
        let fd = fd.as_raw_fd();
        self.count(&self.counters.mmap);
        let mut st = self.st();
        self.take_fail(&mut st, FailPoint::MapCommPage)?;
        let machid = sys::nvmm_comm_machid(offset);
        let cpuid = sys::nvmm_comm_cpuid(offset);
        let m = self.lookup(&mut st, fd, machid)?;
        // As the kernel, mmap does not check that the VCPU exists.
        let page = m.pages.entry(cpuid).or_insert_with(PageBox::new).clone();
        let ptr = NonNull::new(page.comm().cast::<u8>()).ok_or(libc::ENOMEM)?;
        let e = st.mapped.entry(ptr.as_ptr().addr()).or_insert((page, 0));
        e.1 += 1;
        Ok(ptr)
    }

    unsafe fn retire_comm_page(&self, addr: NonNull<u8>) -> Result<(), i32> {
        self.count(&self.counters.mmap);
        let mut st = self.st();
        let page = st
            .mapped
            .get(&addr.as_ptr().addr())
            .ok_or(libc::EINVAL)?
            .0
            .clone();
        // The memory at `addr` is no longer the machine's page: the next
        // VCPU_CREATE/mmap of that id gets a fresh one.
        for m in st.machines.iter_mut().flatten() {
            m.pages.retain(|_, p| !Arc::ptr_eq(p, &page));
        }
        st.retired.push(page);
        Ok(())
    }

    fn map_anonymous(&self, len: usize) -> Result<NonNull<u8>, i32> {
        self.count(&self.counters.mmap);
        let mut st = self.st();
        self.take_fail(&mut st, FailPoint::MapAnonymous)?;
        if len == 0 {
            return Err(libc::EINVAL);
        }
        let layout = Layout::from_size_align(len, PAGE_SIZE).map_err(|_| libc::EINVAL)?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let p = NonNull::new(p).ok_or(libc::ENOMEM)?;
        st.anon.insert(p.as_ptr().addr(), (AnonPtr(p), len));
        Ok(p)
    }

    unsafe fn munmap(&self, addr: NonNull<u8>, len: usize) -> Result<(), i32> {
        self.count(&self.counters.munmap);
        let mut st = self.st();
        let a = addr.as_ptr().addr();
        if let Some(&(_, l)) = st.anon.get(&a) {
            if l != len {
                return Err(libc::EINVAL);
            }
            st.anon.remove(&a);
            // SAFETY: a block the model allocated in `map_anonymous` with this length and
            // alignment, forgotten by the bookkeeping here, so freed once.
            unsafe {
                std::alloc::dealloc(
                    addr.as_ptr(),
                    Layout::from_size_align_unchecked(len, PAGE_SIZE),
                )
            };
            return Ok(());
        }
        if len != PAGE_SIZE {
            return Err(libc::EINVAL);
        }
        match st.mapped.get_mut(&a) {
            Some(e) => {
                e.1 -= 1;
                if e.1 == 0 {
                    st.mapped.remove(&a);
                    st.retired.retain(|p| p.comm().addr() != a);
                }
                Ok(())
            }
            None => Err(libc::EINVAL),
        }
    }
}
