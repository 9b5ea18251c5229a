//! Guest RAM, page tables and the stop flag shared by several threads.
//!
//! These tests are meant for miri (`-Zmiri-many-seeds`) and ThreadSanitizer
//! (`cargo xtask ci` runs both): under plain `cargo test` they check the
//! results, under those tools they prove the accesses race-free. Before
//! guest RAM was accessed only with one-byte atomics, miri reported
//! "Undefined Behavior: Data race detected" in each of them: a non-atomic
//! read against a non-atomic write (`copy_nonoverlapping` in `read_guest`
//! and `write_guest`, the first test; the assist's RAM read in the third,
//! with seed 7 of `-Zmiri-many-seeds=0..8`; the stress test), and a
//! non-atomic read against an "atomic read-modify-write" (the page
//! walker's `AtomicU64::compare_exchange` on a page-table entry another
//! VCPU's walker was copying, the second test).
#![cfg(feature = "assist")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use crate::dyn_assist::AssistDyn;
use nvmm::model::{KernelModel, ScriptedExit};
use nvmm::nvmm_assist::{BusError, MmioBus, PortIo};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::{
    Cr, Error, Exit, Gpr, GvaAccess, HostMapping, Machine, Msr, Nvmm, Outcome, Prot, Rejection,
    Seg, Vcpu,
};

/// Iterations of each racing loop: enough for many interleavings, few
/// enough for miri.
const ROUNDS: u64 = if cfg!(miri) { 6 } else { 400 };

const P: u64 = 1;
const RW: u64 = 2;
const PS: u64 = 1 << 7;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
/// The 2 MiB page-directory entry that maps 0x4000_0000.
const PDE: u64 = 0x3000;

fn machine(model: &Arc<KernelModel>) -> Machine {
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    let ram = m.hva_map(0x10000).unwrap();
    m.gpa_map(&ram, 0, 0, 0x10000, Prot::ALL).unwrap();
    m
}

/// A one-page RAM window of fresh host memory, mapped read-write at `gpa`.
fn map_window(m: &Machine, gpa: u64) -> HostMapping {
    let window = m.hva_map(0x1000).unwrap();
    m.gpa_map(&window, 0, gpa, 0x1000, Prot::READ | Prot::WRITE)
        .unwrap();
    window
}

/// Whether `e` is the refusal of `hva_unmap` while an assist may still use
/// the host memory.
fn is_busy(e: &Error) -> bool {
    matches!(
        e,
        Error::Rejected {
            reason: Rejection::HostMappingBusy,
            ..
        }
    )
}

/// 4-level paging: 0x4000_0000 -> a 2 MiB page at 0x20_0000, with the
/// accessed and dirty bits of every entry clear.
fn write_page_tables(m: &Machine) {
    m.write_guest(0x1000, &(0x2000 | P | RW).to_le_bytes())
        .unwrap();
    m.write_guest(0x2000 + 8, &(PDE | P | RW).to_le_bytes())
        .unwrap();
    clear_accessed(m);
}

fn clear_accessed(m: &Machine) {
    m.write_guest(PDE, &(0x20_0000 | P | RW | PS).to_le_bytes())
        .unwrap();
}

fn long_mode_vcpu(m: &Machine, id: u32) -> Vcpu {
    let mut v = m.create_vcpu(id).unwrap();
    {
        let mut c = v.crs().unwrap();
        c.set(Cr::Cr3, 0x1000);
        c.set(Cr::Cr4, 1 << 5);
        c.set(Cr::Cr0, (1 << 31) | 1);
    }
    v.msrs().unwrap().set(Msr::Efer, (1 << 8) | (1 << 10));
    v
}

#[test]
fn read_guest_and_write_guest_on_the_same_bytes_from_two_threads() {
    let model = KernelModel::new();
    let m = machine(&model);
    thread::scope(|s| {
        s.spawn(|| {
            for i in 0..ROUNDS {
                m.write_guest(0x4000, &[i as u8; 16]).unwrap();
            }
        });
        s.spawn(|| {
            let mut buf = [0u8; 16];
            for _ in 0..ROUNDS {
                m.read_guest(0x4000, &mut buf).unwrap();
            }
        });
    });
    let mut buf = [0u8; 16];
    m.read_guest(0x4000, &mut buf).unwrap();
    assert_eq!(buf, [(ROUNDS - 1) as u8; 16]);
}

#[test]
fn two_vcpus_set_accessed_bits_in_shared_page_tables() {
    let model = KernelModel::new();
    let m = machine(&model);
    write_page_tables(&m);
    let vcpus = [long_mode_vcpu(&m, 0), long_mode_vcpu(&m, 1)];
    thread::scope(|s| {
        for (n, mut v) in vcpus.into_iter().enumerate() {
            s.spawn(move || {
                let access = if n == 0 {
                    GvaAccess::Read
                } else {
                    GvaAccess::Write
                };
                for _ in 0..ROUNDS {
                    assert_eq!(
                        v.gva_to_gpa_checked(0x4000_0123, access).unwrap(),
                        0x20_0123
                    );
                }
            });
        }
    });
    let mut pde = [0u8; 8];
    m.read_guest(PDE, &mut pde).unwrap();
    let pde = u64::from_le_bytes(pde);
    assert_eq!(pde & (A | D), A | D, "{pde:#x}");
    assert_eq!(pde & !(A | D), 0x20_0000 | P | RW | PS);
}

/// Records what `rep outsb` sends.
#[derive(Default)]
struct Sink(Vec<u8>);
impl PortIo for Sink {
    fn read(&mut self, _port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0);
        Ok(())
    }
    fn write(&mut self, _port: u16, data: &[u8]) -> Result<(), BusError> {
        self.0.extend_from_slice(data);
        Ok(())
    }
}

struct NoMmio;
impl MmioBus for NoMmio {
    fn read(&mut self, _gpa: u64, _buf: &mut [u8]) -> Result<(), BusError> {
        Err(BusError(libc::EFAULT))
    }
    fn write(&mut self, _gpa: u64, _data: &[u8]) -> Result<(), BusError> {
        Err(BusError(libc::EFAULT))
    }
}

/// A real-mode VCPU at CS:IP 0:0x1000 that will exit on `rep outsb` of
/// `len` bytes from DS:`src`.
fn queue_rep_outsb(model: &KernelModel, m: &Machine, v: &mut Vcpu, src: u64, len: u64) {
    {
        let mut g = v.gprs().unwrap();
        g.set(Gpr::Rsi, src);
        g.set(Gpr::Rcx, len);
        g.set_rip(0x1000);
    }
    let mut e = ScriptedExit::io(0xe9, false, 1, 0x1001);
    e.exit.u.io.address_size = 2;
    e.exit.u.io.rep = true;
    e.exit.u.io.str_ = true;
    e.exit.u.io.seg = sys::NVMM_X64_SEG_DS as i8;
    model.push_exit(m.id(), v.id(), e);
}

fn real_mode_vcpu(m: &Machine, id: u32) -> Vcpu {
    let mut v = m.create_vcpu(id).unwrap();
    let mut cs = v.segs().unwrap().get(Seg::Cs);
    (cs.selector, cs.base) = (0, 0);
    v.segs().unwrap().set(Seg::Cs, cs);
    v
}

/// Runs until the queued exit comes (a concurrent stop may come first).
fn run_to_io(v: &mut Vcpu) {
    loop {
        match v.run().unwrap() {
            Exit::Io(_) => return,
            Exit::Stopped => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// `ROUNDS` times: `rep outsb` of `len` bytes from DS:`src`, run to its
/// exit and assisted; what the port received, every byte of which must be
/// `byte` (RAM another thread keeps writing with it).
fn outsb_rounds(model: &KernelModel, m: &Machine, v: &mut Vcpu, src: u64, len: u64, byte: u8) {
    let mut sink = Sink::default();
    for _ in 0..ROUNDS {
        queue_rep_outsb(model, m, v, src, len);
        run_to_io(v);
        v.assist_io_dyn(&mut NoMmio, &mut sink).unwrap();
    }
    assert!(sink.0.iter().all(|b| *b == byte));
    assert_eq!(sink.0.len() as u64, len * ROUNDS);
}

#[test]
fn rep_outsb_reads_ram_while_another_thread_writes_it() {
    let model = KernelModel::new();
    let m = machine(&model);
    let mut v = real_mode_vcpu(&m, 0);
    m.write_guest(0x5000, &[7; 8]).unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..ROUNDS {
                m.write_guest(0x5000, &[7; 8]).unwrap();
            }
        });
        outsb_rounds(&model, &m, &mut v, 0x5000, 8, 7);
    });
}

/// Two VCPU threads (one translating through page tables whose accessed
/// and dirty bits a device keeps clearing, one running `rep outsb` from RAM
/// the device keeps writing), a device thread, and a thread hammering both
/// VCPUs' stop flags.
#[test]
fn stress_two_vcpus_a_device_and_stoppers() {
    let model = KernelModel::new();
    let m = machine(&model);
    write_page_tables(&m);
    m.write_guest(0x6000, &[0x5a; 4]).unwrap();
    let mut walker = long_mode_vcpu(&m, 0);
    let mut io = real_mode_vcpu(&m, 1);
    let stoppers = [walker.stopper(), io.stopper()];
    let finished = AtomicUsize::new(0);
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..ROUNDS {
                let gpa = walker
                    .gva_to_gpa_checked(0x4000_0042, GvaAccess::Write)
                    .unwrap();
                assert_eq!(gpa, 0x20_0042);
                // The walker's VCPU also runs (a stop may come first); the
                // run makes the state stale, the next translation fetches it.
                model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
                while walker.run().unwrap() == Exit::Stopped {}
            }
            finished.fetch_add(1, Ordering::SeqCst);
        });
        s.spawn(|| {
            outsb_rounds(&model, &m, &mut io, 0x6000, 4, 0x5a);
            finished.fetch_add(1, Ordering::SeqCst);
        });
        s.spawn(|| {
            // Bounded, so that the VCPU threads always make progress.
            for _ in 0..2 * ROUNDS {
                if finished.load(Ordering::SeqCst) == 2 {
                    break;
                }
                for st in &stoppers {
                    st.stop();
                }
                thread::yield_now();
            }
        });
        s.spawn(|| {
            for _ in 0..ROUNDS {
                clear_accessed(&m);
                m.write_guest(0x6000, &[0x5a; 4]).unwrap();
                thread::yield_now();
            }
        });
    });
    assert_eq!(finished.load(Ordering::SeqCst), 2);
}

/// The bus error a device callback returns for a failed machine call.
fn bus(e: Error) -> BusError {
    BusError(e.errno())
}

/// A device that moves a RAM window (think of a PCI BAR) when the guest
/// writes its MMIO register, from inside the assist's callback.
struct Remapper<'a> {
    machine: &'a Machine,
    window: HostMapping,
    unmap_refused: Option<Error>,
}
impl MmioBus for Remapper<'_> {
    fn read(&mut self, _gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0);
        Ok(())
    }
    fn write(&mut self, _gpa: u64, data: &[u8]) -> Result<(), BusError> {
        let to = 0x20000 + u64::from(data[0]) * 0x1000;
        let m = self.machine;
        let from = m
            .gpa_areas()
            .iter()
            .find(|a| a.hva == self.window.as_ptr().addr())
            .map(|a| a.gpa);
        if let Some(from) = from {
            m.gpa_unmap(from, 0x1000).map_err(bus)?;
        }
        let map = || m.gpa_map(&self.window, 0, to, 0x1000, Prot::READ | Prot::WRITE);
        map().map_err(bus)?;
        // Unmapping the host memory itself must wait until the assist is
        // done with its view of the areas: refused, not a deadlock.
        m.gpa_unmap(to, 0x1000).map_err(bus)?;
        self.unmap_refused = m.hva_unmap(self.window).err();
        map().map_err(bus)
    }
}

/// Before the assists worked on a snapshot of the area list, they held its
/// read lock across the device callbacks, and this callback's `gpa_unmap`
/// (a write lock on the same thread) deadlocked: the assist thread never
/// answered and the test failed at the timeout.
#[test]
fn a_device_callback_may_remap_guest_memory() {
    let model = KernelModel::new();
    let m = Arc::new(machine(&model));
    let window = map_window(&m, 0x20000);
    // This is the VCPU's first assist, so it takes a snapshot of the area
    // list at its first lookup even for this MMIO-only `mov` (its copy of
    // the guest ranges is of no list yet): the callback's `hva_unmap` is
    // refused. See `an_mmio_only_assist_pins_no_host_memory` for later
    // assists.
    let mut v = real_mode_vcpu(&m, 0);
    v.gprs().unwrap().set(Gpr::Rax, 2);
    v.gprs().unwrap().set_rip(0x1000);
    // mov [0x0300], al, to an MMIO register.
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::memory(0xfee0_0300, true, &[0xA2, 0x00, 0x03]),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let m = m.clone();
        thread::spawn(move || {
            v.run().unwrap();
            let mut dev = Remapper {
                machine: &m,
                window,
                unmap_refused: None,
            };
            let outcome = v.assist_mem_dyn(&mut dev);
            tx.send((outcome.map_err(|e| e.to_string()), dev.unmap_refused))
                .unwrap();
        })
    };
    let (outcome, refused) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the assist deadlocked in the device callback");
    worker.join().unwrap();
    assert_eq!(outcome, Ok(Outcome::Done));
    assert!(refused.as_ref().is_some_and(is_busy), "{refused:?}");
    let areas = m.gpa_areas();
    assert!(
        areas
            .iter()
            .any(|a| a.gpa == 0x22000 && a.hva == window.as_ptr().addr())
    );
    // Once the assist is over, the memory can go.
    m.gpa_unmap(0x22000, 0x1000).unwrap();
    m.hva_unmap(window).unwrap();
}

/// A device whose register write unmaps a RAM window, host memory too,
/// from inside the assist's callback, and keeps how that went.
struct Unmapper<'a> {
    machine: &'a Machine,
    window: HostMapping,
    window_gpa: u64,
    written: Vec<u8>,
    hva_unmap: Option<Result<(), Error>>,
}
impl<'a> Unmapper<'a> {
    fn new(machine: &'a Machine, window: HostMapping, window_gpa: u64) -> Self {
        Unmapper {
            machine,
            window,
            window_gpa,
            written: Vec::new(),
            hva_unmap: None,
        }
    }
}
impl MmioBus for Unmapper<'_> {
    fn read(&mut self, _gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0xee);
        Ok(())
    }
    fn write(&mut self, _gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.written.extend_from_slice(data);
        self.machine
            .gpa_unmap(self.window_gpa, 0x1000)
            .map_err(bus)?;
        self.hva_unmap = Some(self.machine.hva_unmap(self.window));
        Ok(())
    }
}

/// MMIO that reads 0xee and records writes.
#[derive(Default)]
struct Recorder(Vec<u8>);
impl MmioBus for Recorder {
    fn read(&mut self, _gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0xee);
        Ok(())
    }
    fn write(&mut self, _gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.0.extend_from_slice(data);
        Ok(())
    }
}

/// A real-mode VCPU with DS based at `ds_base` and ES at `es_base`
/// (selector = base / 16).
fn movs_vcpu(m: &Machine, ds_base: u64, es_base: u64) -> Vcpu {
    let mut v = real_mode_vcpu(m, 0);
    for (seg, base) in [(Seg::Ds, ds_base), (Seg::Es, es_base)] {
        let mut s = v.segs().unwrap().get(seg);
        (s.selector, s.base) = ((base >> 4) as u16, base);
        v.segs().unwrap().set(seg, s);
    }
    v
}

/// Queues a memory exit at `gpa` with the instruction `bytes` at IP 0x1000
/// (SI = DI = 0) and runs to it.
fn exit_on(model: &KernelModel, m: &Machine, v: &mut Vcpu, gpa: u64, write: bool, bytes: &[u8]) {
    {
        let mut g = v.gprs().unwrap();
        g.set(Gpr::Rsi, 0);
        g.set(Gpr::Rdi, 0);
        g.set_rip(0x1000);
    }
    model.push_exit(m.id(), v.id(), ScriptedExit::memory(gpa, write, bytes));
    assert!(matches!(v.run().unwrap(), Exit::Memory(_)));
}

/// `mov [0x300], al` writing MMIO at 0xfee00300.
const MOV_TO_MMIO: [u8; 3] = [0xA2, 0x00, 0x03];
/// `movsb`: DS:SI to ES:DI.
const MOVSB: [u8; 1] = [0xA4];

/// Runs one MMIO-only assist, after which the VCPU's copy of the guest
/// ranges is current (a VCPU's first assist always takes a snapshot), so
/// that a snapshot in the assist under test is that assist's own doing.
fn warm(model: &KernelModel, m: &Machine, v: &mut Vcpu) {
    exit_on(model, m, v, 0xfee0_0300, true, &MOV_TO_MMIO);
    assert_eq!(
        v.assist_mem_dyn(&mut Recorder::default()).unwrap(),
        Outcome::Done
    );
}

/// The assists take their snapshot of the area list lazily: an assist that
/// only touches MMIO holds none, so a device callback may unmap guest RAM,
/// host memory included, while it runs (with the earlier snapshot taken
/// up front, that `hva_unmap` was refused as busy).
#[test]
fn an_mmio_only_assist_pins_no_host_memory() {
    let model = KernelModel::new();
    let m = machine(&model);
    let window = map_window(&m, 0x20000);
    let mut v = real_mode_vcpu(&m, 0);
    v.gprs().unwrap().set(Gpr::Rax, 0x42);
    warm(&model, &m, &mut v);
    exit_on(&model, &m, &mut v, 0xfee0_0300, true, &MOV_TO_MMIO);
    let mut dev = Unmapper::new(&m, window, 0x20000);
    assert_eq!(v.assist_mem_dyn(&mut dev).unwrap(), Outcome::Done);
    assert_eq!(dev.written, [0x42]);
    assert!(matches!(dev.hva_unmap, Some(Ok(()))), "{:?}", dev.hva_unmap);
    assert!(m.gpa_areas().iter().all(|a| a.gpa != 0x20000));
}

/// An assist that reads guest RAM before a device callback holds its
/// snapshot through the callback: the callback can remove the guest
/// mapping but not free the host memory the assist may still use, and can
/// once the assist is over.
#[test]
fn a_ram_access_keeps_host_memory_mapped_through_later_callbacks() {
    let model = KernelModel::new();
    let m = machine(&model);
    let window = map_window(&m, 0x20000);
    m.write_guest(0x20000, &[0x5a]).unwrap();
    // movsb from the window (RAM, DS = 0x2000) to MMIO at 0x30000 (ES).
    let mut v = movs_vcpu(&m, 0x20000, 0x30000);
    warm(&model, &m, &mut v);
    exit_on(&model, &m, &mut v, 0x30000, true, &MOVSB);
    let mut dev = Unmapper::new(&m, window, 0x20000);
    assert_eq!(v.assist_mem_dyn(&mut dev).unwrap(), Outcome::Done);
    assert_eq!(dev.written, [0x5a]);
    assert!(
        dev.hva_unmap
            .as_ref()
            .is_some_and(|r| r.as_ref().is_err_and(is_busy)),
        "{:?}",
        dev.hva_unmap
    );
    m.hva_unmap(window).unwrap();
}

/// Until an assist needs a snapshot, each lookup sees the area list as it
/// is then: RAM that a device callback maps during the assist is RAM for
/// the instruction's next access (the VCPU's copy of the guest ranges is
/// out of date, so the lookup takes a snapshot of the new list).
#[test]
fn ram_mapped_by_a_callback_is_ram_for_the_next_access() {
    struct MapOnRead<'a> {
        machine: &'a Machine,
        window: HostMapping,
        writes: usize,
    }
    impl MmioBus for MapOnRead<'_> {
        fn read(&mut self, _gpa: u64, buf: &mut [u8]) -> Result<(), BusError> {
            self.machine
                .gpa_map(&self.window, 0, 0x40000, 0x1000, Prot::READ | Prot::WRITE)
                .map_err(bus)?;
            buf.fill(0x77);
            Ok(())
        }
        fn write(&mut self, _gpa: u64, _data: &[u8]) -> Result<(), BusError> {
            self.writes += 1;
            Ok(())
        }
    }
    let model = KernelModel::new();
    let m = machine(&model);
    let window = m.hva_map(0x1000).unwrap();
    // movsb from MMIO at 0x30000 (DS) to 0x40000 (ES), unmapped until the
    // device's read maps the window there.
    let mut v = movs_vcpu(&m, 0x30000, 0x40000);
    warm(&model, &m, &mut v);
    exit_on(&model, &m, &mut v, 0x30000, false, &MOVSB);
    let mut dev = MapOnRead {
        machine: &m,
        window,
        writes: 0,
    };
    assert_eq!(v.assist_mem_dyn(&mut dev).unwrap(), Outcome::Done);
    assert_eq!(dev.writes, 0, "the store went to MMIO, not to the new RAM");
    let mut byte = [0u8];
    m.read_guest(0x40000, &mut byte).unwrap();
    assert_eq!(byte, [0x77]);
}

/// A device thread keeps unmapping and remapping a RAM window, freeing the
/// host memory whenever `hva_unmap` allows it (the model frees it then, so
/// a use after that is a use after free: miri reports it), while the VCPU
/// thread runs `movsb` from the window to MMIO. Each assist reads the
/// window's byte, a fresh window's zero, or MMIO (when the window is not
/// mapped at that moment), and never freed memory.
#[test]
fn host_memory_is_never_freed_under_a_running_assist() {
    let model = KernelModel::new();
    let m = machine(&model);
    let first = map_window(&m, 0x20000);
    m.write_guest(0x20000, &[0x5a]).unwrap();
    let mut v = movs_vcpu(&m, 0x20000, 0x30000);
    let last = thread::scope(|s| {
        let device = s.spawn(|| {
            let mut window = first;
            for _ in 0..ROUNDS {
                m.gpa_unmap(0x20000, 0x1000).unwrap();
                match m.hva_unmap(window) {
                    Ok(()) => window = m.hva_map(0x1000).unwrap(),
                    Err(e) if is_busy(&e) => {}
                    Err(e) => panic!("{e}"),
                }
                m.gpa_map(&window, 0, 0x20000, 0x1000, Prot::READ | Prot::WRITE)
                    .unwrap();
                m.write_guest(0x20000, &[0x5a]).unwrap();
            }
            window
        });
        let mut dev = Recorder::default();
        for _ in 0..ROUNDS {
            exit_on(&model, &m, &mut v, 0x30000, true, &MOVSB);
            assert_eq!(v.assist_mem_dyn(&mut dev).unwrap(), Outcome::Done);
        }
        assert_eq!(dev.0.len() as u64, ROUNDS);
        assert!(
            dev.0.iter().all(|b| [0x5a, 0, 0xee].contains(b)),
            "{:?}",
            dev.0
        );
        device.join().unwrap()
    });
    // No snapshot outlived its assist: the last window can go.
    m.gpa_unmap(0x20000, 0x1000).unwrap();
    m.hva_unmap(last).unwrap();
}
