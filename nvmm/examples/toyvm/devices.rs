//! toyvm's devices: a 16550-style serial port and an MMIO register bank,
//! behind nvmm-assist's bus traits ([`PortIo`], [`MmioBus`]), and the log
//! of what the guest did with them.
//!
//! The log is what the VMM checks: [`expected_log`] is what the guest in
//! `guest.rs` must produce, whether it runs on NVMM (toyvm) or on KVM
//! (`nvmm/tests/toyvm_kvm.rs`, which feeds KVM's exits to these same
//! devices). Serial output is logged by line, so the log does not depend
//! on how a hypervisor batches a string OUT; MMIO is logged by access,
//! which both hypervisors split the same way for the guest's instructions
//! (none crosses 8 bytes).

#![allow(dead_code)] // Shared with the KVM test, which uses a subset.

use std::fmt;

use nvmm::nvmm_assist::{BusError, MmioBus, PortIo};

use super::guest::{self, reg};

/// One thing the guest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A line the guest wrote to the serial port (without its newline).
    SerialLine(String),
    /// An MMIO read of the bank: register offset and the bytes returned.
    MmioRead {
        /// Offset in the bank.
        offset: u64,
        /// The bytes the device returned.
        data: Vec<u8>,
    },
    /// An MMIO write to the bank: register offset and the bytes written.
    /// Writes to the CPUID report registers are logged masked with the
    /// bits the VMM configured, so that the log does not depend on the
    /// host CPU.
    MmioWrite {
        /// Offset in the bank.
        offset: u64,
        /// The bytes the guest wrote.
        data: Vec<u8>,
    },
    /// An access the devices do not decode (outside the bank, or a port
    /// other than the serial port's).
    Stray {
        /// What it was.
        what: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::SerialLine(l) => write!(f, "serial: {l:?}"),
            Event::MmioRead { offset, data } => {
                write!(f, "mmio read  {:<12} -> {data:02x?}", reg_name(*offset))
            }
            Event::MmioWrite { offset, data } => {
                write!(f, "mmio write {:<12} <- {data:02x?}", reg_name(*offset))
            }
            Event::Stray { what } => write!(f, "stray access: {what}"),
        }
    }
}

/// The name of a bank register, for printing.
pub fn reg_name(offset: u64) -> String {
    let name = match offset {
        reg::SCRATCH => "SCRATCH",
        reg::ID_ECHO => "ID_ECHO",
        reg::COUNTER => "COUNTER",
        reg::COUNTER_ECHO => "COUNTER_ECHO",
        reg::ID => "ID",
        reg::CPUID_ECX => "CPUID_ECX",
        reg::CPUID_EDX => "CPUID_EDX",
        reg::IRQ => "IRQ",
        o if (reg::BUFFER..reg::BUFFER + 8).contains(&o) => {
            return format!("BUFFER+{}", o - reg::BUFFER);
        }
        o => return format!("+{o:#x}"),
    };
    name.to_string()
}

/// The 16550 registers toyvm models: THR (write) and LSR (read, always
/// "transmitter empty"); everything else reads 0 and ignores writes.
const LSR: u16 = guest::SERIAL_PORT + 5;
const LSR_THR_EMPTY: u8 = 0x60;

/// The guest's devices and their log.
pub struct Devices {
    /// Bank memory: registers are little-endian bytes.
    bank: [u8; reg::SIZE as usize],
    /// The serial line being written.
    line: Vec<u8>,
    /// Everything the guest did, in order.
    pub log: Vec<Event>,
}

impl Default for Devices {
    fn default() -> Self {
        Self::new()
    }
}

impl Devices {
    /// Devices in their reset state.
    pub fn new() -> Devices {
        let mut bank = [0u8; reg::SIZE as usize];
        bank[reg::ID as usize] = guest::DEVICE_ID;
        bank[reg::COUNTER as usize..reg::COUNTER as usize + 4]
            .copy_from_slice(&guest::COUNTER_RESET.to_le_bytes());
        Devices {
            bank,
            line: Vec::new(),
            log: Vec::new(),
        }
    }

    /// A serial port read of `buf.len()` bytes.
    pub fn port_read(&mut self, port: u16, buf: &mut [u8]) {
        match port {
            LSR => buf.fill(LSR_THR_EMPTY),
            p if (guest::SERIAL_PORT..guest::SERIAL_PORT + 8).contains(&p) => buf.fill(0),
            p => {
                buf.fill(0xFF);
                self.log.push(Event::Stray {
                    what: format!("in from port {p:#x}"),
                });
            }
        }
    }

    /// A port write; `data` may hold several elements of a string OUT.
    pub fn port_write(&mut self, port: u16, data: &[u8]) {
        if port != guest::SERIAL_PORT {
            self.log.push(Event::Stray {
                what: format!("out {data:02x?} to port {port:#x}"),
            });
            return;
        }
        for &b in data {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                self.log.push(Event::SerialLine(line));
            } else {
                self.line.push(b);
            }
        }
    }

    /// The offset in the bank of `len` bytes at `gpa`, if inside it.
    fn bank_range(gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let off = gpa.checked_sub(guest::MMIO_BASE)?;
        let end = off.checked_add(len as u64)?;
        (end <= reg::SIZE).then_some(off as usize..end as usize)
    }

    /// An MMIO read.
    pub fn mmio_read(&mut self, gpa: u64, buf: &mut [u8]) {
        match Self::bank_range(gpa, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&self.bank[r]);
                self.log.push(Event::MmioRead {
                    offset: gpa - guest::MMIO_BASE,
                    data: buf.to_vec(),
                });
            }
            None => {
                buf.fill(0xFF);
                self.log.push(Event::Stray {
                    what: format!("mmio read of {} bytes at {gpa:#x}", buf.len()),
                });
            }
        }
    }

    /// An MMIO write.
    pub fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
        let Some(r) = Self::bank_range(gpa, data.len()) else {
            self.log.push(Event::Stray {
                what: format!("mmio write of {data:02x?} at {gpa:#x}"),
            });
            return;
        };
        let offset = gpa - guest::MMIO_BASE;
        // The ID register is read-only.
        if offset != reg::ID {
            self.bank[r].copy_from_slice(data);
        }
        let mask = match offset {
            reg::CPUID_ECX => Some(guest::CPUID_SET_ECX),
            reg::CPUID_EDX => Some(guest::CPUID_DEL_EDX),
            _ => None,
        };
        let data = match (mask, <[u8; 4]>::try_from(data)) {
            (Some(m), Ok(v)) => (u32::from_le_bytes(v) & m).to_le_bytes().to_vec(),
            _ => data.to_vec(),
        };
        self.log.push(Event::MmioWrite { offset, data });
    }

    /// The serial bytes written since the last newline.
    pub fn pending_serial(&self) -> &[u8] {
        &self.line
    }
}

impl PortIo for Devices {
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        self.port_read(port, buf);
        Ok(())
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        self.port_write(port, data);
        Ok(())
    }
}

impl MmioBus for Devices {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        self.mmio_read(gpa, buf);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.mmio_write(gpa, data);
        Ok(())
    }
}

/// One step of the guest: a name and the events that prove it.
pub struct Step {
    /// What the step shows.
    pub name: &'static str,
    /// The events it must produce, in order.
    pub events: Vec<Event>,
}

fn w(offset: u64, data: &[u8]) -> Event {
    Event::MmioWrite {
        offset,
        data: data.to_vec(),
    }
}

fn r(offset: u64, data: &[u8]) -> Event {
    Event::MmioRead {
        offset,
        data: data.to_vec(),
    }
}

/// What the guest must do, step by step, on a hypervisor that applies the
/// CPUID configuration.
pub fn expected_steps() -> Vec<Step> {
    expected_steps_with_cpuid(guest::CPUID_SET_ECX, 0)
}

/// [`expected_steps`] with the CPUID report expected as `ecx` and `edx`
/// (already masked with [`guest::CPUID_SET_ECX`] and
/// [`guest::CPUID_DEL_EDX`]).
pub fn expected_steps_with_cpuid(ecx: u32, edx: u32) -> Vec<Step> {
    let scratch = guest::SCRATCH_VALUE;
    let counter = guest::COUNTER_RESET;
    vec![
        Step {
            name: "real -> protected -> long mode (serial `out`)",
            events: vec![Event::SerialLine("RPL".into())],
        },
        Step {
            name: "MMIO `mov` store",
            events: vec![w(reg::SCRATCH, &scratch.to_le_bytes())],
        },
        Step {
            name: "MMIO `or` (read-modify-write)",
            events: vec![
                r(reg::SCRATCH, &scratch.to_le_bytes()),
                w(reg::SCRATCH, &(scratch | guest::SCRATCH_OR).to_le_bytes()),
            ],
        },
        Step {
            name: "MMIO `movzx` byte load",
            events: vec![
                r(reg::ID, &[guest::DEVICE_ID]),
                w(reg::ID_ECHO, &u32::from(guest::DEVICE_ID).to_le_bytes()),
            ],
        },
        Step {
            name: "MMIO `rep movsb`",
            events: guest::MOVSB_PATTERN
                .iter()
                .enumerate()
                .map(|(i, b)| w(reg::BUFFER + i as u64, &[*b]))
                .collect(),
        },
        Step {
            name: "MMIO `lock xadd`",
            events: vec![
                r(reg::COUNTER, &counter.to_le_bytes()),
                w(reg::COUNTER, &(counter + guest::XADD_ADDEND).to_le_bytes()),
                w(reg::COUNTER_ECHO, &counter.to_le_bytes()),
            ],
        },
        Step {
            name: "CPUID leaf configured by the VMM (mask mode)",
            events: vec![
                w(reg::CPUID_ECX, &ecx.to_le_bytes()),
                w(reg::CPUID_EDX, &edx.to_le_bytes()),
            ],
        },
        Step {
            name: "interrupt injected at the window, handler ran",
            events: vec![w(reg::IRQ, &u32::from(guest::IRQ_VECTOR).to_le_bytes())],
        },
        Step {
            name: "serial `rep outsb`",
            events: vec![Event::SerialLine(
                String::from_utf8_lossy(
                    guest::FINAL_MESSAGE
                        .strip_suffix(b"\n")
                        .unwrap_or(guest::FINAL_MESSAGE),
                )
                .into_owned(),
            )],
        },
    ]
}

/// The whole expected log.
pub fn expected_log() -> Vec<Event> {
    expected_steps()
        .into_iter()
        .flat_map(|s| s.events)
        .collect()
}

/// Checks `log` against `steps`: one line per step, `ok` or what
/// differs, and whether all passed. Stray accesses and extra events fail.
pub fn check(log: &[Event], steps: &[Step]) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut all = true;
    let mut at = 0;
    for step in steps {
        let n = step.events.len();
        let got = log.get(at..at + n);
        if got == Some(&step.events[..]) {
            lines.push(format!("ok    {}", step.name));
        } else {
            all = false;
            let got = log.get(at..).unwrap_or_default();
            let shown: Vec<String> = got.iter().take(n.max(1)).map(|e| e.to_string()).collect();
            let want: Vec<String> = step.events.iter().map(|e| e.to_string()).collect();
            lines.push(format!(
                "FAIL  {}\n        expected: {}\n        got:      {}",
                step.name,
                want.join("; "),
                if shown.is_empty() {
                    "nothing".into()
                } else {
                    shown.join("; ")
                }
            ));
        }
        at += n;
    }
    if log.len() > at {
        all = false;
        for e in &log[at..] {
            lines.push(format!("FAIL  unexpected event: {e}"));
        }
    }
    (lines, all)
}
