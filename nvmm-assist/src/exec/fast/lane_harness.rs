//! The differential tests' common step: run one case on a copy of the
//! machine (registers, RAM, devices) through one path, then hold two copies
//! to the same result. Every lane test compares a lane with the general
//! path or the full fast path this way, so a lane can take a case only if
//! everything it does matches, down to the order of device accesses.
//!
//! Also the pieces the random and directed lane tests build their cases
//! from: the modes, the registers of a mode, random segments, flags and
//! instruction tails, the machine with identity paging, and the addresses
//! an instruction accesses (computed from the general decoder's operand,
//! apart from both paths).

use std::string::String;
use std::vec::Vec;

use super::run_mode;
use crate::decode::{Instruction, MemoryOperand, Mnemonic, Operand, decode};
use crate::mem::assist_mem_with;
use crate::mode::CpuMode;
use crate::testutil::bits::{CR0_PE, RFLAGS_VM};
use crate::testutil::{Layout, PageTables, RecordingMmio, Rng, TEST_VENDOR, TestRam, pte};
use crate::{
    AccessType, Error, FetchCache, MemExit, Outcome, Registers, Segment, SegmentAttributes,
};

/// The modes the lanes are held to the other paths in: each default
/// address size, and 16- and 32-bit code in protected mode.
pub(super) const LANE_MODES: [CpuMode; 5] = [
    CpuMode::Long64,
    CpuMode::Compat32,
    CpuMode::Protected32,
    CpuMode::Protected16,
    CpuMode::Real,
];

/// `$body` with the constant `$a` the default address size of `$mode`
/// (8, 4 or 2), which the lanes and decoders take as a const parameter.
macro_rules! by_address_size {
    ($mode:expr, $a:ident => $body:expr) => {
        match $mode.default_address_size() {
            8 => {
                const $a: u8 = 8;
                $body
            }
            4 => {
                const $a: u8 = 4;
                $body
            }
            _ => {
                const $a: u8 = 2;
                $body
            }
        }
    };
}
pub(super) use by_address_size;

/// Runs `compare` (`iterations` random cases in one mode, returning how
/// many the lane took) in each of [`LANE_MODES`] on one generator seeded
/// with `seed`, with `debug` cases per mode in unoptimised builds and
/// `release` otherwise, and checks that the lane took more than one case
/// in `share` in each mode.
pub(super) fn each_lane_mode(
    seed: u64,
    debug: usize,
    release: usize,
    share: usize,
    mut compare: impl FnMut(&mut Rng, CpuMode, usize) -> usize,
) {
    let iterations = if cfg!(debug_assertions) {
        debug
    } else {
        release
    };
    let mut rng = Rng(seed);
    for mode in LANE_MODES {
        let taken = compare(&mut rng, mode, iterations);
        assert!(
            taken > iterations / share,
            "{mode:?}: the lane took {taken}"
        );
    }
}

/// The flat CPL-0 registers of `mode`, paged through `cr3` where the mode
/// pages: 16-bit code segments for [`CpuMode::Protected16`] and
/// [`CpuMode::Compat16`], real-mode segments under CR0.PE and RFLAGS.VM
/// for [`CpuMode::Virtual8086`].
pub(super) fn mode_registers(mode: CpuMode, cr3: u64) -> Registers {
    let mut regs = match mode {
        CpuMode::Long64 => Registers::long_mode(TEST_VENDOR, cr3, 0, 0),
        CpuMode::Compat32 | CpuMode::Compat16 => Registers::compat_mode(TEST_VENDOR, cr3, 0, 0),
        CpuMode::Protected32 | CpuMode::Protected16 => Registers::flat_protected32(TEST_VENDOR),
        _ => Registers::real_mode(TEST_VENDOR),
    };
    if matches!(mode, CpuMode::Protected16 | CpuMode::Compat16) {
        regs.segments[Segment::Cs as usize].attributes = SegmentAttributes::code16();
    }
    if mode == CpuMode::Virtual8086 {
        regs.cr0 |= CR0_PE;
        regs.rflags |= RFLAGS_VM;
    }
    regs
}

/// The segments a data access may name (every one but CS), for
/// [`SegmentDraw::segments`].
pub(super) const DATA_SEGMENTS: &[Segment] = &[
    Segment::Es,
    Segment::Ss,
    Segment::Ds,
    Segment::Fs,
    Segment::Gs,
];

/// The segment types that fault some data accesses (a write, an
/// expand-down offset, any read), for [`SegmentDraw::types`].
pub(super) const FAULTING_TYPES: &[u8] = &[
    SegmentAttributes::TYPE_DATA_READ_ONLY,
    SegmentAttributes::TYPE_DATA_EXPAND_DOWN,
    SegmentAttributes::TYPE_CODE_EXECUTE_ONLY,
];

/// What [`random_segments`] may change, and how often.
pub(super) struct SegmentDraw<'a> {
    /// The segments drawn (outside 64-bit mode; in it only FS and GS,
    /// whose bases count there).
    pub segments: &'a [Segment],
    /// The limits one segment in four gets.
    pub limits: &'a [u32],
    /// One segment in three (protected modes) gets a random D/B bit.
    pub db: bool,
    /// One segment in `type_one_in` (protected modes; 0: none) gets one of
    /// `types` (the one, without a draw, if there is only one).
    pub type_one_in: u64,
    /// The types drawn.
    pub types: &'a [u8],
}

impl SegmentDraw<'static> {
    /// Every data segment ([`DATA_SEGMENTS`]), limits of 4, 6, 8 and 64
    /// KiB, D/B bits with `db`, and one of [`FAULTING_TYPES`] one in
    /// `type_one_in`: the general differential tests' draw.
    pub(super) fn data_segments(db: bool, type_one_in: u64) -> SegmentDraw<'static> {
        SegmentDraw {
            segments: DATA_SEGMENTS,
            limits: &[0xFFF, 0x17FF, 0x1FFF, 0xFFFF],
            db,
            type_one_in,
            types: FAULTING_TYPES,
        }
    }
}

/// Random bases, limits, D/B bits and types on `regs`' segments, as
/// `draw` says: outside 64-bit mode a base in 0-0x1C00 and a limit of
/// `draw.limits` each one in four; in 64-bit mode an FS or GS base in
/// 0-0x1800 one in two.
pub(super) fn random_segments(
    rng: &mut Rng,
    mode: CpuMode,
    regs: &mut Registers,
    draw: &SegmentDraw,
) {
    for &s in draw.segments {
        let r = &mut regs.segments[s as usize];
        if mode.is_64bit() {
            if matches!(s, Segment::Fs | Segment::Gs) && rng.below(2) == 0 {
                r.base = 0x800 * rng.below(4);
            }
            continue;
        }
        if rng.below(4) == 0 {
            r.base = 0x400 * rng.below(8);
        }
        if rng.below(4) == 0 {
            r.limit = rng.pick(draw.limits);
        }
        if draw.db && !mode.is_real_or_v86() && rng.below(3) == 0 {
            // The stack's address size (SS.B) and 16-bit data segments.
            r.attributes = r.attributes.with_db(rng.below(2) == 0);
        }
        if draw.type_one_in != 0 && !mode.is_real_or_v86() && rng.below(draw.type_one_in) == 0 {
            let typ = match draw.types {
                [one] => *one,
                types => rng.pick(types),
            };
            r.attributes = r.attributes.with_type(typ);
        }
    }
}

/// RIP at `rip` plus up to 0xFF, or (outside 64-bit mode, one in 16)
/// near the wrap of the instruction pointer.
pub(super) fn random_rip(rng: &mut Rng, mode: CpuMode, regs: &mut Registers, rip: u64) {
    regs.rip = rip + rng.below(0x100);
    if !mode.is_64bit() && rng.below(16) == 0 {
        regs.rip = if mode.default_size() == 2 {
            0xFFF8
        } else {
            0xFFFF_FFF8
        };
    }
}

/// The end of the lane tests' random states: [`random_rip`], random
/// status flags with AC one in 8, RF one in 4, and one in 8 CR0.AM with
/// CPL 3 outside real mode (so that AC checks alignment).
pub(super) fn random_rip_and_flags(rng: &mut Rng, mode: CpuMode, regs: &mut Registers, rip: u64) {
    random_rip(rng, mode, regs, rip);
    regs.rflags = 2 | (rng.next() & 0x8D5) | if rng.below(8) == 0 { 1 << 18 } else { 0 };
    if rng.below(4) == 0 {
        regs.rflags |= 1 << 16; // RF
    }
    if rng.below(8) == 0 {
        regs.cr0 |= 1 << 18; // CR0.AM: with AC and CPL 3, #AC
        if !mode.is_real_or_v86() {
            *regs = regs.clone().at_cpl(3);
        }
    }
}

/// A random ModRM.mod for the generators: mostly a memory form (0-2),
/// one in 16 a register (3).
pub(super) fn random_mod(rng: &mut Rng) -> u8 {
    if rng.below(16) == 0 {
        3
    } else {
        rng.below(3) as u8
    }
}

/// Ends a random instruction: the ModRM of `md` and `reg` with a random
/// r/m, ten random bytes (for SIB, displacement and immediate; half of
/// them small), then up to `(2 * (cut - 1))` bytes cut off the end.
pub(super) fn push_modrm_and_tail(rng: &mut Rng, v: &mut Vec<u8>, md: u8, reg: u8, cut: u64) {
    v.push(md << 6 | reg << 3 | rng.below(8) as u8);
    for _ in 0..10 {
        let b = rng.next() as u8;
        v.push(if rng.below(2) == 0 { b & 0x0F } else { b });
    }
    let keep = v.len() - rng.below(3) as usize * rng.below(cut) as usize;
    v.truncate(keep);
}

/// The linear address of the memory operand of the fast-path form that
/// `bytes` decode to (0 if they decode to none), for choosing the exit GPA.
pub(super) fn form_linear<const ADDR: u8, const INT: bool>(
    regs: &Registers,
    mode: CpuMode,
    bytes: &[u8],
) -> u64 {
    super::decode_form::<ADDR, INT, _>(regs, mode, bytes)
        .map(|f| {
            if mode.is_64bit() {
                f.offset
            } else {
                regs.segments[f.segment as usize]
                    .base
                    .wrapping_add(f.offset)
            }
        })
        .unwrap_or(0)
}

/// An exit GPA in the page at `page`: at the page offset of `linear`, or
/// one in 16 anywhere in the page.
pub(super) fn exit_gpa(rng: &mut Rng, page: u64, linear: u64) -> u64 {
    if rng.below(16) == 0 {
        page + rng.below(0x1000)
    } else {
        page + (linear & 0xFFF)
    }
}

/// RAM of 0x40000 bytes with the device at 0x1000-0x2FFF, its first
/// 0x20000 bytes from `rng`, and 4-level tables at 0x20000 that
/// identity-map the first 0x20 pages; returns it and the tables' CR3.
pub(super) fn identity_ram(rng: &mut Rng) -> (TestRam, u64) {
    let mut ram = TestRam::new(0x40000).hole(0x1000, 0x3000);
    for b in ram.mem.iter_mut().take(0x20000) {
        *b = rng.next() as u8;
    }
    let mut pt = PageTables::new(Layout::Level4, 0x20000);
    for page in 0..0x20u64 {
        pt.map(&mut ram, page * 4096, page * 4096, 1, pte::PWU);
    }
    (ram, pt.cr3())
}

/// The `n` bytes a read at `gpa` returns (RAM, or the test device in a
/// hole of `ram`).
pub(super) fn memory_at(ram: &TestRam, gpa: u64, n: usize) -> Vec<u8> {
    (0..n as u64)
        .map(|i| gpa.wrapping_add(i))
        .map(|a| {
            if ram.holes.iter().any(|&(s, e)| (s..e).contains(&a)) {
                RecordingMmio::byte_at(a)
            } else {
                ram.mem.get(a as usize).copied().unwrap_or(0)
            }
        })
        .collect()
}

/// Sets rDX:rAX (or EDX:EAX, half the time) to the 16 (8) bytes a read
/// at `gpa` returns, so that a CMPXCHG* there succeeds (and rAX alone to
/// its first bytes, for CMPXCHG).
pub(super) fn accumulator_matches(rng: &mut Rng, regs: &mut Registers, ram: &TestRam, gpa: u64) {
    let mem = memory_at(ram, gpa, 16);
    let half = if rng.below(2) == 0 { 4 } else { 8 };
    regs.gprs[crate::Gpr::Rax as usize] = le(&mem[..half]);
    regs.gprs[crate::Gpr::Rdx as usize] = le(&mem[half..2 * half]);
}

/// `bytes` as a little-endian number.
pub(super) fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// The offset (effective address, wrapped to the address size) of the
/// memory operand `m` of `insn` in the state `regs`.
pub(super) fn operand_offset(insn: &Instruction, m: &MemoryOperand, regs: &Registers) -> u64 {
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
    ea.wrapping_add(m.disp as u64) & crate::flags::size_mask(insn.address_size)
}

/// The linear address of `offset` in `segment` (segment checks left out):
/// base + offset, wrapped to 32 bits outside 64-bit mode; in 64-bit mode
/// only FS and GS have a base.
pub(super) fn linear_address(
    regs: &Registers,
    mode: CpuMode,
    segment: Segment,
    offset: u64,
) -> u64 {
    let base = regs.segments[segment as usize].base;
    if mode.is_64bit() {
        if matches!(segment, Segment::Fs | Segment::Gs) {
            base.wrapping_add(offset)
        } else {
            offset
        }
    } else {
        base.wrapping_add(offset) & 0xFFFF_FFFF
    }
}

/// The effective address (offset) and the linear address of the bytes
/// that `bytes` access in `regs`, from the general decoder's first memory
/// operand and computed here apart from both paths (segment checks left
/// out); a BT* bit offset in a register moves the access.
pub(super) fn addresses(bytes: &[u8], regs: &Registers, mode: CpuMode) -> Option<(u64, u64)> {
    let insn = decode(bytes, mode).ok()?;
    let m = insn.operands.iter().find_map(|o| match o {
        Operand::Mem(m) => Some(*m),
        _ => None,
    })?;
    let ea = operand_offset(&insn, &m, regs);
    let mut accessed = ea;
    if let (Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc, Operand::Reg(r)) =
        (insn.mnemonic, insn.operands[1])
    {
        let raw = regs.gprs[r.gpr as usize] & crate::flags::size_mask(insn.operand_size);
        let (_, d) = crate::exec::bits::register_offset(raw, insn.operand_size);
        accessed = ea.wrapping_add(d as u64) & crate::flags::size_mask(insn.address_size);
    }
    Some((ea, linear_address(regs, mode, m.segment, accessed)))
}

/// One copy of the machine a case runs on.
#[derive(Clone)]
pub(super) struct Machine {
    pub regs: Registers,
    pub ram: TestRam,
    pub mmio: RecordingMmio,
}

impl Machine {
    /// A copy of `regs`, `ram` and `mmio` (each run gets its own).
    pub fn new(regs: &Registers, ram: &TestRam, mmio: &RecordingMmio) -> Machine {
        Machine {
            regs: regs.clone(),
            ram: ram.clone(),
            mmio: mmio.clone(),
        }
    }

    /// The whole memory assist on the exit `gpa` with `bytes`, its fast
    /// path allowed or not (with `false`: the general path alone).
    pub fn assist(&mut self, gpa: u64, bytes: &[u8], fast: bool) -> Result<Outcome, Error> {
        self.assist_cached(gpa, bytes, fast, &mut FetchCache::new())
    }

    /// [`Machine::assist`] with the caller's fetch and data cache (kept
    /// across cases, to hold both paths to the same cached translations).
    pub fn assist_cached(
        &mut self,
        gpa: u64,
        bytes: &[u8],
        fast: bool,
        cache: &mut FetchCache,
    ) -> Result<Outcome, Error> {
        let exit = MemExit {
            gpa,
            access: AccessType::Read,
            instruction: bytes,
        };
        assist_mem_with(
            &mut self.regs,
            &mut self.ram,
            &mut self.mmio,
            &exit,
            fast,
            cache,
        )
    }

    /// The general path alone.
    pub fn general(&mut self, gpa: u64, bytes: &[u8]) -> Result<Outcome, Error> {
        self.assist(gpa, bytes, false)
    }

    /// The full fast path in a mode of default address size `ADDR`; `None`
    /// if it declined (it then hands the case to the general path, which
    /// this does not run).
    pub fn full_fast<const ADDR: u8>(
        &mut self,
        mode: CpuMode,
        gpa: u64,
        bytes: &[u8],
    ) -> Option<Result<Outcome, Error>> {
        let mut declined = false;
        let result = run_mode::<ADDR, _, _, _>(
            &mut self.regs,
            mode,
            &mut self.ram,
            &mut FetchCache::new(),
            &mut self.mmio,
            gpa,
            bytes,
            |_, _, _, _| {
                declined = true;
                Ok(Outcome::Resume)
            },
        );
        (!declined).then_some(result)
    }

    /// The two runs left the same registers, RAM bytes, device log,
    /// compare-and-write log and RAM call counts (`what` names the case).
    #[track_caller]
    pub fn assert_same(&self, other: &Machine, what: &str) {
        assert_eq!(self.regs, other.regs, "{what}: registers");
        assert_eq!(self.mmio.log, other.mmio.log, "{what}: device accesses");
        assert!(self.ram.mem == other.ram.mem, "{what}: RAM bytes");
        assert_eq!(
            self.ram.cas_log, other.ram.cas_log,
            "{what}: compare-and-writes"
        );
        assert_eq!(
            (self.ram.reads, self.ram.writes),
            (other.ram.reads, other.ram.writes),
            "{what}: RAM reads and writes"
        );
    }

    /// A path that declined (or failed) did nothing: the registers are
    /// still `before` and no device or RAM call was made.
    #[track_caller]
    pub fn assert_untouched(&self, before: &Registers, what: &str) {
        assert_eq!(&self.regs, before, "{what}: registers changed");
        assert!(self.mmio.log.is_empty(), "{what}: a device access");
        assert_eq!(
            (self.ram.reads, self.ram.writes),
            (0, 0),
            "{what}: a RAM access"
        );
    }
}

/// The case's name in a failure message.
pub(super) fn case(mode: CpuMode, bytes: &[u8], gpa: u64) -> String {
    std::format!("{mode:?} {bytes:02x?} gpa {gpa:#x}")
}
