//! toyvm's guest: one program, built here byte by byte with each
//! instruction's encoding next to its mnemonic, that starts in real mode,
//! enters 32-bit protected mode, then long mode with 4-level paging, and
//! then exercises every device the VMM offers:
//!
//! 1. real mode: `out` of `R` to the serial port, `lgdt`, CR0.PE, far jump;
//! 2. 32-bit protected mode: flat segments, `out` of `P`, `ltr` of the
//!    TSS, CR4.PAE, CR3, EFER.LME (`rdmsr`/`wrmsr`), CR0.PG, far jump to a
//!    64-bit segment;
//! 3. long mode: `out` of `L` and a newline, `lidt`;
//!    the MMIO register bank with `mov`, `or`, `movzx`, `rep movsb` and
//!    `lock xadd`; `cpuid` of [`CPUID_LEAF`], its ECX and EDX written to
//!    the bank; `sti` and a spin until the handler of [`IRQ_VECTOR`] (which
//!    reports the vector to the bank) has run; `cli`, a `rep outsb` of
//!    [`FINAL_MESSAGE`] and `hlt`.
//!
//! The same bytes run on NVMM (toyvm's `main.rs`) and on KVM
//! (`nvmm/tests/toyvm_kvm.rs`), so the program and the devices are proven
//! on real hardware virtualization even where NVMM is not at hand.
//! Each stage also has an entry point ([`Image::entries`]) so that a
//! hypervisor that cannot run the guest's own mode switches can start a
//! stage in its mode through the VCPU's registers.

#![allow(dead_code)] // Shared with the KVM test, which uses a subset.

use std::collections::HashMap;

/// Guest RAM: guest-physical 0 to 1 MiB.
pub const RAM_SIZE: usize = 0x10_0000;
/// The MMIO register bank (not RAM: every access exits).
pub const MMIO_BASE: u64 = 0x20_0000;
/// The serial port's base (a 16550's THR; LSR at +5).
pub const SERIAL_PORT: u16 = 0x3F8;
/// The vector the VMM injects when the interrupt window opens.
pub const IRQ_VECTOR: u8 = 0x30;
/// The CPUID leaf the VMM configures in mask mode and the guest reports.
pub const CPUID_LEAF: u32 = 1;
/// ECX bits the VMM forces on in [`CPUID_LEAF`]: bit 31, "hypervisor
/// present".
pub const CPUID_SET_ECX: u32 = 1 << 31;
/// EDX bits the VMM forces off in [`CPUID_LEAF`]: bit 23, MMX (the guest
/// does not use it; clearing it shows the mask applies).
pub const CPUID_DEL_EDX: u32 = 1 << 23;
/// What the guest sends with `rep outsb` before halting.
pub const FINAL_MESSAGE: &[u8] = b"hello from long mode\n";
/// What the guest copies into the bank's buffer with `rep movsb`.
pub const MOVSB_PATTERN: &[u8; 8] = b"repmovsb";
/// The value the guest stores in the bank's scratch register.
pub const SCRATCH_VALUE: u32 = 0x1234_5678;
/// What the guest ORs into it.
pub const SCRATCH_OR: u32 = 0x80;
/// What the guest adds to the bank's counter with `lock xadd`.
pub const XADD_ADDEND: u32 = 5;

/// Offsets of the MMIO register bank's registers.
pub mod reg {
    /// Scratch register, 32-bit read/write (`mov`, then `or`).
    pub const SCRATCH: u64 = 0x00;
    /// Echo of the ID register as the guest read it (`movzx`), 32-bit.
    pub const ID_ECHO: u64 = 0x04;
    /// Counter, 32-bit read/write (`lock xadd`).
    pub const COUNTER: u64 = 0x08;
    /// Echo of the counter's old value as `lock xadd` returned it.
    pub const COUNTER_ECHO: u64 = 0x0C;
    /// An 8-byte buffer (`rep movsb`).
    pub const BUFFER: u64 = 0x10;
    /// The device ID, 8-bit read-only.
    pub const ID: u64 = 0x20;
    /// CPUID report: ECX of [`super::CPUID_LEAF`].
    pub const CPUID_ECX: u64 = 0x28;
    /// CPUID report: EDX of [`super::CPUID_LEAF`].
    pub const CPUID_EDX: u64 = 0x2C;
    /// Interrupt report: the handler writes its vector here.
    pub const IRQ: u64 = 0x30;
    /// The bank's size.
    pub const SIZE: u64 = 0x40;
}

/// The ID register's value.
pub const DEVICE_ID: u8 = 0x5A;
/// The counter's value at reset.
pub const COUNTER_RESET: u32 = 0x100;

// Guest-physical layout (identity-mapped in long mode).
/// The GDT pseudo-descriptor (`lgdt` operand).
const GDTR: u64 = 0x0500;
/// The IDT pseudo-descriptor (`lidt` operand, 64-bit form).
const IDTR: u64 = 0x0510;
/// The GDT: null, code32 (0x08), data (0x10), code64 (0x18), TSS64 (0x20).
pub const GDT: u64 = 0x1000;
/// The 64-bit TSS (104 bytes, all zero: no IST, no privilege change).
const TSS: u64 = 0x1100;
/// PML4, PDPT and PD: 2 MiB pages for 0-2 MiB (RAM) and 2-4 MiB (MMIO).
pub const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
/// The IDT (64-bit gates), up to [`IRQ_VECTOR`].
const IDT: u64 = 0x5000;
/// The final message.
const MESSAGE: u64 = 0x6000;
/// The `rep movsb` source.
const PATTERN: u64 = 0x6100;
/// The byte the interrupt handler sets.
const IRQ_FLAG: u64 = 0x6200;
/// Top of the stack (grows down, below the code).
pub const STACK_TOP: u64 = 0x7F00;
/// The code: the real-mode entry is its first byte.
pub const CODE: u64 = 0x8000;

/// Selectors of the GDT.
pub mod sel {
    /// Flat 32-bit code.
    pub const CODE32: u16 = 0x08;
    /// Flat data.
    pub const DATA: u16 = 0x10;
    /// 64-bit code.
    pub const CODE64: u16 = 0x18;
    /// The 64-bit TSS.
    pub const TSS: u16 = 0x20;
}

/// Where each stage starts, for a hypervisor that must be put in a stage's
/// mode through the registers.
#[derive(Debug, Clone, Copy)]
pub struct Entries {
    /// Real mode, CS = 0, IP = this.
    pub real: u64,
    /// 32-bit protected mode (flat CS [`sel::CODE32`], DS/ES/SS
    /// [`sel::DATA`], ESP [`STACK_TOP`]; DX = [`SERIAL_PORT`]).
    pub protected: u64,
    /// Long mode (CS [`sel::CODE64`], CR3 [`PML4`], data as above, RSP
    /// [`STACK_TOP`]).
    pub long: u64,
}

/// The guest: byte ranges to copy into RAM, and the stage entries.
pub struct Image {
    /// `(guest-physical address, bytes)`.
    pub pieces: Vec<(u64, Vec<u8>)>,
    /// Stage entry points.
    pub entries: Entries,
}

impl Image {
    /// Copies every piece into `ram` (guest-physical 0 = `ram[0]`).
    pub fn load_into(&self, ram: &mut [u8]) -> Result<(), String> {
        for (gpa, bytes) in &self.pieces {
            let start = usize::try_from(*gpa).map_err(|e| e.to_string())?;
            let dst = ram
                .get_mut(start..start + bytes.len())
                .ok_or_else(|| format!("piece at {gpa:#x} does not fit in RAM"))?;
            dst.copy_from_slice(bytes);
        }
        Ok(())
    }
}

/// A tiny assembler: each method emits one instruction (its encoding in
/// the comment, Intel SDM vol. 2 notation), with forward and backward
/// labels. Only the forms the guest uses exist.
struct Asm {
    origin: u64,
    code: Vec<u8>,
    labels: HashMap<&'static str, u64>,
    /// `(offset in code, label, kind)` to patch once labels are known.
    fixups: Vec<(usize, &'static str, Fixup)>,
}

#[derive(Clone, Copy)]
enum Fixup {
    /// A rel8 displacement from the end of the byte.
    Rel8,
    /// An absolute 16-bit address.
    Abs16,
    /// An absolute 32-bit address.
    Abs32,
}

impl Asm {
    fn new(origin: u64) -> Asm {
        Asm {
            origin,
            code: Vec::new(),
            labels: HashMap::new(),
            fixups: Vec::new(),
        }
    }
    fn here(&self) -> u64 {
        self.origin + self.code.len() as u64
    }
    fn label(&mut self, name: &'static str) {
        let here = self.here();
        self.labels.insert(name, here);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.code.extend_from_slice(b);
    }
    fn imm32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn fixup(&mut self, label: &'static str, kind: Fixup) {
        let at = self.code.len();
        self.fixups.push((at, label, kind));
        let width = match kind {
            Fixup::Rel8 => 1,
            Fixup::Abs16 => 2,
            Fixup::Abs32 => 4,
        };
        self.code.extend(std::iter::repeat_n(0, width));
    }
    fn finish(mut self) -> Result<(Vec<u8>, HashMap<&'static str, u64>), String> {
        for (at, label, kind) in std::mem::take(&mut self.fixups) {
            let target = *self
                .labels
                .get(label)
                .ok_or_else(|| format!("undefined label {label}"))?;
            match kind {
                Fixup::Rel8 => {
                    let next = self.origin + at as u64 + 1;
                    let d = i8::try_from(target as i64 - next as i64)
                        .map_err(|_| format!("{label} is out of rel8 range"))?;
                    self.code[at] = d as u8;
                }
                Fixup::Abs16 => {
                    let v = u16::try_from(target).map_err(|_| format!("{label} above 64 KiB"))?;
                    self.code[at..at + 2].copy_from_slice(&v.to_le_bytes());
                }
                Fixup::Abs32 => {
                    let v = u32::try_from(target).map_err(|_| format!("{label} above 4 GiB"))?;
                    self.code[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        Ok((self.code, self.labels))
    }

    // --- Any mode ---
    /// `cli` = FA
    fn cli(&mut self) {
        self.bytes(&[0xFA]);
    }
    /// `sti` = FB
    fn sti(&mut self) {
        self.bytes(&[0xFB]);
    }
    /// `nop` = 90
    fn nop(&mut self) {
        self.bytes(&[0x90]);
    }
    /// `cld` = FC
    fn cld(&mut self) {
        self.bytes(&[0xFC]);
    }
    /// `hlt` = F4
    fn hlt(&mut self) {
        self.bytes(&[0xF4]);
    }
    /// `mov al, imm8` = B0 ib
    fn mov_al(&mut self, v: u8) {
        self.bytes(&[0xB0, v]);
    }
    /// `out dx, al` = EE
    fn out_dx_al(&mut self) {
        self.bytes(&[0xEE]);
    }
    /// `rep outsb` = F3 6E (DS:rSI to port DX, rCX times)
    fn rep_outsb(&mut self) {
        self.bytes(&[0xF3, 0x6E]);
    }
    /// `rep movsb` = F3 A4 (DS:rSI to ES:rDI, rCX times)
    fn rep_movsb(&mut self) {
        self.bytes(&[0xF3, 0xA4]);
    }
    /// `mov eax, cr0` = 0F 20 C0
    fn mov_eax_cr0(&mut self) {
        self.bytes(&[0x0F, 0x20, 0xC0]);
    }
    /// `mov cr0, eax` = 0F 22 C0
    fn mov_cr0_eax(&mut self) {
        self.bytes(&[0x0F, 0x22, 0xC0]);
    }
    /// `cpuid` = 0F A2
    fn cpuid(&mut self) {
        self.bytes(&[0x0F, 0xA2]);
    }
    /// `je rel8` = 74 cb
    fn je(&mut self, label: &'static str) {
        self.bytes(&[0x74]);
        self.fixup(label, Fixup::Rel8);
    }

    // --- 16-bit code ---
    /// `mov dx, imm16` = BA iw
    fn mov_dx16(&mut self, v: u16) {
        self.bytes(&[0xBA]);
        self.bytes(&v.to_le_bytes());
    }
    /// `lgdt [disp16]` = 0F 01 /2, ModRM 16 (mod 00, rm 110: disp16)
    fn lgdt16(&mut self, addr: u16) {
        self.bytes(&[0x0F, 0x01, 0x16]);
        self.bytes(&addr.to_le_bytes());
    }
    /// `or al, imm8` = 0C ib
    fn or_al(&mut self, v: u8) {
        self.bytes(&[0x0C, v]);
    }
    /// `jmp ptr16:16` = EA iw iw (in 16-bit code)
    fn jmp_far16(&mut self, selector: u16, label: &'static str) {
        self.bytes(&[0xEA]);
        self.fixup(label, Fixup::Abs16);
        self.bytes(&selector.to_le_bytes());
    }

    // --- 32-bit code ---
    /// `mov dx, imm16` = 66 BA iw (operand-size prefix in 32/64-bit code)
    fn mov_dx32(&mut self, v: u16) {
        self.bytes(&[0x66, 0xBA]);
        self.bytes(&v.to_le_bytes());
    }
    /// `mov ax, imm16` = 66 B8 iw (operand-size prefix in 32-bit code)
    fn mov_ax32(&mut self, v: u16) {
        self.bytes(&[0x66, 0xB8]);
        self.bytes(&v.to_le_bytes());
    }
    /// `mov ds, ax` = 8E D8; `mov es, ax` = 8E C0; `mov ss, ax` = 8E D0
    fn mov_data_segs_ax(&mut self) {
        self.bytes(&[0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xD0]);
    }
    /// `mov esp, imm32` = BC id
    fn mov_esp(&mut self, v: u32) {
        self.bytes(&[0xBC]);
        self.imm32(v);
    }
    /// `mov eax, imm32` = B8 id
    fn mov_eax(&mut self, v: u32) {
        self.bytes(&[0xB8]);
        self.imm32(v);
    }
    /// `mov ecx, imm32` = B9 id
    fn mov_ecx(&mut self, v: u32) {
        self.bytes(&[0xB9]);
        self.imm32(v);
    }
    /// `mov ebx, imm32` = BB id
    fn mov_ebx(&mut self, v: u32) {
        self.bytes(&[0xBB]);
        self.imm32(v);
    }
    /// `mov esi, imm32` = BE id
    fn mov_esi(&mut self, v: u32) {
        self.bytes(&[0xBE]);
        self.imm32(v);
    }
    /// `or eax, imm32` = 0D id
    fn or_eax(&mut self, v: u32) {
        self.bytes(&[0x0D]);
        self.imm32(v);
    }
    /// `xor ecx, ecx` = 31 C9
    fn xor_ecx_ecx(&mut self) {
        self.bytes(&[0x31, 0xC9]);
    }
    /// `mov eax, cr4` = 0F 20 E0
    fn mov_eax_cr4(&mut self) {
        self.bytes(&[0x0F, 0x20, 0xE0]);
    }
    /// `mov cr4, eax` = 0F 22 E0
    fn mov_cr4_eax(&mut self) {
        self.bytes(&[0x0F, 0x22, 0xE0]);
    }
    /// `mov cr3, eax` = 0F 22 D8
    fn mov_cr3_eax(&mut self) {
        self.bytes(&[0x0F, 0x22, 0xD8]);
    }
    /// `rdmsr` = 0F 32
    fn rdmsr(&mut self) {
        self.bytes(&[0x0F, 0x32]);
    }
    /// `wrmsr` = 0F 30
    fn wrmsr(&mut self) {
        self.bytes(&[0x0F, 0x30]);
    }
    /// `jmp ptr16:32` = EA id iw (in 32-bit code)
    fn jmp_far32(&mut self, selector: u16, label: &'static str) {
        self.bytes(&[0xEA]);
        self.fixup(label, Fixup::Abs32);
        self.bytes(&selector.to_le_bytes());
    }

    // --- 64-bit code ---
    /// `ltr ax` = 0F 00 /3, ModRM D8
    fn ltr_ax(&mut self) {
        self.bytes(&[0x0F, 0x00, 0xD8]);
    }
    /// `lidt [disp32]` = 0F 01 /3, ModRM 1C + SIB 25 (no base, no index)
    fn lidt_abs(&mut self, addr: u32) {
        self.bytes(&[0x0F, 0x01, 0x1C, 0x25]);
        self.imm32(addr);
    }
    /// `mov dword [rbx+disp8], imm32` = C7 /0, ModRM 43
    fn mov_rbx_d8_imm32(&mut self, disp: u8, v: u32) {
        self.bytes(&[0xC7, 0x43, disp]);
        self.imm32(v);
    }
    /// `or dword [rbx+disp8], imm32` = 81 /1, ModRM 4B
    fn or_rbx_d8_imm32(&mut self, disp: u8, v: u32) {
        self.bytes(&[0x81, 0x4B, disp]);
        self.imm32(v);
    }
    /// `movzx eax, byte [rbx+disp8]` = 0F B6 /r, ModRM 43
    fn movzx_eax_rbx_d8(&mut self, disp: u8) {
        self.bytes(&[0x0F, 0xB6, 0x43, disp]);
    }
    /// `mov [rbx+disp8], eax` = 89 /r, ModRM 43
    fn mov_rbx_d8_eax(&mut self, disp: u8) {
        self.bytes(&[0x89, 0x43, disp]);
    }
    /// `mov [rbx+disp8], ecx` = 89 /r, ModRM 4B
    fn mov_rbx_d8_ecx(&mut self, disp: u8) {
        self.bytes(&[0x89, 0x4B, disp]);
    }
    /// `mov [rbx+disp8], edx` = 89 /r, ModRM 53
    fn mov_rbx_d8_edx(&mut self, disp: u8) {
        self.bytes(&[0x89, 0x53, disp]);
    }
    /// `lea rdi, [rbx+disp8]` = REX.W 8D /r, ModRM 7B
    fn lea_rdi_rbx_d8(&mut self, disp: u8) {
        self.bytes(&[0x48, 0x8D, 0x7B, disp]);
    }
    /// `lock xadd [rbx+disp8], eax` = F0 0F C1 /r, ModRM 43
    fn lock_xadd_rbx_d8_eax(&mut self, disp: u8) {
        self.bytes(&[0xF0, 0x0F, 0xC1, 0x43, disp]);
    }
    /// `cmp byte [disp32], imm8` = 80 /7, ModRM 3C + SIB 25
    fn cmp_byte_abs(&mut self, addr: u32, v: u8) {
        self.bytes(&[0x80, 0x3C, 0x25]);
        self.imm32(addr);
        self.bytes(&[v]);
    }
    /// `mov byte [disp32], imm8` = C6 /0, ModRM 04 + SIB 25
    fn mov_byte_abs(&mut self, addr: u32, v: u8) {
        self.bytes(&[0xC6, 0x04, 0x25]);
        self.imm32(addr);
        self.bytes(&[v]);
    }
    /// `iretq` = REX.W CF
    fn iretq(&mut self) {
        self.bytes(&[0x48, 0xCF]);
    }
}

/// A flat code/data descriptor: base 0, limit 4 GiB (G=1), present,
/// DPL 0, accessed; `flags` is the high nibble (G, D/B, L, AVL).
const fn flat_descriptor(access: u8, flags: u8) -> u64 {
    0xFFFF | (0xF << 48) | (access as u64) << 40 | ((flags as u64) << 52)
}

/// The 16-byte system descriptor of an available 64-bit TSS (type 9).
fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let low = (limit as u64 & 0xFFFF)
        | (base & 0xFF_FFFF) << 16
        | 0x89 << 40
        | ((limit as u64 >> 16) & 0xF) << 48
        | ((base >> 24) & 0xFF) << 56;
    [low, base >> 32]
}

/// A 64-bit interrupt gate (type 0xE, present, DPL 0) to `handler`.
fn interrupt_gate(handler: u64, selector: u16) -> [u64; 2] {
    let low = (handler & 0xFFFF)
        | (selector as u64) << 16
        | 0x8E << 40
        | ((handler >> 16) & 0xFFFF) << 48;
    [low, handler >> 32]
}

fn qwords(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|q| q.to_le_bytes()).collect()
}

/// Builds the guest.
pub fn build() -> Result<Image, String> {
    let mut a = Asm::new(CODE);
    let bank = |r: u64| r as u8; // register offsets fit a disp8

    // 1. Real mode (16-bit code, CS = 0).
    a.label("real");
    a.cli();
    a.mov_dx16(SERIAL_PORT);
    a.mov_al(b'R');
    a.out_dx_al();
    a.lgdt16(GDTR as u16);
    a.mov_eax_cr0(); // 0F 20 C0 reads the full CR0 whatever the operand size
    a.or_al(1); // CR0.PE
    a.mov_cr0_eax();
    a.jmp_far16(sel::CODE32, "protected");

    // 2. 32-bit protected mode, paging off.
    a.label("protected");
    a.mov_ax32(sel::DATA);
    a.mov_data_segs_ax();
    a.mov_esp(STACK_TOP as u32);
    a.mov_al(b'P');
    a.out_dx_al();
    // TR before long mode: VM entry (VMX) requires a busy TSS in TR as
    // soon as the guest is in IA-32e mode, and `ltr` of the TSS descriptor
    // here (its low 8 bytes, type 9) leaves TR type 11, which is the busy
    // 64-bit TSS once long mode is active.
    a.mov_ax32(sel::TSS);
    a.ltr_ax();
    a.mov_eax_cr4();
    a.or_eax(1 << 5); // CR4.PAE
    a.mov_cr4_eax();
    a.mov_eax(PML4 as u32);
    a.mov_cr3_eax();
    a.mov_ecx(0xC000_0080); // IA32_EFER
    a.rdmsr();
    a.or_eax(1 << 8); // EFER.LME
    a.wrmsr();
    a.mov_eax_cr0();
    a.or_eax(1 << 31); // CR0.PG: the CPU sets EFER.LMA
    a.mov_cr0_eax();
    a.jmp_far32(sel::CODE64, "long");

    // 3. Long mode.
    a.label("long");
    a.mov_dx32(SERIAL_PORT); // RDMSR/WRMSR used EDX
    a.mov_al(b'L');
    a.out_dx_al();
    a.mov_al(b'\n');
    a.out_dx_al();
    a.lidt_abs(IDTR as u32);
    // The MMIO register bank.
    a.mov_ebx(MMIO_BASE as u32);
    a.mov_rbx_d8_imm32(bank(reg::SCRATCH), SCRATCH_VALUE);
    a.or_rbx_d8_imm32(bank(reg::SCRATCH), SCRATCH_OR);
    a.movzx_eax_rbx_d8(bank(reg::ID));
    a.mov_rbx_d8_eax(bank(reg::ID_ECHO));
    a.mov_esi(PATTERN as u32);
    a.lea_rdi_rbx_d8(bank(reg::BUFFER));
    a.mov_ecx(MOVSB_PATTERN.len() as u32);
    a.cld();
    a.rep_movsb();
    a.mov_eax(XADD_ADDEND);
    a.lock_xadd_rbx_d8_eax(bank(reg::COUNTER));
    a.mov_rbx_d8_eax(bank(reg::COUNTER_ECHO));
    // The CPUID leaf the VMM configured.
    a.mov_eax(CPUID_LEAF);
    a.xor_ecx_ecx();
    a.cpuid();
    a.mov_ebx(MMIO_BASE as u32); // CPUID wrote EBX
    a.mov_rbx_d8_ecx(bank(reg::CPUID_ECX));
    a.mov_rbx_d8_edx(bank(reg::CPUID_EDX));
    // Open the interrupt window and wait for the handler.
    a.sti();
    a.nop(); // the STI shadow ends after this
    a.label("wait_irq");
    a.cmp_byte_abs(IRQ_FLAG as u32, 0);
    a.je("wait_irq");
    a.cli();
    // Report with a string OUT, then halt.
    a.mov_dx32(SERIAL_PORT); // CPUID wrote EDX
    a.mov_esi(MESSAGE as u32);
    a.mov_ecx(FINAL_MESSAGE.len() as u32);
    a.rep_outsb();
    a.hlt();

    // The interrupt handler (RBX still holds the bank's address).
    a.label("irq_handler");
    a.mov_rbx_d8_imm32(bank(reg::IRQ), u32::from(IRQ_VECTOR));
    a.mov_byte_abs(IRQ_FLAG as u32, 1);
    a.iretq();

    let (code, labels) = a.finish()?;
    let at = |l: &str| labels.get(l).copied().ok_or(format!("no label {l}"));
    let entries = Entries {
        real: at("real")?,
        protected: at("protected")?,
        long: at("long")?,
    };
    let handler = at("irq_handler")?;

    let gdt = qwords(&[
        0,
        flat_descriptor(0x9B, 0xC), // 0x08: code32, G D
        flat_descriptor(0x93, 0xC), // 0x10: data, G B
        flat_descriptor(0x9B, 0xA), // 0x18: code64, G L
        tss_descriptor(TSS, 0x67)[0],
        tss_descriptor(TSS, 0x67)[1], // 0x20: TSS64
    ]);
    let mut gdtr = (gdt.len() as u16 - 1).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&(GDT as u32).to_le_bytes());
    let idt_len = (usize::from(IRQ_VECTOR) + 1) * 16;
    let mut idt = vec![0u8; idt_len];
    let gate = qwords(&interrupt_gate(handler, sel::CODE64));
    idt[usize::from(IRQ_VECTOR) * 16..].copy_from_slice(&gate);
    let mut idtr = (idt_len as u16 - 1).to_le_bytes().to_vec();
    idtr.extend_from_slice(&IDT.to_le_bytes());

    const PRESENT_RW: u64 = 0x3;
    const PAGE_2M: u64 = 0x80;
    Ok(Image {
        pieces: vec![
            (GDTR, gdtr),
            (IDTR, idtr),
            (GDT, gdt),
            (TSS, vec![0; 0x68]),
            (PML4, qwords(&[PDPT | PRESENT_RW])),
            (PDPT, qwords(&[PD | PRESENT_RW])),
            (
                PD,
                qwords(&[PRESENT_RW | PAGE_2M, MMIO_BASE | PRESENT_RW | PAGE_2M]),
            ),
            (IDT, idt),
            (MESSAGE, FINAL_MESSAGE.to_vec()),
            (PATTERN, MOVSB_PATTERN.to_vec()),
            (IRQ_FLAG, vec![0]),
            (CODE, code),
        ],
        entries,
    })
}
