//! The long-mode guest programs of the real-kernel capability tests
//! (`kernel_capabilities.rs`), shared with their KVM run
//! (`capability_guests_kvm.rs`), which proves the encodings, the GDT/IDT
//! layout and the expected results on hardware virtualization.
//!
//! Layout: 64 KiB of RAM identity-mapped by one 2 MiB page (PML4 at
//! 0x3000, PDPT 0x4000, PD 0x5000), an IDT at 0x6000 (64-bit gates), a
//! GDT at 0x7000 (0x08 64-bit code, 0x10 data), code at 0x2000, interrupt
//! handlers at 0x2800, the stack below 0x9000; 0x10000-0x1FFFF is not RAM
//! (MMIO). Each instruction's encoding is next to its mnemonic.
#![allow(dead_code)]

/// Results the guests store.
pub const DATA: u64 = 0x1000;
/// The code.
pub const CODE: u64 = 0x2000;
/// Interrupt handlers.
pub const HANDLERS: u64 = 0x2800;
/// The PML4.
pub const PML4: u64 = 0x3000;
/// The IDT (256 gates).
pub const IDT: u64 = 0x6000;
/// The IDT limit.
pub const IDT_LIMIT: u32 = 256 * 16 - 1;
/// The GDT.
pub const GDT: u64 = 0x7000;
/// The GDT limit (three descriptors).
pub const GDT_LIMIT: u32 = 0x17;
/// The initial RSP.
pub const STACK: u64 = 0x9000;
/// The MMIO window.
pub const MMIO: u64 = 0x10000;
/// RAM size.
pub const RAM: usize = 0x10000;

/// `mov byte [abs32], imm8` = C6 /0, ModRM 04, SIB 25
pub fn mov_byte_abs(addr: u32, v: u8) -> Vec<u8> {
    let mut b = vec![0xC6, 0x04, 0x25];
    b.extend_from_slice(&addr.to_le_bytes());
    b.push(v);
    b
}

/// `mov [abs32], r32` = 89 /r, ModRM 04|reg<<3, SIB 25
pub fn store32(reg: u8, addr: u32) -> Vec<u8> {
    let mut b = vec![0x89, 0x04 | (reg << 3), 0x25];
    b.extend_from_slice(&addr.to_le_bytes());
    b
}

/// `mov r32, imm32` = B8+r id
pub fn mov32(reg: u8, v: u32) -> Vec<u8> {
    let mut b = vec![0xB8 + reg];
    b.extend_from_slice(&v.to_le_bytes());
    b
}

/// EAX.
pub const EAX: u8 = 0;
/// ECX.
pub const ECX: u8 = 1;
/// EDX.
pub const EDX: u8 = 2;
/// EBX.
pub const EBX: u8 = 3;
/// `hlt`
pub const HLT: u8 = 0xF4;

/// A program: code at [`CODE`], handlers at [`HANDLERS`], IDT gates
/// `(vector, handler address)`.
pub struct Program {
    /// The code.
    pub code: Vec<u8>,
    /// The handlers.
    pub handlers: Vec<u8>,
    /// The gates.
    pub gates: Vec<(u8, u64)>,
}

impl Program {
    /// A program without handlers.
    pub fn plain(code: Vec<u8>) -> Program {
        Program {
            code,
            handlers: Vec::new(),
            gates: Vec::new(),
        }
    }

    /// The pieces to copy into RAM: page tables, IDT, GDT, code, handlers.
    pub fn image(&self) -> Vec<(u64, Vec<u8>)> {
        let mut idt = vec![0u8; 256 * 16];
        for &(vector, handler) in &self.gates {
            // A 64-bit interrupt gate: selector 0x08, type 0xE, present.
            let low =
                (handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | ((handler >> 16) & 0xFFFF) << 48;
            let at = usize::from(vector) * 16;
            idt[at..at + 8].copy_from_slice(&low.to_le_bytes());
            idt[at + 8..at + 16].copy_from_slice(&(handler >> 32).to_le_bytes());
        }
        let gdt: Vec<u8> = [0u64, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
            .iter()
            .flat_map(|q| q.to_le_bytes())
            .collect();
        vec![
            (PML4, (0x4000u64 | 3).to_le_bytes().to_vec()),
            (0x4000, (0x5000u64 | 3).to_le_bytes().to_vec()),
            (0x5000, 0x83u64.to_le_bytes().to_vec()), // 2 MiB page at 0
            (IDT, idt),
            (GDT, gdt),
            (CODE, self.code.clone()),
            (HANDLERS, self.handlers.clone()),
        ]
    }
}

/// CPUID: leaf 1 (configured in mask mode) stores ECX and EDX at DATA and
/// DATA+4; [`CPUID_EXIT_LEAF`] (configured to exit) stores EAX and EBX at
/// DATA+8 and DATA+12; then HLT.
pub fn cpuid() -> Program {
    Program::plain(
        [
            mov32(EAX, 1),
            vec![0x31, 0xC9], // xor ecx, ecx
            vec![0x0F, 0xA2], // cpuid
            store32(ECX, DATA as u32),
            store32(EDX, DATA as u32 + 4),
            mov32(EAX, CPUID_EXIT_LEAF),
            vec![0x0F, 0xA2], // cpuid
            store32(EAX, DATA as u32 + 8),
            store32(EBX, DATA as u32 + 12),
            vec![HLT],
        ]
        .concat(),
    )
}

/// The leaf [`cpuid`] configures to exit.
pub const CPUID_EXIT_LEAF: u32 = 0x4000_0010;

/// An MSR no kernel handles.
pub const UNHANDLED_MSR: u32 = 0x4000_1234;
/// What [`msr`] writes to it.
pub const MSR_WRITTEN: u64 = 0x1122_3344_5566_7788;

/// WRMSR of [`MSR_WRITTEN`] to [`UNHANDLED_MSR`], RDMSR of it, EAX/EDX
/// stored at DATA/DATA+4, HLT.
pub fn msr() -> Program {
    Program::plain(
        [
            mov32(ECX, UNHANDLED_MSR),
            mov32(EAX, MSR_WRITTEN as u32),
            mov32(EDX, (MSR_WRITTEN >> 32) as u32),
            vec![0x0F, 0x30], // wrmsr
            vec![0x0F, 0x32], // rdmsr
            store32(EAX, DATA as u32),
            store32(EDX, DATA as u32 + 4),
            vec![HLT],
        ]
        .concat(),
    )
}

/// The vector [`injection`]'s interrupt handler serves.
pub const IRQ: u8 = 0x30;

/// `sti; nop; jmp $`, with a #UD handler (stores 6 at DATA, `iretq`) and an
/// interrupt handler for [`IRQ`] (stores it at DATA+1, `hlt`).
pub fn injection() -> Program {
    let mut handlers = vec![0u8; 0x80];
    let ud = [mov_byte_abs(DATA as u32, 6), vec![0x48, 0xCF]].concat(); // iretq
    let irq = [mov_byte_abs(DATA as u32 + 1, IRQ), vec![HLT]].concat();
    handlers[..ud.len()].copy_from_slice(&ud);
    handlers[0x40..0x40 + irq.len()].copy_from_slice(&irq);
    Program {
        code: vec![0xFB, 0x90, 0xEB, 0xFE], // sti; nop; jmp $
        handlers,
        gates: vec![(6, HANDLERS), (IRQ, HANDLERS + 0x40)],
    }
}

/// `out 0x80, al; hlt`: each VCPU reports its AL.
pub fn report_al() -> Program {
    Program::plain(vec![0xE6, 0x80, HLT])
}

/// How many bytes [`memory`] copies to MMIO: more than a page, so that
/// the assist's REP batches end at page and batch limits.
pub const MOVSB_LEN: u32 = 5000;
/// What [`memory`] stores at MMIO first.
pub const MMIO_STORED: u32 = 0x1234_5678;

/// `mov [MMIO], eax` of [`MMIO_STORED`], then `rep movsb` of
/// [`MOVSB_LEN`] bytes from RAM at 0 to MMIO+8, HLT.
pub fn memory() -> Program {
    Program::plain(
        [
            mov32(EAX, MMIO_STORED),
            store32(EAX, MMIO as u32),
            vec![0xBE, 0, 0, 0, 0], // mov esi, 0
            vec![0xBF],             // mov edi, MMIO + 8
            (MMIO as u32 + 8).to_le_bytes().to_vec(),
            mov32(ECX, MOVSB_LEN),
            vec![0xFC, 0xF3, 0xA4], // cld; rep movsb
            vec![HLT],
        ]
        .concat(),
    )
}
