//! Generates 64-bit instruction encodings with a memory operand that lands
//! on a chosen linear address, and the accesses the instruction must make.
//!
//! The generator encodes bytes itself (legacy prefixes in random order, REX,
//! opcode, ModRM, SIB, displacement, immediate) from a table of forms; the
//! host CPU supplies the semantics, the table supplies only what the oracle
//! needs to check the access sequence: the memory size and access class.
#![allow(dead_code)]

/// The tests' deterministic generator (`src/test_rng.rs`, which the
/// including crate loads once, beside this module), so every failure is
/// reproducible from the printed seed.
pub use super::Rng;

/// Operand values for [`Rng`]: edge values more often than uniform
/// sampling would give them.
pub trait OperandValue {
    /// A value for an operand of `size` bytes.
    fn value(&mut self, size: u32) -> u64;
}

impl OperandValue for Rng {
    /// A value for an operand of `size` bytes: random or one of the edges
    /// (0, 1, sign bits, all ones, nibble and byte carries), sign- or
    /// zero-extended to 64 bits with random upper bits now and then.
    fn value(&mut self, size: u32) -> u64 {
        let bits = size * 8;
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let sign = 1u64 << (bits - 1);
        let edges = [
            0,
            1,
            2,
            sign,
            sign - 1,
            sign + 1,
            mask,
            mask - 1,
            0x0f,
            0x10,
            0xff,
            0x100,
            0x0fff_ffff_ffff_ffff,
            0x7f7f_7f7f_7f7f_7f7f,
            0x8080_8080_8080_8080,
            0x0f0f_0f0f_0f0f_0f0f,
        ];
        let v = match self.below(4) {
            0 => self.pick(&edges),
            1 => self.next() & 0xff,
            _ => self.next(),
        };
        if self.chance(70) {
            (self.next() & !mask) | (v & mask)
        } else {
            v & mask
        }
    }
}

/// What the instruction does with its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Reads it.
    Read,
    /// Writes it.
    Write,
    /// Reads it, then writes it.
    Rmw,
    /// Reads it and writes it only if the comparison succeeds (CMPXCHG*;
    /// the CPU's locked cycle writes the old value back on failure, which an
    /// emulator may or may not do: both are accepted).
    CmpXchg,
    /// BT* with a register bit offset: the address moves with the offset.
    BtReg { write: bool },
    /// PUSH m: reads the operand, writes the stack.
    Push,
    /// POP m: reads the stack, writes the operand (addressed after RSP moves).
    Pop,
}

/// The ModRM.reg field of a form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegField {
    /// A GPR operand of the operation size.
    Gpr,
    /// A GPR operand of a fixed size (MOVZX/MOVSX destinations vary,
    /// the memory side is fixed).
    Xmm,
    /// An opcode extension.
    Ext(u8),
}

/// The immediate of a form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imm {
    None,
    /// 8 bits.
    Ib,
    /// 16 bits with a 16-bit operand, else 32 (sign-extended for 64).
    Iz,
}

/// Flags: the status flags (OF SF ZF AF PF CF).
pub const CF: u64 = 1;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const DF: u64 = 1 << 10;
pub const OF: u64 = 1 << 11;
pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// One instruction form.
#[derive(Clone, Copy, Debug)]
pub struct Form {
    pub group: &'static str,
    pub name: &'static str,
    /// A mandatory prefix (SSE), placed last among the legacy prefixes.
    pub mandatory: Option<u8>,
    pub opcode: &'static [u8],
    pub reg: RegField,
    /// Operation sizes the form takes: 1 (byte opcode), or a subset of
    /// 2/4/8 (by 66 and REX.W); 16 for SSE.
    pub sizes: &'static [u8],
    /// The memory access size, if it is not the operation size.
    pub mem_size: Option<u8>,
    pub imm: Imm,
    pub kind: Kind,
    pub lockable: bool,
    /// REX.W forced on (MOVQ, CMPXCHG16B, MOVSXD) or off.
    pub rex_w: Option<bool>,
    /// The memory operand must be aligned to this (else #GP natively).
    pub align: u64,
    /// Architecturally undefined flags (compared, but a difference is
    /// only counted, see the masking notes in oracle_host.rs).
    pub undefined: u64,
}

const B: &[u8] = &[1];
const WDQ: &[u8] = &[2, 4, 8];
const DQ: &[u8] = &[4, 8];
const X: &[u8] = &[16];

const fn f(
    group: &'static str,
    name: &'static str,
    opcode: &'static [u8],
    reg: RegField,
    sizes: &'static [u8],
    kind: Kind,
) -> Form {
    Form {
        group,
        name,
        mandatory: None,
        opcode,
        reg,
        sizes,
        mem_size: None,
        imm: Imm::None,
        kind,
        lockable: false,
        rex_w: None,
        align: 1,
        undefined: 0,
    }
}

const fn imm(mut x: Form, i: Imm) -> Form {
    x.imm = i;
    x
}
const fn lock(mut x: Form) -> Form {
    x.lockable = true;
    x
}
const fn memsz(mut x: Form, n: u8) -> Form {
    x.mem_size = Some(n);
    x
}
const fn undef(mut x: Form, u: u64) -> Form {
    x.undefined = u;
    x
}
const fn sse(mut x: Form, p: Option<u8>, align: u64, w: Option<bool>, mem: u8) -> Form {
    x.mandatory = p;
    x.align = align;
    x.rex_w = w;
    x.mem_size = Some(mem);
    x
}

use Kind::*;
use RegField::{Ext, Gpr};

/// The ALU forms of one operation (`op` 0-7: ADD OR ADC SBB AND SUB XOR CMP).
fn alu(out: &mut Vec<Form>, op: u8, name: &'static str) {
    let logic = matches!(op, 1 | 4 | 6);
    let u = if logic { AF } else { 0 };
    let (m, lk) = if op == 7 { (Read, false) } else { (Rmw, true) };
    let base: &'static [u8] =
        Box::leak(vec![op * 8, op * 8 + 1, op * 8 + 2, op * 8 + 3].into_boxed_slice());
    let set = |x: Form| if lk { lock(x) } else { x };
    out.push(undef(set(f("alu", name, &base[0..1], Gpr, B, m)), u));
    out.push(undef(set(f("alu", name, &base[1..2], Gpr, WDQ, m)), u));
    out.push(undef(f("alu", name, &base[2..3], Gpr, B, Read), u));
    out.push(undef(f("alu", name, &base[3..4], Gpr, WDQ, Read), u));
    out.push(undef(
        imm(set(f("alu", name, &[0x80], Ext(op), B, m)), Imm::Ib),
        u,
    ));
    out.push(undef(
        imm(set(f("alu", name, &[0x81], Ext(op), WDQ, m)), Imm::Iz),
        u,
    ));
    out.push(undef(
        imm(set(f("alu", name, &[0x83], Ext(op), WDQ, m)), Imm::Ib),
        u,
    ));
}

/// Every form with a ModRM memory operand that the assist is to emulate.
pub fn forms() -> Vec<Form> {
    let mut v = vec![
        f("mov", "mov m,r", &[0x88], Gpr, B, Write),
        f("mov", "mov m,r", &[0x89], Gpr, WDQ, Write),
        f("mov", "mov r,m", &[0x8A], Gpr, B, Read),
        f("mov", "mov r,m", &[0x8B], Gpr, WDQ, Read),
        imm(f("mov", "mov m,imm", &[0xC6], Ext(0), B, Write), Imm::Ib),
        imm(f("mov", "mov m,imm", &[0xC7], Ext(0), WDQ, Write), Imm::Iz),
        memsz(f("movx", "movzx r,m8", &[0x0F, 0xB6], Gpr, WDQ, Read), 1),
        memsz(f("movx", "movzx r,m16", &[0x0F, 0xB7], Gpr, WDQ, Read), 2),
        memsz(f("movx", "movsx r,m8", &[0x0F, 0xBE], Gpr, WDQ, Read), 1),
        memsz(f("movx", "movsx r,m16", &[0x0F, 0xBF], Gpr, WDQ, Read), 2),
        Form {
            rex_w: Some(true),
            ..memsz(f("movx", "movsxd r64,m32", &[0x63], Gpr, &[8], Read), 4)
        },
        f("test", "test m,r", &[0x84], Gpr, B, Read),
        f("test", "test m,r", &[0x85], Gpr, WDQ, Read),
        imm(
            f("test", "test m,imm /0", &[0xF6], Ext(0), B, Read),
            Imm::Ib,
        ),
        imm(
            f("test", "test m,imm /0", &[0xF7], Ext(0), WDQ, Read),
            Imm::Iz,
        ),
        imm(
            f("test", "test m,imm /1", &[0xF6], Ext(1), B, Read),
            Imm::Ib,
        ),
        imm(
            f("test", "test m,imm /1", &[0xF7], Ext(1), WDQ, Read),
            Imm::Iz,
        ),
        lock(f("incdec", "inc m", &[0xFE], Ext(0), B, Rmw)),
        lock(f("incdec", "inc m", &[0xFF], Ext(0), WDQ, Rmw)),
        lock(f("incdec", "dec m", &[0xFE], Ext(1), B, Rmw)),
        lock(f("incdec", "dec m", &[0xFF], Ext(1), WDQ, Rmw)),
        lock(f("negnot", "not m", &[0xF6], Ext(2), B, Rmw)),
        lock(f("negnot", "not m", &[0xF7], Ext(2), WDQ, Rmw)),
        lock(f("negnot", "neg m", &[0xF6], Ext(3), B, Rmw)),
        lock(f("negnot", "neg m", &[0xF7], Ext(3), WDQ, Rmw)),
        lock(f("xchg", "xchg m,r", &[0x86], Gpr, B, Rmw)),
        lock(f("xchg", "xchg m,r", &[0x87], Gpr, WDQ, Rmw)),
        lock(f("xadd", "xadd m,r", &[0x0F, 0xC0], Gpr, B, Rmw)),
        lock(f("xadd", "xadd m,r", &[0x0F, 0xC1], Gpr, WDQ, Rmw)),
        lock(f("cmpxchg", "cmpxchg m,r", &[0x0F, 0xB0], Gpr, B, CmpXchg)),
        lock(f(
            "cmpxchg",
            "cmpxchg m,r",
            &[0x0F, 0xB1],
            Gpr,
            WDQ,
            CmpXchg,
        )),
        Form {
            rex_w: Some(false),
            ..lock(memsz(
                f(
                    "cmpxchg",
                    "cmpxchg8b m64",
                    &[0x0F, 0xC7],
                    Ext(1),
                    &[4],
                    CmpXchg,
                ),
                8,
            ))
        },
        Form {
            rex_w: Some(true),
            align: 16,
            ..lock(memsz(
                f(
                    "cmpxchg",
                    "cmpxchg16b m128",
                    &[0x0F, 0xC7],
                    Ext(1),
                    &[8],
                    CmpXchg,
                ),
                16,
            ))
        },
        undef(
            f(
                "bt",
                "bt m,r",
                &[0x0F, 0xA3],
                Gpr,
                WDQ,
                BtReg { write: false },
            ),
            OF | SF | AF | PF,
        ),
        undef(
            lock(f(
                "bt",
                "bts m,r",
                &[0x0F, 0xAB],
                Gpr,
                WDQ,
                BtReg { write: true },
            )),
            OF | SF | AF | PF,
        ),
        undef(
            lock(f(
                "bt",
                "btr m,r",
                &[0x0F, 0xB3],
                Gpr,
                WDQ,
                BtReg { write: true },
            )),
            OF | SF | AF | PF,
        ),
        undef(
            lock(f(
                "bt",
                "btc m,r",
                &[0x0F, 0xBB],
                Gpr,
                WDQ,
                BtReg { write: true },
            )),
            OF | SF | AF | PF,
        ),
        undef(
            imm(
                f("bt", "bt m,imm", &[0x0F, 0xBA], Ext(4), WDQ, Read),
                Imm::Ib,
            ),
            OF | SF | AF | PF,
        ),
        undef(
            imm(
                lock(f("bt", "bts m,imm", &[0x0F, 0xBA], Ext(5), WDQ, Rmw)),
                Imm::Ib,
            ),
            OF | SF | AF | PF,
        ),
        undef(
            imm(
                lock(f("bt", "btr m,imm", &[0x0F, 0xBA], Ext(6), WDQ, Rmw)),
                Imm::Ib,
            ),
            OF | SF | AF | PF,
        ),
        undef(
            imm(
                lock(f("bt", "btc m,imm", &[0x0F, 0xBA], Ext(7), WDQ, Rmw)),
                Imm::Ib,
            ),
            OF | SF | AF | PF,
        ),
        memsz(f("pushpop", "push m", &[0xFF], Ext(6), &[2, 8], Push), 0),
        memsz(f("pushpop", "pop m", &[0x8F], Ext(0), &[2, 8], Pop), 0),
        Form {
            rex_w: Some(false),
            ..f("movnti", "movnti m32,r", &[0x0F, 0xC3], Gpr, &[4], Write)
        },
        Form {
            rex_w: Some(true),
            ..f("movnti", "movnti m64,r", &[0x0F, 0xC3], Gpr, &[8], Write)
        },
        sse(
            f("sse", "movd xmm,m32", &[0x0F, 0x6E], RegField::Xmm, X, Read),
            Some(0x66),
            1,
            Some(false),
            4,
        ),
        sse(
            f(
                "sse",
                "movq xmm,m64 (66 W 6E)",
                &[0x0F, 0x6E],
                RegField::Xmm,
                X,
                Read,
            ),
            Some(0x66),
            1,
            Some(true),
            8,
        ),
        sse(
            f(
                "sse",
                "movd m32,xmm",
                &[0x0F, 0x7E],
                RegField::Xmm,
                X,
                Write,
            ),
            Some(0x66),
            1,
            Some(false),
            4,
        ),
        sse(
            f(
                "sse",
                "movq m64,xmm (66 W 7E)",
                &[0x0F, 0x7E],
                RegField::Xmm,
                X,
                Write,
            ),
            Some(0x66),
            1,
            Some(true),
            8,
        ),
        sse(
            f(
                "sse",
                "movq xmm,m64 (F3 7E)",
                &[0x0F, 0x7E],
                RegField::Xmm,
                X,
                Read,
            ),
            Some(0xF3),
            1,
            None,
            8,
        ),
        sse(
            f(
                "sse",
                "movq m64,xmm (66 D6)",
                &[0x0F, 0xD6],
                RegField::Xmm,
                X,
                Write,
            ),
            Some(0x66),
            1,
            None,
            8,
        ),
        sse(
            f("sse", "movdqa xmm,m", &[0x0F, 0x6F], RegField::Xmm, X, Read),
            Some(0x66),
            16,
            None,
            16,
        ),
        sse(
            f(
                "sse",
                "movdqa m,xmm",
                &[0x0F, 0x7F],
                RegField::Xmm,
                X,
                Write,
            ),
            Some(0x66),
            16,
            None,
            16,
        ),
        sse(
            f("sse", "movdqu xmm,m", &[0x0F, 0x6F], RegField::Xmm, X, Read),
            Some(0xF3),
            1,
            None,
            16,
        ),
        sse(
            f(
                "sse",
                "movdqu m,xmm",
                &[0x0F, 0x7F],
                RegField::Xmm,
                X,
                Write,
            ),
            Some(0xF3),
            1,
            None,
            16,
        ),
        sse(
            f("sse", "movups xmm,m", &[0x0F, 0x10], RegField::Xmm, X, Read),
            None,
            1,
            None,
            16,
        ),
        sse(
            f(
                "sse",
                "movups m,xmm",
                &[0x0F, 0x11],
                RegField::Xmm,
                X,
                Write,
            ),
            None,
            1,
            None,
            16,
        ),
        sse(
            f("sse", "movupd xmm,m", &[0x0F, 0x10], RegField::Xmm, X, Read),
            Some(0x66),
            1,
            None,
            16,
        ),
        sse(
            f(
                "sse",
                "movupd m,xmm",
                &[0x0F, 0x11],
                RegField::Xmm,
                X,
                Write,
            ),
            Some(0x66),
            1,
            None,
            16,
        ),
        sse(
            f("sse", "movaps xmm,m", &[0x0F, 0x28], RegField::Xmm, X, Read),
            None,
            16,
            None,
            16,
        ),
        sse(
            f(
                "sse",
                "movaps m,xmm",
                &[0x0F, 0x29],
                RegField::Xmm,
                X,
                Write,
            ),
            None,
            16,
            None,
            16,
        ),
        sse(
            f("sse", "movapd xmm,m", &[0x0F, 0x28], RegField::Xmm, X, Read),
            Some(0x66),
            16,
            None,
            16,
        ),
        sse(
            f(
                "sse",
                "movapd m,xmm",
                &[0x0F, 0x29],
                RegField::Xmm,
                X,
                Write,
            ),
            Some(0x66),
            16,
            None,
            16,
        ),
        sse(
            f(
                "sse",
                "movntdq m,xmm",
                &[0x0F, 0xE7],
                RegField::Xmm,
                X,
                Write,
            ),
            Some(0x66),
            16,
            None,
            16,
        ),
        sse(
            f(
                "sse",
                "movntps m,xmm",
                &[0x0F, 0x2B],
                RegField::Xmm,
                X,
                Write,
            ),
            None,
            16,
            None,
            16,
        ),
        sse(
            f(
                "sse",
                "movntpd m,xmm",
                &[0x0F, 0x2B],
                RegField::Xmm,
                X,
                Write,
            ),
            Some(0x66),
            16,
            None,
            16,
        ),
    ];
    for (op, name) in ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"]
        .into_iter()
        .enumerate()
    {
        alu(&mut v, op as u8, name);
    }
    for cc in 0..16u8 {
        let o: &'static [u8] = Box::leak(vec![0x0F, 0x90 + cc].into_boxed_slice());
        v.push(f("setcc", "setcc m8", o, Ext(0), B, Write));
        let o: &'static [u8] = Box::leak(vec![0x0F, 0x40 + cc].into_boxed_slice());
        v.push(f("cmovcc", "cmovcc r,m", o, Gpr, WDQ, Read));
    }
    v
}

/// An expected device access: address, length, direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub addr: u64,
    pub len: u64,
    pub write: bool,
}

/// A memory operand encoding and the register values it needs.
#[derive(Clone, Debug, Default)]
pub struct MemEnc {
    pub modrm_mod: u8,
    pub rm: u8,
    pub sib: Option<u8>,
    pub disp: Vec<u8>,
    pub rex_x: bool,
    pub rex_b: bool,
    pub rip_rel: bool,
    /// (register, value) the addressing needs.
    pub regs: Vec<(u8, u64)>,
    pub shape: &'static str,
}

/// Picks a ModRM/SIB shape whose effective address, plus `seg_base`, is
/// `target`. `fixed` are registers whose value is given (RSP for PUSH/POP);
/// `avoid` registers must not take part. The RIP-relative displacement is
/// relative to 0 here and patched by the caller once the length is known
/// (`rip_rel` is then set and `disp` holds the target offset).
pub fn mem_operand(
    rng: &mut Rng,
    target: u64,
    seg_base: u64,
    addr32: bool,
    fixed: &[(u8, u64)],
    avoid: &[u8],
) -> Option<MemEnc> {
    mem_operand_in(rng, target, seg_base, addr32, true, fixed, avoid)
}

/// [`mem_operand`] for 32/64-bit addressing in any mode: outside 64-bit
/// mode (`mode64` false) only registers 0-7 are used, upper register halves
/// stay zero and ModRM 00/101 is an absolute disp32.
pub fn mem_operand_in(
    rng: &mut Rng,
    target: u64,
    seg_base: u64,
    addr32: bool,
    mode64: bool,
    fixed: &[(u8, u64)],
    avoid: &[u8],
) -> Option<MemEnc> {
    let mut avoid = avoid.to_vec();
    if !mode64 {
        avoid.extend(8..16u8);
    }
    let avoid = &avoid[..];
    let amask = if addr32 { 0xffff_ffffu64 } else { u64::MAX };
    let off = target.wrapping_sub(seg_base);
    if addr32 && off > 0xffff_ffff {
        return None;
    }
    let fixed_val = |r: u8| fixed.iter().find(|f| f.0 == r).map(|f| f.1);
    let free_reg = |rng: &mut Rng, no: &[u8]| -> u8 {
        loop {
            let r = rng.below(16) as u8;
            if !avoid.contains(&r) && !no.contains(&r) {
                return r;
            }
        }
    };
    // Outside 64-bit mode the upper register halves stay zero (the CPU
    // ignores them there, and what it leaves in them is undefined).
    let hi = |rng: &mut Rng, low: u64| -> u64 {
        if addr32 && mode64 {
            (rng.next() & !0xffff_ffff) | (low & 0xffff_ffff)
        } else if addr32 {
            low & 0xffff_ffff
        } else {
            low
        }
    };
    let disp_of = |rng: &mut Rng, kind: u8| -> i64 {
        match kind {
            0 => 0,
            1 => rng.below(256) as i64 - 128,
            _ => (rng.next() as i32 >> rng.below(24)) as i64,
        }
    };
    let mut m = MemEnc::default();
    match rng.below(9) {
        // [rip + disp32]
        0 if !mode64 => {
            m.shape = "d32";
            m.modrm_mod = 0;
            m.rm = 5;
            m.disp = (off as u32).to_le_bytes().to_vec();
        }
        0 => {
            if seg_base != 0 {
                return None;
            }
            m.shape = "rip+d32";
            m.modrm_mod = 0;
            m.rm = 5;
            m.rip_rel = true;
            m.disp = off.to_le_bytes().to_vec();
        }
        // [disp32] through SIB (no base, no index)
        1 => {
            if off > 0x7fff_ffff || (addr32 && off > 0xffff_ffff) {
                return None;
            }
            m.shape = "d32";
            m.modrm_mod = 0;
            m.rm = 4;
            m.sib = Some((rng.below(4) as u8) << 6 | 4 << 3 | 5);
            m.disp = (off as u32).to_le_bytes().to_vec();
        }
        // [index*scale + disp32]
        2 => {
            let idx = free_reg(rng, &[4]);
            let scale = rng.below(4) as u8;
            let s = 1u64 << scale;
            let (iv, d) = if let Some(v) = fixed_val(idx) {
                (v, off.wrapping_sub(v.wrapping_mul(s)) & amask)
            } else {
                let mut d = disp_of(rng, 2) as u64;
                d = d.wrapping_sub(off.wrapping_sub(d) % s);
                let iv = (off.wrapping_sub(d) & amask) / s;
                (iv, d)
            };
            // The disp32 is sign-extended (64-bit) or wraps (32-bit).
            let sd = d as i64;
            if !addr32 && (sd < i32::MIN as i64 || sd > i32::MAX as i64) {
                return None;
            }
            if iv.wrapping_mul(s).wrapping_add(d) & amask != off & amask {
                return None;
            }
            m.shape = "idx*s+d32";
            m.modrm_mod = 0;
            m.rm = 4;
            m.sib = Some(scale << 6 | (idx & 7) << 3 | 5);
            m.rex_x = idx >= 8;
            m.disp = (d as u32).to_le_bytes().to_vec();
            m.regs.push((
                idx,
                if fixed_val(idx).is_some() {
                    iv
                } else {
                    hi(rng, iv)
                },
            ));
        }
        // [base (+ index*scale) (+ disp8/disp32)], with or without SIB
        n => {
            let with_index = n >= 6;
            let force_sib = n == 5;
            let base = free_reg(rng, &[]);
            let dk = rng.below(3) as u8;
            // mod=00 with base low bits 101 means no base: use disp8 then.
            let dk = if dk == 0 && base & 7 == 5 { 1 } else { dk };
            let (idx, scale) = if with_index {
                let i = free_reg(rng, &[4, base]);
                (Some(i), rng.below(4) as u8)
            } else {
                (None, 0)
            };
            let iv = idx.map(|i| fixed_val(i).unwrap_or_else(|| rng.value(8) >> rng.below(64)));
            let scaled = iv.map_or(0, |v| v.wrapping_mul(1 << scale));
            let (bv, d) = if let Some(bv) = fixed_val(base) {
                let d = off.wrapping_sub(bv).wrapping_sub(scaled) & amask;
                let sd = if addr32 {
                    d as u32 as i32 as i64
                } else {
                    d as i64
                };
                let ok = match dk {
                    1 => (-128..128).contains(&sd),
                    _ => (i32::MIN as i64..=i32::MAX as i64).contains(&sd),
                };
                if !ok || dk == 0 && sd != 0 {
                    return None;
                }
                (bv, sd)
            } else {
                let d = disp_of(rng, dk);
                (off.wrapping_sub(scaled).wrapping_sub(d as u64) & amask, d)
            };
            m.shape = match (with_index || force_sib, dk) {
                (false, 0) => "base",
                (false, 1) => "base+d8",
                (false, _) => "base+d32",
                (true, 0) => "sib",
                (true, 1) => "sib+d8",
                (true, _) => "sib+d32",
            };
            m.modrm_mod = dk;
            m.rex_b = base >= 8;
            if with_index || force_sib || base & 7 == 4 {
                m.rm = 4;
                let (ibits, x) = match idx {
                    Some(i) => (i & 7, i >= 8),
                    None => (4, false),
                };
                m.sib = Some(scale << 6 | ibits << 3 | (base & 7));
                m.rex_x = x;
            } else {
                m.rm = base & 7;
            }
            m.disp = match dk {
                0 => vec![],
                1 => vec![d as i8 as u8],
                _ => (d as i32).to_le_bytes().to_vec(),
            };
            if fixed_val(base).is_none() {
                m.regs.push((base, hi(rng, bv)));
            }
            if let (Some(i), Some(v)) = (idx, iv)
                && fixed_val(i).is_none()
            {
                m.regs.push((i, hi(rng, v)));
            }
        }
    }
    Some(m)
}

/// Assembles an instruction: legacy prefixes (in the given order), the
/// mandatory prefix, REX (if `rex` has any bit or `force_rex`), opcode,
/// ModRM/SIB/disp and the immediate. RIP-relative displacements are
/// resolved against `insn_addr`.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    legacy: &[u8],
    mandatory: Option<u8>,
    rex_wr: (bool, bool),
    force_rex: bool,
    opcode: &[u8],
    reg: u8,
    mem: &MemEnc,
    immediate: &[u8],
    insn_addr: u64,
) -> Vec<u8> {
    let mut b = legacy.to_vec();
    b.extend(mandatory);
    let rex = 0x40
        | (rex_wr.0 as u8) << 3
        | (rex_wr.1 as u8) << 2
        | (mem.rex_x as u8) << 1
        | mem.rex_b as u8;
    if rex != 0x40 || force_rex {
        b.push(rex);
    }
    b.extend_from_slice(opcode);
    b.push(mem.modrm_mod << 6 | (reg & 7) << 3 | mem.rm);
    b.extend(mem.sib);
    let disp_at = b.len();
    if mem.rip_rel {
        b.extend_from_slice(&[0; 4]);
    } else {
        b.extend_from_slice(&mem.disp);
    }
    b.extend_from_slice(immediate);
    if mem.rip_rel {
        let target = u64::from_le_bytes(mem.disp[..8].try_into().expect("8"));
        let next = insn_addr + b.len() as u64;
        let d = target.wrapping_sub(next) as i64;
        assert!(
            d >= i32::MIN as i64 && d <= i32::MAX as i64,
            "rip-relative out of reach"
        );
        b[disp_at..disp_at + 4].copy_from_slice(&(d as i32).to_le_bytes());
    }
    b
}

/// A 16-bit ModRM memory operand (BX, BP, SI, DI) whose offset is `off`.
/// Returns the encoding and whether its default segment is SS.
pub fn mem_operand16(rng: &mut Rng, off: u16) -> (MemEnc, bool) {
    let mut m = MemEnc::default();
    let rm = rng.below(8) as u8;
    let md = if rm == 6 && rng.chance(30) {
        0
    } else {
        rng.below(3) as u8
    };
    m.modrm_mod = md;
    m.rm = rm;
    let disp: u16 = match md {
        0 => 0,
        1 => (rng.below(256) as i8) as i16 as u16,
        _ => rng.next() as u16,
    };
    let (a, b): (Option<u8>, Option<u8>) = match rm {
        0 => (Some(3), Some(6)),
        1 => (Some(3), Some(7)),
        2 => (Some(5), Some(6)),
        3 => (Some(5), Some(7)),
        4 => (Some(6), None),
        5 => (Some(7), None),
        6 if md == 0 => (None, None),
        6 => (Some(5), None),
        _ => (Some(3), None),
    };
    let mut rest = off.wrapping_sub(disp);
    if let Some(bv) = b {
        let v = rng.next() as u16;
        m.regs.push((bv, v as u64));
        rest = rest.wrapping_sub(v);
    }
    match a {
        Some(av) => m.regs.push((av, rest as u64)),
        None => {
            // [disp16]
            m.disp = off.to_le_bytes().to_vec();
        }
    }
    if a.is_some() {
        m.disp = match md {
            0 => vec![],
            1 => vec![disp as u8],
            _ => disp.to_le_bytes().to_vec(),
        };
    }
    m.shape = [
        "bx+si", "bx+di", "bp+si", "bp+di", "si", "di", "bp/d16", "bx",
    ][rm as usize];
    let ss = matches!(rm, 2 | 3) || (rm == 6 && md != 0);
    (m, ss)
}
