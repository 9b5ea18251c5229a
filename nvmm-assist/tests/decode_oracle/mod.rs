//! The comparison of `nvmm_assist::decode` with iced-x86 and the case
//! generators, shared by tests/decode_iced.rs and the `decode` fuzz target
//! (which includes this file by path). See tests/decode_iced.rs for what is
//! compared and the documented intentional differences.

use iced_x86::{
    ConditionCode, Decoder, DecoderOptions, EncodingKind, Instruction as Iced,
    InstructionInfoFactory, Mnemonic as IM, OpAccess, OpCodeTableKind, OpKind, Register as IR,
};
use nvmm_assist::decode::{
    AccessClass, DecodeError, Instruction, MemoryOperand, Mnemonic, Operand, RepPrefix,
};
use nvmm_assist::{CpuMode, Gpr, Segment, decode};

/// The tests' generator (`src/test_rng.rs`), which the including crate
/// provides: the integration suite's `support::Rng`, the `decode` fuzz
/// target's own inclusion of that file.
use super::Rng;

#[derive(Default)]
pub struct Tally {
    pub compared: u64,
    pub accepted_equal: u64,
    pub both_rejected: u64,
    pub valid_not_emulated: u64,
    pub not_classified: u64,
    pub intentional: u64,
    pub mismatches: u64,
    pub examples: Vec<String>,
}

impl Tally {
    fn mismatch(&mut self, bytes: &[u8], what: String) {
        self.mismatches += 1;
        if self.examples.len() < 25 {
            self.examples.push(format!("{bytes:02x?}: {what}"));
        }
    }
}

pub struct Oracle {
    bitness: u32,
    mode: CpuMode,
    info: InstructionInfoFactory,
    pub tally: Tally,
}

const SEGS: [u8; 6] = [0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65];

fn gpr_of(r: IR) -> Option<Gpr> {
    if !r.is_gpr() {
        return None;
    }
    let full = r.full_register();
    let n = full.number();
    if full.is_gpr64() && n < 16 {
        Some(Gpr::from_index(n as u8))
    } else {
        None
    }
}

fn seg_of(r: IR) -> Option<Segment> {
    match r {
        IR::ES => Some(Segment::Es),
        IR::CS => Some(Segment::Cs),
        IR::SS => Some(Segment::Ss),
        IR::DS => Some(Segment::Ds),
        IR::FS => Some(Segment::Fs),
        IR::GS => Some(Segment::Gs),
        _ => None,
    }
}

fn mask(value: u64, bytes: u8) -> u64 {
    match bytes {
        1 => value & 0xFF,
        2 => value & 0xFFFF,
        4 => value & 0xFFFF_FFFF,
        _ => value,
    }
}

const SETCC: [IM; 16] = [
    IM::Seto,
    IM::Setno,
    IM::Setb,
    IM::Setae,
    IM::Sete,
    IM::Setne,
    IM::Setbe,
    IM::Seta,
    IM::Sets,
    IM::Setns,
    IM::Setp,
    IM::Setnp,
    IM::Setl,
    IM::Setge,
    IM::Setle,
    IM::Setg,
];
const CMOVCC: [IM; 16] = [
    IM::Cmovo,
    IM::Cmovno,
    IM::Cmovb,
    IM::Cmovae,
    IM::Cmove,
    IM::Cmovne,
    IM::Cmovbe,
    IM::Cmova,
    IM::Cmovs,
    IM::Cmovns,
    IM::Cmovp,
    IM::Cmovnp,
    IM::Cmovl,
    IM::Cmovge,
    IM::Cmovle,
    IM::Cmovg,
];

/// iced's mnemonic for one of ours.
fn iced_mnemonic(i: &Instruction) -> Option<IM> {
    use Mnemonic as M;
    let by_size = |b, w, d, q| match i.operand_size {
        1 => b,
        2 => w,
        4 => d,
        _ => q,
    };
    Some(match i.mnemonic {
        M::Mov => IM::Mov,
        M::Movzx => IM::Movzx,
        M::Movsx => IM::Movsx,
        M::Movsxd => IM::Movsxd,
        M::Add => IM::Add,
        M::Adc => IM::Adc,
        M::Sub => IM::Sub,
        M::Sbb => IM::Sbb,
        M::And => IM::And,
        M::Or => IM::Or,
        M::Xor => IM::Xor,
        M::Cmp => IM::Cmp,
        M::Test => IM::Test,
        M::Inc => IM::Inc,
        M::Dec => IM::Dec,
        M::Neg => IM::Neg,
        M::Not => IM::Not,
        M::Xchg => IM::Xchg,
        M::Xadd => IM::Xadd,
        M::Cmpxchg => IM::Cmpxchg,
        M::Cmpxchg8b => IM::Cmpxchg8b,
        M::Cmpxchg16b => IM::Cmpxchg16b,
        M::Bt => IM::Bt,
        M::Bts => IM::Bts,
        M::Btr => IM::Btr,
        M::Btc => IM::Btc,
        M::Setcc => *SETCC.get(usize::from(i.condition?.0))?,
        M::Cmovcc => *CMOVCC.get(usize::from(i.condition?.0))?,
        M::Push => IM::Push,
        M::Pop => IM::Pop,
        M::Movs => by_size(IM::Movsb, IM::Movsw, IM::Movsd, IM::Movsq),
        M::Stos => by_size(IM::Stosb, IM::Stosw, IM::Stosd, IM::Stosq),
        M::Lods => by_size(IM::Lodsb, IM::Lodsw, IM::Lodsd, IM::Lodsq),
        M::Cmps => by_size(IM::Cmpsb, IM::Cmpsw, IM::Cmpsd, IM::Cmpsq),
        M::Scas => by_size(IM::Scasb, IM::Scasw, IM::Scasd, IM::Scasq),
        M::Ins => by_size(IM::Insb, IM::Insw, IM::Insd, IM::INVALID),
        M::Outs => by_size(IM::Outsb, IM::Outsw, IM::Outsd, IM::INVALID),
        M::Movnti => IM::Movnti,
        M::Movd => IM::Movd,
        M::Movq => IM::Movq,
        M::Movdqa => IM::Movdqa,
        M::Movdqu => IM::Movdqu,
        M::Movaps => IM::Movaps,
        M::Movups => IM::Movups,
        M::Movapd => IM::Movapd,
        M::Movupd => IM::Movupd,
        M::Movntdq => IM::Movntdq,
        M::Movntps => IM::Movntps,
        M::Movntpd => IM::Movntpd,
        M::In => IM::In,
        M::Out => IM::Out,
        _ => return None,
    })
}

/// Whether an instruction iced accepts is one of the forms the assist
/// emulates (issue 4's list), judged from iced's opcode info alone.
fn emulated_form(ins: &Iced) -> bool {
    let oc = ins.op_code();
    if oc.encoding() != EncodingKind::Legacy {
        return false;
    }
    let normal = oc.table() == OpCodeTableKind::Normal;
    let op = oc.op_code();
    let has_mm = (0..ins.op_count())
        .any(|k| ins.op_kind(k) == OpKind::Register && ins.op_register(k).is_mm());
    let mn = ins.mnemonic();
    if SETCC.contains(&mn) || CMOVCC.contains(&mn) {
        return true;
    }
    match mn {
        IM::Mov => normal && matches!(op, 0x88..=0x8B | 0xA0..=0xA3 | 0xC6 | 0xC7),
        IM::Movzx | IM::Movsx => true,
        IM::Movsxd => normal && op == 0x63,
        IM::Add | IM::Or | IM::Adc | IM::Sbb | IM::And | IM::Sub | IM::Xor | IM::Cmp => normal,
        IM::Test => normal,
        IM::Inc | IM::Dec => normal && matches!(op, 0xFE | 0xFF),
        IM::Neg | IM::Not => true,
        IM::Xchg => normal && matches!(op, 0x86 | 0x87),
        IM::Xadd
        | IM::Cmpxchg
        | IM::Cmpxchg8b
        | IM::Cmpxchg16b
        | IM::Bt
        | IM::Bts
        | IM::Btr
        | IM::Btc
        | IM::Movnti => true,
        IM::Push => normal && op == 0xFF,
        IM::Pop => normal && op == 0x8F,
        IM::Movsb
        | IM::Movsw
        | IM::Movsd
        | IM::Movsq
        | IM::Cmpsb
        | IM::Cmpsw
        | IM::Cmpsd
        | IM::Cmpsq
        | IM::Stosb
        | IM::Stosw
        | IM::Stosd
        | IM::Stosq
        | IM::Lodsb
        | IM::Lodsw
        | IM::Lodsd
        | IM::Lodsq
        | IM::Scasb
        | IM::Scasw
        | IM::Scasd
        | IM::Scasq => normal,
        IM::Movd | IM::Movq => !has_mm,
        IM::Movdqa
        | IM::Movdqu
        | IM::Movaps
        | IM::Movups
        | IM::Movapd
        | IM::Movupd
        | IM::Movntdq
        | IM::Movntps
        | IM::Movntpd => true,
        IM::In | IM::Out | IM::Insb | IM::Insw | IM::Insd | IM::Outsb | IM::Outsw | IM::Outsd => {
            true
        }
        _ => false,
    }
}

fn imm_size(kind: OpKind) -> Option<u8> {
    Some(match kind {
        OpKind::Immediate8 => 1,
        OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
        OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
        OpKind::Immediate64 | OpKind::Immediate8to64 | OpKind::Immediate32to64 => 8,
        _ => return None,
    })
}

impl Oracle {
    pub fn new(bitness: u32, mode: CpuMode) -> Self {
        Oracle {
            bitness,
            mode,
            info: InstructionInfoFactory::new(),
            tally: Tally::default(),
        }
    }

    fn long(&self) -> bool {
        self.bitness == 64
    }

    pub fn case(&mut self, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(15)];
        self.tally.compared += 1;
        let ours = decode(bytes, self.mode);
        let mut dec = Decoder::with_ip(self.bitness, bytes, 0, DecoderOptions::NONE);
        let ins = dec.decode();
        let valid = !ins.is_invalid();
        match (ours, valid) {
            (Ok(i), true) => match self.fields(&i, &ins) {
                Ok(intentional) => {
                    self.tally.accepted_equal += 1;
                    self.tally.intentional += u64::from(intentional);
                }
                Err(e) => self.tally.mismatch(
                    bytes,
                    format!("{e}\n    ours {i:?}\n    iced {ins:?} {:?}", ins.code()),
                ),
            },
            (Ok(i), false) => self.tally.mismatch(
                bytes,
                format!("we accept {i:?}, iced rejects ({:?})", dec.last_error()),
            ),
            (Err(DecodeError::Unsupported), true) => {
                if emulated_form(&ins) {
                    self.tally.mismatch(
                        bytes,
                        format!(
                            "Unsupported, but iced decodes an emulated form {:?}",
                            ins.code()
                        ),
                    );
                } else {
                    self.tally.valid_not_emulated += 1;
                }
            }
            (Err(DecodeError::Unsupported), false) => self.tally.not_classified += 1,
            (Err(_), false) => self.tally.both_rejected += 1,
            // Intentional difference 2: no VEX/EVEX in real and virtual-8086
            // mode (Intel SDM vol. 2 §2.3.2: #UD), where iced's 16-bit mode
            // decodes them as in protected mode.
            (Err(DecodeError::Invalid), true)
                if self.mode.is_real_or_v86()
                    && matches!(ins.encoding(), EncodingKind::VEX | EncodingKind::EVEX) =>
            {
                self.tally.intentional += 1;
                self.tally.both_rejected += 1;
            }
            (Err(e), true) => self.tally.mismatch(
                bytes,
                format!(
                    "we reject ({e:?}), iced decodes {:?} len {}",
                    ins.code(),
                    ins.len()
                ),
            ),
        }
    }

    /// Compares an instruction both decoders accept. Ok(true) when it agreed
    /// only thanks to a documented intentional difference.
    fn fields(&mut self, i: &Instruction, ins: &Iced) -> Result<bool, String> {
        let mut intentional = false;
        if usize::from(i.len) != ins.len() {
            return Err(format!("length {} vs {}", i.len, ins.len()));
        }
        let want = iced_mnemonic(i).ok_or("no iced mnemonic")?;
        if want != ins.mnemonic() {
            return Err(format!("mnemonic {:?} vs {:?}", want, ins.mnemonic()));
        }
        if matches!(i.mnemonic, Mnemonic::Setcc | Mnemonic::Cmovcc) {
            let cc = ins.condition_code();
            if cc == ConditionCode::None || Some(cc as u8 - 1) != i.condition.map(|c| c.0) {
                return Err(format!("condition {:?} vs {:?}", i.condition, cc));
            }
        }
        if i.lock != ins.has_lock_prefix() {
            return Err("LOCK".into());
        }
        let is_string = matches!(
            i.mnemonic,
            Mnemonic::Movs
                | Mnemonic::Cmps
                | Mnemonic::Stos
                | Mnemonic::Lods
                | Mnemonic::Scas
                | Mnemonic::Ins
                | Mnemonic::Outs
        );
        if is_string {
            let iced_rep = if ins.has_rep_prefix() {
                Some(RepPrefix::Rep)
            } else if ins.has_repne_prefix() {
                Some(RepPrefix::Repne)
            } else {
                None
            };
            if iced_rep != i.rep {
                return Err(format!("rep {:?} vs {:?}", i.rep, iced_rep));
            }
        } else if i.rep.is_some() {
            return Err("rep on a non-string instruction".into());
        }
        // Segment override prefix.
        let iced_seg = seg_of(ins.segment_prefix());
        if iced_seg != i.segment_override {
            let ignored = self.long()
                && i.segment_override.is_none()
                && matches!(
                    iced_seg,
                    Some(Segment::Es | Segment::Cs | Segment::Ss | Segment::Ds)
                );
            if !ignored {
                return Err(format!(
                    "segment override {:?} vs {:?}",
                    i.segment_override, iced_seg
                ));
            }
            intentional = true;
        }
        // Operands.
        let count = ins.op_count() as usize;
        for k in 0..3 {
            let ours = i.operands[k];
            if k >= count {
                let implicit_acc = i.mnemonic == Mnemonic::Cmpxchg
                    && k == 2
                    && matches!(ours, Operand::Reg(r) if r.gpr == Gpr::Rax && !r.high_byte && r.size == i.operand_size);
                if ours != Operand::None && !implicit_acc {
                    return Err(format!("extra operand {k}: {ours:?}"));
                }
                continue;
            }
            intentional |= self
                .operand(i, ins, k as u32, ours)
                .map_err(|e| format!("operand {k}: {e}"))?;
        }
        // Operand size.
        let opsize = |k: u32| -> Option<u8> {
            match ins.op_kind(k) {
                OpKind::Register => Some(ins.op_register(k).size() as u8),
                OpKind::Memory
                | OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI => Some(ins.memory_size().size() as u8),
                _ => None,
            }
        };
        let want_size = match i.mnemonic {
            Mnemonic::In | Mnemonic::Ins => opsize(0),
            Mnemonic::Out | Mnemonic::Outs => opsize(1),
            Mnemonic::Movd | Mnemonic::Movq => (0..ins.op_count())
                .find(|&k| !(ins.op_kind(k) == OpKind::Register && ins.op_register(k).is_xmm()))
                .map_or(Some(8), opsize),
            _ => opsize(0),
        };
        if want_size != Some(i.operand_size) {
            return Err(format!(
                "operand size {} vs {:?}",
                i.operand_size, want_size
            ));
        }
        // Access class, from iced's list of memory accesses (PUSH/POP also
        // list the stack access, which ours leave implicit).
        if !matches!(i.mnemonic, Mnemonic::Push | Mnemonic::Pop) {
            let info = self.info.info(ins);
            let (mut r, mut w) = (false, false);
            for m in info.used_memory() {
                match m.access() {
                    OpAccess::Read | OpAccess::CondRead => r = true,
                    OpAccess::Write | OpAccess::CondWrite => w = true,
                    OpAccess::ReadWrite | OpAccess::ReadCondWrite => {
                        r = true;
                        w = true;
                    }
                    _ => {}
                }
            }
            let want = match (r, w) {
                (false, false) => AccessClass::None,
                (true, false) => AccessClass::Read,
                (false, true) => AccessClass::Write,
                (true, true) => AccessClass::ReadWrite,
            };
            if want != i.access {
                return Err(format!("access {:?} vs {:?}", i.access, want));
            }
        }
        Ok(intentional)
    }

    fn operand(&self, i: &Instruction, ins: &Iced, k: u32, ours: Operand) -> Result<bool, String> {
        let kind = ins.op_kind(k);
        match kind {
            OpKind::Register => {
                let r = ins.op_register(k);
                let want = if r.is_xmm() {
                    Operand::Xmm(r.number() as u8)
                } else {
                    let gpr = gpr_of(r).ok_or_else(|| format!("iced register {r:?}"))?;
                    Operand::Reg(nvmm_assist::decode::Register {
                        gpr,
                        size: r.size() as u8,
                        high_byte: matches!(r, IR::AH | IR::CH | IR::DH | IR::BH),
                    })
                };
                if want != ours {
                    return Err(format!("{ours:?} vs {want:?}"));
                }
                Ok(false)
            }
            OpKind::Memory => {
                let Operand::Mem(m) = ours else {
                    return Err(format!("{ours:?} vs memory"));
                };
                self.memory(i, ins, &m)
            }
            OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI => {
                let Operand::Mem(m) = ours else {
                    return Err(format!("{ours:?} vs string memory"));
                };
                let (asize, base, dest) = match kind {
                    OpKind::MemorySegSI => (2, Gpr::Rsi, false),
                    OpKind::MemorySegESI => (4, Gpr::Rsi, false),
                    OpKind::MemorySegRSI => (8, Gpr::Rsi, false),
                    OpKind::MemoryESDI => (2, Gpr::Rdi, true),
                    OpKind::MemoryESEDI => (4, Gpr::Rdi, true),
                    _ => (8, Gpr::Rdi, true),
                };
                let want_seg = if dest {
                    Some(Segment::Es)
                } else {
                    seg_of(ins.memory_segment())
                };
                let mut intentional = false;
                if Some(m.segment) != want_seg {
                    // Intentional difference 1 (64-bit mode ignores ES/CS/SS/DS).
                    if self.long() && !dest && m.segment == Segment::Ds {
                        intentional = true;
                    } else {
                        return Err(format!("segment {:?} vs {want_seg:?}", m.segment));
                    }
                }
                if i.address_size != asize
                    || m.base != Some(base)
                    || m.index.is_some()
                    || m.disp != 0
                    || m.rip_relative
                    || usize::from(m.size) != ins.memory_size().size()
                {
                    return Err(format!(
                        "string operand {m:?} vs {kind:?} size {}",
                        ins.memory_size().size()
                    ));
                }
                Ok(intentional)
            }
            _ => {
                let size = imm_size(kind).ok_or_else(|| format!("iced operand kind {kind:?}"))?;
                let want = Operand::Imm(mask(ins.immediate(k), size));
                if want != ours {
                    return Err(format!("{ours:?} vs {want:?} ({kind:?})"));
                }
                Ok(false)
            }
        }
    }

    fn memory(&self, i: &Instruction, ins: &Iced, m: &MemoryOperand) -> Result<bool, String> {
        let mut intentional = false;
        let want_seg = seg_of(ins.memory_segment());
        if Some(m.segment) != want_seg {
            let default = if matches!(m.base, Some(Gpr::Rsp | Gpr::Rbp)) {
                Segment::Ss
            } else {
                Segment::Ds
            };
            let ignored_override = self.long()
                && m.segment == default
                && matches!(
                    want_seg,
                    Some(Segment::Es | Segment::Cs | Segment::Ss | Segment::Ds)
                );
            if !ignored_override {
                return Err(format!("segment {:?} vs {want_seg:?}", m.segment));
            }
            intentional = true;
        }
        let ib = ins.memory_base();
        let rip = matches!(ib, IR::RIP | IR::EIP);
        if rip != m.rip_relative || rip != ins.is_ip_rel_memory_operand() {
            return Err("RIP-relative".into());
        }
        let base = if rip { None } else { gpr_of(ib) };
        if ib != IR::None && !rip && base.is_none() {
            return Err(format!("iced base {ib:?}"));
        }
        let idx = ins.memory_index();
        let index = gpr_of(idx);
        if idx != IR::None && index.is_none() {
            return Err(format!("iced index {idx:?}"));
        }
        if base != m.base || index != m.index {
            return Err(format!(
                "base/index {:?}/{:?} vs {ib:?}/{idx:?}",
                m.base, m.index
            ));
        }
        if index.is_some() && u32::from(m.scale) != ins.memory_index_scale() {
            return Err(format!("scale {} vs {}", m.scale, ins.memory_index_scale()));
        }
        // The address size: the size of the base or index register, of RIP
        // or EIP, or of the displacement when there is neither.
        let asize = if rip {
            if ib == IR::RIP { 8 } else { 4 }
        } else if ib != IR::None {
            ib.size() as u8
        } else if idx != IR::None {
            idx.size() as u8
        } else {
            ins.memory_displ_size() as u8
        };
        if asize != i.address_size {
            return Err(format!("address size {} vs {asize}", i.address_size));
        }
        // iced gives a RIP-relative operand's absolute target (ip = 0).
        let disp = if rip {
            (m.disp as u64).wrapping_add(u64::from(i.len))
        } else {
            m.disp as u64
        };
        if mask(disp, asize) != mask(ins.memory_displacement64(), asize) {
            return Err(format!(
                "displacement {:#x} vs {:#x}",
                m.disp,
                ins.memory_displacement64()
            ));
        }
        if usize::from(m.size) != ins.memory_size().size() {
            return Err(format!(
                "access size {} vs {}",
                m.size,
                ins.memory_size().size()
            ));
        }
        Ok(intentional)
    }

    /// A random prefix sequence: legacy prefixes in random order, some
    /// repeated, then (64-bit) a REX that is sometimes followed by more
    /// legacy prefixes, which cancel it.
    fn prefixes(&self, rng: &mut Rng, out: &mut Vec<u8>) {
        let mut p: Vec<u8> = Vec::new();
        for (b, n) in [(0x66, 4), (0x67, 4), (0xF2, 8), (0xF3, 8), (0xF0, 6)] {
            if rng.one_in(n) {
                p.push(b);
            }
        }
        if rng.one_in(3) {
            p.push(SEGS[rng.below(6) as usize]);
        }
        if rng.one_in(12) {
            p.push(SEGS[rng.below(6) as usize]);
        }
        if !p.is_empty() && rng.one_in(10) {
            let dup = p[rng.below(p.len() as u64) as usize];
            p.push(dup);
        }
        for k in (1..p.len()).rev() {
            let j = rng.below(k as u64 + 1) as usize;
            p.swap(k, j);
        }
        if self.long() && !rng.one_in(3) {
            let rex = 0x40 | ((rng.next() as u8) & 15);
            if !p.is_empty() && rng.one_in(8) {
                let at = rng.below(p.len() as u64) as usize;
                p.insert(at, rex);
            } else {
                p.push(rex);
            }
        }
        out.extend_from_slice(&p);
    }

    /// Every emulated opcode x a fixed list of prefix sets x every ModRM
    /// shape (mod 0-3 x rm 0-7; every ModRM.reg as well for group opcodes),
    /// with random SIB, displacement and immediate bytes.
    fn systematic(&mut self, rng: &mut Rng) {
        let mut bytes = Vec::with_capacity(32);
        for (n, opcode) in EMULATED.iter().enumerate() {
            let group = GROUPS.contains(opcode);
            for (p, pfx) in PREFIX_SETS.iter().enumerate() {
                if !self.long() && pfx.iter().any(|&b| b & 0xF0 == 0x40) {
                    continue;
                }
                for modrm in 0..=255u8 {
                    let reg = (modrm >> 3) & 7;
                    if !group && usize::from(reg) != (usize::from(modrm & 0xC7) + n + p) % 8 {
                        continue;
                    }
                    bytes.clear();
                    bytes.extend_from_slice(pfx);
                    bytes.extend_from_slice(opcode);
                    bytes.push(modrm);
                    Self::tail(rng, &mut bytes);
                    self.case(&bytes);
                }
            }
        }
    }

    fn tail(rng: &mut Rng, out: &mut Vec<u8>) {
        while out.len() < 15 {
            out.push(rng.next() as u8);
        }
    }

    pub fn run(&mut self, seed: u64, per_form: u32, random: u32) {
        // xorshift's state must not be zero.
        let mut rng = Rng(seed | 1);
        self.systematic(&mut rng);
        let mut bytes = Vec::with_capacity(32);
        // Every opcode x every ModRM x random prefixes and tails.
        for map in [None, Some(0x0Fu8)] {
            for op in 0..=255u8 {
                for modrm in 0..=255u8 {
                    for _ in 0..per_form {
                        bytes.clear();
                        self.prefixes(&mut rng, &mut bytes);
                        bytes.extend(map);
                        bytes.push(op);
                        bytes.push(modrm);
                        Self::tail(&mut rng, &mut bytes);
                        self.case(&bytes);
                    }
                }
            }
        }
        // Every SIB byte under mod 0/1/2 for MOV store/load and MOVZX, with
        // and without REX.X/B and 67.
        for opcode in [&[0x89u8][..], &[0x8A], &[0x0F, 0xB7], &[0xC7]] {
            for md in 0..3u8 {
                for sib in 0..=255u8 {
                    for pfx in [&[][..], &[0x67], &[0x43], &[0x67, 0x4B]] {
                        if !self.long() && pfx.iter().any(|&b| b & 0xF0 == 0x40) {
                            continue;
                        }
                        bytes.clear();
                        bytes.extend_from_slice(pfx);
                        bytes.extend_from_slice(opcode);
                        bytes.push(md << 6 | ((rng.next() as u8) & 0x38) | 4);
                        bytes.push(sib);
                        Self::tail(&mut rng, &mut bytes);
                        self.case(&bytes);
                    }
                }
            }
        }
        // Random strings of 1-15 bytes: uniform, and with a prefix run.
        for n in 0..random {
            bytes.clear();
            if n % 2 == 1 {
                self.prefixes(&mut rng, &mut bytes);
            }
            let len = 1 + rng.below(15) as usize;
            while bytes.len() < len {
                bytes.push(rng.next() as u8);
            }
            bytes.truncate(len);
            self.case(&bytes);
        }
    }

    pub fn report(&self, name: &str) {
        let t = &self.tally;
        // Written to stdout directly, past libtest's capture, so that the
        // figures appear in `cargo test` and `cargo xtask ci` output.
        let line = format!(
            "decoder differential ({name}): {} cases compared against iced-x86, {} mismatches \
             (both accept, equal: {}; both reject: {}; valid but not emulated: {}; \
             not emulated, validity not judged: {}; agreeing only through a documented \
             intentional difference: {})",
            t.compared,
            t.mismatches,
            t.accepted_equal,
            t.both_rejected,
            t.valid_not_emulated,
            t.not_classified,
            t.intentional
        );
        {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
        for e in &t.examples {
            println!("  mismatch {e}");
        }
        assert_eq!(
            t.mismatches, 0,
            "decoder differential ({name}) found mismatches"
        );
        // The comparison must really exercise accepted instructions.
        assert!(t.accepted_equal > t.compared / 20, "too few accepted cases");
    }
}

/// The opcodes of the emulated forms (issue 4's list), written out here
/// independently of the decoder's tables.
#[rustfmt::skip]
const EMULATED: &[&[u8]] = &[
    // ADD OR ADC SBB AND SUB XOR CMP: r/m,r; r,r/m; AL/rAX,imm.
    &[0x00], &[0x01], &[0x02], &[0x03], &[0x04], &[0x05],
    &[0x08], &[0x09], &[0x0A], &[0x0B], &[0x0C], &[0x0D],
    &[0x10], &[0x11], &[0x12], &[0x13], &[0x14], &[0x15],
    &[0x18], &[0x19], &[0x1A], &[0x1B], &[0x1C], &[0x1D],
    &[0x20], &[0x21], &[0x22], &[0x23], &[0x24], &[0x25],
    &[0x28], &[0x29], &[0x2A], &[0x2B], &[0x2C], &[0x2D],
    &[0x30], &[0x31], &[0x32], &[0x33], &[0x34], &[0x35],
    &[0x38], &[0x39], &[0x3A], &[0x3B], &[0x3C], &[0x3D],
    // MOVSXD; INS/OUTS; group 1; TEST; XCHG; MOV; POP r/m.
    &[0x63], &[0x6C], &[0x6D], &[0x6E], &[0x6F],
    &[0x80], &[0x81], &[0x82], &[0x83], &[0x84], &[0x85], &[0x86], &[0x87],
    &[0x88], &[0x89], &[0x8A], &[0x8B], &[0x8F],
    // MOV moffs; MOVS CMPS TEST STOS LODS SCAS; MOV imm.
    &[0xA0], &[0xA1], &[0xA2], &[0xA3], &[0xA4], &[0xA5], &[0xA6], &[0xA7],
    &[0xA8], &[0xA9], &[0xAA], &[0xAB], &[0xAC], &[0xAD], &[0xAE], &[0xAF],
    &[0xC6], &[0xC7],
    // IN/OUT; group 3, 4, 5.
    &[0xE4], &[0xE5], &[0xE6], &[0xE7], &[0xEC], &[0xED], &[0xEE], &[0xEF],
    &[0xF6], &[0xF7], &[0xFE], &[0xFF],
    // SSE moves.
    &[0x0F, 0x10], &[0x0F, 0x11], &[0x0F, 0x28], &[0x0F, 0x29], &[0x0F, 0x2B],
    &[0x0F, 0x6E], &[0x0F, 0x6F], &[0x0F, 0x7E], &[0x0F, 0x7F], &[0x0F, 0xD6], &[0x0F, 0xE7],
    // CMOVcc (two conditions), SETcc (two conditions).
    &[0x0F, 0x40], &[0x0F, 0x4F], &[0x0F, 0x94], &[0x0F, 0x9C],
    // BT BTS BTR BTC, group 8, CMPXCHG, MOVZX, MOVSX, XADD, MOVNTI, group 9.
    &[0x0F, 0xA3], &[0x0F, 0xAB], &[0x0F, 0xB3], &[0x0F, 0xBB], &[0x0F, 0xBA],
    &[0x0F, 0xB0], &[0x0F, 0xB1], &[0x0F, 0xB6], &[0x0F, 0xB7], &[0x0F, 0xBE], &[0x0F, 0xBF],
    &[0x0F, 0xC0], &[0x0F, 0xC1], &[0x0F, 0xC3], &[0x0F, 0xC7],
];

/// Opcodes whose ModRM.reg selects the instruction.
#[rustfmt::skip]
const GROUPS: &[&[u8]] = &[
    &[0x80], &[0x81], &[0x82], &[0x83], &[0x8F], &[0xC6], &[0xC7], &[0xF6], &[0xF7], &[0xFE],
    &[0xFF], &[0x0F, 0xBA], &[0x0F, 0xC7],
];

/// Prefix sets of the systematic sweep (REX sets only in 64-bit mode).
#[rustfmt::skip]
const PREFIX_SETS: &[&[u8]] = &[
    &[], &[0x66], &[0x67], &[0x66, 0x67], &[0xF0], &[0xF2], &[0xF3], &[0xF0, 0x66],
    &[0xF3, 0x66], &[0x66, 0xF2], &[0xF2, 0xF3], &[0x26], &[0x2E], &[0x36], &[0x3E], &[0x64],
    &[0x65], &[0x64, 0x3E], &[0x3E, 0x64, 0x67],
    &[0x40], &[0x48], &[0x44], &[0x42], &[0x41], &[0x4F], &[0x66, 0x48], &[0x48, 0x66],
    &[0xF0, 0x48], &[0x67, 0x41], &[0x65, 0x67, 0x4C], &[0x41, 0x48], &[0xF3, 0x48],
];
