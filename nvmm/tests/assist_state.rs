//! The assist's view of the comm page beyond the general registers: the
//! XMM registers of an SSE move to MMIO (the FPU class, which a memory
//! exit does not provide), FS/GS overrides, and the FXSAVE view that
//! carries them. Against the kernel model; none of this was reached by
//! the other files (found by `cargo xtask coverage`).
#![cfg(feature = "assist")]

use std::sync::Arc;

use crate::assist::{Mmio, setup};
use crate::dyn_assist::AssistDyn;
use nvmm::model::{KernelModel, ScriptedExit};
use nvmm::{Error, Gpr, Machine, Op, Outcome, Seg, StateClasses, Vcpu};

/// The machine of `assist::setup` (64 KiB of RAM at 0, a real-mode VCPU
/// at CS:IP 0:0x1000), run once to the scripted memory exit of `bytes` at
/// `gpa` (a write if `write`).
fn at_memory_exit(gpa: u64, write: bool, bytes: &[u8]) -> (Arc<KernelModel>, Machine, Vcpu) {
    let (model, m, mut v) = setup();
    model.push_exit(m.id(), 0, ScriptedExit::memory(gpa, write, bytes));
    v.run().unwrap();
    (model, m, v)
}

const XMM1: u128 = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100;

/// `movdqa [0x0300], xmm1` (66 0F 7F /r, ModRM 0x0E: xmm1, disp16).
const MOVDQA_STORE: [u8; 6] = [0x66, 0x0F, 0x7F, 0x0E, 0x00, 0x03];
/// `movdqa xmm2, [0x0300]` (66 0F 6F /r, ModRM 0x16: xmm2, disp16).
const MOVDQA_LOAD: [u8; 6] = [0x66, 0x0F, 0x6F, 0x16, 0x00, 0x03];

/// With the FPU class fetched (one GETSTATE), an SSE store to MMIO takes
/// the register from the comm page and the load writes it there, marked
/// for commit: the next run gives the kernel the loaded value.
#[test]
fn sse_moves_to_mmio_use_the_fpu_class_of_the_comm_page() {
    let (model, m, mut v) = at_memory_exit(0xfee0_0300, true, &MOVDQA_STORE);
    let before = model.syscalls();
    v.fpu().unwrap().set_xmm(1, XMM1);
    assert_eq!(
        model.syscalls(),
        before + 1,
        "one GETSTATE for the FPU class"
    );
    let mut mmio = Mmio::default();
    assert_eq!(v.assist_mem_dyn(&mut mmio).unwrap(), Outcome::Done);
    assert_eq!(model.syscalls(), before + 1, "the assist makes no syscall");
    assert_eq!(
        mmio.writes,
        vec![(0xfee0_0300, XMM1.to_le_bytes().to_vec())]
    );
    assert_eq!(v.gprs().unwrap().rip(), 0x1006);

    m.write_guest(0x1006, &MOVDQA_LOAD).unwrap();
    // No bytes in the exit (as on Intel): the assist fetches them.
    model.push_exit(m.id(), 0, ScriptedExit::memory(0xfee0_0300, false, &[]));
    v.run().unwrap();
    // A run leaves the classes a memory exit provides cached, not FPU:
    // fetch it again.
    v.fetch(StateClasses::FPU).unwrap();
    mmio.value = 0xA5;
    assert_eq!(v.assist_mem_dyn(&mut mmio).unwrap(), Outcome::Done);
    assert_eq!(mmio.reads, vec![(0xfee0_0300, 16)]);
    assert!(v.pending_commit().contains(StateClasses::FPU));
    assert_eq!(v.fpu().unwrap().xmm(2), u128::from_le_bytes([0xA5; 16]));
    assert_eq!(v.fpu().unwrap().xmm(1), XMM1, "the source is unchanged");
    assert_eq!(v.gprs().unwrap().rip(), 0x100C);
    v.run().unwrap();
    let hw = model.hw_state(m.id(), 0);
    assert_eq!(hw.fpu.fx_xmm[2].xmm_bytes, [0xA5; 16]);
    assert_eq!(hw.fpu.fx_xmm[1].xmm_bytes, XMM1.to_le_bytes());
}

/// Without the FPU class the assist has no XMM register to offer: the SSE
/// move is reported unsupported, with no device access and no register
/// changed (nothing to commit).
#[test]
fn sse_moves_without_the_fpu_class_are_refused_with_no_change() {
    for (bytes, write) in [(MOVDQA_STORE, true), (MOVDQA_LOAD, false)] {
        let (_model, _m, mut v) = at_memory_exit(0xfee0_0300, write, &bytes);
        assert!(!v.cached().contains(StateClasses::FPU));
        let mut mmio = Mmio::default();
        let e = v.assist_mem_dyn(&mut mmio).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Assist {
                    op: Op::AssistMem,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(mmio.writes.is_empty() && mmio.reads.is_empty());
        assert_eq!(v.pending_commit(), StateClasses::empty());
        assert_eq!(v.gprs().unwrap().rip(), 0x1000);
    }
}

/// FS and GS overrides reach the assist through the comm page's segment
/// state: `mov fs:[0x0300], al` with FS.base 0x1010 is linear 0x1310, so an
/// exit at GPA page offset 0x310 matches it, and one at 0x300 (what DS,
/// base 0, would give) is inconsistent.
#[test]
fn fs_and_gs_overrides_take_their_base_from_the_comm_page() {
    for (prefix, seg) in [(0x64u8, Seg::Fs), (0x65, Seg::Gs)] {
        let bytes = [prefix, 0xA2, 0x00, 0x03];
        for (gpa, consistent) in [(0xfee0_0310, true), (0xfee0_0300, false)] {
            let (_model, _m, mut v) = at_memory_exit(gpa, true, &bytes);
            {
                let mut segs = v.segs().unwrap();
                let mut s = segs.get(seg);
                s.base = 0x1010;
                segs.set(seg, s);
            }
            v.gprs().unwrap().set(Gpr::Rax, 0x5A);
            let mut mmio = Mmio::default();
            let result = v.assist_mem_dyn(&mut mmio);
            if consistent {
                assert_eq!(result.unwrap(), Outcome::Done, "{seg:?}");
                assert_eq!(mmio.writes, vec![(gpa, vec![0x5A])], "{seg:?}");
                assert_eq!(v.gprs().unwrap().rip(), 0x1004);
            } else {
                assert!(result.is_err(), "{seg:?} at {gpa:#x}: {result:?}");
                assert!(mmio.writes.is_empty());
                assert_eq!(v.gprs().unwrap().rip(), 0x1000);
            }
        }
    }
}

/// The FXSAVE view puts each register where the FXSAVE layout has it
/// (SDM vol. 1 §10.5.1, table 10-2: FCW at 0, FSW at 2, the abridged FTW
/// at 4, FOP at 6, ST(i) at 32 + 16 i, XMM(i) at 160 + 16 i), reads back
/// what it wrote, marks FPU for commit, and the kernel gets it on the
/// next run.
#[test]
fn fpu_view_writes_the_fxsave_layout_and_commits_it() {
    let (model, m, mut v) = at_memory_exit(0xfee0_0300, true, &[0xA2, 0x00, 0x03]);
    let st3 = [1, 2, 3, 4, 5, 6, 7, 8, 0x34, 0x12];
    {
        let mut f = v.fpu().unwrap();
        f.set_fcw(0x037F);
        f.set_fsw(0x3800);
        f.set_ftw(0xF0);
        f.set_st(3, st3);
        // Index 11 is ST(3): the index is taken modulo 8.
        assert_eq!(f.st(11), st3);
        f.set_xmm(9, XMM1);
        assert_eq!((f.fcw(), f.fsw(), f.ftw()), (0x037F, 0x3800, 0xF0));
        assert_eq!(f.xmm(9 + 16), XMM1, "the index is taken modulo 16");
        let area = f.area();
        assert_eq!(area[0..2], 0x037F_u16.to_le_bytes());
        assert_eq!(area[2..4], 0x3800_u16.to_le_bytes());
        assert_eq!(area[4], 0xF0);
        assert_eq!(area[32 + 3 * 16..32 + 3 * 16 + 10], st3);
        assert_eq!(area[160 + 9 * 16..160 + 10 * 16], XMM1.to_le_bytes());
        assert_eq!(u16::from_le_bytes([area[6], area[7]]), f.fop());
    }
    assert!(v.pending_commit().contains(StateClasses::FPU));
    v.run().unwrap();
    let fpu = model.hw_state(m.id(), 0).fpu;
    assert_eq!((fpu.fx_cw, fpu.fx_sw, fpu.fx_tw), (0x037F, 0x3800, 0xF0));
    // (Copied out first: the register's struct is packed.)
    let (mantissa, exp_sign) = (
        fpu.fx_87_ac[3].r.f87_mantissa,
        fpu.fx_87_ac[3].r.f87_exp_sign,
    );
    assert_eq!((mantissa, exp_sign), (0x0807_0605_0403_0201, 0x1234));
    assert_eq!(fpu.fx_xmm[9].xmm_bytes, XMM1.to_le_bytes());
}
