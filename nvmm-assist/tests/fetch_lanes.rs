//! An exit without instruction bytes takes, after the fetch, exactly the
//! path an exit carrying those bytes takes (the lanes of the first bytes,
//! the full fast path, the general one): the same outcome, registers, RAM
//! and device accesses, in every mode, for the lanes' forms and near
//! misses, wherever the instruction lies against a page edge (before it,
//! ending on it, straddling it: the first fetch then stops at the edge and
//! the rest must be fetched as the general path does). An instruction that
//! crosses the CS limit faults without bytes, and changes nothing.

use crate::support;
use crate::support::dyn_assist::assist_mem;

use nvmm_assist::{
    AccessType, Error, Exception, Gpr, MemExit, Outcome, Registers, Segment, SegmentAttributes,
};
use support::TEST_VENDOR;
use support::memdev::{Guest, MMIO};

/// The modes: name, registers (RIP set per case), whether 16-bit
/// addressing, whether 64-bit mode.
fn modes() -> Vec<(&'static str, Guest, u8)> {
    let long = Guest::long64();
    let mut compat = Guest::long64();
    let cr3 = compat.regs.cr3;
    compat.regs = Registers::compat_mode(TEST_VENDOR, cr3, 0, 0);
    let mut prot32 = Guest::real();
    prot32.regs = Registers::flat_protected32(TEST_VENDOR);
    let mut prot16 = Guest::real();
    prot16.regs = Registers::flat_protected32(TEST_VENDOR);
    prot16.regs.segments[Segment::Cs as usize].attributes = SegmentAttributes::code16();
    vec![
        ("real", Guest::real(), 2),
        ("prot16", prot16, 2),
        ("prot32", prot32, 4),
        ("compat", compat, 4),
        ("64-bit", long, 8),
    ]
}

/// The operand addresses: [rbx]/[bx] at `MMIO + 0x10`, rDI (STOS) at
/// `+ 0x20`, rSI (LODS) at `+ 0x30`, the moffs forms at `+ 0x40`.
const M_BX: u64 = MMIO + 0x10;
const M_DI: u64 = MMIO + 0x20;
const M_SI: u64 = MMIO + 0x30;
const M_OFFS: u64 = MMIO + 0x40;

/// The forms of mode class `addr` (2, 4 or 8): bytes and the exit GPA.
fn forms(addr: u8) -> Vec<(Vec<u8>, u64)> {
    // ModRM of [rbx]/[ebx], and [bx] in 16-bit addressing; [rbx+disp] with
    // a displacement of the mode's width, 0.
    let (m, m_disp, disp): (u8, u8, &[u8]) = if addr == 2 {
        (0x07, 0x87, &[0, 0])
    } else {
        (0x03, 0x83, &[0, 0, 0, 0])
    };
    let imm_v: &[u8] = if addr == 2 {
        &[0x34, 0x12]
    } else {
        &[0x78, 0x56, 0x34, 0x12]
    };
    let moffs: Vec<u8> = M_OFFS.to_le_bytes()[..usize::from(addr)].to_vec();
    let cat = |parts: &[&[u8]]| parts.concat();
    let mut v = vec![
        (cat(&[&[0x89, m]]), M_BX),                        // mov [m], r
        (cat(&[&[0x88, m]]), M_BX),                        // mov [m], r8
        (cat(&[&[0x8B, m]]), M_BX),                        // mov r, [m]
        (cat(&[&[0x8A, m]]), M_BX),                        // mov r8, [m]
        (cat(&[&[0xC6, m, 0x5A]]), M_BX),                  // mov byte [m], imm8
        (cat(&[&[0xC7, m], imm_v]), M_BX),                 // mov [m], imm
        (cat(&[&[0x89, m_disp], disp]), M_BX),             // mov [m+disp], r
        (cat(&[&[0xC7, m_disp], disp, imm_v]), M_BX),      // mov [m+disp], imm
        (cat(&[&[0x0F, 0xB6, m]]), M_BX),                  // movzx r, byte [m]
        (cat(&[&[0x0F, 0xBF, m]]), M_BX),                  // movsx r, word [m]
        (cat(&[&[0xA1], &moffs]), M_OFFS),                 // mov rAX, [moffs]
        (cat(&[&[0xA2], &moffs]), M_OFFS),                 // mov [moffs], al
        (vec![0xAA], M_DI),                                // stosb
        (vec![0xAB], M_DI),                                // stosd/w
        (vec![0xAC], M_SI),                                // lodsb
        (vec![0xAD], M_SI),                                // lodsd/w
        (cat(&[&[0x66, 0x0F, 0x7F, m]]), M_BX),            // movdqa [m], xmm0
        (cat(&[&[0x66, 0x0F, 0x7F, m_disp], disp]), M_BX), // movdqa [m+disp], xmm0
        (cat(&[&[0x0F, 0x11, m]]), M_BX),                  // movups [m], xmm0
        (cat(&[&[0xF3, 0x0F, 0x6F, m]]), M_BX),            // movdqu xmm0, [m]
        // Near misses: no lane, the full fast path.
        (cat(&[&[0x66, 0x89, m]]), M_BX), // mov [m], r16/32
        (cat(&[&[0x01, m]]), M_BX),       // add [m], r
        (cat(&[&[0x83, m_disp], disp, &[1]]), M_BX), // add [m+disp], imm8
        (vec![0xF3, 0xAA], M_DI),         // rep stosb
    ];
    if addr == 8 {
        v.extend([
            (vec![0x48, 0x89, m], M_BX),                        // mov [m], r64
            (cat(&[&[0x48, 0xC7, m_disp], disp, imm_v]), M_BX), // mov qword [m+disp], imm32
            (vec![0x48, 0x0F, 0xBE, m], M_BX),                  // movsx r64, byte [m]
            (vec![0x44, 0x0F, 0x11, m], M_BX),                  // movups [m], xmm8
            (vec![0x41, 0xAA], M_DI),                           // stosb (REX: no lane)
        ]);
    }
    v
}

/// Sets the registers every form uses.
fn operands(g: &mut Guest) {
    let gprs = &mut g.regs.gprs;
    gprs[Gpr::Rax as usize] = 0x1122_3344_5566_7788;
    gprs[Gpr::Rcx as usize] = 3;
    gprs[Gpr::Rbx as usize] = M_BX;
    gprs[Gpr::Rdi as usize] = M_DI;
    gprs[Gpr::Rsi as usize] = M_SI;
    let mut xmm = [0u128; 16];
    xmm[0] = 0x0102_0304_0506_0708_090A_0B0C_0D0E_0F10;
    xmm[8] = 0x1112_1314_1516_1718_191A_1B1C_1D1E_1F20;
    g.regs.xmm = Some(xmm);
    for (i, b) in g.mmio.low.mem.iter_mut().enumerate() {
        *b = i as u8 ^ 0xA5;
    }
}

/// Runs `bytes` at `rip` in a copy of `base`, with the bytes in the exit
/// (`with_bytes`) or not; the bytes are in guest RAM at RIP either way.
fn run(
    base: &Guest,
    bytes: &[u8],
    gpa: u64,
    rip: u64,
    with_bytes: bool,
) -> (Guest, Result<Outcome, Error>) {
    let mut g = base.clone();
    g.regs.rip = rip;
    g.ram.put(rip, bytes);
    let exit = MemExit {
        gpa,
        access: AccessType::Write,
        instruction: if with_bytes { bytes } else { &[] },
    };
    let r = assist_mem(&mut g.regs, &mut g.ram, &mut g.mmio, &exit);
    (g, r)
}

#[test]
fn fetched_lane_forms_agree_with_the_exit_bytes_at_and_across_a_page_edge() {
    // The code page's end: 0x3000 (the next page is RAM, mapped).
    let edge = 0x3000;
    let mut cases = 0;
    for (name, mut base, addr) in modes() {
        operands(&mut base);
        for (bytes, gpa) in forms(addr) {
            let len = bytes.len() as u64;
            // Well inside the page, ending on the edge, and straddling it
            // at every split.
            let rips = [edge - 0x100, edge - len]
                .into_iter()
                .chain((1..len).map(|k| edge - k));
            for rip in rips {
                let (a, ra) = run(&base, &bytes, gpa, rip, true);
                let (b, rb) = run(&base, &bytes, gpa, rip, false);
                let what = format!("{name} {bytes:02x?} at {rip:#x}");
                assert!(ra.is_ok(), "{what}: {ra:?}");
                assert_eq!(rb, ra, "{what}");
                assert_eq!(b.regs, a.regs, "{what}");
                assert_eq!(b.mmio.low.log, a.mmio.low.log, "{what}");
                assert_eq!(b.mmio.low.mem, a.mmio.low.mem, "{what}");
                assert_eq!(b.regs.rip, rip + len, "{what}");
                cases += 1;
            }
        }
    }
    assert!(cases > 500, "{cases}");
}

#[test]
fn a_fetched_lane_form_across_the_cs_limit_faults_and_changes_nothing() {
    for (name, mut base, addr) in modes() {
        if addr == 8 {
            continue; // No CS limit in 64-bit mode.
        }
        operands(&mut base);
        let limit = 0x2FFFu32;
        base.regs.segments[Segment::Cs as usize].limit = limit;
        for (bytes, gpa) in forms(addr) {
            let len = bytes.len() as u64;
            let end = u64::from(limit) + 1;
            // Ending at the limit: as with the bytes in the exit.
            let (a, ra) = run(&base, &bytes, gpa, end - len, true);
            let (b, rb) = run(&base, &bytes, gpa, end - len, false);
            assert_eq!(rb, ra, "{name} {bytes:02x?}");
            assert_eq!(b.regs, a.regs, "{name} {bytes:02x?}");
            assert_eq!(b.mmio.low.log, a.mmio.low.log, "{name} {bytes:02x?}");
            // Crossing it: #GP(0), nothing done.
            for k in 1..len {
                let rip = end - k;
                let (b, rb) = run(&base, &bytes, gpa, rip, false);
                let what = format!("{name} {bytes:02x?} at {rip:#x}");
                assert_eq!(
                    rb,
                    Err(Error::Exception(Exception::GeneralProtection(0))),
                    "{what}"
                );
                let mut before = base.regs.clone();
                before.rip = rip;
                assert_eq!(b.regs, before, "{what}");
                assert!(b.mmio.low.log.is_empty(), "{what}");
            }
        }
    }
}

#[test]
fn fetched_forms_in_a_rare_or_inconsistent_control_state_agree_with_the_exit_bytes() {
    // EFER.LME set with paging off (the step before a guest enters long
    // mode) is consistent but outside the entry's two common shapes: an
    // exit without bytes then takes the general path, as one with bytes
    // does, and must do the same.
    const EFER_LME: u64 = 1 << 8;
    let mut cases = 0;
    for (name, mut base, addr) in modes() {
        if addr == 8 || name == "compat" {
            continue; // Long mode needs paging on.
        }
        operands(&mut base);
        base.regs.efer |= EFER_LME;
        for (bytes, gpa) in forms(addr) {
            let rip = 0x2F00;
            let (a, ra) = run(&base, &bytes, gpa, rip, true);
            let (b, rb) = run(&base, &bytes, gpa, rip, false);
            let what = format!("{name} with LME {bytes:02x?}");
            assert!(ra.is_ok(), "{what}: {ra:?}");
            assert_eq!(rb, ra, "{what}");
            assert_eq!(b.regs, a.regs, "{what}");
            assert_eq!(b.mmio.low.log, a.mmio.low.log, "{what}");
            assert_eq!(b.mmio.low.mem, a.mmio.low.mem, "{what}");
            cases += 1;
        }
    }
    assert!(cases > 50, "{cases}");
    // An impossible one (CR0.PG without CR0.PE, and EFER.LMSLE): the same
    // error either way, before any fetch or access, and no register
    // changed.
    for (what, cr0, efer) in [("PG without PE", 1 << 31, 0), ("LMSLE", 0, 1 << 13)] {
        let (_, mut base, _) = modes().remove(0);
        operands(&mut base);
        base.regs.cr0 |= cr0;
        base.regs.efer |= efer;
        let (bytes, gpa) = forms(2).remove(0);
        let (a, ra) = run(&base, &bytes, gpa, 0x2F00, true);
        let (b, rb) = run(&base, &bytes, gpa, 0x2F00, false);
        assert!(
            matches!(ra, Err(Error::InconsistentState(_))),
            "{what}: {ra:?}"
        );
        assert_eq!(rb, ra, "{what}");
        assert_eq!(b.regs, a.regs, "{what}");
        assert_eq!(b.regs.rip, 0x2F00, "{what}");
        assert!(b.mmio.low.log.is_empty(), "{what}: {:?}", b.mmio.low.log);
    }
}
