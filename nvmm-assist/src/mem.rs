//! The memory assist: emulate the instruction behind a memory (MMIO) exit.
//!
//! Flow of [`assist_mem`]:
//! 1. The instruction bytes come from the exit, or are fetched at CS:RIP
//!    up to the first page end or CS-limit end (more only if the decoder
//!    needs more), through segmentation and the page walker, or the
//!    caller's [`FetchCache`] ([`assist_mem_cached`]), re-validated first.
//! 2. In every mode the common forms take a fast path (`exec/fast/`) that
//!    decodes and executes them directly: the single-memory-operand
//!    integer forms (MOV including moffs, MOVZX, MOVSX, MOVSXD, the ALU and
//!    TEST forms, INC/DEC/NOT/NEG, XCHG, XADD, CMPXCHG*, BT*, SETcc,
//!    CMOVcc, MOVNTI, with 66, LOCK, segment-override and REX prefixes at
//!    most), the SSE moves, single (non-REP) string instructions and
//!    PUSH/POP m. Everything else, and every case that needs more than a
//!    plain access (a fault, a page crossing, a mismatching exit, REP),
//!    goes to the general decoder and the per-family executors in `exec/`.
//!    Both paths call the same semantics functions (`exec/alu.rs`,
//!    `bits.rs`, `xchg.rs`, `mov.rs`, `sse.rs`, `string.rs`, `stack.rs`),
//!    and differential tests hold the two paths equal on random inputs.
//! 3. Registers are staged and committed only when the instruction (or a
//!    REP batch) has succeeded: an error changes no register.
//!
//! Policies:
//! - The exit GPA is trusted for an instruction's single memory operand
//!   when the access stays within one page (libnvmm's behaviour): its page
//!   offset must match the decoded linear address
//!   ([`Error::InconsistentExit`] otherwise). Page-crossing accesses, and
//!   instructions with two memory operands (MOVS, CMPS, PUSH m, POP m),
//!   translate through the page walker.
//! - REP string instructions run in batches bounded by the operands' pages
//!   and 2048 iterations; [`Outcome::Resume`] lets the guest re-execute the
//!   rest (RF set, as after an interrupted REP).
//! - Locked read-modify-writes on RAM use compare-and-write and retry up to
//!   16 times, then return [`Outcome::Resume`] with nothing changed; on MMIO
//!   they are a read followed by a write. An operand split over a RAM and
//!   an MMIO page reads the device once and writes it once, after the RAM
//!   part's compare-and-write succeeded (a retry reads the RAM part
//!   again); split over two RAM pages, a lost race on the second puts the
//!   first back before the retry. The two pages are not one atomic
//!   access: another CPU may see one part written before the other.
//! - A completed instruction clears RFLAGS.RF. Single-step traps (RFLAGS.TF)
//!   are not raised: the [`Error`]/[`Outcome`] contract has no way to report
//!   a trap after completion.

use crate::Outcome;
use crate::access::{self, AccessType};
use crate::bus::{GuestRam, MmioBus};
use crate::decode::{DecodeError, Instruction, decode};
use crate::error::{Error, Exception};
use crate::exec::{Exec, PAGE_SIZE, Pending, fast};
use crate::fetch;
use crate::fetch_cache::FetchCache;
use crate::mode::CpuMode;
use crate::state::{CpuState, Segment};

/// What a memory exit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemExit<'a> {
    /// The guest-physical address the access faulted on.
    pub gpa: u64,
    /// The kind of access that faulted. An instruction fetch from non-RAM
    /// cannot be assisted ([`Error::InconsistentExit`]).
    pub access: AccessType,
    /// The instruction bytes the exit carries (SVM with DecodeAssists gives
    /// up to 15), or empty: the assist then fetches them at CS:RIP through
    /// the page walker, only as many as the instruction needs.
    pub instruction: &'a [u8],
}

/// Emulates the instruction that caused the memory exit `exit`: decodes it,
/// performs its accesses on `ram` and `mmio`, and updates `state` as the CPU
/// would have.
///
/// - [`Outcome::Done`]: the instruction completed and RIP points past it.
/// - [`Outcome::Resume`]: a bounded batch of a REP string instruction was
///   done (rCX, rSI, rDI updated, RIP unchanged), or a locked
///   read-modify-write on RAM lost the race against another writer too many
///   times in a row (nothing changed). Either way, run the vCPU again: it
///   re-executes the instruction.
/// - `Err`: no guest register has changed. [`Error::Exception`] is a fault
///   to inject (an undecodable instruction is `#UD`, one over 15 bytes
///   `#GP(0)`).
///
/// For an operand that does not cross a page, the exit's GPA is used as is
/// (no page walk, as libnvmm does): its page offset must equal that of the
/// decoded linear address, else [`Error::InconsistentExit`]. Page-crossing
/// accesses, PUSH/POP and MOVS/CMPS translate through the page walker.
pub fn assist_mem<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    assist_mem_with(state, ram, mmio, exit, true, &mut FetchCache::new())
}

/// [`assist_mem`] with the VCPU's [`FetchCache`]: when the exit carries no
/// instruction bytes, the translation of CS:RIP comes from `cache` after it
/// has been re-validated against the guest's current page tables and
/// control state (exact; see [`FetchCache`]), which saves most of the page
/// walk when the guest exits repeatedly from the same code page. The
/// operands the assist translates itself (the stack of PUSH/POP m, the RAM
/// side of MOVS/CMPS, a page-crossing operand) go through its data
/// translations the same way, with or without bytes in the exit. Keep one
/// cache per VCPU.
pub fn assist_mem_cached<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
    cache: &mut FetchCache,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    assist_mem_with(state, ram, mmio, exit, true, cache)
}

/// The architectural maximum physical-address width (SDM vol. 3A §4.1.4,
/// APM vol. 2 §5.1).
const MAX_PHYS_ADDR_BITS: u32 = 52;

/// [`assist_mem`], with the fast path enabled or not (the tests compare
/// both), fetching through `cache`.
///
/// Inline in the callers, and only this choice: an exit with no bytes
/// (VMX) and the fast path on takes its own out-of-line entry,
/// [`assist_fetching`], which fetches inline and hands the bytes to the
/// lanes from its own frame; everything else takes [`assist_entry`]. Two
/// entries rather than one, so that each has the frame its own path
/// needs: the fetch's registers and buffer do not cost the exits that
/// carry their bytes anything, and the fetch path does not pass through
/// a second frame.
#[inline(always)]
pub(crate) fn assist_mem_with<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
    fast_path: bool,
    cache: &mut FetchCache,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    if fast_path && exit.instruction.is_empty() {
        return assist_fetching(state, ram, mmio, exit, cache);
    }
    assist_entry(state, ram, mmio, exit, fast_path, cache)
}

/// The checks of the exit that both entries make first: an exit for an
/// instruction fetch, or with a guest-physical address above the
/// architectural maximum, is inconsistent.
#[inline(always)]
fn check_exit(exit: &MemExit<'_>) -> Result<(), Error> {
    if exit.access == AccessType::Execute {
        return Err(Error::InconsistentExit);
    }
    // A nested-paging exit reports a guest-physical address below the
    // architectural maximum width (52 bits). One above it comes from a
    // broken or hostile exit, and ranges computed from it could wrap the
    // 64-bit address space.
    if exit.gpa >> MAX_PHYS_ADDR_BITS != 0 {
        return Err(Error::InconsistentExit);
    }
    Ok(())
}

/// [`assist_mem_with`] for an exit carrying its bytes, or with the fast
/// path off.
#[inline(never)]
fn assist_entry<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
    fast_path: bool,
    cache: &mut FetchCache,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    check_exit(exit)?;
    // The two common shapes of the control state inline; anything else
    // (inconsistent, or rare such as LME set with paging off) out of line,
    // so that this entry makes no call it must come back from.
    let Some(mode) = CpuMode::common_of(state) else {
        return uncommon(state, ram, mmio, exit, cache);
    };
    if !fast_path {
        return general(state, ram, mmio, exit, cache, mode);
    }
    // (An exit without bytes has its own entry, `assist_fetching`, which
    // `assist_mem_with` chose before; were one to come here, no lane takes
    // empty bytes and the general path behind them fetches.)
    match mode {
        CpuMode::Long64 => assist_lane::<8, S, R, M>(state, ram, mmio, exit, cache, mode),
        CpuMode::Protected32 | CpuMode::Compat32 => {
            assist_lane::<4, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
        _ => assist_lane::<2, S, R, M>(state, ram, mmio, exit, cache, mode),
    }
}

/// [`assist_mem_with`] for an exit with no bytes (VMX) and the fast path
/// on: the entry's checks, then the fetch and what an exit carrying the
/// fetched bytes takes, in [`fetched_sized`]'s copy for the mode's
/// default address size, inline.
#[inline(never)]
fn assist_fetching<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
    cache: &mut FetchCache,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    check_exit(exit)?;
    let Some(mode) = CpuMode::common_of(state) else {
        // The general path (which fetches on its own) for the rare and
        // the inconsistent control states, as with bytes.
        return uncommon(state, ram, mmio, exit, cache);
    };
    // The mode a constant in each copy of the 32- and 64-bit ones (it is
    // passed on to the lanes, and a value held across the fetch would be
    // spilled).
    match mode {
        CpuMode::Long64 => {
            fetched_sized::<8, S, R, M>(state, ram, mmio, exit.gpa, cache, CpuMode::Long64)
        }
        CpuMode::Compat32 => {
            fetched_sized::<4, S, R, M>(state, ram, mmio, exit.gpa, cache, CpuMode::Compat32)
        }
        CpuMode::Protected32 => {
            fetched_sized::<4, S, R, M>(state, ram, mmio, exit.gpa, cache, CpuMode::Protected32)
        }
        _ => fetched_sized::<2, S, R, M>(state, ram, mmio, exit.gpa, cache, mode),
    }
}

/// [`assist_mem_with`] with the bytes in the exit, for the modes whose
/// default address size is `ADDR`: the fast path's lane for the first
/// bytes (see `exec/fast/lanes.rs`), each out of line and small, else (or
/// when it declines) the full fast path.
#[inline(always)]
fn assist_lane<const ADDR: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
    cache: &mut FetchCache,
    mode: CpuMode,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let lane = fast::lane::<ADDR>(exit.instruction);
    assist_lane_of::<ADDR, S, R, M>(lane, state, ram, mmio, exit, cache, mode)
}

/// [`assist_lane`] once the lane of the exit's bytes is known (the fetch
/// path picks it before, and passes it on rather than picking it twice).
#[inline(always)]
fn assist_lane_of<const ADDR: u8, S, R, M>(
    lane: fast::Lane,
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
    cache: &mut FetchCache,
    mode: CpuMode,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // Each lane out of line in its own copy of `assist_in_lane`, with the
    // full fast path behind it.
    match lane {
        fast::Lane::Other => assist_sized::<ADDR, S, R, M>(state, ram, mmio, exit, cache, mode),
        fast::Lane::Mov => {
            assist_in_lane::<ADDR, MOV, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
        fast::Lane::Alu => {
            assist_in_lane::<ADDR, ALU, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
        fast::Lane::Int => {
            assist_in_lane::<ADDR, INT, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
        fast::Lane::Exchange => {
            assist_in_lane::<ADDR, EXCHANGE, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
        fast::Lane::Unary => {
            assist_in_lane::<ADDR, UNARY, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
        fast::Lane::Bits => {
            assist_in_lane::<ADDR, BITS, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
        fast::Lane::Cond => {
            assist_in_lane::<ADDR, COND, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
        fast::Lane::Stack => {
            assist_in_lane::<ADDR, STACK, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
        fast::Lane::Sse => {
            assist_in_lane::<ADDR, SSE, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
        fast::Lane::String => {
            assist_in_lane::<ADDR, STRING, S, R, M>(state, ram, mmio, exit, cache, mode)
        }
    }
}

/// [`assist_in_lane`]'s `LANE`: [`fast::run_mov`].
const MOV: u8 = 0;
/// [`assist_in_lane`]'s `LANE`: [`fast::run_alu`].
const ALU: u8 = 1;
/// [`assist_in_lane`]'s `LANE`: [`fast::run_int`].
const INT: u8 = 2;
/// [`assist_in_lane`]'s `LANE`: [`fast::run_stack`].
const STACK: u8 = 3;
/// [`assist_in_lane`]'s `LANE`: [`fast::run_sse`].
const SSE: u8 = 4;
/// [`assist_in_lane`]'s `LANE`: [`fast::run_string`].
const STRING: u8 = 5;
/// [`assist_in_lane`]'s `LANE`: [`fast::run_exchange`].
const EXCHANGE: u8 = 6;
/// [`assist_in_lane`]'s `LANE`: [`fast::run_bits`].
const BITS: u8 = 7;
/// [`assist_in_lane`]'s `LANE`: [`fast::run_cond`].
const COND: u8 = 8;
/// [`assist_in_lane`]'s `LANE`: [`fast::run_unary`].
const UNARY: u8 = 9;

/// One lane's attempt (`LANE`, a constant per copy), else (it declined,
/// having done nothing) the full fast path. Out of line: one small copy
/// per lane and address size, so that a lane pays for its own form only.
#[inline(never)]
fn assist_in_lane<const ADDR: u8, const LANE: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
    cache: &mut FetchCache,
    mode: CpuMode,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // A constant in 64-bit mode's copy, as in `assist_sized`.
    let mode = if ADDR == 8 { CpuMode::Long64 } else { mode };
    let (gpa, bytes) = (exit.gpa, exit.instruction);
    let attempt = match LANE {
        MOV => fast::run_mov::<ADDR, S, R, M>(state, mode, ram, mmio, gpa, bytes),
        ALU => fast::run_alu::<ADDR, S, R, M>(state, mode, ram, mmio, gpa, bytes),
        INT => fast::run_int::<ADDR, S, R, M>(state, mode, ram, mmio, gpa, bytes),
        EXCHANGE => fast::run_exchange::<ADDR, S, R, M>(state, mode, ram, mmio, gpa, bytes),
        BITS => fast::run_bits::<ADDR, S, R, M>(state, mode, ram, mmio, gpa, bytes),
        UNARY => fast::run_unary::<ADDR, S, R, M>(state, mode, ram, mmio, gpa, bytes),
        COND => fast::run_cond::<ADDR, S, R, M>(state, mode, ram, mmio, gpa, bytes),
        STACK => fast::run_stack::<ADDR, S, R, M>(state, mode, ram, cache, mmio, bytes),
        SSE => fast::run_sse(state, mode, ram, mmio, gpa, bytes),
        _ => {
            let opcode = bytes.first().copied().unwrap_or(0);
            fast::run_string::<ADDR, S, R, M>(state, mode, ram, cache, mmio, gpa, opcode)
        }
    };
    match attempt {
        Some(result) => result,
        None => assist_sized::<ADDR, S, R, M>(state, ram, mmio, exit, cache, mode),
    }
}

/// The general path on an exit with no bytes (the fast path off, or a
/// rare control state): the fetch, then the general path on the fetched
/// bytes, in one copy per default address size.
#[inline(never)]
fn fetched_general<const ADDR: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    cache: &mut FetchCache,
    mode: CpuMode,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let mut bytes = [0u8; 15];
    let given = fetch::fetch_first::<ADDR, S, R, M>(state, mode, ram, mmio, cache, &mut bytes)?;
    decode_and_execute(state, ram, mmio, cache, mode, &mut bytes, given, exit_gpa)
}

/// [`assist_fetching`]'s work, for the modes whose default address
/// size is `ADDR` (as [`assist_sized`]): inline there, one copy per
/// address size, which calls the same lane and fast-path functions as an
/// exit with bytes. In the 64-bit copy the mode is a constant (the
/// fetch's segmentation check is the canonical test alone).
///
/// It is the one fetch of the fast path: the usual fetch
/// ([`fetch::quick`]) inline, then the copy of [`assist_in_lane`] (or
/// [`assist_sized`]) that an exit carrying the fetched bytes takes. It
/// holds no fast path of its own (an inlined copy of the full fast path
/// here cost every lane a large frame, and the build a copy of the fast
/// path per address size and bus type); every unusual fetch is out of
/// line ([`fetched_rest`]).
#[inline(always)]
fn fetched_sized<const ADDR: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    cache: &mut FetchCache,
    mode: CpuMode,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // 64-bit mode is the only mode with 8-byte default addressing.
    let mode = if ADDR == 8 { CpuMode::Long64 } else { mode };
    // Fetch what lies before the first page or CS-limit edge, which is
    // all of it for most instructions; then exactly what an exit carrying
    // the fetched bytes takes: the lane of the first bytes, else (or when
    // it declines) the full fast path, else the general one, which
    // decodes these bytes and fetches more if the instruction goes on past
    // them (it crosses the page or CS-limit edge that ended the fetch) as
    // the general path on no bytes does. The lanes and the full fast path
    // decline bytes that end early, and the lane choice looks at three
    // bytes at most: fewer (an edge right after them) pick no lane, or a
    // lane that declines. The exit's access type is not looked at past
    // the entry.
    let mut bytes = [0u8; 15];
    // Each unusual fetch calls its own copy of `fetched_rest` (one
    // shared call took the kind as a value, which the usual fetch then
    // set on its way to every test that may fail).
    match fetch::quick::<ADDR, S, R>(state, mode, ram, cache, &mut bytes)? {
        fetch::Quick::Done => {}
        fetch::Quick::Walk(linear) => {
            return fetched_rest::<ADDR, REST_WALK, S, R, M>(
                state, ram, mmio, exit_gpa, cache, mode, linear,
            );
        }
        fetch::Quick::Mmio(gpa) => {
            return fetched_rest::<ADDR, REST_MMIO, S, R, M>(
                state, ram, mmio, exit_gpa, cache, mode, gpa,
            );
        }
        fetch::Quick::General => {
            return fetched_rest::<ADDR, REST_GENERAL, S, R, M>(
                state, ram, mmio, exit_gpa, cache, mode, 0,
            );
        }
    }
    // The usual case, all 15 bytes: the lane choice sees a constant
    // length.
    let lane = fast::lane::<ADDR>(&bytes);
    let exit = MemExit {
        gpa: exit_gpa,
        access: AccessType::Read,
        instruction: &bytes,
    };
    assist_lane_of::<ADDR, S, R, M>(lane, state, ram, mmio, &exit, cache, mode)
}

/// [`fetched_rest`]'s `KIND`: the translation is to be walked
/// ([`fetch::Quick::Walk`], `at` its linear address).
const REST_WALK: u8 = 0;
/// [`fetched_rest`]'s `KIND`: code outside RAM ([`fetch::Quick::Mmio`],
/// `at` its guest-physical address).
const REST_MMIO: u8 = 1;
/// [`fetched_rest`]'s `KIND`: anything else ([`fetch::Quick::General`]):
/// the full fetch.
const REST_GENERAL: u8 = 2;

/// [`fetched_sized`] past an unusual fetch (`KIND` is what
/// [`fetch::quick`] found: a walk, code outside RAM, or an edge within the
/// 15 bytes or a CS check that may fault; `at` its address): the rest of
/// the fetch, then what an exit carrying the fetched bytes takes. Out of
/// line, so that the usual fetch keeps its registers.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn fetched_rest<const ADDR: u8, const KIND: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit_gpa: u64,
    cache: &mut FetchCache,
    mode: CpuMode,
    at: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let mut bytes = [0u8; 15];
    let given = match KIND {
        REST_MMIO => {
            fetch::read_mmio(mmio, at, &mut bytes)?;
            bytes.len()
        }
        REST_WALK => fetch::fetch_walk(state, ram, mmio, cache, at, &mut bytes)?,
        _ => fetch::fetch_general::<ADDR, S, R, M>(state, mode, ram, mmio, cache, &mut bytes)?,
    };
    let instruction = bytes.get(..given).unwrap_or(&bytes);
    let lane = fast::lane::<ADDR>(instruction);
    let exit = MemExit {
        gpa: exit_gpa,
        access: AccessType::Read,
        instruction,
    };
    assist_lane_of::<ADDR, S, R, M>(lane, state, ram, mmio, &exit, cache, mode)
}

/// [`assist_mem_with`] for a control state outside [`CpuMode::common_of`]'s
/// shapes: the full check ([`Error::InconsistentState`]), then the
/// general path.
#[inline(never)]
fn uncommon<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
    cache: &mut FetchCache,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let mode = CpuMode::try_of(state)?;
    general(state, ram, mmio, exit, cache, mode)
}

/// [`assist_mem_with`] with the bytes in the exit, for the modes whose
/// default address size is `ADDR` (8: 64-bit mode; 4: 32-bit protected and
/// compatibility modes; 2: real, virtual-8086, 16-bit protected and
/// compatibility modes): the fast path, else the general one. Out of line
/// and one instantiation per address size, each with its own copy of the
/// fast path, so that the entry stays a small dispatcher and each mode
/// class's code is compiled on its own (a change in one does not move
/// another's).
#[inline(never)]
fn assist_sized<const ADDR: u8, S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
    cache: &mut FetchCache,
    mode: CpuMode,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // 64-bit mode is the only mode with 8-byte default addressing: a
    // constant in that copy, as the fast path's checks depend on it.
    let mode = if ADDR == 8 { CpuMode::Long64 } else { mode };
    fast::run_mode::<ADDR, S, R, M>(
        state,
        mode,
        ram,
        cache,
        mmio,
        exit.gpa,
        exit.instruction,
        |state, ram, mmio, cache| general(state, ram, mmio, exit, cache, mode),
    )
}

/// [`assist_mem_with`] past the fast path with the exit's bytes (or with
/// the fast path off, or for an uncommon control state): the general
/// decoder and executor, and, when the exit carries no bytes (the fast
/// path off, or a rare control state), the fetch. Out of line, so that
/// the entries and the fast path stay small and their code does not move
/// with this path's.
#[inline(never)]
fn general<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    exit: &MemExit<'_>,
    cache: &mut FetchCache,
    mode: CpuMode,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // With the bytes in the exit, decode them where they are (no copy) and
    // execute the instruction where `decode` wrote it: nearly every exit
    // that carries bytes carries the whole instruction. Otherwise (more
    // bytes needed, a decode error, no bytes) take the path below, which
    // decodes again, fetches and maps the error.
    if !exit.instruction.is_empty() {
        let given = exit.instruction.get(..15).unwrap_or(exit.instruction);
        if let Ok(insn) = &decode(given, mode) {
            return execute(state, ram, mmio, cache, mode, insn, given, exit.gpa);
        }
    }
    if exit.instruction.is_empty() {
        // No bytes in the exit (VMX), and the fast path off or a rare
        // control state (`assist_fetching` takes the others).
        return match mode.default_address_size() {
            8 => fetched_general::<8, S, R, M>(state, ram, mmio, exit.gpa, cache, mode),
            4 => fetched_general::<4, S, R, M>(state, ram, mmio, exit.gpa, cache, mode),
            _ => fetched_general::<2, S, R, M>(state, ram, mmio, exit.gpa, cache, mode),
        };
    }
    let mut bytes = [0u8; 15];
    let given = exit.instruction.len().min(15);
    if let (Some(dst), Some(src)) = (bytes.get_mut(..given), exit.instruction.get(..given)) {
        dst.copy_from_slice(src);
    }
    decode_and_execute(state, ram, mmio, cache, mode, &mut bytes, given, exit.gpa)
}

/// The general path on the first `given` bytes of the instruction, in
/// `bytes`: decodes them (fetching more if they end early) and executes
/// the instruction.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn decode_and_execute<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    cache: &mut FetchCache,
    mode: CpuMode,
    bytes: &mut [u8; 15],
    given: usize,
    exit_gpa: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    // The bytes at hand (fetched ones, on this path) are nearly always the
    // whole instruction: decode them and use the instruction where
    // `decode` wrote it. Moving a freshly written `Instruction` into
    // another `Result` is a copy whose wide loads stall on the decoder's
    // narrow stores. Anything else goes through `fetch_and_decode`.
    let first = decode(bytes.get(..given).unwrap_or(&[]), mode);
    let fetched;
    let insn = match &first {
        Ok(insn) => insn,
        Err(_) => {
            fetched = fetch_and_decode(state, mode, ram, mmio, cache, bytes, given)?;
            &fetched
        }
    };
    execute(state, ram, mmio, cache, mode, insn, &bytes[..], exit_gpa)
}

/// Runs the decoded `insn` (whose bytes start `bytes`) on the general
/// executor and commits its registers if it succeeded.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn execute<S, R, M>(
    state: &mut S,
    ram: &mut R,
    mmio: &mut M,
    cache: &mut FetchCache,
    mode: CpuMode,
    insn: &Instruction,
    bytes: &[u8],
    exit_gpa: u64,
) -> Result<Outcome, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let mut pending = Pending::new(state, mode, insn.len);
    let outcome = Exec::new(
        state,
        ram,
        mmio,
        mode,
        insn,
        bytes,
        exit_gpa,
        &mut pending,
        cache,
    )
    .run()?;
    pending.apply(state, outcome);
    Ok(outcome)
}

/// Maps a decode failure of complete bytes to what the CPU would do.
fn decode_error(e: DecodeError, bytes: &[u8; 15], len: usize) -> Error {
    match e {
        DecodeError::Invalid => Exception::InvalidOpcode.into(),
        DecodeError::TooLong => Exception::GeneralProtection(0).into(),
        DecodeError::Unsupported => Error::Unsupported {
            bytes: *bytes,
            len: len.min(15) as u8,
        },
        DecodeError::Truncated => Exception::GeneralProtection(0).into(),
    }
}

/// Decodes the bytes the exit gave; while the decoder needs more, fetches
/// up to the next page end, CS limit or the 15-byte maximum, whichever
/// comes first, so that an edge the instruction does not cross never
/// faults.
fn fetch_and_decode<S, R, M>(
    state: &S,
    mode: CpuMode,
    ram: &mut R,
    mmio: &mut M,
    cache: &mut FetchCache,
    bytes: &mut [u8; 15],
    given: usize,
) -> Result<Instruction, Error>
where
    S: CpuState + ?Sized,
    R: GuestRam + ?Sized,
    M: MmioBus + ?Sized,
{
    let mut have = given;
    if have > 0 {
        match decode(bytes.get(..have).unwrap_or(&[]), mode) {
            Ok(i) => return Ok(i),
            Err(DecodeError::Truncated) if have < 15 => {}
            Err(e) => return Err(decode_error(e, bytes, have)),
        }
    }
    loop {
        let want = next_fetch(state, mode, have);
        access::fetch(state, mode, ram, mmio, cache, bytes, have, want)?;
        have = want;
        match decode(bytes.get(..have).unwrap_or(&[]), mode) {
            Ok(i) => return Ok(i),
            Err(DecodeError::Truncated) if have < 15 => {}
            Err(e) => return Err(decode_error(e, bytes, have)),
        }
    }
}

/// How many instruction bytes to have after the next fetch, given `have`:
/// up to the first page end, CS-limit end or 15-byte mark beyond `have`.
fn next_fetch<S: CpuState + ?Sized>(state: &S, mode: CpuMode, have: usize) -> usize {
    let rip = state.rip();
    let (linear_rip, limit_room) = if mode.is_64bit() {
        (rip, u64::MAX)
    } else {
        let cs = state.segment(Segment::Cs);
        let room = (u64::from(cs.limit) + 1).saturating_sub(rip & 0xFFFF_FFFF);
        (cs.base.wrapping_add(rip & 0xFFFF_FFFF), room)
    };
    let page_room = PAGE_SIZE - (linear_rip & (PAGE_SIZE - 1));
    [page_room, limit_room, 15]
        .into_iter()
        .filter(|&b| b > have as u64)
        .min()
        .unwrap_or(15)
        .min(15) as usize
}
