//! Builds host-oracle cases: instruction bytes, registers, the memory
//! operand's bytes, the exit the hardware would report and the device
//! accesses the instruction must make.
#![allow(dead_code)]

use super::encode::{self, DF, Expect, Form, Imm, Kind, OperandValue, RegField, Rng, STATUS};
use super::native::{Context, MMIO_LEN, RAMWIN_LEN, STACK_LEN};

/// Addresses of the native layout the generator targets.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub insn: u64,
    pub stack: u64,
    pub ramwin: u64,
    pub mmio: u64,
    pub fs_base: u64,
    pub gs_base: u64,
}

impl Layout {
    /// The RSP every case starts with (room for PUSH below it, POP above).
    pub fn stack_top(&self) -> u64 {
        self.stack + STACK_LEN as u64 - 256
    }
}

/// One generated case.
#[derive(Clone, Debug)]
pub struct Case {
    pub group: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
    pub ctx: Context,
    /// Bytes to store in the data area before the run (address, bytes).
    pub patch: Vec<(u64, Vec<u8>)>,
    /// The device accesses in order (before splitting at pages).
    pub expect: Vec<Expect>,
    /// An alternative accepted sequence (CMPXCHG without the write-back).
    pub expect_alt: Option<Vec<Expect>>,
    /// String instruction: compare the bytes accessed, not the chunking;
    /// the accesses are known only once the native run says how many
    /// elements were done (REPE/REPNE stop early).
    pub string: Option<StringInfo>,
    /// Undefined flags of this form.
    pub undefined: u64,
    /// Compare the device access sequence (and check that the native run
    /// wrote only the expected bytes). The fuzz target, which has no access
    /// model of its own for arbitrary forms, turns this off: `expect` then
    /// only gives the exit GPA.
    pub check_accesses: bool,
}

fn seg_prefix(rng: &mut Rng, l: &Layout) -> (Option<u8>, u64) {
    match rng.below(10) {
        0 => (Some(rng.pick(&[0x26, 0x2E, 0x36, 0x3E])), 0),
        1 => (Some(0x64), l.fs_base),
        2 => (Some(0x65), l.gs_base),
        _ => (None, 0),
    }
}

fn shuffle(rng: &mut Rng, v: &mut [u8]) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

fn random_ctx(rng: &mut Rng, l: &Layout) -> Context {
    let mut c = Context::default();
    for g in c.gprs.iter_mut() {
        *g = rng.value(8);
    }
    c.gprs[4] = l.stack_top();
    for x in c.xmm.iter_mut() {
        *x = (rng.next() as u128) << 64 | rng.next() as u128;
    }
    c.rflags = 2 | (rng.next() & STATUS) | if rng.chance(30) { DF } else { 0 };
    c
}

/// A target address for an access of `len` bytes in the MMIO buffer,
/// aligned to `align`; a fifth of them cross a page boundary.
fn mmio_target(rng: &mut Rng, l: &Layout, len: u64, align: u64, slack: u64) -> u64 {
    let lo = l.mmio + slack;
    let hi = l.mmio + MMIO_LEN as u64 - len - slack;
    let mut a = if rng.chance(20) && align < len {
        // Straddle the boundary after the first page.
        l.mmio + 4096 - 1 - rng.below(len.saturating_sub(1).max(1))
    } else {
        lo + rng.below(hi - lo)
    };
    a &= !(align - 1);
    a.clamp(lo, hi)
}

/// A case for a ModRM form, or `None` if the random choices did not fit.
pub fn modrm_case(rng: &mut Rng, form: &Form, l: &Layout) -> Option<Case> {
    let size = rng.pick(form.sizes) as u64;
    let sse = form.reg == RegField::Xmm;
    let mut legacy = Vec::new();
    let mut rex_w = matches!(size, 8) && !sse;
    if let Some(w) = form.rex_w {
        rex_w = w;
    }
    if size == 2 {
        legacy.push(0x66);
    } else if !sse && form.group != "movnti" && rng.chance(8) && size != 4 {
        // 66 on a byte form is ignored; with REX.W the W wins.
        legacy.push(0x66);
    }
    let addr32 = rng.chance(25);
    if addr32 {
        legacy.push(0x67);
    }
    let write_kind = matches!(
        form.kind,
        Kind::Rmw | Kind::CmpXchg | Kind::BtReg { write: true }
    );
    let locked = form.lockable && write_kind && rng.chance(25);
    if locked {
        legacy.push(0xF0);
    }
    let (seg, seg_base) = seg_prefix(rng, l);
    legacy.extend(seg);
    shuffle(rng, &mut legacy);

    let reg = match form.reg {
        RegField::Ext(n) => n,
        _ => rng.below(16) as u8,
    };
    let force_rex = rng.chance(30);
    let mem_size = match form.mem_size {
        Some(0) | None => size,
        Some(n) => n as u64,
    };

    let mut ctx = random_ctx(rng, l);
    let mut fixed = vec![];
    let mut avoid = vec![];
    match form.kind {
        Kind::Push => fixed.push((4u8, l.stack_top())),
        Kind::Pop => fixed.push((4u8, l.stack_top() + size)),
        Kind::BtReg { .. } => avoid.push(reg),
        _ => {}
    }
    if matches!(form.kind, Kind::CmpXchg) && form.reg == RegField::Ext(1) {
        // CMPXCHG8B/16B: keep RAX/RDX/RBX/RCX out of the address.
        avoid.extend_from_slice(&[0, 1, 2, 3]);
    }
    // The bit offset of BT* m,r moves the address.
    let mut adjust: i64 = 0;
    if let Kind::BtReg { .. } = form.kind {
        let bits = size as i64 * 8;
        let off = rng.below(bits as u64 * 16) as i64 - bits * 8;
        let mask = if size == 8 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let low = (off as u64) & mask;
        // The CPU uses the offset register at the operation size.
        ctx.gprs[reg as usize] = if rng.chance(50) {
            (rng.next() & !mask) | low
        } else {
            low
        };
        adjust = off.div_euclid(bits) * size as i64;
    }
    // Locked accesses (LOCK prefix, XCHG) that cross a cache line are split
    // locks: Linux's split-lock detection then traps and throttles the
    // process (or kills it with SIGBUS in fatal mode). Keep them within a
    // line; the page-split path is covered by the unlocked forms.
    let is_locked = locked || form.group == "xchg";
    let mut access = mmio_target(rng, l, mem_size, form.align.max(1), 64);
    if is_locked && (access & 63) + mem_size > 64 {
        access = (access & !63) + 64 - mem_size.next_power_of_two().min(64);
        access &= !(form.align.max(1) - 1);
    }
    // Some unlocked, unaligned operands start in the RAM window and end in
    // the MMIO buffer right after it: split between RAM and MMIO.
    let mut split = false;
    if !is_locked && form.align <= 1 && mem_size > 1 && rng.chance(6) {
        access = l.mmio - 1 - rng.below(mem_size - 1);
        split = true;
    }
    let ea = access.wrapping_sub(adjust as u64);
    let mut mem = None;
    for _ in 0..20 {
        mem = encode::mem_operand(rng, ea, seg_base, addr32, &fixed, &avoid);
        if mem.is_some() {
            break;
        }
    }
    let mem = mem?;
    for &(r, v) in &mem.regs {
        ctx.gprs[r as usize] = v;
    }
    let imm = match form.imm {
        Imm::None => vec![],
        Imm::Ib => vec![rng.value(1) as u8],
        Imm::Iz if size == 2 => (rng.value(2) as u16).to_le_bytes().to_vec(),
        Imm::Iz => (rng.value(4) as u32).to_le_bytes().to_vec(),
    };
    let bytes = encode::assemble(
        &legacy,
        form.mandatory,
        (rex_w, reg >= 8),
        force_rex,
        form.opcode,
        reg,
        &mem,
        &imm,
        l.insn,
    );
    if bytes.len() > 15 {
        return None;
    }
    // The operand's initial bytes.
    let mut val: Vec<u8> = (0..mem_size).map(|_| 0).collect();
    for (i, chunk) in val.chunks_mut(8).enumerate() {
        let v = rng.value(chunk.len() as u32).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
        let _ = i;
    }
    if matches!(form.kind, Kind::CmpXchg) && rng.chance(50) {
        // Make the comparison succeed.
        let mut cmp = ctx.gprs[0].to_le_bytes().to_vec();
        if form.reg == RegField::Ext(1) {
            let half = (mem_size / 2) as usize;
            cmp = ctx.gprs[0].to_le_bytes()[..half].to_vec();
            cmp.extend_from_slice(&ctx.gprs[2].to_le_bytes()[..half]);
        }
        val.copy_from_slice(&cmp[..mem_size as usize]);
    }
    let mut patch = vec![(access, val)];
    let r = |write| Expect {
        addr: access,
        len: mem_size,
        write,
    };
    let (expect, alt) = match form.kind {
        Kind::Read | Kind::BtReg { write: false } | Kind::Push => (vec![r(false)], None),
        Kind::Write | Kind::Pop => (vec![r(true)], None),
        Kind::Rmw | Kind::BtReg { write: true } => (vec![r(false), r(true)], None),
        Kind::CmpXchg => (vec![r(false), r(true)], Some(vec![r(false)])),
    };
    if matches!(form.kind, Kind::Pop) {
        let v = rng.value(8).to_le_bytes()[..size as usize].to_vec();
        patch.push((l.stack_top(), v));
    }
    Some(Case {
        group: form.group,
        name: format!(
            "{} size {} {}{}{}{}",
            form.name,
            size,
            mem.shape,
            if addr32 { " a32" } else { "" },
            if locked { " lock" } else { "" },
            if split { " ram|mmio" } else { "" }
        ),
        bytes,
        ctx,
        patch,
        expect,
        expect_alt: alt,
        string: None,
        undefined: form.undefined,
        check_accesses: true,
    })
}

/// `mov al/ax/eax/rax <-> moffs` (A0-A3): the offset is the address.
pub fn moffs_case(rng: &mut Rng, l: &Layout) -> Option<Case> {
    let op = 0xA0 + rng.below(4) as u8;
    let size = if op & 1 == 0 {
        1
    } else {
        rng.pick(&[2u64, 4, 8])
    };
    let mut legacy = vec![];
    if size == 2 {
        legacy.push(0x66);
    }
    let addr32 = rng.chance(30);
    if addr32 {
        legacy.push(0x67);
    }
    let (seg, seg_base) = seg_prefix(rng, l);
    legacy.extend(seg);
    shuffle(rng, &mut legacy);
    let access = mmio_target(rng, l, size, 1, 64);
    let off = access.wrapping_sub(seg_base);
    if addr32 && off > 0xffff_ffff {
        return None;
    }
    let mut bytes = legacy;
    if size == 8 {
        bytes.push(0x48);
    } else if rng.chance(20) {
        bytes.push(0x40);
    }
    bytes.push(op);
    if addr32 {
        bytes.extend_from_slice(&(off as u32).to_le_bytes());
    } else {
        bytes.extend_from_slice(&off.to_le_bytes());
    }
    let ctx = random_ctx(rng, l);
    let write = op >= 0xA2;
    let val = rng.value(8).to_le_bytes()[..size as usize].to_vec();
    Some(Case {
        group: "mov",
        name: format!(
            "mov moffs {op:02x} size {size}{}",
            if addr32 { " a32" } else { "" }
        ),
        bytes,
        ctx,
        patch: vec![(access, val)],
        expect: vec![Expect {
            addr: access,
            len: size,
            write,
        }],
        expect_alt: None,
        string: None,
        undefined: 0,
        check_accesses: true,
    })
}

/// The parameters of a string case.
#[derive(Clone, Copy, Debug)]
pub struct StringInfo {
    pub src: u64,
    pub dst: u64,
    pub size: u64,
    pub df: bool,
    pub src_mmio: bool,
    pub dst_mmio: bool,
    pub uses_src: bool,
    pub uses_dst: bool,
    pub writes_dst: bool,
    pub addr32: bool,
    pub rep: bool,
}

impl StringInfo {
    /// The accesses of the first `n` elements.
    pub fn expect(&self, n: u64) -> Vec<Expect> {
        let mut v = vec![];
        for i in 0..n {
            let step = if self.df {
                (i * self.size).wrapping_neg()
            } else {
                i * self.size
            };
            if self.uses_src && self.src_mmio {
                v.push(Expect {
                    addr: self.src.wrapping_add(step),
                    len: self.size,
                    write: false,
                });
            }
            if self.uses_dst && self.dst_mmio {
                v.push(Expect {
                    addr: self.dst.wrapping_add(step),
                    len: self.size,
                    write: self.writes_dst,
                });
            }
        }
        v
    }

    /// The destination writes of the first `n` elements, wherever the
    /// destination lives (for the generator's targeting check).
    pub fn expect_all_dst(&self, n: u64) -> Vec<Expect> {
        (0..n)
            .filter(|_| self.writes_dst)
            .map(|i| {
                let step = if self.df {
                    (i * self.size).wrapping_neg()
                } else {
                    i * self.size
                };
                Expect {
                    addr: self.dst.wrapping_add(step),
                    len: self.size,
                    write: true,
                }
            })
            .collect()
    }
}

/// Where the operands of a string case live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Mmio,
    Ram,
}

/// A string instruction with REP/REPE/REPNE or none, DF 0/1, RCX 0, 1 or
/// large, operands in MMIO (and for MOVS one side in RAM).
pub fn string_case(rng: &mut Rng, l: &Layout) -> Option<Case> {
    // (name, opcode byte-form, reads src, writes dst, uses src, uses dst)
    let ops: [(&str, u8); 5] = [
        ("movs", 0xA4),
        ("stos", 0xAA),
        ("lods", 0xAC),
        ("cmps", 0xA6),
        ("scas", 0xAE),
    ];
    let (name, op0) = rng.pick(&ops);
    let size = rng.pick(&[1u64, 2, 4, 8]);
    let op = if size == 1 { op0 } else { op0 + 1 };
    let rep = match rng.below(4) {
        0 => None,
        1 | 2 => Some(0xF3u8),
        _ => Some(0xF2),
    };
    let addr32 = rng.chance(25);
    let df = rng.chance(40);
    let count: u64 = if rep.is_none() {
        1
    } else {
        match rng.below(5) {
            0 => 0,
            1 => 1,
            _ => 2 + rng.below(if size == 1 { 3000 } else { 2000 / size }),
        }
    };
    let uses_src = matches!(name, "movs" | "lods" | "cmps");
    let uses_dst = matches!(name, "movs" | "stos" | "cmps" | "scas");
    let (src_place, dst_place) = if name == "movs" {
        match rng.below(3) {
            0 => (Place::Mmio, Place::Ram),
            1 => (Place::Ram, Place::Mmio),
            _ => (Place::Mmio, Place::Mmio),
        }
    } else if name == "cmps" {
        if rng.chance(50) {
            (Place::Mmio, Place::Ram)
        } else {
            (Place::Ram, Place::Mmio)
        }
    } else {
        (Place::Mmio, Place::Mmio)
    };
    let span = count.max(1) * size;
    // Start address so that the whole run stays in its region; with both in
    // MMIO, source in the first half and destination in the second, or
    // the other way round.
    let region = |p: Place| match p {
        Place::Mmio => (l.mmio, MMIO_LEN as u64),
        Place::Ram => (l.ramwin, RAMWIN_LEN as u64),
    };
    let pick_start = |rng: &mut Rng, base: u64, len: u64| -> Option<u64> {
        if span + 16 > len {
            return None;
        }
        let lo = base + 8;
        let hi = base + len - span - 8;
        let a = lo + rng.below(hi - lo + 1);
        // With DF=1 the first element is the highest.
        Some(if df { a + span - size } else { a })
    };
    let (mut s_base, mut s_len) = region(src_place);
    let (mut d_base, mut d_len) = region(dst_place);
    if src_place == dst_place && uses_src && uses_dst {
        let half = MMIO_LEN as u64 / 2;
        if rng.chance(50) {
            s_len = half;
            d_base += half;
            d_len = half;
        } else {
            d_len = half;
            s_base += half;
            s_len = half;
        }
    }
    let src = pick_start(rng, s_base, s_len)?;
    let dst = pick_start(rng, d_base, d_len)?;
    let mut legacy = vec![];
    legacy.extend(rep);
    if size == 2 {
        legacy.push(0x66);
    }
    if addr32 {
        legacy.push(0x67);
    }
    // A segment override applies to the source only (ES:RDI is fixed);
    // FS on the source where the address allows it.
    let mut src_off = src;
    if uses_src && !addr32 && rng.chance(15) {
        legacy.push(0x64);
        src_off = src.wrapping_sub(l.fs_base);
    } else if rng.chance(15) {
        legacy.push(rng.pick(&[0x26, 0x2E, 0x36, 0x3E, 0x65]));
        if *legacy.last().unwrap() == 0x65 {
            src_off = src.wrapping_sub(l.gs_base);
        }
    }
    shuffle(rng, &mut legacy);
    let mut bytes = legacy;
    if size == 8 {
        bytes.push(0x48);
    } else if rng.chance(15) {
        bytes.push(0x40);
    }
    bytes.push(op);
    let mut ctx = random_ctx(rng, l);
    ctx.rflags = (ctx.rflags & !DF) | if df { DF } else { 0 };
    let hi = |rng: &mut Rng, v: u64| {
        if addr32 {
            (rng.next() << 32) | (v & 0xffff_ffff)
        } else {
            v
        }
    };
    ctx.gprs[1] = hi(rng, count);
    ctx.gprs[6] = hi(rng, src_off);
    ctx.gprs[7] = hi(rng, dst);
    if matches!(name, "cmps" | "scas") {
        // Few distinct values, so REPE/REPNE stop somewhere inside.
        ctx.gprs[0] = (ctx.gprs[0] & !0xff) | rng.below(2);
    }
    let mut patch = vec![];
    let fill = |rng: &mut Rng, at: u64, few: bool| -> (u64, Vec<u8>) {
        let lo = if df { at + size - span } else { at };
        let v = (0..span)
            .map(|i| {
                if few {
                    if i % size == 0 { rng.below(2) as u8 } else { 0 }
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        (lo, v)
    };
    let few = matches!(name, "cmps" | "scas");
    if uses_src {
        patch.push(fill(rng, src, few));
    }
    if uses_dst && name != "stos" && name != "movs" {
        patch.push(fill(rng, dst, few));
    }
    if few {
        // Make high bytes of RAX zero so comparisons can succeed.
        ctx.gprs[0] &= 0xff;
    }
    let info = StringInfo {
        src,
        dst,
        size,
        df,
        src_mmio: src_place == Place::Mmio,
        dst_mmio: dst_place == Place::Mmio,
        uses_src,
        uses_dst,
        writes_dst: matches!(name, "movs" | "stos"),
        addr32,
        rep: rep.is_some(),
    };
    Some(Case {
        group: "string",
        name: format!(
            "{}{} {name} size {size} df {} count {count} src {:?} dst {:?}{}",
            match rep {
                Some(0xF3) => "rep ",
                Some(_) => "repne ",
                None => "",
            },
            "",
            df as u8,
            src_place,
            dst_place,
            if addr32 { " a32" } else { "" }
        ),
        bytes,
        ctx,
        patch,
        expect: vec![],
        expect_alt: None,
        string: Some(info),
        undefined: 0,
        check_accesses: true,
    })
}
