//! `KernelModel`: an in-process **model** of the NetBSD NVMM kernel's
//! documented semantics, for tests and benchmarks on hosts without NVMM.
//!
//! It is not NetBSD and proves nothing about the real kernel; it encodes
//! what the reference (`shared/reference/libnvmm.md` §1, §5) says the kernel
//! does, so that the crate's use of the protocol can be checked and its
//! syscalls counted:
//! - ownership by descriptor (EPERM for another owner, the `O_WRONLY`
//!   opener is root; closing a descriptor destroys its machines);
//! - the comm page: reset state after VCPU_CREATE with every class cached;
//!   GETSTATE fills `state_wanted` and caches it; RUN applies
//!   `state_commit`, makes everything stale, validates and consumes the
//!   event, provides GPRS|SEGS|CRS|MSRS on I/O and memory exits and GPRS on
//!   MSR exits, honours and then clears `stop`;
//! - the errno of each documented failure (EBUSY duplicate VCPU, ENOBUFS,
//!   EINVAL, ENOENT, EEXIST, EPERM, ...);
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

#![allow(missing_docs, clippy::undocumented_unsafe_blocks)]
#![allow(dead_code)]

use std::alloc::Layout;
use std::cell::UnsafeCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{CStr, c_void};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nvmm::nvmm_sys as sys;
use nvmm::sys::{Kernel, OpenMode, PAGE_SIZE};

const MAX_VCPUS: u32 = 256;
const MAX_HMAPPINGS: usize = 32;
const GPA_END: u64 = 128 << 30;

const SEGS: u64 = sys::NVMM_X64_STATE_SEGS;
const GPRS: u64 = sys::NVMM_X64_STATE_GPRS;
const CRS: u64 = sys::NVMM_X64_STATE_CRS;
const DRS: u64 = sys::NVMM_X64_STATE_DRS;
const MSRS: u64 = sys::NVMM_X64_STATE_MSRS;
const INTR: u64 = sys::NVMM_X64_STATE_INTR;
const FPU: u64 = sys::NVMM_X64_STATE_FPU;
const ALL: u64 = sys::NVMM_X64_STATE_ALL;

/// What the model's capability reports and how it behaves.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// `/dev/nvmm` open fails with this errno when set (no NVMM).
    pub absent: Option<i32>,
    pub version: u32,
    pub state_size: u32,
    pub max_machines: u32,
    pub max_vcpus: u32,
    pub vcpu_conf_support: u64,
    pub conf_cpuid_maxops: u32,
    pub pid: i32,
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
        }
    }
}

/// Where the next failure is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    Ioctl(u64),
    MapCommPage,
    MapAnonymous,
}

/// A guest effect: edits the model's "hardware" state during a run.
pub type GuestFn = Box<dyn FnMut(&mut sys::nvmm_x64_state) + Send>;

/// One scripted VCPU exit.
pub struct ScriptedExit {
    pub exit: sys::nvmm_x86_exit,
    pub guest: Option<GuestFn>,
}

fn zeroed_exit() -> sys::nvmm_x86_exit {
    // SAFETY: plain C data; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

impl ScriptedExit {
    pub fn reason(reason: u64) -> Self {
        let mut exit = zeroed_exit();
        exit.reason = reason;
        ScriptedExit { exit, guest: None }
    }
    pub fn io(port: u16, is_in: bool, size: u8, npc: u64) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_IO);
        s.exit.u.io = sys::nvmm_x86_exit_io {
            in_: is_in,
            port,
            seg: -1,
            address_size: 8,
            operand_size: size,
            rep: false,
            str_: false,
            npc,
        };
        s
    }
    pub fn memory(gpa: u64, write: bool, bytes: &[u8]) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_MEMORY);
        let mut inst = [0u8; 15];
        let n = bytes.len().min(15);
        inst[..n].copy_from_slice(&bytes[..n]);
        s.exit.u.mem = sys::nvmm_x86_exit_memory {
            prot: if write { 2 } else { 1 },
            gpa,
            inst_len: n as u8,
            inst_bytes: inst,
        };
        s
    }
    pub fn rdmsr(msr: u32, npc: u64) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_RDMSR);
        s.exit.u.rdmsr = sys::nvmm_x86_exit_rdmsr { msr, npc };
        s
    }
    pub fn wrmsr(msr: u32, val: u64, npc: u64) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_WRMSR);
        s.exit.u.wrmsr = sys::nvmm_x86_exit_wrmsr { msr, val, npc };
        s
    }
    pub fn insn(reason: u64, npc: u64) -> Self {
        let mut s = Self::reason(reason);
        s.exit.u.insn = sys::nvmm_x86_exit_insn { npc };
        s
    }
    pub fn invalid(hwcode: u64) -> Self {
        let mut s = Self::reason(sys::NVMM_VCPU_EXIT_INVALID);
        s.exit.u.inv = sys::nvmm_x86_exit_invalid { hwcode };
        s
    }
    /// Runs `f` on the hardware state when this exit is taken (the guest).
    pub fn with_guest(mut self, f: impl FnMut(&mut sys::nvmm_x64_state) + Send + 'static) -> Self {
        self.guest = Some(Box::new(f));
        self
    }
}

/// A page of shared memory (a comm page).
#[repr(C, align(4096))]
struct PageBox(UnsafeCell<[u8; PAGE_SIZE]>);
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

/// The pointer of an anonymous mapping the model allocated.
struct AnonPtr(NonNull<u8>);
// SAFETY: only the model's bookkeeping, under its mutex; the memory itself
// is accessed by the crate.
unsafe impl Send for AnonPtr {}

struct VcpuModel {
    hw: Box<sys::nvmm_x64_state>,
    script: VecDeque<ScriptedExit>,
    cpuid: BTreeMap<u32, sys::nvmm_vcpu_conf_cpuid>,
    tpr_exit: bool,
    injected: Vec<(u32, u8, u64)>,
}

struct MachineModel {
    owner: RawFd,
    vcpus: BTreeMap<u32, VcpuModel>,
    pages: HashMap<u32, Arc<PageBox>>,
    hmaps: Vec<(usize, usize)>,
    gmaps: Vec<(u64, u64, usize, i32)>,
    created: i64,
}

#[derive(Default)]
struct ModelState {
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

/// Counters of the system calls the crate made.
#[derive(Debug, Default)]
pub struct Counters {
    pub total: AtomicU64,
    pub ioctl: AtomicU64,
    pub run: AtomicU64,
    pub getstate: AtomicU64,
    pub mmap: AtomicU64,
    pub munmap: AtomicU64,
}

/// The kernel model. Share it as `Arc<KernelModel>`; pass a clone to
/// `Nvmm::open_with`.
pub struct KernelModel {
    config: ModelConfig,
    state: Mutex<ModelState>,
    pub counters: Counters,
}

impl KernelModel {
    pub fn new() -> Arc<Self> {
        Self::with_config(ModelConfig::default())
    }

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

    /// A copy of the "hardware" state (what the kernel would load into the
    /// VMCB/VMCS).
    pub fn hw_state(&self, machid: u32, cpuid: u32) -> sys::nvmm_x64_state {
        self.with_vcpu(machid, cpuid, |v| *v.hw)
    }

    /// Edits the hardware state (a guest running between exits).
    pub fn edit_hw(&self, machid: u32, cpuid: u32, f: impl FnOnce(&mut sys::nvmm_x64_state)) {
        self.with_vcpu(machid, cpuid, |v| f(&mut v.hw))
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

    pub fn tpr_exit(&self, machid: u32, cpuid: u32) -> bool {
        self.with_vcpu(machid, cpuid, |v| v.tpr_exit)
    }

    pub fn vcpu_exists(&self, machid: u32, cpuid: u32) -> bool {
        let st = self.st();
        st.machines
            .get(machid as usize)
            .and_then(|m| m.as_ref())
            .is_some_and(|m| m.vcpus.contains_key(&cpuid))
    }

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
    /// "process", and descriptors still open.
    pub fn live_mappings(&self) -> usize {
        let st = self.st();
        st.anon.len() + st.mapped.len()
    }

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
        if !root && m.owner != fd {
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

/// The kernel's reset state (reference §5.7).
pub fn reset_state() -> sys::nvmm_x64_state {
    // SAFETY: plain C data; all-zero is valid.
    let mut s: sys::nvmm_x64_state = unsafe { std::mem::zeroed() };
    let data_attr: u16 = 0x3 | (1 << 4) | (1 << 7);
    for (i, seg) in s.segs.iter_mut().enumerate() {
        seg.selector = 0;
        seg.base = 0;
        seg.limit = 0xFFFF;
        let a = if i < 6 {
            data_attr
        } else if i >= 8 {
            0x2 | (1 << 7)
        } else {
            0
        };
        // SAFETY: the attribute bitfield is one u16.
        unsafe { (&raw mut seg.attrib).cast::<u16>().write(a) };
    }
    s.segs[sys::NVMM_X64_SEG_CS].selector = 0xF000;
    s.segs[sys::NVMM_X64_SEG_CS].base = 0xFFFF_0000;
    s.gprs[sys::NVMM_X64_GPR_RIP] = 0xFFF0;
    s.gprs[sys::NVMM_X64_GPR_RFLAGS] = 0x2;
    s.crs[sys::NVMM_X64_CR_CR0] = 0x6000_0010;
    s.crs[sys::NVMM_X64_CR_XCR0] = 1;
    s.drs[sys::NVMM_X64_DR_DR6] = 0xFFFF_0FF0;
    s.drs[sys::NVMM_X64_DR_DR7] = 0x400;
    s.msrs[sys::NVMM_X64_MSR_PAT] = 0x0007_0406_0007_0406;
    s.fpu.fx_cw = 0x40;
    s.fpu.fx_tw = 0x55;
    s.fpu.fx_mxcsr = 0x1F80;
    s
}

/// Copies the classes `flags` from `src` to `dst`.
///
/// # Safety
///
/// Both point to live state structures (one may be in a comm page).
unsafe fn copy_classes(dst: *mut sys::nvmm_x64_state, src: *const sys::nvmm_x64_state, flags: u64) {
    unsafe {
        if flags & SEGS != 0 {
            (&raw mut (*dst).segs).write((&raw const (*src).segs).read());
        }
        if flags & GPRS != 0 {
            (&raw mut (*dst).gprs).write((&raw const (*src).gprs).read());
        }
        if flags & CRS != 0 {
            (&raw mut (*dst).crs).write((&raw const (*src).crs).read());
        }
        if flags & DRS != 0 {
            (&raw mut (*dst).drs).write((&raw const (*src).drs).read());
        }
        if flags & MSRS != 0 {
            (&raw mut (*dst).msrs).write((&raw const (*src).msrs).read());
        }
        if flags & INTR != 0 {
            (&raw mut (*dst).intr).write((&raw const (*src).intr).read());
        }
        if flags & FPU != 0 {
            (&raw mut (*dst).fpu).write((&raw const (*src).fpu).read());
        }
    }
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
        if st.fds.remove(&fd).is_some() {
            // The kernel destroys every machine of this owner.
            for slot in st.machines.iter_mut() {
                if slot.as_ref().is_some_and(|m| m.owner == fd) {
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
                        xcr0_mask: 0x3,
                        mxcsr_mask: 0xFFBF,
                        conf_cpuid_maxops: self.config.conf_cpuid_maxops,
                        ..Default::default()
                    },
                };
                unsafe { (*arg.cast::<sys::nvmm_ioc_capability>()).cap = cap };
                Ok(())
            }
            sys::NVMM_IOC_MACHINE_CREATE => {
                expect(size_of::<sys::nvmm_ioc_machine_create>())?;
                st.fds.get(&fd).ok_or(libc::EBADF)?;
                let slot = st
                    .machines
                    .iter()
                    .position(|m| m.is_none())
                    .ok_or(libc::ENOBUFS)?;
                st.machines[slot] = Some(MachineModel {
                    owner: fd,
                    vcpus: BTreeMap::new(),
                    pages: HashMap::new(),
                    hmaps: Vec::new(),
                    gmaps: Vec::new(),
                    created: 1_700_000_000 + slot as i64,
                });
                unsafe { (*arg.cast::<sys::nvmm_ioc_machine_create>()).machid = slot as u32 };
                Ok(())
            }
            sys::NVMM_IOC_MACHINE_DESTROY => {
                expect(size_of::<sys::nvmm_ioc_machine_destroy>())?;
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_machine_destroy>() };
                self.lookup(&mut st, fd, a.machid)?;
                st.machines[a.machid as usize] = None;
                Ok(())
            }
            sys::NVMM_IOC_MACHINE_CONFIGURE => {
                expect(size_of::<sys::nvmm_ioc_machine_configure>())?;
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_machine_configure>() };
                self.lookup(&mut st, fd, a.machid)?;
                // x86 has no machine configuration operation.
                Err(libc::EINVAL)
            }
            sys::NVMM_IOC_VCPU_CREATE => {
                expect(size_of::<sys::nvmm_ioc_vcpu_create>())?;
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_vcpu_create>() };
                let max = self.config.max_vcpus.min(MAX_VCPUS);
                let m = self.lookup(&mut st, fd, a.machid)?;
                if a.cpuid >= max {
                    return Err(libc::EINVAL);
                }
                if m.vcpus.contains_key(&a.cpuid) {
                    return Err(libc::EBUSY);
                }
                let page = m.pages.entry(a.cpuid).or_insert_with(PageBox::new).clone();
                let comm = page.comm();
                let reset = reset_state();
                // The kernel zeroes the page and loads the reset state, which
                // is then cached. `stop` may be stored to at any time by a
                // stopper still mapping this page, so it is cleared
                // atomically and the rest around it.
                unsafe {
                    let stop_at = std::mem::offset_of!(sys::nvmm_comm_page, stop);
                    let stop_end = stop_at + size_of::<i32>();
                    let bytes = comm.cast::<u8>();
                    bytes.write_bytes(0, stop_at);
                    bytes
                        .add(stop_end)
                        .write_bytes(0, size_of::<sys::nvmm_comm_page>() - stop_end);
                    stop_word(comm).store(0, Ordering::SeqCst);
                    (&raw mut (*comm).state).write(reset);
                    (&raw mut (*comm).state_cached).write_volatile(ALL);
                }
                m.vcpus.insert(
                    a.cpuid,
                    VcpuModel {
                        hw: Box::new(reset),
                        script: VecDeque::new(),
                        cpuid: BTreeMap::new(),
                        tpr_exit: false,
                        injected: Vec::new(),
                    },
                );
                Ok(())
            }
            sys::NVMM_IOC_VCPU_DESTROY => {
                expect(size_of::<sys::nvmm_ioc_vcpu_destroy>())?;
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
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_vcpu_configure>() };
                let maxops = self.config.conf_cpuid_maxops as usize;
                let tpr_ok = self.config.vcpu_conf_support & sys::NVMM_CAP_ARCH_VCPU_CONF_TPR != 0;
                let m = self.lookup(&mut st, fd, a.machid)?;
                let v = m.vcpus.get_mut(&a.cpuid).ok_or(libc::ENOENT)?;
                match a.op {
                    op if op == sys::NVMM_VCPU_CONF_CPUID => {
                        let c = unsafe { *a.conf.cast::<sys::nvmm_vcpu_conf_cpuid>() };
                        if c.mask() != 0 && c.exit() != 0 {
                            return Err(libc::EINVAL);
                        }
                        if c.mask() != 0 {
                            let (s, d) = unsafe { (c.u.mask.set, c.u.mask.del) };
                            if s.eax & d.eax != 0
                                || s.ebx & d.ebx != 0
                                || s.ecx & d.ecx != 0
                                || s.edx & d.edx != 0
                            {
                                return Err(libc::EINVAL);
                            }
                        }
                        if c.mask() == 0 && c.exit() == 0 {
                            v.cpuid.remove(&c.leaf);
                            return Ok(());
                        }
                        if !v.cpuid.contains_key(&c.leaf) && v.cpuid.len() >= maxops {
                            return Err(libc::ENOBUFS);
                        }
                        v.cpuid.insert(c.leaf, c);
                        Ok(())
                    }
                    op if op == sys::NVMM_VCPU_CONF_TPR => {
                        if !tpr_ok {
                            return Err(libc::EINVAL);
                        }
                        let c = unsafe { *a.conf.cast::<sys::nvmm_vcpu_conf_tpr>() };
                        v.tpr_exit = c.exit_changed() != 0;
                        Ok(())
                    }
                    _ => Err(libc::EINVAL),
                }
            }
            sys::NVMM_IOC_VCPU_GETSTATE => {
                expect(size_of::<sys::nvmm_ioc_vcpu_getstate>())?;
                self.counters.getstate.fetch_add(1, Ordering::Relaxed);
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_vcpu_getstate>() };
                let m = self.lookup(&mut st, fd, a.machid)?;
                let page = m.pages.get(&a.cpuid).ok_or(libc::ENOENT)?.clone();
                let v = m.vcpus.get_mut(&a.cpuid).ok_or(libc::ENOENT)?;
                let comm = page.comm();
                unsafe {
                    let wanted = (&raw const (*comm).state_wanted).read_volatile() & ALL;
                    copy_classes(&raw mut (*comm).state, &raw const *v.hw, wanted);
                    let cached = (&raw const (*comm).state_cached).read_volatile();
                    (&raw mut (*comm).state_cached).write_volatile(cached | wanted);
                    (&raw mut (*comm).state_wanted).write_volatile(0);
                }
                Ok(())
            }
            sys::NVMM_IOC_VCPU_RUN => {
                expect(size_of::<sys::nvmm_ioc_vcpu_run>())?;
                self.counters.run.fetch_add(1, Ordering::Relaxed);
                let args = arg.cast::<sys::nvmm_ioc_vcpu_run>();
                let (machid, cpuid) = unsafe { ((*args).machid, (*args).cpuid) };
                let m = self.lookup(&mut st, fd, machid)?;
                let page = m.pages.get(&cpuid).ok_or(libc::ENOENT)?.clone();
                let v = m.vcpus.get_mut(&cpuid).ok_or(libc::ENOENT)?;
                let comm = page.comm();
                let exit = unsafe { run_vcpu(v, comm) };
                // The kernel clears `stop` at the end of every run.
                stop_word(comm).store(0, Ordering::SeqCst);
                let exit = exit?;
                unsafe { (&raw mut (*args).exit).write(exit) };
                Ok(())
            }
            sys::NVMM_IOC_HVA_MAP => {
                expect(size_of::<sys::nvmm_ioc_hva_map>())?;
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_hva_map>() };
                let m = self.lookup(&mut st, fd, a.machid)?;
                if a.hva == 0 || a.hva % PAGE_SIZE != 0 || a.size % PAGE_SIZE != 0 || a.size == 0 {
                    return Err(libc::EINVAL);
                }
                let end = a.hva.checked_add(a.size).ok_or(libc::EINVAL)?;
                for &(h, s) in &m.hmaps {
                    let inside = a.hva >= h && end <= h + s;
                    let overlap = a.hva < h + s && h < end;
                    if overlap && !inside {
                        return Err(libc::EEXIST);
                    }
                }
                if m.hmaps.len() >= MAX_HMAPPINGS {
                    return Err(libc::ENOBUFS);
                }
                m.hmaps.push((a.hva, a.size));
                Ok(())
            }
            sys::NVMM_IOC_HVA_UNMAP => {
                expect(size_of::<sys::nvmm_ioc_hva_unmap>())?;
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_hva_unmap>() };
                let m = self.lookup(&mut st, fd, a.machid)?;
                let i = m
                    .hmaps
                    .iter()
                    .position(|&(h, s)| h == a.hva && s == a.size)
                    .ok_or(libc::ENOENT)?;
                m.hmaps.remove(i);
                // The kernel unmaps the range from the process.
                if st.anon.get(&a.hva).is_some_and(|e| e.1 == a.size)
                    && let Some((p, size)) = st.anon.remove(&a.hva)
                {
                    unsafe {
                        std::alloc::dealloc(
                            p.0.as_ptr(),
                            Layout::from_size_align_unchecked(size, PAGE_SIZE),
                        )
                    };
                }
                Ok(())
            }
            sys::NVMM_IOC_GPA_MAP => {
                expect(size_of::<sys::nvmm_ioc_gpa_map>())?;
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_gpa_map>() };
                let m = self.lookup(&mut st, fd, a.machid)?;
                if a.prot & !0x7 != 0 {
                    return Err(libc::EINVAL);
                }
                if a.gpa % PAGE_SIZE as u64 != 0
                    || a.size % PAGE_SIZE != 0
                    || a.hva % PAGE_SIZE != 0
                    || a.hva == 0
                    || a.size == 0
                {
                    return Err(libc::EINVAL);
                }
                let end = a.gpa.checked_add(a.size as u64).ok_or(libc::EINVAL)?;
                if a.gpa >= GPA_END || end > GPA_END {
                    return Err(libc::EINVAL);
                }
                let inside = m
                    .hmaps
                    .iter()
                    .any(|&(h, s)| a.hva >= h && a.hva + a.size <= h + s);
                if !inside {
                    return Err(libc::EINVAL);
                }
                m.gmaps.push((a.gpa, a.size as u64, a.hva, a.prot));
                Ok(())
            }
            sys::NVMM_IOC_GPA_UNMAP => {
                expect(size_of::<sys::nvmm_ioc_gpa_unmap>())?;
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_gpa_unmap>() };
                let m = self.lookup(&mut st, fd, a.machid)?;
                if a.gpa % PAGE_SIZE as u64 != 0 || a.size % PAGE_SIZE != 0 {
                    return Err(libc::EINVAL);
                }
                let end = a.gpa.checked_add(a.size as u64).ok_or(libc::EINVAL)?;
                // The kernel's off-by-one: a range ending at the top fails.
                if a.gpa >= GPA_END || end >= GPA_END {
                    return Err(libc::EINVAL);
                }
                m.gmaps.retain(|&(g, s, _, _)| !(g < end && a.gpa < g + s));
                Ok(())
            }
            sys::NVMM_IOC_CTL => {
                expect(size_of::<sys::nvmm_ioc_ctl>())?;
                let a = unsafe { *arg.cast::<sys::nvmm_ioc_ctl>() };
                if a.op != sys::NVMM_CTL_MACH_INFO {
                    return Err(libc::EINVAL);
                }
                if a.size != size_of::<sys::nvmm_ctl_mach_info>() {
                    return Err(libc::EINVAL);
                }
                let info = a.data.cast::<sys::nvmm_ctl_mach_info>();
                let machid = unsafe { (*info).machid };
                let pid = self.config.pid;
                let m = self.lookup(&mut st, fd, machid)?;
                let nram: u64 = m.gmaps.iter().map(|g| g.1).sum();
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

/// VCPU_RUN on the model (reference §5.3 step 4, §5.5, §5.6).
///
/// # Safety
///
/// `comm` is the VCPU's live comm page.
unsafe fn run_vcpu(
    v: &mut VcpuModel,
    comm: *mut sys::nvmm_comm_page,
) -> Result<sys::nvmm_x86_exit, i32> {
    unsafe {
        // Apply the committed classes, then everything is stale.
        let commit = (&raw const (*comm).state_commit).read_volatile() & ALL;
        copy_classes(&raw mut *v.hw, &raw const (*comm).state, commit);
        (&raw mut (*comm).state_commit).write_volatile(0);
        (&raw mut (*comm).state_cached).write_volatile(0);

        // The event: consumed, validated; an invalid one fails the run.
        if (&raw const (*comm).event_commit)
            .cast::<u8>()
            .read_volatile()
            != 0
        {
            (&raw mut (*comm).event_commit).write_volatile(false);
            let kind = (&raw const (*comm).event.type_).read_volatile();
            let vector = (&raw const (*comm).event.vector).read_volatile();
            let error = (&raw const (*comm).event.u.excp.error).read_volatile();
            let ok = match kind {
                k if k == sys::NVMM_VCPU_EVENT_EXCP => {
                    !(vector == 0 || vector == 2 || vector == 3 || vector >= 32)
                }
                k if k == sys::NVMM_VCPU_EVENT_INTR => true,
                _ => false,
            };
            if !ok {
                return Err(libc::EINVAL);
            }
            v.injected.push((kind, vector, error));
        }

        if stop_word(comm).load(Ordering::SeqCst) != 0 {
            let mut e = zeroed_exit();
            e.reason = sys::NVMM_VCPU_EXIT_STOPPED;
            fill_exitstate(&mut e, &v.hw);
            return Ok(e);
        }

        let mut e = match v.script.pop_front() {
            Some(mut s) => {
                if let Some(g) = s.guest.as_mut() {
                    g(&mut v.hw);
                }
                s.exit
            }
            None => zeroed_exit(),
        };
        let provide = match e.reason {
            r if r == sys::NVMM_VCPU_EXIT_IO || r == sys::NVMM_VCPU_EXIT_MEMORY => {
                GPRS | SEGS | CRS | MSRS
            }
            r if r == sys::NVMM_VCPU_EXIT_RDMSR || r == sys::NVMM_VCPU_EXIT_WRMSR => GPRS,
            _ => 0,
        };
        copy_classes(&raw mut (*comm).state, &raw const *v.hw, provide);
        (&raw mut (*comm).state_cached).write_volatile(provide);
        fill_exitstate(&mut e, &v.hw);
        Ok(e)
    }
}

fn fill_exitstate(e: &mut sys::nvmm_x86_exit, hw: &sys::nvmm_x64_state) {
    e.exitstate.rflags = hw.gprs[sys::NVMM_X64_GPR_RFLAGS];
    e.exitstate.cr8 = hw.crs[sys::NVMM_X64_CR_CR8];
    // SAFETY: both bitfield structs are one u64 (intr) / the third u64 of
    // exitstate.
    unsafe {
        let bits = (&raw const hw.intr).cast::<u64>().read() & 0xF;
        (&raw mut e.exitstate).cast::<u64>().add(2).write(bits);
    }
}
