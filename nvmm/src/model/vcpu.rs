//! The model's VCPUs: creation with the reset state, configuration,
//! GETSTATE and RUN, following nvmm.c (`nvmm_vcpu_create`,
//! `nvmm_do_vcpu_run`, `nvmm_vcpu_run`), nvmm_internal.h
//! (`nvmm_return_needed`) and the backends' `*_vcpu_run`. **Model, not
//! NetBSD.**

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;

use crate::nvmm_sys as sys;

use super::sanitize::{self, commit, readback};
use super::{ALL, Backend, CRS, GPRS, MSRS, PageBox, SEGS, ScriptedExit, stop_word, zeroed_exit};

pub struct VcpuModel {
    /// The committed ("VMCB/VMCS") state.
    pub hw: Box<sys::nvmm_x64_state>,
    /// SVM's VMCB CPL field (taken from SS.DPL on commit).
    pub cpl: u8,
    pub script: VecDeque<ScriptedExit>,
    pub cpuid: BTreeMap<u32, sys::nvmm_vcpu_conf_cpuid>,
    pub tpr_exit: bool,
    pub injected: Vec<(u32, u8, u64)>,
    /// A signal is pending for the VCPU's thread (`LW_USERRET`).
    pub signal_pending: bool,
}

/// Creates the VCPU model and initialises its comm page as
/// `nvmm_vcpu_create` + `svm_vcpu_init`/`vmx_vcpu_init` do: the page is
/// zeroed, the reset state is written to it and committed through the
/// backend's setstate (so the hardware gets the *sanitised* reset state:
/// with `fx_mxcsr_mask = 0` its MXCSR is 0), and every class is cached.
///
/// # Safety
///
/// `page` is the VCPU's live comm page.
pub unsafe fn create(backend: Backend, page: &PageBox) -> VcpuModel {
    let comm = page.comm();
    let reset = sanitize::reset_state();
    let mut hw = Box::new(reset);
    let mut cpl = 0;
    commit(backend, &mut hw, &mut cpl, &reset, ALL);
    // SAFETY: the caller's contract. nvmm_vcpu_create zeroes the page, but
    // a stopper of a destroyed VCPU that still maps it may store to `stop`
    // at any time: the model clears `stop` atomically and the rest around
    // it with plain stores (no other thread touches those bytes).
    unsafe {
        let stop_at = std::mem::offset_of!(sys::nvmm_comm_page, stop);
        let stop_end = stop_at + size_of::<i32>();
        let bytes = comm.cast::<u8>();
        bytes.write_bytes(0, stop_at);
        bytes
            .add(stop_end)
            .write_bytes(0, size_of::<sys::nvmm_comm_page>() - stop_end);
        stop_word(comm).store(0, Ordering::SeqCst);
        put_state(comm, &reset);
        (&raw mut (*comm).state_cached).write_volatile(ALL);
    }
    VcpuModel {
        hw,
        cpl,
        script: VecDeque::new(),
        cpuid: BTreeMap::new(),
        tpr_exit: false,
        injected: Vec::new(),
        signal_pending: false,
    }
}

/// Stores `st` into the comm page's `state` as the kernel's copy does,
/// leaving every byte of the page initialised. A typed store leaves the
/// padding of the value undefined, and the bindings' FXSAVE area has
/// padding: the 6 reserved bytes after each x87 register (`fpaccfx` is a
/// 10-byte `fpacc87` aligned to 16). The crate reads the FXSAVE area as
/// bytes (`Fpu::area`, `Vcpu::save`), so they are stored as zero here.
///
/// # Safety
///
/// `comm` is the VCPU's live comm page.
unsafe fn put_state(comm: *mut sys::nvmm_comm_page, st: &sys::nvmm_x64_state) {
    let reserved = size_of::<sys::fpaccfx>() - size_of::<sys::fpacc87>();
    // SAFETY: the caller's contract; each register slot is 16 bytes of
    // the page's FXSAVE area, its last `reserved` bytes padding.
    unsafe {
        (&raw mut (*comm).state).write(*st);
        let regs = (&raw mut (*comm).state.fpu.fx_87_ac).cast::<sys::fpaccfx>();
        for i in 0..8 {
            let slot = regs.add(i).cast::<u8>();
            slot.add(size_of::<sys::fpacc87>()).write_bytes(0, reserved);
        }
    }
}

/// GETSTATE (svm_vcpu_getstate): the `state_wanted` classes are read back
/// from the hardware into the page and cached.
///
/// # Safety
///
/// `comm` is the VCPU's live comm page.
pub unsafe fn getstate(backend: Backend, v: &VcpuModel, comm: *mut sys::nvmm_comm_page) {
    // SAFETY: the caller's contract.
    unsafe {
        let wanted = (&raw const (*comm).state_wanted).read_volatile() & ALL;
        let mut st = (&raw const (*comm).state).read();
        readback(backend, &v.hw, v.cpl, &mut st, wanted);
        put_state(comm, &st);
        let cached = (&raw const (*comm).state_cached).read_volatile();
        (&raw mut (*comm).state_cached).write_volatile(cached | wanted);
        (&raw mut (*comm).state_wanted).write_volatile(0);
    }
}

/// nvmm_internal.h `nvmm_return_needed`: a pending signal (`LW_USERRET`)
/// gives NONE, then a requested stop gives STOPPED. (Preemption and
/// suspension, which also give NONE, are not modelled.)
fn return_needed(v: &mut VcpuModel, comm: *mut sys::nvmm_comm_page) -> Option<u64> {
    if v.signal_pending {
        // The signal is delivered on the way back to userland.
        v.signal_pending = false;
        return Some(sys::NVMM_VCPU_EXIT_NONE);
    }
    if stop_word(comm).load(Ordering::SeqCst) != 0 {
        return Some(sys::NVMM_VCPU_EXIT_STOPPED);
    }
    None
}

/// How a RUN ended.
pub enum RunEnd {
    /// `nvmm_do_vcpu_run` left before the backend ran: only
    /// `exit->reason` is written, nothing is committed.
    Early(u64),
    /// The backend ran and filled the whole exit.
    Full(sys::nvmm_x86_exit),
}

/// RUN: `nvmm_do_vcpu_run` then the backend's `*_vcpu_run`.
///
/// # Safety
///
/// `comm` is the VCPU's live comm page.
pub unsafe fn run(
    backend: Backend,
    v: &mut VcpuModel,
    comm: *mut sys::nvmm_comm_page,
) -> Result<RunEnd, i32> {
    // nvmm_do_vcpu_run: "Got a signal? Or pending resched? Leave." before
    // the backend runs. The model follows nvmm.c 1.50 (per the project's
    // reference), which passes the VCPU, so a requested stop is seen here
    // too; older nvmm.c revisions and DragonFly check only signals here.
    if let Some(reason) = return_needed(v, comm) {
        return Ok(RunEnd::Early(reason));
    }
    // SAFETY: the caller's contract.
    unsafe {
        // svm_vcpu_run: svm_vcpu_state_commit (state_wanted = state_commit;
        // state_commit = 0; setstate), then state_cached = 0.
        let flags = (&raw const (*comm).state_commit).read_volatile() & ALL;
        let st = (&raw const (*comm).state).read();
        commit(backend, &mut v.hw, &mut v.cpl, &st, flags);
        (&raw mut (*comm).state_commit).write_volatile(0);
        (&raw mut (*comm).state_cached).write_volatile(0);

        // svm_vcpu_event_commit: event_commit cleared first, then the
        // event validated; a bad one fails the run with EINVAL.
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

        // The guest runs until its next exit (scripted).
        let mut e = match v.script.pop_front() {
            Some(mut s) => {
                if let Some(g) = s.guest.as_mut() {
                    g(&mut v.hw);
                }
                if s.signal {
                    v.signal_pending = true;
                }
                s.exit
            }
            None => zeroed_exit(),
        };
        let scripted = e;
        // svm_vcpu_guest_fpu_leave / vmx_vcpu_guest_fpu_leave: after the
        // guest ran, fpu_area_save (FXSAVE or XSAVE) stores the CPU's
        // MXCSR_MASK in the guest FPU area, so a later GETSTATE of FPU
        // returns the host's mask, not the reset state's 0.
        v.hw.fpu.fx_mxcsr_mask = sanitize::HOST_MXCSR_MASK;

        // svm_exit_cpuid / vmx_exit_cpuid: the in-kernel CPUID runs first
        // and overwrites RAX-RDX, then `cpuid->exit` sends it to userland.
        if e.reason == sys::NVMM_VCPU_EXIT_CPUID {
            let leaf = v.hw.gprs[sys::NVMM_X64_GPR_RAX] as u32;
            let [a, b, c, d] = sanitize::kernel_cpuid_answer(leaf);
            v.hw.gprs[sys::NVMM_X64_GPR_RAX] = u64::from(a);
            v.hw.gprs[sys::NVMM_X64_GPR_RBX] = u64::from(b);
            v.hw.gprs[sys::NVMM_X64_GPR_RCX] = u64::from(c);
            v.hw.gprs[sys::NVMM_X64_GPR_RDX] = u64::from(d);
        }

        // The exit handlers provide state (svm_vcpu_state_provide) before
        // nvmm_return_needed looks at the exit.
        let provide = match e.reason {
            r if r == sys::NVMM_VCPU_EXIT_IO || r == sys::NVMM_VCPU_EXIT_MEMORY => {
                GPRS | SEGS | CRS | MSRS
            }
            r if r == sys::NVMM_VCPU_EXIT_RDMSR || r == sys::NVMM_VCPU_EXIT_WRMSR => GPRS,
            _ => 0,
        };
        let mut st = (&raw const (*comm).state).read();
        readback(backend, &v.hw, v.cpl, &mut st, provide);
        put_state(comm, &st);
        (&raw mut (*comm).state_cached).write_volatile(provide);

        // "If no reason to return to userland, keep rolling": a signal or
        // a stop that came during the run overrides the exit reason.
        if let Some(reason) = return_needed(v, comm) {
            e.reason = reason;
            // The exit is lost, but not the guest's instruction: the
            // kernel returns to userland without advancing RIP for exits
            // that userland completes, so the guest executes the
            // instruction again and takes the same exit on the next run.
            // (A HLT, which the kernel completes, is lost; see the
            // project's reference on nvmm_return_needed.)
            if takes_exit_again(scripted.reason) {
                v.script.push_front(ScriptedExit {
                    exit: scripted,
                    guest: None,
                    signal: false,
                });
            }
        }
        fill_exitstate(backend, &mut e, v);
        Ok(RunEnd::Full(e))
    }
}

/// Exits that userland completes (it emulates the instruction and moves
/// RIP to `npc`): the backends' exit handlers (`svm_exit_io`,
/// `svm_exit_npf`, `svm_exit_msr`, `svm_exit_cpuid` with a CPUID exit
/// configured, `svm_exit_insn`, and their VMX twins) leave RIP on the
/// instruction, so one whose exit a stop or signal replaced runs again.
fn takes_exit_again(reason: u64) -> bool {
    matches!(
        reason,
        sys::NVMM_VCPU_EXIT_IO
            | sys::NVMM_VCPU_EXIT_MEMORY
            | sys::NVMM_VCPU_EXIT_RDMSR
            | sys::NVMM_VCPU_EXIT_WRMSR
            | sys::NVMM_VCPU_EXIT_CPUID
            | sys::NVMM_VCPU_EXIT_MONITOR
            | sys::NVMM_VCPU_EXIT_MWAIT
    )
}

/// The end of `*_vcpu_run`: RFLAGS, CR8 and the interrupt state.
fn fill_exitstate(backend: Backend, e: &mut sys::nvmm_x86_exit, v: &VcpuModel) {
    e.exitstate.rflags = v.hw.gprs[sys::NVMM_X64_GPR_RFLAGS];
    e.exitstate.cr8 = match backend {
        Backend::Svm => v.hw.crs[sys::NVMM_X64_CR_CR8] & 0xF,
        Backend::Vmx => v.hw.crs[sys::NVMM_X64_CR_CR8],
    };
    // SAFETY: both bitfield structs are one u64 (intr) / the third u64 of
    // exitstate.
    unsafe {
        let bits = (&raw const v.hw.intr).cast::<u64>().read() & 0xF;
        (&raw mut e.exitstate).cast::<u64>().add(2).write(bits);
    }
}

/// VCPU_CONFIGURE (svm_vcpu_configure / vmx_vcpu_configure): CPUID mask
/// and exit (EINVAL for both, or for set/del overlap; neither bit deletes
/// the leaf; ENOBUFS past `maxops` leaves) and TPR (EINVAL without the
/// capability, as on SVM).
///
/// # Safety
///
/// `a.conf` points to the structure of `a.op`.
pub unsafe fn configure(
    v: &mut VcpuModel,
    a: &sys::nvmm_ioc_vcpu_configure,
    maxops: usize,
    tpr_ok: bool,
) -> Result<(), i32> {
    match a.op {
        op if op == sys::NVMM_VCPU_CONF_CPUID => {
            // SAFETY: the caller's contract: `conf` points to the
            // structure of NVMM_VCPU_CONF_CPUID.
            let c = unsafe { *a.conf.cast::<sys::nvmm_vcpu_conf_cpuid>() };
            if c.mask() != 0 && c.exit() != 0 {
                return Err(libc::EINVAL);
            }
            if c.mask() != 0 {
                // SAFETY: the `mask` member is the one in use when the
                // mask bit is set; both members are plain integers.
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
            // SAFETY: the caller's contract: `conf` points to the
            // structure of NVMM_VCPU_CONF_TPR.
            let c = unsafe { *a.conf.cast::<sys::nvmm_vcpu_conf_tpr>() };
            v.tpr_exit = c.exit_changed() != 0;
            Ok(())
        }
        _ => Err(libc::EINVAL),
    }
}
