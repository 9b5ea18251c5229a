//! The differential tests' common step: run one case on a copy of the
//! machine (registers, RAM, devices) through one path, then hold two copies
//! to the same result. Every lane test compares a lane with the general
//! path or the full fast path this way, so a lane can take a case only if
//! everything it does matches, down to the order of device accesses.

use std::string::String;

use super::run_mode;
use crate::mem::assist_mem_with;
use crate::mode::CpuMode;
use crate::testutil::{RecordingMmio, TestRam};
use crate::{AccessType, Error, FetchCache, MemExit, Outcome, Registers};

/// One copy of the machine a case runs on.
#[derive(Clone)]
pub(super) struct Machine {
    pub regs: Registers,
    pub ram: TestRam,
    pub mmio: RecordingMmio,
}

impl Machine {
    /// A copy of `regs`, `ram` and `mmio` (each run gets its own).
    pub fn new(regs: &Registers, ram: &TestRam, mmio: &RecordingMmio) -> Machine {
        Machine {
            regs: regs.clone(),
            ram: ram.clone(),
            mmio: mmio.clone(),
        }
    }

    /// The whole memory assist on the exit `gpa` with `bytes`, its fast
    /// path allowed or not (with `false`: the general path alone).
    pub fn assist(&mut self, gpa: u64, bytes: &[u8], fast: bool) -> Result<Outcome, Error> {
        self.assist_cached(gpa, bytes, fast, &mut FetchCache::new())
    }

    /// [`Machine::assist`] with the caller's fetch and data cache (kept
    /// across cases, to hold both paths to the same cached translations).
    pub fn assist_cached(
        &mut self,
        gpa: u64,
        bytes: &[u8],
        fast: bool,
        cache: &mut FetchCache,
    ) -> Result<Outcome, Error> {
        let exit = MemExit {
            gpa,
            access: AccessType::Read,
            instruction: bytes,
        };
        assist_mem_with(
            &mut self.regs,
            &mut self.ram,
            &mut self.mmio,
            &exit,
            fast,
            cache,
        )
    }

    /// The general path alone.
    pub fn general(&mut self, gpa: u64, bytes: &[u8]) -> Result<Outcome, Error> {
        self.assist(gpa, bytes, false)
    }

    /// The full fast path in a mode of default address size `ADDR`; `None`
    /// if it declined (it then hands the case to the general path, which
    /// this does not run).
    pub fn full_fast<const ADDR: u8>(
        &mut self,
        mode: CpuMode,
        gpa: u64,
        bytes: &[u8],
    ) -> Option<Result<Outcome, Error>> {
        let mut declined = false;
        let result = run_mode::<ADDR, _, _, _>(
            &mut self.regs,
            mode,
            &mut self.ram,
            &mut FetchCache::new(),
            &mut self.mmio,
            gpa,
            bytes,
            |_, _, _, _| {
                declined = true;
                Ok(Outcome::Resume)
            },
        );
        (!declined).then_some(result)
    }

    /// The two runs left the same registers, RAM bytes, device log,
    /// compare-and-write log and RAM call counts (`what` names the case).
    #[track_caller]
    pub fn assert_same(&self, other: &Machine, what: &str) {
        assert_eq!(self.regs, other.regs, "{what}: registers");
        assert_eq!(self.mmio.log, other.mmio.log, "{what}: device accesses");
        assert!(self.ram.mem == other.ram.mem, "{what}: RAM bytes");
        assert_eq!(
            self.ram.cas_log, other.ram.cas_log,
            "{what}: compare-and-writes"
        );
        assert_eq!(
            (self.ram.reads, self.ram.writes),
            (other.ram.reads, other.ram.writes),
            "{what}: RAM reads and writes"
        );
    }

    /// A path that declined (or failed) did nothing: the registers are
    /// still `before` and no device or RAM call was made.
    #[track_caller]
    pub fn assert_untouched(&self, before: &Registers, what: &str) {
        assert_eq!(&self.regs, before, "{what}: registers changed");
        assert!(self.mmio.log.is_empty(), "{what}: a device access");
        assert_eq!(
            (self.ram.reads, self.ram.writes),
            (0, 0),
            "{what}: a RAM access"
        );
    }
}

/// The case's name in a failure message.
pub(super) fn case(mode: CpuMode, bytes: &[u8], gpa: u64) -> String {
    std::format!("{mode:?} {bytes:02x?} gpa {gpa:#x}")
}
