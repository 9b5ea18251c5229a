//! Runs one instruction on the host CPU, in ring 3, with all sixteen GPRs,
//! RFLAGS and XMM0-15 loaded from a context and saved back afterwards.
//!
//! Layout (all below 2 GiB, `MAP_32BIT`, so RIP-relative and 0x67 32-bit
//! addressing reach everything):
//! - a code page, mapped twice from one memfd: an RX view that runs and an
//!   RW view the harness writes the instruction slot through (no mprotect
//!   per case);
//! - a context page (RW) that the stub addresses RIP-relative, so the stub
//!   needs no register of its own: every GPR, including RSP, is the case's;
//! - a data area: a scratch stack (RAM in the assist's model), a RAM window
//!   and the MMIO buffer, contiguous and page aligned.
//!
//! The stub: save the callee-saved registers and the host RSP in the
//! context, load XMM0-15, RFLAGS (push/popfq on the host stack), the GPRs
//! (RSP last), run the 16-byte instruction slot (instruction + NOP fill),
//! store all GPRs, restore the host RSP, `pushfq` (nothing between the
//! instruction and it touches flags: only MOVs), store XMM, `cld`, return.
//!
//! Instructions that fault natively are never generated (aligned SSE forms
//! and CMPXCHG16B get aligned addresses, RFLAGS.AC is forced to 0 so there
//! is no #AC), so no signal handler is installed.

use std::ptr;

/// The offset of the instruction slot within the code page.
pub const SLOT_LEN: usize = 16;
const PAGE: usize = 4096;

/// Bytes of the data area: scratch stack, RAM window, MMIO buffer.
pub const STACK_LEN: usize = 4 * PAGE;
/// The RAM window (for MOVS between RAM and MMIO).
pub const RAMWIN_LEN: usize = 3 * PAGE;
/// The MMIO buffer.
pub const MMIO_LEN: usize = 3 * PAGE;
const DATA_LEN: usize = STACK_LEN + RAMWIN_LEN + MMIO_LEN;

/// The saved/loaded register context (layout known to the stub).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// RAX..R15 in encoding order.
    pub gprs: [u64; 16],
    /// RFLAGS.
    pub rflags: u64,
    /// The host RSP while the case runs.
    pub host_rsp: u64,
    /// XMM0-15.
    pub xmm: [u128; 16],
}

const OFF_GPRS: usize = 0;
const OFF_RFLAGS: usize = 128;
const OFF_HOST_RSP: usize = 136;
const OFF_XMM: usize = 144;

/// The native runner. Not `Send`: it owns raw mappings used by one thread.
pub struct Native {
    code_rx: *mut u8,
    code_rw: *mut u8,
    ctx: *mut Context,
    data: *mut u8,
    slot_off: usize,
}

fn rex_w(reg: u8) -> u8 {
    0x48 | ((reg >> 3) & 1) << 2
}

/// Emits `op r64, [rip + target]` (op 8B load, 89 store) at `code[pos..]`.
fn rip_mov(code: &mut Vec<u8>, base: u64, op: u8, reg: u8, target: u64) {
    code.push(rex_w(reg));
    code.push(op);
    code.push(((reg & 7) << 3) | 5);
    let next = base + code.len() as u64 + 4;
    code.extend_from_slice(&((target.wrapping_sub(next)) as i32).to_le_bytes());
}

/// Emits `movdqu xmmN, [rip+t]` (7F: store) at the end of `code`.
fn rip_movdqu(code: &mut Vec<u8>, base: u64, store: bool, reg: u8, target: u64) {
    code.push(0xF3);
    if reg >= 8 {
        code.push(0x44);
    }
    code.push(0x0F);
    code.push(if store { 0x7F } else { 0x6F });
    code.push(((reg & 7) << 3) | 5);
    let next = base + code.len() as u64 + 4;
    code.extend_from_slice(&((target.wrapping_sub(next)) as i32).to_le_bytes());
}

fn rip_disp(code: &mut Vec<u8>, base: u64, target: u64) {
    let next = base + code.len() as u64 + 4;
    code.extend_from_slice(&((target.wrapping_sub(next)) as i32).to_le_bytes());
}

fn map32(len: usize, prot: i32, flags: i32, fd: i32) -> *mut u8 {
    // SAFETY: a fresh anonymous or memfd mapping at a kernel-chosen address;
    // no existing memory is affected.
    let p = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags | libc::MAP_32BIT, fd, 0) };
    assert!(
        p != libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

impl Native {
    /// Maps the pages and writes the stub.
    pub fn new() -> Native {
        // SAFETY: memfd_create with a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"nvmm-oracle-code".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: fd is the memfd just created.
        let r = unsafe { libc::ftruncate(fd, PAGE as i64) };
        assert_eq!(r, 0);
        let code_rx = map32(
            PAGE,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_SHARED,
            fd,
        );
        let code_rw = map32(
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
        );
        // SAFETY: the mappings hold their own reference to the file.
        unsafe { libc::close(fd) };
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let ctx = map32(PAGE, libc::PROT_READ | libc::PROT_WRITE, anon, -1).cast::<Context>();
        let data = map32(DATA_LEN, libc::PROT_READ | libc::PROT_WRITE, anon, -1);

        let base = code_rx as u64;
        let c = ctx as u64;
        let mut code = Vec::new();
        // Callee-saved registers of the SysV ABI.
        code.extend_from_slice(&[0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57]);
        rip_mov(&mut code, base, 0x89, 4, c + OFF_HOST_RSP as u64);
        for x in 0..16u8 {
            rip_movdqu(
                &mut code,
                base,
                false,
                x,
                c + (OFF_XMM + 16 * x as usize) as u64,
            );
        }
        // push qword [rip+rflags]; popfq
        code.extend_from_slice(&[0xFF, 0x35]);
        rip_disp(&mut code, base, c + OFF_RFLAGS as u64);
        code.push(0x9D);
        for r in (0..16u8).filter(|&r| r != 4).chain([4]) {
            rip_mov(
                &mut code,
                base,
                0x8B,
                r,
                c + (OFF_GPRS + 8 * r as usize) as u64,
            );
        }
        let slot_off = code.len();
        code.extend_from_slice(&[0x90; SLOT_LEN]);
        for r in 0..16u8 {
            rip_mov(
                &mut code,
                base,
                0x89,
                r,
                c + (OFF_GPRS + 8 * r as usize) as u64,
            );
        }
        rip_mov(&mut code, base, 0x8B, 4, c + OFF_HOST_RSP as u64);
        // pushfq; pop qword [rip+rflags]
        code.extend_from_slice(&[0x9C, 0x8F, 0x05]);
        rip_disp(&mut code, base, c + OFF_RFLAGS as u64);
        for x in 0..16u8 {
            rip_movdqu(
                &mut code,
                base,
                true,
                x,
                c + (OFF_XMM + 16 * x as usize) as u64,
            );
        }
        code.push(0xFC); // cld: the ABI wants DF clear
        code.extend_from_slice(&[
            0x41, 0x5F, 0x41, 0x5E, 0x41, 0x5D, 0x41, 0x5C, 0x5D, 0x5B, 0xC3,
        ]);
        assert!(code.len() <= PAGE);
        // SAFETY: code_rw maps PAGE writable bytes; code.len() <= PAGE.
        unsafe { ptr::copy_nonoverlapping(code.as_ptr(), code_rw, code.len()) };
        Native {
            code_rx,
            code_rw,
            ctx,
            data,
            slot_off,
        }
    }

    /// The linear address the instruction runs at.
    pub fn insn_addr(&self) -> u64 {
        self.code_rx as u64 + self.slot_off as u64
    }

    /// The linear address of the scratch stack (its lowest byte).
    pub fn stack_addr(&self) -> u64 {
        self.data as u64
    }

    /// The linear address of the RAM window.
    pub fn ramwin_addr(&self) -> u64 {
        self.data as u64 + STACK_LEN as u64
    }

    /// The linear address of the MMIO buffer.
    pub fn mmio_addr(&self) -> u64 {
        self.data as u64 + (STACK_LEN + RAMWIN_LEN) as u64
    }

    /// The linear address of the first data byte (stack start).
    pub fn data_addr(&self) -> u64 {
        self.data as u64
    }

    /// The whole data area: stack, RAM window, MMIO buffer.
    pub fn data(&mut self) -> &mut [u8] {
        // SAFETY: `data` maps DATA_LEN bytes owned by self; the borrow of
        // self keeps anything else from aliasing them.
        unsafe { std::slice::from_raw_parts_mut(self.data, DATA_LEN) }
    }

    /// Runs `insn` (at most [`SLOT_LEN`] bytes) with `ctx` loaded; returns the
    /// context after it. RFLAGS.AC and TF are forced to 0 (no #AC/#DB).
    ///
    /// The caller guarantees the instruction is one of the generated forms:
    /// it touches only the data area (and the stack below the case's RSP,
    /// which the generator points into the scratch stack for PUSH/POP) and
    /// does not fault or transfer control.
    pub fn run(&mut self, insn: &[u8], ctx: &Context) -> Context {
        assert!(insn.len() <= SLOT_LEN);
        let mut slot = [0x90u8; SLOT_LEN];
        slot[..insn.len()].copy_from_slice(insn);
        let mut c = *ctx;
        c.rflags = (c.rflags & !((1 << 18) | (1 << 8))) | 2;
        // SAFETY: code_rw maps the code page; the slot lies within it.
        unsafe {
            ptr::copy_nonoverlapping(slot.as_ptr(), self.code_rw.add(self.slot_off), SLOT_LEN)
        };
        // SAFETY: ctx points to a writable page that holds a Context.
        unsafe { self.ctx.write(c) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: code_rx holds the stub written in `new`, a SysV function
        // taking no arguments that preserves the callee-saved registers, the
        // host RSP and DF=0 and returns; the slot holds a generated
        // instruction that only touches the data area (see above).
        unsafe {
            let f: extern "sysv64" fn() = std::mem::transmute(self.code_rx);
            f();
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { self.ctx.read() }
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        // SAFETY: each pointer is a mapping made in `new` with that length.
        unsafe {
            libc::munmap(self.code_rx.cast(), PAGE);
            libc::munmap(self.code_rw.cast(), PAGE);
            libc::munmap(self.ctx.cast(), PAGE);
            libc::munmap(self.data.cast(), DATA_LEN);
        }
    }
}
