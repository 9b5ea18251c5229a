//! `Vcpu::assist_mem` keeps a per-VCPU fetch cache (nvmm_assist::FetchCache)
//! for exits without instruction bytes; the guest rewriting a page-table
//! entry between two exits (no exit, no CR3 load in between) must be seen,
//! against the kernel model.
#![cfg(feature = "assist")]

use crate::dyn_assist::AssistDyn;
use nvmm::model::{KernelModel, ScriptedExit};
use nvmm::nvmm_assist::{BusError, MmioBus};
use nvmm::sys::OpenMode;
use nvmm::{Cr, Gpr, Nvmm, Outcome, Prot, Seg, SegAttrib};

#[derive(Default)]
struct Mmio {
    writes: Vec<(u64, Vec<u8>)>,
}
impl MmioBus for Mmio {
    fn read(&mut self, _gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.writes.push((gpa, data.to_vec()));
        Ok(())
    }
}

const PD: u64 = 0x2000;
const PT: u64 = 0x3000;
/// The code page (linear 0x1000) maps to one of these.
const CODE_A: u64 = 0x4000;
const CODE_B: u64 = 0x5000;

#[test]
fn a_rewritten_pte_between_two_fetching_assists_is_seen() {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let ram = m.hva_map(0x10000).unwrap();
    m.gpa_map(&ram, 0, 0, 0x10000, Prot::ALL).unwrap();
    // 32-bit paging: linear 0x1000 -> CODE_A.
    m.write_guest(PD, &((PT | 3) as u32).to_le_bytes()).unwrap();
    m.write_guest(PT + 4, &((CODE_A | 3) as u32).to_le_bytes())
        .unwrap();
    // mov [0x300], al at A; mov [0x300], eax at B (32-bit moffs).
    m.write_guest(CODE_A, &[0xA2, 0x00, 0x03, 0x00, 0x00])
        .unwrap();
    m.write_guest(CODE_B, &[0xA3, 0x00, 0x03, 0x00, 0x00])
        .unwrap();

    let mut v = m.create_vcpu(0).unwrap();
    {
        let mut segs = v.segs().unwrap();
        for (seg, typ) in [
            (Seg::Cs, 0xB),
            (Seg::Ds, 0x3),
            (Seg::Ss, 0x3),
            (Seg::Es, 0x3),
        ] {
            let mut s = segs.get(seg);
            s.selector = if seg == Seg::Cs { 8 } else { 0x10 };
            s.base = 0;
            s.limit = 0xFFFF_FFFF;
            s.attrib = SegAttrib::new(typ, true, 0, true, false, false, true, true);
            segs.set(seg, s);
        }
    }
    {
        let mut crs = v.crs().unwrap();
        crs.set(Cr::Cr3, PD);
        crs.set(Cr::Cr0, (1 << 31) | (1 << 4) | 1); // PG | ET | PE
    }
    v.gprs().unwrap().set(Gpr::Rax, 0x1122_3344);

    let mut mmio = Mmio::default();
    let exit_and_assist = |v: &mut nvmm::Vcpu, mmio: &mut Mmio| {
        v.gprs().unwrap().set_rip(0x1000);
        model.push_exit(m.id(), 0, ScriptedExit::memory(0xfee0_0300, true, &[]));
        v.run().unwrap();
        assert_eq!(v.assist_mem_dyn(mmio).unwrap(), Outcome::Done);
        mmio.writes.pop().unwrap()
    };
    assert_eq!(
        exit_and_assist(&mut v, &mut mmio),
        (0xfee0_0300, vec![0x44])
    );
    assert_eq!(
        exit_and_assist(&mut v, &mut mmio),
        (0xfee0_0300, vec![0x44])
    );
    // The guest remaps its code page (a plain store: no exit, no INVLPG).
    m.write_guest(PT + 4, &((CODE_B | 3) as u32).to_le_bytes())
        .unwrap();
    assert_eq!(
        exit_and_assist(&mut v, &mut mmio),
        (0xfee0_0300, vec![0x44, 0x33, 0x22, 0x11])
    );
    assert_eq!(v.gprs().unwrap().rip(), 0x1005);
}
