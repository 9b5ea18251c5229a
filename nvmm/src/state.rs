//! VCPU state by class, read and written in place in the comm page.
//!
//! A view ([`Gprs`], [`Segs`], [`Crs`], [`Drs`], [`Msrs`], [`Intr`],
//! [`Fpu`]) is obtained from [`crate::Vcpu`], which first makes sure the
//! class is cached in the comm page (libnvmm's `nvmm_vcpu_getstate`: no
//! syscall when it is, one `NVMM_IOC_VCPU_GETSTATE` when it is not). A view
//! borrows the VCPU mutably, so no run can make its data stale while it
//! lives. Reading copies only the register asked for; a setter writes the
//! field in place and marks its class in `state_commit` and `state_cached`
//! (libnvmm's `nvmm_vcpu_setstate`: never a syscall; the kernel applies it
//! at the next run).

use std::marker::PhantomData;

use nvmm_sys as sys;

use crate::comm::{CommPage, field};

bitflags::bitflags! {
    /// State classes (`NVMM_X64_STATE_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct StateClasses: u64 {
        /// Segment registers, GDTR, IDTR, LDTR, TR.
        const SEGS = sys::NVMM_X64_STATE_SEGS;
        /// General-purpose registers, RIP, RFLAGS.
        const GPRS = sys::NVMM_X64_STATE_GPRS;
        /// CR0, CR2, CR3, CR4, CR8, XCR0.
        const CRS = sys::NVMM_X64_STATE_CRS;
        /// DR0-DR3, DR6, DR7.
        const DRS = sys::NVMM_X64_STATE_DRS;
        /// The MSR slots.
        const MSRS = sys::NVMM_X64_STATE_MSRS;
        /// Interrupt state (shadow, window exiting, pending event).
        const INTR = sys::NVMM_X64_STATE_INTR;
        /// The x87/SSE area (FXSAVE layout).
        const FPU = sys::NVMM_X64_STATE_FPU;
        /// Every class.
        const ALL = sys::NVMM_X64_STATE_ALL;
    }
}

macro_rules! index_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $c:path),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name { $($(#[$vm])* $v = $c as u8),+ }
        impl $name {
            /// Every value, in index order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The index in the comm-page array.
            pub const fn index(self) -> usize { self as usize }
        }
    };
}

index_enum!(
    /// A general-purpose register (`NVMM_X64_GPR_*`).
    Gpr {
        /// RAX.
        Rax = sys::NVMM_X64_GPR_RAX, /// RCX.
        Rcx = sys::NVMM_X64_GPR_RCX, /// RDX.
        Rdx = sys::NVMM_X64_GPR_RDX, /// RBX.
        Rbx = sys::NVMM_X64_GPR_RBX, /// RSP.
        Rsp = sys::NVMM_X64_GPR_RSP, /// RBP.
        Rbp = sys::NVMM_X64_GPR_RBP, /// RSI.
        Rsi = sys::NVMM_X64_GPR_RSI, /// RDI.
        Rdi = sys::NVMM_X64_GPR_RDI, /// R8.
        R8 = sys::NVMM_X64_GPR_R8, /// R9.
        R9 = sys::NVMM_X64_GPR_R9, /// R10.
        R10 = sys::NVMM_X64_GPR_R10, /// R11.
        R11 = sys::NVMM_X64_GPR_R11, /// R12.
        R12 = sys::NVMM_X64_GPR_R12, /// R13.
        R13 = sys::NVMM_X64_GPR_R13, /// R14.
        R14 = sys::NVMM_X64_GPR_R14, /// R15.
        R15 = sys::NVMM_X64_GPR_R15, /// RIP.
        Rip = sys::NVMM_X64_GPR_RIP, /// RFLAGS.
        Rflags = sys::NVMM_X64_GPR_RFLAGS,
    }
);

index_enum!(
    /// A segment register or descriptor table register (`NVMM_X64_SEG_*`).
    Seg {
        /// ES.
        Es = sys::NVMM_X64_SEG_ES, /// CS.
        Cs = sys::NVMM_X64_SEG_CS, /// SS.
        Ss = sys::NVMM_X64_SEG_SS, /// DS.
        Ds = sys::NVMM_X64_SEG_DS, /// FS.
        Fs = sys::NVMM_X64_SEG_FS, /// GS.
        Gs = sys::NVMM_X64_SEG_GS, /// GDTR (base and limit only).
        Gdt = sys::NVMM_X64_SEG_GDT, /// IDTR (base and limit only).
        Idt = sys::NVMM_X64_SEG_IDT, /// LDTR.
        Ldt = sys::NVMM_X64_SEG_LDT, /// TR.
        Tr = sys::NVMM_X64_SEG_TR,
    }
);

index_enum!(
    /// A control register (`NVMM_X64_CR_*`).
    Cr {
        /// CR0.
        Cr0 = sys::NVMM_X64_CR_CR0, /// CR2.
        Cr2 = sys::NVMM_X64_CR_CR2, /// CR3.
        Cr3 = sys::NVMM_X64_CR_CR3, /// CR4.
        Cr4 = sys::NVMM_X64_CR_CR4, /// CR8 (TPR).
        Cr8 = sys::NVMM_X64_CR_CR8, /// XCR0.
        Xcr0 = sys::NVMM_X64_CR_XCR0,
    }
);

index_enum!(
    /// A debug register (`NVMM_X64_DR_*`).
    Dr {
        /// DR0.
        Dr0 = sys::NVMM_X64_DR_DR0, /// DR1.
        Dr1 = sys::NVMM_X64_DR_DR1, /// DR2.
        Dr2 = sys::NVMM_X64_DR_DR2, /// DR3.
        Dr3 = sys::NVMM_X64_DR_DR3, /// DR6.
        Dr6 = sys::NVMM_X64_DR_DR6, /// DR7.
        Dr7 = sys::NVMM_X64_DR_DR7,
    }
);

index_enum!(
    /// An MSR slot of the state (`NVMM_X64_MSR_*`).
    Msr {
        /// IA32_EFER.
        Efer = sys::NVMM_X64_MSR_EFER, /// STAR.
        Star = sys::NVMM_X64_MSR_STAR, /// LSTAR.
        Lstar = sys::NVMM_X64_MSR_LSTAR, /// CSTAR.
        Cstar = sys::NVMM_X64_MSR_CSTAR, /// SFMASK.
        Sfmask = sys::NVMM_X64_MSR_SFMASK, /// KERNEL_GS_BASE.
        KernelGsBase = sys::NVMM_X64_MSR_KERNELGSBASE, /// SYSENTER_CS.
        SysenterCs = sys::NVMM_X64_MSR_SYSENTER_CS, /// SYSENTER_ESP.
        SysenterEsp = sys::NVMM_X64_MSR_SYSENTER_ESP, /// SYSENTER_EIP.
        SysenterEip = sys::NVMM_X64_MSR_SYSENTER_EIP, /// IA32_PAT.
        Pat = sys::NVMM_X64_MSR_PAT, /// The TSC (sets the guest TSC offset).
        Tsc = sys::NVMM_X64_MSR_TSC,
    }
);

/// Segment attributes as NVMM packs them, LSB first:
/// `type:4, s:1, dpl:2, p:1, avl:1, l:1, def:1, g:1, rsvd:4`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SegAttrib(pub u16);

impl SegAttrib {
    /// Builds attributes from their fields (each masked to its width).
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        typ: u8,
        s: bool,
        dpl: u8,
        p: bool,
        avl: bool,
        l: bool,
        def: bool,
        g: bool,
    ) -> Self {
        SegAttrib(
            (typ as u16 & 0xF)
                | (s as u16) << 4
                | (dpl as u16 & 3) << 5
                | (p as u16) << 7
                | (avl as u16) << 8
                | (l as u16) << 9
                | (def as u16) << 10
                | (g as u16) << 11,
        )
    }
    /// The 4-bit type.
    pub const fn typ(self) -> u8 {
        (self.0 & 0xF) as u8
    }
    /// S: code/data (not system) segment.
    pub const fn s(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// DPL.
    pub const fn dpl(self) -> u8 {
        ((self.0 >> 5) & 3) as u8
    }
    /// P: present.
    pub const fn p(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// AVL.
    pub const fn avl(self) -> bool {
        self.0 & (1 << 8) != 0
    }
    /// L: 64-bit code.
    pub const fn l(self) -> bool {
        self.0 & (1 << 9) != 0
    }
    /// D/B ("def").
    pub const fn def(self) -> bool {
        self.0 & (1 << 10) != 0
    }
    /// G: granularity.
    pub const fn g(self) -> bool {
        self.0 & (1 << 11) != 0
    }
}

impl std::fmt::Debug for SegAttrib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:#06x}(type={} s={} dpl={} p={} avl={} l={} def={} g={})",
            self.0,
            self.typ(),
            u8::from(self.s()),
            self.dpl(),
            u8::from(self.p()),
            u8::from(self.avl()),
            u8::from(self.l()),
            u8::from(self.def()),
            u8::from(self.g())
        )
    }
}

/// One segment register with its hidden part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Attributes.
    pub attrib: SegAttrib,
    /// Limit in bytes (already scaled by G).
    pub limit: u32,
    /// Base.
    pub base: u64,
}

/// The interrupt state class (`struct nvmm_x64_state_intr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IntrState {
    /// Interrupts blocked by STI or MOV SS.
    pub int_shadow: bool,
    /// Exit with `Exit::IntReady` when the guest can take an interrupt.
    pub int_window_exiting: bool,
    /// Exit with `Exit::NmiReady` when the guest can take an NMI.
    pub nmi_window_exiting: bool,
    /// An event is being delivered (read-only in practice).
    pub evt_pending: bool,
}

impl IntrState {
    pub(crate) const fn from_bits(b: u64) -> Self {
        IntrState {
            int_shadow: b & 1 != 0,
            int_window_exiting: b & 2 != 0,
            nmi_window_exiting: b & 4 != 0,
            evt_pending: b & 8 != 0,
        }
    }
    pub(crate) const fn bits(self) -> u64 {
        self.int_shadow as u64
            | (self.int_window_exiting as u64) << 1
            | (self.nmi_window_exiting as u64) << 2
            | (self.evt_pending as u64) << 3
    }
}

macro_rules! view {
    ($(#[$m:meta])* $name:ident, $class:ident) => {
        $(#[$m])*
        pub struct $name<'a> {
            pub(crate) page: CommPage<'a>,
            pub(crate) _vcpu: PhantomData<&'a mut crate::Vcpu>,
        }
        impl<'a> $name<'a> {
            /// The class this view reads and writes.
            pub const CLASS: StateClasses = StateClasses::$class;
            pub(crate) fn new(page: CommPage<'a>) -> Self {
                $name { page, _vcpu: PhantomData }
            }
            #[inline]
            fn dirty(&mut self) {
                self.page.mark_dirty(StateClasses::$class);
            }
        }
    };
}

view!(
    /// GPRs, RIP and RFLAGS (class GPRS).
    Gprs, GPRS
);
view!(
    /// Segment and descriptor-table registers (class SEGS).
    Segs, SEGS
);
view!(
    /// Control registers and XCR0 (class CRS).
    Crs, CRS
);
view!(
    /// Debug registers (class DRS).
    Drs, DRS
);
view!(
    /// MSR slots (class MSRS).
    Msrs, MSRS
);
view!(
    /// Interrupt state (class INTR).
    Intr, INTR
);
view!(
    /// The x87/SSE area in FXSAVE layout (class FPU).
    Fpu, FPU
);

impl Gprs<'_> {
    /// Reads a register.
    #[inline]
    pub fn get(&self, r: Gpr) -> u64 {
        let st = self.page.state_ptr();
        // SAFETY: an element of `gprs` in the live page.
        unsafe { self.page.read(field!(st, gprs[r.index()])) }
    }
    /// Writes a register and marks GPRS for commit.
    #[inline]
    pub fn set(&mut self, r: Gpr, v: u64) {
        let st = self.page.state_ptr();
        // SAFETY: an element of `gprs` in the live page.
        unsafe { self.page.write(field!(st, gprs[r.index()]), v) };
        self.dirty();
    }
    /// RIP.
    #[inline]
    pub fn rip(&self) -> u64 {
        self.get(Gpr::Rip)
    }
    /// Sets RIP.
    #[inline]
    pub fn set_rip(&mut self, v: u64) {
        self.set(Gpr::Rip, v);
    }
    /// RFLAGS.
    #[inline]
    pub fn rflags(&self) -> u64 {
        self.get(Gpr::Rflags)
    }
    /// Sets RFLAGS.
    #[inline]
    pub fn set_rflags(&mut self, v: u64) {
        self.set(Gpr::Rflags, v);
    }
}

impl Segs<'_> {
    /// Reads a segment register.
    #[inline]
    pub fn get(&self, s: Seg) -> Segment {
        let st = self.page.state_ptr();
        let i = s.index();
        // SAFETY: fields of `segs[i]` in the live page; the attribute
        // bitfield struct is exactly one u16.
        unsafe {
            Segment {
                selector: self.page.read(field!(st, segs[i].selector)),
                attrib: SegAttrib(self.page.read(field!(st, segs[i].attrib).cast::<u16>())),
                limit: self.page.read(field!(st, segs[i].limit)),
                base: self.page.read(field!(st, segs[i].base)),
            }
        }
    }
    /// Writes a segment register and marks SEGS for commit.
    pub fn set(&mut self, s: Seg, v: Segment) {
        let st = self.page.state_ptr();
        let i = s.index();
        // SAFETY: as in `get`.
        unsafe {
            self.page.write(field!(st, segs[i].selector), v.selector);
            self.page
                .write(field!(st, segs[i].attrib).cast::<u16>(), v.attrib.0);
            self.page.write(field!(st, segs[i].limit), v.limit);
            self.page.write(field!(st, segs[i].base), v.base);
        }
        self.dirty();
    }
}

macro_rules! u64_array_view {
    ($view:ident, $field:ident, $idx:ident, $class:literal) => {
        impl $view<'_> {
            /// Reads a register.
            #[inline]
            pub fn get(&self, r: $idx) -> u64 {
                let st = self.page.state_ptr();
                // SAFETY: an element of the array in the live page.
                unsafe { self.page.read(field!(st, $field[r.index()])) }
            }
            #[doc = concat!("Writes a register and marks ", $class, " for commit.")]
            #[inline]
            pub fn set(&mut self, r: $idx, v: u64) {
                let st = self.page.state_ptr();
                // SAFETY: an element of the array in the live page.
                unsafe { self.page.write(field!(st, $field[r.index()]), v) };
                self.dirty();
            }
        }
    };
}
u64_array_view!(Crs, crs, Cr, "CRS");
u64_array_view!(Drs, drs, Dr, "DRS");
u64_array_view!(Msrs, msrs, Msr, "MSRS");

impl Intr<'_> {
    /// Reads the interrupt state.
    pub fn get(&self) -> IntrState {
        let st = self.page.state_ptr();
        // SAFETY: the intr bitfield struct is exactly one u64 of the page.
        IntrState::from_bits(unsafe { self.page.read(field!(st, intr).cast::<u64>()) })
    }
    /// Writes the interrupt state and marks INTR for commit.
    pub fn set(&mut self, v: IntrState) {
        let st = self.page.state_ptr();
        // SAFETY: as in `get`.
        unsafe { self.page.write(field!(st, intr).cast::<u64>(), v.bits()) };
        self.dirty();
    }
}

/// The `fx_mxcsr_mask` the crate writes when the comm page has 0 there
/// (every MXCSR bit but DAZ; QEMU's NVMM accelerator uses the same value).
/// The kernel ANDs it with the host's mask on commit.
pub const DEFAULT_MXCSR_MASK: u32 = 0xFFBF;

/// Byte offsets inside the 512-byte FXSAVE area (Intel SDM table 10-2).
mod fx {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const MXCSR: usize = 24;
    pub const MXCSR_MASK: usize = 28;
    pub const ST0: usize = 32;
    pub const XMM0: usize = 160;
}

impl Fpu<'_> {
    fn base(&self) -> *mut u8 {
        let st = self.page.state_ptr();
        field!(st, fpu).cast::<u8>()
    }
    /// Whether `off..off+len` lies inside the FXSAVE area. Every caller
    /// passes a constant offset or a masked index, so this always holds;
    /// it is checked anyway so that no future caller can reach past it.
    fn in_area(off: usize, len: usize) -> bool {
        off.checked_add(len)
            .is_some_and(|end| end <= size_of::<sys::fxsave>())
    }
    fn read_at<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if !Self::in_area(off, N) {
            return out;
        }
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `off + i < off + N <= 512` (checked above): inside
            // the FXSAVE area of the live page.
            *b = unsafe { self.base().add(off + i).read() };
        }
        out
    }
    fn write_at(&mut self, off: usize, bytes: &[u8]) {
        if !Self::in_area(off, bytes.len()) {
            return;
        }
        // The kernel commits MXCSR as `fx_mxcsr & (fx_mxcsr_mask & host
        // mask)` (NetBSD nvmm_x86_svm.c svm_vcpu_setstate, nvmm_x86_vmx.c
        // vmx_vcpu_setstate), and its reset state has a zero mask
        // (nvmm_x86.c nvmm_x86_reset_state): any FPU commit with mask 0
        // would silently set MXCSR to 0. Give it a valid mask first, as
        // QEMU does.
        if self.mxcsr_mask() == 0 {
            for (i, b) in DEFAULT_MXCSR_MASK.to_le_bytes().iter().enumerate() {
                // SAFETY: as in `read_at` (offset 28..32).
                unsafe { self.base().add(fx::MXCSR_MASK + i).write(*b) };
            }
        }
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: as in `read_at`.
            unsafe { self.base().add(off + i).write(*b) };
        }
        self.dirty();
    }
    /// The x87 control word.
    pub fn fcw(&self) -> u16 {
        u16::from_le_bytes(self.read_at(fx::FCW))
    }
    /// Sets the x87 control word.
    pub fn set_fcw(&mut self, v: u16) {
        self.write_at(fx::FCW, &v.to_le_bytes());
    }
    /// The x87 status word.
    pub fn fsw(&self) -> u16 {
        u16::from_le_bytes(self.read_at(fx::FSW))
    }
    /// Sets the x87 status word.
    pub fn set_fsw(&mut self, v: u16) {
        self.write_at(fx::FSW, &v.to_le_bytes());
    }
    /// The abridged x87 tag word.
    pub fn ftw(&self) -> u8 {
        self.read_at::<1>(fx::FTW)[0]
    }
    /// Sets the abridged x87 tag word.
    pub fn set_ftw(&mut self, v: u8) {
        self.write_at(fx::FTW, &[v]);
    }
    /// The last x87 opcode.
    pub fn fop(&self) -> u16 {
        u16::from_le_bytes(self.read_at(fx::FOP))
    }
    /// MXCSR as the comm page holds it.
    ///
    /// On a fresh VCPU this reads 0x1F80, but the kernel committed its
    /// reset state with `fx_mxcsr_mask = 0`, so the guest's real MXCSR is 0
    /// (every SSE exception unmasked) until the FPU class is committed
    /// again: write any FPU register (e.g. `set_mxcsr(0x1F80)`) before the
    /// first run if the guest may use SSE before setting MXCSR itself.
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes(self.read_at(fx::MXCSR))
    }
    /// Sets MXCSR. The kernel commits `value & fx_mxcsr_mask & host mask`
    /// ([`crate::Capability::mxcsr_mask`]); every FPU write of this view
    /// first replaces a zero `fx_mxcsr_mask` with [`DEFAULT_MXCSR_MASK`],
    /// so the value set here is what the guest gets, except bits the host
    /// does not support (DAZ, bit 6, on old CPUs), which the kernel drops.
    pub fn set_mxcsr(&mut self, v: u32) {
        self.write_at(fx::MXCSR, &v.to_le_bytes());
    }
    /// `fx_mxcsr_mask`: the MXCSR bits the committed FPU state may hold
    /// (ANDed with the host's mask by the kernel on commit).
    pub fn mxcsr_mask(&self) -> u32 {
        u32::from_le_bytes(self.read_at(fx::MXCSR_MASK))
    }
    /// Sets `fx_mxcsr_mask`. A mask of 0 makes the kernel commit MXCSR as
    /// 0 (the next FPU write of this view restores [`DEFAULT_MXCSR_MASK`]).
    pub fn set_mxcsr_mask(&mut self, v: u32) {
        self.write_at(fx::MXCSR_MASK, &v.to_le_bytes());
    }
    /// x87 register ST(`i & 7`) as 10 bytes (64-bit mantissa, then sign and
    /// exponent), little-endian.
    pub fn st(&self, i: u8) -> [u8; 10] {
        self.read_at(fx::ST0 + usize::from(i & 7) * 16)
    }
    /// Sets x87 register ST(`i & 7`).
    pub fn set_st(&mut self, i: u8, v: [u8; 10]) {
        self.write_at(fx::ST0 + usize::from(i & 7) * 16, &v);
    }
    /// XMM(`i & 15`), as the little-endian image of its 16 bytes in the
    /// FXSAVE area (bits 63:0 are the low quadword), the same convention as
    /// `nvmm_assist::CpuState::xmm`.
    pub fn xmm(&self, i: u8) -> u128 {
        u128::from_le_bytes(self.read_at(fx::XMM0 + usize::from(i & 15) * 16))
    }
    /// Sets XMM(`i & 15`) from its little-endian image (see [`Fpu::xmm`]).
    pub fn set_xmm(&mut self, i: u8, v: u128) {
        self.write_at(fx::XMM0 + usize::from(i & 15) * 16, &v.to_le_bytes());
    }
    /// The whole 512-byte FXSAVE area.
    pub fn area(&self) -> [u8; 512] {
        self.read_at(0)
    }
    /// Sets the whole 512-byte FXSAVE area. An area whose `fx_mxcsr_mask`
    /// (bytes 28..32) is 0, as the kernel's reset state has it, is written
    /// with [`DEFAULT_MXCSR_MASK`] there instead, for the reason given at
    /// [`Fpu::set_mxcsr`]: otherwise the kernel would commit MXCSR as 0.
    pub fn set_area(&mut self, area: &[u8; 512]) {
        let mut area = *area;
        let mask = fx::MXCSR_MASK..fx::MXCSR_MASK + 4;
        if area[mask.clone()] == [0; 4] {
            area[mask].copy_from_slice(&DEFAULT_MXCSR_MASK.to_le_bytes());
        }
        self.write_at(0, &area);
    }
}

/// Reads XMM(`i & 15`) straight from the page (used by the assist adapter).
#[cfg(feature = "assist")]
pub(crate) fn xmm_of(page: CommPage<'_>, i: u8) -> u128 {
    Fpu::new(page).xmm(i)
}

/// Writes XMM(`i & 15`) and marks FPU (used by the assist adapter).
#[cfg(feature = "assist")]
pub(crate) fn set_xmm_of(page: CommPage<'_>, i: u8, v: u128) {
    Fpu::new(page).set_xmm(i, v);
}
