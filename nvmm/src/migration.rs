//! Coming from libnvmm: every libnvmm function, its nvmm-rs counterpart,
//! and every semantic difference.
//!
//! Kernel behaviour cited here comes from NetBSD's sources
//! (`sys/dev/nvmm/nvmm.c`, `nvmm_internal.h`, `x86/nvmm_x86.c`,
//! `x86/nvmm_x86_svm.c`, `x86/nvmm_x86_vmx.c`, `lib/libnvmm/libnvmm.c`,
//! `libnvmm_x86.c`), read for this crate; the crate's tests check it
//! against an in-process model of those rules, not against a NetBSD kernel.
//!
//! # Function by function
//!
//! | libnvmm | nvmm-rs | differences |
//! |---|---|---|
//! | `nvmm_init()` | [`Nvmm::open`] | No process-global descriptor: each [`Nvmm`] owns one (`O_RDONLY\|O_CLOEXEC`), and everything created from it keeps it open (it is closed when the last [`Machine`]/[`Vcpu`] of it is gone, since closing it destroys its machines). Version mismatch is [`Error::VersionMismatch`] naming both versions, not `EPROGMISMATCH`; no NVMM is [`Error::NotAvailable`]. |
//! | `nvmm_root_init()` | [`Nvmm::open_root`] | As above with `O_WRONLY`. Every root descriptor is the kernel's one root owner: dropping *any* of them (with all its machines) makes the kernel destroy every machine created through *any* root descriptor, and [`MachineInfo::pid`] is 0 for them. |
//! | `nvmm_capability()` | [`Nvmm::capability`] | Read once at open; typed ([`Capability`]), no syscall afterwards. |
//! | `nvmm_machine_create()` | [`Nvmm::create_machine`] | Returns an RAII [`Machine`]; nothing leaks when the ioctl fails. |
//! | `nvmm_machine_destroy()` | `drop(Machine)` | Destroys only when the machine and all its [`Vcpu`]s are gone (each holds it); a failed destroy goes to [`set_teardown_error_hook`] and the guest memory is leaked rather than freed under a guest. |
//! | `nvmm_machine_configure()` | [`Machine::configure`], [`Machine::configure_raw`] (`unsafe`) | x86 has no operation: [`MachineConf`] is empty; the raw form passes any op through (the kernel answers `EINVAL`). |
//! | `nvmm_vcpu_create()` | [`Machine::create_vcpu`] | Ids outside `0..max_vcpus` are refused before the ioctl. If the comm-page `mmap` fails the VCPU is destroyed again (libnvmm leaks it). No separately allocated exit buffer: [`Vcpu::run`] returns a typed [`Exit`] borrowing the VCPU. |
//! | `nvmm_vcpu_destroy()` | `drop(Vcpu)` | `VCPU_DESTROY` then `munmap` of the comm page, which waits for the last [`VcpuStopper`] of it. |
//! | `nvmm_vcpu_configure(NVMM_VCPU_CONF_CALLBACKS)` | none | The assists take the device buses as arguments ([`Vcpu::assist_io`], [`Vcpu::assist_mem`]); nothing to register. |
//! | `nvmm_vcpu_configure(NVMM_VCPU_CONF_CPUID)` | [`Vcpu::configure_cpuid`] with [`CpuidConf`] | Typed: mask and exit cannot both be set; set/del overlap, the capability bit and the `conf_cpuid_maxops` limit are checked before the ioctl. |
//! | `nvmm_vcpu_configure(NVMM_VCPU_CONF_TPR)` | [`Vcpu::configure_tpr`] | Refused before the ioctl when the capability lacks it (SVM). |
//! | `nvmm_vcpu_getstate()` | [`Vcpu::fetch`], and the views [`Vcpu::gprs`], [`Vcpu::segs`], [`Vcpu::crs`], [`Vcpu::drs`], [`Vcpu::msrs`], [`Vcpu::intr`], [`Vcpu::fpu`] | Same cache rule (no syscall when cached). The views read the comm page in place, typed. |
//! | `nvmm_vcpu_setstate()` | the views' setters | Same (no syscall; the next run commits), but each setter marks only its own class, so writing a register cannot forget the flag. FPU writes first give a zero `fx_mxcsr_mask` the value [`DEFAULT_MXCSR_MASK`], so the MXCSR written is the one committed (libnvmm commits MXCSR 0 after the reset state, whose mask is 0). |
//! | `nvmm_vcpu_inject()` | [`Vcpu::inject`] with [`Event`] | Exception vectors the kernel would refuse (0, 2, 3, >= 32) are refused at once instead of failing the next run with `EINVAL`. [`Vcpu::event_pending`] tells whether it is still queued. |
//! | `nvmm_vcpu_run()` | [`Vcpu::run`] | Same zeroing of the exit first. Returns a typed [`Exit`]; the exit stays readable with [`Vcpu::last_exit`] and [`Vcpu::exit_state`]. Early returns (stop or signal before the guest runs) commit nothing and keep the event, as in libnvmm. |
//! | `nvmm_vcpu_stop()` | [`VcpuStopper::stop`] ([`Vcpu::stopper`]), and [`StopRequest`] | Same store, from a `Clone + Send + Sync` handle that keeps the page mapped. [`StopRequest`] adds the VMM-side flag a VMM needs because the kernel clears `stop` at the end of every run (see [`Vcpu::run`]). |
//! | `nvmm_vcpu_dump()` | [`Vcpu::dump`] | Returns a [`StateDump`] to print with `{:?}` instead of printing to stdout. |
//! | `nvmm_hva_map()` | [`Machine::hva_map`] (allocates) or [`Machine::hva_map_raw`] (`unsafe`, caller's memory) | The safe form allocates the memory itself, so nothing else can hold references into the range the kernel replaces. Overlapping host ranges are refused (the kernel accepts one wholly inside another). |
//! | `nvmm_hva_unmap()` | [`Machine::hva_unmap`] | Refused while a guest area still uses the range (the kernel allows it). Takes the [`HostMapping`] by value. |
//! | `nvmm_gpa_map()` | [`Machine::gpa_map`] with [`Prot`] | Takes a [`HostMapping`] and an offset into it; size, alignment, overflow, "inside one registered host mapping" and "no overlap with an existing guest area" are checked first (the kernel would replace the overlapped part); the guest-physical limit is left to the kernel (`EINVAL`). The area is recorded only after the ioctl succeeds; a failure is an error, never `abort()`. |
//! | `nvmm_gpa_unmap()` | [`Machine::gpa_unmap`] | Takes `(gpa, size)` of exactly one mapped area (libnvmm: exact `(hva, gpa, size)`, else `ESRCH`; here [`Rejection::NoSuchMapping`]). The area is removed only after the ioctl succeeds; failure is an error, never `abort()`. As in the kernel, an area ending exactly at the guest-physical limit cannot be unmapped (`EINVAL`); it goes with the machine. |
//! | `nvmm_gva_to_gpa()` | [`Vcpu::gva_to_gpa`] (feature `assist`) | Same: CRS\|MSRS fetched, read-only walk, GPA and rights ([`GvaTranslation`]: `prot` plus `user` for `NVMM_PROT_USER`), paging off returns the address unchanged. The walk is nvmm-assist's: reserved bits in entries fail it (libnvmm ignores them), XD counts only with EFER.NXE. Failure is [`Error::Assist`] (libnvmm: `EFAULT`). For the CPU's access-checked translation that sets A/D bits, use [`Vcpu::gva_to_gpa_checked`]. |
//! | `nvmm_gpa_to_hva()` | [`Machine::gpa_to_hva`] | Same lookup, returns a pointer and [`Prot`]; not found is [`Rejection::NotMapped`] (libnvmm: `ENOENT`). [`Machine::read_guest`]/[`Machine::write_guest`] copy without raw pointers. |
//! | `nvmm_assist_io()` | [`Vcpu::assist_io`] (feature `assist`) | Devices are the [`nvmm_assist::PortIo`]/[`nvmm_assist::MmioBus`] arguments and may return errors; faults come back as values to inject, and a failed emulation changes no register. REP string forms may end in [`Outcome::Resume`] (a bounded batch done). |
//! | `nvmm_assist_mem()` | [`Vcpu::assist_mem`] (feature `assist`) | As above; SSE moves need FPU fetched first. |
//! | `nvmm_ctl(NVMM_CTL_MACH_INFO)` | [`Nvmm::machine_info`] | Typed [`MachineInfo`]. `nram` is the sum of the machine's host mappings (not guest-mapped bytes); `pid` is 0 for root-owned machines. |
//!
//! # Where nvmm-rs is stricter than the kernel or libnvmm
//!
//! Each of these is kept because the permissive behaviour loses data or
//! lets guest memory be freed or replaced under a running guest:
//! - **Overlapping host mappings** are refused ([`Rejection::HvaOverlap`]);
//!   the kernel accepts a range wholly inside an existing one and replaces
//!   its pages with zeroes (nvmm.c `nvmm_hmapping_validate`, `nvmm_hva_map`).
//! - **Unmapping a host range still mapped into the guest** is refused
//!   ([`Rejection::HostMappingInUse`]); the kernel allows it.
//! - **Overlapping guest mappings** are refused ([`Rejection::GpaOverlap`]);
//!   the kernel replaces the overlapped part (`UVM_FLAG_UNMAP`).
//! - **Order of gpa_map/gpa_unmap**: the area list changes only after the
//!   kernel accepted; libnvmm changes it first and `abort()`s on failure.
//! - **VCPU ids** outside `0..min(max_vcpus, 256)` are refused before the
//!   ioctl, which also keeps `NVMM_COMM_OFF` (8 bits of the id) exact.
//! - **Events**: invalid exception vectors are refused at `inject`.
//! - **CPUID configuration**: contradictory or excess configurations are
//!   refused before the ioctl.
//! - **Teardown order** is enforced by ownership: a machine outlives its
//!   VCPUs, the descriptor outlives its machines.
//!
//! # Kernel behaviour to know (documented where it applies)
//!
//! - Stop and signals: [`Vcpu::run`], [`VcpuStopper`], [`StopRequest`].
//! - CPUID exits arrive with RAX-RDX already holding the kernel's answer:
//!   [`Exit::Cpuid`], [`CpuidConf::Exit`].
//! - MXCSR and the zero `fx_mxcsr_mask` of the reset state: [`Fpu::mxcsr`].
//! - `MachineInfo` fields: [`MachineInfo`].

#[allow(unused_imports)]
use crate::{
    Capability, CpuidConf, DEFAULT_MXCSR_MASK, Error, Event, Exit, Fpu, HostMapping, Machine,
    MachineConf, MachineInfo, Nvmm, Prot, Rejection, StateDump, StopRequest, Vcpu, VcpuStopper,
    set_teardown_error_hook,
};
#[cfg(feature = "assist")]
#[allow(unused_imports)]
use crate::{GvaTranslation, Outcome, nvmm_assist};
