//! Fuzzes `nvmm_assist::assist_io` and `assist_io_cached` with arbitrary CPU
//! state, mode, I/O exit and guest memory (page tables and OUTS prefixes
//! included), and callbacks that can fail. Each input runs up to four calls
//! in a row, as the guest re-executes a REP batch that returned `Resume`
//! (with one `FetchCache` for all of them when the cached form is chosen).
//!
//! Properties, beyond "never panics" (overflow checks are on in fuzz builds):
//! - every RAM or MMIO access is non-empty and stays within one 4 KiB page;
//!   every port access is on the exit's port with the exit's size (a bulk
//!   `read_batch`/`write_batch`: a non-empty multiple of it, at most a
//!   batch of `IO_BATCH_BYTES`);
//! - after a callback returns an error, no further callback happens, with
//!   one documented exception: when a port fails part-way through an INS
//!   batch, the elements completed before it are written to memory (the
//!   assist commits the completed iterations and returns `Resume`);
//! - the number of callbacks per call is bounded;
//! - ordering: the memory operand is checked and translated before the
//!   first port access; after it, OUTS touches no memory and INS only
//!   writes its data, which it writes after the port access only;
//! - on an error no register has changed;
//! - on success: RIP is `exit.npc` on `Done` and unchanged on `Resume`;
//!   RFLAGS.RF is cleared on `Done` and set on `Resume`, nothing else in
//!   RFLAGS changes; IN writes AL/AX/EAX (EAX zero-extended), OUT nothing;
//! - INS/OUTS: the elements the port completed are the decrease of rCX
//!   (REP) and the move of rSI/rDI (`size` each, down if RFLAGS.DF), at the
//!   address size (16-bit writes keep bits 63:16, 32-bit writes clear
//!   bits 63:32); no other register changes; `Resume` exactly when
//!   iterations are left or the port failed part-way; INS writes exactly
//!   the completed elements' bytes to memory;
//! - the data: port element `k` (in iteration order) is the memory at
//!   rDI/rSI + k * size (- with RFLAGS.DF), its bytes in memory order;
//!   checked where a linear address is the physical one (segment bases 0,
//!   and paging off or intact identity page tables, which `page_tables`
//!   builds in some inputs so that paged batches get past the walk);
//! - a REP with a zero count (rCX at the address size) makes no callback
//!   and changes nothing but RIP (-> npc) and RF, on both vendors (the
//!   crate's `vendor.rs` row 3: the I/O assist writes nothing but RIP,
//!   unlike the memory string instructions' Intel row 1).
#![no_main]

use std::cell::RefCell;

mod common;

use common::{Input, MMIO_HOLE, RAM_SIZE, mode_state};
use libfuzzer_sys::fuzz_target;
use nvmm_assist::{
    BusError, CompareWrite, FetchCache, Gpr, GuestRam, IoExit, MmioBus, Outcome, PartialBatch,
    PortIo, RamStatus, Registers, Segment, SegmentAttributes, SegmentRegister, Vendor, assist_io,
    assist_io_cached,
};

/// Generous bound on callbacks for one call (a batch moves at most 4 KiB:
/// 4096 port elements, plus its memory accesses and page walks).
const MAX_CALLS: u32 = 20_000;
/// The most bytes one call moves for INS/OUTS (`io::IO_BATCH_BYTES`).
const BATCH_BYTES: usize = 4096;
const RFLAGS_DF: u64 = 1 << 10;
/// Where `page_tables` puts its tables: the top four pages of RAM.
const TABLES: usize = 0xC000;
const RFLAGS_RF: u64 = 1 << 16;

/// A count for rCX: small ones (including 0), page-sized ones and
/// arbitrary ones, with arbitrary upper bits.
fn count(input: &mut Input<'_>) -> u64 {
    match input.u8() % 6 {
        0 => input.u64() & !0xFFFF_FFFF, // zero at a32/a16, upper bits set
        1 => input.u64() & !0xFFFF | u64::from(input.u8() % 8),
        2 => u64::from(input.u16() & 0x1FFF),
        3 => 0x1_0000_0000 | u64::from(input.u16()),
        _ => input.value(),
    }
}

/// A memory callback's kind, for the ordering checks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    RamRead,
    RamWrite,
    RamCas,
    MmioRead,
    MmioWrite,
}

/// Shared bookkeeping of the mocks for one call: call count, injected
/// failures, the "nothing after a failure" check and what the ports did.
struct Bus {
    ram: Vec<u8>,
    /// The exit being assisted.
    exit: IoExit,
    calls: u32,
    /// The memory callback (1-based) that fails, `u32::MAX` for none.
    fail_at: u32,
    /// The port element (0-based, over the call) that fails.
    port_fail_at: u64,
    failed: bool,
    port_failed: bool,
    /// Port elements completed in this call, and whether a port was touched.
    port_done: u64,
    port_touched: bool,
    /// Bytes of data written to RAM/MMIO after the first port access.
    data_written: usize,
    /// The values a port read returns, and the last IN's bytes.
    seed: u64,
    last_in: [u8; 4],
    /// The bytes the ports received, in order (OUT data).
    out: Vec<u8>,
    /// The bytes the port reads returned, in order (IN data).
    ins: Vec<u8>,
    /// The data writes to RAM or MMIO after the first port access.
    written: Vec<(u64, Vec<u8>)>,
}

impl Bus {
    fn reset(&mut self, fail_at: u32, port_fail_at: u64) {
        self.calls = 0;
        self.fail_at = fail_at;
        self.port_fail_at = port_fail_at;
        self.failed = false;
        self.port_failed = false;
        self.port_done = 0;
        self.port_touched = false;
        self.data_written = 0;
        self.out.clear();
        self.ins.clear();
        self.written.clear();
    }
    /// Counts a callback. After a failed memory callback nothing follows;
    /// after a failed port access no port access follows, and the memory
    /// callbacks `enter` admits after the port access (INS writing the
    /// elements completed before the failure, as documented: a port error
    /// part-way commits the completed iterations).
    fn count_call(&mut self, port: bool) {
        assert!(!self.failed, "callback after a failed callback");
        assert!(
            !(port && self.port_failed),
            "port access after a failed port access"
        );
        self.calls += 1;
        assert!(self.calls <= MAX_CALLS, "unbounded callbacks");
    }
    fn enter(&mut self, gpa: u64, len: usize, kind: Kind) -> Result<(), BusError> {
        self.count_call(false);
        if self.port_failed {
            assert!(
                self.port_done > 0,
                "{kind:?} after a port failure with nothing done"
            );
        }
        assert!(len > 0, "empty access");
        let last = gpa.checked_add(len as u64 - 1).expect("access wraps");
        assert_eq!(
            gpa >> 12,
            last >> 12,
            "access crosses a page: {gpa:#x}+{len}"
        );
        let data_write = matches!(kind, Kind::RamWrite | Kind::MmioWrite);
        if self.port_touched {
            assert!(
                self.exit.input && data_write,
                "{kind:?} after the port access (input: {})",
                self.exit.input
            );
        } else {
            assert!(!data_write, "{kind:?} before the port access");
        }
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
    /// Checks a port access of `elements` elements in `len` bytes; `Err`
    /// with the elements done before the injected failure, if it is among
    /// them.
    fn port(&mut self, port: u16, size: usize, len: usize) -> Result<(), usize> {
        self.count_call(true);
        assert!(self.exit.string || len == size, "plain I/O is one element");
        assert_eq!(port, self.exit.port, "wrong port");
        assert_eq!(size, usize::from(self.exit.operand_size), "wrong size");
        assert!(
            len > 0 && len % size == 0,
            "batch of {len} bytes, size {size}"
        );
        assert!(len <= BATCH_BYTES, "batch of {len} bytes");
        self.port_touched = true;
        let elements = (len / size) as u64;
        if self.port_fail_at >= self.port_done && self.port_fail_at < self.port_done + elements {
            let done = self.port_fail_at - self.port_done;
            self.port_done += done;
            self.port_failed = true;
            return Err(done as usize);
        }
        self.port_done += elements;
        Ok(())
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (self.seed >> 56) as u8;
        }
        // The bytes of a plain IN (buf is the whole access then).
        let n = buf.len().min(4);
        self.last_in = [0; 4];
        self.last_in[..n].copy_from_slice(&buf[..n]);
        self.ins.extend_from_slice(buf);
    }
}

struct Ram<'a>(&'a RefCell<Bus>);
struct Mmio<'a>(&'a RefCell<Bus>);
/// Ports with the default (per-element) `read_batch`/`write_batch`.
struct Ports<'a>(&'a RefCell<Bus>);
/// Ports that take a whole batch at once.
struct BulkPorts<'a>(&'a RefCell<Bus>);

impl GuestRam for Ram<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<RamStatus, BusError> {
        let mut bus = self.0.borrow_mut();
        bus.enter(gpa, buf.len(), Kind::RamRead)?;
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
        bus.enter(gpa, data.len(), Kind::RamWrite)?;
        match bus.ram_range(gpa, data.len()) {
            Some(r) => {
                bus.ram[r].copy_from_slice(data);
                bus.data_written += data.len();
                bus.written.push((gpa, data.to_vec()));
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
        bus.enter(gpa, new.len(), Kind::RamCas)?;
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
        bus.enter(gpa, buf.len(), Kind::MmioRead)?;
        buf.fill(0x6E); // an OUTS opcode, for prefix fetches from MMIO
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        let mut bus = self.0.borrow_mut();
        bus.enter(gpa, data.len(), Kind::MmioWrite)?;
        bus.data_written += data.len();
        bus.written.push((gpa, data.to_vec()));
        Ok(())
    }
}

impl PortIo for Ports<'_> {
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        let mut bus = self.0.borrow_mut();
        bus.port(port, buf.len(), buf.len())
            .map_err(|_| BusError(7))?;
        bus.fill(buf);
        Ok(())
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        let mut bus = self.0.borrow_mut();
        bus.port(port, data.len(), data.len())
            .map_err(|_| BusError(7))?;
        bus.out.extend_from_slice(data);
        Ok(())
    }
}

impl PortIo for BulkPorts<'_> {
    fn read(&mut self, port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        Ports(self.0).read(port, buf)
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        Ports(self.0).write(port, data)
    }
    fn read_batch(&mut self, port: u16, size: usize, buf: &mut [u8]) -> Result<(), PartialBatch> {
        let mut bus = self.0.borrow_mut();
        let r = bus.port(port, size, buf.len());
        let done = r.err().unwrap_or(buf.len() / size);
        bus.fill(&mut buf[..done * size]);
        r.map_err(|done| PartialBatch {
            done,
            error: BusError(9),
        })
    }
    fn write_batch(&mut self, port: u16, size: usize, data: &[u8]) -> Result<(), PartialBatch> {
        let mut bus = self.0.borrow_mut();
        let r = bus.port(port, size, data.len());
        let done = r.err().unwrap_or(data.len() / size);
        bus.out.extend_from_slice(&data[..done * size]);
        r.map_err(|done| PartialBatch {
            done,
            error: BusError(9),
        })
    }
}

/// Valid page tables in the top four pages of RAM (over the input's bytes
/// there), for the paging form the control registers select, that map
/// linear 0..RAM_SIZE to the same physical pages with 4 KiB pages: a
/// fuzzer rarely builds a complete walk itself, so most paged batches
/// would fault before any port access. `bits` sets the leaf entries'
/// accessed and dirty bits, and can clear one leaf's present or writable
/// bit.
///
/// Returns the tables' pages and their entry size, for [`tables_intact`].
fn page_tables(ram: &mut [u8], regs: &mut Registers, bits: u8) -> (Vec<u8>, usize) {
    let mut put = |at: usize, value: u64, wide: bool| {
        if wide {
            ram[at..at + 8].copy_from_slice(&value.to_le_bytes());
        } else {
            ram[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
        }
    };
    let long = regs.efer & (1 << 10) != 0;
    let pae = regs.cr4 & (1 << 5) != 0;
    let wide = long || pae;
    if long {
        regs.cr3 = 0xC000;
        put(0xC000, 0xD000 | 7, true);
        put(0xD000, 0xE000 | 7, true);
    } else if pae {
        // The PDPT: its entries have no R/W or U/S bits.
        regs.cr3 = 0xD000;
        put(0xD000, 0xE000 | 1, true);
    } else {
        regs.cr3 = 0xE000;
    }
    put(0xE000, 0xF000 | 7, wide);
    let step = if wide { 8 } else { 4 };
    for page in 0..(RAM_SIZE / 0x1000) as u64 {
        let mut pte = page << 12 | 7 | u64::from(bits & 0x60);
        if bits & 0x80 != 0 && page == u64::from(bits & 0xF) {
            pte &= if bits & 0x10 != 0 { !1 } else { !2 };
        }
        put(0xF000 + page as usize * step, pte, wide);
    }
    (ram[TABLES..].to_vec(), step)
}

/// Whether the tables `page_tables` wrote still map as they did: INS can
/// write its data over them (they are in the mapped range), and then
/// linear addresses are no longer physical ones. The walk's updates of
/// the accessed and dirty bits (bits 5 and 6 of each entry) are allowed.
fn tables_intact(ram: &[u8], tables: &(Vec<u8>, usize)) -> bool {
    let (old, step) = tables;
    ram[TABLES..]
        .chunks(*step)
        .zip(old.chunks(*step))
        .all(|(now, was)| now[0] & !0x60 == was[0] & !0x60 && now[1..] == was[1..])
}

/// A register write of `address_size` bytes: 16-bit keeps bits 63:16,
/// 32-bit zero-extends.
fn sized(old: u64, new: u64, address_size: u8) -> u64 {
    match address_size {
        2 => old & !0xFFFF | new & 0xFFFF,
        4 => new & 0xFFFF_FFFF,
        _ => new,
    }
}

/// The bytes INS and OUTS moved, with linear = physical = offset: port
/// element `k` (in iteration order) is the memory at rDI/rSI + k * size
/// (- if RFLAGS.DF), its bytes in memory order. Called after `expected`
/// checked the counts.
fn check_data(before: &Registers, exit: &IoExit, bus: &Bus) {
    let amask: u64 = match exit.address_size {
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    };
    let size = u64::from(exit.operand_size);
    let count = if exit.rep {
        before.gprs[Gpr::Rcx as usize] & amask
    } else {
        1
    };
    if count == 0 {
        return;
    }
    let reg = if exit.input { Gpr::Rdi } else { Gpr::Rsi };
    let offset = before.gprs[reg as usize] & amask;
    let memory: std::collections::HashMap<u64, u8> = bus
        .written
        .iter()
        .flat_map(|(gpa, bytes)| (0..).map(move |i| gpa + i).zip(bytes.iter().copied()))
        .collect();
    for k in 0..bus.port_done {
        let at = if before.rflags & RFLAGS_DF != 0 {
            offset.wrapping_sub(k * size)
        } else {
            offset.wrapping_add(k * size)
        } & amask;
        if amask - at < size - 1 {
            continue; // the element wraps at the address size
        }
        for j in 0..size {
            let port_byte = if exit.input {
                bus.ins[(k * size + j) as usize]
            } else {
                bus.out[(k * size + j) as usize]
            };
            let gpa = at + j;
            let mem_byte = if exit.input {
                *memory
                    .get(&gpa)
                    .unwrap_or_else(|| panic!("INS element {k} byte {j} not written at {gpa:#x}"))
            } else {
                match bus.ram_range(gpa, 1) {
                    Some(r) => bus.ram[r.start],
                    None => 0x6E, // what the MMIO mock reads
                }
            };
            assert_eq!(
                mem_byte,
                port_byte,
                "element {k} byte {j} at {gpa:#x} (DF {})",
                before.rflags & RFLAGS_DF != 0
            );
        }
    }
}

/// The registers `assist_io` must leave after a successful call that
/// returned `outcome`, given what the ports did.
fn expected(before: &Registers, exit: &IoExit, outcome: Outcome, bus: &Bus) -> Registers {
    let mut want = before.clone();
    match outcome {
        Outcome::Done => {
            want.rip = exit.npc;
            want.rflags &= !RFLAGS_RF;
        }
        Outcome::Resume => want.rflags |= RFLAGS_RF,
    }
    let size = u64::from(exit.operand_size);
    if !exit.string {
        assert_eq!(outcome, Outcome::Done, "plain I/O resumed");
        assert_eq!(bus.port_done, 1, "plain I/O without its port access");
        let rax = &mut want.gprs[Gpr::Rax as usize];
        if exit.input {
            let v = u64::from(u32::from_le_bytes(bus.last_in));
            *rax = match size {
                1 => *rax & !0xFF | v,
                2 => *rax & !0xFFFF | v,
                _ => v,
            };
        } else {
            assert_eq!(
                bus.out[..],
                before.gprs[Gpr::Rax as usize].to_le_bytes()[..size as usize]
            );
        }
        return want;
    }
    let amask = match exit.address_size {
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    };
    let rcx = before.gprs[Gpr::Rcx as usize];
    let count = if exit.rep { rcx & amask } else { 1 };
    if count == 0 {
        // Nothing accessed, nothing but RIP and RF written, on both vendors.
        assert_eq!(outcome, Outcome::Done, "zero count resumed");
        assert_eq!(bus.calls, 0, "zero count made a callback");
        return want;
    }
    let done = bus.port_done;
    assert!(
        done >= 1 && done <= count,
        "{done} elements done of {count}"
    );
    assert!(
        done * size <= BATCH_BYTES as u64,
        "batch of {done} elements"
    );
    let resume = exit.rep && done < count || bus.port_failed;
    assert_eq!(
        outcome == Outcome::Resume,
        resume,
        "{outcome:?} with {done} of {count} done, port failed: {}",
        bus.port_failed
    );
    if exit.input {
        assert_eq!(
            bus.data_written as u64,
            done * size,
            "INS wrote other than its elements"
        );
    } else {
        assert_eq!(bus.data_written, 0, "OUTS wrote memory");
        assert_eq!(bus.out.len() as u64, done * size, "OUTS sent other bytes");
    }
    let reg = if exit.input { Gpr::Rdi } else { Gpr::Rsi };
    let old = before.gprs[reg as usize];
    let moved = done * size;
    let new = if before.rflags & RFLAGS_DF != 0 {
        (old & amask).wrapping_sub(moved)
    } else {
        (old & amask).wrapping_add(moved)
    } & amask;
    want.gprs[reg as usize] = sized(old, new, exit.address_size);
    if exit.rep {
        want.gprs[Gpr::Rcx as usize] = sized(rcx, count - done, exit.address_size);
    }
    want
}

fn run<P: PortIo>(
    regs: &mut Registers,
    bus: &RefCell<Bus>,
    ports: &mut P,
    exit: &IoExit,
    cache: Option<&mut FetchCache>,
) -> Result<Outcome, nvmm_assist::Error> {
    match cache {
        Some(cache) => assist_io_cached(regs, &mut Ram(bus), &mut Mmio(bus), ports, exit, cache),
        None => assist_io(regs, &mut Ram(bus), &mut Mmio(bus), ports, exit),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode_sel = input.u8();
    let flags = input.u8();
    let flags2 = input.u8();
    let kind = input.u8();
    let sizes = input.u8();
    let exit_segment = input.u8();

    let exit = IoExit {
        port: input.u16(),
        input: kind & 1 != 0,
        // Mostly a string form, plain IN/OUT in a quarter of the inputs.
        string: kind & 6 != 0,
        rep: kind & 8 != 0,
        operand_size: match sizes & 0xF {
            0..=12 => [1, 2, 4][usize::from(sizes & 0xF) % 3],
            13 => 0,
            14 => 3,
            _ => 8,
        },
        address_size: match sizes >> 4 {
            0..=12 => [2, 4, 8][usize::from(sizes >> 4) % 3],
            13 => 0,
            14 => 1,
            _ => 16,
        },
        // A segment in 60% (any of the six), none (prefixes read) in 40%.
        segment: Segment::from_index(exit_segment % 10),
        npc: input.value(),
    };
    let fail_at = u32::from(input.u8());
    let port_fail = input.u16();

    let mut regs = Registers {
        rip: input.value(),
        rflags: 2 | (input.u64() & ((1 << 10) | (1 << 16) | (1 << 18))), // DF, RF, AC
        cr3: input.u64() & (RAM_SIZE as u64 - 1) & !0xFFF,
        cr4: input.u64() & ((1 << 4) | (1 << 5) | (1 << 20) | (1 << 21)), // PSE PAE SMEP SMAP
        efer: input.u64() & (1 << 11),                                    // NXE
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
    regs.gprs[Gpr::Rcx as usize] = count(&mut input);
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

    let input_pte = input.u8();

    // The rest of the input is guest RAM (page tables, OUTS prefixes).
    let mut ram = vec![0u8; RAM_SIZE];
    let n = input.0.len().min(RAM_SIZE);
    ram[..n].copy_from_slice(&input.0[..n]);
    let tables = (flags2 & 32 != 0).then(|| page_tables(&mut ram, &mut regs, input_pte));
    let bus = RefCell::new(Bus {
        ram,
        exit,
        calls: 0,
        fail_at: 0,
        port_fail_at: 0,
        failed: false,
        port_failed: false,
        port_done: 0,
        port_touched: false,
        data_written: 0,
        seed: u64::from(port_fail) << 8 | u64::from(mode_sel),
        last_in: [0; 4],
        out: Vec::new(),
        ins: Vec::new(),
        written: Vec::new(),
    });

    let mut cache = (flags2 & 1 != 0).then(FetchCache::new);
    let bulk = flags2 & 2 != 0;
    let rounds = 1 + (flags2 >> 2) % 4;
    for round in 0..rounds {
        // The injected failures apply to the first call only (flags2 bit 4:
        // to every call), so that later calls also run to completion.
        let inject = round == 0 || flags2 & 16 != 0;
        let (mem_fail, port_fail_at) = if inject {
            (
                if fail_at == 0 { u32::MAX } else { fail_at },
                // None, one of the first 16 elements, or any of a batch.
                match port_fail >> 14 {
                    0 | 3 => u64::MAX,
                    1 => u64::from(port_fail & 0xF),
                    _ => u64::from(port_fail & 0xFFF),
                },
            )
        } else {
            (u32::MAX, u64::MAX)
        };
        bus.borrow_mut().reset(mem_fail, port_fail_at);
        // Linear = physical = the offset for the data check: segment bases
        // 0, and paging off or the identity tables, still intact.
        let flat = flags & 4 == 0
            && (regs.cr0 & (1 << 31) == 0
                || tables
                    .as_ref()
                    .is_some_and(|t| tables_intact(&bus.borrow().ram, t)));
        let before = regs.clone();
        let result = if bulk {
            run(&mut regs, &bus, &mut BulkPorts(&bus), &exit, cache.as_mut())
        } else {
            run(&mut regs, &bus, &mut Ports(&bus), &exit, cache.as_mut())
        };
        match result {
            Err(_) => {
                assert_eq!(regs, before, "registers changed on error");
                break;
            }
            Ok(outcome) => {
                let want = expected(&before, &exit, outcome, &bus.borrow());
                if flat && exit.string {
                    check_data(&before, &exit, &bus.borrow());
                }
                assert_eq!(regs, want, "registers after {outcome:?}, exit {exit:?}");
                if outcome == Outcome::Done {
                    break;
                }
            }
        }
    }
});
