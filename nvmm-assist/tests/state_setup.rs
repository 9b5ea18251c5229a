//! Setting up a guest state: the public `Registers` and `SegmentAttributes`
//! constructors give the modes they name, and an impossible control state
//! is refused with a typed error by every entry point, changing nothing.

use crate::support;
use crate::support::dyn_assist::{assist_io, assist_mem};

use nvmm_assist::{
    AccessType, CpuMode, CpuState, Error, Gpr, InconsistentState, IoExit, MemExit, Registers,
    Segment, SegmentAttributes, SegmentRegister, Vendor, translate,
};
use support::*;

#[test]
fn attribute_constructors_set_the_documented_fields() {
    // (attributes, type, S, DPL, P, L, D/B, G)
    let cases = [
        (
            SegmentAttributes::code64(),
            0xB,
            true,
            0,
            true,
            true,
            false,
            true,
        ),
        (
            SegmentAttributes::code32(),
            0xB,
            true,
            0,
            true,
            false,
            true,
            true,
        ),
        (
            SegmentAttributes::code16(),
            0xB,
            true,
            0,
            true,
            false,
            false,
            false,
        ),
        (
            SegmentAttributes::data32(),
            0x3,
            true,
            0,
            true,
            false,
            true,
            true,
        ),
        (
            SegmentAttributes::data16(),
            0x3,
            true,
            0,
            true,
            false,
            false,
            false,
        ),
        (
            SegmentAttributes::system(0x2),
            0x2,
            false,
            0,
            true,
            false,
            false,
            false,
        ),
    ];
    for (a, typ, s, dpl, p, l, db, g) in cases {
        assert_eq!(
            (
                a.typ(),
                a.s(),
                a.dpl(),
                a.present(),
                a.l(),
                a.db(),
                a.g(),
                a.avl()
            ),
            (typ, s, dpl, p, l, db, g, false),
            "{a:?}"
        );
        assert_eq!(a, SegmentAttributes::new(typ, s, dpl, p, false, l, db, g));
    }
    let a = SegmentAttributes::data32()
        .with_dpl(3)
        .with_type(SegmentAttributes::TYPE_DATA_READ_ONLY)
        .with_present(false)
        .with_avl(true)
        .with_granularity(false)
        .with_db(false)
        .with_long(true);
    assert_eq!(
        a,
        SegmentAttributes::new(1, true, 3, false, true, true, false, false)
    );
    // Each `with_*` changes only its field.
    assert_eq!(a.with_dpl(7).dpl(), 3, "masked to two bits");
    assert_eq!(SegmentAttributes::unusable(), SegmentAttributes(0));
    let r = SegmentRegister::real_mode(0xB800, false);
    assert_eq!((r.base, r.limit), (0xB_8000, 0xFFFF));
    let f = SegmentRegister::flat(0x23, SegmentAttributes::data32().with_dpl(3));
    assert_eq!((f.base, f.limit, f.selector), (0, 0xFFFF_FFFF, 0x23));
}

#[test]
fn register_constructors_give_their_modes() {
    for vendor in [Vendor::Intel, Vendor::Amd] {
        let reset = Registers::real_mode_reset(vendor);
        assert_eq!(CpuMode::try_of(&reset), Ok(CpuMode::Real));
        assert_eq!(reset.segment(Segment::Cs).base + reset.rip, 0xFFFF_FFF0);
        assert_eq!(reset.cr0, 0x6000_0010);
        assert_eq!(reset.vendor(), vendor);
        assert_eq!(
            CpuMode::try_of(&Registers::real_mode(vendor)),
            Ok(CpuMode::Real)
        );
        let p32 = Registers::flat_protected32(vendor);
        assert_eq!(CpuMode::try_of(&p32), Ok(CpuMode::Protected32));
        assert_eq!(p32.cpl(), 0);
        let lm = Registers::long_mode(vendor, 0x5000, 0x40_0000, 0x7000);
        assert_eq!(CpuMode::try_of(&lm), Ok(CpuMode::Long64));
        assert_eq!(
            (lm.cr3, lm.rip, lm.gpr(Gpr::Rsp), lm.cpl()),
            (0x5000, 0x40_0000, 0x7000, 0)
        );
        let cm = Registers::compat_mode(vendor, 0x5000, 0x1000, 0x2000);
        assert_eq!(CpuMode::try_of(&cm), Ok(CpuMode::Compat32));
        let user = lm.clone().at_cpl(3);
        assert_eq!(user.cpl(), 3);
        for s in user.segments {
            assert_eq!((s.attributes.dpl(), s.selector & 3), (3, 3));
        }
        assert_eq!(user.at_cpl(0), lm, "at_cpl(0) undoes at_cpl(3)");
    }
}

/// A 64-bit state whose control registers are then made impossible by
/// `spoil`; RIP points at an MMIO `mov eax, [rdi]`.
fn spoiled(spoil: impl Fn(&mut Registers)) -> (Registers, TestRam) {
    let mut ram = TestRam::new(0x40_0000).hole(0x30_0000, 0x30_1000);
    let mut pt = PageTables::new(Layout::Level4, 0x20_0000);
    // The first 4 MiB identity-mapped with two 2 MiB pages.
    pt.map(&mut ram, 0, 0, 2, pte::PWU);
    pt.map(&mut ram, 0x20_0000, 0x20_0000, 2, pte::PWU);
    let mut regs = Registers::long_mode(TEST_VENDOR, pt.cr3(), 0x1000, 0x8000);
    regs.gprs[Gpr::Rdi as usize] = 0x1_0030_0000;
    ram.put(0x1000, &[0x8B, 0x07]);
    spoil(&mut regs);
    (regs, ram)
}

/// Makes a consistent state impossible.
type Spoil = fn(&mut Registers);

#[test]
fn impossible_control_states_are_typed_errors_everywhere() {
    use InconsistentState::*;
    let cases: [(InconsistentState, Spoil); 7] = [
        // The issue's case: long mode with paging off must not be "64-bit
        // mode without paging" with addresses truncated to 32 bits.
        (LongModeWithoutPaging, |r| r.cr0 &= !(1 << 31)),
        (PagingWithoutProtection, |r| r.cr0 &= !1),
        (LongModeWithoutLme, |r| r.efer &= !(1 << 8)),
        (LmeWithoutLongMode, |r| r.efer &= !(1 << 10)),
        (LongModeWithoutPae, |r| r.cr4 &= !(1 << 5)),
        (Virtual8086InLongMode, |r| r.rflags |= 1 << 17),
        (LongModeSegmentLimits, |r| r.efer |= 1 << 13),
    ];
    for (want, spoil) in cases {
        let want = Err(Error::InconsistentState(want));
        let (mut regs, mut ram) = spoiled(spoil);
        let before = regs.clone();
        assert_eq!(CpuMode::try_of(&regs), want.map(|()| CpuMode::Long64));
        assert_eq!(
            translate(&regs, &mut ram, 0x1_0030_0000, AccessType::Read),
            want.map(|()| 0)
        );
        let mut mmio = RecordingMmio::default();
        let exit = MemExit {
            gpa: 0x30_0000,
            access: AccessType::Read,
            instruction: &[0x8B, 0x07],
        };
        assert_eq!(
            assist_mem(&mut regs, &mut ram, &mut mmio, &exit),
            want.map(|()| nvmm_assist::Outcome::Done)
        );
        let mut ports = RecordingPorts::default();
        let io = IoExit {
            port: 0x60,
            input: true,
            operand_size: 1,
            address_size: 8,
            rep: false,
            string: false,
            segment: None,
            npc: 0x1001,
        };
        assert_eq!(
            assist_io(&mut regs, &mut ram, &mut mmio, &mut ports, &io),
            want.map(|()| nvmm_assist::Outcome::Done)
        );
        assert_eq!(regs, before, "{want:?}: no register changed");
        assert!(mmio.log.is_empty() && ports.log.is_empty(), "{want:?}");
    }
    // The unspoiled state works: the load happens at the 64-bit address.
    let (mut regs, mut ram) = spoiled(|_| {});
    assert_eq!(
        translate(&regs, &mut ram, 0x1_0030_0000, AccessType::Read),
        Err(Error::Exception(nvmm_assist::Exception::PageFault {
            address: 0x1_0030_0000,
            code: 0
        })),
        "not mapped: a #PF at the full 64-bit address, never 0x300000"
    );
    regs.gprs[Gpr::Rdi as usize] = 0x30_0000;
    let mut mmio = RecordingMmio::default();
    let exit = MemExit {
        gpa: 0x30_0000,
        access: AccessType::Read,
        instruction: &[0x8B, 0x07],
    };
    assert_eq!(
        assist_mem(&mut regs, &mut ram, &mut mmio, &exit),
        Ok(nvmm_assist::Outcome::Done)
    );
    assert_eq!(mmio.log.len(), 1);
}

/// CS.L = 1 outside long mode is ignored by the CPU, not an error.
#[test]
fn cs_l_outside_long_mode_is_ignored() {
    let mut r = Registers::flat_protected32(Vendor::Amd);
    r.segments[Segment::Cs as usize].attributes = SegmentAttributes::code32().with_long(true);
    assert_eq!(CpuMode::try_of(&r), Ok(CpuMode::Protected32));
}
