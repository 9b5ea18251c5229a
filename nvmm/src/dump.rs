//! A printable view of the whole VCPU state, like libnvmm's
//! `nvmm_vcpu_dump`.

use std::fmt;
use std::marker::PhantomData;

use crate::comm::CommPage;
use crate::state::{Cr, Crs, Gpr, Gprs, Msr, Msrs, Seg, Segs};

/// The state of a VCPU, read from the comm page when printed. Obtained
/// from [`crate::Vcpu::dump`], which fetched every class first.
pub struct StateDump<'a> {
    page: CommPage<'a>,
    id: u32,
    _vcpu: PhantomData<&'a mut crate::Vcpu>,
}

impl<'a> StateDump<'a> {
    pub(crate) fn new(page: CommPage<'a>, id: u32) -> Self {
        StateDump {
            page,
            id,
            _vcpu: PhantomData,
        }
    }
}

impl fmt::Debug for StateDump<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = Gprs::new(self.page);
        let s = Segs::new(self.page);
        let c = Crs::new(self.page);
        let m = Msrs::new(self.page);
        writeln!(f, "[+] VCPU id={}", self.id)?;
        writeln!(f, "| -> RIP={:#x}", g.rip())?;
        writeln!(f, "| -> RSP={:#x}", g.get(Gpr::Rsp))?;
        writeln!(f, "| -> RAX={:#x}", g.get(Gpr::Rax))?;
        writeln!(f, "| -> RBX={:#x}", g.get(Gpr::Rbx))?;
        writeln!(f, "| -> RCX={:#x}", g.get(Gpr::Rcx))?;
        writeln!(f, "| -> RFLAGS={:#x}", g.rflags())?;
        for (i, r) in Gpr::ALL.iter().enumerate().take(16) {
            writeln!(f, "| -> GPR[{i:2}] {r:?}={:#x}", g.get(*r))?;
        }
        for seg in Seg::ALL {
            let v = s.get(*seg);
            writeln!(
                f,
                "| -> {:?}: sel={:#x}, base={:#x}, limit={:#x}, attrib={:?}",
                seg, v.selector, v.base, v.limit, v.attrib
            )?;
        }
        writeln!(f, "| -> EFER={:#x}", m.get(Msr::Efer))?;
        writeln!(f, "| -> CR0={:#x}", c.get(Cr::Cr0))?;
        writeln!(f, "| -> CR3={:#x}", c.get(Cr::Cr3))?;
        writeln!(f, "| -> CR4={:#x}", c.get(Cr::Cr4))?;
        write!(f, "| -> CR8={:#x}", c.get(Cr::Cr8))
    }
}
