//! NetBSD's `tests/lib/libnvmm` programs `h_io_assist` and `h_mem_assist`
//! (64-bit and 16-bit), run through nvmm-rs on the real kernel: the same
//! guest programs and expected results (`tests/guests/netbsd.rs`), with
//! the exits completed by `Vcpu::assist_io`/`Vcpu::assist_mem`.
//!
//! Needs `/dev/nvmm`: skips elsewhere (fails under `NVMM_VMTEST=1`). The
//! same programs run on KVM in `netbsd_guests_kvm.rs`.

// A real open of /dev/nvmm (then its ioctls), which miri cannot run.
#![cfg(not(miri))]
#![cfg(feature = "assist")]

use crate::kernel_support;
use crate::netbsd_guests as guests;

use guests::{CODE, DATA, END_MSR, IoTest, MemTest, PML4, PORT};
use kernel_support::{End, Vm, run_to_end};
use nvmm::nvmm_assist::{BusError, MmioBus, PortIo};

/// The port of the I/O tests: a byte stream read from or written to a
/// buffer, as `io_callback` in `h_io_assist.c` does.
struct Port {
    buf: Vec<u8>,
    off: usize,
}

impl PortIo for Port {
    fn read(&mut self, port: u16, data: &mut [u8]) -> Result<(), BusError> {
        if port != PORT {
            return Err(BusError(libc::EINVAL));
        }
        let src = self
            .buf
            .get(self.off..self.off + data.len())
            .ok_or(BusError(libc::EOVERFLOW))?;
        data.copy_from_slice(src);
        self.off += data.len();
        Ok(())
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        if port != PORT {
            return Err(BusError(libc::EINVAL));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }
}

/// The MMIO page at `DATA`, as `mem_callback` in `h_mem_assist.c`.
struct MmioPage([u8; 4096]);

impl MmioBus for MmioPage {
    fn read(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        let off = gpa.checked_sub(DATA).ok_or(BusError(libc::EFAULT))? as usize;
        let src = self
            .0
            .get(off..off + data.len())
            .ok_or(BusError(libc::EFAULT))?;
        data.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        let off = gpa.checked_sub(DATA).ok_or(BusError(libc::EFAULT))? as usize;
        let dst = self
            .0
            .get_mut(off..off + data.len())
            .ok_or(BusError(libc::EFAULT))?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

fn page_table_pieces() -> Vec<(u64, [u8; 8])> {
    guests::page_tables()
        .into_iter()
        .map(|(gpa, e)| (gpa, e.to_le_bytes()))
        .collect()
}

fn run_io(nvmm: &nvmm::Nvmm, t: &IoTest) -> Result<(), String> {
    let pts = page_table_pieces();
    let mut pieces: Vec<(u64, &[u8])> = pts.iter().map(|(g, b)| (*g, &b[..])).collect();
    pieces.push((CODE, &t.code));
    if !t.input {
        pieces.push((DATA, t.wanted.as_bytes()));
    }
    let mut vm = Vm::new(nvmm, &[], &pieces).map_err(|e| e.to_string())?;
    vm.vcpu
        .setup_long_mode(PML4, CODE, 0x8000)
        .map_err(|e| e.to_string())?;
    let mut port = Port {
        buf: if t.input {
            t.wanted.as_bytes().to_vec()
        } else {
            Vec::new()
        },
        off: 0,
    };
    let mut no_mmio = MmioPage([0; 4096]);
    let end = run_to_end(&mut vm.vcpu, &mut no_mmio, &mut port)?;
    if end != End::Rdmsr(END_MSR) {
        return Err(format!("ended with {end:?}"));
    }
    let got = if t.input {
        let mut data = vec![0u8; t.wanted.len()];
        vm.machine
            .read_guest(DATA, &mut data)
            .map_err(|e| e.to_string())?;
        data
    } else {
        port.buf
    };
    if got != t.wanted.as_bytes() {
        return Err(format!(
            "wanted {:?}, got {:?}",
            t.wanted,
            String::from_utf8_lossy(&got)
        ));
    }
    Ok(())
}

fn run_mem(nvmm: &nvmm::Nvmm, t: &MemTest) -> Result<(), String> {
    let pts = page_table_pieces();
    let mut pieces: Vec<(u64, &[u8])> = pts.iter().map(|(g, b)| (*g, &b[..])).collect();
    pieces.push((CODE, &t.code));
    let mut vm = Vm::new(nvmm, &[DATA], &pieces).map_err(|e| e.to_string())?;
    if t.real_mode {
        vm.vcpu
            .setup_real_mode(0, CODE as u16)
            .map_err(|e| e.to_string())?;
    } else {
        vm.vcpu
            .setup_long_mode(PML4, CODE, 0x8000)
            .map_err(|e| e.to_string())?;
    }
    let mut mmio = MmioPage([0; 4096]);
    let mut no_ports = Port {
        buf: Vec::new(),
        off: 0,
    };
    let end = run_to_end(&mut vm.vcpu, &mut mmio, &mut no_ports)?;
    if end != End::Rdmsr(END_MSR) {
        return Err(format!("ended with {end:?}"));
    }
    let off = (t.at - DATA) as usize;
    let got = u64::from_le_bytes(mmio.0[off..off + 8].try_into().unwrap_or_default());
    if got != t.wanted {
        return Err(format!("wanted {:#x}, got {got:#x}", t.wanted));
    }
    Ok(())
}

#[test]
fn h_io_assist() {
    let Some(nvmm) = kernel_support::open("h_io_assist") else {
        return;
    };
    let mut failed = Vec::new();
    for t in guests::io_tests() {
        match run_io(&nvmm, &t) {
            Ok(()) => kernel_support::say(&format!("Test '{}' passed", t.name)),
            Err(e) => failed.push(format!("Test '{}' failed: {e}", t.name)),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn h_mem_assist() {
    let Some(nvmm) = kernel_support::open("h_mem_assist") else {
        return;
    };
    let mut failed = Vec::new();
    for t in guests::mem_tests() {
        match run_mem(&nvmm, &t) {
            Ok(()) => kernel_support::say(&format!("Test '{}' passed", t.name)),
            Err(e) => failed.push(format!("Test '{}' failed: {e}", t.name)),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
