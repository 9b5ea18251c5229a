//! The helpers a VMM would otherwise write itself: mode set-up, segment
//! attributes by name, the interrupt window, assist faults as events and
//! port I/O without an MMIO bus, run against the in-process kernel model
//! (a MODEL of NetBSD's kernel, not NetBSD: these tests check what the
//! crate writes into the comm page and what a run commits).

use std::sync::Arc;

use nvmm::model::{KernelModel, ScriptedExit};
// The assist tests need the (default) `assist` feature; the rest run without it.
#[cfg(feature = "assist")]
use nvmm::nvmm_assist::{self, BusError, Exception, PortIo};
use nvmm::nvmm_sys as sys;
use nvmm::sys::OpenMode;
use nvmm::x86::{cr0, cr4, efer, rflags};
#[cfg(feature = "assist")]
use nvmm::{Error, Op};
use nvmm::{Exit, ExitState, Machine, Nvmm, Prot, SegAttrib, SegFields};

fn setup() -> (Arc<KernelModel>, Machine) {
    let model = KernelModel::new();
    let nvmm = Nvmm::open_with(model.clone(), OpenMode::User).unwrap();
    let m = nvmm.create_machine().unwrap();
    (model, m)
}

fn attrib(s: &sys::nvmm_x64_state_seg) -> SegAttrib {
    // SAFETY: the attribute bitfield is one u16.
    SegAttrib(unsafe { (&raw const s.attrib).cast::<u16>().read() })
}

/// EFER.SVME, which the model's SVM backend forces on commit.
const EFER_SVME: u64 = 1 << 12;

fn halt_after_run(model: &KernelModel, m: &Machine) {
    model.push_exit(m.id(), 0, ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED));
}

#[test]
fn long_mode_setup_commits_what_nvmm_needs_with_one_getstate() {
    let (model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    // After a HLT exit no class is cached.
    halt_after_run(&model, &m);
    v.run().unwrap();
    let before = model.getstates();
    v.setup_long_mode(0x2000, 0x40_0000, 0x9_0000).unwrap();
    assert_eq!(
        model.getstates() - before,
        1,
        "one GETSTATE for the four classes"
    );
    halt_after_run(&model, &m);
    assert_eq!(v.run().unwrap(), Exit::Halted);
    let hw = model.hw_state(m.id(), 0);
    assert_eq!(
        hw.crs[sys::NVMM_X64_CR_CR0],
        cr0::PE | cr0::ET | cr0::NE | cr0::WP | cr0::PG
    );
    assert_eq!(hw.crs[sys::NVMM_X64_CR_CR3], 0x2000);
    assert_eq!(hw.crs[sys::NVMM_X64_CR_CR4], cr4::PAE);
    // The model's default backend is SVM, which adds EFER.SVME on commit
    // (nvmm_x86_svm.c svm_vcpu_setstate) and hides it on read.
    assert_eq!(
        hw.msrs[sys::NVMM_X64_MSR_EFER] & !EFER_SVME,
        efer::LME | efer::LMA
    );
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RIP], 0x40_0000);
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RSP], 0x9_0000);
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RFLAGS], rflags::FIXED);
    let cs = attrib(&hw.segs[sys::NVMM_X64_SEG_CS]);
    assert!(cs.l() && !cs.def() && cs.p() && cs.s());
    let tr = attrib(&hw.segs[sys::NVMM_X64_SEG_TR]);
    assert_eq!(
        (tr.typ(), tr.s(), tr.p()),
        (11, false, true),
        "busy 64-bit TSS"
    );
    assert_eq!(hw.segs[sys::NVMM_X64_SEG_TR].limit, 0x67);
    assert!(!attrib(&hw.segs[sys::NVMM_X64_SEG_LDT]).p(), "LDT unusable");
    for s in [sys::NVMM_X64_SEG_DS, sys::NVMM_X64_SEG_SS] {
        assert_eq!(attrib(&hw.segs[s]), SegAttrib::DATA32);
        assert_eq!(hw.segs[s].limit, 0xFFFF_FFFF);
    }
}

#[test]
fn protected_and_real_mode_setups() {
    let (model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    // From long mode back down, so every field is really written.
    v.setup_long_mode(0x2000, 0x1000, 0x2000).unwrap();
    v.setup_protected_mode(0x10_0000, 0x8000).unwrap();
    halt_after_run(&model, &m);
    v.run().unwrap();
    let hw = model.hw_state(m.id(), 0);
    assert_eq!(hw.crs[sys::NVMM_X64_CR_CR0], cr0::PE | cr0::ET | cr0::NE);
    assert_eq!(hw.crs[sys::NVMM_X64_CR_CR4], 0);
    assert_eq!(hw.msrs[sys::NVMM_X64_MSR_EFER] & !EFER_SVME, 0);
    assert_eq!(attrib(&hw.segs[sys::NVMM_X64_SEG_CS]), SegAttrib::CODE32);
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RIP], 0x10_0000);

    v.setup_real_mode(0x1234, 0x10).unwrap();
    halt_after_run(&model, &m);
    v.run().unwrap();
    let hw = model.hw_state(m.id(), 0);
    let cs = &hw.segs[sys::NVMM_X64_SEG_CS];
    assert_eq!((cs.selector, cs.base, cs.limit), (0x1234, 0x12340, 0xFFFF));
    assert_eq!(attrib(cs), SegAttrib::CODE16);
    assert_eq!(hw.crs[sys::NVMM_X64_CR_CR0] & (cr0::PE | cr0::PG), 0);
    assert_eq!(hw.gprs[sys::NVMM_X64_GPR_RIP], 0x10);
    let idt = &hw.segs[sys::NVMM_X64_SEG_IDT];
    assert_eq!((idt.base, idt.limit), (0, 0x3FF));
}

#[test]
fn named_segment_fields_round_trip_and_match_the_positional_form() {
    let f = SegFields {
        typ: 9,
        s: false,
        dpl: 3,
        p: true,
        avl: true,
        l: false,
        def: true,
        g: true,
    };
    let a = SegAttrib::from_fields(f);
    assert_eq!(
        a,
        SegAttrib::new(9, false, 3, true, true, false, true, true)
    );
    assert_eq!(a.fields(), f);
    assert_eq!(SegAttrib::CODE64.0, 0xA9B);
    assert_eq!(SegAttrib::TSS_BUSY.0, 0x8B);
}

#[test]
fn can_take_interrupt_needs_if_no_shadow_and_no_pending_event() {
    let open = ExitState {
        rflags: rflags::FIXED | rflags::IF,
        ..Default::default()
    };
    assert!(open.can_take_interrupt());
    assert!(
        !ExitState {
            rflags: rflags::FIXED,
            ..open
        }
        .can_take_interrupt()
    );
    assert!(
        !ExitState {
            int_shadow: true,
            ..open
        }
        .can_take_interrupt()
    );
    assert!(
        !ExitState {
            evt_pending: true,
            ..open
        }
        .can_take_interrupt()
    );
}

#[test]
fn requesting_the_window_keeps_the_shadow_and_makes_no_syscall() {
    let (model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    // The guest just executed STI: the exit reports the shadow.
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::reason(sys::NVMM_VCPU_EXIT_HALTED).with_guest(|hw| {
            // SAFETY: the intr bitfield is one u64; bit 0 is int_shadow.
            unsafe { (&raw mut hw.intr).cast::<u64>().write(1) };
        }),
    );
    v.run().unwrap();
    assert!(v.exit_state().int_shadow);
    let calls = model.syscalls();
    v.request_interrupt_window().unwrap();
    assert_eq!(model.syscalls(), calls, "no GETSTATE");
    halt_after_run(&model, &m);
    v.run().unwrap();
    let hw = model.hw_state(m.id(), 0);
    // SAFETY: as above.
    let bits = unsafe { (&raw const hw.intr).cast::<u64>().read() };
    assert_eq!(bits & 3, 3, "shadow kept, window requested");

    // With INTR cached, the cached value is updated.
    let mut st = v.intr().unwrap().get();
    st.int_window_exiting = false;
    v.intr().unwrap().set(st);
    v.request_nmi_window().unwrap();
    let st = v.intr().unwrap().get();
    assert!(st.nmi_window_exiting && !st.int_window_exiting && st.int_shadow);
}

#[cfg(feature = "assist")]
#[test]
fn an_assist_page_fault_becomes_the_event_and_cr2_in_one_call() {
    let (model, m) = setup();
    let mut v = m.create_vcpu(0).unwrap();
    let pf = Error::Assist {
        op: Op::AssistMem,
        source: nvmm_assist::Error::Exception(Exception::PageFault {
            address: 0xdead_b000,
            code: 0x6,
        }),
    };
    assert!(v.inject_assist_fault(&pf).unwrap());
    let not_a_fault = Error::Assist {
        op: Op::AssistMem,
        source: nvmm_assist::Error::Bus(BusError(libc::EIO)),
    };
    assert!(!v.inject_assist_fault(&not_a_fault).unwrap());
    halt_after_run(&model, &m);
    v.run().unwrap();
    assert_eq!(
        model.injected(m.id(), 0),
        vec![(sys::NVMM_VCPU_EVENT_EXCP, 14, 0x6)]
    );
    assert_eq!(
        model.hw_state(m.id(), 0).crs[sys::NVMM_X64_CR_CR2],
        0xdead_b000
    );

    // #GP carries its error code, #UD none.
    v.inject_exception(Exception::GeneralProtection(0x18))
        .unwrap();
    halt_after_run(&model, &m);
    v.run().unwrap();
    assert_eq!(
        model.injected(m.id(), 0).last(),
        Some(&(sys::NVMM_VCPU_EVENT_EXCP, 13, 0x18))
    );
}

#[cfg(feature = "assist")]
struct Ports(Vec<(u16, Vec<u8>)>);

#[cfg(feature = "assist")]
impl PortIo for Ports {
    fn read(&mut self, _port: u16, buf: &mut [u8]) -> Result<(), BusError> {
        buf.fill(0x42);
        Ok(())
    }
    fn write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        self.0.push((port, data.to_vec()));
        Ok(())
    }
}

#[cfg(feature = "assist")]
#[test]
fn port_io_without_an_mmio_bus() {
    let (model, m) = setup();
    let ram = m.hva_map(0x10000).unwrap();
    m.gpa_map(&ram, 0, 0, 0x10000, Prot::ALL).unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    model.push_exit(
        m.id(),
        0,
        ScriptedExit::io(0x3F8, false, 1, 0x1001).with_guest(|hw| {
            hw.gprs[sys::NVMM_X64_GPR_RAX] = u64::from(b'A');
            hw.gprs[sys::NVMM_X64_GPR_RIP] = 0x1000;
        }),
    );
    assert!(matches!(v.run().unwrap(), Exit::Io(_)));
    let mut ports = Ports(Vec::new());
    v.assist_port_io(&mut ports).unwrap();
    assert_eq!(ports.0, vec![(0x3F8, vec![b'A'])]);
    assert_eq!(v.gprs().unwrap().rip(), 0x1001);
}

#[test]
fn dump_shows_every_class_once_and_the_code_at_rip() {
    let (_model, m) = setup();
    let ram = m.hva_map(0x10000).unwrap();
    m.gpa_map(&ram, 0, 0, 0x10000, Prot::ALL).unwrap();
    m.write_guest(0x1000, &[0xB0, 0x2A, 0xE6, 0x80, 0xF4])
        .unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    v.setup_real_mode(0, 0x1000).unwrap();
    v.crs().unwrap().set(nvmm::Cr::Cr2, 0xdead_b000);
    v.drs().unwrap().set(nvmm::Dr::Dr1, 0x4242);
    v.inject(nvmm::Event::Interrupt { vector: 0x20 }).unwrap();
    let text = format!("{:?}", v.dump().unwrap());
    for want in [
        "RIP=0x1000",
        "CR2=0xdead_b000".replace('_', "").as_str(),
        "XCR0=",
        "DR1=0x4242",
        "MSR Efer=0x0",
        "MSR Lstar=",
        "interrupt shadow=0",
        "injected event pending=1",
        "FPU: FCW=",
        "| Gdt: base=",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
    // The code bytes are read through the assist's page walker.
    if cfg!(feature = "assist") {
        assert!(
            text.contains("code at RIP: b0 2a e6 80 f4"),
            "code bytes missing from\n{text}"
        );
    }
    assert_eq!(text.matches("RAX=").count(), 1, "each GPR once:\n{text}");
    assert!(!text.contains("Gdt: sel"), "no GDTR selector:\n{text}");
}

#[cfg(feature = "assist")]
#[test]
fn assist_errors_print_the_cause_once_in_hex() {
    let pf = Error::Assist {
        op: Op::AssistMem,
        source: nvmm_assist::Error::Exception(Exception::PageFault {
            address: 0xdead_b000,
            code: 0x6,
        }),
    };
    // The cause is in the source chain, once, in hex.
    let text = pf.to_string();
    assert!(!text.contains("#PF"), "{text}");
    let cause = std::error::Error::source(&pf)
        .expect("a source")
        .to_string();
    assert_eq!(cause, "guest exception #PF at 0xdeadb000 (error code 0x6)");
}
