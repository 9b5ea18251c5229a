//! The guest programs of NetBSD's `tests/lib/libnvmm` (`h_io_assist_asm.S`
//! tests 1-12, `h_mem_assist_asm.S` 64-bit and 16-bit tests), re-encoded
//! here byte by byte (each instruction's encoding next to its AT&T
//! mnemonic, as in the NetBSD sources), with the results the NetBSD
//! programs check.
//!
//! The layout is NetBSD's: data (I/O tests: RAM; memory tests: MMIO, not
//! mapped) at guest-physical 0x1000, code at 0x2000, 4-level page tables
//! at 0x3000-0x6000 with 4 KiB pages mapping 0x1000 and 0x2000. Each
//! program ends with NetBSD's `TEST_END`, `movq $-1,%rcx; rdmsr`: an
//! RDMSR of an MSR no kernel handles, which exits to the VMM. The 16-bit
//! programs end with `movl $-1,%ecx; rdmsr` (NetBSD's end with a bare
//! `rdmsr` on whatever ECX holds).
//!
//! Used by the real-kernel tests (`kernel_netbsd_assist.rs`) and by the
//! KVM run of the same programs (`netbsd_guests_kvm.rs`), which proves
//! the encodings and expected values on hardware virtualization.
#![allow(dead_code)]

/// Where the I/O tests' data buffer and the memory tests' MMIO page are.
pub const DATA: u64 = 0x1000;
/// Where the code is.
pub const CODE: u64 = 0x2000;
/// PML4, PDPT, PD, PT.
pub const PML4: u64 = 0x3000;
/// The page-table pages after the PML4.
pub const PT_PAGES: [u64; 3] = [0x4000, 0x5000, 0x6000];
/// The port of the I/O tests.
pub const PORT: u16 = 123;
/// The MSR of the end marker (ECX = -1).
pub const END_MSR: u32 = 0xFFFF_FFFF;

/// `movq $-1,%rcx; rdmsr`
pub const TEST_END: [u8; 9] = [0x48, 0xC7, 0xC1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x32];
/// `movl $-1,%ecx; rdmsr` in 16-bit code.
pub const TEST16_END: [u8; 8] = [0x66, 0xB9, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x32];

/// The page-table entries `(gpa, entry)` of the layout: PML4 -> PDPT ->
/// PD -> PT, and the PT mapping `DATA` and `CODE` (present, writable).
pub fn page_tables() -> Vec<(u64, u64)> {
    const PRESENT_RW: u64 = 0x3;
    vec![
        (PML4, PT_PAGES[0] | PRESENT_RW),
        (PT_PAGES[0], PT_PAGES[1] | PRESENT_RW),
        (PT_PAGES[1], PT_PAGES[2] | PRESENT_RW),
        (PT_PAGES[2] + 8 * (DATA >> 12), DATA | PRESENT_RW),
        (PT_PAGES[2] + 8 * (CODE >> 12), CODE | PRESENT_RW),
    ]
}

// Register numbers for the encoders.
const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;
const RBX: u8 = 3;
const RBP: u8 = 5;
const RSI: u8 = 6;
const RDI: u8 = 7;
const R11: u8 = 11;

/// `movq $imm32,%reg` (sign-extended) = REX.W(+B) C7 /0
fn movq(reg: u8, imm: i32) -> Vec<u8> {
    let rex = 0x48 | (reg >> 3);
    let mut v = vec![rex, 0xC7, 0xC0 | (reg & 7)];
    v.extend_from_slice(&imm.to_le_bytes());
    v
}

fn program(parts: &[&[u8]]) -> Vec<u8> {
    let mut v: Vec<u8> = parts.concat();
    v.extend_from_slice(&TEST_END);
    v
}

fn program16(parts: &[&[u8]]) -> Vec<u8> {
    let mut v: Vec<u8> = parts.concat();
    v.extend_from_slice(&TEST16_END);
    v
}

/// An I/O test: the guest moves `wanted` between port [`PORT`] and
/// [`DATA`]; for an IN test the device holds `wanted` and the data page
/// must end up holding it, for an OUT test the reverse.
pub struct IoTest {
    /// NetBSD's name.
    pub name: &'static str,
    /// The program.
    pub code: Vec<u8>,
    /// The string moved.
    pub wanted: &'static str,
    /// IN (true) or OUT.
    pub input: bool,
}

/// `h_io_assist` tests 1-12.
pub fn io_tests() -> Vec<IoTest> {
    let rbx_data = movq(RBX, DATA as i32);
    let rdx_port = movq(RDX, i32::from(PORT));
    let mov_al_to_rbx: &[u8] = &[0x88, 0x03]; // movb %al,(%rbx)
    let mov_ax_to_rbx: &[u8] = &[0x66, 0x89, 0x03]; // movw %ax,(%rbx)
    let mov_eax_to_rbx: &[u8] = &[0x89, 0x03]; // movl %eax,(%rbx)
    let inc_rbx: &[u8] = &[0x48, 0xFF, 0xC3]; // incq %rbx
    let add2_rbx: &[u8] = &[0x48, 0x83, 0xC3, 0x02]; // addq $2,%rbx
    let add4_rbx: &[u8] = &[0x48, 0x83, 0xC3, 0x04]; // addq $4,%rbx
    let port = PORT as u8;
    let t = |name, code, wanted, input| IoTest {
        name,
        code,
        wanted,
        input,
    };
    vec![
        t(
            "test1 - INB",
            program(&[
                &rbx_data,
                &[0xE4, port], // inb $123
                mov_al_to_rbx,
                inc_rbx,
                &rdx_port,
                &[0xEC], // inb %dx
                mov_al_to_rbx,
            ]),
            "12",
            true,
        ),
        t(
            "test2 - INW",
            program(&[
                &rbx_data,
                &[0x66, 0xE5, port], // inw $123
                mov_ax_to_rbx,
                add2_rbx,
                &rdx_port,
                &[0x66, 0xED], // inw %dx
                mov_ax_to_rbx,
            ]),
            "1234",
            true,
        ),
        t(
            "test3 - INL",
            program(&[
                &rbx_data,
                &[0xE5, port], // inl $123
                mov_eax_to_rbx,
                add4_rbx,
                &rdx_port,
                &[0xED], // inl %dx
                mov_eax_to_rbx,
            ]),
            "12345678",
            true,
        ),
        t(
            "test4 - INSB+REP",
            program(&[
                &movq(RDI, DATA as i32),
                &movq(RCX, 5),
                &rdx_port,
                &[0xF3, 0x6C], // rep insb
            ]),
            "12345",
            true,
        ),
        t(
            "test5 - INSW+REP",
            program(&[
                &movq(RDI, DATA as i32),
                &movq(RCX, 14),
                &rdx_port,
                &[0x66, 0xF3, 0x6D], // rep insw
            ]),
            "Comment est votre blanquette",
            true,
        ),
        t(
            "test6 - INSL+REP",
            program(&[
                &movq(RDI, DATA as i32),
                &movq(RCX, 7),
                &rdx_port,
                &[0xF3, 0x6D], // rep insl
            ]),
            "123456789abcdefghijklmnopqrs",
            true,
        ),
        t(
            "test7 - OUTB",
            program(&[
                &rbx_data,
                &[0x8A, 0x03], // movb (%rbx),%al
                &[0xE6, port], // outb $123
                inc_rbx,
                &[0x8A, 0x03], // movb (%rbx),%al
                &rdx_port,
                &[0xEE], // outb %dx
            ]),
            "12",
            false,
        ),
        t(
            "test8 - OUTW",
            program(&[
                &rbx_data,
                &[0x66, 0x8B, 0x03], // movw (%rbx),%ax
                &[0x66, 0xE7, port], // outw $123
                add2_rbx,
                &[0x66, 0x8B, 0x03], // movw (%rbx),%ax
                &rdx_port,
                &[0x66, 0xEF], // outw %dx
            ]),
            "1234",
            false,
        ),
        t(
            "test9 - OUTL",
            program(&[
                &rbx_data,
                &[0x8B, 0x03], // movl (%rbx),%eax
                &[0xE7, port], // outl $123
                add4_rbx,
                &[0x8B, 0x03], // movl (%rbx),%eax
                &rdx_port,
                &[0xEF], // outl %dx
            ]),
            "12345678",
            false,
        ),
        t(
            "test10 - OUTSB+REP",
            program(&[
                &movq(RSI, DATA as i32),
                &movq(RCX, 5),
                &rdx_port,
                &[0xF3, 0x6E], // rep outsb
            ]),
            "12345",
            false,
        ),
        t(
            "test11 - OUTSW+REP",
            program(&[
                &movq(RSI, DATA as i32),
                &movq(RCX, 8),
                &rdx_port,
                &[0x66, 0xF3, 0x6F], // rep outsw
            ]),
            "Ah, Herr Bramard",
            false,
        ),
        t(
            "test12 - OUTSL+REP",
            program(&[
                &movq(RSI, DATA as i32),
                &movq(RCX, 7),
                &rdx_port,
                &[0xF3, 0x6F], // rep outsl
            ]),
            "123456789abcdefghijklmnopqrs",
            false,
        ),
    ]
}

/// A memory test: after the program, the little-endian u64 at guest-
/// physical `at` (in the MMIO page) must be `wanted`.
pub struct MemTest {
    /// NetBSD's name.
    pub name: &'static str,
    /// The program.
    pub code: Vec<u8>,
    /// 16-bit (real mode) or 64-bit.
    pub real_mode: bool,
    /// The address checked.
    pub at: u64,
    /// Its expected value.
    pub wanted: u64,
}

/// `h_mem_assist` 64-bit tests 1-4, 6-11, 13, 15 and 16-bit tests 1-3, 5.
pub fn mem_tests() -> Vec<MemTest> {
    let rax_data = movq(RAX, DATA as i32);
    let abs = |op: &[u8]| {
        let mut v = op.to_vec();
        v.extend_from_slice(&DATA.to_le_bytes()); // moffs64
        v
    };
    let t = |name, code, wanted| MemTest {
        name,
        code,
        real_mode: false,
        at: DATA,
        wanted,
    };
    let t16 = |name, code, at, wanted| MemTest {
        name,
        code,
        real_mode: true,
        at,
        wanted,
    };
    vec![
        t(
            "test1 - MOV",
            program(&[
                &rax_data,
                &movq(RBP, DATA as i32),
                &[0x48, 0xC7, 0x00, 0x00, 0x10, 0x00, 0x00], // movq $0x1000,(%rax)
                &movq(R11, 1),
                &[0x4A, 0xC7, 0x04, 0xD8, 0x00, 0x20, 0x00, 0x00], // movq $0x2000,(%rax,%r11,8)
                &[0x4C, 0x8B, 0x45, 0x00],                         // movq (%rbp),%r8
                &[0x48, 0x8B, 0x5D, 0x08],                         // movq 8(%rbp),%rbx
                &[0x49, 0x01, 0xD8],                               // addq %rbx,%r8
                &[0x4C, 0x89, 0x45, 0x00],                         // movq %r8,(%rbp)
                &[0xC6, 0x45, 0x00, 0x04],                         // movb $4,(%rbp)
            ]),
            0x3004,
        ),
        t(
            "test2 - OR",
            program(&[
                &rax_data,
                &[0x48, 0xC7, 0x00, 0x00, 0x10, 0x00, 0x00], // movq $0x1000,(%rax)
                &movq(RBX, 0xFF),
                &[0x08, 0x18], // orb %bl,(%rax)
                &movq(RCX, 0x400),
                &[0x66, 0x09, 0x08], // orw %cx,(%rax)
                &movq(RCX, 0x200),
                &[0x48, 0x0B, 0x08], // orq (%rax),%rcx
                &[0x48, 0x89, 0x08], // movq %rcx,(%rax)
            ]),
            0x16FF,
        ),
        t(
            "test3 - AND",
            program(&[
                &rax_data,
                &[0x48, 0xC7, 0x00, 0xFF, 0x1F, 0x00, 0x00], // movq $0x1fff,(%rax)
                &movq(RBX, 0x1FF0),
                &[0x48, 0x21, 0x18], // andq %rbx,(%rax)
                &movq(RCX, 0x10C1),
                &[0x20, 0x08], // andb %cl,(%rax)
            ]),
            0x1FC0,
        ),
        t(
            "test4 - XOR",
            program(&[
                &rax_data,
                &[0x48, 0xC7, 0x00, 0xFF, 0x1F, 0x00, 0x00], // movq $0x1fff,(%rax)
                &movq(RBX, 0x1FF0),
                &[0x48, 0x31, 0x18], // xorq %rbx,(%rax)
                &movq(RCX, 0x10C0),
                &[0x66, 0x31, 0x08], // xorw %cx,(%rax)
            ]),
            0x10CF,
        ),
        t(
            "test6 - DMO",
            program(&[
                &movq(RAX, 0xFFA0),
                &abs(&[0x48, 0xA3]), // movabs %rax,0x1000
                &abs(&[0xA0]),       // movabs 0x1000,%al
                &[0x0C, 0x0B],       // orb $0xb,%al
                &abs(&[0xA2]),       // movabs %al,0x1000
            ]),
            0xFFAB,
        ),
        t(
            "test7 - STOS",
            program(&[
                &movq(RAX, 0x56),
                &movq(RCX, 1),
                &movq(RDI, DATA as i32),
                &[0xF3, 0xAA], // rep stosb
                &movq(RAX, 0x1234),
                &[0x66, 0xAB], // stosw
            ]),
            0x0012_3456,
        ),
        t(
            "test8 - LODS",
            program(&[
                &movq(RSI, DATA as i32 + 8),
                &[0x48, 0xC7, 0x06, 0x78, 0x56, 0x34, 0x12], // movq $0x12345678,(%rsi)
                &movq(RDI, DATA as i32),
                &[0x66, 0xAD],             // lodsw
                &[0x66, 0x89, 0x07],       // movw %ax,(%rdi)
                &[0x48, 0x83, 0xC7, 0x02], // addq $2,%rdi
                &[0xAC],                   // lodsb
                &[0x88, 0x07],             // movb %al,(%rdi)
                &[0x48, 0x83, 0xC7, 0x01], // addq $1,%rdi
                &[0xAC],                   // lodsb
                &[0x88, 0x07],             // movb %al,(%rdi)
                &[0x48, 0x83, 0xC7, 0x02], // addq $2,%rdi
            ]),
            0x1234_5678,
        ),
        t(
            "test9 - MOVS",
            program(&[
                &rax_data,
                &[0x48, 0xC7, 0x40, 0x08, 0x78, 0x56, 0x34, 0x12], // movq $0x12345678,8(%rax)
                &movq(RSI, DATA as i32 + 8),
                &movq(RDI, DATA as i32),
                &movq(RCX, 4),
                &[0xF3, 0xA4], // rep movsb
                &movq(RCX, 2),
                &[0xF3, 0x66, 0xA5], // rep movsw
            ]),
            0x1234_5678,
        ),
        t(
            "test10 - MOVZXB",
            program(&[
                &rax_data,
                &[0x48, 0xC7, 0x00, 0x78, 0x56, 0x34, 0x12], // movq $0x12345678,(%rax)
                &movq(RBX, -1),
                &[0x0F, 0xB6, 0x18], // movzbl (%rax),%ebx
                &[0x48, 0x89, 0x18], // movq %rbx,(%rax)
            ]),
            0x78,
        ),
        t(
            "test11 - MOVZXW",
            program(&[
                &rax_data,
                &[0x48, 0xC7, 0x00, 0x78, 0x56, 0x34, 0x12], // movq $0x12345678,(%rax)
                &movq(RBX, -1),
                &[0x48, 0x0F, 0xB7, 0x18], // movzwq (%rax),%rbx
                &[0x48, 0x89, 0x18],       // movq %rbx,(%rax)
            ]),
            0x5678,
        ),
        t(
            "test13 - SUB",
            program(&[
                &rax_data,
                &[0x48, 0xC7, 0x00, 0xFF, 0xA0, 0x00, 0x10], // movq $0x1000a0ff,(%rax)
                &movq(RCX, 0xFFFF),
                &[0x28, 0x08], // subb %cl,(%rax)
                &movq(RCX, 0xA000),
                &[0x66, 0x29, 0x08], // subw %cx,(%rax)
                &[0x48, 0xB9, 0xFF, 0xA0, 0x00, 0x10, 0x0F, 0, 0, 0], // movabsq $0xf1000a0ff,%rcx
                &[0x48, 0x2B, 0x08], // subq (%rax),%rcx
                &[0x48, 0x89, 0x08], // movq %rcx,(%rax)
            ]),
            0x0000_000F_0000_A0FF,
        ),
        t(
            "test15 - XCHG",
            program(&[
                &rax_data,
                &movq(RBX, 0x12_0000),
                &movq(RCX, 0x3400),
                &movq(RDX, 0x56),
                &[0x48, 0x87, 0x18], // xchgq %rbx,(%rax)
                &[0x66, 0x87, 0x08], // xchgw (%rax),%cx
                &[0x86, 0x10],       // xchgb %dl,(%rax)
            ]),
            0x12_3456,
        ),
        t16(
            "test16_1 - MOV single",
            program16(&[
                &[0xBB, 0xF1, 0x10], // movw $0x10f1,%bx
                &[0xBA, 0x23, 0x01], // movw $0x123,%dx
                &[0x88, 0x17],       // movb %dl,(%bx)
            ]),
            0x10F1,
            0x23,
        ),
        t16(
            "test16_2 - MOV dual",
            program16(&[
                &[0xBB, 0xF1, 0x10], // movw $0x10f1,%bx
                &[0xBF, 0x02, 0x00], // movw $2,%di
                &[0xBA, 0x23, 0x01], // movw $0x123,%dx
                &[0x89, 0x11],       // movw %dx,(%bx,%di)
            ]),
            0x10F3,
            0x123,
        ),
        t16(
            "test16_3 - MOV dual disp",
            program16(&[
                &[0xBD, 0xF1, 0x10], // movw $0x10f1,%bp
                &[0xBE, 0x02, 0x00], // movw $2,%si
                &[0xBA, 0x78, 0x06], // movw $0x678,%dx
                &[0x89, 0x52, 0xFE], // movw %dx,-2(%bp,%si)
            ]),
            0x10F1,
            0x678,
        ),
        t16(
            "test16_5 - disp16 only",
            program16(&[
                &[0xC6, 0x06, 0x34, 0x12, 0x12], // movb $0x12,0x1234
            ]),
            0x1234,
            0x12,
        ),
    ]
}
