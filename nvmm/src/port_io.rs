//! [`Vcpu::assist_port_io`]: the I/O assist for a VMM without MMIO
//! devices.

use crate::assist::Outcome;
use crate::error::Result;
use crate::vcpu::Vcpu;
use nvmm_assist::{BusError, MmioBus, PortIo};

/// The MMIO bus of a machine without MMIO devices: every access fails
/// with `EFAULT`, which the assist returns as [`crate::Error::Assist`].
struct NoMmio;

impl MmioBus for NoMmio {
    fn read(&mut self, _gpa: u64, _buf: &mut [u8]) -> std::result::Result<(), BusError> {
        Err(BusError(libc::EFAULT))
    }
    fn write(&mut self, _gpa: u64, _data: &[u8]) -> std::result::Result<(), BusError> {
        Err(BusError(libc::EFAULT))
    }
}

impl Vcpu {
    /// [`Vcpu::assist_io`] without an MMIO bus: for VMMs whose string port
    /// I/O (INS/OUTS) only ever moves data to and from guest RAM. An
    /// INS/OUTS whose memory operand is not RAM fails with
    /// [`crate::Error::Assist`] holding a bus error (`EFAULT`), and no
    /// register changes.
    ///
    /// ```no_run
    /// use nvmm::nvmm_assist::{BusError, PortIo};
    /// struct Debugcon;
    /// impl PortIo for Debugcon {
    ///     fn read(&mut self, _port: u16, buf: &mut [u8]) -> Result<(), BusError> {
    ///         buf.fill(0xE9);
    ///         Ok(())
    ///     }
    ///     fn write(&mut self, _port: u16, data: &[u8]) -> Result<(), BusError> {
    ///         print!("{}", String::from_utf8_lossy(data));
    ///         Ok(())
    ///     }
    /// }
    /// # let nvmm = nvmm::Nvmm::open()?;
    /// # let machine = nvmm.create_machine()?;
    /// # let mut vcpu = machine.create_vcpu(0)?;
    /// if let nvmm::Exit::Io(_) = vcpu.run()? {
    ///     vcpu.assist_port_io(&mut Debugcon)?;
    /// }
    /// # Ok::<(), nvmm::Error>(())
    /// ```
    pub fn assist_port_io<P>(&mut self, ports: &mut P) -> Result<Outcome>
    where
        P: PortIo + ?Sized,
    {
        self.assist_io(&mut NoMmio, ports)
    }
}
