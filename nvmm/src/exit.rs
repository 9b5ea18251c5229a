//! [`Exit`]: why `Vcpu::run` returned, decoded from `struct nvmm_x86_exit`.

use nvmm_sys as sys;

use crate::state::Seg;

/// The kind of guest access behind a memory exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemAccess {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Exec,
}

/// An access to guest-physical memory that is not mapped (MMIO) or not
/// allowed (`NVMM_VCPU_EXIT_MEMORY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryExit<'a> {
    /// The guest-physical address.
    pub gpa: u64,
    /// Read, write or fetch.
    pub access: MemAccess,
    /// The instruction bytes the hardware provided (SVM decode assists; may
    /// be empty, in which case the assist fetches them).
    pub instruction: &'a [u8],
}

/// The direction of a port access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoDirection {
    /// `IN`/`INS`: the guest reads the port.
    In,
    /// `OUT`/`OUTS`: the guest writes the port.
    Out,
}

/// A port I/O instruction (`NVMM_VCPU_EXIT_IO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoExit {
    /// The port.
    pub port: u16,
    /// In or out.
    pub direction: IoDirection,
    /// Operand size in bytes (1, 2 or 4).
    pub operand_size: u8,
    /// Address size in bytes (2, 4 or 8), for string forms.
    pub address_size: u8,
    /// REP prefix.
    pub rep: bool,
    /// String form (INS/OUTS).
    pub string: bool,
    /// The segment override of OUTS, if the hardware reported one.
    pub segment: Option<Seg>,
    /// The RIP of the next instruction.
    pub npc: u64,
}

/// A RDMSR the kernel does not handle (`NVMM_VCPU_EXIT_RDMSR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmsrExit {
    /// ECX: the MSR number.
    pub msr: u32,
    /// The RIP of the next instruction.
    pub npc: u64,
}

/// A WRMSR the kernel does not handle (`NVMM_VCPU_EXIT_WRMSR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrmsrExit {
    /// ECX: the MSR number.
    pub msr: u32,
    /// EDX:EAX: the value.
    pub value: u64,
    /// The RIP of the next instruction.
    pub npc: u64,
}

/// Why [`crate::Vcpu::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit<'a> {
    /// Nothing for userland to do: a host interrupt, a reschedule, or a
    /// signal pending for the VCPU thread (which wins over a requested
    /// stop, and the kernel then clears the stop flag; see
    /// [`crate::StopRequest`]). Check the VMM's own flags, then run again.
    None,
    /// A [`crate::VcpuStopper`] asked for it. The kernel reports it in
    /// place of whatever exit the guest was making (an I/O or memory access
    /// is re-executed by the next run; a HLT is lost, RIP is past it); see
    /// [`crate::Vcpu::run`].
    Stopped,
    /// MMIO: complete it with [`crate::Vcpu::assist_mem`] or by hand.
    Memory(MemoryExit<'a>),
    /// Port I/O: complete it with [`crate::Vcpu::assist_io`] or by hand.
    Io(IoExit),
    /// RDMSR: complete it with [`crate::Vcpu::complete_rdmsr`].
    Rdmsr(RdmsrExit),
    /// WRMSR: complete it with [`crate::Vcpu::complete_wrmsr`].
    Wrmsr(WrmsrExit),
    /// CPUID on a leaf configured to exit: complete it with
    /// [`crate::Vcpu::complete_cpuid`].
    ///
    /// Before this exit reaches userland the kernel has already executed
    /// its own CPUID emulation and written the answer into RAX-RDX
    /// (NetBSD `nvmm_x86_svm.c` `svm_exit_cpuid` / `nvmm_x86_vmx.c`
    /// `vmx_exit_cpuid` run `*_inkernel_exec_cpuid` and
    /// `*_inkernel_handle_cpuid` before testing the leaf's `exit` flag), so
    /// the guest's leaf and subleaf are **no longer in the state**. A VMM
    /// copes by configuring exits for one leaf only (then the leaf is
    /// known), by reading the kernel's answer from RAX-RDX and adjusting it,
    /// or by using [`crate::CpuidConf::Mask`], which needs no exit at all.
    Cpuid {
        /// The RIP of the next instruction.
        npc: u64,
    },
    /// MONITOR (QEMU injects `#UD`).
    Monitor {
        /// The RIP of the next instruction.
        npc: u64,
    },
    /// MWAIT (QEMU injects `#UD`).
    Mwait {
        /// The RIP of the next instruction.
        npc: u64,
    },
    /// HLT; RIP already points past it.
    Halted,
    /// Triple fault.
    Shutdown,
    /// The guest can take an interrupt (after `int_window_exiting`).
    IntReady,
    /// The guest can take an NMI (after `nmi_window_exiting`).
    NmiReady,
    /// The guest changed CR8 (TPR exits configured).
    TprChanged,
    /// The hardware exit could not be handled; `hwcode` is the VMX/SVM code.
    Invalid {
        /// The hardware exit code.
        hwcode: u64,
    },
    /// A reason this crate does not know (a newer kernel).
    Unknown(u64),
}

/// The VCPU state the kernel reports with every exit, without a getstate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExitState {
    /// RFLAGS at exit.
    pub rflags: u64,
    /// CR8 (TPR) at exit.
    pub cr8: u64,
    /// Interrupts blocked by STI or MOV SS.
    pub int_shadow: bool,
    /// Interrupt-window exiting is on.
    pub int_window_exiting: bool,
    /// NMI-window exiting is on.
    pub nmi_window_exiting: bool,
    /// An event is being delivered.
    pub evt_pending: bool,
}

/// Reads a `bool` the kernel wrote as one byte, without assuming 0 or 1.
///
/// # Safety
///
/// `p` points to a `bool` field of a live exit structure (valid for a
/// one-byte read, whatever the byte holds).
unsafe fn flag(p: *const bool) -> bool {
    // SAFETY: forwarded from the caller; any bit pattern is a valid u8.
    unsafe { p.cast::<u8>().read() != 0 }
}

// Always inline (a hint was not taken), so that a caller matching one kind
// (`Vcpu::last_exit` in a VMM's exit loop, `Vcpu::complete_*`) keeps only
// that kind's test and reads: out of line the reason went through a
// binary search and the whole `Exit` was built and returned through memory.
#[inline(always)]
pub(crate) fn decode(e: &sys::nvmm_x86_exit) -> Exit<'_> {
    let u = &raw const e.u;
    // Every union member is plain integers (bools read as bytes), so each
    // read below is defined whatever the kernel wrote; the reason selects
    // which one is meaningful.
    match e.reason {
        sys::NVMM_VCPU_EXIT_NONE => Exit::None,
        sys::NVMM_VCPU_EXIT_STOPPED => Exit::Stopped,
        sys::NVMM_VCPU_EXIT_MEMORY => Exit::Memory(memory_of(e)),
        sys::NVMM_VCPU_EXIT_IO => Exit::Io(io_of(e)),
        sys::NVMM_VCPU_EXIT_RDMSR => {
            // SAFETY: the `rdmsr` member; integers.
            let (msr, npc) = unsafe { ((*u).rdmsr.msr, (*u).rdmsr.npc) };
            Exit::Rdmsr(RdmsrExit { msr, npc })
        }
        sys::NVMM_VCPU_EXIT_WRMSR => {
            // SAFETY: the `wrmsr` member; integers.
            let (msr, value, npc) = unsafe { ((*u).wrmsr.msr, (*u).wrmsr.val, (*u).wrmsr.npc) };
            Exit::Wrmsr(WrmsrExit { msr, value, npc })
        }
        sys::NVMM_VCPU_EXIT_CPUID => Exit::Cpuid { npc: insn_npc(e) },
        sys::NVMM_VCPU_EXIT_MONITOR => Exit::Monitor { npc: insn_npc(e) },
        sys::NVMM_VCPU_EXIT_MWAIT => Exit::Mwait { npc: insn_npc(e) },
        sys::NVMM_VCPU_EXIT_HALTED => Exit::Halted,
        sys::NVMM_VCPU_EXIT_SHUTDOWN => Exit::Shutdown,
        sys::NVMM_VCPU_EXIT_INT_READY => Exit::IntReady,
        sys::NVMM_VCPU_EXIT_NMI_READY => Exit::NmiReady,
        sys::NVMM_VCPU_EXIT_TPR_CHANGED => Exit::TprChanged,
        sys::NVMM_VCPU_EXIT_INVALID => Exit::Invalid {
            // SAFETY: the `inv` member; an integer.
            hwcode: unsafe { e.u.inv.hwcode },
        },
        r => Exit::Unknown(r),
    }
}

/// The memory exit `e` holds, if it is one, as nvmm-assist's `MemExit`:
/// the fields [`memory_of`] reads, converted once (no [`MemoryExit`] in
/// between; the access by one table lookup straight to nvmm-assist's type).
#[cfg(feature = "assist")]
#[inline(always)]
pub(crate) fn assist_mem(e: &sys::nvmm_x86_exit) -> Option<nvmm_assist::MemExit<'_>> {
    if e.reason != sys::NVMM_VCPU_EXIT_MEMORY {
        return None;
    }
    let u = &raw const e.u;
    // SAFETY: as in `memory_of`.
    let (prot, gpa, len) = unsafe { ((*u).mem.prot, (*u).mem.gpa, (*u).mem.inst_len) };
    // SAFETY: as in `memory_of`.
    let bytes = unsafe { &(*u).mem.inst_bytes };
    // `memory_of`'s rules: the access by its table (in nvmm-assist's
    // type), at most the 15 bytes the structure has. The table is indexed
    // by the low byte of `prot`, 256 entries repeating the eight of
    // `memory_of` (only bits 0-2 count), so the index needs no mask.
    const ACCESS: [nvmm_assist::AccessType; 256] = {
        use nvmm_assist::AccessType::{Execute, Read, Write};
        let eight = [Read, Read, Write, Write, Execute, Execute, Write, Write];
        let mut t = [Read; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = eight[i & 7];
            i += 1;
        }
        t
    };
    // The kernel writes at most 15; a longer length (never seen) is cut
    // off out of line, so the common case is one predicted branch instead
    // of a clamp on the way to the assist.
    let instruction = match bytes.get(..usize::from(len)) {
        Some(instruction) => instruction,
        None => all_bytes(bytes),
    };
    Some(nvmm_assist::MemExit {
        gpa,
        access: ACCESS[usize::from(prot as u8)],
        instruction,
    })
}

/// All of `bytes`: [`assist_mem`]'s instruction when the exit's length is
/// more than the structure holds (as [`memory_of`] has it).
#[cfg(feature = "assist")]
#[cold]
#[inline(never)]
fn all_bytes(bytes: &[u8; 15]) -> &[u8] {
    bytes
}

/// The `mem` member of `e`, whatever the reason says.
#[inline]
fn memory_of(e: &sys::nvmm_x86_exit) -> MemoryExit<'_> {
    let u = &raw const e.u;
    // SAFETY: the `mem` member of the live union; integer fields, defined
    // whatever the kernel wrote.
    let (prot, gpa, len) = unsafe { ((*u).mem.prot, (*u).mem.gpa, (*u).mem.inst_len) };
    // SAFETY: as above; a borrow of a byte array inside `e`.
    let bytes = unsafe { &(*u).mem.inst_bytes };
    // Write wins over exec, exec over read (NVMM_PROT_WRITE = 2,
    // NVMM_PROT_EXEC = 4): one table lookup instead of two branches.
    const ACCESS: [MemAccess; 8] = {
        use MemAccess::{Exec, Read, Write};
        [Read, Read, Write, Write, Exec, Exec, Write, Write]
    };
    let access = ACCESS[(prot & 7) as usize];
    let n = usize::from(len).min(bytes.len());
    MemoryExit {
        gpa,
        access,
        instruction: bytes.get(..n).unwrap_or_default(),
    }
}

/// The I/O exit `e` holds, if it is one, as nvmm-assist's `IoExit`: the
/// fields [`io_of`] reads, converted once (no [`IoExit`] in between, the
/// segment by one table lookup).
#[cfg(feature = "assist")]
#[inline(always)]
pub(crate) fn assist_io(e: &sys::nvmm_x86_exit) -> Option<nvmm_assist::IoExit> {
    /// The segment of each `seg` value 0-5, in NVMM's numbering
    /// (`NVMM_X64_SEG_ES`..`NVMM_X64_SEG_GS`, NetBSD `nvmm_x86.h`; asserted
    /// below), which is nvmm-assist's `Segment::from_index` too (the test
    /// `assist_io_exit_is_io_of_converted` compares the two).
    const SEGMENTS: [Option<nvmm_assist::Segment>; 6] = {
        use nvmm_assist::Segment as S;
        [
            Some(S::Es),
            Some(S::Cs),
            Some(S::Ss),
            Some(S::Ds),
            Some(S::Fs),
            Some(S::Gs),
        ]
    };
    const _: () = assert!(
        sys::NVMM_X64_SEG_ES == 0
            && sys::NVMM_X64_SEG_CS == 1
            && sys::NVMM_X64_SEG_SS == 2
            && sys::NVMM_X64_SEG_DS == 3
            && sys::NVMM_X64_SEG_FS == 4
            && sys::NVMM_X64_SEG_GS == 5
    );
    if e.reason != sys::NVMM_VCPU_EXIT_IO {
        return None;
    }
    let f = io_fields(e);
    Some(nvmm_assist::IoExit {
        port: f.port,
        input: f.input,
        operand_size: f.operand_size,
        address_size: f.address_size,
        rep: f.rep,
        string: f.string,
        // Negative (none) or past GS: none, as `io_of` has it.
        segment: SEGMENTS.get(f.seg as u8 as usize).copied().flatten(),
        npc: f.npc,
    })
}

/// The fields of the `io` member, read as the kernel wrote them.
struct IoFields {
    port: u16,
    seg: i8,
    address_size: u8,
    operand_size: u8,
    npc: u64,
    input: bool,
    rep: bool,
    string: bool,
}

/// The `io` member of `e`, whatever the reason says, field by field.
#[inline(always)]
fn io_fields(e: &sys::nvmm_x86_exit) -> IoFields {
    let u = &raw const e.u;
    // SAFETY: a raw projection to the `io` member of the live union.
    let io = unsafe { &raw const (*u).io };
    // SAFETY: integer fields of `io`, defined whatever the kernel wrote.
    let (port, seg, address_size, operand_size, npc) = unsafe {
        (
            (*io).port,
            (*io).seg,
            (*io).address_size,
            (*io).operand_size,
            (*io).npc,
        )
    };
    // SAFETY: bool fields of `io`, read as bytes by `flag`.
    let (input, rep, string) = unsafe {
        (
            flag(&raw const (*io).in_),
            flag(&raw const (*io).rep),
            flag(&raw const (*io).str_),
        )
    };
    IoFields {
        port,
        seg,
        address_size,
        operand_size,
        npc,
        input,
        rep,
        string,
    }
}

/// The `io` member of `e`, whatever the reason says.
#[inline]
fn io_of(e: &sys::nvmm_x86_exit) -> IoExit {
    let f = io_fields(e);
    let segment = u8::try_from(f.seg)
        .ok()
        .and_then(|s| Seg::ALL.get(usize::from(s)).copied())
        .filter(|s| s.index() < 6);
    IoExit {
        port: f.port,
        direction: if f.input {
            IoDirection::In
        } else {
            IoDirection::Out
        },
        operand_size: f.operand_size,
        address_size: f.address_size,
        rep: f.rep,
        string: f.string,
        segment,
        npc: f.npc,
    }
}

fn insn_npc(e: &sys::nvmm_x86_exit) -> u64 {
    // SAFETY: the `insn` member of the union; an integer.
    unsafe { e.u.insn.npc }
}

pub(crate) fn exit_state(e: &sys::nvmm_x86_exit) -> ExitState {
    let es = &raw const e.exitstate;
    // SAFETY: `exitstate` is { u64 rflags; u64 cr8; u64 bitfield }: three
    // aligned u64s inside `e`.
    let (rflags, cr8, bits) = unsafe {
        let w = es.cast::<u64>();
        (w.read(), w.add(1).read(), w.add(2).read())
    };
    ExitState {
        rflags,
        cr8,
        int_shadow: bits & 1 != 0,
        int_window_exiting: bits & 2 != 0,
        nmi_window_exiting: bits & 4 != 0,
        evt_pending: bits & 8 != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift generator: deterministic, no dependency.
    fn next(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// An exit structure of random bytes from `seed` (the reason too).
    fn random_exit(seed: &mut u64) -> sys::nvmm_x86_exit {
        let mut raw = [0u8; size_of::<sys::nvmm_x86_exit>()];
        for chunk in raw.chunks_mut(8) {
            let r = next(seed).to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        // SAFETY: nvmm_x86_exit is plain integers and unions of them,
        // except the bools of the io member, which `decode` reads as
        // bytes; every bit pattern of the rest is valid.
        unsafe { std::mem::transmute(raw) }
    }

    /// Round `i`'s value of a byte field: every byte value on even
    /// rounds, and 0 to `few - 1` (the common ones) on odd rounds.
    #[cfg(feature = "assist")]
    fn every_and_often(i: usize, few: usize) -> u8 {
        if i.is_multiple_of(2) {
            (i / 2) as u8
        } else {
            (i % few) as u8
        }
    }

    /// Round `i`'s reason: `other` every fifth round, else `usual`.
    #[cfg(feature = "assist")]
    fn mostly(i: usize, usual: u64, other: u64) -> u64 {
        if i.is_multiple_of(5) { other } else { usual }
    }

    #[test]
    fn hostile_exit_structures_decode_without_panic() {
        const REASONS: [u64; 17] = [
            sys::NVMM_VCPU_EXIT_NONE,
            sys::NVMM_VCPU_EXIT_STOPPED,
            sys::NVMM_VCPU_EXIT_INVALID,
            sys::NVMM_VCPU_EXIT_MEMORY,
            sys::NVMM_VCPU_EXIT_IO,
            sys::NVMM_VCPU_EXIT_SHUTDOWN,
            sys::NVMM_VCPU_EXIT_INT_READY,
            sys::NVMM_VCPU_EXIT_NMI_READY,
            sys::NVMM_VCPU_EXIT_HALTED,
            sys::NVMM_VCPU_EXIT_TPR_CHANGED,
            sys::NVMM_VCPU_EXIT_RDMSR,
            sys::NVMM_VCPU_EXIT_WRMSR,
            sys::NVMM_VCPU_EXIT_MONITOR,
            sys::NVMM_VCPU_EXIT_MWAIT,
            sys::NVMM_VCPU_EXIT_CPUID,
            3,
            0x2005,
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        // Under miri (which checks every read of the unions) 20 structures
        // per reason suffice; natively, thousands.
        let rounds = if cfg!(miri) {
            20 * REASONS.len()
        } else {
            20_000
        };
        for i in 0..rounds {
            let mut e = random_exit(&mut seed);
            e.reason = REASONS[i % REASONS.len()];
            let exit = decode(&e);
            if let Exit::Memory(m) = exit {
                assert!(m.instruction.len() <= 15);
            }
            if let Exit::Io(io) = exit {
                assert!(io.segment.is_none_or(|s| s.index() < 6));
            }
            let _ = exit_state(&e);
        }
    }

    /// The memory assist's exit is the public decoding converted field by
    /// field (the access to nvmm-assist's type, the same bytes), on random
    /// structures with every `prot` and `inst_len` byte (lengths past the
    /// structure's 15 bytes included), and there is none for the other
    /// reasons.
    #[cfg(feature = "assist")]
    #[test]
    fn assist_mem_exit_is_memory_of_converted() {
        let mut seed = 0x5DEE_CE66_D1CE_4E5Bu64;
        let rounds: usize = if cfg!(miri) { 64 } else { 20_000 };
        let mut memory = 0;
        for i in 0..rounds {
            let mut e = random_exit(&mut seed);
            // Every length byte, and the kernel's 0-15 often; every low
            // `prot` pattern with random high bits.
            let len = every_and_often(i, 17);
            let prot = (next(&mut seed) as i32 & !7) | (i % 8) as i32;
            e.u.mem.inst_len = len;
            e.u.mem.prot = prot;
            e.reason = mostly(i, sys::NVMM_VCPU_EXIT_MEMORY, sys::NVMM_VCPU_EXIT_IO);
            let expected = match decode(&e) {
                Exit::Memory(m) => Some(nvmm_assist::MemExit {
                    gpa: m.gpa,
                    access: match m.access {
                        MemAccess::Read => nvmm_assist::AccessType::Read,
                        MemAccess::Write => nvmm_assist::AccessType::Write,
                        MemAccess::Exec => nvmm_assist::AccessType::Execute,
                    },
                    instruction: m.instruction,
                }),
                _ => None,
            };
            let got = assist_mem(&e);
            assert_eq!(got, expected, "prot {prot:#x} len {len}");
            if let Some(m) = got {
                // The bytes of the structure itself, not a copy.
                let u = &raw const e.u;
                // SAFETY: a raw projection to a field of the live union.
                let bytes = unsafe { &raw const (*u).mem.inst_bytes };
                assert!(std::ptr::eq(m.instruction.as_ptr(), bytes.cast::<u8>()));
                memory += 1;
            }
        }
        assert!(memory > rounds / 2, "{memory}");
    }

    /// The I/O assist's exit is the public decoding converted field by
    /// field (the segment through its index, as nvmm-assist numbers
    /// segments), on random structures and every `seg` byte, and there is
    /// none for the other reasons.
    #[cfg(feature = "assist")]
    #[test]
    fn assist_io_exit_is_io_of_converted() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let rounds = if cfg!(miri) { 64 } else { 20_000 };
        let mut with_segment = 0;
        for i in 0..rounds {
            let mut e = random_exit(&mut seed);
            // Every `seg` value, and a few of them (-1, 0-5) often.
            let seg = every_and_often(i, 7).wrapping_sub(1) as i8;
            e.u.io.seg = seg;
            e.reason = mostly(i, sys::NVMM_VCPU_EXIT_IO, sys::NVMM_VCPU_EXIT_MEMORY);
            let expected = match decode(&e) {
                Exit::Io(io) => Some(nvmm_assist::IoExit {
                    port: io.port,
                    input: io.direction == IoDirection::In,
                    operand_size: io.operand_size,
                    address_size: io.address_size,
                    rep: io.rep,
                    string: io.string,
                    segment: io
                        .segment
                        .and_then(|s| nvmm_assist::Segment::from_index(s.index() as u8)),
                    npc: io.npc,
                }),
                _ => None,
            };
            let got = assist_io(&e);
            assert_eq!(got, expected, "seg {seg}");
            with_segment += usize::from(got.is_some_and(|x| x.segment.is_some()));
        }
        assert!(with_segment > rounds / 10, "{with_segment}");
    }
}
