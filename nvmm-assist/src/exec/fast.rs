//! The fast path: the instructions that make up nearly every MMIO exit of a
//! 64-bit guest (MOV 88/89/8A/8B/C6/C7, MOVZX 0F B6/B7 and the immediate
//! ALU group 80/81/83), with at most a 66 prefix and a REX prefix, decoded
//! and executed without building an [`Instruction`](crate::Instruction).
//!
//! Anything outside that shape, and any case needing more than the plain
//! path (a page-crossing or misaligned-with-AC access, a non-canonical
//! address, an exit GPA that does not match, bytes that end early), returns
//! `None` and goes through the general decoder and executor, which handle
//! it completely. The fast path never reports an error it did not get from
//! a bus callback, so it cannot disagree with the general path about a
//! fault; a differential test compares the two on random inputs.

use super::alu;
use crate::Outcome;
use crate::bus::{GuestRam, MmioBus, RamStatus};
use crate::decode::Mnemonic;
use crate::error::Error;
use crate::flags::{self, AC, RF};
use crate::state::{CpuState, Gpr};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// MOV r/m, reg.
    Store,
    /// MOV reg, r/m.
    Load,
    /// MOV r/m, imm.
    StoreImm,
    /// MOVZX reg, r/m8/16.
    Movzx,
    /// Group 1: ALU r/m, imm; group 3 /0,/1: TEST r/m, imm.
    Alu,
    /// ALU r/m, reg (00-39 even forms ending in 0/1, TEST 84/85): the
    /// operation is in `op`.
    AluToMem,
    /// ALU reg, r/m (00-3B forms ending in 2/3).
    AluToReg,
}

/// The operation of an ALU opcode 00-3F (bits 5:3).
#[inline(always)]
fn alu_op(index: u8) -> Mnemonic {
    match index & 7 {
        0 => Mnemonic::Add,
        1 => Mnemonic::Or,
        2 => Mnemonic::Adc,
        3 => Mnemonic::Sbb,
        4 => Mnemonic::And,
        5 => Mnemonic::Sub,
        6 => Mnemonic::Xor,
        _ => Mnemonic::Cmp,
    }
}

/// A GPR read with the operand-size rules: `size` 1 without REX picks
/// AH..BH for encodings 4-7.
#[inline(always)]
fn read_reg<S: CpuState + ?Sized>(state: &S, reg: u8, size: u8, rex: bool) -> u64 {
    if size == 1 && !rex && (4..8).contains(&reg) {
        (state.gpr(Gpr::from_index(reg - 4)) >> 8) & 0xFF
    } else {
        state.gpr(Gpr::from_index(reg)) & flags::size_mask(size)
    }
}

/// The new 64-bit value of the register written with `value` at `size`.
#[inline(always)]
fn merged<S: CpuState + ?Sized>(state: &S, reg: u8, size: u8, rex: bool, value: u64) -> (Gpr, u64) {
    if size == 1 && !rex && (4..8).contains(&reg) {
        let g = Gpr::from_index(reg - 4);
        (g, (state.gpr(g) & !0xFF00) | ((value & 0xFF) << 8))
    } else {
        let g = Gpr::from_index(reg);
        let old = state.gpr(g);
        let v = match size {
            1 => (old & !0xFF) | (value & 0xFF),
            2 => (old & !0xFFFF) | (value & 0xFFFF),
            4 => value & 0xFFFF_FFFF,
            _ => value,
        };
        (g, v)
    }
}

#[inline]
fn byte(bytes: &[u8], i: usize) -> Option<u8> {
    bytes.get(i).copied()
}

#[inline]
fn disp32(bytes: &[u8], i: usize) -> Option<u64> {
    let b = bytes.get(i..i + 4)?;
    Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64 as u64)
}

/// A decoded fast-path instruction.
#[derive(Clone, Copy)]
struct Fast {
    kind: Kind,
    /// Operand size (destination size for MOVZX).
    size: u8,
    /// Bytes accessed in memory.
    access_size: u8,
    /// The register operand's encoding (0-15).
    reg: u8,
    /// The ALU operation (Alu, AluToMem, AluToReg).
    op: Mnemonic,
    /// A REX prefix is present (SPL..DIL instead of AH..BH).
    rex: bool,
    /// The immediate, sign-extended to 64 bits (16-bit ones zero-extended;
    /// only the low 16 bits are used then).
    imm: u64,
    /// The linear (= effective) address.
    linear: u64,
    /// The RIP after the instruction.
    next_rip: u64,
}

/// Decodes `bytes` if it is a fast-path form whose access is plain.
#[inline(always)]
fn decode<S: CpuState + ?Sized>(state: &S, exit_gpa: u64, bytes: &[u8]) -> Option<Fast> {
    let f = decode_form(state, bytes)?;
    let linear = f.linear;
    let asz = u64::from(f.access_size);
    // 64-bit mode: DS/SS bases are ignored and there is no limit, so the
    // linear address is the effective address. Leave the non-canonical
    // case (#GP/#SS), page-crossing accesses, a mismatching exit GPA and a
    // possible #AC to the general path.
    if ((linear as i64) << 16 >> 16) as u64 != linear
        || (linear & 0xFFF) + asz > 0x1000
        || exit_gpa & 0xFFF != linear & 0xFFF
        || (state.rflags() & AC != 0 && linear & (asz - 1) != 0)
    {
        return None;
    }
    Some(f)
}

/// Decodes a fast-path form and computes its effective address, with no
/// check of the address.
#[inline(always)]
fn decode_form<S: CpuState + ?Sized>(state: &S, bytes: &[u8]) -> Option<Fast> {
    let mut i = 0;
    let mut b = byte(bytes, 0)?;
    let osz16 = b == 0x66;
    if osz16 {
        i += 1;
        b = byte(bytes, i)?;
    }
    let rex = if b & 0xF0 == 0x40 {
        i += 1;
        let r = b;
        b = byte(bytes, i)?;
        r
    } else {
        0
    };
    i += 1;
    let vsize = if rex & 8 != 0 {
        8
    } else if osz16 {
        2
    } else {
        4
    };
    // (kind, operand size, immediate size, bytes accessed)
    let mut op = Mnemonic::Mov;
    let (kind, size, imm_size, access_size) = match b {
        0x84 => {
            op = Mnemonic::Test;
            (Kind::AluToMem, 1, 0, 1)
        }
        0x85 => {
            op = Mnemonic::Test;
            (Kind::AluToMem, vsize, 0, vsize)
        }
        0xF6 => (Kind::Alu, 1, 1, 1),
        0xF7 => (Kind::Alu, vsize, if vsize == 2 { 2 } else { 4 }, vsize),
        0x88 => (Kind::Store, 1, 0, 1),
        0x89 => (Kind::Store, vsize, 0, vsize),
        0x8A => (Kind::Load, 1, 0, 1),
        0x8B => (Kind::Load, vsize, 0, vsize),
        0xC6 => (Kind::StoreImm, 1, 1, 1),
        0xC7 => (Kind::StoreImm, vsize, if vsize == 2 { 2 } else { 4 }, vsize),
        0x80 => (Kind::Alu, 1, 1, 1),
        0x81 => (Kind::Alu, vsize, if vsize == 2 { 2 } else { 4 }, vsize),
        0x83 => (Kind::Alu, vsize, 1, vsize),
        0x0F => {
            let op2 = byte(bytes, i)?;
            i += 1;
            match op2 {
                0xB6 => (Kind::Movzx, vsize, 0, 1),
                0xB7 => (Kind::Movzx, vsize, 0, 2),
                _ => return None,
            }
        }
        // ALU r/m,reg and reg,r/m: 00-03, 08-0B, ..., 38-3B.
        0x00..=0x3B if b & 7 < 4 => {
            op = alu_op(b >> 3);
            let size = if b & 1 == 0 { 1 } else { vsize };
            let kind = if b & 2 == 0 {
                Kind::AluToMem
            } else {
                Kind::AluToReg
            };
            (kind, size, 0, size)
        }
        _ => return None,
    };
    let modrm = byte(bytes, i)?;
    i += 1;
    let md = modrm >> 6;
    let reg_field = (modrm >> 3) & 7;
    let rm = modrm & 7;
    if md == 3 || (kind == Kind::StoreImm && reg_field != 0) {
        return None;
    }
    if kind == Kind::Alu {
        op = match b {
            // Group 3: only TEST (/0 and its alias /1) here.
            0xF6 | 0xF7 if reg_field < 2 => Mnemonic::Test,
            0xF6 | 0xF7 => return None,
            _ => alu_op(reg_field),
        };
    }
    let rex_b = (rex & 1) << 3;
    let mut rip_relative = false;
    let mut ea: u64 = 0;
    let mut disp_mod0 = false;
    if rm == 4 {
        let sib = byte(bytes, i)?;
        i += 1;
        let index = ((sib >> 3) & 7) | ((rex & 2) << 2);
        if index != 4 {
            ea = state.gpr(Gpr::from_index(index)) << (sib >> 6);
        }
        if sib & 7 == 5 && md == 0 {
            disp_mod0 = true;
        } else {
            ea = ea.wrapping_add(state.gpr(Gpr::from_index((sib & 7) | rex_b)));
        }
    } else if rm == 5 && md == 0 {
        rip_relative = true;
        disp_mod0 = true;
    } else {
        ea = state.gpr(Gpr::from_index(rm | rex_b));
    }
    let disp = match md {
        1 => {
            let d = byte(bytes, i)? as i8 as i64 as u64;
            i += 1;
            d
        }
        2 => {
            let d = disp32(bytes, i)?;
            i += 4;
            d
        }
        _ if disp_mod0 => {
            let d = disp32(bytes, i)?;
            i += 4;
            d
        }
        _ => 0,
    };
    let imm = match imm_size {
        0 => 0,
        1 => {
            let v = byte(bytes, i)? as i8 as i64 as u64;
            i += 1;
            v
        }
        2 => {
            let s = bytes.get(i..i + 2)?;
            i += 2;
            u64::from(u16::from_le_bytes([s[0], s[1]]))
        }
        _ => {
            let v = disp32(bytes, i)?;
            i += 4;
            v
        }
    };
    let next_rip = state.rip().wrapping_add(i as u64);
    if rip_relative {
        ea = next_rip;
    }
    let linear = ea.wrapping_add(disp);
    Some(Fast {
        kind,
        size,
        access_size,
        reg: reg_field | ((rex & 4) << 1),
        op,
        rex: rex != 0,
        imm,
        linear,
        next_rip,
    })
}

/// One access within a page at `gpa`: RAM if the RAM says so, else MMIO
/// (the dispatch `access::read_phys` does for each fragment).
#[inline(always)]
fn read<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    buf: &mut [u8],
) -> Result<(), Error> {
    if ram.read(gpa, buf)? == RamStatus::NotRam {
        mmio.read(gpa, buf)?;
    }
    Ok(())
}

/// See [`read`].
#[inline(always)]
fn write<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    data: &[u8],
) -> Result<(), Error> {
    if ram.write(gpa, data)? == RamStatus::NotRam {
        mmio.write(gpa, data)?;
    }
    Ok(())
}

#[inline(always)]
fn exec<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    f: &Fast,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let n = usize::from(f.access_size.min(8));
    let mut buf = [0u8; 8];
    let rflags = state.rflags();
    // RF is cleared when an instruction completes.
    let mut new_flags = rflags & !RF;
    match f.kind {
        Kind::Store | Kind::StoreImm => {
            let v = if f.kind == Kind::Store {
                read_reg(state, f.reg, f.size, f.rex)
            } else {
                f.imm
            };
            let data = v.to_le_bytes();
            write(ram, mmio, gpa, data.get(..n).unwrap_or(&[]))?;
        }
        Kind::Load | Kind::Movzx => {
            read(ram, mmio, gpa, buf.get_mut(..n).unwrap_or(&mut []))?;
            let (g, v) = merged(state, f.reg, f.size, f.rex, u64::from_le_bytes(buf));
            state.set_gpr(g, v);
        }
        Kind::Alu | Kind::AluToMem | Kind::AluToReg => {
            read(ram, mmio, gpa, buf.get_mut(..n).unwrap_or(&mut []))?;
            let mem = u64::from_le_bytes(buf);
            let (a, b) = match f.kind {
                Kind::Alu => (mem, f.imm),
                Kind::AluToMem => (mem, read_reg(state, f.reg, f.size, f.rex)),
                _ => (read_reg(state, f.reg, f.size, f.rex), mem),
            };
            let (r, fl) = alu::compute(f.op, a, b, f.size, new_flags).unwrap_or((a, new_flags));
            if !matches!(f.op, Mnemonic::Cmp | Mnemonic::Test) {
                if f.kind == Kind::AluToReg {
                    let (g, v) = merged(state, f.reg, f.size, f.rex, r);
                    state.set_gpr(g, v);
                } else {
                    let data = r.to_le_bytes();
                    write(ram, mmio, gpa, data.get(..n).unwrap_or(&[]))?;
                }
            }
            new_flags = fl;
        }
    }
    if new_flags != rflags {
        state.set_rflags(new_flags);
    }
    state.set_rip(f.next_rip);
    Ok(Outcome::Done)
}

/// Tries the fast path on a 64-bit-mode memory exit whose instruction bytes
/// are `bytes`. `None`: not handled, nothing done (no access, no change).
#[inline(always)]
pub(crate) fn try_exec<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    bytes: &[u8],
) -> Option<Result<Outcome, Error>>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let f = decode(state, exit_gpa, bytes)?;
    debug_assert_eq!(f.linear & 0xFFF, exit_gpa & 0xFFF);
    Some(exec(state, ram, mmio, exit_gpa, &f))
}

#[cfg(test)]
mod tests {
    //! The fast path against the general decoder and executor, on random
    //! instructions of the fast-path shapes (and near misses) with random
    //! registers and flags: same outcome, registers, RAM and device log.

    use std::vec::Vec;

    use crate::Registers;
    use crate::decode::{Operand, decode};
    use crate::mem::assist_mem_with;
    use crate::mode::CpuMode;
    use crate::testutil::{Layout, PageTables, RecordingMmio, TEST_VENDOR, TestRam, pte};
    use crate::{AccessType, MemExit};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const OPCODES: &[&[u8]] = &[
        &[0x88],
        &[0x89],
        &[0x8A],
        &[0x8B],
        &[0xC6],
        &[0xC7],
        &[0x80],
        &[0x81],
        &[0x83],
        &[0x0F, 0xB6],
        &[0x0F, 0xB7],
        &[0x00],
        &[0x01],
        &[0x02],
        &[0x03],
        &[0x09],
        &[0x0A],
        &[0x11],
        &[0x13],
        &[0x18],
        &[0x21],
        &[0x22],
        &[0x29],
        &[0x2B],
        &[0x30],
        &[0x33],
        &[0x38],
        &[0x39],
        &[0x3A],
        &[0x3B],
        &[0x84],
        &[0x85],
        &[0xF6],
        &[0xF7],
        // Near misses the fast path must leave alone.
        &[0x0F, 0xBE],
        &[0x04],
        &[0x3D],
        &[0x86],
    ];

    fn random_instruction(rng: &mut Rng) -> Vec<u8> {
        let mut v = Vec::new();
        match rng.below(6) {
            0 => v.push(0x66),
            1 => v.push(0x40 | rng.below(16) as u8),
            2 => {
                v.push(0x66);
                v.push(0x40 | rng.below(16) as u8);
            }
            3 if rng.below(4) == 0 => v.push([0xF0, 0xF3, 0x67, 0x64][rng.below(4) as usize]),
            _ => {}
        }
        v.extend_from_slice(OPCODES[rng.below(OPCODES.len() as u64) as usize]);
        // Mostly memory forms; mod 3 sometimes.
        let md = if rng.below(16) == 0 {
            3
        } else {
            rng.below(3) as u8
        };
        let mut reg = rng.below(8) as u8;
        if rng.below(2) == 0 {
            reg = 0; // C6/C7 /0 more often
        }
        v.push(md << 6 | reg << 3 | rng.below(8) as u8);
        // Enough trailing bytes for SIB, displacement and immediate.
        for _ in 0..10 {
            let b = rng.next() as u8;
            v.push(if rng.below(2) == 0 { b & 0x0F } else { b });
        }
        let keep = v.len() - rng.below(3) as usize * rng.below(4) as usize;
        v.truncate(keep);
        v
    }

    /// The linear address the general decoder says the instruction
    /// accesses (64-bit mode: the effective address), computed here from
    /// the decoded operand independently of both paths.
    fn linear(bytes: &[u8], regs: &crate::Registers) -> Option<u64> {
        let insn = decode(bytes, CpuMode::Long64).ok()?;
        let m = insn.operands.iter().find_map(|o| match o {
            Operand::Mem(m) => Some(*m),
            _ => None,
        })?;
        let mut ea = if m.rip_relative {
            regs.rip.wrapping_add(u64::from(insn.len))
        } else {
            0
        };
        if let Some(b) = m.base {
            ea = ea.wrapping_add(regs.gprs[b as usize]);
        }
        if let Some(i) = m.index {
            ea = ea.wrapping_add(regs.gprs[i as usize].wrapping_mul(u64::from(m.scale)));
        }
        ea = ea.wrapping_add(m.disp as u64);
        if insn.address_size == 4 {
            ea &= 0xFFFF_FFFF;
        }
        Some(ea)
    }

    #[test]
    fn fast_path_matches_the_general_path() {
        let mut ram = TestRam::new(0x40000).hole(0x1000, 0x3000);
        let mut pt = PageTables::new(Layout::Level4, 0x20000);
        for page in 0..0x20u64 {
            pt.map(&mut ram, page * 4096, page * 4096, 1, pte::PWU);
        }
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        let mut handled = 0;
        for _ in 0..40_000 {
            let bytes = random_instruction(&mut rng);
            let mut regs = Registers::long_mode(TEST_VENDOR, pt.cr3(), 0, 0);
            regs.rip = 0x10000 + rng.below(0x100);
            for g in regs.gprs.iter_mut() {
                *g = match rng.below(4) {
                    0 => rng.below(0x400),
                    1 => 0x1000 + rng.below(0x1000),
                    2 => rng.next(),
                    _ => 0x1800 - rng.below(0x800),
                };
            }
            regs.rflags = 2 | (rng.next() & 0x8D5) | if rng.below(8) == 0 { 1 << 18 } else { 0 };
            let Some(lin) = linear(&bytes, &regs) else {
                continue;
            };
            let gpa = if rng.below(32) == 0 { lin ^ 8 } else { lin };
            let exit = MemExit {
                gpa,
                access: AccessType::Read,
                instruction: &bytes,
            };
            let (mut r1, mut ram1, mut m1) = (regs.clone(), ram.clone(), RecordingMmio::default());
            let (mut r2, mut ram2, mut m2) = (regs.clone(), ram.clone(), RecordingMmio::default());
            let fast = assist_mem_with(&mut r1, &mut ram1, &mut m1, &exit, true);
            let general = assist_mem_with(&mut r2, &mut ram2, &mut m2, &exit, false);
            assert_eq!(fast, general, "{bytes:02x?}");
            assert_eq!(r1, r2, "{bytes:02x?}");
            assert_eq!(m1.log, m2.log, "{bytes:02x?}");
            assert!(ram1.mem == ram2.mem, "{bytes:02x?}");
            if super::decode(&regs, gpa, &bytes).is_some() {
                handled += 1;
            }
            // Whatever the exit says, a form the fast path takes must have
            // the general decoder's address and length.
            if let Some(f) = super::decode_form(&regs, &bytes) {
                let insn = decode(&bytes, CpuMode::Long64).expect("general decode");
                assert_eq!(f.linear, lin, "{bytes:02x?}");
                assert_eq!(f.next_rip, regs.rip + u64::from(insn.len), "{bytes:02x?}");
                let m = insn.memory_operand().expect("memory operand");
                assert_eq!(f.access_size, m.size, "{bytes:02x?}");
            }
        }
        assert!(
            handled > 3_000,
            "the fast path handled only {handled} cases"
        );
    }
}
