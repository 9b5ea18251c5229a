//! Snapshots of a VCPU: [`VcpuState`], every state class as an owned value,
//! from [`Vcpu::save`] and applied by [`Vcpu::restore`].
//!
//! A snapshot is what the comm page holds for the seven classes (GPRS,
//! SEGS, CRS, DRS, MSRS, INTR, FPU), field for field. It does not include
//! what is not VCPU state in NVMM: a pending injected event, the CPUID and
//! TPR configuration, guest memory, or devices the VMM emulates.
//!
//! ```no_run
//! # let nvmm = nvmm::Nvmm::open()?;
//! # let machine = nvmm.create_machine()?;
//! # let mut vcpu = machine.create_vcpu(0)?;
//! let snapshot = vcpu.save()?; // one NVMM_IOC_VCPU_GETSTATE at most
//! // ... run the guest, or move `snapshot` to another VCPU or process ...
//! vcpu.restore(&snapshot); // no syscall: the next run applies it
//! # Ok::<(), nvmm::Error>(())
//! ```
//!
//! With the `serde` feature every part of a snapshot is `Serialize` and
//! `Deserialize`.

use nvmm_sys as sys;

use crate::error::Result;
use crate::state::{
    Cr, Crs, Dr, Drs, Fpu, Gpr, Gprs, Intr, IntrState, Msr, Msrs, Seg, Segment, Segs, StateClasses,
};
use crate::vcpu::Vcpu;

/// Every state class of a VCPU, owned (NetBSD's `struct nvmm_x64_state`).
///
/// The arrays are indexed as NVMM indexes them: by [`Gpr::index`],
/// [`Seg::index`], [`Cr::index`], [`Dr::index`] and [`Msr::index`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VcpuState {
    /// RAX..R15, RIP, RFLAGS (class GPRS).
    pub gprs: [u64; sys::NVMM_X64_NGPR],
    /// ES, CS, SS, DS, FS, GS, GDTR, IDTR, LDTR, TR (class SEGS).
    pub segs: [Segment; sys::NVMM_X64_NSEG],
    /// CR0, CR2, CR3, CR4, CR8, XCR0 (class CRS).
    pub crs: [u64; sys::NVMM_X64_NCR],
    /// DR0-DR3, DR6, DR7 (class DRS).
    pub drs: [u64; sys::NVMM_X64_NDR],
    /// The MSR slots (class MSRS).
    pub msrs: [u64; sys::NVMM_X64_NMSR],
    /// The interrupt state (class INTR).
    pub intr: IntrState,
    /// The x87/SSE area (class FPU).
    pub fpu: FxsaveArea,
}

/// The 512-byte FXSAVE area of the FPU class, as the CPU's `FXSAVE` lays
/// it out (Intel SDM vol. 1 table 10-2). Serialized as a byte string.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FxsaveArea(pub [u8; FXSAVE_SIZE]);

/// The size of [`FxsaveArea`].
pub const FXSAVE_SIZE: usize = 512;

// The FPU class is exactly the FXSAVE area.
const _: () = assert!(size_of::<sys::fxsave>() == FXSAVE_SIZE);

impl Default for FxsaveArea {
    fn default() -> Self {
        FxsaveArea([0; FXSAVE_SIZE])
    }
}

impl std::fmt::Debug for FxsaveArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The registers people look at; the whole area is 512 bytes.
        let fpu = &self.0;
        let word = |at: usize| u16::from_le_bytes([fpu[at], fpu[at + 1]]);
        let mxcsr = u32::from_le_bytes([fpu[24], fpu[25], fpu[26], fpu[27]]);
        f.debug_struct("FxsaveArea")
            .field("fcw", &format_args!("{:#x}", word(0)))
            .field("fsw", &format_args!("{:#x}", word(2)))
            .field("ftw", &format_args!("{:#x}", fpu[4]))
            .field("mxcsr", &format_args!("{mxcsr:#x}"))
            .finish_non_exhaustive()
    }
}

impl VcpuState {
    /// A general-purpose register, RIP or RFLAGS.
    pub fn gpr(&self, r: Gpr) -> u64 {
        self.gprs[r.index()]
    }
    /// A segment or descriptor-table register.
    pub fn seg(&self, s: Seg) -> Segment {
        self.segs[s.index()]
    }
    /// A control register.
    pub fn cr(&self, c: Cr) -> u64 {
        self.crs[c.index()]
    }
    /// A debug register.
    pub fn dr(&self, d: Dr) -> u64 {
        self.drs[d.index()]
    }
    /// An MSR slot.
    pub fn msr(&self, m: Msr) -> u64 {
        self.msrs[m.index()]
    }
}

impl Vcpu {
    /// Saves every state class: one `NVMM_IOC_VCPU_GETSTATE` of the classes
    /// not cached in the comm page (none if all are), then a copy. Classes
    /// with pending writes are saved as written.
    pub fn save(&mut self) -> Result<VcpuState> {
        self.fetch(StateClasses::ALL)?;
        let page = self.page();
        let (g, s, c) = (Gprs::new(page), Segs::new(page), Crs::new(page));
        let (d, m) = (Drs::new(page), Msrs::new(page));
        Ok(VcpuState {
            gprs: std::array::from_fn(|i| g.get(Gpr::ALL[i])),
            segs: std::array::from_fn(|i| s.get(Seg::ALL[i])),
            crs: std::array::from_fn(|i| c.get(Cr::ALL[i])),
            drs: std::array::from_fn(|i| d.get(Dr::ALL[i])),
            msrs: std::array::from_fn(|i| m.get(Msr::ALL[i])),
            intr: Intr::new(page).get(),
            fpu: FxsaveArea(Fpu::new(page).area()),
        })
    }

    /// Restores `state`: writes every class into the comm page and marks
    /// them all for commit (libnvmm's `nvmm_vcpu_setstate` of
    /// `NVMM_X64_STATE_ALL`). No syscall: the next [`Vcpu::run`] applies it,
    /// with the kernel's own checks of each class. A pending injected event
    /// is left as it is.
    pub fn restore(&mut self, state: &VcpuState) {
        // Each class is written whole, so none needs to be fetched first.
        let page = self.page();
        let mut g = Gprs::new(page);
        for (r, v) in Gpr::ALL.iter().zip(state.gprs) {
            g.set(*r, v);
        }
        let mut s = Segs::new(page);
        for (r, v) in Seg::ALL.iter().zip(state.segs) {
            s.set(*r, v);
        }
        let mut c = Crs::new(page);
        for (r, v) in Cr::ALL.iter().zip(state.crs) {
            c.set(*r, v);
        }
        let mut d = Drs::new(page);
        for (r, v) in Dr::ALL.iter().zip(state.drs) {
            d.set(*r, v);
        }
        let mut m = Msrs::new(page);
        for (r, v) in Msr::ALL.iter().zip(state.msrs) {
            m.set(*r, v);
        }
        Intr::new(page).set(state.intr);
        Fpu::new(page).set_area(&state.fpu.0);
    }
}

#[cfg(feature = "serde")]
mod serde_impl {
    use super::{FXSAVE_SIZE, FxsaveArea};
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    impl Serialize for FxsaveArea {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(&self.0)
        }
    }

    struct AreaVisitor;

    impl<'de> Visitor<'de> for AreaVisitor {
        type Value = FxsaveArea;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{FXSAVE_SIZE} bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<FxsaveArea, E> {
            let area =
                <[u8; FXSAVE_SIZE]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))?;
            Ok(FxsaveArea(area))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FxsaveArea, A::Error> {
            let mut area = [0u8; FXSAVE_SIZE];
            for (i, byte) in area.iter_mut().enumerate() {
                *byte = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(A::Error::invalid_length(FXSAVE_SIZE + 1, &self));
            }
            Ok(FxsaveArea(area))
        }
    }

    impl<'de> Deserialize<'de> for FxsaveArea {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_bytes(AreaVisitor)
        }
    }
}
