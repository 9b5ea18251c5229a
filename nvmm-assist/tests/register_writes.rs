//! What the memory assist writes to RFLAGS, counted through a `CpuState`
//! whose `set_rflags` calls are recorded (a VMM's state may pay for each
//! write: a dirty-register cache, a hypervisor call on WHP or HVF).
//!
//! - A form that sets no flag (the moves, XCHG, MOVZX/MOVSX/MOVSXD,
//!   MOVNTI, CMOVcc/SETcc, PUSH/POP m, MOVS/STOS/LODS with and without
//!   REP, the SSE moves) writes RFLAGS only to clear RF: no call when RF
//!   is clear, and when it is set, RFLAGS afterwards is the old value
//!   without RF.
//! - A form that sets flags writes them (whatever path runs it), and its
//!   RFLAGS afterwards has RF clear.
//!
//! Each form in 64-bit mode (4-level paging) and, where it exists there, in
//! real mode: the lanes, the full fast path (prefixed forms) and the
//! string and stack lanes each retire some of them.

use crate::support;

use nvmm_assist::{
    AccessType, CpuState, Gpr, MemExit, Outcome, Registers, Segment, SegmentRegister, Vendor,
    assist_mem,
};
use support::memdev::{Guest, MMIO};

const RF: u64 = 1 << 16;

/// `Registers` with every `set_rflags` call counted.
struct Counting {
    regs: Registers,
    rflags_writes: usize,
}

impl CpuState for Counting {
    fn gpr(&self, reg: Gpr) -> u64 {
        self.regs.gpr(reg)
    }
    fn set_gpr(&mut self, reg: Gpr, value: u64) {
        self.regs.set_gpr(reg, value)
    }
    fn rip(&self) -> u64 {
        self.regs.rip()
    }
    fn set_rip(&mut self, value: u64) {
        self.regs.set_rip(value)
    }
    fn rflags(&self) -> u64 {
        self.regs.rflags()
    }
    fn set_rflags(&mut self, value: u64) {
        self.rflags_writes += 1;
        self.regs.set_rflags(value)
    }
    fn segment(&self, seg: Segment) -> SegmentRegister {
        self.regs.segment(seg)
    }
    fn cr0(&self) -> u64 {
        self.regs.cr0()
    }
    fn cr3(&self) -> u64 {
        self.regs.cr3()
    }
    fn cr4(&self) -> u64 {
        self.regs.cr4()
    }
    fn efer(&self) -> u64 {
        self.regs.efer()
    }
    fn xmm(&self, index: u8) -> Option<u128> {
        self.regs.xmm(index)
    }
    fn set_xmm(&mut self, index: u8, value: u128) {
        self.regs.set_xmm(index, value)
    }
    fn vendor(&self) -> Vendor {
        self.regs.vendor()
    }
    fn cpl(&self) -> u8 {
        self.regs.cpl()
    }
    fn max_phys_addr(&self) -> u8 {
        self.regs.max_phys_addr()
    }
}

/// The device operand, on the first MMIO page.
const TARGET: u64 = MMIO + 0x10;
/// A RAM operand (the other side of MOVS) and the stack.
const RAM_OPERAND: u64 = 0x4000;
const STACK: u64 = 0x6000;

/// Whether a form sets flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flags {
    Kept,
    Set,
}
use Flags::{Kept, Set};

/// Forms whose memory operand is [rdi] (64-bit mode) or [bx] (ModRM 07 in
/// 16-bit addressing), `[es:]di` or `[ds:]si` for the string forms, and
/// whether they exist in real mode.
const FORMS: &[(&[u8], Flags, bool)] = &[
    (&[0x88, 0x07], Kept, true),            // mov [m], al
    (&[0x89, 0x07], Kept, true),            // mov [m], eax / ax
    (&[0x8B, 0x07], Kept, true),            // mov eax, [m]
    (&[0xC6, 0x07, 0x5A], Kept, true),      // mov byte [m], imm8
    (&[0x66, 0x89, 0x07], Kept, true),      // operand-size prefix
    (&[0x3E, 0x89, 0x07], Kept, true),      // segment override
    (&[0x48, 0x89, 0x07], Kept, false),     // REX.W
    (&[0x0F, 0xB6, 0x07], Kept, true),      // movzx
    (&[0x0F, 0xBF, 0x07], Kept, true),      // movsx
    (&[0x48, 0x63, 0x07], Kept, false),     // movsxd
    (&[0x86, 0x07], Kept, true),            // xchg [m], al
    (&[0x87, 0x07], Kept, true),            // xchg [m], eax
    (&[0xF0, 0x87, 0x07], Kept, true),      // lock xchg
    (&[0x0F, 0xC3, 0x07], Kept, true),      // movnti
    (&[0x0F, 0x94, 0x07], Kept, true),      // sete [m]
    (&[0x0F, 0x44, 0x07], Kept, true),      // cmove eax, [m]
    (&[0xFF, 0x37], Kept, true),            // push [m]
    (&[0x8F, 0x07], Kept, true),            // pop [m]
    (&[0xA4], Kept, true),                  // movsb (RAM -> device)
    (&[0xAA], Kept, true),                  // stosb
    (&[0xAC], Kept, true),                  // lodsb (device)
    (&[0xF3, 0xA4], Kept, true),            // rep movsb
    (&[0xF3, 0xAA], Kept, true),            // rep stosb
    (&[0xF3, 0xAC], Kept, true),            // rep lodsb
    (&[0x0F, 0x29, 0x07], Kept, false),     // movaps [m], xmm0
    (&[0x01, 0x07], Set, true),             // add [m], eax
    (&[0x84, 0x07], Set, true),             // test [m], al
    (&[0xFF, 0x07], Set, true),             // inc [m]
    (&[0xF0, 0x0F, 0xC1, 0x07], Set, true), // lock xadd
    (&[0x0F, 0xB1, 0x07], Set, true),       // cmpxchg
    (&[0x0F, 0xAB, 0x07], Set, true),       // bts
    (&[0x66, 0x01, 0x07], Set, true),       // prefixed add
    (&[0xA6], Set, true),                   // cmpsb
    (&[0xAE], Set, true),                   // scasb
];

/// A guest of `long` (64-bit) or real mode with the operands set up.
fn guest(long: bool) -> Guest {
    let mut g = if long { Guest::long64() } else { Guest::real() };
    g.regs.gprs[7] = TARGET; // rdi
    g.regs.gprs[3] = TARGET; // rbx ([bx] in 16-bit addressing)
    g.regs.gprs[4] = STACK; // rsp
    g.regs.gprs[1] = 4; // rcx: the REP forms' count
    // A small rAX: BTS takes its bit offset from it.
    g.regs.gprs[0] = 0x5;
    g.ram.put(RAM_OPERAND, &[0x5A; 16]);
    g.regs.xmm = Some([0x0011_2233_4455_6677_8899_AABB_CCDD_EEFF; 16]);
    g
}

/// Runs `bytes` with RFLAGS `rflags` (the string forms' RAM side or
/// device side set for `bytes`); returns the outcome, the `set_rflags`
/// calls and the registers after.
fn run(
    long: bool,
    bytes: &[u8],
    rflags: u64,
) -> (Result<Outcome, nvmm_assist::Error>, usize, Registers) {
    let mut g = guest(long);
    // movsb reads [rsi] in RAM, lodsb and cmpsb read [rsi] on the device.
    g.regs.gprs[6] = match bytes {
        [0xA4] | [0xF3, 0xA4] => RAM_OPERAND,
        _ => TARGET,
    };
    if bytes == [0xA6] {
        g.regs.gprs[7] = RAM_OPERAND;
    }
    g.regs.rflags = rflags;
    let mut state = Counting {
        regs: g.regs.clone(),
        rflags_writes: 0,
    };
    let exit = MemExit {
        gpa: TARGET,
        access: AccessType::Read,
        instruction: bytes,
    };
    let r = assist_mem(&mut state, &mut g.ram, &mut g.mmio, &exit);
    (r, state.rflags_writes, state.regs)
}

#[test]
fn flagless_forms_write_rflags_only_to_clear_rf() {
    for long in [true, false] {
        for &(bytes, flags, in_real) in FORMS {
            if !long && !in_real {
                continue;
            }
            let what = format!("{bytes:02x?} in {}", if long { "64-bit" } else { "real" });
            for rf in [false, true] {
                // Some status flags set, so that an unchanged value is not
                // the reset value.
                let before = 0x2 | 0x8C1 | if rf { RF } else { 0 };
                let (r, writes, after) = run(long, bytes, before);
                assert_eq!(r, Ok(Outcome::Done), "{what}");
                assert_eq!(after.rflags & RF, 0, "{what}: RF cleared");
                match flags {
                    Kept => {
                        assert_eq!(after.rflags, before & !RF, "{what}: flags kept");
                        let want = usize::from(rf);
                        assert_eq!(writes, want, "{what}, RF {rf}: RFLAGS writes");
                    }
                    Set => {
                        // The flags are written (the fast path's tail stores
                        // them always, the general path when they change).
                        assert!(writes >= 1 || after.rflags == before, "{what}, RF {rf}");
                        if rf {
                            assert!(writes >= 1, "{what}: RF set and no RFLAGS write");
                        }
                    }
                }
            }
        }
    }
}
