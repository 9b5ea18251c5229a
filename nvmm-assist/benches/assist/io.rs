//! The port I/O and bulk string rows, and the exit counts of 4 KiB string
//! operations.

use std::hint::black_box;

use nvmm_assist::{
    AccessType, FetchCache, IoExit, MemExit, Outcome, PortIo, Registers, Segment, assist_io,
    assist_mem_cached,
};

use crate::devices::{Device, FlatRam, Framebuffer};
use crate::modes;
use crate::support::memdev::Guest;
use crate::support::{RecordingPorts, TestRam};
use crate::timing::{Runner, runner};
use crate::{CODE, MMIO};

/// Non-string port I/O in 64-bit mode: `out dx, al` or `in al, dx`.
pub fn io_runner(input: bool) -> Runner {
    let (mut regs, mem) = modes::long_mode();
    regs.gprs[2] = 0x3F8;
    let mut ram = FlatRam { mem };
    let mut mmio = Device::default();
    let mut ports = crate::devices::SumPort::default();
    let exit = IoExit {
        port: 0x3F8,
        input,
        operand_size: 1,
        address_size: 8,
        rep: false,
        string: false,
        segment: None,
        npc: CODE + 1,
    };
    runner(move || {
        regs.rip = CODE;
        let r = assist_io(&mut regs, &mut ram, &mut mmio, &mut ports, black_box(&exit));
        assert_eq!(r, Ok(Outcome::Done));
    })
}

/// One assist call of a 4 KiB `rep outsb` (page-aligned source, so one
/// batch) to `ports`.
pub fn rep_outsb_runner<P: PortIo + 'static>(mut ports: P) -> Runner {
    let (mut regs, mem) = modes::long_mode();
    let mut ram = FlatRam { mem };
    let mut mmio = Device::default();
    let exit = IoExit {
        port: 0x3F8,
        input: false,
        operand_size: 1,
        address_size: 8,
        rep: true,
        string: true,
        segment: Some(Segment::Ds),
        npc: CODE + 2,
    };
    runner(move || {
        regs.rip = CODE;
        regs.gprs[6] = 0x4000; // RSI
        regs.gprs[1] = 4096; // RCX
        regs.gprs[2] = 0x3F8; // DX
        let r = assist_io(&mut regs, &mut ram, &mut mmio, &mut ports, black_box(&exit));
        assert_eq!(r, Ok(Outcome::Done));
    })
}

/// One assist call of a 4 KiB `rep stosd` (1024 elements) to a framebuffer.
pub fn rep_stosd_runner(batches: bool) -> Runner {
    let (mut regs, mem) = modes::long_mode();
    let mut ram = FlatRam { mem };
    let mut fb = Framebuffer {
        mem: vec![0; 4096],
        batches,
    };
    let exit = MemExit {
        gpa: MMIO,
        access: AccessType::Write,
        instruction: &[0xF3, 0xAB],
    };
    let mut cache = FetchCache::new();
    runner(move || {
        regs.rip = CODE;
        regs.gprs[7] = MMIO; // RDI
        regs.gprs[1] = 1024; // RCX
        regs.gprs[0] = 0x00FF_00FF; // EAX
        let r = assist_mem_cached(&mut regs, &mut ram, &mut fb, black_box(&exit), &mut cache);
        assert_eq!(r, Ok(Outcome::Done));
    })
}

/// Assist calls until a REP memory instruction is done.
fn rep_calls(
    bytes: &[u8],
    setup: impl Fn(&mut Guest),
    exit_gpa: impl Fn(&Registers) -> u64,
) -> usize {
    let mut g = Guest::long64();
    setup(&mut g);
    g.run_rep(bytes, exit_gpa, 1_000_000)
}

fn rep_outsb_calls() -> usize {
    let mut g = Guest::long64();
    let mut ports = RecordingPorts::default();
    g.regs.gprs[6] = 0x4000; // RSI: 4 KiB of RAM
    g.regs.gprs[1] = 4096; // RCX
    g.regs.gprs[2] = 0x3F8; // DX
    let exit = IoExit {
        port: 0x3F8,
        input: false,
        operand_size: 1,
        address_size: 8,
        rep: true,
        string: true,
        segment: None,
        npc: 0x2002,
    };
    g.ram.put(0x2000, &[0xF3, 0x6E]);
    let mut ram: TestRam = g.ram.clone();
    for calls in 1..=1_000_000 {
        match assist_io(&mut g.regs, &mut ram, &mut g.mmio, &mut ports, &exit) {
            Ok(Outcome::Done) => {
                assert_eq!(ports.output.len(), 4096);
                return calls;
            }
            Ok(Outcome::Resume) => {}
            Err(e) => panic!("rep outsb failed: {e:?}"),
        }
    }
    usize::MAX
}

/// The assist calls (VM exits) of a 4 KiB `rep movsb` from RAM to MMIO, a
/// 4 KiB `rep stosd` to MMIO and a 4 KiB `rep outsb`, each with libnvmm's
/// count.
pub fn exit_counts() -> [(&'static str, usize, usize); 3] {
    let movsb = rep_calls(
        &[0xF3, 0xA4],
        |g| {
            g.regs.gprs[6] = 0x4000; // RSI in RAM
            g.regs.gprs[7] = 0x8000; // RDI in MMIO (two pages)
            g.regs.gprs[1] = 4096;
        },
        |r| r.gprs[7],
    );
    let stosd = rep_calls(
        &[0xF3, 0xAB],
        |g| {
            g.regs.gprs[7] = 0x8000;
            g.regs.gprs[1] = 1024;
        },
        |r| r.gprs[7],
    );
    let outsb = rep_outsb_calls();
    [
        ("rep movsb  RAM -> MMIO", movsb, 4096),
        ("rep stosd  -> MMIO", stosd, 1024),
        ("rep outsb  RAM -> port", outsb, 128),
    ]
}
