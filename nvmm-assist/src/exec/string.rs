//! MOVS, STOS, LODS, CMPS and SCAS, with REP, REPE and REPNE.
//!
//! - rSI, rDI and rCX are used and updated at the address size (a 16-bit
//!   update keeps the upper bits, a 32-bit one zero-extends).
//! - The source segment is DS or the override; the destination is always
//!   ES:rDI, whatever the prefixes.
//! - RFLAGS.DF selects the direction.
//! - REP with rCX = 0 does nothing but advance RIP. REPE/REPNE stop CMPS and
//!   SCAS on ZF; on MOVS, STOS and LODS both prefixes mean REP.
//! - A REP instruction runs in batches: as many iterations as stay within
//!   the current page of each operand (and of the segment's address space),
//!   at most [`MAX_BATCH`]. Each batch is translated once. When iterations
//!   remain, the result is [`Outcome::Resume`]: RIP unchanged, rCX/rSI/rDI
//!   updated, and the guest re-executes the instruction.
//! - A bus error after some iterations of a batch commits those iterations
//!   and returns `Resume`; the next call then fails at once with nothing
//!   changed. A bus error on the first iteration is returned as the error.
//! - A batch of STOS, or of MOVS from RAM (source and destination not
//!   overlapping), is written in one piece: to RAM when the destination is
//!   RAM, else offered to the device whole ([`MmioBus::write_batch`]); a
//!   device that declines gets one write per element. A RAM error on such
//!   a one-piece access fails the batch with nothing committed.
//! - STOS, LODS and SCAS have one memory operand, the one that caused the
//!   exit: its page comes from the exit GPA. MOVS and CMPS translate both
//!   operands through the page walker (either may be the MMIO one).

use super::{Exec, PAGE_SIZE, read_page, write_page};
use crate::Outcome;
use crate::access::{AccessType, PhysRange};
use crate::bus::{BusError, GuestRam, MmioBus, RamStatus};
use crate::decode::{Mnemonic, RepPrefix};
use crate::error::Error;
use crate::flags::{self, DF, ZF};
use crate::io::{SMALL_BATCH_BYTES, reverse_elements};
use crate::state::{CpuState, Gpr, Segment};

/// The largest number of iterations one assist call performs.
pub(crate) const MAX_BATCH: u64 = 2048;

const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// One memory operand of a string instruction, planned for a batch.
#[derive(Clone, Copy)]
struct Side {
    seg: Segment,
    offset: u64,
    linear: u64,
    access: AccessType,
}

/// The guest-physical location of each element of a batch.
#[derive(Clone, Copy)]
enum Elements {
    /// One element, possibly split over two pages.
    One(PhysRange),
    /// Elements within one page: element `i` is at `gpa0 +/- i * size`.
    Page { gpa0: u64 },
}

impl Elements {
    fn get(&self, i: u64, size: u64, backwards: bool) -> PhysRange {
        match *self {
            Elements::One(r) => r,
            Elements::Page { gpa0 } => {
                let delta = i.wrapping_mul(size);
                let gpa = if backwards {
                    gpa0.wrapping_sub(delta)
                } else {
                    gpa0.wrapping_add(delta)
                };
                PhysRange {
                    parts: [(gpa, size as usize), (0, 0)],
                    count: 1,
                }
            }
        }
    }
}

/// How many elements of `size` bytes, starting at element 0 of `side`,
/// stay within its page and within the address space of `amask`.
fn room(side: &Side, size: u64, amask: u64, backwards: bool) -> u64 {
    let in_page = side.linear & PAGE_MASK;
    if in_page + size > PAGE_SIZE || side.offset > amask - (size - 1) {
        // Element 0 itself crosses a page or wraps the offset: alone.
        return 1;
    }
    let (page_room, offset_room) = if backwards {
        (in_page / size + 1, (side.offset / size).saturating_add(1))
    } else {
        (
            (PAGE_SIZE - in_page) / size,
            ((amask - side.offset - (size - 1)) / size).saturating_add(1),
        )
    };
    page_room.min(offset_room).max(1)
}

/// REP with a zero count accesses nothing. With a 32-bit address size in
/// 64-bit mode an Intel CPU still writes ECX, and for MOVS ESI and EDI, for
/// STOS EDI, as 32-bit registers (their upper halves are cleared; LODS,
/// CMPS and SCAS keep RSI/RDI); an AMD CPU writes nothing. Elsewhere
/// nothing is written. The rule and its sources are in [`crate::vendor`].
fn zero_count_writes<S, R, M>(x: &mut Exec<'_, S, R, M>, op: Mnemonic, asz: u8)
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    if asz != 4 || !x.mode.is_64bit() || !x.state.vendor().zero_count_writes() {
        return;
    }
    let mut regs = [Some(Gpr::Rcx), None, None];
    match op {
        Mnemonic::Movs => {
            regs[1] = Some(Gpr::Rsi);
            regs[2] = Some(Gpr::Rdi);
        }
        Mnemonic::Stos => regs[1] = Some(Gpr::Rdi),
        _ => {}
    }
    for reg in regs.into_iter().flatten() {
        let v = x.gpr(reg);
        x.write_addr_reg(reg, 4, v);
    }
}

/// A batch of STOS, or of MOVS from RAM, written in one piece: to RAM if
/// the destination turns out to be RAM, else offered to the device
/// ([`MmioBus::write_batch`]). `Ok(None)`: not done that way, nothing
/// changed (a RAM read, or a RAM write that was refused, has no effect);
/// the caller goes element by element. `Ok(Some((done, error)))`: `done`
/// elements written, then the device failed with `error`. A RAM error on
/// the one-piece access is the batch's error (no callback follows a failed
/// one): nothing is committed.
///
/// Only for source and destination ranges that do not overlap: an
/// overlapping MOVS copies element by element, as the CPU does.
fn write_batch<S, R, M>(
    x: &mut Exec<'_, S, R, M>,
    op: Mnemonic,
    elements: &[Option<Elements>; 2],
    n: u64,
    s: u64,
    backwards: bool,
    rax: u64,
) -> Result<Option<(u64, Option<BusError>)>, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let Some(Elements::Page { gpa0: dst0 }) = elements[1] else {
        return Ok(None);
    };
    // Within one page, so at most 4096 bytes.
    let Some(total) = n.checked_mul(s).and_then(|t| usize::try_from(t).ok()) else {
        return Ok(None);
    };
    let batch = Batch {
        op,
        src0: elements[0],
        dst0,
        n,
        s,
        backwards,
        rax,
    };
    // A buffer of the batch's size class: zeroing the whole 4 KiB one cost
    // a short REP most of its time (as for string I/O, `io.rs`).
    if total <= SMALL_BATCH_BYTES {
        let mut buf = [0u8; SMALL_BATCH_BYTES];
        let data = buf.get_mut(..total).ok_or(Error::InconsistentExit)?;
        batch.write(x, data)
    } else {
        batch.write_large(x, total)
    }
}

/// A batch for [`write_batch`]: `n` elements of `s` bytes, to the page of
/// `dst0` (element 0's GPA), from `src0` (MOVS) or of `rax` (STOS).
struct Batch {
    op: Mnemonic,
    src0: Option<Elements>,
    dst0: u64,
    n: u64,
    s: u64,
    backwards: bool,
    rax: u64,
}

impl Batch {
    /// [`Batch::write`] with a 4 KiB buffer, out of line so that the small
    /// batches' frame does not carry it.
    #[inline(never)]
    fn write_large<S, R, M>(
        &self,
        x: &mut Exec<'_, S, R, M>,
        total: usize,
    ) -> Result<Option<(u64, Option<BusError>)>, Error>
    where
        S: CpuState + ?Sized,
        R: GuestRam + ?Sized,
        M: MmioBus + ?Sized,
    {
        let mut buf = [0u8; PAGE_SIZE as usize];
        let data = buf.get_mut(..total).ok_or(Error::InconsistentExit)?;
        self.write(x, data)
    }

    /// The batch through `data`, exactly its size in bytes (in memory
    /// order: ascending addresses).
    #[inline(always)]
    fn write<S, R, M>(
        &self,
        x: &mut Exec<'_, S, R, M>,
        data: &mut [u8],
    ) -> Result<Option<(u64, Option<BusError>)>, Error>
    where
        S: CpuState + ?Sized,
        R: GuestRam + ?Sized,
        M: MmioBus + ?Sized,
    {
        let Batch {
            op,
            src0,
            dst0,
            n,
            s,
            backwards,
            rax,
        } = *self;
        let total = data.len();
        let span = (n - 1) * s;
        let low = |gpa0: u64| {
            if backwards {
                gpa0.wrapping_sub(span)
            } else {
                gpa0
            }
        };
        let size = s as usize;
        match op {
            Mnemonic::Stos => {
                let value = rax.to_le_bytes();
                let (Some(first), Some(element)) = (data.get_mut(..size), value.get(..size)) else {
                    return Ok(None);
                };
                first.copy_from_slice(element);
                // Doubling copies: log2(n) block copies instead of n.
                let mut filled = size;
                while filled < total {
                    let chunk = filled.min(total - filled);
                    data.copy_within(..chunk, filled);
                    filled += chunk;
                }
            }
            Mnemonic::Movs => {
                let Some(Elements::Page { gpa0: src0 }) = src0 else {
                    return Ok(None);
                };
                let (src, dst) = (low(src0), low(dst0));
                let len = total as u64;
                if src < dst.wrapping_add(len) && dst < src.wrapping_add(len) {
                    return Ok(None);
                }
                if x.ram.read(src, data)? != RamStatus::Done {
                    return Ok(None);
                }
            }
            _ => return Ok(None),
        }
        if x.ram.write(low(dst0), data)? == RamStatus::Done {
            return Ok(Some((n, None)));
        }
        // The device sees the elements in the order the CPU writes them.
        if backwards {
            reverse_elements(data, size);
        }
        Ok(match x.mmio.write_batch(dst0, size, backwards, data) {
            None => None,
            Some(Ok(())) => Some((n, None)),
            Some(Err(p)) => Some(((p.done as u64).min(n), Some(p.error))),
        })
    }
}

/// The element-by-element iterations of a batch of more than one
/// element (each operand's elements within one page, element `i` at its
/// element 0's GPA +/- `i * size`), by GPA: the same bus calls, in the
/// same order, as one [`Exec::read_mem`]/[`Exec::write_mem`] per element,
/// without a [`PhysRange`] for each.
struct Run {
    op: Mnemonic,
    rep: Option<RepPrefix>,
    /// Element 0's GPA of the source, if the instruction has one.
    src0: Option<u64>,
    /// Element 0's GPA of the destination, if the instruction has one.
    dst0: Option<u64>,
    size: u8,
    backwards: bool,
    /// rAX at the element size.
    rax: u64,
    rflags: u64,
}

/// What [`Run::elements`] did.
struct Ran {
    /// The iterations completed.
    done: u64,
    /// RFLAGS after the last compare (CMPS, SCAS), else as before.
    flags: u64,
    /// The last element loaded (LODS).
    loaded: Option<u64>,
    /// A REPE/REPNE compare ended the instruction.
    stopped: bool,
    /// The bus error that stopped the batch.
    failure: Option<Error>,
}

impl Run {
    /// Runs up to `n` iterations, stopping at a bus error or at the
    /// compare that ends a REPE/REPNE.
    fn elements<S, R, M>(&self, x: &mut Exec<'_, S, R, M>, n: u64) -> Ran
    where
        S: CpuState + ?Sized,
        R: GuestRam + ?Sized,
        M: MmioBus + ?Sized,
    {
        let Run {
            op,
            rep,
            src0,
            dst0,
            size,
            backwards,
            rax,
            rflags,
        } = *self;
        let s = u64::from(size);
        let at = |gpa0: u64, i: u64| advance(gpa0, i.wrapping_mul(s), backwards);
        let mut ran = Ran {
            done: 0,
            flags: rflags,
            loaded: None,
            stopped: false,
            failure: None,
        };
        // The compare that ends a REPE (ZF clear) or REPNE (ZF set).
        let stops = |flags: u64| match rep {
            Some(RepPrefix::Rep) => flags & ZF == 0,
            Some(RepPrefix::Repne) => flags & ZF != 0,
            None => false,
        };
        let (ram, mmio) = (&mut *x.ram, &mut *x.mmio);
        // One loop per instruction, so that each is a plain loop.
        let result: Result<(), Error> = match (op, src0, dst0) {
            (Mnemonic::Movs, Some(src0), Some(dst0)) => (0..n).try_for_each(|i| {
                let v = read_page(ram, mmio, at(src0, i), size)?;
                write_page(ram, mmio, at(dst0, i), size, v)?;
                ran.done += 1;
                Ok(())
            }),
            (Mnemonic::Stos, _, Some(dst0)) => (0..n).try_for_each(|i| {
                write_page(ram, mmio, at(dst0, i), size, rax)?;
                ran.done += 1;
                Ok(())
            }),
            (Mnemonic::Lods, Some(src0), _) => (0..n).try_for_each(|i| {
                ran.loaded = Some(read_page(ram, mmio, at(src0, i), size)?);
                ran.done += 1;
                Ok(())
            }),
            (Mnemonic::Cmps, Some(_), Some(dst0)) | (Mnemonic::Scas, _, Some(dst0)) => {
                let mut result = Ok(());
                for i in 0..n {
                    // CMPS compares the source element, SCAS rAX.
                    let a = match (op, src0) {
                        (Mnemonic::Cmps, Some(src0)) => read_page(ram, mmio, at(src0, i), size),
                        _ => Ok(rax),
                    };
                    let b = a.and_then(|a| Ok((a, read_page(ram, mmio, at(dst0, i), size)?)));
                    match b {
                        Ok((a, b)) => {
                            ran.flags = compare_flags(a, b, size, rflags);
                            ran.done += 1;
                            if stops(ran.flags) {
                                ran.stopped = true;
                                break;
                            }
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                result
            }
            _ => Err(Error::InconsistentExit),
        };
        ran.failure = result.err();
        ran
    }
}

/// The memory operands of string instruction `op`: whether it has a
/// source (seg:rSI) and a destination (ES:rDI), and how the destination is
/// accessed. `None` for other mnemonics.
#[inline(always)]
pub(crate) fn operands(op: Mnemonic) -> Option<(bool, bool, AccessType)> {
    Some(match op {
        Mnemonic::Movs => (true, true, AccessType::Write),
        Mnemonic::Cmps => (true, true, AccessType::Read),
        Mnemonic::Lods => (true, false, AccessType::Read),
        Mnemonic::Stos => (false, true, AccessType::Write),
        Mnemonic::Scas => (false, true, AccessType::Read),
        _ => return None,
    })
}

/// rSI or rDI (`value`) after `moved` bytes in the direction RFLAGS.DF
/// gives (`backwards`), before the address-size write.
#[inline(always)]
pub(crate) fn advance(value: u64, moved: u64, backwards: bool) -> u64 {
    if backwards {
        value.wrapping_sub(moved)
    } else {
        value.wrapping_add(moved)
    }
}

/// The flags of CMPS/SCAS comparing `a` (the source, or rAX) with `b` (the
/// destination): those of `a - b` at `size`.
#[inline(always)]
pub(crate) fn compare_flags(a: u64, b: u64, size: u8, rflags: u64) -> u64 {
    flags::cmp(a, b, size, rflags)
}

pub(super) fn exec<S, R, M>(x: &mut Exec<'_, S, R, M>) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let insn = x.insn;
    let op = insn.mnemonic;
    let size = insn.operand_size;
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err(x.unsupported());
    }
    let s = u64::from(size);
    let asz = insn.address_size;
    let amask = flags::size_mask(asz);
    let rflags = x.rflags();
    let backwards = rflags & DF != 0;

    let count = match insn.rep {
        Some(_) => {
            let c = x.gpr(Gpr::Rcx) & amask;
            if c == 0 {
                zero_count_writes(x, op, asz);
                return Ok(Outcome::Done);
            }
            c
        }
        None => 1,
    };

    let Some((has_src, has_dst, dst_access)) = operands(op) else {
        return Err(x.unsupported());
    };
    let trusted = !(has_src && has_dst);

    // Element 0 of each operand: segmentation checks, then the batch size.
    let mut n = count.min(MAX_BATCH);
    let mut sides: [Option<Side>; 2] = [None, None];
    if has_src {
        let seg = insn.segment_override.unwrap_or(Segment::Ds);
        let offset = x.gpr(Gpr::Rsi) & amask;
        let linear = x.linear(seg, offset, s, AccessType::Read)?;
        let side = Side {
            seg,
            offset,
            linear,
            access: AccessType::Read,
        };
        n = n.min(room(&side, s, amask, backwards));
        sides[0] = Some(side);
    }
    if has_dst {
        let offset = x.gpr(Gpr::Rdi) & amask;
        let linear = x.linear(Segment::Es, offset, s, dst_access)?;
        let side = Side {
            seg: Segment::Es,
            offset,
            linear,
            access: dst_access,
        };
        n = n.min(room(&side, s, amask, backwards));
        sides[1] = Some(side);
    }
    // The whole batch must pass the segment checks; if it does not, do
    // one iteration (the CPU faults at the first element that fails, and
    // the following calls get there one element at a time).
    if n > 1 {
        for side in sides.iter().flatten() {
            let lowest = if backwards {
                side.offset - (n - 1) * s
            } else {
                side.offset
            };
            if x.linear(side.seg, lowest, n * s, side.access).is_err() {
                n = 1;
            }
        }
    }

    // Translate each operand once for the batch (the two walks sharing
    // what they read in common, as the fast path's do: `sharing_walks`).
    let mut elements: [Option<Elements>; 2] = [None, None];
    x.sharing_walks(|x| -> Result<(), Error> {
        for (slot, side) in elements.iter_mut().zip(sides.iter()) {
            let Some(side) = side else { continue };
            let located = if n == 1 {
                Elements::One(x.physical(side.linear, s, side.access, trusted)?)
            } else if trusted {
                let r = x.physical(side.linear, s, side.access, true)?;
                Elements::Page { gpa0: r.parts[0].0 }
            } else {
                let span = (n - 1) * s;
                let lowest = if backwards {
                    side.linear.wrapping_sub(span)
                } else {
                    side.linear
                };
                let len = usize::try_from(span + s).map_err(|_| Error::InconsistentExit)?;
                let r = x.resolve(lowest, len, side.access)?;
                Elements::Page {
                    gpa0: r.parts[0].0.wrapping_add(side.linear.wrapping_sub(lowest)),
                }
            };
            x.check_alignment(side.linear, s)?;
            *slot = Some(located);
        }
        Ok(())
    })?;

    let rax = x.gpr(Gpr::Rax) & flags::size_mask(size);
    let mut done = 0u64;
    let mut last_flags = rflags;
    let mut loaded = None;
    let mut stopped = false;
    let mut failure = None;
    let batched = if n > 1 && matches!(op, Mnemonic::Movs | Mnemonic::Stos) {
        write_batch(x, op, &elements, n, s, backwards, rax)?
    } else {
        None
    };
    if let Some((d, error)) = batched {
        done = d;
        failure = error.map(Error::from);
    }
    let per_element = match (batched, elements) {
        (Some(_), _) => 0,
        // More than one element, each operand's within its page: by GPA.
        (None, [src, dst]) if n > 1 => {
            let page0 = |e: Option<Elements>| match e {
                Some(Elements::Page { gpa0 }) => Some(gpa0),
                _ => None,
            };
            let run = Run {
                op,
                rep: insn.rep,
                src0: page0(src),
                dst0: page0(dst),
                size,
                backwards,
                rax,
                rflags,
            };
            let r = run.elements(x, n);
            done = r.done;
            last_flags = r.flags;
            loaded = r.loaded;
            stopped = r.stopped;
            failure = r.failure;
            0
        }
        (None, _) => n,
    };
    for i in 0..per_element {
        let src = elements[0].map(|e| e.get(i, s, backwards));
        let dst = elements[1].map(|e| e.get(i, s, backwards));
        let step: Result<(), Error> = (|| {
            match (op, src, dst) {
                (Mnemonic::Movs, Some(src), Some(dst)) => {
                    let v = x.read_mem(&src, size)?;
                    x.write_mem(&dst, size, v)?;
                }
                (Mnemonic::Stos, _, Some(dst)) => x.write_mem(&dst, size, u128::from(rax))?,
                (Mnemonic::Lods, Some(src), _) => loaded = Some(x.read_mem(&src, size)? as u64),
                (Mnemonic::Cmps, Some(src), Some(dst)) => {
                    let a = x.read_mem(&src, size)? as u64;
                    let b = x.read_mem(&dst, size)? as u64;
                    last_flags = compare_flags(a, b, size, rflags);
                }
                (Mnemonic::Scas, _, Some(dst)) => {
                    let b = x.read_mem(&dst, size)? as u64;
                    last_flags = compare_flags(rax, b, size, rflags);
                }
                _ => return Err(Error::InconsistentExit),
            }
            Ok(())
        })();
        if let Err(e) = step {
            failure = Some(e);
            break;
        }
        done += 1;
        if matches!(op, Mnemonic::Cmps | Mnemonic::Scas) {
            let zf = last_flags & ZF != 0;
            stopped = match insn.rep {
                Some(RepPrefix::Rep) => !zf,
                Some(RepPrefix::Repne) => zf,
                None => false,
            };
            if stopped {
                break;
            }
        }
    }
    if let Some(e) = failure
        && done == 0
    {
        return Err(e);
    }

    // Commit the completed iterations.
    let moved = done * s;
    if has_src {
        let new = advance(x.gpr(Gpr::Rsi), moved, backwards);
        x.write_addr_reg(Gpr::Rsi, asz, new);
    }
    if has_dst {
        let new = advance(x.gpr(Gpr::Rdi), moved, backwards);
        x.write_addr_reg(Gpr::Rdi, asz, new);
    }
    if let Some(v) = loaded {
        x.write_gpr_sized(Gpr::Rax, size, v);
    }
    x.set_rflags(last_flags);
    if insn.rep.is_none() {
        return Ok(Outcome::Done);
    }
    let left = count - done;
    x.write_addr_reg(Gpr::Rcx, asz, left);
    if left == 0 || stopped {
        Ok(Outcome::Done)
    } else {
        // As when an interrupt arrives between iterations: RF is set so
        // that re-executing the instruction does not trigger its
        // instruction breakpoint again.
        x.set_rflags(x.rflags() | flags::RF);
        Ok(Outcome::Resume)
    }
}
