//! A tiny VMM: real-mode guest code that prints "Hello" on a serial port and
//! halts. It shows the whole path: open → machine → guest memory → VCPU →
//! run loop. It runs only on NetBSD/x86_64 with the nvmm module loaded;
//! elsewhere it prints why it cannot.

use std::io::Write;

use nvmm::nvmm_assist::{BusError, MmioBus, PortIo};
use nvmm::{Exit, Nvmm, Prot, StopRequest};

/// `mov dx, 0x3f8; mov si, msg; lodsb; test al, al; jz done; out dx, al;
/// jmp loop; done: hlt; msg: "Hello\n\0"`, assembled for 16-bit mode at
/// 0x1000.
const GUEST: &[u8] = &[
    0xBA, 0xF8, 0x03, // mov dx, 0x3f8
    0xBE, 0x0F, 0x10, // mov si, 0x100f
    0xAC, // loop: lodsb
    0x84, 0xC0, // test al, al
    0x74, 0x03, // jz done
    0xEE, // out dx, al
    0xEB, 0xF8, // jmp loop
    0xF4, // done: hlt
    b'H', b'e', b'l', b'l', b'o', b'\n', 0,
];

const SERIAL: u16 = 0x3f8;

/// Port I/O: a serial port that prints what the guest writes.
struct Serial<W: Write> {
    out: W,
}

impl<W: Write> PortIo for Serial<W> {
    fn read(&mut self, _port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0xFF); // nothing to read
        Ok(())
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        if port == SERIAL {
            self.out
                .write_all(data)
                .map_err(|e| BusError(e.raw_os_error().unwrap_or(libc::EIO)))?;
        }
        Ok(())
    }
}

/// MMIO: no device; reads float high, writes are logged.
struct NoDevices;

impl MmioBus for NoDevices {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        eprintln!("MMIO read of {} bytes at {gpa:#x}", buf.len());
        buf.fill(0xFF);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        eprintln!("MMIO write of {data:02x?} at {gpa:#x}");
        Ok(())
    }
}

fn main() {
    if let Err(e) = run() {
        // The assists' errors keep their cause in `source()`.
        let cause = std::error::Error::source(&e).map(|c| format!(": {c}"));
        eprintln!("tiny_vmm: {e}{}", cause.unwrap_or_default());
        std::process::exit(1);
    }
}

fn run() -> Result<(), nvmm::Error> {
    let nvmm = Nvmm::open()?;
    let cap = nvmm.capability();
    println!(
        "NVMM version {}, {} VCPUs per machine",
        cap.version, cap.max_vcpus
    );
    let machine = nvmm.create_machine()?;

    // 64 KiB of guest RAM at guest-physical 0.
    let ram = machine.hva_map(0x10000)?;
    machine.gpa_map(&ram, 0, 0, 0x10000, Prot::ALL)?;
    machine.write_guest(0x1000, GUEST)?;

    let mut vcpu = machine.create_vcpu(0)?;
    // Real mode, CS = 0, IP = 0x1000 (one GETSTATE at most; the writes
    // are committed by the first run).
    vcpu.setup_real_mode(0, 0x1000)?;

    // A watchdog: a guest that never halts is stopped after 5 seconds. A
    // StopRequest keeps the request in a flag of ours as well, because the
    // kernel clears the comm page's stop flag at the end of every run and
    // reports it only as the reason of the run that saw it.
    let stop = StopRequest::new(vcpu.stopper());
    let watchdog = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(5));
        watchdog.request();
    });

    let mut serial = Serial {
        out: std::io::stdout(),
    };
    let mut mmio = NoDevices;
    loop {
        let exit = vcpu.run()?;
        // Checked after every run, whatever it returned: a stop can arrive
        // as Exit::Stopped, as Exit::None (a signal won), or replace an
        // exit the guest was making.
        if stop.take() {
            eprintln!("tiny_vmm: stopped by the watchdog");
            break;
        }
        match exit {
            // The assists read and write the registers in place in the comm
            // page; with the classes the kernel provides on these exits,
            // handling one costs no syscall beyond the next run.
            Exit::Io(_) => {
                vcpu.assist_io(&mut mmio, &mut serial)?;
            }
            Exit::Memory(_) => {
                vcpu.assist_mem(&mut mmio)?;
            }
            Exit::Halted => break,
            Exit::None | Exit::Stopped | Exit::IntReady | Exit::NmiReady => {}
            Exit::Rdmsr(_) => vcpu.complete_rdmsr(0)?,
            Exit::Wrmsr(_) => vcpu.complete_wrmsr()?,
            other => {
                let what = format!("{other:?}");
                eprintln!("unhandled exit {what}\n{:?}", vcpu.dump()?);
                break;
            }
        }
    }
    let _ = serial.out.flush();
    Ok(())
}
