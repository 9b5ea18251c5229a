//! The VCPU comm page: a page shared with the kernel (and, for `stop`,
//! with other threads) that holds the VCPU state, its cache flags, the
//! pending event and the stop flag.
//!
//! Soundness rules kept here and only here:
//! - no `&` or `&mut` to the page, to the state, or to `stop` is ever
//!   created; every field is reached by raw-pointer projection;
//! - the flag words (`state_wanted/cached/commit`), the event and every
//!   state field are read and written with plain (non-volatile,
//!   non-atomic) raw-pointer accesses. The kernel writes them only inside
//!   the ioctls of this VCPU (GETSTATE, RUN; NetBSD `nvmm.c`
//!   `nvmm_vcpu_getstate`/`nvmm_vcpu_run` and the backends' `*_vcpu_run`
//!   hold the VCPU for the call), and every path to such an ioctl, like
//!   every path to these fields, needs the `&mut Vcpu` that owns the page:
//!   no access of ours overlaps one of the kernel's. An ioctl is an opaque
//!   call that may write any memory the process mapped, so nothing read
//!   before it is reused after it; no volatile access is needed for that,
//!   and plain ones let the compiler merge the assist's repeated reads;
//! - `stop` is only ever accessed atomically (it is written by other
//!   threads and by signal handlers while `run` is in progress).

pub mod stop;

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nvmm_sys as sys;

use crate::device::NvmmInner;
use crate::error::{Error, Op, report_teardown};
use crate::state::StateClasses;
use crate::sys::PAGE_SIZE;

/// The mapping of one comm page. It is shared (through `Arc`) by its
/// [`crate::Vcpu`] and every [`stop::VcpuStopper`], and unmapped when the
/// last of them is dropped, so a stopper can never write to an unmapped
/// page. The VCPU itself is destroyed by the `Vcpu`'s Drop, before this,
/// and the mapping is retired first (see [`CommMapping::retire`]).
pub(crate) struct CommMapping {
    page: NonNull<sys::nvmm_comm_page>,
    nvmm: Arc<NvmmInner>,
    /// False only when retiring the mapping failed: stoppers then skip
    /// their store (see [`CommMapping::retire`]).
    connected: AtomicBool,
}

// SAFETY: the mapping is process-wide memory. Through a shared
// `CommMapping` other threads only perform the atomic store to `stop`;
// every other access goes through the owning `Vcpu`, which is `!Sync` and
// needs `&mut` for anything the kernel may change.
unsafe impl Send for CommMapping {}
// SAFETY: see `Send`.
unsafe impl Sync for CommMapping {}

impl CommMapping {
    /// Takes ownership of a mapped comm page.
    ///
    /// # Safety
    ///
    /// `page` is a live, page-sized, read/write mapping returned by
    /// `nvmm.kernel.map_comm_page`, owned by nobody else.
    pub(crate) unsafe fn new(page: NonNull<u8>, nvmm: Arc<NvmmInner>) -> Self {
        CommMapping {
            page: page.cast(),
            nvmm,
            connected: AtomicBool::new(true),
        }
    }

    /// Disconnects the mapping from the VCPU, before `NVMM_IOC_VCPU_DESTROY`:
    /// the kernel reuses the page for the next VCPU created with this id
    /// (`sys/dev/nvmm/nvmm.c`, `nvmm_vcpu_create` clears page `cpuid` of
    /// the machine's comm object), so a [`stop::VcpuStopper`] that outlives
    /// this VCPU must not reach it. The page is replaced in place by
    /// private memory (`Kernel::retire_comm_page`, `mmap(MAP_FIXED|MAP_ANON)`):
    /// late stores land there, harmlessly. Should that fail, stoppers stop
    /// storing (a flag they check first); a store already past that check
    /// could then still reach a VCPU created again with the same id at
    /// once, so the failure goes to the teardown hook.
    pub(crate) fn retire(&self) {
        // SAFETY: `page` is our live comm-page mapping (unmapped only in
        // Drop); the owning Vcpu is being dropped, so from now on only the
        // stoppers' atomic stores to `stop` may reach it.
        if let Err(errno) = unsafe { self.nvmm.kernel.retire_comm_page(self.page.cast()) } {
            self.connected.store(false, Ordering::SeqCst);
            report_teardown(&Error::os(Op::CommPageMap, errno));
        }
    }

    /// Whether stores to `stop` still reach this VCPU's page or harmless
    /// private memory (see [`CommMapping::retire`]).
    pub(crate) fn stores_are_safe(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    pub(crate) fn page(&self) -> CommPage<'_> {
        CommPage {
            page: self.page,
            _mapping: PhantomData,
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::nvmm_comm_page {
        self.page.as_ptr()
    }

    /// The page's address, for an owner of this mapping to keep next to
    /// its `Arc` (one load less per access than through the `Arc`).
    pub(crate) fn addr(&self) -> PageAddr {
        PageAddr(self.page)
    }
}

/// The address of a comm page, without the borrow that proves it mapped:
/// kept by the owner of the mapping (the `Vcpu`, next to its
/// `Arc<CommMapping>`) and turned back into a [`CommPage`] with
/// [`PageAddr::page`], which takes that proof.
#[derive(Clone, Copy)]
pub(crate) struct PageAddr(NonNull<sys::nvmm_comm_page>);

// SAFETY: an address only; every access goes through a `CommPage`, which
// `PageAddr::page` ties to a borrow of the mapping (see `CommMapping`).
unsafe impl Send for PageAddr {}

impl PageAddr {
    /// The page at this address, borrowed from `mapping`.
    ///
    /// # Safety
    ///
    /// `self` came from `mapping.addr()`.
    #[inline]
    pub(crate) unsafe fn page<'a>(self, mapping: &'a CommMapping) -> CommPage<'a> {
        debug_assert_eq!(self.0, mapping.page);
        // SAFETY: `mapping` keeps the page mapped for 'a.
        unsafe { self.page_unchecked() }
    }

    /// The page at this address, for as long as the caller says.
    ///
    /// # Safety
    ///
    /// The mapping `self` came from stays mapped for 'a.
    #[inline]
    pub(crate) unsafe fn page_unchecked<'a>(self) -> CommPage<'a> {
        CommPage {
            page: self.0,
            _mapping: PhantomData,
        }
    }
}

impl Drop for CommMapping {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by the same kernel layer; this is the
        // last reference, so nothing reads or writes it after this.
        if let Err(errno) = unsafe { self.nvmm.kernel.munmap(self.page.cast(), PAGE_SIZE) } {
            report_teardown(&Error::os(Op::Munmap, errno));
        }
    }
}

/// A copyable raw view of a comm page with the field accessors, borrowed
/// from the [`CommMapping`] it came from (so it cannot outlive it).
#[derive(Clone, Copy)]
pub(crate) struct CommPage<'a> {
    page: NonNull<sys::nvmm_comm_page>,
    _mapping: PhantomData<&'a CommMapping>,
}

macro_rules! field {
    ($ptr:expr, $($path:tt)+) => {{
        let p = $ptr;
        // SAFETY: `p` points to a live comm page (see `CommPage`); the
        // projection stays inside it and creates no reference.
        #[allow(unused_unsafe)]
        let field = unsafe { &raw mut (*p).$($path)+ };
        field
    }};
}
pub(crate) use field;

impl CommPage<'_> {
    #[inline]
    pub(crate) fn state_ptr(self) -> *mut sys::nvmm_x64_state {
        field!(self.page.as_ptr(), state)
    }

    #[inline]
    pub(crate) fn cached(self) -> StateClasses {
        // SAFETY: an aligned u64 inside the live page.
        StateClasses::from_bits_retain(unsafe { field!(self.page.as_ptr(), state_cached).read() })
    }

    #[inline]
    pub(crate) fn commit(self) -> StateClasses {
        // SAFETY: an aligned u64 inside the live page.
        StateClasses::from_bits_retain(unsafe { field!(self.page.as_ptr(), state_commit).read() })
    }

    #[inline]
    pub(crate) fn set_wanted(self, classes: StateClasses) {
        // SAFETY: an aligned u64 inside the live page.
        unsafe { field!(self.page.as_ptr(), state_wanted).write(classes.bits()) }
    }

    /// libnvmm's `nvmm_vcpu_setstate`: `commit |= classes; cached |= classes`.
    #[inline]
    pub(crate) fn mark_dirty(self, classes: StateClasses) {
        let commit = field!(self.page.as_ptr(), state_commit);
        let cached = field!(self.page.as_ptr(), state_cached);
        // SAFETY: aligned u64s inside the live page; the kernel changes them
        // only during ioctls of this VCPU, which need the `&mut Vcpu` our
        // caller holds.
        // Stored only when a bit is missing: after the first of a run's
        // assists the words already hold it, and a store the next read of
        // the word must wait for is avoided.
        unsafe {
            let c = commit.read();
            if c & classes.bits() != classes.bits() {
                commit.write(c | classes.bits());
            }
            let k = cached.read();
            if k & classes.bits() != classes.bits() {
                cached.write(k | classes.bits());
            }
        }
    }

    /// `commit |= classes`, for classes known to be in `state_cached`
    /// already (then `nvmm_vcpu_setstate` would leave `cached` as it is):
    /// one plain read-modify-write of the word. The assists use it after
    /// they wrote registers of a class they fetched first.
    #[cfg(feature = "assist")]
    #[inline]
    pub(crate) fn mark_commit(self, classes: StateClasses) {
        let commit = field!(self.page.as_ptr(), state_commit);
        // SAFETY: an aligned u64 inside the live page; the kernel changes it
        // only during ioctls of this VCPU, which need the `&mut Vcpu` our
        // caller holds.
        unsafe { commit.write(commit.read() | classes.bits()) }
    }

    /// Reads a `T` at `p` (a field inside this page).
    ///
    /// # Safety
    ///
    /// `p` was obtained by projecting from this page's pointer and `T` is
    /// the field's type (or a plain integer of the same size and alignment).
    #[inline]
    pub(crate) unsafe fn read<T: Copy>(self, p: *const T) -> T {
        // SAFETY: forwarded from the caller; see the module's rules for why
        // a plain read is enough.
        unsafe { p.read() }
    }

    /// Writes a `T` at `p` (a field inside this page).
    ///
    /// # Safety
    ///
    /// As for [`CommPage::read`].
    #[inline]
    pub(crate) unsafe fn write<T: Copy>(self, p: *mut T, v: T) {
        // SAFETY: forwarded from the caller; see the module's rules for why
        // a plain write is enough.
        unsafe { p.write(v) }
    }

    /// Stores `value` into `stop` atomically (async-signal-safe).
    #[inline]
    pub(crate) fn store_stop(self, value: i32) {
        let p = field!(self.page.as_ptr(), stop).cast::<i32>();
        // SAFETY: `stop` is an aligned C int inside the live page; every
        // access to it in this process is atomic (this and `load_stop` are
        // its only accessors), and the kernel clears it only inside
        // VCPU_RUN. The reference does not outlive this call.
        unsafe { AtomicI32::from_ptr(p) }.store(value, Ordering::SeqCst);
    }

    /// Writes a pending event and sets `event_commit` (libnvmm's
    /// `nvmm_vcpu_inject`).
    pub(crate) fn write_event(self, kind: u32, vector: u8, error: u64) {
        // SAFETY: fields of the live page, written with their own types.
        unsafe {
            field!(self.page.as_ptr(), event.type_)
                .cast::<u32>()
                .write(kind);
            field!(self.page.as_ptr(), event.vector).write(vector);
            field!(self.page.as_ptr(), event.u.excp.error).write(error);
            field!(self.page.as_ptr(), event_commit).write(true);
        }
    }

    /// Whether an event is waiting for the next run.
    pub(crate) fn event_pending(self) -> bool {
        // SAFETY: a bool of the live page; the kernel stores only 0 or 1.
        unsafe { field!(self.page.as_ptr(), event_commit).cast::<u8>().read() != 0 }
    }
}

#[cfg(test)]
mod tests;
