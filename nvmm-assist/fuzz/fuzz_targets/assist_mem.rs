//! Fuzzes `nvmm_assist::assist_mem` with arbitrary CPU state, mode, exit and
//! guest memory (page tables included), and callbacks that can fail.
//!
//! Properties, beyond "never panics" (overflow checks are on in fuzz builds):
//! - every RAM or MMIO access is non-empty and stays within one 4 KiB page;
//! - after a callback returns an error, no further callback happens;
//! - the number of callbacks per call is bounded;
//! - on an error no register has changed; on `Resume` RIP has not moved; on
//!   `Done` it has.
#![no_main]

mod common;

use common::{Input, MMIO_HOLE, RAM_SIZE, mode_state};
use libfuzzer_sys::fuzz_target;
use nvmm_assist::{
    AccessType, BusError, CompareWrite, GuestRam, MemExit, MmioBus, Outcome, RamStatus, Registers,
    SegmentAttributes, SegmentRegister, Vendor, assist_mem,
};

/// Generous bound on callbacks for one call (a REP batch stays within a
/// page per operand, so far fewer are needed).
const MAX_CALLS: u32 = 20_000;

/// Shared bookkeeping of the mocks: call count, injected failure, and the
/// "nothing after a failure" check.
struct Bus {
    ram: Vec<u8>,
    calls: u32,
    fail_at: u32,
    failed: bool,
    mmio_seed: u64,
}

impl Bus {
    fn enter(&mut self, gpa: u64, len: usize) -> Result<(), BusError> {
        assert!(!self.failed, "callback after a failed callback");
        assert!(len > 0, "empty access");
        let last = gpa.checked_add(len as u64 - 1).expect("access wraps");
        assert_eq!(
            gpa >> 12,
            last >> 12,
            "access crosses a page: {gpa:#x}+{len}"
        );
        self.calls += 1;
        assert!(self.calls <= MAX_CALLS, "unbounded callbacks");
        if self.calls == self.fail_at {
            self.failed = true;
            return Err(BusError(5));
        }
        Ok(())
    }
    fn ram_range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        if gpa >> 12 == MMIO_HOLE >> 12 {
            return None;
        }
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.ram.len()).then_some(start..end)
    }
}

struct Ram<'a>(&'a std::cell::RefCell<Bus>);
struct Mmio<'a>(&'a std::cell::RefCell<Bus>);

impl GuestRam for Ram<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        let mut bus = self.0.borrow_mut();
        bus.enter(gpa, buf.len())?;
        match bus.ram_range(gpa, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&bus.ram[r]);
                Ok(RamStatus::Done)
            }
            None => Ok(RamStatus::NotRam),
        }
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<RamStatus, BusError> {
        let mut bus = self.0.borrow_mut();
        bus.enter(gpa, data.len())?;
        match bus.ram_range(gpa, data.len()) {
            Some(r) => {
                bus.ram[r].copy_from_slice(data);
                Ok(RamStatus::Done)
            }
            None => Ok(RamStatus::NotRam),
        }
    }
    fn compare_and_write(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<CompareWrite, BusError> {
        let mut bus = self.0.borrow_mut();
        assert_eq!(expected.len(), new.len());
        assert!(new.len() <= 16);
        bus.enter(gpa, new.len())?;
        match bus.ram_range(gpa, new.len()) {
            Some(r) if bus.ram[r.clone()] == *expected => {
                bus.ram[r].copy_from_slice(new);
                Ok(CompareWrite::Written)
            }
            Some(_) => Ok(CompareWrite::Mismatch),
            None => Ok(CompareWrite::NotRam),
        }
    }
}

impl MmioBus for Mmio<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        let mut bus = self.0.borrow_mut();
        bus.enter(gpa, buf.len())?;
        for b in buf.iter_mut() {
            bus.mmio_seed = bus
                .mmio_seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1);
            *b = (bus.mmio_seed >> 56) as u8;
        }
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.0.borrow_mut().enter(gpa, data.len())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode_sel = input.u8();
    let flags = input.u8();
    let insn_len = usize::from(input.u8() % 16);
    let insn: [u8; 15] = input.bytes();
    let gpa = input.value();
    let access = match input.u8() % 3 {
        0 => AccessType::Read,
        1 => AccessType::Write,
        _ => AccessType::Execute,
    };
    let fail_at = u32::from(input.u8());

    let mut regs = Registers {
        rip: input.value(),
        rflags: 2 | (input.u64() & ((1 << 10) | (1 << 18))), // DF, AC
        cr3: input.u64() & (RAM_SIZE as u64 - 1) & !0xFFF,
        cr4: input.u64() & ((1 << 4) | (1 << 5) | (1 << 20) | (1 << 21)), // PSE PAE SMEP SMAP
        efer: input.u64() & (1 << 11),                                    // NXE
        xmm: Some([0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210; 16]),
        // Both vendors' rules are fuzzed (flags bit 5 picks one).
        ..Registers::zeroed(if flags & 32 == 0 {
            Vendor::Intel
        } else {
            Vendor::Amd
        })
    };
    for g in regs.gprs.iter_mut() {
        *g = input.value();
    }
    for (n, s) in regs.segments.iter_mut().enumerate() {
        let attributes = if flags & 2 == 0 {
            // Present, accessed read/write data (CS gets its mode below).
            SegmentAttributes::new(3, true, 0, true, false, false, true, true)
        } else {
            SegmentAttributes(input.u16())
        };
        *s = SegmentRegister {
            selector: (n as u16) << 3,
            base: if flags & 4 == 0 { 0 } else { input.value() },
            limit: if flags & 8 == 0 {
                u32::MAX
            } else {
                input.u32()
            },
            attributes,
        };
    }
    mode_state(mode_sel, &mut regs, flags & 1 != 0);
    if flags & 16 != 0 {
        // Arbitrary control registers and CS attributes, coherent or not.
        regs.cr0 = input.u64();
        regs.efer = input.u64();
        regs.segments[1].attributes = SegmentAttributes(input.u16());
    }

    // The rest of the input is guest RAM (page tables, instruction bytes).
    let mut ram = vec![0u8; RAM_SIZE];
    let n = input.0.len().min(RAM_SIZE);
    ram[..n].copy_from_slice(&input.0[..n]);
    let bus = std::cell::RefCell::new(Bus {
        ram,
        calls: 0,
        fail_at: if fail_at == 0 { u32::MAX } else { fail_at },
        failed: false,
        mmio_seed: u64::from(mode_sel),
    });

    let before = regs.clone();
    let exit = MemExit {
        gpa,
        access,
        instruction: &insn[..insn_len],
    };
    let result = assist_mem(&mut regs, &mut Ram(&bus), &mut Mmio(&bus), &exit);
    match result {
        Err(_) => assert_eq!(regs, before, "registers changed on error"),
        Ok(Outcome::Resume) => assert_eq!(regs.rip, before.rip, "RIP moved on Resume"),
        Ok(Outcome::Done) => assert_ne!(regs.rip, before.rip, "RIP did not move on Done"),
    }
});
