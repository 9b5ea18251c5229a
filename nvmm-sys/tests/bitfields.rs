//! The bitfield accessors bindgen generates for the segment attributes, the
//! interrupt state, the exit state and the CPUID/TPR configurations: each
//! field is set on its own, read back, and found at the bit position the C
//! header gives it.

use nvmm_sys::*;

/// The first (at most 8) bytes of `value` as a little-endian integer: the
/// bitfield unit, which every structure checked here starts with.
fn raw_bits<T: Copy + Default>(value: &T) -> u64 {
    let mut bytes = [0u8; 8];
    let len = size_of::<T>().min(8);
    // SAFETY: `value` points to at least `len` initialised bytes (the structs
    // checked here are integers and bitfield units without padding in their
    // first 8 bytes), and `bytes` has room for them.
    unsafe {
        core::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), bytes.as_mut_ptr(), len);
    }
    u64::from_le_bytes(bytes)
}

/// Sets one field to all ones on a zeroed struct and checks the getter, the
/// raw bit position, truncation of an oversized value and clearing it.
macro_rules! check_field {
    ($ty:ty, $get:ident, $set:ident, offset $offset:expr, width $width:expr) => {{
        let max = (1u64 << $width) - 1;
        let mut v = <$ty>::default();
        v.$set(max as _);
        assert_eq!(
            v.$get() as u64,
            max,
            "{}::{} reads back",
            stringify!($ty),
            stringify!($get)
        );
        assert_eq!(
            raw_bits(&v),
            max << $offset,
            "{}::{} bit position",
            stringify!($ty),
            stringify!($get)
        );

        let mut v = <$ty>::default();
        v.$set((max + 1) as _);
        assert_eq!(
            v.$get() as u64,
            0,
            "{}::{} truncates",
            stringify!($ty),
            stringify!($get)
        );

        let mut v = <$ty>::default();
        v.$set(max as _);
        v.$set(0);
        assert_eq!(
            raw_bits(&v),
            0,
            "{}::{} clears",
            stringify!($ty),
            stringify!($get)
        );
    }};
}

#[test]
fn segment_attributes() {
    type Attrib = nvmm_x64_state_seg__bindgen_ty_1;
    check_field!(Attrib, type_, set_type, offset 0, width 4);
    check_field!(Attrib, s, set_s, offset 4, width 1);
    check_field!(Attrib, dpl, set_dpl, offset 5, width 2);
    check_field!(Attrib, p, set_p, offset 7, width 1);
    check_field!(Attrib, avl, set_avl, offset 8, width 1);
    check_field!(Attrib, l, set_l, offset 9, width 1);
    check_field!(Attrib, def, set_def, offset 10, width 1);
    check_field!(Attrib, g, set_g, offset 11, width 1);
    check_field!(Attrib, rsvd, set_rsvd, offset 12, width 4);

    // A 64-bit code segment: type 0xB, S, DPL 0, P, L, G.
    let mut seg = nvmm_x64_state_seg::default();
    seg.attrib.set_type(0xB);
    seg.attrib.set_s(1);
    seg.attrib.set_p(1);
    seg.attrib.set_l(1);
    seg.attrib.set_g(1);
    assert_eq!(raw_bits(&seg.attrib), 0x0A9B);
    assert_eq!(
        raw_bits(&Attrib {
            _bitfield_1: Attrib::new_bitfield_1(0xB, 1, 0, 1, 0, 1, 0, 1, 0),
            ..Default::default()
        }),
        0x0A9B
    );
    // Setting one field leaves its neighbours alone.
    seg.attrib.set_dpl(3);
    assert_eq!(
        (
            seg.attrib.type_(),
            seg.attrib.s(),
            seg.attrib.dpl(),
            seg.attrib.p()
        ),
        (0xB, 1, 3, 1)
    );
    assert_eq!(
        (
            seg.attrib.avl(),
            seg.attrib.l(),
            seg.attrib.def(),
            seg.attrib.g()
        ),
        (0, 1, 0, 1)
    );
}

#[test]
fn interrupt_state() {
    check_field!(nvmm_x64_state_intr, int_shadow, set_int_shadow, offset 0, width 1);
    check_field!(nvmm_x64_state_intr, int_window_exiting, set_int_window_exiting, offset 1, width 1);
    check_field!(nvmm_x64_state_intr, nmi_window_exiting, set_nmi_window_exiting, offset 2, width 1);
    check_field!(nvmm_x64_state_intr, evt_pending, set_evt_pending, offset 3, width 1);
    check_field!(nvmm_x64_state_intr, rsvd, set_rsvd, offset 4, width 60);

    let mut intr = nvmm_x64_state_intr::default();
    intr.set_int_shadow(1);
    intr.set_evt_pending(1);
    assert_eq!(raw_bits(&intr), 0b1001);
    let built = nvmm_x64_state_intr::new_bitfield_1(1, 0, 0, 1, 0);
    assert_eq!(
        raw_bits(&nvmm_x64_state_intr {
            _bitfield_1: built,
            ..Default::default()
        }),
        0b1001
    );
}

#[test]
fn exit_state() {
    type ExitState = nvmm_x86_exit__bindgen_ty_2;
    // rflags and cr8 come first; the bitfield unit follows them.
    let mut exit = nvmm_x86_exit::default();
    exit.exitstate.set_int_shadow(1);
    exit.exitstate.set_int_window_exiting(1);
    exit.exitstate.set_nmi_window_exiting(1);
    exit.exitstate.set_evt_pending(1);
    assert_eq!(raw_bits(&exit.exitstate._bitfield_1), 0b1111);
    exit.exitstate.set_nmi_window_exiting(0);
    assert_eq!(
        (
            exit.exitstate.int_shadow(),
            exit.exitstate.int_window_exiting(),
            exit.exitstate.nmi_window_exiting(),
            exit.exitstate.evt_pending(),
        ),
        (1, 1, 0, 1)
    );
    exit.exitstate.set_rsvd(0xABC);
    assert_eq!(exit.exitstate.rsvd(), 0xABC);
    assert_eq!(
        raw_bits(&exit.exitstate._bitfield_1),
        0xABC_u64 << 4 | 0b1011
    );
    assert_eq!(raw_bits(&ExitState::new_bitfield_1(0, 0, 0, 1, 0)), 0b1000);
}

#[test]
fn cpuid_configuration() {
    check_field!(nvmm_vcpu_conf_cpuid, mask, set_mask, offset 0, width 1);
    check_field!(nvmm_vcpu_conf_cpuid, exit, set_exit, offset 1, width 1);
    check_field!(nvmm_vcpu_conf_cpuid, rsvd, set_rsvd, offset 2, width 30);
}

#[test]
fn tpr_configuration() {
    check_field!(nvmm_vcpu_conf_tpr, exit_changed, set_exit_changed, offset 0, width 1);
    check_field!(nvmm_vcpu_conf_tpr, rsvd, set_rsvd, offset 1, width 31);
    let tpr = nvmm_vcpu_conf_tpr {
        _bitfield_1: nvmm_vcpu_conf_tpr::new_bitfield_1(1, 0),
        ..Default::default()
    };
    assert_eq!(tpr.exit_changed(), 1);
}
