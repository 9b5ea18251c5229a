//! The memory-assist rows: one case per form and mode, checked once and
//! then timed with the bytes in the exit, with the bytes fetched, and
//! against iced-x86's decode alone.

use std::hint::black_box;

use iced_x86::{Decoder, DecoderOptions};
use nvmm_assist::decode::Mnemonic;
use nvmm_assist::{
    AccessType, CpuMode, FetchCache, MemExit, Outcome, Registers, assist_mem_cached,
};

use crate::devices::{Access, Device, FlatRam, Recorder};
use crate::forms::{Form, Touch};
use crate::modes::ModeSetup;
use crate::timing::{Runner, runner};
use crate::{CODE, MMIO};

/// One form in one mode: the state and RAM (the instruction at CS:RIP =
/// [`CODE`]) an assist starts from.
#[derive(Clone)]
pub struct Case {
    regs: Registers,
    ram: FlatRam,
    bytes: &'static [u8],
    /// The registers (index, value) the form needs set before every call,
    /// padded to two by repeating one: two stores, whatever the form.
    resets: [(usize, u64); 2],
    access: AccessType,
}

impl Case {
    /// The case of `form` in mode `m`, or `None` if the form does not exist
    /// there.
    pub fn new(m: &ModeSetup, form: &Form) -> Option<Case> {
        let bytes = form.encodings.get(m.addressing)?;
        let mut mem = m.mem.clone();
        let code = CODE as usize;
        mem[code..code + bytes.len()].copy_from_slice(bytes);
        let mut regs = m.regs.clone();
        for &(gpr, value) in form.regs {
            regs.gprs[gpr as usize] = value;
        }
        let resets = match *form.regs {
            [] => [(0, regs.gprs[0]); 2],
            [(g, v)] => [(g as usize, v); 2],
            [(g, v), (h, w)] => [(g as usize, v), (h as usize, w)],
            _ => panic!("`{}`: more than two registers to set", form.name),
        };
        let mut case = Case {
            regs,
            ram: FlatRam { mem },
            bytes,
            resets,
            access: match form.touch {
                Touch::Read => AccessType::Read,
                Touch::Write | Touch::ReadWrite => AccessType::Write,
            },
        };
        case.reset();
        Some(case)
    }

    /// The instruction bytes.
    pub fn bytes(&self) -> &'static [u8] {
        self.bytes
    }

    /// RIP at the instruction and the form's registers at their start
    /// values (what the timed loop does before every call).
    #[inline(always)]
    fn reset(&mut self) {
        self.regs.rip = CODE;
        for (i, v) in self.resets {
            self.regs.gprs[i & 15] = v;
        }
    }

    /// The exit: at [`MMIO`], with the bytes or (`fetch`) without them.
    fn exit(&self, fetch: bool) -> MemExit<'static> {
        MemExit {
            gpa: MMIO,
            access: self.access,
            instruction: if fetch { &[] } else { self.bytes },
        }
    }

    /// One assist on a fresh copy of the case, with a recording device:
    /// the registers after it and the device accesses.
    fn run_once(
        &self,
        fetch: bool,
    ) -> (Result<Outcome, nvmm_assist::Error>, Registers, Vec<Access>) {
        let mut regs = self.regs.clone();
        let mut ram = FlatRam {
            mem: self.ram.mem.clone(),
        };
        let mut dev = Recorder::default();
        let r = assist_mem_cached(
            &mut regs,
            &mut ram,
            &mut dev,
            &self.exit(fetch),
            &mut FetchCache::new(),
        );
        (r, regs, dev.log)
    }
}

/// Checks, before any timing, that the case runs the intended instruction
/// to completion: iced-x86 decodes the bytes as exactly one instruction of
/// the form's mnemonic (with a LOCK prefix where the name says so) with an
/// operand at [`MMIO`] given the case's registers; the assist, with the bytes and with them fetched, returns `Done`, advances
/// RIP by the instruction's length and makes exactly the form's device
/// accesses (the memory operand's size, at [`MMIO`]); and both ways end in
/// the same registers. Panics with the reason otherwise. Returns
/// nvmm-assist's own mnemonic of the bytes.
pub fn check(m: &ModeSetup, form: &Form, case: &Case) -> Mnemonic {
    let what = format!("{} `{}` {:02x?}", m.name, form.name, case.bytes);
    let mut d = Decoder::with_ip(m.bitness, case.bytes, CODE, DecoderOptions::NONE);
    let insn = d.decode();
    assert!(!insn.is_invalid(), "{what}: iced-x86 finds no instruction");
    assert_eq!(
        insn.len(),
        case.bytes.len(),
        "{what}: not one whole instruction"
    );
    assert_eq!(insn.mnemonic(), form.mnemonic, "{what}: iced-x86 mnemonic");
    assert_eq!(
        insn.has_lock_prefix(),
        form.name.starts_with("lock "),
        "{what}: LOCK prefix"
    );
    // iced-x86's address of each operand with the case's registers: one
    // of them must be the device (the assist trusts the exit GPA for a
    // single operand within a page, so a misplaced operand would still
    // reach the device and pass the access check below).
    let regs = &case.regs;
    let at_device = (0..insn.op_count()).any(|op| {
        let address = insn.virtual_address(op, 0, |reg, _, _| {
            if reg.is_segment_register() {
                regs.segments.get(reg.number()).map(|s| s.base)
            } else if reg.is_gpr() {
                regs.gprs.get(reg.full_register().number()).copied()
            } else {
                None
            }
        });
        address == Some(MMIO)
    });
    assert!(at_device, "{what}: no operand at the device (iced-x86)");
    let size = insn.memory_size().size();
    let read = Access {
        write: false,
        gpa: MMIO,
        len: size,
    };
    let write = Access {
        write: true,
        ..read
    };
    let expected = match form.touch {
        Touch::Read => vec![read],
        Touch::Write => vec![write],
        Touch::ReadWrite => vec![read, write],
    };
    let mut after = Vec::new();
    for fetch in [false, true] {
        let how = if fetch { "fetched" } else { "with bytes" };
        let (r, regs, log) = case.run_once(fetch);
        assert_eq!(r, Ok(Outcome::Done), "{what} ({how}): result");
        assert_eq!(regs.rip, CODE + insn.len() as u64, "{what} ({how}): RIP");
        assert_eq!(log, expected, "{what} ({how}): device accesses");
        after.push(regs);
    }
    assert_eq!(
        after[0], after[1],
        "{what}: registers with bytes vs fetched"
    );
    match nvmm_assist::decode(case.bytes, CpuMode::of(&case.regs)) {
        Ok(i) => i.mnemonic,
        Err(e) => panic!("{what}: nvmm-assist's decoder: {e:?}"),
    }
}

/// The full memory assist of the case, with the bytes in the exit or
/// (`fetch`) fetched by the assist through the VCPU's [`FetchCache`], as
/// nvmm keeps one per Vcpu (used only when the exit has no bytes).
pub fn assist_runner(mut case: Case, fetch: bool) -> Runner {
    let mut dev = Device::default();
    let exit = case.exit(fetch);
    let mut cache = FetchCache::new();
    runner(move || {
        case.reset();
        let r = assist_mem_cached(
            &mut case.regs,
            &mut case.ram,
            &mut dev,
            black_box(&exit),
            &mut cache,
        );
        assert_eq!(r, Ok(Outcome::Done));
    })
}

/// iced-x86's decode alone of the same bytes: a fresh `Decoder` per
/// instruction, as a VMM does per exit.
pub fn iced_runner(bitness: u32, bytes: &'static [u8]) -> Runner {
    runner(move || {
        let mut d = Decoder::with_ip(bitness, black_box(bytes), CODE, DecoderOptions::NONE);
        let i = d.decode();
        black_box(i);
    })
}
