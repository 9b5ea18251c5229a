//! The guest CPU state the assist reads and writes, as a trait the caller
//! implements (zero-copy over a hypervisor's shared page), plus [`Registers`],
//! a plain implementation for tests and for VMMs that keep state in a struct.

use crate::vendor::Vendor;

/// A general-purpose register, numbered as the x86 encoding (and NVMM's
/// `NVMM_X64_GPR_*` indices) number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Gpr {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Gpr {
    /// All sixteen registers in encoding order.
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// The register with encoding `n & 15`.
    pub const fn from_index(n: u8) -> Gpr {
        Gpr::ALL[(n & 15) as usize]
    }

    /// The encoding (0-15).
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A segment register, numbered as the x86 encoding (and NVMM's
/// `NVMM_X64_SEG_*` indices, and the I/O exit's segment field) number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Segment {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
}

impl Segment {
    /// The segment with encoding `n`, if `n < 6`.
    pub const fn from_index(n: u8) -> Option<Segment> {
        match n {
            0 => Some(Segment::Es),
            1 => Some(Segment::Cs),
            2 => Some(Segment::Ss),
            3 => Some(Segment::Ds),
            4 => Some(Segment::Fs),
            5 => Some(Segment::Gs),
            _ => None,
        }
    }
}

/// Segment attributes packed as NVMM (and AMD's VMCB) pack them, LSB first:
/// `type:4, s:1, dpl:2, p:1, avl:1, l:1, db:1, g:1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentAttributes(pub u16);

impl SegmentAttributes {
    /// Builds attributes from their fields (each masked to its width).
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        typ: u8,
        s: bool,
        dpl: u8,
        p: bool,
        avl: bool,
        l: bool,
        db: bool,
        g: bool,
    ) -> Self {
        SegmentAttributes(
            (typ as u16 & 0xF)
                | (s as u16) << 4
                | (dpl as u16 & 3) << 5
                | (p as u16) << 7
                | (avl as u16) << 8
                | (l as u16) << 9
                | (db as u16) << 10
                | (g as u16) << 11,
        )
    }
    /// The 4-bit type (for code/data: bit 3 code, bit 2 conforming/expand-down,
    /// bit 1 readable/writable, bit 0 accessed).
    pub const fn typ(self) -> u8 {
        (self.0 & 0xF) as u8
    }
    /// S: code or data segment (as opposed to a system segment).
    pub const fn s(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// The descriptor privilege level.
    pub const fn dpl(self) -> u8 {
        ((self.0 >> 5) & 3) as u8
    }
    /// P: present.
    pub const fn present(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// AVL: available to software.
    pub const fn avl(self) -> bool {
        self.0 & (1 << 8) != 0
    }
    /// L: 64-bit code segment.
    pub const fn l(self) -> bool {
        self.0 & (1 << 9) != 0
    }
    /// D/B: default operation size 32 (code) / big (stack, expand-down limit).
    pub const fn db(self) -> bool {
        self.0 & (1 << 10) != 0
    }
    /// G: granularity (informational here: [`SegmentRegister::limit`] is
    /// already in bytes).
    pub const fn g(self) -> bool {
        self.0 & (1 << 11) != 0
    }
}

/// A segment register with its hidden part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentRegister {
    /// The visible selector.
    pub selector: u16,
    /// The base address.
    pub base: u64,
    /// The effective limit in bytes, as the VMCS/VMCB hold it (already scaled
    /// by the granularity bit).
    pub limit: u32,
    /// The attributes.
    pub attributes: SegmentAttributes,
}

/// The guest CPU state the assist uses.
///
/// The assist reads registers first and writes them only once the
/// instruction (or a REP batch) has fully succeeded, so an implementation
/// never sees a partial update on error.
pub trait CpuState {
    /// A general-purpose register, all 64 bits.
    fn gpr(&self, reg: Gpr) -> u64;
    /// Sets a general-purpose register, all 64 bits.
    fn set_gpr(&mut self, reg: Gpr, value: u64);
    /// RIP.
    fn rip(&self) -> u64;
    /// Sets RIP.
    fn set_rip(&mut self, value: u64);
    /// RFLAGS.
    fn rflags(&self) -> u64;
    /// Sets RFLAGS.
    fn set_rflags(&mut self, value: u64);
    /// A segment register with its hidden part.
    fn segment(&self, seg: Segment) -> SegmentRegister;
    /// CR0.
    fn cr0(&self) -> u64;
    /// CR3.
    fn cr3(&self) -> u64;
    /// CR4.
    fn cr4(&self) -> u64;
    /// IA32_EFER.
    fn efer(&self) -> u64;
    /// XMM register `index` (0-15), or `None` if this state does not carry
    /// the SSE registers (SSE instructions are then unsupported).
    fn xmm(&self, index: u8) -> Option<u128>;
    /// Sets XMM register `index` (0-15). Only called when [`CpuState::xmm`]
    /// returned `Some` for it.
    fn set_xmm(&mut self, index: u8, value: u128);
    /// The vendor of the guest's CPU: the assist does what that vendor's
    /// CPUs do where Intel and AMD differ (the rules are listed in
    /// [`crate::vendor`]). A hypervisor passes the host's vendor (CPUID
    /// leaf 0) unless it presents another vendor to the guest.
    fn vendor(&self) -> Vendor;
    /// The current privilege level. The default is SS.DPL in protected mode
    /// (as VMX and SVM keep it), 0 in real mode and 3 in virtual-8086 mode.
    fn cpl(&self) -> u8 {
        if self.cr0() & 1 == 0 {
            0
        } else if self.rflags() & (1 << 17) != 0 {
            3
        } else {
            self.segment(Segment::Ss).attributes.dpl()
        }
    }
    /// The guest's physical-address width (MAXPHYADDR, CPUID
    /// 0x80000008:EAX bits 7:0), which decides the reserved bits of page-table
    /// entries. The default is 52, the architectural maximum: then no
    /// address bit is reserved. Values are clamped to 32..=52.
    fn max_phys_addr(&self) -> u8 {
        52
    }
}

/// A plain-struct [`CpuState`], for tests and for VMMs whose vCPU state is
/// not in a shared page.
///
/// There is no `Default`: the [`vendor`](Registers::vendor) must be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registers {
    /// RAX..R15 in encoding order.
    pub gprs: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS in encoding order.
    pub segments: [SegmentRegister; 6],
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// XMM0-15, or `None` when the state has no SSE registers. Each value
    /// is the register's little-endian memory image (see [`CpuState::xmm`]).
    pub xmm: Option<[u128; 16]>,
    /// The guest CPU's vendor ([`CpuState::vendor`]).
    pub vendor: Vendor,
}

impl Registers {
    /// Every register zero (segments unusable, no SSE registers), for a
    /// guest CPU of `vendor`: the starting point for a state built field by
    /// field.
    pub const fn zeroed(vendor: Vendor) -> Registers {
        const NULL: SegmentRegister = SegmentRegister {
            selector: 0,
            base: 0,
            limit: 0,
            attributes: SegmentAttributes(0),
        };
        Registers {
            gprs: [0; 16],
            rip: 0,
            rflags: 0,
            segments: [NULL; 6],
            cr0: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            xmm: None,
            vendor,
        }
    }
}

impl CpuState for Registers {
    fn gpr(&self, reg: Gpr) -> u64 {
        self.gprs[reg.index()]
    }
    fn set_gpr(&mut self, reg: Gpr, value: u64) {
        self.gprs[reg.index()] = value;
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn set_rip(&mut self, value: u64) {
        self.rip = value;
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn set_rflags(&mut self, value: u64) {
        self.rflags = value;
    }
    fn segment(&self, seg: Segment) -> SegmentRegister {
        self.segments[seg as usize]
    }
    fn cr0(&self) -> u64 {
        self.cr0
    }
    fn cr3(&self) -> u64 {
        self.cr3
    }
    fn cr4(&self) -> u64 {
        self.cr4
    }
    fn efer(&self) -> u64 {
        self.efer
    }
    fn xmm(&self, index: u8) -> Option<u128> {
        self.xmm.map(|x| x[usize::from(index & 15)])
    }
    fn set_xmm(&mut self, index: u8, value: u128) {
        if let Some(x) = self.xmm.as_mut() {
            x[usize::from(index & 15)] = value;
        }
    }
    fn vendor(&self) -> Vendor {
        self.vendor
    }
}
