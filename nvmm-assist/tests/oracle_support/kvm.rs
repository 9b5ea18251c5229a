//! A minimal KVM guest for the KVM oracle: one VM, one vCPU, 4 MiB of RAM
//! with a hole at 0xA0000-0xBFFFF and an unbacked 2 MiB range at
//! 0xE000_0000 (both MMIO), guest state given as `nvmm_assist::Registers`.
//!
//! Each case runs ONE instruction followed by a marker, `out 0xF1, al`
//! ([`MARKER`]): the MMIO/IO exits on the way are completed from the
//! test's devices and recorded, and the case ends at the marker's exit,
//! where KVM reports the state after the instruction with RIP at the
//! marker. (Single-stepping was tried first: under this host's KVM the
//! debug exit after a PIO exit came one instruction late.)
#![allow(dead_code)]

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, kvm_regs, kvm_segment, kvm_sregs, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use nvmm_assist::{Registers, SegmentAttributes, SegmentRegister};

/// The port of the end-of-instruction marker `out 0xF1, al`.
pub const MARKER_PORT: u16 = 0xF1;
/// Its bytes.
pub const MARKER: [u8; 2] = [0xE6, 0xF1];

/// Guest RAM size.
pub const RAM_LEN: usize = 2 << 20;
/// The low MMIO hole.
pub const HOLE: (u64, u64) = (0xA0000, 0x20000);
/// The high MMIO range (2 MiB aligned, for 2 MiB pages).
pub const HIGH: (u64, u64) = (0xE000_0000, 0x20_0000);

/// One device access seen on the KVM side or the assist side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dev {
    /// MMIO (GPA) or port I/O (port number).
    pub port: bool,
    pub addr: u64,
    pub write: bool,
    pub data: Vec<u8>,
}

/// The test's devices: memory-like MMIO over the two ranges, and ports
/// whose IN data is a deterministic stream per port.
#[derive(Clone)]
pub struct Devices {
    pub hole: Vec<u8>,
    pub high: Vec<u8>,
    /// How many bytes each port has produced so far.
    pub port_pos: std::collections::BTreeMap<u16, u64>,
    pub log: Vec<Dev>,
}

impl Devices {
    pub fn new(seed: u64) -> Devices {
        let mut s = seed | 1;
        let mut byte = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        };
        Devices {
            hole: (0..HOLE.1).map(|_| byte()).collect(),
            high: (0..HIGH.1).map(|_| byte()).collect(),
            port_pos: Default::default(),
            log: vec![],
        }
    }
    fn cell(&mut self, gpa: u64) -> Option<&mut u8> {
        if (HOLE.0..HOLE.0 + HOLE.1).contains(&gpa) {
            self.hole.get_mut((gpa - HOLE.0) as usize)
        } else if (HIGH.0..HIGH.0 + HIGH.1).contains(&gpa) {
            self.high.get_mut((gpa - HIGH.0) as usize)
        } else {
            None
        }
    }
    /// An MMIO read; bytes outside the devices read as 0xff.
    pub fn mmio_read(&mut self, gpa: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.cell(gpa + i as u64).map_or(0xff, |c| *c);
        }
        self.log.push(Dev {
            port: false,
            addr: gpa,
            write: false,
            data: buf.to_vec(),
        });
    }
    pub fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(c) = self.cell(gpa + i as u64) {
                *c = *b;
            }
        }
        self.log.push(Dev {
            port: false,
            addr: gpa,
            write: true,
            data: data.to_vec(),
        });
    }
    pub fn port_read(&mut self, port: u16, buf: &mut [u8]) {
        let pos = self.port_pos.entry(port).or_insert(0);
        for b in buf.iter_mut() {
            *b = (port as u64 * 31 + *pos * 7 + 3) as u8;
            *pos += 1;
        }
        self.log.push(Dev {
            port: true,
            addr: port as u64,
            write: false,
            data: buf.to_vec(),
        });
    }
    pub fn port_write(&mut self, port: u16, data: &[u8]) {
        self.log.push(Dev {
            port: true,
            addr: port as u64,
            write: true,
            data: data.to_vec(),
        });
    }
}

/// The VM.
pub struct Guest {
    pub vcpu: VcpuFd,
    _vm: VmFd,
    _kvm: Kvm,
    /// Declared last: dropped (unmapped) after the VM and vCPU fds close.
    mem: GuestMem,
}

/// The guest RAM mapping.
struct GuestMem(*mut u8);

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: the RAM_LEN mapping made in `Guest::new`; the VM that used
        // it is closed by now (fields drop in declaration order).
        unsafe { libc::munmap(self.0.cast(), RAM_LEN) };
    }
}

fn seg_to_kvm(s: &SegmentRegister) -> kvm_segment {
    let a = s.attributes;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: a.typ(),
        present: a.present() as u8,
        dpl: a.dpl(),
        db: a.db() as u8,
        s: a.s() as u8,
        l: a.l() as u8,
        g: a.g() as u8,
        avl: a.avl() as u8,
        unusable: (!a.present()) as u8,
        padding: 0,
    }
}

fn seg_from_kvm(k: &kvm_segment) -> SegmentRegister {
    SegmentRegister {
        selector: k.selector,
        base: k.base,
        limit: k.limit,
        attributes: SegmentAttributes::new(
            k.type_,
            k.s != 0,
            k.dpl,
            k.present != 0 && k.unusable == 0,
            k.avl != 0,
            k.l != 0,
            k.db != 0,
            k.g != 0,
        ),
    }
}

/// What KVM did with one instruction.
pub struct KvmRun {
    /// The state KVM holds right before the instruction (read back after
    /// setting, so KVM's normalisation shows).
    pub before: Registers,
    pub after: Registers,
    /// Device accesses in order.
    pub log: Vec<Dev>,
}

impl Guest {
    /// Opens /dev/kvm and builds the VM, or says why it cannot.
    pub fn new() -> Result<Guest, String> {
        let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let _ = vm.set_tss_address(0xfffb_d000);
        let _ = vm.set_identity_map_address(0xfffb_c000);
        // SAFETY: a fresh anonymous mapping.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err("mmap guest RAM failed".into());
        }
        let mem = GuestMem(mem.cast::<u8>());
        let slots = [
            (0u64, HOLE.0),
            (HOLE.0 + HOLE.1, RAM_LEN as u64 - HOLE.0 - HOLE.1),
        ];
        for (i, (gpa, len)) in slots.into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: i as u32,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: mem.0 as u64 + gpa,
            };
            // SAFETY: the region lies within the RAM_LEN mapping above,
            // which lives as long as the VM (unmapped in Drop after it).
            unsafe { vm.set_user_memory_region(region) }
                .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        }
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
        Ok(Guest {
            vcpu,
            _vm: vm,
            _kvm: kvm,
            mem,
        })
    }

    /// Guest RAM (the hole's bytes exist but are not guest-visible).
    pub fn ram(&mut self) -> &mut [u8] {
        // SAFETY: mem maps RAM_LEN bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.mem.0, RAM_LEN) }
    }

    /// Loads `st` into the vCPU and reads it back.
    pub fn set_state(&mut self, st: &Registers) -> Result<Registers, String> {
        let mut s: kvm_sregs = self
            .vcpu
            .get_sregs()
            .map_err(|e| format!("get_sregs: {e}"))?;
        let seg = |i: usize| seg_to_kvm(&st.segments[i]);
        s.es = seg(0);
        s.cs = seg(1);
        s.ss = seg(2);
        s.ds = seg(3);
        s.fs = seg(4);
        s.gs = seg(5);
        s.tr = kvm_segment {
            base: 0,
            limit: 0x67,
            selector: 0x38,
            type_: 11,
            present: 1,
            s: 0,
            ..Default::default()
        };
        s.ldt = kvm_segment {
            selector: 0,
            type_: 2,
            present: 1,
            limit: 0xffff,
            ..Default::default()
        };
        s.cr0 = st.cr0;
        s.cr3 = st.cr3;
        s.cr4 = st.cr4;
        s.efer = st.efer;
        self.vcpu
            .set_sregs(&s)
            .map_err(|e| format!("set_sregs: {e}"))?;
        let mut r = kvm_regs::default();
        let g = &st.gprs;
        (r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi) =
            (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]);
        (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) =
            (g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
        r.rip = st.rip;
        r.rflags = st.rflags | 2;
        self.vcpu
            .set_regs(&r)
            .map_err(|e| format!("set_regs: {e}"))?;
        self.state()
    }

    /// The vCPU state as `Registers`, XMM0-15 included.
    pub fn state(&self) -> Result<Registers, String> {
        let s = self
            .vcpu
            .get_sregs()
            .map_err(|e| format!("get_sregs: {e}"))?;
        let f = self.vcpu.get_fpu().map_err(|e| format!("get_fpu: {e}"))?;
        let r = self.vcpu.get_regs().map_err(|e| format!("get_regs: {e}"))?;
        Ok(Registers {
            gprs: [
                r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            segments: [s.es, s.cs, s.ss, s.ds, s.fs, s.gs].map(|k| seg_from_kvm(&k)),
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            xmm: Some(f.xmm.map(u128::from_le_bytes)),
            // A KVM guest runs on the host CPU and behaves as its vendor.
            vendor: crate::host_vendor::host_vendor(),
        })
    }

    /// Runs the instruction at `st.rip` to completion (see the module doc).
    pub fn run_one(&mut self, st: &Registers, dev: &mut Devices) -> Result<KvmRun, String> {
        let before = self.set_state(st)?;
        let start_log = dev.log.len();
        for _ in 0..200_000 {
            match self.vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
                VcpuExit::MmioRead(a, d) => dev.mmio_read(a, d),
                VcpuExit::MmioWrite(a, d) => dev.mmio_write(a, d),
                VcpuExit::IoIn(p, d) => dev.port_read(p, d),
                VcpuExit::IoOut(MARKER_PORT, _) => {
                    let after = self.state()?;
                    return Ok(KvmRun {
                        before,
                        after,
                        log: dev.log[start_log..].to_vec(),
                    });
                }
                VcpuExit::IoOut(p, d) => dev.port_write(p, d),
                VcpuExit::Hlt => return Err("HLT before the marker".into()),
                VcpuExit::Shutdown => return Err("SHUTDOWN (triple fault)".into()),
                VcpuExit::FailEntry(r, _) => return Err(format!("FAIL_ENTRY reason {r:#x}")),
                VcpuExit::InternalError => return Err("KVM internal error".into()),
                other => return Err(format!("unexpected exit {other:?}")),
            }
        }
        Err("instruction did not complete in 200000 exits".into())
    }
}
