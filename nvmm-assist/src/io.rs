//! The port-I/O assist: IN, OUT, INS and OUTS (with REP) after an I/O exit.
//!
//! Semantics (Intel SDM vol. 2 "IN", "INS", "OUT", "OUTS", "REP"; vol. 1
//! ch. 19; AMD APM vol. 3):
//! - `IN`/`OUT` move 1, 2 or 4 bytes between the port and AL/AX/EAX. An
//!   `IN` of 4 bytes is a 32-bit register write, which zero-extends into
//!   RAX; 1- and 2-byte `IN`s keep the rest of RAX.
//! - `INS` writes to ES:rDI (ES cannot be overridden, whatever the exit
//!   says); `OUTS` reads from seg:rSI where seg is the exit's segment, or,
//!   when the exit has none (SVM without DecodeAssists), the last segment
//!   override prefix of the instruction at CS:RIP, default DS.
//! - rSI/rDI/rCX are used and updated at the exit's address size: 16-bit
//!   updates keep bits 63:16, 32-bit updates clear bits 63:32 (a 32-bit
//!   register write). Offsets wrap at the address size.
//! - A 32-bit register write zero-extends in every mode, as in the
//!   executors of the memory assist ([`crate::vendor`] row 2). The manuals
//!   define it in 64-bit mode (SDM vol. 1 §3.4.1.1, APM vol. 1 §3.1.2.3)
//!   and leave bits 63:32 undefined outside it, where the guest cannot
//!   read them. KVM's port-I/O completion (`complete_fast_pio_in`) and its
//!   string emulation (`assign_register`) zero-extend in every mode, and
//!   libnvmm clears RAX\[63:32\] after every 4-byte IN. On this project's
//!   AMD host the CPU itself clears them in 32-bit protected and
//!   compatibility mode (`mov eax, eax`, a32 `rep movsb`), and KVM and
//!   the assist agree on IN and a32 INS/OUTS there
//!   (`tests/oracle_kvm.rs`, `thirty_two_bit_register_writes_*`); not
//!   measured on Intel.
//! - With REP and rCX = 0 nothing is accessed and RIP moves to `npc`.
//! - RFLAGS.RF is cleared on [`Outcome::Done`] and set on [`Outcome::Resume`],
//!   as the memory assist does.
//! - Batches: one call performs at most [`IO_BATCH_BYTES`] bytes and never
//!   crosses a page boundary (an element that straddles one is a batch of
//!   its own), a segment limit, or an address-size wrap; in both DF
//!   directions. A 4 KiB `rep outsb`/`rep insb` thus takes 1 call when the
//!   buffer is page-aligned and 2 otherwise (libnvmm: 128). While rCX stays
//!   non-zero the result is [`Outcome::Resume`] with RIP unchanged.
//! - All segment, paging and memory checks of a batch are done before the
//!   first port access, as the CPU checks the memory operand of an
//!   iteration before its port access. When the batch's range fails the
//!   segment check part-way, the batch is cut before the failing element
//!   (which then faults on the next call, with the earlier iterations
//!   committed, as on the CPU).
//! - A port error after some iterations of a batch commits those
//!   iterations (memory written for `INS`, registers updated) and returns
//!   [`Outcome::Resume`]: the guest re-executes and the next call reports
//!   the error with no iteration done. Any error with no iteration done
//!   leaves every register unchanged.

use crate::Outcome;
use crate::access::{
    AccessType, PAGE_SIZE, PhysRange, fetch, read_phys, resolve, resolve_cached, write_phys,
};
use crate::bus::{BusError, GuestRam, MmioBus, PartialBatch, PortIo};
use crate::error::Error;
use crate::fetch_cache::FetchCache;
use crate::mode::CpuMode;
use crate::segment::linear_address;
use crate::state::{CpuState, Gpr, Segment};

/// The most bytes one `assist_io` call moves for a string instruction.
pub const IO_BATCH_BYTES: usize = 4096;

const RFLAGS_DF: u64 = 1 << 10;
const RFLAGS_RF: u64 = 1 << 16;

/// The information of an I/O exit, as NVMM (and VMX/SVM) report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoExit {
    /// The port.
    pub port: u16,
    /// `true` for IN/INS, `false` for OUT/OUTS.
    pub input: bool,
    /// The access size in bytes: 1, 2 or 4.
    pub operand_size: u8,
    /// The address size in bytes for INS/OUTS: 2, 4 or 8.
    pub address_size: u8,
    /// A REP prefix is present (only meaningful for INS/OUTS).
    pub rep: bool,
    /// INS/OUTS rather than IN/OUT.
    pub string: bool,
    /// The segment of the OUTS source as the exit reports it, or `None`
    /// when the hardware does not say (the assist then reads the prefixes).
    pub segment: Option<Segment>,
    /// The RIP of the next instruction.
    pub npc: u64,
}

/// Performs the port I/O of `exit` and updates the guest registers.
///
/// Returns [`Outcome::Done`] (RIP = `exit.npc`) or, for a REP string
/// instruction with iterations left, [`Outcome::Resume`]. Errors: an
/// exception to inject (`#GP`, `#SS`, `#PF` from the memory operand or from
/// fetching the prefixes), a bus error from a callback, or
/// [`Error::InconsistentExit`] when the exit data is impossible (sizes, or
/// an OUTS exit whose instruction is not OUTS).
///
/// INS and OUTS translate their memory operand with a full page walk on
/// every call; [`assist_io_cached`] takes the VCPU's [`FetchCache`] instead.
// Inlined: a plain IN/OUT is a handful of loads and stores around the
// device call, less than a call and the return of the `Result` through
// memory; the string path stays out of line.
#[inline]
pub fn assist_io<
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
    P: PortIo + ?Sized,
>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    ports: &mut P,
    exit: &IoExit,
) -> Result<Outcome, Error> {
    if exit.string {
        return string_assist(state, ram, mmio, ports, exit, None);
    }
    plain_io(state, ports, exit)
}

/// [`assist_io`] with the VCPU's [`FetchCache`]: INS and OUTS translate
/// their memory operand through its data translations
/// ([`FetchCache::translate_data`], exact: every entry of a cached walk is
/// re-read and the control state compared before it is used), and an OUTS
/// without a segment in the exit fetches its prefixes through its code
/// translations. IN and OUT do not use it. Keep one cache per VCPU (the
/// same one [`assist_mem_cached`](crate::assist_mem_cached) takes).
#[inline]
pub fn assist_io_cached<
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
    P: PortIo + ?Sized,
>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    ports: &mut P,
    exit: &IoExit,
    cache: &mut FetchCache,
) -> Result<Outcome, Error> {
    if exit.string {
        return string_assist(state, ram, mmio, ports, exit, Some(cache));
    }
    plain_io(state, ports, exit)
}

/// INS and OUTS: the checks, one batch, and RFLAGS.RF.
#[inline(never)]
fn string_assist<
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
    P: PortIo + ?Sized,
>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    ports: &mut P,
    exit: &IoExit,
    cache: Option<&mut FetchCache>,
) -> Result<Outcome, Error> {
    if !matches!(exit.operand_size, 1 | 2 | 4) {
        return Err(Error::InconsistentExit);
    }
    let mode = CpuMode::try_of(&*state)?;
    let outcome = string_io(state, mode, ram, mmio, ports, exit, cache)?;
    // The same RF rule as the memory assist: a completed instruction clears
    // RFLAGS.RF; a REP batch that leaves iterations sets it, as when an
    // interrupt arrives between iterations, so an instruction breakpoint at
    // this RIP does not fire again when the guest re-executes it.
    let rflags = state.rflags();
    match outcome {
        Outcome::Done => state.set_rflags(rflags & !RFLAGS_RF),
        Outcome::Resume => state.set_rflags(rflags | RFLAGS_RF),
    }
    Ok(outcome)
}

/// IN and OUT: the fast path of the port assist (the most frequent exit of
/// a guest that drives a UART, PIC, PIT or PCI configuration space). One
/// port access of a fixed size, no memory operand, no decoding, and nothing
/// that depends on the mode: a 4-byte IN zero-extends into RAX in every
/// mode (see the module documentation).
#[inline(always)]
fn plain_io<S: CpuState + ?Sized, P: PortIo + ?Sized>(
    state: &mut S,
    ports: &mut P,
    exit: &IoExit,
) -> Result<Outcome, Error> {
    // The same refusal of an impossible control state as every assist. The
    // mode itself is not needed: where the state's reads are plain loads
    // the compiler drops its computation.
    CpuMode::try_of(&*state)?;
    let rflags = state.rflags();
    let rax = state.gpr(Gpr::Rax);
    let port = exit.port;
    // The size is checked where it is dispatched on, before any port
    // access: an impossible one is refused with nothing done.
    if exit.input {
        let mut buf = [0u8; 4];
        let new = match exit.operand_size {
            1 => {
                ports.read(port, &mut buf[..1])?;
                (rax & !0xFF) | u64::from(buf[0])
            }
            2 => {
                ports.read(port, &mut buf[..2])?;
                (rax & !0xFFFF) | u64::from(u16::from_le_bytes([buf[0], buf[1]]))
            }
            4 => {
                // A 32-bit register write: zero-extended into RAX.
                ports.read(port, &mut buf)?;
                u64::from(u32::from_le_bytes(buf))
            }
            _ => return Err(Error::InconsistentExit),
        };
        state.set_gpr(Gpr::Rax, new);
    } else {
        let data = rax.to_le_bytes();
        match exit.operand_size {
            1 => ports.write(port, &data[..1])?,
            2 => ports.write(port, &data[..2])?,
            4 => ports.write(port, &data[..4])?,
            _ => return Err(Error::InconsistentExit),
        }
    }
    state.set_rip(exit.npc);
    // RF is cleared when an instruction completes.
    if rflags & RFLAGS_RF != 0 {
        state.set_rflags(rflags & !RFLAGS_RF);
    }
    Ok(Outcome::Done)
}

/// The mask of an address size in bytes.
fn address_mask(address_size: u8) -> Option<u64> {
    match address_size {
        2 => Some(0xFFFF),
        4 => Some(0xFFFF_FFFF),
        8 => Some(u64::MAX),
        _ => None,
    }
}

/// `old` with its low `address_size` bytes replaced by `new`, as a register
/// write of that size does: a 16-bit write keeps bits 63:16, a 32-bit write
/// zero-extends (in every mode, as the executors' register writes do).
fn write_sized(old: u64, new: u64, address_size: u8) -> u64 {
    match address_size {
        2 => (old & !0xFFFF) | (new & 0xFFFF),
        4 => new & 0xFFFF_FFFF,
        _ => new,
    }
}

/// The segment of an OUTS without exit segment information: the last
/// segment override prefix of the instruction at CS:RIP, default DS. Reads
/// one byte at a time so that it never touches a byte past the opcode.
fn outs_segment<S: CpuState + ?Sized, R: GuestRam + ?Sized, M: MmioBus + ?Sized>(
    state: &S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    cache: &mut FetchCache,
) -> Result<Segment, Error> {
    let mut bytes = [0u8; 15];
    let mut segment = Segment::Ds;
    for i in 0..bytes.len() {
        fetch(state, mode, ram, mmio, cache, &mut bytes, i, i + 1)?;
        let b = bytes.get(i).copied().ok_or(Error::InconsistentExit)?;
        match b {
            0x26 => segment = Segment::Es,
            0x2E => segment = Segment::Cs,
            0x36 => segment = Segment::Ss,
            0x3E => segment = Segment::Ds,
            0x64 => segment = Segment::Fs,
            0x65 => segment = Segment::Gs,
            0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 => {}
            0x40..=0x4F if mode.is_64bit() => {}
            0x6E | 0x6F => return Ok(segment),
            _ => return Err(Error::InconsistentExit),
        }
    }
    // Fifteen prefixes and no opcode: the CPU raises #GP(0) for an
    // instruction longer than 15 bytes; it cannot have exited on OUTS.
    Err(Error::InconsistentExit)
}

/// The elements done and the error, if any, of a batch of `n` elements (a
/// device that claims more than `n` is taken at `n`).
fn batch_result(r: Result<(), PartialBatch>, n: u64) -> (u64, Option<BusError>) {
    match r {
        Ok(()) => (n, None),
        Err(p) => ((p.done as u64).min(n), Some(p.error)),
    }
}

/// Reverses the order of the `size`-byte elements of `data` (each
/// element's own bytes keep their order).
pub(crate) fn reverse_elements(data: &mut [u8], size: usize) {
    data.reverse();
    if size > 1 {
        for element in data.chunks_exact_mut(size) {
            element.reverse();
        }
    }
}

/// INS and OUTS, one bounded batch (called by `string_assist`, which is
/// out of line: no batch buffer reaches the frame of the inlined plain
/// IN/OUT path).
fn string_io<
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
    P: PortIo + ?Sized,
>(
    state: &mut S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    ports: &mut P,
    exit: &IoExit,
    mut cache: Option<&mut FetchCache>,
) -> Result<Outcome, Error> {
    // 1, 2 or 4 (checked by the caller).
    let size = usize::from(exit.operand_size);
    let amask = address_mask(exit.address_size).ok_or(Error::InconsistentExit)?;
    if exit.address_size == 8 && !mode.is_64bit() || exit.address_size == 2 && mode.is_64bit() {
        return Err(Error::InconsistentExit);
    }
    let rcx = state.gpr(Gpr::Rcx);
    let count = if exit.rep { rcx & amask } else { 1 };
    if count == 0 {
        state.set_rip(exit.npc);
        return Ok(Outcome::Done);
    }

    let (reg, seg, access) = if exit.input {
        (Gpr::Rdi, Segment::Es, AccessType::Write)
    } else {
        let seg = match exit.segment {
            Some(s) => s,
            None => match cache.as_deref_mut() {
                Some(cache) => outs_segment(&*state, mode, ram, mmio, cache)?,
                None => outs_segment(&*state, mode, ram, mmio, &mut FetchCache::new())?,
            },
        };
        (Gpr::Rsi, seg, AccessType::Read)
    };
    let backwards = state.rflags() & RFLAGS_DF != 0;
    let reg_value = state.gpr(reg);
    let offset = reg_value & amask;
    let size64 = size as u64;

    // The first element decides the page the batch stays in.
    let first_linear = linear_address(&*state, mode, seg, offset, size64, access)?;
    let in_page = first_linear & (PAGE_SIZE - 1);
    let mut n: u64 = if in_page + size64 > PAGE_SIZE {
        1
    } else if backwards {
        in_page / size64 + 1
    } else {
        (PAGE_SIZE - in_page) / size64
    };
    n = n.min(count).min((IO_BATCH_BYTES / size) as u64);
    // No wrap of the offset at the address size within a batch.
    let no_wrap = if backwards {
        (offset / size64).saturating_add(1)
    } else {
        // Elements wholly below the wrap; 0 when the first one straddles it
        // (it is then a batch of its own).
        ((u128::from(amask - offset) + 1) / u128::from(size64)) as u64
    };
    n = n.min(no_wrap).max(1);

    // Segment check of the whole batch; on failure keep the leading
    // elements that pass (the first one does).
    let low_offset = |n: u64| {
        if backwards {
            offset - (n - 1) * size64
        } else {
            offset
        }
    };
    // One element was checked above; a linear address does not depend on
    // the checked length, so the batch's lowest one is known without a
    // second check when it starts at the first element.
    let whole_batch_ok =
        n == 1 || linear_address(&*state, mode, seg, low_offset(n), n * size64, access).is_ok();
    if !whole_batch_ok {
        let mut ok = 1;
        while ok < n {
            let elem = if backwards {
                offset - ok * size64
            } else {
                offset + ok * size64
            };
            if linear_address(&*state, mode, seg, elem, size64, access).is_err() {
                break;
            }
            ok += 1;
        }
        n = ok;
    }
    let low_linear = if n == 1 || whole_batch_ok && !backwards {
        first_linear
    } else {
        linear_address(&*state, mode, seg, low_offset(n), n * size64, access)?
    };
    // n * size <= IO_BATCH_BYTES.
    let total = (n * size64) as usize;
    let range = match cache {
        Some(cache) => resolve_cached(&*state, ram, cache, low_linear, total, access)?,
        None => resolve(&*state, ram, low_linear, total, access)?,
    };

    let batch = Batch {
        exit,
        range: &range,
        n,
        size,
        backwards,
    };
    // A buffer of the batch's size class: zeroing the whole 4 KiB one costs
    // a single-element OUTS most of its time.
    let (done, port_error) = if total <= SMALL_BATCH_BYTES {
        let mut buf = [0u8; SMALL_BATCH_BYTES];
        let data = buf.get_mut(..total).ok_or(Error::InconsistentExit)?;
        batch.transfer(ram, mmio, ports, data)?
    } else {
        batch.transfer_large(ram, mmio, ports, total)?
    };

    // Commit the completed iterations.
    let moved = done * size64;
    let new_offset = if backwards {
        offset.wrapping_sub(moved)
    } else {
        offset.wrapping_add(moved)
    };
    state.set_gpr(reg, write_sized(reg_value, new_offset, exit.address_size));
    if exit.rep {
        let left = count - done;
        state.set_gpr(Gpr::Rcx, write_sized(rcx, left, exit.address_size));
        if left != 0 {
            return Ok(Outcome::Resume);
        }
    }
    if port_error.is_some() {
        // A non-REP string I/O has n = 1, so done == 0 returned above.
        return Ok(Outcome::Resume);
    }
    state.set_rip(exit.npc);
    Ok(Outcome::Done)
}

/// The batch buffer of a small batch (a single element, a short REP, an
/// ATA sector of 512 bytes), for string I/O and the memory string
/// instructions (`exec/string.rs`) alike.
pub(crate) const SMALL_BATCH_BYTES: usize = 512;

/// One checked and translated batch of INS/OUTS: `n` elements of `size`
/// bytes at `range`, in descending addresses when `backwards`.
struct Batch<'a> {
    exit: &'a IoExit,
    range: &'a PhysRange,
    n: u64,
    size: usize,
    backwards: bool,
}

impl Batch<'_> {
    /// [`Batch::transfer`] with a 4 KiB buffer, out of line so that the
    /// small batches' frame does not carry it.
    #[inline(never)]
    fn transfer_large<R: GuestRam + ?Sized, M: MmioBus + ?Sized, P: PortIo + ?Sized>(
        &self,
        ram: &mut R,
        mmio: &mut M,
        ports: &mut P,
        total: usize,
    ) -> Result<(u64, Option<BusError>), Error> {
        let mut buf = [0u8; IO_BATCH_BYTES];
        let data = buf.get_mut(..total).ok_or(Error::InconsistentExit)?;
        self.transfer(ram, mmio, ports, data)
    }

    /// Moves the batch between memory and the port through `data` (the
    /// batch's size): the completed elements and the port error that
    /// stopped it, if any. An error with no element done is returned as
    /// the error.
    #[inline(always)]
    fn transfer<R: GuestRam + ?Sized, M: MmioBus + ?Sized, P: PortIo + ?Sized>(
        &self,
        ram: &mut R,
        mmio: &mut M,
        ports: &mut P,
        data: &mut [u8],
    ) -> Result<(u64, Option<BusError>), Error> {
        let Batch {
            exit,
            range,
            n,
            size,
            backwards,
        } = *self;
        let size64 = size as u64;
        // The batch goes to the device in iteration order (descending
        // addresses for DF=1); `data` holds it in memory order.
        if exit.input {
            let (done, port_error) = batch_result(ports.read_batch(exit.port, size, data), n);
            if done == 0
                && let Some(e) = port_error
            {
                return Err(e.into());
            }
            // The completed iterations' elements, into memory order: all of
            // the batch, or (on a port error, n > 1 so within one page) the
            // first `done` iterations, which lie at the low end for DF=0 and
            // the high end for DF=1.
            let bytes = (done * size64) as usize;
            let part = data.get_mut(..bytes).ok_or(Error::InconsistentExit)?;
            if backwards {
                reverse_elements(part, size);
            }
            if done == n {
                write_phys(ram, mmio, range, part)?;
            } else {
                let lo = if backwards { (n - done) * size64 } else { 0 };
                let (gpa, _) = range.parts[0];
                let sub = PhysRange {
                    parts: [(gpa + lo, bytes), (0, 0)],
                    count: 1,
                };
                write_phys(ram, mmio, &sub, part)?;
            }
            Ok((done, port_error))
        } else {
            read_phys(ram, mmio, range, data)?;
            if backwards {
                reverse_elements(data, size);
            }
            let (done, port_error) = batch_result(ports.write_batch(exit.port, size, data), n);
            if done == 0
                && let Some(e) = port_error
            {
                return Err(e.into());
            }
            Ok((done, port_error))
        }
    }
}
