//! The assists wired over the comm page and the area list, against the
//! kernel model: results, zero extra syscalls, errors change nothing.
#![cfg(feature = "assist")]

use std::sync::Arc;

use crate::dyn_assist::AssistDyn;
use nvmm::model::{KernelModel, ScriptedExit};
use nvmm::nvmm_assist::{BusError, MmioBus, PortIo};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{Error, Gpr, Machine, Nvmm, Op, Outcome, Prot, Seg, StateClasses, Vcpu};

#[derive(Default)]
struct Ports {
    log: Vec<(u16, Vec<u8>)>,
    input: u8,
    fail: bool,
}
impl PortIo for Ports {
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        if self.fail {
            return Err(BusError(libc::EIO));
        }
        buf.fill(self.input);
        self.log.push((port, buf.to_vec()));
        Ok(())
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        if self.fail {
            return Err(BusError(libc::EIO));
        }
        self.log.push((port, data.to_vec()));
        Ok(())
    }
}

/// An MMIO device that records every access and reads as `value`
/// repeated (`assist_state` uses it too).
#[derive(Default)]
pub(crate) struct Mmio {
    pub(crate) writes: Vec<(u64, Vec<u8>)>,
    pub(crate) reads: Vec<(u64, usize)>,
    pub(crate) value: u8,
}
impl MmioBus for Mmio {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(self.value);
        self.reads.push((gpa, buf.len()));
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.writes.push((gpa, data.to_vec()));
        Ok(())
    }
}

/// A machine with 64 KiB of RAM at 0 and a real-mode VCPU at CS:IP 0:0x1000.
pub(crate) fn setup() -> (Arc<KernelModel>, Machine, Vcpu) {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let ram = m.hva_map(0x10000).unwrap();
    m.gpa_map(&ram, 0, 0, 0x10000, Prot::ALL).unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    let mut cs = v.segs().unwrap().get(Seg::Cs);
    (cs.selector, cs.base) = (0, 0);
    v.segs().unwrap().set(Seg::Cs, cs);
    v.gprs().unwrap().set_rip(0x1000);
    (model, m, v)
}

fn io_exit(
    model: &KernelModel,
    m: &Machine,
    port: u16,
    is_in: bool,
    f: impl FnOnce(&mut sys::nvmm_x86_exit_io),
) {
    let mut e = ScriptedExit::io(port, is_in, 1, 0x1001);
    e.exit.u.io.address_size = 2;
    // SAFETY: the io member is the one the constructor wrote.
    f(unsafe { &mut e.exit.u.io });
    model.push_exit(m.id(), 0, e);
}

#[test]
fn out_and_in_through_the_port_bus_without_syscalls() {
    let (model, m, mut v) = setup();
    v.gprs().unwrap().set(Gpr::Rax, 0x1122_3344_5566_7788);
    io_exit(&model, &m, 0x3f8, false, |_| {});
    v.run().unwrap();
    let mut ports = Ports {
        input: 0xab,
        ..Default::default()
    };
    let s = model.syscalls();
    assert_eq!(
        v.assist_io_dyn(&mut Mmio::default(), &mut ports).unwrap(),
        Outcome::Done
    );
    assert_eq!(model.syscalls(), s, "no syscall in the assist");
    assert_eq!(ports.log, vec![(0x3f8, vec![0x88])]);
    assert_eq!(v.gprs().unwrap().rip(), 0x1001);
    assert_eq!(v.pending_commit(), StateClasses::GPRS, "only GPRS marked");

    io_exit(&model, &m, 0x60, true, |_| {});
    v.run().unwrap();
    v.assist_io_dyn(&mut Mmio::default(), &mut ports).unwrap();
    assert_eq!(v.gprs().unwrap().get(Gpr::Rax), 0x1122_3344_5566_77ab);
    v.run().unwrap();
    let hw = model.hw_state(m.id(), 0);
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RAX], 0x1122_3344_5566_77ab);
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RIP], 0x1001);
}

#[test]
fn rep_outsb_reads_guest_ram_through_the_area_list() {
    let (model, m, mut v) = setup();
    m.write_guest(0x2000, b"hello").unwrap();
    {
        let mut g = v.gprs().unwrap();
        g.set(Gpr::Rsi, 0x2000);
        g.set(Gpr::Rcx, 5);
    }
    io_exit(&model, &m, 0xe9, false, |io| {
        io.rep = true;
        io.str_ = true;
        io.seg = sys::NVMM_X64_SEG_DS as i8;
    });
    v.run().unwrap();
    let mut ports = Ports::default();
    assert_eq!(
        v.assist_io_dyn(&mut Mmio::default(), &mut ports).unwrap(),
        Outcome::Done
    );
    let bytes: Vec<u8> = ports.log.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(bytes, b"hello");
    let g = v.gprs().unwrap();
    assert_eq!(
        (g.get(Gpr::Rcx), g.get(Gpr::Rsi), g.rip()),
        (0, 0x2005, 0x1001)
    );
}

#[test]
fn rep_insb_writes_guest_ram() {
    let (model, m, mut v) = setup();
    {
        let mut g = v.gprs().unwrap();
        g.set(Gpr::Rdi, 0x3000);
        g.set(Gpr::Rcx, 3);
    }
    io_exit(&model, &m, 0x1f0, true, |io| {
        io.rep = true;
        io.str_ = true;
    });
    v.run().unwrap();
    let mut ports = Ports {
        input: 0x5a,
        ..Default::default()
    };
    v.assist_io_dyn(&mut Mmio::default(), &mut ports).unwrap();
    let mut buf = [0u8; 4];
    m.read_guest(0x3000, &mut buf).unwrap();
    assert_eq!(buf, [0x5a, 0x5a, 0x5a, 0]);
}

#[test]
fn a_failing_port_changes_no_register() {
    let (model, m, mut v) = setup();
    v.gprs().unwrap().set(Gpr::Rax, 7);
    io_exit(&model, &m, 0x60, true, |_| {});
    v.run().unwrap();
    let mut ports = Ports {
        fail: true,
        ..Default::default()
    };
    let e = v
        .assist_io_dyn(&mut Mmio::default(), &mut ports)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Assist {
                op: Op::AssistIo,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.errno(), libc::EIO);
    assert_eq!(v.pending_commit(), StateClasses::empty());
    let g = v.gprs().unwrap();
    assert_eq!((g.get(Gpr::Rax), g.rip()), (7, 0x1000));
}

#[test]
fn mmio_write_and_read_with_exit_bytes() {
    let (model, m, mut v) = setup();
    v.gprs().unwrap().set(Gpr::Rax, 0x5a);
    // mov [0x0300], al
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::memory(0xfee0_0300, true, &[0xA2, 0x00, 0x03]),
    );
    v.run().unwrap();
    let mut mmio = Mmio::default();
    let s = model.syscalls();
    assert_eq!(v.assist_mem_dyn(&mut mmio).unwrap(), Outcome::Done);
    assert_eq!(model.syscalls(), s);
    assert_eq!(mmio.writes, vec![(0xfee0_0300, vec![0x5a])]);
    assert_eq!(v.gprs().unwrap().rip(), 0x1003);
    v.run().unwrap();
    assert_eq!(
        model.hw_state(m.id(), 0).gprs[sys::NVMM_X64_GPR_RIP],
        0x1003
    );

    // mov al, [0x0300], with the bytes fetched from guest RAM at CS:IP.
    m.write_guest(0x1003, &[0xA0, 0x00, 0x03]).unwrap();
    model.push_exit(m.id(), 0, ScriptedExit::memory(0xfee0_0300, false, &[]));
    v.run().unwrap();
    mmio.value = 0xc3;
    v.assist_mem_dyn(&mut mmio).unwrap();
    let g = v.gprs().unwrap();
    assert_eq!((g.get(Gpr::Rax) & 0xff, g.rip()), (0xc3, 0x1006));
}

#[test]
fn assist_after_the_wrong_exit_is_refused() {
    let (model, m, mut v) = setup();
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
    v.run().unwrap();
    assert!(matches!(
        v.assist_mem_dyn(&mut Mmio::default()).unwrap_err(),
        Error::Rejected {
            op: Op::AssistMem,
            ..
        }
    ));
    assert!(matches!(
        v.assist_io_dyn(&mut Mmio::default(), &mut Ports::default())
            .unwrap_err(),
        Error::Rejected {
            op: Op::AssistIo,
            ..
        }
    ));
}

#[test]
fn undecodable_bytes_are_an_error_with_no_change() {
    let (model, m, mut v) = setup();
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::memory(0xfee0_0000, true, &[0x0f, 0x0b]),
    );
    v.run().unwrap();
    let e = v.assist_mem_dyn(&mut Mmio::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Assist {
                op: Op::AssistMem,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(v.pending_commit(), StateClasses::empty());
}

#[test]
fn steady_state_with_assists_is_one_syscall_per_exit() {
    let (model, m, mut v) = setup();
    for _ in 0..20 {
        io_exit(&model, &m, 0x80, false, |_| {});
        model.push_exit(
            m.id(),
            0,
            ScriptedExit::memory(0xfee0_0300, true, &[0xA2, 0x00, 0x03]),
        );
    }
    v.run().unwrap();
    let start = model.syscalls();
    let (mut ports, mut mmio) = (Ports::default(), Mmio::default());
    for i in 1..40u64 {
        match v.last_exit() {
            nvmm::Exit::Io(_) => v.assist_io_dyn(&mut mmio, &mut ports).unwrap(),
            nvmm::Exit::Memory(_) => v.assist_mem_dyn(&mut mmio).unwrap(),
            other => panic!("{other:?}"),
        };
        v.run().unwrap();
        assert_eq!(model.syscalls() - start, i);
    }
    assert_eq!(ports.log.len(), 20);
    assert_eq!(mmio.writes.len(), 19);
}

/// The vendor CPUID leaf 0 names, as Linux reports it (`vendor_id` in
/// /proc/cpuinfo), read independently of the library's CPUID path (a
/// real file, which miri's isolation refuses).
#[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]
fn cpuinfo_vendor() -> Option<nvmm::Vendor> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("vendor_id"))?;
    line.split(':').nth(1)?.trim().parse().ok()
}

#[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]
#[test]
fn a_new_vcpu_emulates_the_host_vendor() {
    let (_model, _m, v) = setup();
    let host = cpuinfo_vendor().expect("vendor_id in /proc/cpuinfo");
    assert_eq!(nvmm::host_vendor(), host);
    assert_eq!(v.guest_vendor(), host);
}

/// Runs `67 f3 aa` (`rep stosb` with 32-bit addressing) through
/// `assist_mem` on a 64-bit-mode VCPU emulating `vendor`, with ECX = 0 and
/// the upper halves of RCX and RDI set; returns RCX, RDI and RIP after.
fn zero_count_a32_stosb(vendor: nvmm::Vendor) -> (u64, u64, u64) {
    use nvmm::{Cr, Msr, SegAttrib};
    let (model, m, mut v) = setup();
    v.set_guest_vendor(vendor);
    assert_eq!(v.guest_vendor(), vendor);
    // Long mode: CR0.PE|PG, CR4.PAE, EFER.LME|LMA, CS.L = 1. CR3 points at
    // zeroed RAM: the assist reads no page table for this instruction.
    {
        let mut c = v.crs().unwrap();
        c.set(Cr::Cr3, 0x8000);
        c.set(Cr::Cr4, 1 << 5);
        c.set(Cr::Cr0, (1 << 31) | 1);
    }
    v.msrs().unwrap().set(Msr::Efer, (1 << 8) | (1 << 10));
    {
        let mut s = v.segs().unwrap();
        let mut cs = s.get(Seg::Cs);
        cs.attrib = SegAttrib::new(0xb, true, 0, true, false, true, false, true);
        s.set(Seg::Cs, cs);
    }
    {
        let mut g = v.gprs().unwrap();
        g.set(Gpr::Rcx, 0xABCD_0000_0000_0000);
        g.set(Gpr::Rdi, 0x1234_5678_0000_2000);
    }
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::memory(0xfee0_0000, true, &[0x67, 0xf3, 0xaa]),
    );
    v.run().unwrap();
    let mut mmio = Mmio::default();
    assert_eq!(v.assist_mem_dyn(&mut mmio).unwrap(), Outcome::Done);
    assert!(mmio.reads.is_empty() && mmio.writes.is_empty());
    let g = v.gprs().unwrap();
    (g.get(Gpr::Rcx), g.get(Gpr::Rdi), g.rip())
}

/// `Vcpu::set_guest_vendor` reaches the assist: a zero-count a32 REP
/// STOSB clears RCX[63:32] and RDI[63:32] as an Intel CPU does, and keeps
/// them as an AMD CPU does (see nvmm_assist::vendor).
#[test]
fn the_guest_vendor_override_reaches_assist_mem() {
    assert_eq!(
        zero_count_a32_stosb(nvmm::Vendor::Intel),
        (0, 0x2000, 0x1003)
    );
    assert_eq!(
        zero_count_a32_stosb(nvmm::Vendor::Amd),
        (0xABCD_0000_0000_0000, 0x1234_5678_0000_2000, 0x1003)
    );
}
