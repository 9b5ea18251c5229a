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
    #[inline]
    pub const fn from_index(n: u8) -> Gpr {
        // A match (not a table lookup): it compiles to `n & 15`.
        match n & 15 {
            0 => Gpr::Rax,
            1 => Gpr::Rcx,
            2 => Gpr::Rdx,
            3 => Gpr::Rbx,
            4 => Gpr::Rsp,
            5 => Gpr::Rbp,
            6 => Gpr::Rsi,
            7 => Gpr::Rdi,
            8 => Gpr::R8,
            9 => Gpr::R9,
            10 => Gpr::R10,
            11 => Gpr::R11,
            12 => Gpr::R12,
            13 => Gpr::R13,
            14 => Gpr::R14,
            _ => Gpr::R15,
        }
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
///
/// Build them with the named constructors and adjust with the `with_*`
/// methods (all `const`):
///
/// ```
/// use nvmm_assist::SegmentAttributes;
/// // A 64-bit ring-3 code segment, and a read-only expand-down data segment.
/// let user_code = SegmentAttributes::code64().with_dpl(3);
/// assert!(user_code.l() && !user_code.db() && user_code.dpl() == 3);
/// let stack = SegmentAttributes::data32().with_type(SegmentAttributes::TYPE_DATA_EXPAND_DOWN);
/// assert_eq!(stack.typ(), 0b0111);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentAttributes(pub u16);

impl SegmentAttributes {
    /// Code type: execute/read, accessed (`0xB`).
    pub const TYPE_CODE: u8 = 0xB;
    /// Code type: execute-only, accessed (`0x9`).
    pub const TYPE_CODE_EXECUTE_ONLY: u8 = 0x9;
    /// Code type: conforming, execute/read, accessed (`0xF`).
    pub const TYPE_CODE_CONFORMING: u8 = 0xF;
    /// Data type: read/write, accessed (`0x3`).
    pub const TYPE_DATA: u8 = 0x3;
    /// Data type: read-only, accessed (`0x1`).
    pub const TYPE_DATA_READ_ONLY: u8 = 0x1;
    /// Data type: expand-down, read/write, accessed (`0x7`).
    pub const TYPE_DATA_EXPAND_DOWN: u8 = 0x7;
    /// System type: LDT (`0x2`).
    pub const TYPE_LDT: u8 = 0x2;
    /// System type: busy 64-bit (or 32-bit) TSS (`0xB`).
    pub const TYPE_TSS_BUSY: u8 = 0xB;

    /// Unusable: all zero (not present), as a null selector leaves DS, ES,
    /// FS or GS in protected mode.
    pub const fn unusable() -> Self {
        SegmentAttributes(0)
    }
    /// A present 64-bit code segment (L = 1, D = 0, G = 1), execute/read,
    /// DPL 0.
    pub const fn code64() -> Self {
        Self::new(Self::TYPE_CODE, true, 0, true, false, true, false, true)
    }
    /// A present 32-bit code segment (D = 1, G = 1), execute/read, DPL 0.
    pub const fn code32() -> Self {
        Self::new(Self::TYPE_CODE, true, 0, true, false, false, true, true)
    }
    /// A present 16-bit code segment (D = 0, G = 0), execute/read, DPL 0:
    /// also what real mode's CS holds.
    pub const fn code16() -> Self {
        Self::new(Self::TYPE_CODE, true, 0, true, false, false, false, false)
    }
    /// A present 32-bit data segment (B = 1, G = 1), read/write, DPL 0
    /// (what 64-bit mode's DS, ES and SS usually hold too).
    pub const fn data32() -> Self {
        Self::new(Self::TYPE_DATA, true, 0, true, false, false, true, true)
    }
    /// A present 16-bit data segment (B = 0, G = 0), read/write, DPL 0:
    /// also what real mode's data segments hold.
    pub const fn data16() -> Self {
        Self::new(Self::TYPE_DATA, true, 0, true, false, false, false, false)
    }
    /// A present system segment (S = 0) of type `typ` (e.g.
    /// [`TYPE_LDT`](Self::TYPE_LDT), [`TYPE_TSS_BUSY`](Self::TYPE_TSS_BUSY)),
    /// DPL 0. The assist refuses memory accesses through one.
    pub const fn system(typ: u8) -> Self {
        Self::new(typ, false, 0, true, false, false, false, false)
    }
    /// The same with the 4-bit type `typ` (for code and data: bit 3 code,
    /// bit 2 conforming/expand-down, bit 1 readable/writable, bit 0
    /// accessed).
    pub const fn with_type(self, typ: u8) -> Self {
        SegmentAttributes((self.0 & !0xF) | (typ as u16 & 0xF))
    }
    /// The same with descriptor privilege level `dpl` (masked to 0-3).
    pub const fn with_dpl(self, dpl: u8) -> Self {
        SegmentAttributes((self.0 & !(3 << 5)) | ((dpl as u16 & 3) << 5))
    }
    /// The same with P (present) set to `present`.
    pub const fn with_present(self, present: bool) -> Self {
        self.with_bit(7, present)
    }
    /// The same with AVL set to `avl`.
    pub const fn with_avl(self, avl: bool) -> Self {
        self.with_bit(8, avl)
    }
    /// The same with L (64-bit code) set to `l`.
    pub const fn with_long(self, l: bool) -> Self {
        self.with_bit(9, l)
    }
    /// The same with D/B (32-bit default size / big) set to `db`.
    pub const fn with_db(self, db: bool) -> Self {
        self.with_bit(10, db)
    }
    /// The same with G (4 KiB granularity) set to `g`.
    pub const fn with_granularity(self, g: bool) -> Self {
        self.with_bit(11, g)
    }
    const fn with_bit(self, bit: u32, value: bool) -> Self {
        SegmentAttributes((self.0 & !(1 << bit)) | ((value as u16) << bit))
    }

    /// Builds attributes from their fields (each masked to its width).
    /// The named constructors ([`code64`](Self::code64), ...) and `with_*`
    /// methods say the same more readably.
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

impl SegmentRegister {
    /// A flat segment: base 0, limit 0xFFFFFFFF (4 GiB), with `selector`
    /// and `attributes`.
    pub const fn flat(selector: u16, attributes: SegmentAttributes) -> Self {
        SegmentRegister {
            selector,
            base: 0,
            limit: 0xFFFF_FFFF,
            attributes,
        }
    }
    /// A real-mode segment as loading `selector` in real mode leaves it:
    /// base `selector * 16`, limit 0xFFFF, 16-bit code (for CS, `code`) or
    /// data attributes.
    pub const fn real_mode(selector: u16, code: bool) -> Self {
        SegmentRegister {
            selector,
            base: (selector as u64) << 4,
            limit: 0xFFFF,
            attributes: if code {
                SegmentAttributes::code16()
            } else {
                SegmentAttributes::data16()
            },
        }
    }
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
    /// Sets RFLAGS. For an instruction that sets no flag (a move, XCHG,
    /// CMOVcc/SETcc, PUSH/POP, MOVS/STOS/LODS, an SSE move) the memory
    /// assist calls this only to clear RF; an instruction that sets flags
    /// may call it with the value unchanged.
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
    ///
    /// The `u128` is the register's little-endian memory image:
    /// `value.to_le_bytes()` are the 16 bytes MOVDQU would store, byte 0
    /// first, so bits 63:0 are the low quadword (what MOVQ stores) and bits
    /// 127:64 the high one. An FXSAVE/XSAVE area (NVMM's `nvmm_x64_state_fpu`
    /// `fx_xmm`) holds each register in that order:
    /// `u128::from_le_bytes(area[i])` reads it.
    ///
    /// ```
    /// // XMM0 after `movq xmm0, rax` with RAX = 0x1122334455667788:
    /// let xmm0: u128 = 0x1122_3344_5566_7788;
    /// let image = xmm0.to_le_bytes(); // what `movdqu [mem], xmm0` stores
    /// assert_eq!(image[0], 0x88);
    /// assert_eq!(&image[8..], &[0; 8]);
    /// ```
    fn xmm(&self, index: u8) -> Option<u128>;
    /// Sets XMM register `index` (0-15) to `value`, the little-endian memory
    /// image described at [`CpuState::xmm`]. Only called when
    /// [`CpuState::xmm`] returned `Some` for it.
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

    /// The state after RESET (Intel SDM vol. 3A §10.1.1, table 10-1; AMD
    /// APM vol. 2 §14.1.3): real mode, CS selector 0xF000 with base
    /// 0xFFFF0000, RIP 0xFFF0 (the first fetch is at 0xFFFFFFF0), other
    /// segments at selector 0, every limit 0xFFFF, CR0 0x60000010, RFLAGS
    /// 0x2, every GPR 0 (on hardware EDX holds the processor signature; set
    /// it if the guest reads it), no SSE registers.
    ///
    /// ```
    /// use nvmm_assist::{CpuMode, Registers, Vendor};
    /// let r = Registers::real_mode_reset(Vendor::Amd);
    /// assert_eq!(CpuMode::of(&r), CpuMode::Real);
    /// assert_eq!(r.segments[1].base + r.rip, 0xFFFF_FFF0);
    /// ```
    pub const fn real_mode_reset(vendor: Vendor) -> Registers {
        let mut r = Registers::real_mode(vendor);
        r.segments[Segment::Cs as usize] = SegmentRegister {
            selector: 0xF000,
            base: 0xFFFF_0000,
            limit: 0xFFFF,
            attributes: SegmentAttributes::code16(),
        };
        r.rip = 0xFFF0;
        r.cr0 = CR0_CD | CR0_NW | CR0_ET;
        r
    }

    /// Real mode with every segment at selector 0 (base 0, limit 0xFFFF),
    /// RIP 0, CR0 = ET, RFLAGS 0x2, no SSE registers: what a guest that
    /// far-jumped to `0:0` sees, and a base to set RIP and selectors on.
    pub const fn real_mode(vendor: Vendor) -> Registers {
        let mut r = Registers::zeroed(vendor);
        r.rflags = RFLAGS_FIXED;
        r.cr0 = CR0_ET;
        let mut i = 0;
        while i < 6 {
            r.segments[i] = SegmentRegister::real_mode(0, i == Segment::Cs as usize);
            i += 1;
        }
        r
    }

    /// Flat 32-bit protected mode at CPL 0, paging off: CR0 = PE|ET|NE,
    /// CS selector 0x08 (32-bit code), DS, ES, FS, GS and SS selector 0x10
    /// (32-bit read/write data), all base 0 and limit 4 GiB, RFLAGS 0x2,
    /// RIP 0, no SSE registers. [`Registers::at_cpl`] moves it to another
    /// ring.
    ///
    /// ```
    /// use nvmm_assist::{CpuMode, Registers, Vendor};
    /// let r = Registers::flat_protected32(Vendor::Intel);
    /// assert_eq!(CpuMode::of(&r), CpuMode::Protected32);
    /// ```
    pub const fn flat_protected32(vendor: Vendor) -> Registers {
        let mut r = Registers::zeroed(vendor);
        r.rflags = RFLAGS_FIXED;
        r.cr0 = CR0_PE | CR0_ET | CR0_NE;
        r.segments = flat_segments(SegmentAttributes::code32());
        r
    }

    /// 64-bit mode at CPL 0 with 4-level paging rooted at `cr3`: CR0 =
    /// PE|ET|NE|WP|PG, CR4 = PAE, EFER = LME|LMA|NXE, CS selector 0x08
    /// (64-bit code), the data segments selector 0x10 (flat read/write),
    /// RIP `rip`, RSP `rsp`, RFLAGS 0x2, no SSE registers (set
    /// [`xmm`](Registers::xmm) to offer them). The caller provides the page
    /// tables at `cr3`.
    ///
    /// ```
    /// use nvmm_assist::{CpuMode, Gpr, CpuState, Registers, Vendor};
    /// let r = Registers::long_mode(Vendor::Amd, 0x1000, 0x40_0000, 0x8000).at_cpl(3);
    /// assert_eq!(CpuMode::of(&r), CpuMode::Long64);
    /// assert_eq!((r.cpl(), r.gpr(Gpr::Rsp)), (3, 0x8000));
    /// ```
    pub const fn long_mode(vendor: Vendor, cr3: u64, rip: u64, rsp: u64) -> Registers {
        let mut r = Registers::zeroed(vendor);
        r.rflags = RFLAGS_FIXED;
        r.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        r.cr3 = cr3;
        r.cr4 = CR4_PAE;
        r.efer = EFER_LME | EFER_LMA | EFER_NXE;
        r.segments = flat_segments(SegmentAttributes::code64());
        r.rip = rip;
        r.gprs[Gpr::Rsp as usize] = rsp;
        r
    }

    /// Compatibility mode: the control state of [`Registers::long_mode`]
    /// (paging rooted at `cr3`) with a flat 32-bit code segment (L = 0,
    /// D = 1), as a 32-bit program under a 64-bit kernel runs.
    ///
    /// ```
    /// use nvmm_assist::{CpuMode, Registers, Vendor};
    /// let r = Registers::compat_mode(Vendor::Intel, 0x1000, 0x8048000, 0xbfff0000);
    /// assert_eq!(CpuMode::of(&r), CpuMode::Compat32);
    /// ```
    pub const fn compat_mode(vendor: Vendor, cr3: u64, rip: u64, rsp: u64) -> Registers {
        let mut r = Registers::long_mode(vendor, cr3, rip, rsp);
        r.segments[Segment::Cs as usize].attributes = SegmentAttributes::code32();
        r
    }

    /// The same state at privilege level `cpl` (0-3): every segment's DPL
    /// and selector RPL become `cpl` (so CS and SS give the CPL, and the
    /// data segments stay accessible). Real-mode states are unchanged in
    /// effect (CPL is 0 there whatever the DPLs).
    pub const fn at_cpl(mut self, cpl: u8) -> Registers {
        let cpl = cpl & 3;
        let mut i = 0;
        while i < 6 {
            let s = &mut self.segments[i];
            s.attributes = s.attributes.with_dpl(cpl);
            s.selector = (s.selector & !3) | cpl as u16;
            i += 1;
        }
        self
    }
}

const RFLAGS_FIXED: u64 = 0x2;
const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// ES, CS, SS, DS, FS, GS of a flat ring-0 state: CS selector 0x08 with
/// `code`, the others selector 0x10, 32-bit read/write data.
const fn flat_segments(code: SegmentAttributes) -> [SegmentRegister; 6] {
    let data = SegmentRegister::flat(0x10, SegmentAttributes::data32());
    let mut segs = [data; 6];
    segs[Segment::Cs as usize] = SegmentRegister::flat(0x08, code);
    segs
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
        // By reference: `self.xmm.map` would copy all 256 bytes first (a
        // `memcpy` call on every SSE move).
        self.xmm.as_ref().map(|x| x[usize::from(index & 15)])
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
