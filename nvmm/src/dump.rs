//! A printable view of the whole VCPU state, like libnvmm's
//! `nvmm_vcpu_dump`, with every class.

use std::fmt;
use std::marker::PhantomData;

use crate::comm::CommPage;
use crate::state::{Cr, Crs, Dr, Drs, Fpu, Gpr, Gprs, Intr, Msr, Msrs, Seg, Segs};

/// The state of a VCPU, read from the comm page when printed. Obtained
/// from [`crate::Vcpu::dump`], which fetched every class first (and, with
/// the `assist` feature, read the code bytes at CS:RIP).
///
/// Prints each GPR once, RIP and RFLAGS, the segment registers (GDTR and
/// IDTR as base and limit only: their selector and attributes mean
/// nothing), CR0/2/3/4/8 and XCR0, DR0-3/6/7, every MSR slot, the
/// interrupt state and whether an injected event is pending, an FPU
/// summary (FCW, FSW, FTW, MXCSR), and the code bytes at RIP.
pub struct StateDump<'a> {
    page: CommPage<'a>,
    id: u32,
    code: Option<Vec<u8>>,
    _vcpu: PhantomData<&'a mut crate::Vcpu>,
}

impl<'a> StateDump<'a> {
    pub(crate) fn new(page: CommPage<'a>, id: u32, code: Option<Vec<u8>>) -> Self {
        StateDump {
            page,
            id,
            code,
            _vcpu: PhantomData,
        }
    }
}

const GPR_NAMES: [(Gpr, &str); 16] = [
    (Gpr::Rax, "RAX"),
    (Gpr::Rbx, "RBX"),
    (Gpr::Rcx, "RCX"),
    (Gpr::Rdx, "RDX"),
    (Gpr::Rsi, "RSI"),
    (Gpr::Rdi, "RDI"),
    (Gpr::Rbp, "RBP"),
    (Gpr::Rsp, "RSP"),
    (Gpr::R8, "R8"),
    (Gpr::R9, "R9"),
    (Gpr::R10, "R10"),
    (Gpr::R11, "R11"),
    (Gpr::R12, "R12"),
    (Gpr::R13, "R13"),
    (Gpr::R14, "R14"),
    (Gpr::R15, "R15"),
];

impl fmt::Debug for StateDump<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = Gprs::new(self.page);
        let s = Segs::new(self.page);
        let c = Crs::new(self.page);
        let d = Drs::new(self.page);
        let m = Msrs::new(self.page);
        let i = Intr::new(self.page);
        let fpu = Fpu::new(self.page);
        writeln!(f, "[+] VCPU id={}", self.id)?;
        writeln!(f, "| RIP={:#x} RFLAGS={:#x}", g.rip(), g.rflags())?;
        for pair in GPR_NAMES.chunks(2) {
            let [(a, an), (b, bn)] = pair else { continue };
            writeln!(
                f,
                "| {an:<3}={:#018x} {bn:<3}={:#018x}",
                g.get(*a),
                g.get(*b)
            )?;
        }
        for seg in Seg::ALL {
            let v = s.get(*seg);
            if matches!(seg, Seg::Gdt | Seg::Idt) {
                writeln!(f, "| {seg:?}: base={:#x} limit={:#x}", v.base, v.limit)?;
            } else {
                writeln!(
                    f,
                    "| {seg:?}: sel={:#x} base={:#x} limit={:#x} attrib={:?}",
                    v.selector, v.base, v.limit, v.attrib
                )?;
            }
        }
        writeln!(
            f,
            "| CR0={:#x} CR2={:#x} CR3={:#x} CR4={:#x} CR8={:#x} XCR0={:#x}",
            c.get(Cr::Cr0),
            c.get(Cr::Cr2),
            c.get(Cr::Cr3),
            c.get(Cr::Cr4),
            c.get(Cr::Cr8),
            c.get(Cr::Xcr0)
        )?;
        writeln!(
            f,
            "| DR0={:#x} DR1={:#x} DR2={:#x} DR3={:#x} DR6={:#x} DR7={:#x}",
            d.get(Dr::Dr0),
            d.get(Dr::Dr1),
            d.get(Dr::Dr2),
            d.get(Dr::Dr3),
            d.get(Dr::Dr6),
            d.get(Dr::Dr7)
        )?;
        for msr in Msr::ALL {
            writeln!(f, "| MSR {msr:?}={:#x}", m.get(*msr))?;
        }
        let intr = i.get();
        writeln!(
            f,
            "| interrupt shadow={} int window exiting={} nmi window exiting={} \
             event being delivered={} injected event pending={}",
            u8::from(intr.int_shadow),
            u8::from(intr.int_window_exiting),
            u8::from(intr.nmi_window_exiting),
            u8::from(intr.evt_pending),
            u8::from(self.page.event_pending())
        )?;
        writeln!(
            f,
            "| FPU: FCW={:#06x} FSW={:#06x} FTW={:#04x} MXCSR={:#x} (mask {:#x})",
            fpu.fcw(),
            fpu.fsw(),
            fpu.ftw(),
            fpu.mxcsr(),
            fpu.mxcsr_mask()
        )?;
        match &self.code {
            Some(bytes) => {
                write!(f, "| code at RIP:")?;
                for b in bytes {
                    write!(f, " {b:02x}")?;
                }
                Ok(())
            }
            None => write!(f, "| code at RIP: not readable (not RAM or not mapped)"),
        }
    }
}

/// Up to 15 bytes of guest code at CS:RIP, read through the guest's page
/// tables (the read-only walk of `Vcpu::gva_to_gpa`, which writes nothing
/// to the guest's page tables, so a dump never changes guest memory) and
/// the machine's RAM areas; `None` where the
/// walk faults or the first byte is not RAM. Stops at the first byte that
/// cannot be read.
#[cfg(feature = "assist")]
pub(crate) fn code_at_rip(vcpu: &mut crate::Vcpu) -> Option<Vec<u8>> {
    use nvmm_assist::{GuestRam, RamStatus};
    let rip = vcpu.gprs().ok()?.rip();
    let cs_base = vcpu.segs().ok()?.get(Seg::Cs).base;
    let start = cs_base.wrapping_add(rip);
    let mut bytes = Vec::new();
    while bytes.len() < 15 {
        let gva = start.wrapping_add(bytes.len() as u64);
        // Up to the end of the page: one walk per page.
        let in_page = (0x1000 - (gva & 0xFFF)) as usize;
        let n = in_page.min(15 - bytes.len());
        let Ok(translation) = vcpu.gva_to_gpa(gva) else {
            break;
        };
        let gpa = translation.gpa;
        let parts = vcpu.assist_parts();
        let mut ram = crate::assist::AreaRam::new(parts.ram);
        let mut chunk = vec![0u8; n];
        match ram.get().read(gpa, &mut chunk) {
            Ok(RamStatus::Done) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    (!bytes.is_empty()).then_some(bytes)
}
