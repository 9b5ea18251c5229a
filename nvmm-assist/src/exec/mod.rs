//! Instruction semantics: one module per instruction family, on top of a
//! shared execution context ([`Exec`]) that reads guest registers, stages
//! register writes until the instruction has succeeded, locates memory
//! operands and performs their accesses.
//!
//! Staging: nothing is written to the [`CpuState`] while an instruction
//! runs. [`Pending`] collects the new register values; `mem.rs` applies them
//! only when the family function returned `Ok`, so an error leaves the guest
//! registers untouched.

mod alu;
mod bits;
pub(crate) mod fast;
mod mov;
mod sse;
mod stack;
mod string;
mod xchg;

use crate::Outcome;
use crate::access::{self, AccessType, PhysRange};
use crate::bus::{BusError, CompareWrite, GuestRam, MmioBus, RamStatus};
use crate::decode::{Instruction, MemoryOperand, Mnemonic, Operand, Register};
use crate::error::{Error, Exception};
use crate::fetch_cache::FetchCache;
use crate::flags;
use crate::mode::CpuMode;
use crate::segment;
use crate::state::{CpuState, Gpr, Segment};

/// Size of a guest page: accesses and REP batches are split at multiples.
pub(crate) const PAGE_SIZE: u64 = 4096;
const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// How many times a locked read-modify-write to RAM is retried when memory
/// changes between the read and the compare-and-write. After that the
/// assist returns [`Outcome::Resume`] with nothing changed: the guest
/// re-executes the instruction (and exits again), which bounds the work per
/// call while another vCPU keeps the cache line busy.
pub(crate) const LOCK_RETRIES: u32 = 16;

const CR0_AM: u64 = 1 << 18;

/// The new value of a register holding `old` after a write of `value` to
/// its low `size` bytes (1, 2, 4 or 8; never a high-byte register): 8- and
/// 16-bit writes keep the other bits, 32-bit writes zero-extend to 64 bits,
/// 64-bit writes replace.
#[inline(always)]
pub(crate) fn merge_sized(old: u64, size: u8, value: u64) -> u64 {
    match size {
        1 => (old & !0xFF) | (value & 0xFF),
        2 => (old & !0xFFFF) | (value & 0xFFFF),
        4 => value & 0xFFFF_FFFF,
        _ => value,
    }
}

/// Whether an access at `linear` that must be aligned to `align` bytes
/// raises `#AC(0)`: alignment checking on (CR0.AM, RFLAGS.AC in `rflags`,
/// CPL 3) and `linear` not a multiple of `align`.
#[inline(always)]
pub(crate) fn alignment_faults<S: CpuState + ?Sized>(
    state: &S,
    rflags: u64,
    linear: u64,
    align: u64,
) -> bool {
    align > 1
        && linear & (align - 1) != 0
        && state.cr0() & CR0_AM != 0
        && rflags & flags::AC != 0
        && state.cpl() == 3
}

/// Register values staged by an instruction, applied only on success.
///
/// The caller owns it and lends it to the [`Exec`] that runs the
/// instruction, so that nothing large is moved between the two: after a
/// successful run it is applied in place.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// The staged value of each GPR whose bit is set in `dirty`; the other
    /// entries are unused (the guest state holds their value).
    gprs: [u64; 16],
    /// Bit `i` set: GPR `i` is staged. A full machine word: the flag
    /// tests load it whole, and a wider load than the narrow store that
    /// initialised it would stall on store forwarding.
    dirty: u64,
    rflags: u64,
    rflags_in: u64,
    next_rip: u64,
    xmm: Option<(u8, u128)>,
}

impl Pending {
    /// Nothing staged yet for an instruction of `len` bytes at `state`'s
    /// RIP in `mode`.
    #[inline]
    pub(crate) fn new<S: CpuState + ?Sized>(state: &S, mode: CpuMode, len: u8) -> Self {
        let rflags = state.rflags();
        let next = state.rip().wrapping_add(u64::from(len));
        let next_rip = match mode.default_size() {
            _ if mode.is_64bit() => next,
            // Outside 64-bit mode the instruction pointer wraps at the
            // code segment's size.
            4 => next & 0xFFFF_FFFF,
            _ => next & 0xFFFF,
        };
        Pending {
            gprs: [0; 16],
            dirty: 0,
            rflags,
            rflags_in: rflags,
            next_rip,
            xmm: None,
        }
    }

    /// Stages XMM register `index` (at most one per instruction).
    pub(crate) fn set_xmm(&mut self, index: u8, value: u128) {
        self.xmm = Some((index, value));
    }

    /// Writes the staged registers into `state`; RIP advances past the
    /// instruction, and RFLAGS.RF is cleared as the completion of an
    /// instruction does, only for [`Outcome::Done`].
    #[inline]
    pub(crate) fn apply<S: CpuState + ?Sized>(&self, state: &mut S, outcome: Outcome) {
        let done = outcome == Outcome::Done;
        // RF is cleared here, in a register: clearing it in `self.rflags`
        // first compiles to a one-byte store that the 8-byte load below
        // cannot forward from, a stall of a dozen cycles.
        let rflags = if done {
            self.rflags & !flags::RF
        } else {
            self.rflags
        };
        let mut dirty = self.dirty;
        while dirty != 0 {
            let i = dirty.trailing_zeros() as u8;
            dirty &= dirty - 1;
            if let Some(v) = self.gprs.get(usize::from(i)) {
                state.set_gpr(Gpr::from_index(i), *v);
            }
        }
        if rflags != self.rflags_in {
            state.set_rflags(rflags);
        }
        if let Some((i, v)) = self.xmm {
            state.set_xmm(i, v);
        }
        if done {
            state.set_rip(self.next_rip);
        }
    }
}

/// The execution context of one instruction.
pub(crate) struct Exec<'a, S: ?Sized, R: ?Sized, M: ?Sized> {
    pub state: &'a S,
    pub ram: &'a mut R,
    pub mmio: &'a mut M,
    pub mode: CpuMode,
    pub insn: &'a Instruction,
    /// The instruction bytes (the first `insn.len` are meaningful; at most
    /// 15 are kept), for [`Error::Unsupported`].
    pub bytes: &'a [u8],
    /// The guest-physical address of the memory exit.
    pub exit_gpa: u64,
    /// Where register writes are staged.
    pub regs: &'a mut Pending,
    /// The VCPU's translation cache, for the operands translated through
    /// the page walker.
    pub cache: &'a mut FetchCache,
}

impl<'a, S, R, M> Exec<'a, S, R, M>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn new(
        state: &'a S,
        ram: &'a mut R,
        mmio: &'a mut M,
        mode: CpuMode,
        insn: &'a Instruction,
        bytes: &'a [u8],
        exit_gpa: u64,
        regs: &'a mut Pending,
        cache: &'a mut FetchCache,
    ) -> Self {
        Exec {
            state,
            ram,
            mmio,
            mode,
            insn,
            bytes,
            exit_gpa,
            regs,
            cache,
        }
    }

    /// Runs the instruction.
    #[inline(always)]
    pub(crate) fn run(&mut self) -> Result<Outcome, Error> {
        match self.insn.mnemonic {
            Mnemonic::Mov
            | Mnemonic::Movzx
            | Mnemonic::Movsx
            | Mnemonic::Movsxd
            | Mnemonic::Movnti
            | Mnemonic::Setcc
            | Mnemonic::Cmovcc => mov::exec(self),
            Mnemonic::Add
            | Mnemonic::Adc
            | Mnemonic::Sub
            | Mnemonic::Sbb
            | Mnemonic::And
            | Mnemonic::Or
            | Mnemonic::Xor
            | Mnemonic::Cmp
            | Mnemonic::Test
            | Mnemonic::Inc
            | Mnemonic::Dec
            | Mnemonic::Neg
            | Mnemonic::Not => alu::exec(self),
            Mnemonic::Xchg
            | Mnemonic::Xadd
            | Mnemonic::Cmpxchg
            | Mnemonic::Cmpxchg8b
            | Mnemonic::Cmpxchg16b => xchg::exec(self),
            Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => bits::exec(self),
            Mnemonic::Push | Mnemonic::Pop => stack::exec(self),
            Mnemonic::Movs | Mnemonic::Stos | Mnemonic::Lods | Mnemonic::Cmps | Mnemonic::Scas => {
                string::exec(self)
            }
            Mnemonic::Movd
            | Mnemonic::Movq
            | Mnemonic::Movdqa
            | Mnemonic::Movdqu
            | Mnemonic::Movaps
            | Mnemonic::Movups
            | Mnemonic::Movapd
            | Mnemonic::Movupd
            | Mnemonic::Movntdq
            | Mnemonic::Movntps
            | Mnemonic::Movntpd => sse::exec(self),
            // Port I/O exits before its memory operand is touched, so a
            // memory exit never needs them; the I/O assist handles them.
            _ => Err(self.unsupported()),
        }
    }

    /// The error for a valid instruction this assist does not emulate.
    /// Out of line and cold: building it copies the instruction bytes, which
    /// the paths that succeed never need.
    #[cold]
    #[inline(never)]
    pub(crate) fn unsupported(&self) -> Error {
        let mut bytes = [0u8; 15];
        for (dst, src) in bytes.iter_mut().zip(self.bytes) {
            *dst = *src;
        }
        Error::Unsupported {
            bytes,
            len: self.insn.len.min(15),
        }
    }

    // ---- registers -------------------------------------------------------

    /// A full 64-bit GPR, with the staged value if the instruction wrote
    /// it. The guest state does not change while an instruction runs, so
    /// an unstaged register is read from it each time.
    #[inline]
    pub(crate) fn gpr(&self, reg: Gpr) -> u64 {
        let i = reg.index();
        if self.regs.dirty & (1 << i) != 0 {
            self.regs.gprs.get(i).copied().unwrap_or(0)
        } else {
            self.state.gpr(reg)
        }
    }

    /// Stages a full 64-bit GPR value.
    #[inline]
    pub(crate) fn set_gpr(&mut self, reg: Gpr, value: u64) {
        let i = reg.index();
        if let Some(slot) = self.regs.gprs.get_mut(i) {
            *slot = value;
        }
        self.regs.dirty |= 1 << i;
    }

    /// Reads a register operand (zero-extended to 64 bits).
    #[inline]
    pub(crate) fn read_reg(&self, r: Register) -> u64 {
        let v = self.gpr(r.gpr);
        if r.size == 1 && r.high_byte {
            (v >> 8) & 0xFF
        } else {
            v & flags::size_mask(r.size)
        }
    }

    /// Writes a register operand with the CPU's partial-register rules:
    /// 8- and 16-bit writes keep the other bits, 32-bit writes zero-extend
    /// to 64 bits (the CPU does so in every mode; outside 64-bit mode the
    /// upper half is not visible to the guest anyway), 64-bit writes replace.
    #[inline]
    pub(crate) fn write_reg(&mut self, r: Register, value: u64) {
        // Only 8- and 16-bit writes need the old value.
        let new = match r.size {
            1 if r.high_byte => (self.gpr(r.gpr) & !0xFF00) | ((value & 0xFF) << 8),
            1 | 2 => merge_sized(self.gpr(r.gpr), r.size, value),
            4 => value & 0xFFFF_FFFF,
            _ => value,
        };
        self.set_gpr(r.gpr, new);
    }

    /// Writes `value` into the low `size` bytes of `gpr` (never a high-byte
    /// register), with the partial-register rules of [`Exec::write_reg`].
    pub(crate) fn write_gpr_sized(&mut self, gpr: Gpr, size: u8, value: u64) {
        self.write_reg(
            Register {
                gpr,
                size,
                high_byte: false,
            },
            value,
        );
    }

    /// Writes the low `size` bytes (2, 4 or 8) of an address register (RSI,
    /// RDI, RCX of string instructions, RSP): 16-bit keeps the upper bits,
    /// 32-bit zero-extends, as a register write of that size does.
    pub(crate) fn write_addr_reg(&mut self, gpr: Gpr, size: u8, value: u64) {
        self.write_gpr_sized(gpr, size, value);
    }

    #[inline]
    pub(crate) fn rflags(&self) -> u64 {
        self.regs.rflags
    }

    #[inline]
    pub(crate) fn set_rflags(&mut self, value: u64) {
        self.regs.rflags = value;
    }

    /// The value of a register or immediate source operand.
    #[inline]
    pub(crate) fn read_value_operand(&self, op: &Operand) -> Result<u64, Error> {
        match op {
            Operand::Reg(r) => Ok(self.read_reg(*r)),
            Operand::Imm(v) => Ok(*v),
            _ => Err(self.unsupported()),
        }
    }

    // ---- memory operands ------------------------------------------------

    /// The address-size mask (2, 4 or 8 bytes).
    #[inline]
    pub(crate) fn address_mask(&self) -> u64 {
        flags::size_mask(self.insn.address_size)
    }

    /// The effective address (offset within the segment) of `m`, masked to
    /// the address size. RIP-relative operands are relative to the next
    /// instruction.
    #[inline(always)]
    pub(crate) fn effective_offset(&self, m: &MemoryOperand) -> u64 {
        let mut ea = if m.rip_relative {
            self.state.rip().wrapping_add(u64::from(self.insn.len))
        } else {
            0
        };
        if let Some(b) = m.base {
            ea = ea.wrapping_add(self.gpr(b));
        }
        if let Some(i) = m.index {
            let scale = u64::from(m.scale.max(1));
            ea = ea.wrapping_add(self.gpr(i).wrapping_mul(scale));
        }
        ea.wrapping_add(m.disp as u64) & self.address_mask()
    }

    /// The linear address of `seg:offset` for `size` bytes, with the
    /// segmentation checks.
    #[inline(always)]
    pub(crate) fn linear(
        &self,
        seg: Segment,
        offset: u64,
        size: u64,
        access: AccessType,
    ) -> Result<u64, Error> {
        segment::linear_address(self.state, self.mode, seg, offset, size, access)
    }

    /// `#AC(0)` when alignment checking is on (CR0.AM, RFLAGS.AC, CPL 3) and
    /// `linear` is not a multiple of `align`.
    #[inline(always)]
    pub(crate) fn check_alignment(&self, linear: u64, align: u64) -> Result<(), Error> {
        if alignment_faults(self.state, self.regs.rflags, linear, align) {
            return Err(Exception::AlignmentCheck.into());
        }
        Ok(())
    }

    /// The guest-physical fragments of `linear..linear + size`.
    ///
    /// With `trusted`, an access within one page uses the memory exit's GPA
    /// without a page walk, as libnvmm does: the exit was caused by this
    /// access, so the page offsets must agree (else
    /// [`Error::InconsistentExit`]). Page-crossing accesses, and operands
    /// that are not the one that caused the exit, go through the walker.
    #[inline(always)]
    pub(crate) fn physical(
        &mut self,
        linear: u64,
        size: u64,
        access: AccessType,
        trusted: bool,
    ) -> Result<PhysRange, Error> {
        let mut range = PhysRange::default();
        self.physical_into(linear, size, access, trusted, &mut range)?;
        Ok(range)
    }

    /// [`Exec::physical`] into `range`. The hot helpers pass ranges by
    /// reference and return `Result<(), Error>`: a `Result<PhysRange, _>`
    /// re-wrapped at every `?` costs dozens of moves per instruction.
    #[inline(always)]
    fn physical_into(
        &mut self,
        linear: u64,
        size: u64,
        access: AccessType,
        trusted: bool,
        range: &mut PhysRange,
    ) -> Result<(), Error> {
        let in_page = linear & PAGE_MASK;
        if trusted && size <= PAGE_SIZE && in_page + size <= PAGE_SIZE {
            if self.exit_gpa & PAGE_MASK != in_page {
                return Err(Error::InconsistentExit);
            }
            // size <= 4096 (checked above).
            *range = PhysRange {
                parts: [(self.exit_gpa, size as usize), (0, 0)],
                count: 1,
            };
            return Ok(());
        }
        self.walk(linear, size, access, range)
    }

    /// [`Exec::physical`] through the page walker.
    #[inline(never)]
    fn walk(
        &mut self,
        linear: u64,
        size: u64,
        access: AccessType,
        range: &mut PhysRange,
    ) -> Result<(), Error> {
        let len = usize::try_from(size).map_err(|_| Error::InconsistentExit)?;
        *range = self.resolve(linear, len, access)?;
        Ok(())
    }

    /// The guest-physical fragments of `linear..linear + len` (at most
    /// 4096 bytes) through the page walker, each page's translation taken
    /// from the VCPU's cache when it proves current (exact: see
    /// [`FetchCache::translate_data`]).
    #[inline]
    pub(crate) fn resolve(
        &mut self,
        linear: u64,
        len: usize,
        access: AccessType,
    ) -> Result<PhysRange, Error> {
        access::resolve_cached(self.state, self.ram, self.cache, linear, len, access)
    }

    /// Locates a memory operand into `range`: effective address (plus
    /// `displacement` bytes, for the BT family's register bit offsets),
    /// segmentation, translation, alignment check.
    ///
    /// The range is an out-parameter, as in [`Exec::physical_into`].
    #[inline(always)]
    pub(crate) fn locate(
        &mut self,
        m: &MemoryOperand,
        displacement: i64,
        size: u8,
        access: AccessType,
        trusted: bool,
        range: &mut PhysRange,
    ) -> Result<(), Error> {
        let offset =
            self.effective_offset(m).wrapping_add(displacement as u64) & self.address_mask();
        self.locate_offset(m.segment, offset, size, access, trusted, range)
    }

    /// [`Exec::locate`] for an offset already computed.
    #[inline(always)]
    pub(crate) fn locate_offset(
        &mut self,
        seg: Segment,
        offset: u64,
        size: u8,
        access: AccessType,
        trusted: bool,
        range: &mut PhysRange,
    ) -> Result<(), Error> {
        let size64 = u64::from(size);
        let linear = self.linear(seg, offset, size64, access)?;
        self.physical_into(linear, size64, access, trusted, range)?;
        self.check_alignment(linear, size64.min(8))
    }

    // ---- memory accesses ------------------------------------------------

    /// Reads `size` (at most 16) bytes, little-endian ([`read_sized`]).
    #[inline(always)]
    pub(crate) fn read_mem(&mut self, range: &PhysRange, size: u8) -> Result<u128, Error> {
        read_sized(self.ram, self.mmio, range, size)
    }

    /// Writes the low `size` (at most 16) bytes of `value`, little-endian.
    #[inline(always)]
    pub(crate) fn write_mem(
        &mut self,
        range: &PhysRange,
        size: u8,
        value: u128,
    ) -> Result<(), Error> {
        write_sized(self.ram, self.mmio, range, size, value)
    }

    /// A read-modify-write of `size` bytes: [`rmw`] on this instruction's
    /// buses.
    #[inline(always)]
    pub(crate) fn rmw<T>(
        &mut self,
        range: &PhysRange,
        size: u8,
        locked: bool,
        op: impl FnMut(u128) -> (u128, T),
    ) -> Result<Option<T>, Error> {
        rmw(self.ram, self.mmio, range, size, locked, op)
    }

    /// Reads a memory or register operand of `size` bytes (the memory
    /// operand, if any, is the one that caused the exit).
    #[inline]
    pub(crate) fn read_operand(&mut self, op: &Operand, size: u8) -> Result<u64, Error> {
        match op {
            Operand::Mem(m) => {
                let mut range = PhysRange::default();
                self.locate(m, 0, size, AccessType::Read, true, &mut range)?;
                Ok(self.read_mem(&range, size)? as u64)
            }
            other => self.read_value_operand(other),
        }
    }

    /// The segment's own address size for the stack: 8 in 64-bit mode, else
    /// 4 with SS.B, else 2.
    pub(crate) fn stack_address_size(&self) -> u8 {
        stack::address_size(self.state, self.mode)
    }
}

// ---- memory accesses (shared by the general executor and the fast path) --

/// Reads `size` (at most 16) bytes at `range`, little-endian.
#[inline(always)]
pub(crate) fn read_sized<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    size: u8,
) -> Result<u128, Error> {
    // One buffer of exactly the access size per size: the callback
    // stores `size` bytes and the value is loaded from them with one
    // load of the same width. A wider load (of a 16-byte buffer) cannot
    // be forwarded from the narrower store and waits for it to retire,
    // a dozen cycles or more.
    Ok(match size {
        1 => u128::from(u8::from_le_bytes(read_exact(ram, mmio, range)?)),
        2 => u128::from(u16::from_le_bytes(read_exact(ram, mmio, range)?)),
        4 => u128::from(u32::from_le_bytes(read_exact(ram, mmio, range)?)),
        8 => u128::from(u64::from_le_bytes(read_exact(ram, mmio, range)?)),
        _ => {
            let mut buf = [0u8; 16];
            let n = usize::from(size).min(16);
            let dst = buf.get_mut(..n).ok_or(Error::InconsistentExit)?;
            access::read_phys(ram, mmio, range, dst)?;
            u128::from_le_bytes(buf)
        }
    })
}

/// Reads `N` bytes.
#[inline(always)]
fn read_exact<const N: usize, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
) -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    access::read_phys(ram, mmio, range, &mut buf)?;
    Ok(buf)
}

/// Writes the low `size` (at most 16) bytes of `value` at `range`,
/// little-endian.
#[inline(always)]
pub(crate) fn write_sized<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    size: u8,
    value: u128,
) -> Result<(), Error> {
    let buf = value.to_le_bytes();
    let n = usize::from(size).min(16);
    let src = buf.get(..n).ok_or(Error::InconsistentExit)?;
    access::write_phys(ram, mmio, range, src)
}

/// A read-modify-write of `size` bytes at `range`. `op` maps the old value
/// to the new one (always written, as the CPU writes even an unchanged
/// value) plus a result for the caller. Locked: the write is a
/// compare-and-write on RAM, retried from the read when memory changed in
/// between ([`LOCK_RETRIES`] times, then `Ok(None)`: the caller returns
/// [`Outcome::Resume`] with nothing changed); on MMIO it is a read then a
/// write. Unlocked: a read then a write.
///
/// The one implementation of these rules: the general executor
/// ([`Exec::rmw`]) and the fast path both use it.
#[inline(always)]
pub(crate) fn rmw<T, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    size: u8,
    locked: bool,
    mut op: impl FnMut(u128) -> (u128, T),
) -> Result<Option<T>, Error> {
    // One page and at most 8 bytes (nearly every case): the same rules on
    // 64-bit values, without the fragments.
    if let [(gpa, len), _] = range.parts
        && range.count == 1
        && size <= 8
        && len == usize::from(size)
    {
        // (Always inline: a closure is instantiated once, maybe in another
        // codegen unit than its caller, and then stays a call.)
        return rmw_page(
            ram,
            mmio,
            gpa,
            size,
            locked,
            #[inline(always)]
            |old| {
                let (new, out) = op(u128::from(old));
                (new as u64, out)
            },
        );
    }
    rmw_range(ram, mmio, range, size, locked, op)
}

/// [`rmw`] on any range (two pages, or 16 bytes): the same rules on 128-bit
/// values, fragment by fragment ([`rmw_at`] on [`Fragments`]).
#[inline(always)]
pub(crate) fn rmw_range<T, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    range: &PhysRange,
    size: u8,
    locked: bool,
    op: impl FnMut(u128) -> (u128, T),
) -> Result<Option<T>, Error> {
    rmw_at(ram, mmio, Fragments { range, size }, locked, op)
}

/// [`rmw`] of `size` (1, 2, 4 or 8) bytes at `gpa`, within one page, on
/// 64-bit values ([`rmw_at`] on [`OnePage`]), which the general executor
/// reaches through [`rmw`] and the fast path calls directly.
#[inline(always)]
pub(crate) fn rmw_page<T, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    size: u8,
    locked: bool,
    op: impl FnMut(u64) -> (u64, T),
) -> Result<Option<T>, Error> {
    rmw_at(ram, mmio, OnePage { gpa, size }, locked, op)
}

/// [`rmw`] of 16 bytes at `gpa`, within one page, on 128-bit values
/// ([`rmw_at`] on [`OnePageWide`]): CMPXCHG16B's in the integer lane,
/// without [`rmw_range`]'s fragments.
#[inline(always)]
pub(crate) fn rmw_page_wide<T, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    locked: bool,
    op: impl FnMut(u128) -> (u128, T),
) -> Result<Option<T>, Error> {
    rmw_at(ram, mmio, OnePageWide { gpa }, locked, op)
}

/// The one implementation of [`rmw`]'s rules, on any [`RmwPlace`] (and so
/// on its value type).
#[inline(always)]
fn rmw_at<P: RmwPlace, T, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    place: P,
    locked: bool,
    mut op: impl FnMut(P::Value) -> (P::Value, T),
) -> Result<Option<T>, Error> {
    // The first attempt is straight-line code; the retries are out of
    // line. (With one loop the compiler hoists work for every possible
    // operation out of it, a few dozen instructions run even when the
    // first attempt succeeds, as it nearly always does.)
    let old = place.read(ram, mmio)?;
    let (new, out) = op(old);
    if !locked {
        place.write(ram, mmio, new)?;
        return Ok(Some(out));
    }
    if place.compare_and_write(ram, mmio, old, new)? {
        return Ok(Some(out));
    }
    // Only a place that can hold device bytes besides RAM keeps the first
    // read for the retries (a constant per place: the one-page places
    // keep nothing alive across the compare-and-write).
    let kept = if P::RETRY_KEEPS_FIRST_READ {
        Some(old)
    } else {
        None
    };
    rmw_retry(ram, mmio, place, kept, &mut op)
}

/// The locked retries of [`rmw_at`] after the first attempt lost a race:
/// [`LOCK_RETRIES`] attempts in all.
#[cold]
#[inline(never)]
fn rmw_retry<P: RmwPlace, T, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    place: P,
    mut kept: Option<P::Value>,
    op: &mut impl FnMut(P::Value) -> (P::Value, T),
) -> Result<Option<T>, Error> {
    for _ in 1..LOCK_RETRIES {
        let old = match kept {
            Some(previous) => {
                let old = place.reread(ram, mmio, previous)?;
                kept = Some(old);
                old
            }
            None => place.read(ram, mmio)?,
        };
        let (new, out) = op(old);
        if place.compare_and_write(ram, mmio, old, new)? {
            return Ok(Some(out));
        }
    }
    Ok(None)
}

/// Where a read-modify-write happens, and the type of the value it reads
/// and writes there: the three accesses [`rmw_at`]'s rules are made of.
trait RmwPlace: Copy {
    /// The value read and written (little-endian, `size` bytes of it).
    type Value: Copy;

    /// Reads the value.
    fn read<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
    ) -> Result<Self::Value, Error>;

    /// Writes `value`.
    fn write<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
        value: Self::Value,
    ) -> Result<(), Error>;

    /// The write half of a locked read-modify-write: on RAM `new` replaces
    /// `old` unless memory changed since it was read (`false`: then none of
    /// `new` is left in memory and no device was written); on MMIO `new`
    /// is written.
    fn compare_and_write<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
        old: Self::Value,
        new: Self::Value,
    ) -> Result<bool, Error>;

    /// Whether a locked retry starts from [`RmwPlace::reread`] of the
    /// previous attempt's value rather than from a fresh
    /// [`RmwPlace::read`]: for a place that can be part RAM, part device.
    /// A place in one page is retried only when it is RAM, and reads it
    /// again.
    const RETRY_KEEPS_FIRST_READ: bool = false;

    /// The value a locked retry starts from, after `compare_and_write`
    /// of a value computed from `old` lost against another writer: the
    /// memory read again, except what `old` took from a device, which the
    /// instruction reads once. Used when
    /// [`RmwPlace::RETRY_KEEPS_FIRST_READ`]; the default reads all of it.
    #[inline(always)]
    fn reread<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
        old: Self::Value,
    ) -> Result<Self::Value, Error> {
        let _ = old;
        self.read(ram, mmio)
    }
}

/// `size` (1, 2, 4 or 8) bytes at `gpa`, within one page, as a `u64`.
#[derive(Clone, Copy)]
struct OnePage {
    gpa: u64,
    size: u8,
}

impl RmwPlace for OnePage {
    type Value = u64;

    #[inline(always)]
    fn read<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
    ) -> Result<u64, Error> {
        read_page(ram, mmio, self.gpa, self.size)
    }

    #[inline(always)]
    fn write<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
        value: u64,
    ) -> Result<(), Error> {
        write_page(ram, mmio, self.gpa, self.size, value)
    }

    #[inline(always)]
    fn compare_and_write<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
        old: u64,
        new: u64,
    ) -> Result<bool, Error> {
        let n = usize::from(self.size).min(8);
        let (old_bytes, new_bytes) = (old.to_le_bytes(), new.to_le_bytes());
        let (Some(expected), Some(data)) = (old_bytes.get(..n), new_bytes.get(..n)) else {
            return Ok(false);
        };
        Ok(match ram.compare_and_write(self.gpa, expected, data)? {
            CompareWrite::Written => true,
            CompareWrite::Mismatch => false,
            CompareWrite::NotRam => {
                mmio.write(self.gpa, data)?;
                true
            }
        })
    }
}

/// `size` (at most 16) bytes at the fragments of `range`, as a `u128`.
#[derive(Clone, Copy)]
struct Fragments<'r> {
    range: &'r PhysRange,
    size: u8,
}

impl RmwPlace for Fragments<'_> {
    type Value = u128;
    const RETRY_KEEPS_FIRST_READ: bool = true;

    #[inline(always)]
    fn read<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
    ) -> Result<u128, Error> {
        read_sized(ram, mmio, self.range, self.size)
    }

    #[inline(always)]
    fn write<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
        value: u128,
    ) -> Result<(), Error> {
        write_sized(ram, mmio, self.range, self.size, value)
    }

    #[inline(always)]
    fn compare_and_write<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
        old: u128,
        new: u128,
    ) -> Result<bool, Error> {
        let n = usize::from(self.size).min(16);
        let (old_bytes, new_bytes) = (old.to_le_bytes(), new.to_le_bytes());
        let (Some(expected), Some(data)) = (old_bytes.get(..n), new_bytes.get(..n)) else {
            return Err(Error::InconsistentExit);
        };
        access::compare_and_write_phys(ram, mmio, self.range, expected, data)
    }

    /// The RAM parts read again, the MMIO parts as `old` has them
    /// ([`access::reread_ram_fragments`]).
    #[inline(always)]
    fn reread<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        _mmio: &mut M,
        old: u128,
    ) -> Result<u128, Error> {
        let mut bytes = old.to_le_bytes();
        let n = usize::from(self.size).min(16);
        let value = bytes.get_mut(..n).ok_or(Error::InconsistentExit)?;
        access::reread_ram_fragments(ram, self.range, value)?;
        Ok(u128::from_le_bytes(bytes))
    }
}

/// One read within a page at `gpa` into `buf`: RAM if the RAM says so,
/// else MMIO, each callback's error returned with `?` (so in the calling
/// function's error type: [`Error`] for [`read_page`], the callbacks' own
/// [`BusError`] for the SSE moves). The one-page read dispatch of
/// [`read_page`] (and so of the integer forms' fast path) and of the SSE
/// fast path; `access::read_phys` makes the same per fragment.
///
/// A macro rather than an inline function: `read_page` calling it as one
/// (returning either error type) cost `cmpxchg [m], r` one instruction
/// per call in prot32, compat and 64-bit mode (callgrind: in a conversion
/// in the fast path's `try_exec_int`, a shift in its code generation);
/// expanded in place it costs nothing.
macro_rules! read_in_page {
    ($ram:expr, $mmio:expr, $gpa:expr, $buf:expr) => {
        if $ram.read($gpa, $buf)? == $crate::bus::RamStatus::NotRam {
            $mmio.read($gpa, $buf)?;
        }
    };
}
pub(crate) use read_in_page;

/// 16 bytes at `gpa`, within one page, as a `u128`: the one-page case of
/// [`Fragments`] (the same callbacks with the same arguments: one read,
/// one write or one compare-and-write of all 16 bytes).
#[derive(Clone, Copy)]
struct OnePageWide {
    gpa: u64,
}

impl RmwPlace for OnePageWide {
    type Value = u128;

    #[inline(always)]
    fn read<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
    ) -> Result<u128, Error> {
        let mut b = [0u8; 16];
        read_in_page!(ram, mmio, self.gpa, &mut b);
        Ok(u128::from_le_bytes(b))
    }

    #[inline(always)]
    fn write<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
        value: u128,
    ) -> Result<(), Error> {
        write_in_page(ram, mmio, self.gpa, &value.to_le_bytes())
    }

    #[inline(always)]
    fn compare_and_write<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
        self,
        ram: &mut R,
        mmio: &mut M,
        old: u128,
        new: u128,
    ) -> Result<bool, Error> {
        let data = new.to_le_bytes();
        Ok(
            match ram.compare_and_write(self.gpa, &old.to_le_bytes(), &data)? {
                CompareWrite::Written => true,
                CompareWrite::Mismatch => false,
                CompareWrite::NotRam => {
                    mmio.write(self.gpa, &data)?;
                    true
                }
            },
        )
    }
}

/// Reads `size` (1, 2, 4 or 8) bytes at `gpa` (within one page) with
/// [`read_in_page!`], into a buffer of exactly that width (see
/// [`read_sized`]).
#[inline(always)]
pub(crate) fn read_page<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    size: u8,
) -> Result<u64, Error> {
    macro_rules! read_n {
        ($n:literal, $t:ty) => {{
            let mut b = [0u8; $n];
            read_in_page!(ram, mmio, gpa, &mut b);
            u64::from(<$t>::from_le_bytes(b))
        }};
    }
    Ok(match size {
        1 => read_n!(1, u8),
        2 => read_n!(2, u16),
        4 => read_n!(4, u32),
        _ => read_n!(8, u64),
    })
}

/// Writes the low `size` (1, 2, 4 or 8) bytes of `value` at `gpa` (within
/// one page) with [`write_in_page`].
#[inline(always)]
pub(crate) fn write_page<R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    size: u8,
    value: u64,
) -> Result<(), Error> {
    let bytes = value.to_le_bytes();
    let data = bytes.get(..usize::from(size).min(8)).unwrap_or(&[]);
    write_in_page(ram, mmio, gpa, data)
}

/// One write within a page at `gpa`: RAM if the RAM says so, else MMIO. The
/// one-page dispatch of [`write_page`] (and so of the integer forms' fast
/// path) and of the SSE fast path, as [`read_in_page!`] is for reads;
/// `access::write_phys` makes the same per fragment.
///
/// The error type is the caller's: [`Error`] for [`write_page`], converted
/// at each callback, the callbacks' own [`BusError`] for the SSE moves.
#[inline(always)]
pub(crate) fn write_in_page<E: From<BusError>, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    ram: &mut R,
    mmio: &mut M,
    gpa: u64,
    data: &[u8],
) -> Result<(), E> {
    if ram.write(gpa, data)? == RamStatus::NotRam {
        mmio.write(gpa, data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{RecordingMmio, TestRam};

    /// Both places of [`rmw_at`] (one page on `u64`, fragments on `u128`)
    /// follow the same rules: a locked read-modify-write on RAM is retried
    /// after each lost compare-and-write, [`LOCK_RETRIES`] attempts in all,
    /// then gives up (`None`) with memory as the other writer left it; an
    /// unlocked one is a read then a write with no compare-and-write.
    #[test]
    fn locked_rmw_makes_lock_retries_attempts_on_both_places() {
        let retries = LOCK_RETRIES as usize;
        for mismatches in [0, 1, retries - 1, retries, retries + 3] {
            let done = mismatches < retries;
            let attempts = (mismatches + 1).min(retries);
            for wide in [false, true] {
                let mut ram = TestRam::new(0x2000);
                ram.mem[0x100..0x110].copy_from_slice(&5u128.to_le_bytes());
                ram.cas_mismatches = mismatches;
                let mut mmio = RecordingMmio::default();
                let (result, value) = if wide {
                    let range = PhysRange {
                        parts: [(0x100, 16), (0, 0)],
                        count: 1,
                    };
                    let r = rmw_range(&mut ram, &mut mmio, &range, 16, true, |old| {
                        (old + (1 << 64), old as u64)
                    });
                    let v = u128::from_le_bytes(ram.mem[0x100..0x110].try_into().unwrap());
                    (r, v)
                } else {
                    let r = rmw_page(&mut ram, &mut mmio, 0x100, 8, true, |old| (old + 1, old));
                    let v = u128::from_le_bytes(ram.mem[0x100..0x110].try_into().unwrap());
                    (r, v)
                };
                let expected = match (done, wide) {
                    (false, _) => 5,
                    (true, false) => 6,
                    (true, true) => 5 + (1 << 64),
                };
                assert_eq!(result, Ok(done.then_some(5)), "{mismatches} wide {wide}");
                assert_eq!(ram.cas_log.len(), attempts, "{mismatches} wide {wide}");
                assert_eq!(ram.reads, attempts, "{mismatches} wide {wide}");
                assert_eq!(ram.writes, 0);
                assert_eq!(value, expected, "{mismatches} wide {wide}");
                assert!(mmio.log.is_empty());

                // Unlocked: one read, one write, no compare-and-write.
                ram.cas_log.clear();
                let (reads, writes) = (ram.reads, ram.writes);
                let r = if wide {
                    let range = PhysRange {
                        parts: [(0x100, 16), (0, 0)],
                        count: 1,
                    };
                    rmw_range(&mut ram, &mut mmio, &range, 16, false, |old| {
                        (old, old as u64)
                    })
                } else {
                    rmw_page(&mut ram, &mut mmio, 0x100, 8, false, |old| (old, old))
                };
                assert_eq!(r, Ok(Some(expected as u64)));
                assert!(ram.cas_log.is_empty());
                assert_eq!((ram.reads, ram.writes), (reads + 1, writes + 1));
            }
        }
    }

    /// On MMIO a locked read-modify-write is a read then a write, on both
    /// places.
    #[test]
    fn locked_rmw_on_mmio_is_a_read_then_a_write_on_both_places() {
        for wide in [false, true] {
            let mut ram = TestRam::new(0x1000);
            let mut mmio = RecordingMmio::default();
            let gpa = 0x8000;
            let r = if wide {
                let range = PhysRange {
                    parts: [(gpa, 16), (0, 0)],
                    count: 1,
                };
                rmw_range(&mut ram, &mut mmio, &range, 16, true, |old| (!old, ()))
            } else {
                rmw_page(&mut ram, &mut mmio, gpa, 8, true, |old| (!old, ()))
            };
            assert_eq!(r, Ok(Some(())));
            let kinds: std::vec::Vec<(bool, u64, usize)> = mmio
                .log
                .iter()
                .map(|a| (a.write, a.addr, a.data.len()))
                .collect();
            let n = if wide { 16 } else { 8 };
            assert_eq!(kinds, [(false, gpa, n), (true, gpa, n)], "wide {wide}");
            assert!(
                mmio.log[1]
                    .data
                    .iter()
                    .zip(&mmio.log[0].data)
                    .all(|(w, r)| *w == !*r)
            );
        }
    }
}
