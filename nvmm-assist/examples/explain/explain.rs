//! The logic of the `explain` example, kept apart from its `main` so that
//! `tests/explain.rs` runs exactly this code (it includes this file).
//!
//! The tool's guest: the registers of the chosen mode (flat segments; in
//! the long and compatibility modes 4-level paging whose tables the tool
//! synthesises, mapping linear to physical address `linear & (2^48 - 1)` with
//! 1 GiB pages, every entry already accessed and dirty), changed by
//! `REG=VALUE` arguments. All guest-physical memory outside those page
//! tables is MMIO, as behind the memory exit a VMM logs; every device read
//! (MMIO or port) returns the bytes of `data=VALUE` (little-endian, default
//! 0). The real `assist_mem`/`assist_io` then run against recording mocks.

use std::cell::RefCell;
use std::fmt::Write as _;

use nvmm_assist::decode::{AccessClass, MemoryOperand, Mnemonic, Operand, Register};
use nvmm_assist::{
    AccessType, BusError, CompareWrite, CpuMode, CpuState, Error, Exception, Gpr, GuestRam,
    Instruction, IoExit, MemExit, MmioBus, Outcome, PortIo, RamStatus, Registers,
    SegmentAttributes, SegmentRegister, assist_io, assist_mem, decode, linear_address, translate,
};

/// The usage text.
pub const USAGE: &str = "usage: explain [--mode real|prot16|prot32|compat16|compat32|long] \
[--vendor intel|amd] HEXBYTES [REG=VALUE...]
  HEXBYTES  the instruction bytes, e.g. 488908 or \"48 89 08\" (at most 15)
  REG       rax..r15, rip, rflags, cr0, cr3, cr4, efer, xmm0..xmm15,
            es|cs|ss|ds|fs|gs (selector; in real mode also base = selector * 16),
            SEG.sel, SEG.base, SEG.limit, SEG.attr (e.g. ds.limit=0xffff),
            gpa (the exit's guest-physical address; default: the first memory
            operand's), data (what every MMIO or port read returns, little-endian)
  VALUE     0x-prefixed hexadecimal or decimal
defaults: --mode long --vendor intel";

/// The guest mode to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Real-address mode.
    Real,
    /// 16-bit protected mode.
    Prot16,
    /// 32-bit protected mode.
    Prot32,
    /// Compatibility mode, 16-bit code.
    Compat16,
    /// Compatibility mode, 32-bit code.
    Compat32,
    /// 64-bit mode.
    Long,
}

/// The CPU vendor of `--vendor` (`intel` or `amd`): the few results that
/// differ between the two follow it (`nvmm_assist::vendor` lists them).
pub use nvmm_assist::Vendor;

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `--mode`.
    pub mode: Mode,
    /// `--vendor`.
    pub vendor: Vendor,
    /// The instruction bytes.
    pub bytes: Vec<u8>,
    /// `REG=VALUE` settings, in order.
    pub settings: Vec<(String, u128)>,
}

/// Parses the arguments after the program name.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Request, String> {
    let mut request = Request {
        mode: Mode::Long,
        vendor: Vendor::Intel,
        bytes: Vec::new(),
        settings: Vec::new(),
    };
    let mut args = args.iter().map(AsRef::as_ref);
    while let Some(arg) = args.next() {
        match arg {
            "--mode" => {
                request.mode = match args.next() {
                    Some("real") => Mode::Real,
                    Some("prot16") => Mode::Prot16,
                    Some("prot32") => Mode::Prot32,
                    Some("compat16") => Mode::Compat16,
                    Some("compat32") => Mode::Compat32,
                    Some("long") => Mode::Long,
                    other => return Err(format!("--mode: unknown mode {other:?}")),
                }
            }
            "--vendor" => {
                request.vendor = match args.next() {
                    Some(name @ ("intel" | "amd")) => name
                        .parse()
                        .map_err(|_| format!("--vendor: unknown vendor {name:?}"))?,
                    other => return Err(format!("--vendor: unknown vendor {other:?}")),
                }
            }
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => match arg.split_once('=') {
                Some((name, value)) => {
                    let value = parse_value(value).ok_or_else(|| format!("bad value in {arg}"))?;
                    request.settings.push((name.to_ascii_lowercase(), value));
                }
                None => parse_hex(arg, &mut request.bytes)?,
            },
        }
    }
    if request.bytes.is_empty() {
        return Err("no instruction bytes".to_owned());
    }
    if request.bytes.len() > 15 {
        return Err(format!(
            "{} instruction bytes: an x86 instruction has at most 15",
            request.bytes.len()
        ));
    }
    Ok(request)
}

fn parse_hex(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b' ' | b':' | b','))
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in {text:?}"));
    }
    for pair in digits.chunks(2) {
        let pair = std::str::from_utf8(pair).map_err(|_| format!("not hex: {text:?}"))?;
        out.push(u8::from_str_radix(pair, 16).map_err(|_| format!("not hex: {text:?}"))?);
    }
    Ok(())
}

fn parse_value(text: &str) -> Option<u128> {
    let text = text.replace('_', "");
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u128::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// GPA of the synthesised PML4 (2^48: above every address the identity map
/// produces); PDPT `i` follows at `+ (i + 1) * 4096`.
const TABLES: u64 = 1 << 48;
const PTE_P: u64 = 1;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;

/// More accesses than this are shortened to the first [`HEAD_LINES`] and
/// the last [`TAIL_LINES`].
const MAX_ACCESS_LINES: usize = 24;
const HEAD_LINES: usize = 16;
const TAIL_LINES: usize = 4;

/// The synthesised page-table entry at `gpa` (8-byte aligned), if `gpa` is
/// in the tables.
fn table_entry(gpa: u64) -> Option<u64> {
    let offset = gpa.checked_sub(TABLES)?;
    let (table, index) = (offset / 4096, (offset % 4096) / 8);
    match table {
        0 => Some((TABLES + (index + 1) * 4096) | PTE_P | PTE_RW | PTE_US | PTE_A),
        1..=512 => {
            let address = ((table - 1) << 39) | (index << 30);
            Some(address | PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D | PTE_PS)
        }
        _ => None,
    }
}

/// One bus access the assist made.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    Ram {
        gpa: u64,
        data: Vec<u8>,
    },
    RamCas {
        gpa: u64,
        len: usize,
    },
    Mmio {
        write: bool,
        gpa: u64,
        data: Vec<u8>,
    },
    Port {
        write: bool,
        port: u16,
        data: Vec<u8>,
    },
}

/// The recording buses: the page tables as RAM, MMIO everywhere else.
struct Buses<'a> {
    log: &'a RefCell<Vec<Access>>,
    data: u128,
}

impl Buses<'_> {
    fn fill(&self, buf: &mut [u8]) {
        let bytes = self.data.to_le_bytes();
        for (dst, src) in buf.iter_mut().zip(bytes.iter().cycle()) {
            *dst = *src;
        }
    }
}

impl GuestRam for Buses<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        let Some(entry) = table_entry(gpa & !7) else {
            return Ok(RamStatus::NotRam);
        };
        let bytes = entry.to_le_bytes();
        let start = (gpa & 7) as usize;
        for (i, dst) in buf.iter_mut().enumerate() {
            *dst = bytes.get(start + i).copied().unwrap_or(0);
        }
        self.log.borrow_mut().push(Access::Ram {
            gpa,
            data: buf.to_vec(),
        });
        Ok(RamStatus::Done)
    }
    fn write(&mut self, _gpa: u64, _data: &[u8]) -> Result<RamStatus, BusError> {
        // The tables are read-only: a write there goes to MMIO, as to a ROM.
        Ok(RamStatus::NotRam)
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        _expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError> {
        if table_entry(gpa & !7).is_none() {
            return Ok(CompareWrite::NotRam);
        }
        // Never expected: every synthesised entry is already accessed/dirty.
        self.log.borrow_mut().push(Access::RamCas {
            gpa,
            len: new.len(),
        });
        Ok(CompareWrite::NotRam)
    }
}

impl MmioBus for Buses<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        self.fill(buf);
        self.log.borrow_mut().push(Access::Mmio {
            write: false,
            gpa,
            data: buf.to_vec(),
        });
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.log.borrow_mut().push(Access::Mmio {
            write: true,
            gpa,
            data: data.to_vec(),
        });
        Ok(())
    }
}

impl PortIo for Buses<'_> {
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        self.fill(buf);
        self.log.borrow_mut().push(Access::Port {
            write: false,
            port,
            data: buf.to_vec(),
        });
        Ok(())
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        self.log.borrow_mut().push(Access::Port {
            write: true,
            port,
            data: data.to_vec(),
        });
        Ok(())
    }
}

/// The registers a mode starts from.
fn initial_registers(mode: Mode, vendor: Vendor) -> Registers {
    let (code_l, code_db, code_limit) = match mode {
        Mode::Real | Mode::Prot16 | Mode::Compat16 => (false, false, 0xFFFF),
        Mode::Prot32 | Mode::Compat32 => (false, true, 0xFFFF_FFFF),
        Mode::Long => (true, false, 0xFFFF_FFFF),
    };
    let data_limit = if mode == Mode::Real {
        0xFFFF
    } else {
        0xFFFF_FFFF
    };
    let big = mode != Mode::Real;
    let code = SegmentRegister {
        selector: if mode == Mode::Real { 0 } else { 0x08 },
        base: 0,
        limit: code_limit,
        attributes: SegmentAttributes::new(0xB, true, 0, true, false, code_l, code_db, big),
    };
    let data = SegmentRegister {
        selector: if mode == Mode::Real { 0 } else { 0x10 },
        base: 0,
        limit: data_limit,
        attributes: SegmentAttributes::new(0x3, true, 0, true, false, false, big, big),
    };
    let mut regs = Registers {
        rflags: 0x2,
        segments: [data, code, data, data, data, data],
        xmm: Some([0; 16]),
        ..Registers::zeroed(vendor)
    };
    match mode {
        Mode::Real => {}
        Mode::Prot16 | Mode::Prot32 => regs.cr0 = 0x11,
        Mode::Compat16 | Mode::Compat32 | Mode::Long => {
            regs.cr0 = 0x8000_0011;
            regs.cr3 = TABLES;
            regs.cr4 = 0x20; // PAE
            regs.efer = 0x500; // LME | LMA
        }
    }
    regs
}

const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const SEGMENT_NAMES: [&str; 6] = ["es", "cs", "ss", "ds", "fs", "gs"];

fn narrow(name: &str, value: u128) -> Result<u64, String> {
    u64::try_from(value).map_err(|_| format!("{name}={value:#x} does not fit in 64 bits"))
}

/// Applies one `REG=VALUE`; `gpa` and `data` go to the returned fields.
fn apply_setting(
    regs: &mut Registers,
    gpa: &mut Option<u64>,
    data: &mut u128,
    name: &str,
    value: u128,
) -> Result<(), String> {
    if let Some(i) = GPR_NAMES.iter().position(|n| *n == name) {
        regs.gprs[i] = narrow(name, value)?;
        return Ok(());
    }
    if let Some(i) = name
        .strip_prefix("xmm")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n < 16)
    {
        if let Some(xmm) = regs.xmm.as_mut() {
            xmm[i] = value;
        }
        return Ok(());
    }
    let (seg, field) = name.split_once('.').unwrap_or((name, "sel"));
    if let Some(i) = SEGMENT_NAMES.iter().position(|n| *n == seg) {
        let value = narrow(name, value)?;
        let reg = &mut regs.segments[i];
        let too_wide = || format!("{name}={value:#x} is too wide");
        match field {
            "sel" => {
                reg.selector = u16::try_from(value).map_err(|_| too_wide())?;
                if regs.cr0 & 1 == 0 {
                    reg.base = value << 4;
                }
            }
            "base" => reg.base = value,
            "limit" => reg.limit = u32::try_from(value).map_err(|_| too_wide())?,
            "attr" => {
                reg.attributes = SegmentAttributes(u16::try_from(value).map_err(|_| too_wide())?)
            }
            _ => return Err(format!("unknown segment field in {name}")),
        }
        return Ok(());
    }
    let value64 = narrow(name, value);
    match name {
        "rip" => regs.rip = value64?,
        "rflags" => regs.rflags = value64?,
        "cr0" => regs.cr0 = value64?,
        "cr3" => regs.cr3 = value64?,
        "cr4" => regs.cr4 = value64?,
        "efer" => regs.efer = value64?,
        "gpa" => *gpa = Some(value64?),
        "data" => *data = value,
        _ => return Err(format!("unknown register {name:?}")),
    }
    Ok(())
}

fn mode_name(mode: CpuMode) -> &'static str {
    match mode {
        CpuMode::Real => "real mode",
        CpuMode::Virtual8086 => "virtual-8086 mode",
        CpuMode::Protected16 => "16-bit protected mode",
        CpuMode::Protected32 => "32-bit protected mode",
        CpuMode::Compat16 => "compatibility mode, 16-bit code",
        CpuMode::Compat32 => "compatibility mode, 32-bit code",
        CpuMode::Long64 => "64-bit mode",
    }
}

fn register_name(gpr: Gpr, size: u8, high_byte: bool) -> String {
    let base = GPR_NAMES[gpr.index()];
    let legacy = gpr.index() < 8;
    match (size, legacy) {
        (8, _) => base.to_owned(),
        (4, true) => format!("e{}", &base[1..]),
        (4, false) => format!("{base}d"),
        (2, true) => base[1..].to_owned(),
        (2, false) => format!("{base}w"),
        (1, true) if high_byte => format!("{}h", &base[1..2]),
        (1, true) if gpr.index() < 4 => format!("{}l", &base[1..2]),
        (1, true) => format!("{}l", &base[1..]),
        _ => format!("{base}b"),
    }
}

fn size_name(size: u8) -> &'static str {
    match size {
        1 => "byte",
        2 => "word",
        4 => "dword",
        8 => "qword",
        16 => "xmmword",
        _ => "?",
    }
}

fn memory_text(m: &MemoryOperand, address_size: u8) -> String {
    let mut parts = Vec::new();
    if m.rip_relative {
        parts.push("rip".to_owned());
    }
    if let Some(b) = m.base {
        parts.push(register_name(b, address_size, false));
    }
    if let Some(i) = m.index {
        parts.push(format!(
            "{}*{}",
            register_name(i, address_size, false),
            m.scale
        ));
    }
    let mut text = parts.join("+");
    if m.disp != 0 || text.is_empty() {
        if text.is_empty() {
            text = format!("{:#x}", m.disp);
        } else if m.disp < 0 {
            let _ = write!(text, "-{:#x}", m.disp.unsigned_abs());
        } else {
            let _ = write!(text, "+{:#x}", m.disp);
        }
    }
    format!(
        "{} ptr {}:[{text}]",
        size_name(m.size),
        SEGMENT_NAMES[m.segment as usize]
    )
}

fn operand_text(op: &Operand, address_size: u8) -> Option<String> {
    Some(match op {
        Operand::None => return None,
        Operand::Reg(Register {
            gpr,
            size,
            high_byte,
        }) => register_name(*gpr, *size, *high_byte),
        Operand::Xmm(n) => format!("xmm{n}"),
        Operand::Mem(m) => memory_text(m, address_size),
        Operand::Imm(v) => format!("{v:#x}"),
    })
}

/// The offset of `m` within its segment, as the CPU computes it.
fn effective_offset(regs: &Registers, insn: &Instruction, m: &MemoryOperand) -> u64 {
    let mut ea = if m.rip_relative {
        regs.rip.wrapping_add(u64::from(insn.len))
    } else {
        0
    };
    if let Some(b) = m.base {
        ea = ea.wrapping_add(regs.gpr(b));
    }
    if let Some(i) = m.index {
        ea = ea.wrapping_add(regs.gpr(i).wrapping_mul(u64::from(m.scale)));
    }
    let mask = match insn.address_size {
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    };
    ea.wrapping_add(m.disp as u64) & mask
}

fn bytes_text(n: usize) -> String {
    if n == 1 {
        "1 byte".to_owned()
    } else {
        format!("{n} bytes")
    }
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The exact words for a refusal.
pub fn refusal(error: &Error) -> String {
    match error {
        Error::Exception(e) => {
            let what = match e {
                Exception::InvalidOpcode => "#UD (invalid opcode)".to_owned(),
                Exception::GeneralProtection(c) => format!("#GP({c:#x}) (general protection)"),
                Exception::StackSegment(c) => format!("#SS({c:#x}) (stack-segment fault)"),
                Exception::SegmentNotPresent(c) => format!("#NP({c:#x}) (segment not present)"),
                Exception::PageFault { address, code } => {
                    format!("#PF (page fault) at linear {address:#x}, error code {code:#x}")
                }
                Exception::AlignmentCheck => "#AC(0) (alignment check)".to_owned(),
            };
            format!("{what}: the VMM injects it")
        }
        Error::Unsupported { bytes, len } => format!(
            "unsupported: a valid instruction the assist does not emulate ({})",
            hex_bytes(bytes.get(..usize::from(*len)).unwrap_or(bytes))
        ),
        Error::InconsistentExit => {
            "inconsistent exit: the exit's GPA or access cannot come from this instruction"
                .to_owned()
        }
        other => other.to_string(),
    }
}

fn access_of(class: AccessClass) -> AccessType {
    match class {
        AccessClass::Write | AccessClass::ReadWrite => AccessType::Write,
        AccessClass::None | AccessClass::Read => AccessType::Read,
    }
}

fn is_io(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::In | Mnemonic::Out | Mnemonic::Ins | Mnemonic::Outs
    )
}

/// The I/O exit the CPU would report for `insn`.
fn io_exit(regs: &Registers, insn: &Instruction) -> IoExit {
    let port = insn
        .operands
        .iter()
        .find_map(|op| match op {
            Operand::Imm(p) => Some(*p as u16),
            _ => None,
        })
        .unwrap_or(regs.gprs[Gpr::Rdx.index()] as u16);
    let string = matches!(insn.mnemonic, Mnemonic::Ins | Mnemonic::Outs);
    IoExit {
        port,
        input: matches!(insn.mnemonic, Mnemonic::In | Mnemonic::Ins),
        operand_size: insn.operand_size,
        address_size: insn.address_size,
        rep: insn.rep.is_some(),
        string,
        segment: if insn.mnemonic == Mnemonic::Outs {
            insn.memory_operand().map(|m| m.segment)
        } else {
            None
        },
        npc: regs.rip.wrapping_add(u64::from(insn.len)),
    }
}

const FLAG_NAMES: [(u32, &str); 12] = [
    (0, "CF"),
    (2, "PF"),
    (4, "AF"),
    (6, "ZF"),
    (7, "SF"),
    (8, "TF"),
    (9, "IF"),
    (10, "DF"),
    (11, "OF"),
    (16, "RF"),
    (17, "VM"),
    (18, "AC"),
];

/// The register and flag changes from `before` to `after`, one per line.
fn changes(before: &Registers, after: &Registers) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, name) in GPR_NAMES.iter().enumerate() {
        if before.gprs[i] != after.gprs[i] {
            lines.push(format!(
                "{name}: {:#x} -> {:#x}",
                before.gprs[i], after.gprs[i]
            ));
        }
    }
    if let (Some(b), Some(a)) = (before.xmm, after.xmm) {
        for i in 0..16 {
            if b[i] != a[i] {
                lines.push(format!("xmm{i}: {:#x} -> {:#x}", b[i], a[i]));
            }
        }
    }
    if before.rip != after.rip {
        lines.push(format!("rip: {:#x} -> {:#x}", before.rip, after.rip));
    }
    if before.rflags != after.rflags {
        let flags: Vec<String> = FLAG_NAMES
            .iter()
            .filter(|(bit, _)| (before.rflags ^ after.rflags) >> bit & 1 != 0)
            .map(|(bit, name)| {
                format!(
                    "{name} {}->{}",
                    before.rflags >> bit & 1,
                    after.rflags >> bit & 1
                )
            })
            .collect();
        lines.push(format!(
            "rflags: {:#x} -> {:#x} ({})",
            before.rflags,
            after.rflags,
            flags.join(", ")
        ));
    }
    lines
}

/// Explains `request`: the lines the tool prints. `Err` is a bad setting.
pub fn explain(request: &Request) -> Result<Vec<String>, String> {
    let mut regs = initial_registers(request.mode, request.vendor);
    let (mut gpa, mut data) = (None, 0u128);
    for (name, value) in &request.settings {
        apply_setting(&mut regs, &mut gpa, &mut data, name, *value)?;
    }
    let mode = CpuMode::of(&regs);
    let vendor = request.vendor;
    let mut out = vec![
        format!("mode: {}", mode_name(mode)),
        format!("vendor: {vendor}"),
        format!("bytes: {}", hex_bytes(&request.bytes)),
    ];
    let log = RefCell::new(Vec::new());
    let mut buses = Buses { log: &log, data };
    let decoded = decode(&request.bytes, mode);
    let mut exit_gpa = gpa;
    match &decoded {
        Err(e) => out.push(format!("decode: {e:?}").to_lowercase()),
        Ok(insn) => {
            let mut line = format!(
                "instruction: {:?}, {} bytes, operand size {}, address size {}",
                insn.mnemonic, insn.len, insn.operand_size, insn.address_size
            )
            .to_lowercase();
            for (set, what) in [
                (insn.lock, "lock"),
                (insn.rep.is_some(), "rep"),
                (insn.condition.is_some(), "condition"),
            ] {
                if set {
                    line.push_str(", ");
                    line.push_str(what);
                }
            }
            if let Some(c) = insn.condition {
                let _ = write!(line, " {}", c.0);
            }
            out.push(line);
            if insn.len as usize != request.bytes.len() {
                out.push(format!(
                    "note: only the first {} bytes are the instruction",
                    insn.len
                ));
            }
            let access = access_of(insn.access);
            for (i, op) in insn.operands.iter().enumerate() {
                let Some(text) = operand_text(op, insn.address_size) else {
                    continue;
                };
                out.push(format!("operand {i}: {text}"));
                if let Operand::Mem(m) = op {
                    let offset = effective_offset(&regs, insn, m);
                    // The translation for the report only: its page-walk
                    // reads are not the assist's, so they are not logged.
                    let scratch = RefCell::new(Vec::new());
                    let mut walker = Buses {
                        log: &scratch,
                        data,
                    };
                    let line = match linear_address(
                        &regs,
                        mode,
                        m.segment,
                        offset,
                        u64::from(m.size),
                        access,
                    )
                    .and_then(|linear| Ok((linear, translate(&regs, &mut walker, linear, access)?)))
                    {
                        Ok((linear, phys)) => {
                            exit_gpa.get_or_insert(phys);
                            format!("  offset {offset:#x} -> linear {linear:#x} -> GPA {phys:#x}")
                        }
                        Err(e) => format!("  offset {offset:#x}: {}", refusal(&e)),
                    };
                    out.push(line);
                }
            }
        }
    }
    let before = regs.clone();
    let result = match &decoded {
        Ok(insn) if is_io(insn.mnemonic) => {
            let exit = io_exit(&regs, insn);
            out.push(format!(
                "exit: I/O, port {:#x}, {}, {}{}",
                exit.port,
                if exit.input { "in" } else { "out" },
                bytes_text(usize::from(exit.operand_size)),
                if exit.string { ", string" } else { "" }
            ));
            let mut ports = Buses { log: &log, data };
            let mut mmio = Buses { log: &log, data };
            assist_io(&mut regs, &mut buses, &mut mmio, &mut ports, &exit)
        }
        _ => {
            let access = decoded
                .as_ref()
                .map_or(AccessType::Read, |i| access_of(i.access));
            let exit = MemExit {
                gpa: exit_gpa.unwrap_or(0),
                access,
                instruction: &request.bytes,
            };
            out.push(format!(
                "exit: memory {}, GPA {:#x}{}",
                if access == AccessType::Write {
                    "write"
                } else {
                    "read"
                },
                exit.gpa,
                if exit_gpa.is_none() {
                    " (no operand address to take it from; set it with gpa=)"
                } else {
                    ""
                }
            ));
            let mut mmio = Buses { log: &log, data };
            assist_mem(&mut regs, &mut buses, &mut mmio, &exit)
        }
    };
    let log = log.borrow();
    for (i, access) in log.iter().enumerate() {
        // A REP batch makes thousands: keep the first and the last ones.
        if log.len() > MAX_ACCESS_LINES && i >= HEAD_LINES && i < log.len() - TAIL_LINES {
            if i == HEAD_LINES {
                out.push(format!(
                    "access: ... {} more ...",
                    log.len() - HEAD_LINES - TAIL_LINES
                ));
            }
            continue;
        }
        out.push(match access {
            Access::Ram { gpa, data } => format!(
                "access: ram read {} at GPA {gpa:#x} (page table): {}",
                bytes_text(data.len()),
                hex_bytes(data)
            ),
            Access::RamCas { gpa, len } => {
                format!(
                    "access: ram compare-and-write {} at GPA {gpa:#x}",
                    bytes_text(*len)
                )
            }
            Access::Mmio { write, gpa, data } => format!(
                "access: mmio {} {} at GPA {gpa:#x}: {}",
                if *write { "write" } else { "read" },
                bytes_text(data.len()),
                hex_bytes(data)
            ),
            Access::Port { write, port, data } => format!(
                "access: port {} {} at {port:#x}: {}",
                if *write { "out" } else { "in" },
                bytes_text(data.len()),
                hex_bytes(data)
            ),
        });
    }
    match result {
        Ok(Outcome::Done) => out.push("result: done".to_owned()),
        Ok(Outcome::Resume) => {
            out.push("result: resume (a bounded batch; the guest re-executes the rest)".to_owned())
        }
        Err(e) => out.push(format!("result: refused: {}", refusal(&e))),
    }
    let changed = changes(&before, &regs);
    if changed.is_empty() {
        out.push("changes: none".to_owned());
    }
    out.extend(changed.into_iter().map(|c| format!("change: {c}")));
    Ok(out)
}
