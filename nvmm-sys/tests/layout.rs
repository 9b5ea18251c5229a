//! The sizes and offsets that the kernel ABI fixes, stated independently of
//! the generated layout asserts (which check every field at compile time).

use core::mem::{align_of, offset_of, size_of};
use nvmm_sys::*;

#[test]
fn the_shared_structures_have_the_netbsd_amd64_sizes() {
    assert_eq!(size_of::<nvmm_comm_page>(), 1072);
    assert_eq!(size_of::<nvmm_x64_state>(), 1008);
    assert_eq!(size_of::<nvmm_x86_exit>(), 64);
    assert_eq!(size_of::<nvmm_x86_event>(), 16);
    assert_eq!(size_of::<nvmm_x64_state_seg>(), 16);
    assert_eq!(size_of::<nvmm_capability>(), 104);
    assert_eq!(size_of::<nvmm_vcpu_conf_cpuid>(), 40);
    assert_eq!(size_of::<nvmm_ioc_vcpu_run>(), 72);
    assert_eq!(align_of::<nvmm_comm_page>(), 16);
}

#[test]
fn the_comm_page_fields_sit_where_the_kernel_writes_them() {
    assert_eq!(offset_of!(nvmm_comm_page, state_wanted), 0);
    assert_eq!(offset_of!(nvmm_comm_page, state_cached), 8);
    assert_eq!(offset_of!(nvmm_comm_page, state_commit), 16);
    assert_eq!(offset_of!(nvmm_comm_page, state), 32);
    assert_eq!(offset_of!(nvmm_comm_page, event_commit), 1040);
    assert_eq!(offset_of!(nvmm_comm_page, event), 1048);
    assert_eq!(offset_of!(nvmm_comm_page, stop), 1064);
    // The page is mapped with 4096 bytes; the structure must fit in it.
    assert!(size_of::<nvmm_comm_page>() <= 4096);
}

#[test]
fn the_state_arrays_are_indexed_by_the_header_constants() {
    let state = nvmm_x64_state::default();
    assert_eq!(state.segs.len(), NVMM_X64_NSEG);
    assert_eq!(state.gprs.len(), NVMM_X64_NGPR);
    assert_eq!(state.crs.len(), NVMM_X64_NCR);
    assert_eq!(state.drs.len(), NVMM_X64_NDR);
    assert_eq!(state.msrs.len(), NVMM_X64_NMSR);
    assert_eq!(offset_of!(nvmm_x64_state, gprs), 160);
    assert_eq!(offset_of!(nvmm_x64_state, fpu), 496);
    assert_eq!(size_of::<fxsave>(), 512);
}

#[test]
fn the_header_alias_macros_are_type_aliases() {
    assert_eq!(size_of::<nvmm_vcpu_exit>(), size_of::<nvmm_x86_exit>());
    let exit: nvmm_vcpu_exit = nvmm_x86_exit {
        reason: NVMM_VCPU_EXIT_HALTED,
        ..Default::default()
    };
    assert_eq!(exit.reason, 0x1003);
    let event: nvmm_vcpu_event = nvmm_x86_event::default();
    assert_eq!(event.type_, NVMM_VCPU_EVENT_EXCP);
    let state: nvmm_vcpu_state = nvmm_x64_state::default();
    assert_eq!(state.gprs[NVMM_X64_GPR_RIP], 0);
}

#[test]
fn the_exit_union_members_overlap_at_offset_8() {
    assert_eq!(offset_of!(nvmm_x86_exit, u), 8);
    assert_eq!(offset_of!(nvmm_x86_exit, exitstate), 40);
    assert_eq!(offset_of!(nvmm_x86_exit_memory, inst_bytes), 17);
    assert_eq!(offset_of!(nvmm_x86_exit_io, npc), 16);
}

#[test]
fn constants_have_the_header_values() {
    assert_eq!(NVMM_KERN_VERSION, 2);
    assert_eq!(NVMM_VCPU_EXIT_STOPPED, 0xFFFF_FFFF_FFFF_FFFE);
    assert_eq!(NVMM_VCPU_EXIT_INVALID, u64::MAX);
    assert_eq!(NVMM_X64_STATE_ALL, 0x7F);
    assert_eq!(NVMM_VCPU_CONF_CPUID, 200);
    assert_eq!(NVMM_VCPU_CONF_TPR, 201);
    assert_eq!(NVMM_CAP_ARCH_VCPU_CONF_CPUID, 1);
    assert_eq!(NVMM_CAP_ARCH_VCPU_CONF_TPR, 2);
    assert_eq!(NVMM_X64_GPR_RFLAGS, 17);
    assert_eq!(NVMM_X64_MSR_TSC, 10);
}
