//! The decoding pass: prefixes, opcode, then the operands the opcode's table
//! entry calls for.

use super::cursor::{Cursor, sign_extend, truncate};
use super::modrm::{self, ModRm, Rm};
use super::prefix::{Mandatory, Prefixes};
use super::table::{Imm, Kind, PRIMARY, SECONDARY, Width, alu};
use super::{
    AccessClass, Condition, DecodeError, Instruction, MemoryOperand, Mnemonic, Operand, Register,
};
use crate::mode::CpuMode;
use crate::state::{Gpr, Segment};

/// Decodes one instruction (see [`super::decode`]).
///
/// Everything is inlined into this one function, the decoder state stays
/// in registers, and each form builds its [`Instruction`] once, in the
/// return slot: no intermediate operand list is built and merged across
/// forms (which cost more than the decoding itself).
#[inline(never)]
pub(super) fn decode(bytes: &[u8], mode: CpuMode) -> Result<Instruction, DecodeError> {
    let mut cur = Cursor::new(bytes);
    let (pfx, opcode) = Prefixes::parse(&mut cur, mode)?;
    let mut d = Decoder::new(cur, pfx, mode);
    if opcode == 0x0F {
        let op2 = d.cur.byte()?;
        // LOCK MOV CR0 is AMD's alternative encoding of MOV CR8.
        if matches!(op2, 0x20 | 0x22) {
            return Err(DecodeError::Unsupported);
        }
        d.secondary(op2)
    } else {
        d.primary(PRIMARY[usize::from(opcode)].0)
    }
}

/// What the decoder needs of a [`CpuMode`] and its 66/67 prefixes, looked
/// up once per instruction rather than worked out at each use.
#[derive(Clone, Copy)]
#[repr(align(4))]
struct Sizes {
    long: bool,
    /// The operand size of `v` forms without REX.W: 66 toggles between
    /// 16 and 32 bits.
    v_size: u8,
    /// The address size: 67 selects 32-bit addressing in 64-bit and
    /// 16-bit modes, 16-bit in 32-bit modes.
    address_size: u8,
}

impl Sizes {
    const fn of(mode: CpuMode, opsize: bool, addrsize: bool) -> Self {
        let default_address = mode.default_address_size();
        Sizes {
            long: mode.is_64bit(),
            v_size: if (mode.default_size() == 2) != opsize {
                2
            } else {
                4
            },
            address_size: match (addrsize, default_address) {
                (false, a) => a,
                (true, 4) => 2,
                (true, _) => 4,
            },
        }
    }

    /// The four entries of `mode`, by [`Prefixes::size_bits`].
    const fn of_mode(mode: CpuMode) -> [Sizes; 4] {
        [
            Sizes::of(mode, false, false),
            Sizes::of(mode, true, false),
            Sizes::of(mode, false, true),
            Sizes::of(mode, true, true),
        ]
    }
}

/// [`Sizes`] by `CpuMode as usize` (seven modes; the eighth entry only
/// pads the table to a power of two, and the assertion below keeps the
/// order of the entries that of the enum) and [`Prefixes::size_bits`].
static SIZES: [[Sizes; 4]; 8] = [
    Sizes::of_mode(CpuMode::Real),
    Sizes::of_mode(CpuMode::Virtual8086),
    Sizes::of_mode(CpuMode::Protected16),
    Sizes::of_mode(CpuMode::Protected32),
    Sizes::of_mode(CpuMode::Compat16),
    Sizes::of_mode(CpuMode::Compat32),
    Sizes::of_mode(CpuMode::Long64),
    Sizes::of_mode(CpuMode::Long64),
];

const _: () = assert!(
    CpuMode::Real as usize == 0
        && CpuMode::Virtual8086 as usize == 1
        && CpuMode::Protected16 as usize == 2
        && CpuMode::Protected32 as usize == 3
        && CpuMode::Compat16 as usize == 4
        && CpuMode::Compat32 as usize == 5
        && CpuMode::Long64 as usize == 6
);

/// `emit_rm!(self, m, size, |rm| body)`: `body` with `rm` the r/m operand
/// of ModRM `m` at `size`, written out once for a memory and once for a
/// register r/m, so that each builds its operands straight into the result
/// instead of merging two operand shapes first (which costs more than
/// either).
macro_rules! emit_rm {
    ($self:ident, $m:ident, $size:expr, |$rm:ident| $body:expr) => {
        match $m.rm {
            Rm::Mem(a) => {
                let $rm = $self.mem(a, $size);
                $body
            }
            Rm::Reg(n) => {
                let $rm = $self.gpr(n, $size);
                $body
            }
        }
    };
}

#[derive(Clone, Copy)]
struct Decoder<'a> {
    cur: Cursor<'a>,
    pfx: Prefixes,
    mode: CpuMode,
    long: bool,
    address_size: u8,
    /// The operand size of `v` forms: REX.W, else 66 toggles the default.
    v_size: u8,
}

impl<'a> Decoder<'a> {
    #[inline(always)]
    fn new(cur: Cursor<'a>, pfx: Prefixes, mode: CpuMode) -> Self {
        let sizes = SIZES[mode as usize & 7][pfx.size_bits()];
        Decoder {
            cur,
            pfx,
            mode,
            long: sizes.long,
            address_size: sizes.address_size,
            v_size: if pfx.rex_w() { 8 } else { sizes.v_size },
        }
    }

    /// The error for a valid opcode outside the emulated set. Every
    /// lockable instruction is emulated, so with LOCK in front it is `#UD`
    /// whatever the opcode is.
    fn unsupported(&self) -> DecodeError {
        if self.pfx.lock() {
            DecodeError::Invalid
        } else {
            DecodeError::Unsupported
        }
    }

    /// The operand size of a `v` form: REX.W, else 66 toggles the default.
    #[inline(always)]
    fn v_size(&self) -> u8 {
        self.v_size
    }

    /// The operand size of PUSH/POP r/m: 64 bits by default in 64-bit mode
    /// (66 gives 16; there is no 32-bit form there).
    #[inline(always)]
    fn stack_size(&self) -> u8 {
        if self.long && !self.pfx.opsize() {
            8
        } else {
            self.v_size()
        }
    }

    #[inline(always)]
    fn size_of(&self, width: Width) -> u8 {
        match width {
            Width::Byte => 1,
            Width::V => self.v_size(),
        }
    }

    /// The size of I/O operands: 1, 2 or 4 (REX.W does not widen them).
    #[inline(always)]
    fn io_size(&self, width: Width) -> u8 {
        match width {
            Width::Byte => 1,
            Width::V if self.v_size() == 2 => 2,
            Width::V => 4,
        }
    }

    #[inline(always)]
    fn gpr(&self, num: u8, size: u8) -> Operand {
        let num = num & 15;
        if size == 1 && !self.pfx.rex_present() && (4..8).contains(&num) {
            Operand::Reg(Register {
                gpr: Gpr::from_index(num - 4),
                size,
                high_byte: true,
            })
        } else {
            Operand::Reg(Register {
                gpr: Gpr::from_index(num),
                size,
                high_byte: false,
            })
        }
    }

    #[inline(always)]
    fn acc(&self, size: u8) -> Operand {
        self.gpr(0, size)
    }

    #[inline(always)]
    fn dx(&self) -> Operand {
        Operand::Reg(Register {
            gpr: Gpr::Rdx,
            size: 2,
            high_byte: false,
        })
    }

    #[inline(always)]
    fn mem(&self, m: MemoryOperand, size: u8) -> Operand {
        Operand::Mem(MemoryOperand { size, ..m })
    }

    /// The implicit string operand: DS:rSI (override allowed) for the
    /// source, ES:rDI (no override) for the destination.
    #[inline(always)]
    fn string_mem(&self, source: bool, size: u8) -> Operand {
        let (segment, base) = if source {
            (self.pfx.segment().unwrap_or(Segment::Ds), Gpr::Rsi)
        } else {
            (Segment::Es, Gpr::Rdi)
        };
        Operand::Mem(MemoryOperand {
            segment,
            base: Some(base),
            index: None,
            scale: 1,
            disp: 0,
            rip_relative: false,
            size,
        })
    }

    #[inline(always)]
    fn rm(&self, m: &ModRm, size: u8) -> Operand {
        match m.rm {
            Rm::Reg(n) => self.gpr(n, size),
            Rm::Mem(a) => self.mem(a, size),
        }
    }

    #[inline(always)]
    fn modrm(&mut self) -> Result<ModRm, DecodeError> {
        modrm::read(&mut self.cur, &self.pfx, self.address_size, self.long)
    }

    /// Reads an immediate of `bytes` bytes, sign-extended (or not) and
    /// truncated to `size` bytes.
    #[inline(always)]
    fn imm(&mut self, bytes: u8, size: u8, signed: bool) -> Result<Operand, DecodeError> {
        let raw = self.cur.le(bytes)?;
        let value = if signed {
            sign_extend(raw, bytes) as u64
        } else {
            raw
        };
        Ok(Operand::Imm(truncate(value, size)))
    }

    /// An immediate of the operand size: imm8/16/32, imm32 sign-extended
    /// for 64-bit operands.
    #[inline(always)]
    fn imm_z(&mut self, size: u8) -> Result<Operand, DecodeError> {
        self.imm(size.min(4), size, true)
    }

    /// The next byte's ModRM.mod is 11 (for the VEX/EVEX versus LES/LDS/
    /// BOUND distinction outside 64-bit mode).
    fn next_is_reg_form(&self) -> Result<bool, DecodeError> {
        Ok(self.cur.peek()? >> 6 == 3)
    }

    #[inline(always)]
    fn primary(&mut self, kind: Kind) -> Result<Instruction, DecodeError> {
        use Kind as K;
        match kind {
            K::EG(mn, w) => {
                let size = self.size_of(w);
                let m = self.modrm()?;
                emit_rm!(self, m, size, |rm| {
                    self.emit(mn, size, [rm, self.gpr(m.reg, size), Operand::None])
                })
            }
            K::GE(mn, w) => {
                let size = self.size_of(w);
                let m = self.modrm()?;
                emit_rm!(self, m, size, |rm| {
                    self.emit(mn, size, [self.gpr(m.reg, size), rm, Operand::None])
                })
            }
            K::AccImm(mn, w) => {
                let size = self.size_of(w);
                let imm = self.imm_z(size)?;
                self.emit(mn, size, [self.acc(size), imm, Operand::None])
            }
            K::Group1NotIn64 if self.long => Err(DecodeError::Invalid),
            K::Group1NotIn64 => self.group1(Width::Byte, Imm::B),
            K::Group1(w, imm) => self.group1(w, imm),
            K::Group3(w) => {
                let size = self.size_of(w);
                let m = self.modrm()?;
                match m.ext() {
                    0 | 1 => {
                        let imm = self.imm_z(size)?;
                        emit_rm!(self, m, size, |rm| {
                            self.emit(Mnemonic::Test, size, [rm, imm, Operand::None])
                        })
                    }
                    2 => emit_rm!(self, m, size, |rm| {
                        self.emit(Mnemonic::Not, size, [rm, Operand::None, Operand::None])
                    }),
                    3 => emit_rm!(self, m, size, |rm| {
                        self.emit(Mnemonic::Neg, size, [rm, Operand::None, Operand::None])
                    }),
                    _ => Err(self.unsupported()),
                }
            }
            K::Group4 => {
                let m = self.modrm()?;
                let mn = match m.ext() {
                    0 => Mnemonic::Inc,
                    1 => Mnemonic::Dec,
                    _ => return Err(DecodeError::Invalid),
                };
                emit_rm!(self, m, 1, |rm| {
                    self.emit(mn, 1, [rm, Operand::None, Operand::None])
                })
            }
            K::Group5 => {
                let m = self.modrm()?;
                let is_reg = matches!(m.rm, Rm::Reg(_));
                match m.ext() {
                    0 | 1 => {
                        let size = self.v_size();
                        let mn = if m.ext() == 0 {
                            Mnemonic::Inc
                        } else {
                            Mnemonic::Dec
                        };
                        emit_rm!(self, m, size, |rm| {
                            self.emit(mn, size, [rm, Operand::None, Operand::None])
                        })
                    }
                    // Far CALL/JMP take a memory pointer only.
                    3 | 5 if is_reg => Err(DecodeError::Invalid),
                    6 => {
                        let size = self.stack_size();
                        emit_rm!(self, m, size, |rm| {
                            self.emit(Mnemonic::Push, size, [rm, Operand::None, Operand::None])
                        })
                    }
                    7 => Err(DecodeError::Invalid),
                    _ => Err(self.unsupported()),
                }
            }
            K::Group11(w) => {
                let size = self.size_of(w);
                let m = self.modrm()?;
                match m.ext() {
                    0 => {
                        let imm = self.imm_z(size)?;
                        emit_rm!(self, m, size, |rm| {
                            self.emit(Mnemonic::Mov, size, [rm, imm, Operand::None])
                        })
                    }
                    // C6 F8 XABORT, C7 F8 XBEGIN.
                    7 if m.byte == 0xF8 => Err(self.unsupported()),
                    _ => Err(DecodeError::Invalid),
                }
            }
            K::Group1A => {
                // 8F with ModRM.reg != 0 is the XOP escape on AMD when its
                // map field is 8 or more, `#UD` otherwise.
                let next = self.cur.peek()?;
                if (next >> 3) & 7 != 0 {
                    return Err(if next & 0x1F >= 8 {
                        self.unsupported()
                    } else {
                        DecodeError::Invalid
                    });
                }
                let m = self.modrm()?;
                let size = self.stack_size();
                emit_rm!(self, m, size, |rm| {
                    self.emit(Mnemonic::Pop, size, [rm, Operand::None, Operand::None])
                })
            }
            K::Movsxd => {
                if !self.long {
                    // ARPL.
                    return Err(self.unsupported());
                }
                let size = self.v_size();
                let src = if size == 2 { 2 } else { 4 };
                let m = self.modrm()?;
                emit_rm!(self, m, src, |rm| {
                    self.emit(
                        Mnemonic::Movsxd,
                        size,
                        [self.gpr(m.reg, size), rm, Operand::None],
                    )
                })
            }
            K::Moffs { store, width } => {
                let size = self.size_of(width);
                let offset = self.cur.le(self.address_size)?;
                let mem = Operand::Mem(MemoryOperand {
                    segment: modrm::segment(&self.pfx, false),
                    base: None,
                    index: None,
                    scale: 1,
                    disp: offset as i64,
                    rip_relative: false,
                    size,
                });
                let ops = if store {
                    [mem, self.acc(size), Operand::None]
                } else {
                    [self.acc(size), mem, Operand::None]
                };
                self.emit(Mnemonic::Mov, size, ops)
            }
            K::Str(mn, w) => self.string(mn, w),
            K::InImm(w) => {
                let size = self.io_size(w);
                let port = self.imm(1, 1, false)?;
                self.emit(Mnemonic::In, size, [self.acc(size), port, Operand::None])
            }
            K::OutImm(w) => {
                let size = self.io_size(w);
                let port = self.imm(1, 1, false)?;
                self.emit(Mnemonic::Out, size, [port, self.acc(size), Operand::None])
            }
            K::InDx(w) => {
                let size = self.io_size(w);
                self.emit(
                    Mnemonic::In,
                    size,
                    [self.acc(size), self.dx(), Operand::None],
                )
            }
            K::OutDx(w) => {
                let size = self.io_size(w);
                self.emit(
                    Mnemonic::Out,
                    size,
                    [self.dx(), self.acc(size), Operand::None],
                )
            }
            K::Vex | K::Evex => Err(self.vex_like()?),
            K::NotIn64 if self.long => Err(DecodeError::Invalid),
            K::NotIn64 | K::Unsupported => Err(self.unsupported()),
            // 0F-map kinds; the one-byte table holds none of them.
            _ => Err(self.unsupported()),
        }
    }

    /// C4/C5/62: VEX/EVEX (never emulated) or LES/LDS/BOUND.
    fn vex_like(self) -> Result<DecodeError, DecodeError> {
        let is_vex = self.long || self.next_is_reg_form()?;
        if !is_vex {
            // LES/LDS/BOUND with a memory operand.
            return Ok(self.unsupported());
        }
        if self.mode.is_real_or_v86() {
            // VEX/EVEX are #UD in real and virtual-8086 mode, and so are the
            // register forms of LES/LDS/BOUND.
            return Ok(DecodeError::Invalid);
        }
        // A 66, F2, F3, LOCK or REX prefix before VEX/EVEX is #UD.
        if self.pfx.opsize()
            || self.pfx.rep().is_some()
            || self.pfx.lock()
            || self.pfx.rex_present()
        {
            return Ok(DecodeError::Invalid);
        }
        Ok(DecodeError::Unsupported)
    }

    #[inline(always)]
    fn group1(mut self, w: Width, imm: Imm) -> Result<Instruction, DecodeError> {
        let size = self.size_of(w);
        let m = self.modrm()?;
        let imm = match imm {
            Imm::B => self.imm(1, 1, false)?,
            Imm::SB => self.imm(1, size, true)?,
            Imm::Z => self.imm_z(size)?,
        };
        emit_rm!(self, m, size, |rm| {
            self.emit(alu(m.ext()), size, [rm, imm, Operand::None])
        })
    }

    fn string(self, mn: Mnemonic, w: Width) -> Result<Instruction, DecodeError> {
        use AccessClass as A;
        use Mnemonic as M;
        let none = Operand::None;
        // Each form builds only its own operands, with its mnemonic a
        // constant.
        match mn {
            M::Ins => {
                let size = self.io_size(w);
                let ops = [self.string_mem(false, size), self.dx(), none];
                self.finish(M::Ins, size, ops, None, Some(A::Write))
            }
            M::Outs => {
                let size = self.io_size(w);
                let ops = [self.dx(), self.string_mem(true, size), none];
                self.finish(M::Outs, size, ops, None, Some(A::Read))
            }
            M::Movs => {
                let size = self.size_of(w);
                let ops = [
                    self.string_mem(false, size),
                    self.string_mem(true, size),
                    none,
                ];
                self.finish(M::Movs, size, ops, None, Some(A::ReadWrite))
            }
            M::Cmps => {
                let size = self.size_of(w);
                let ops = [
                    self.string_mem(true, size),
                    self.string_mem(false, size),
                    none,
                ];
                self.finish(M::Cmps, size, ops, None, Some(A::Read))
            }
            M::Stos => {
                let size = self.size_of(w);
                let ops = [self.string_mem(false, size), self.acc(size), none];
                self.finish(M::Stos, size, ops, None, Some(A::Write))
            }
            M::Lods => {
                let size = self.size_of(w);
                let ops = [self.acc(size), self.string_mem(true, size), none];
                self.finish(M::Lods, size, ops, None, Some(A::Read))
            }
            M::Scas => {
                let size = self.size_of(w);
                let ops = [self.acc(size), self.string_mem(false, size), none];
                self.finish(M::Scas, size, ops, None, Some(A::Read))
            }
            // The table gives `Kind::Str` only to the seven above.
            _ => Err(self.unsupported()),
        }
    }

    #[inline(always)]
    fn secondary(&mut self, opcode: u8) -> Result<Instruction, DecodeError> {
        use Kind as K;
        let kind = SECONDARY[usize::from(opcode)].0;
        match kind {
            K::Cmov => {
                let size = self.v_size();
                let m = self.modrm()?;
                self.emit_cond(
                    Condition(opcode & 15),
                    Mnemonic::Cmovcc,
                    size,
                    [self.gpr(m.reg, size), self.rm(&m, size), Operand::None],
                )
            }
            K::Setcc => {
                let m = self.modrm()?;
                self.emit_cond(
                    Condition(opcode & 15),
                    Mnemonic::Setcc,
                    1,
                    [self.rm(&m, 1), Operand::None, Operand::None],
                )
            }
            K::BtReg(mn) => {
                let size = self.v_size();
                let m = self.modrm()?;
                emit_rm!(self, m, size, |rm| {
                    self.emit(mn, size, [rm, self.gpr(m.reg, size), Operand::None])
                })
            }
            K::Group8 => {
                let size = self.v_size();
                let m = self.modrm()?;
                let mn = match m.ext() {
                    4 => Mnemonic::Bt,
                    5 => Mnemonic::Bts,
                    6 => Mnemonic::Btr,
                    7 => Mnemonic::Btc,
                    _ => return Err(DecodeError::Invalid),
                };
                // The bit offset is an unsigned imm8 (taken modulo the
                // operand width by the CPU).
                let imm = self.imm(1, 1, false)?;
                emit_rm!(self, m, size, |rm| self.emit(
                    mn,
                    size,
                    [rm, imm, Operand::None]
                ))
            }
            K::Cmpxchg(w) => {
                let size = self.size_of(w);
                let m = self.modrm()?;
                emit_rm!(self, m, size, |rm| {
                    self.emit(
                        Mnemonic::Cmpxchg,
                        size,
                        [rm, self.gpr(m.reg, size), self.acc(size)],
                    )
                })
            }
            K::Xadd(w) => {
                let size = self.size_of(w);
                let m = self.modrm()?;
                emit_rm!(self, m, size, |rm| {
                    self.emit(
                        Mnemonic::Xadd,
                        size,
                        [rm, self.gpr(m.reg, size), Operand::None],
                    )
                })
            }
            K::MovExt(mn, src) => {
                let size = self.v_size();
                let m = self.modrm()?;
                emit_rm!(self, m, src, |rm| {
                    self.emit(mn, size, [self.gpr(m.reg, size), rm, Operand::None])
                })
            }
            K::Movnti => {
                if self.pfx.opsize() || self.pfx.rep().is_some() {
                    return Err(DecodeError::Invalid);
                }
                let size = if self.pfx.rex_w() { 8 } else { 4 };
                let m = self.modrm()?;
                if matches!(m.rm, Rm::Reg(_)) {
                    return Err(DecodeError::Invalid);
                }
                emit_rm!(self, m, size, |rm| {
                    self.emit(
                        Mnemonic::Movnti,
                        size,
                        [rm, self.gpr(m.reg, size), Operand::None],
                    )
                })
            }
            K::Group9 => {
                let m = self.modrm()?;
                if m.ext() != 1 {
                    return Err(self.unsupported());
                }
                if matches!(m.rm, Rm::Reg(_)) {
                    return Err(DecodeError::Invalid);
                }
                let (mn, size) = if self.pfx.rex_w() {
                    (Mnemonic::Cmpxchg16b, 16)
                } else {
                    (Mnemonic::Cmpxchg8b, 8)
                };
                emit_rm!(self, m, size, |rm| {
                    self.emit(mn, size, [rm, Operand::None, Operand::None])
                })
            }
            K::Sse => self.sse(opcode),
            _ => Err(self.unsupported()),
        }
    }

    /// The SSE moves, selected by opcode and mandatory prefix.
    #[inline(always)]
    fn sse(mut self, opcode: u8) -> Result<Instruction, DecodeError> {
        use Mandatory as P;
        use Mnemonic as M;
        /// How the operands are laid out.
        enum Shape {
            /// xmm, xmm/m (load).
            Load,
            /// xmm/m, xmm (store).
            Store,
            /// m, xmm: memory only.
            StoreMemOnly,
            /// xmm, r/m32/64 (MOVD/MOVQ load from a GPR or memory).
            FromGpr,
            /// r/m32/64, xmm.
            ToGpr,
        }
        let mp = self.pfx.mandatory();
        let (mn, size, shape) = match (opcode, mp) {
            (0x10, P::None) => (M::Movups, 16, Shape::Load),
            (0x10, P::P66) => (M::Movupd, 16, Shape::Load),
            (0x11, P::None) => (M::Movups, 16, Shape::Store),
            (0x11, P::P66) => (M::Movupd, 16, Shape::Store),
            (0x28, P::None) => (M::Movaps, 16, Shape::Load),
            (0x28, P::P66) => (M::Movapd, 16, Shape::Load),
            (0x29, P::None) => (M::Movaps, 16, Shape::Store),
            (0x29, P::P66) => (M::Movapd, 16, Shape::Store),
            (0x2B, P::None) => (M::Movntps, 16, Shape::StoreMemOnly),
            (0x2B, P::P66) => (M::Movntpd, 16, Shape::StoreMemOnly),
            (0x6E, P::P66) if self.pfx.rex_w() => (M::Movq, 8, Shape::FromGpr),
            (0x6E, P::P66) => (M::Movd, 4, Shape::FromGpr),
            (0x6F, P::P66) => (M::Movdqa, 16, Shape::Load),
            (0x6F, P::F3) => (M::Movdqu, 16, Shape::Load),
            (0x7E, P::P66) if self.pfx.rex_w() => (M::Movq, 8, Shape::ToGpr),
            (0x7E, P::P66) => (M::Movd, 4, Shape::ToGpr),
            (0x7E, P::F3) => (M::Movq, 8, Shape::Load),
            (0x7F, P::P66) => (M::Movdqa, 16, Shape::Store),
            (0x7F, P::F3) => (M::Movdqu, 16, Shape::Store),
            (0xD6, P::P66) => (M::Movq, 8, Shape::Store),
            (0xE7, P::P66) => (M::Movntdq, 16, Shape::StoreMemOnly),
            // MOVSS/MOVSD (F3/F2 0F 10/11), MOVNTSS/MOVNTSD (F3/F2 0F 2B,
            // AMD), the MMX forms (no prefix 0F 6E/6F/7E/7F/E7) and
            // MOVQ2DQ/MOVDQ2Q (F3/F2 0F D6) exist but are not emulated.
            (0x10 | 0x11 | 0x2B, P::F3 | P::F2)
            | (0x6E | 0x6F | 0x7E | 0x7F | 0xE7, P::None)
            | (0xD6, P::F3 | P::F2) => return Err(self.unsupported()),
            _ => return Err(DecodeError::Invalid),
        };
        let m = self.modrm()?;
        let xmm = Operand::Xmm(m.reg & 15);
        // The memory and register r/m forms apart, as in `emit_rm!`.
        let rm = match m.rm {
            Rm::Mem(a) => {
                let rm = self.mem(a, size);
                return match shape {
                    Shape::Load | Shape::FromGpr => self.emit(mn, size, [xmm, rm, Operand::None]),
                    Shape::Store | Shape::StoreMemOnly | Shape::ToGpr => {
                        self.emit(mn, size, [rm, xmm, Operand::None])
                    }
                };
            }
            Rm::Reg(n) => n,
        };
        match shape {
            Shape::Load => self.emit(mn, size, [xmm, Operand::Xmm(rm & 15), Operand::None]),
            Shape::Store => self.emit(mn, size, [Operand::Xmm(rm & 15), xmm, Operand::None]),
            Shape::StoreMemOnly => Err(DecodeError::Invalid),
            Shape::FromGpr => self.emit(mn, size, [xmm, self.gpr(rm, size), Operand::None]),
            Shape::ToGpr => self.emit(mn, size, [self.gpr(rm, size), xmm, Operand::None]),
        }
    }

    /// The instruction of a form without a condition whose access class
    /// follows from its mnemonic and operand positions.
    #[inline(always)]
    fn emit(
        &self,
        mnemonic: Mnemonic,
        size: u8,
        operands: [Operand; 3],
    ) -> Result<Instruction, DecodeError> {
        self.finish(mnemonic, size, operands, None, None)
    }

    /// The instruction of SETcc/CMOVcc.
    #[inline(always)]
    fn emit_cond(
        &self,
        condition: Condition,
        mnemonic: Mnemonic,
        size: u8,
        operands: [Operand; 3],
    ) -> Result<Instruction, DecodeError> {
        self.finish(mnemonic, size, operands, Some(condition), None)
    }

    /// Applies the checks common to every form and assembles the result.
    /// `access` is set for the forms whose access class does not follow
    /// from the mnemonic and operand positions (string instructions).
    /// Inlined in each form, where the mnemonic is mostly a constant, so
    /// most of these rules fold away.
    #[inline(always)]
    fn finish(
        &self,
        mnemonic: Mnemonic,
        operand_size: u8,
        operands: [Operand; 3],
        condition: Option<Condition>,
        access: Option<AccessClass>,
    ) -> Result<Instruction, DecodeError> {
        let mem_dest = matches!(operands[0], Operand::Mem(_));
        if self.pfx.lock() && !(mem_dest && lockable(mnemonic)) {
            return Err(DecodeError::Invalid);
        }
        let access = match access {
            Some(a) => a,
            None if mem_dest => dest_access(mnemonic),
            None if matches!(operands[1], Operand::Mem(_))
                || matches!(operands[2], Operand::Mem(_)) =>
            {
                AccessClass::Read
            }
            None => AccessClass::None,
        };
        let rep = if is_string(mnemonic) {
            self.pfx.rep()
        } else {
            None
        };
        let len = self.cur.len();
        Ok(Instruction {
            len,
            mnemonic,
            operands,
            operand_size,
            address_size: self.address_size,
            segment_override: self.pfx.segment(),
            rep,
            lock: self.pfx.lock(),
            condition,
            access,
        })
    }
}

/// Instructions that accept LOCK (with a memory destination).
fn lockable(mn: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        mn,
        M::Add
            | M::Adc
            | M::Sub
            | M::Sbb
            | M::And
            | M::Or
            | M::Xor
            | M::Inc
            | M::Dec
            | M::Neg
            | M::Not
            | M::Xchg
            | M::Xadd
            | M::Cmpxchg
            | M::Cmpxchg8b
            | M::Cmpxchg16b
            | M::Bts
            | M::Btr
            | M::Btc
    )
}

/// What an instruction does to a memory destination.
fn dest_access(mn: Mnemonic) -> AccessClass {
    use Mnemonic as M;
    match mn {
        M::Cmp | M::Test | M::Bt | M::Push => AccessClass::Read,
        M::Mov
        | M::Setcc
        | M::Pop
        | M::Movnti
        | M::Movd
        | M::Movq
        | M::Movdqa
        | M::Movdqu
        | M::Movaps
        | M::Movups
        | M::Movapd
        | M::Movupd
        | M::Movntdq
        | M::Movntps
        | M::Movntpd => AccessClass::Write,
        _ => AccessClass::ReadWrite,
    }
}

fn is_string(mn: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        mn,
        M::Movs | M::Cmps | M::Stos | M::Lods | M::Scas | M::Ins | M::Outs
    )
}
