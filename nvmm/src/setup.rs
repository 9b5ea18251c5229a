//! Putting a VCPU in a CPU mode through the comm page: real mode, flat
//! 32-bit protected mode, long mode; and segment attributes by named field.
//!
//! Each `setup_*` fetches GPRS|SEGS|CRS|MSRS (one `NVMM_IOC_VCPU_GETSTATE`
//! at most, none after an I/O or memory exit) and writes the registers in
//! place; the next run commits them. Nothing is written to guest memory:
//! the selectors below name descriptors that need not exist until the
//! guest reloads a segment register, so a guest that does so brings its
//! own GDT (and loads its own GDTR). GDTR and IDTR are left as they are,
//! except that real mode points IDTR at the real-mode vector table.

use crate::error::Result;
use crate::state::{Cr, Gpr, Msr, Seg, SegAttrib, Segment};
use crate::vcpu::{PROVIDED_ON_IO_AND_MEMORY, Vcpu};
use crate::x86::{cr0, cr4, efer, rflags};

/// Segment attributes by name, for [`SegAttrib::from_fields`] (NVMM's
/// `struct nvmm_x64_state_seg` attribute bitfield, `nvmm_x86.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SegFields {
    /// The 4-bit type (code/data: bit 3 code, bit 1 readable/writable,
    /// bit 0 accessed; system: 2 LDT, 9/11 available/busy TSS, ...).
    pub typ: u8,
    /// S: code or data (not a system segment).
    pub s: bool,
    /// Descriptor privilege level (0-3).
    pub dpl: u8,
    /// P: present. NVMM treats a segment that is not present as unusable
    /// (`vmx_vcpu_setstate_seg` in `nvmm_x86_vmx.c`).
    pub p: bool,
    /// AVL: available to software.
    pub avl: bool,
    /// L: 64-bit code segment.
    pub l: bool,
    /// D/B: 32-bit default operand size (code) or big stack (data).
    pub def: bool,
    /// G: limit in 4 KiB units (the state holds the limit in bytes).
    pub g: bool,
}

impl SegAttrib {
    /// Attributes from named fields (each masked to its width).
    ///
    /// ```
    /// use nvmm::{SegAttrib, SegFields};
    /// let code64 = SegAttrib::from_fields(SegFields { typ: 0xB, s: true, p: true, l: true, g: true, ..Default::default() });
    /// assert_eq!(code64, SegAttrib::CODE64);
    /// assert!(code64.fields().l);
    /// ```
    pub const fn from_fields(f: SegFields) -> SegAttrib {
        SegAttrib::new(f.typ, f.s, f.dpl, f.p, f.avl, f.l, f.def, f.g)
    }

    /// The named fields.
    pub const fn fields(self) -> SegFields {
        SegFields {
            typ: self.typ(),
            s: self.s(),
            dpl: self.dpl(),
            p: self.p(),
            avl: self.avl(),
            l: self.l(),
            def: self.def(),
            g: self.g(),
        }
    }

    /// 64-bit code, ring 0: execute/read, accessed, L, G.
    pub const CODE64: SegAttrib = SegAttrib::new(0xB, true, 0, true, false, true, false, true);
    /// 32-bit code, ring 0: execute/read, accessed, D, G.
    pub const CODE32: SegAttrib = SegAttrib::new(0xB, true, 0, true, false, false, true, true);
    /// 16-bit code (real mode): execute/read, accessed, byte granular.
    pub const CODE16: SegAttrib = SegAttrib::new(0xB, true, 0, true, false, false, false, false);
    /// 32-bit data, ring 0: read/write, accessed, B, G.
    pub const DATA32: SegAttrib = SegAttrib::new(0x3, true, 0, true, false, false, true, true);
    /// 16-bit data (real mode): read/write, accessed, byte granular.
    pub const DATA16: SegAttrib = SegAttrib::new(0x3, true, 0, true, false, false, false, false);
    /// A busy TSS (type 11: 64-bit in long mode, 32-bit otherwise), as
    /// VM entry requires of TR in protected and long mode.
    pub const TSS_BUSY: SegAttrib = SegAttrib::new(0xB, false, 0, true, false, false, false, false);
    /// An unusable LDT (type 2, not present).
    pub const LDT_UNUSABLE: SegAttrib =
        SegAttrib::new(0x2, false, 0, false, false, false, false, false);
}

/// The selectors the protected- and long-mode set-ups load (hidden parts
/// only: see the module documentation).
pub mod selectors {
    /// Code.
    pub const CODE: u16 = 0x08;
    /// Data (DS, ES, SS, FS, GS).
    pub const DATA: u16 = 0x10;
    /// TR.
    pub const TSS: u16 = 0x18;
}

/// The size of a TSS minus one: the limit TR gets.
const TSS_LIMIT: u32 = 0x67;

fn flat(selector: u16, attrib: SegAttrib) -> Segment {
    Segment {
        selector,
        attrib,
        limit: 0xFFFF_FFFF,
        base: 0,
    }
}

impl Vcpu {
    /// Real mode at `cs:ip` (CS base `cs << 4`), the other segments at 0,
    /// 64 KiB limits, IDTR on the vector table at 0 (limit 0x3FF), paging,
    /// protection and long mode off (CR0 keeps its CD/NW cache bits, CR4
    /// and EFER 0), RFLAGS 2. The other GPRs are left as they are.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// vcpu.setup_real_mode(0, 0x7C00)?; // a boot sector's entry
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn setup_real_mode(&mut self, cs: u16, ip: u16) -> Result<()> {
        self.fetch(PROVIDED_ON_IO_AND_MEMORY)?;
        let mut s = self.segs()?;
        let real = |selector: u16, attrib| Segment {
            selector,
            attrib,
            limit: 0xFFFF,
            base: u64::from(selector) << 4,
        };
        s.set(Seg::Cs, real(cs, SegAttrib::CODE16));
        for seg in [Seg::Ds, Seg::Es, Seg::Ss, Seg::Fs, Seg::Gs] {
            s.set(seg, real(0, SegAttrib::DATA16));
        }
        let mut idt = s.get(Seg::Idt);
        (idt.base, idt.limit) = (0, 0x3FF);
        s.set(Seg::Idt, idt);
        let mut c = self.crs()?;
        let cache = c.get(Cr::Cr0) & (cr0::CD | cr0::NW);
        c.set(Cr::Cr0, cache | cr0::ET);
        c.set(Cr::Cr4, 0);
        self.msrs()?.set(Msr::Efer, 0);
        let mut g = self.gprs()?;
        g.set_rip(u64::from(ip));
        g.set_rflags(rflags::FIXED);
        Ok(())
    }

    /// Flat 32-bit protected mode, paging off: CS a 32-bit ring-0 code
    /// segment ([`selectors::CODE`]), DS/ES/SS/FS/GS flat data
    /// ([`selectors::DATA`]), base 0 and limit 4 GiB; TR a busy TSS, LDT
    /// unusable; CR0 = PE|ET|NE, CR4 and EFER 0; RIP = `entry`,
    /// RSP = `stack`, RFLAGS 2.
    pub fn setup_protected_mode(&mut self, entry: u32, stack: u32) -> Result<()> {
        self.setup_flat(SegAttrib::CODE32)?;
        let mut c = self.crs()?;
        c.set(Cr::Cr0, cr0::PE | cr0::ET | cr0::NE);
        c.set(Cr::Cr4, 0);
        self.msrs()?.set(Msr::Efer, 0);
        let mut g = self.gprs()?;
        g.set_rip(u64::from(entry));
        g.set(Gpr::Rsp, u64::from(stack));
        g.set_rflags(rflags::FIXED);
        Ok(())
    }

    /// 64-bit long mode with 4-level paging rooted at `cr3`: CS a 64-bit
    /// ring-0 code segment, flat data segments, TR a busy 64-bit TSS
    /// (limit 0x67, base 0), LDT unusable; CR0 = PE|ET|NE|WP|PG,
    /// CR4 = PAE, EFER = LME|LMA (NVMM loads EFER as given, so LMA must be
    /// set along with LME); RIP = `entry`, RSP = `stack`, RFLAGS 2.
    ///
    /// The guest's page tables must map `entry` and `stack`.
    ///
    /// ```no_run
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// vcpu.setup_long_mode(0x2000, 0x10_0000, 0x8_0000)?;
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn setup_long_mode(&mut self, cr3: u64, entry: u64, stack: u64) -> Result<()> {
        self.setup_flat(SegAttrib::CODE64)?;
        let mut c = self.crs()?;
        c.set(Cr::Cr0, cr0::PE | cr0::ET | cr0::NE | cr0::WP | cr0::PG);
        c.set(Cr::Cr3, cr3);
        c.set(Cr::Cr4, cr4::PAE);
        self.msrs()?.set(Msr::Efer, efer::LME | efer::LMA);
        let mut g = self.gprs()?;
        g.set_rip(entry);
        g.set(Gpr::Rsp, stack);
        g.set_rflags(rflags::FIXED);
        Ok(())
    }

    /// The segments of flat protected and long mode.
    fn setup_flat(&mut self, code: SegAttrib) -> Result<()> {
        self.fetch(PROVIDED_ON_IO_AND_MEMORY)?;
        let mut s = self.segs()?;
        s.set(Seg::Cs, flat(selectors::CODE, code));
        for seg in [Seg::Ds, Seg::Es, Seg::Ss, Seg::Fs, Seg::Gs] {
            s.set(seg, flat(selectors::DATA, SegAttrib::DATA32));
        }
        s.set(
            Seg::Tr,
            Segment {
                selector: selectors::TSS,
                attrib: SegAttrib::TSS_BUSY,
                limit: TSS_LIMIT,
                base: 0,
            },
        );
        s.set(
            Seg::Ldt,
            Segment {
                selector: 0,
                attrib: SegAttrib::LDT_UNUSABLE,
                limit: 0,
                base: 0,
            },
        );
        Ok(())
    }
}
