//! KVM oracle cases: one instruction per case in a given mode, with the
//! registers that make its memory operand land in one of the mode's
//! windows, or a port-I/O instruction.
#![allow(dead_code)]

use super::encode::{self, DF, Form, Imm, Kind, OperandValue, RegField, Rng, STATUS};
use super::kvm::HOLE;
use super::kvm_modes::{CODE, ModeDef, STACK, Window};
use nvmm_assist::{Registers, Segment};

/// What the assist needs to know about a port-I/O case (the hardware's
/// I/O exit information).
#[derive(Clone, Copy, Debug)]
pub struct IoInfo {
    pub port: u16,
    pub input: bool,
    pub size: u8,
    pub address_size: u8,
    pub rep: bool,
    pub string: bool,
    /// The segment the exit reports for OUTS, or `None` (the assist reads
    /// the prefixes).
    pub segment: Option<Segment>,
}

#[derive(Clone, Debug)]
pub struct KCase {
    pub group: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
    pub state: Registers,
    /// Bytes to put in the devices (gpa, bytes) and in RAM before the run.
    pub dev_patch: Vec<(u64, Vec<u8>)>,
    pub ram_patch: Vec<(u64, Vec<u8>)>,
    /// The GPA of the first device access, where the generator knows it.
    pub first_gpa: Option<u64>,
    pub io: Option<IoInfo>,
    pub undefined: u64,
}

const SEG_PREFIX: [u8; 6] = [0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65];

fn random_state(rng: &mut Rng, mode: &ModeDef) -> Registers {
    let mut st = mode.state.clone();
    for g in st.gprs.iter_mut() {
        *g = if mode.bits == 8 {
            rng.value(8)
        } else {
            rng.value(4) & 0xffff_ffff
        };
    }
    st.gprs[4] = STACK;
    st.rip = CODE;
    let mut x = [0u128; 16];
    for v in x.iter_mut() {
        *v = u128::from(rng.next()) << 64 | u128::from(rng.next());
    }
    st.xmm = Some(x);
    st.rflags = 2 | (rng.next() & STATUS) | if rng.chance(30) { DF } else { 0 };
    st
}

fn address_size(rng: &mut Rng, bits: u8) -> (u8, bool) {
    let toggle = rng.chance(25);
    let a = match (bits, toggle) {
        (8, false) => 8,
        (8, true) => 4,
        (4, false) | (2, true) => 4,
        _ => 2,
    };
    (a, toggle)
}

fn pick_window<'a>(
    rng: &mut Rng,
    mode: &'a ModeDef,
    asz: u8,
    mmio: bool,
    need: u64,
) -> Option<&'a Window> {
    let ok: Vec<&Window> = mode
        .windows
        .iter()
        .filter(|w| w.mmio == mmio && w.len > need + 64 && fits(asz, w))
        .collect();
    if ok.is_empty() {
        None
    } else {
        Some(ok[rng.below(ok.len() as u64) as usize])
    }
}

/// Whether the window's offsets fit the address size.
fn fits(asz: u8, w: &&Window) -> bool {
    match asz {
        2 => w.off + w.len <= 0x1_0000,
        4 => w.off + w.len <= 0x1_0000_0000,
        _ => true,
    }
}

fn dst_window<'a>(
    rng: &mut Rng,
    mode: &'a ModeDef,
    asz: u8,
    mmio: bool,
    need: u64,
) -> Option<&'a Window> {
    let ok: Vec<&Window> = mode
        .windows
        .iter()
        .filter(|w| {
            w.mmio == mmio && w.len > need + 64 && fits(asz, w) && (mode.bits != 8 || w.seg < 4)
        })
        .collect();
    if ok.is_empty() {
        None
    } else {
        Some(ok[rng.below(ok.len() as u64) as usize])
    }
}

/// A ModRM memory form in `mode`, or `None` if the form does not exist
/// there (64-bit only forms, SSE: the KVM state here has no XMM).
pub fn mem_case(rng: &mut Rng, form: &Form, mode: &ModeDef) -> Option<KCase> {
    if form.rex_w == Some(true) && mode.bits != 8 {
        return None;
    }
    let sizes: Vec<u8> = form
        .sizes
        .iter()
        .copied()
        .filter(|&s| s != 8 || mode.bits == 8)
        .collect();
    if sizes.is_empty() {
        return None;
    }
    let size = rng.pick(&sizes) as u64;
    let default_op = if mode.bits == 2 { 2 } else { 4 };
    let mut legacy = vec![];
    // MOVNTI takes no 66 (NP 0F C3): m32 in every mode.
    if size != 1 && size != 8 && size != default_op && form.group != "movnti" {
        legacy.push(0x66);
    }
    if matches!(form.kind, Kind::Push | Kind::Pop) && mode.bits == 8 && size == 4 {
        return None;
    }
    let (asz, a_toggle) = address_size(rng, mode.bits);
    if a_toggle {
        legacy.push(0x67);
    }
    let write_kind = matches!(
        form.kind,
        Kind::Rmw | Kind::CmpXchg | Kind::BtReg { write: true }
    );
    if form.lockable && write_kind && rng.chance(20) {
        legacy.push(0xF0);
    }
    let mem_size = match form.mem_size {
        Some(0) | None => size,
        Some(n) => n as u64,
    };
    let w = *pick_window(rng, mode, asz, true, mem_size + 2048)?;
    let mut st = random_state(rng, mode);
    let reg = match form.reg {
        RegField::Ext(n) => n,
        _ if mode.bits == 8 => rng.below(16) as u8,
        _ => rng.below(8) as u8,
    };
    // BT* m,r: the offset register moves the address; keep it out of the
    // addressing registers.
    let mut adjust: i64 = 0;
    let mut avoid = vec![];
    let reg = if let Kind::BtReg { .. } = form.kind {
        let reg = if asz == 2 {
            rng.pick(&[0u8, 1, 2])
        } else {
            reg
        };
        avoid.push(reg);
        let bits = size as i64 * 8;
        let off = rng.below(bits as u64 * 8) as i64 - bits * 4;
        let mask = if size == 8 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        st.gprs[reg as usize] = (off as u64) & mask;
        adjust = off.div_euclid(bits) * size as i64;
        reg
    } else {
        reg
    };
    let access_off = w.off + 1024 + rng.below(w.len - mem_size - 2048);
    let mut access_off = access_off & !(form.align.max(1) - 1);
    // Some accesses (40% of those in the flat hole windows) straddle the edge between RAM and the hole
    // (0x9ffff|0xa0000 or 0xbffff|0xc0000), where the window maps the hole
    // linearly: part RAM, part MMIO, split by page. Locked and aligned
    // forms stay whole.
    let mut straddle = false;
    if w.gpa == HOLE.0
        && w.off == HOLE.0
        && w.len == HOLE.1
        && mem_size > 1
        && form.align <= 1
        && !form.lockable
        && form.group != "xchg"
        && rng.chance(40)
    {
        let k = 1 + rng.below(mem_size - 1);
        access_off = if rng.chance(50) {
            w.off - k
        } else {
            w.off + w.len - k
        };
        straddle = true;
    }
    let ea = access_off.wrapping_sub(adjust as u64);
    let fixed: Vec<(u8, u64)> = match form.kind {
        Kind::Push => vec![(4, STACK)],
        Kind::Pop => vec![(4, STACK + size)],
        _ => vec![],
    };
    let (mem, ss_default) = if asz == 2 {
        if ea > 0xffff {
            return None;
        }
        let (m, ss) = encode::mem_operand16(rng, ea as u16);
        if m.regs.iter().any(|r| avoid.contains(&r.0)) {
            return None;
        }
        (m, ss)
    } else {
        let m = encode::mem_operand_in(rng, ea, 0, asz == 4, mode.bits == 8, &fixed, &avoid)?;
        let ss = m.sib.map_or(m.rm == 5 && m.modrm_mod != 0, |s| {
            let base = s & 7;
            (base == 4) || (base == 5 && m.modrm_mod != 0)
        }) && !m.rex_b
            && !m.rip_rel;
        (m, ss)
    };
    for &(r, v) in &mem.regs {
        st.gprs[r as usize] = v;
    }
    // The segment: an override unless the window's segment is the default.
    let default_seg = if ss_default { 2 } else { 3 };
    if w.seg != default_seg || rng.chance(30) {
        legacy.push(SEG_PREFIX[w.seg as usize]);
    }
    let shuffle_len = legacy.len();
    for i in (1..shuffle_len).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        legacy.swap(i, j);
    }
    let imm = match form.imm {
        Imm::None => vec![],
        Imm::Ib => vec![rng.value(1) as u8],
        Imm::Iz if size == 2 => (rng.value(2) as u16).to_le_bytes().to_vec(),
        Imm::Iz => (rng.value(4) as u32).to_le_bytes().to_vec(),
    };
    if mem.rip_rel && (ea.wrapping_sub(CODE) as i64).unsigned_abs() > 0x7fff_0000 {
        return None;
    }
    let rex_w = if mode.bits == 8 {
        size == 8 || form.rex_w == Some(true)
    } else {
        false
    };
    let force_rex = mode.bits == 8 && rng.chance(20);
    let bytes = encode::assemble(
        &legacy,
        form.mandatory,
        (rex_w, reg >= 8),
        force_rex,
        form.opcode,
        reg,
        &mem,
        &imm,
        CODE,
    );
    if bytes.len() > 15 {
        return None;
    }
    let gpa = w.gpa.wrapping_add(access_off.wrapping_sub(w.off));
    let mut val: Vec<u8> = (0..mem_size).map(|_| rng.next() as u8).collect();
    if matches!(form.kind, Kind::CmpXchg) && rng.chance(50) {
        let mut cmp = st.gprs[0].to_le_bytes()[..(mem_size as usize).min(8)].to_vec();
        if form.reg == RegField::Ext(1) {
            let half = (mem_size / 2) as usize;
            cmp = st.gprs[0].to_le_bytes()[..half].to_vec();
            cmp.extend_from_slice(&st.gprs[2].to_le_bytes()[..half]);
        }
        val.copy_from_slice(&cmp[..mem_size as usize]);
    }
    let mut ram_patch = vec![];
    if matches!(form.kind, Kind::Pop) {
        ram_patch.push((STACK, (0..size).map(|_| rng.next() as u8).collect()));
    }
    Some(KCase {
        // Accesses split between RAM and MMIO get a group of their own.
        group: if straddle {
            "ram|mmio split"
        } else {
            form.group
        },
        name: format!("{} size {size} a{} {}", form.name, asz * 8, mem.shape),
        bytes,
        state: st,
        dev_patch: vec![(gpa, val)],
        ram_patch,
        first_gpa: if straddle { None } else { Some(gpa) },
        io: None,
        undefined: form.undefined,
    })
}

/// MOVS/STOS/LODS/CMPS/SCAS between the mode's windows.
pub fn string_case(rng: &mut Rng, mode: &ModeDef) -> Option<KCase> {
    let ops: [(&str, u8); 5] = [
        ("movs", 0xA4),
        ("stos", 0xAA),
        ("lods", 0xAC),
        ("cmps", 0xA6),
        ("scas", 0xAE),
    ];
    let (name, op0) = rng.pick(&ops);
    let size = rng.pick(if mode.bits == 8 {
        &[1u64, 2, 4, 8][..]
    } else {
        &[1u64, 2, 4][..]
    });
    let (asz, a_toggle) = address_size(rng, mode.bits);
    let rep = rng.pick(&[None, Some(0xF3u8), Some(0xF3), Some(0xF2)]);
    let big = rng.chance(30);
    let count = if rep.is_some() {
        1 + rng.below(if big { 300 } else { 8 })
    } else {
        1
    };
    let span = count * size;
    let df = rng.chance(40);
    let uses_src = matches!(name, "movs" | "lods" | "cmps");
    let uses_dst = matches!(name, "movs" | "stos" | "cmps" | "scas");
    // One side in MMIO, the other (for two-operand forms) in RAM or MMIO.
    let src_mmio = !uses_dst || rng.chance(60);
    let dst_mmio = !src_mmio || !uses_src || rng.chance(40);
    let sw = if uses_src {
        Some(*pick_window(rng, mode, asz, src_mmio, span + 256)?)
    } else {
        None
    };
    // ES is about to take the destination window's descriptor: a source
    // reached through ES would move with it.
    if uses_dst && sw.is_some_and(|w| w.seg == 0) {
        return None;
    }
    // The destination is ES:rDI: ES takes the chosen window's descriptor
    // (in 64-bit mode, where ES has no base, only the flat windows).
    let dw = if uses_dst {
        Some(*dst_window(rng, mode, asz, dst_mmio, span + 256)?)
    } else {
        None
    };
    let place = |rng: &mut Rng, w: &Window| -> u64 {
        let a = w.off + 64 + rng.below(w.len - span - 128);
        if df { a + span - size } else { a }
    };
    let mut st = random_state(rng, mode);
    st.rflags = (st.rflags & !DF) | if df { DF } else { 0 };
    let mut legacy = vec![];
    legacy.extend(rep);
    let default_op = if mode.bits == 2 { 2 } else { 4 };
    if size != 1 && size != 8 && size != default_op {
        legacy.push(0x66);
    }
    if a_toggle {
        legacy.push(0x67);
    }
    let amask = match asz {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    };
    let keep = |rng: &mut Rng, v: u64| -> u64 {
        let hi = if mode.bits == 8 {
            rng.next()
        } else {
            rng.next() & 0xffff_ffff
        };
        (hi & !amask) | (v & amask)
    };
    let mut dev_patch = vec![];
    let mut ram_patch = vec![];
    let mut first = None;
    if let Some(w) = sw {
        let s = place(rng, &w);
        if w.seg != 3 || rng.chance(30) {
            legacy.push(SEG_PREFIX[w.seg as usize]);
        }
        st.gprs[6] = keep(rng, s);
        let lo = if df { s + size - span } else { s };
        let bytes: Vec<u8> = (0..span)
            .map(|i| if i % size == 0 { rng.below(2) as u8 } else { 0 })
            .collect();
        let gpa = w.gpa + (lo - w.off);
        if w.mmio {
            dev_patch.push((gpa, bytes));
            first = Some(w.gpa + (s - w.off));
        } else {
            ram_patch.push((gpa, bytes));
        }
    }
    if let Some(w) = dw {
        let d = place(rng, &w);
        st.segments[0] = mode.state.segments[w.seg as usize];
        st.gprs[7] = keep(rng, d);
        if name != "stos" && name != "movs" {
            let lo = if df { d + size - span } else { d };
            let bytes: Vec<u8> = (0..span)
                .map(|i| if i % size == 0 { rng.below(2) as u8 } else { 0 })
                .collect();
            let gpa = w.gpa + (lo - w.off);
            if w.mmio {
                dev_patch.push((gpa, bytes))
            } else {
                ram_patch.push((gpa, bytes))
            }
        }
        if first.is_none() && w.mmio {
            first = Some(w.gpa + (d - w.off));
        }
    }
    if matches!(name, "cmps" | "scas") {
        // Few distinct values, so REPE/REPNE stop somewhere inside.
        st.gprs[0] = rng.below(2);
    }
    st.gprs[1] = keep(rng, count);
    for i in (1..legacy.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        legacy.swap(i, j);
    }
    let mut bytes = legacy;
    if size == 8 {
        bytes.push(0x48);
    }
    bytes.push(if size == 1 { op0 } else { op0 + 1 });
    Some(KCase {
        group: "string",
        name: format!(
            "{}{name} size {size} a{} count {count} df {} src {} dst {}",
            match rep {
                Some(0xF3) => "rep ",
                Some(_) => "repne ",
                None => "",
            },
            asz * 8,
            df as u8,
            sw.map_or("-", |w| if w.mmio { "mmio" } else { "ram" }),
            dw.map_or("-", |w| if w.mmio { "mmio" } else { "ram" }),
        ),
        bytes,
        state: st,
        dev_patch,
        ram_patch,
        first_gpa: first,
        io: None,
        undefined: 0,
    })
}

/// IN/OUT (imm8 and DX forms) and INS/OUTS with or without REP.
pub fn io_case(rng: &mut Rng, mode: &ModeDef) -> Option<KCase> {
    let mut st = random_state(rng, mode);
    let default_op = if mode.bits == 2 { 2u8 } else { 4 };
    let size = rng.pick(&[1u8, 2, 4]);
    let mut legacy = vec![];
    if size != 1 && size != default_op {
        legacy.push(0x66);
    }
    let input = rng.chance(50);
    let kind = rng.below(3); // 0 imm8, 1 dx, 2 string
    let port = loop {
        let p = if kind == 0 {
            rng.below(256) as u16
        } else {
            rng.next() as u16
        };
        if !matches!(p, 0xF1 | 0x20 | 0x21 | 0x40..=0x43 | 0x61 | 0x70 | 0x71 | 0x80 | 0x92 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1 | 0xcf8..=0xcff)
        {
            break p;
        }
    };
    let mut dev_patch = vec![];
    let mut ram_patch = vec![];
    let (asz, a_toggle) = address_size(rng, mode.bits);
    let mut rep = false;
    let mut segment = None;
    let mut first = None;
    let mut bytes;
    if kind < 2 {
        bytes = legacy;
        let op = match (kind, input) {
            (0, true) => 0xE4,
            (0, false) => 0xE6,
            (_, true) => 0xEC,
            (_, false) => 0xEE,
        } + (size != 1) as u8;
        bytes.push(op);
        if kind == 0 {
            bytes.push(port as u8);
        } else {
            st.gprs[2] = (st.gprs[2] & !0xffff) | port as u64;
        }
    } else {
        if a_toggle {
            legacy.push(0x67);
        }
        rep = rng.chance(60);
        if rep {
            legacy.push(0xF3);
        }
        let big = rng.chance(30);
        let count = if rep {
            1 + rng.below(if big { 200 } else { 8 })
        } else {
            1
        };
        let span = count * size as u64;
        let df = rng.chance(40);
        st.rflags = (st.rflags & !DF) | if df { DF } else { 0 };
        let amask = match asz {
            2 => 0xffff,
            4 => 0xffff_ffff,
            _ => u64::MAX,
        };
        // INS into MMIO is left out: KVM reads the whole count from the
        // port at once, writes one element to MMIO, and drops the rest
        // (then reads again on re-execution), so its port stream is not
        // an oracle for it. The
        // assist's INS-to-MMIO path is covered by its own unit tests.
        let mmio = !input && rng.chance(50);
        let w = if input {
            // INS writes ES:rDI.
            let w = *dst_window(rng, mode, asz, mmio, span + 256)?;
            st.segments[0] = mode.state.segments[w.seg as usize];
            w
        } else {
            *pick_window(rng, mode, asz, mmio, span + 256)?
        };
        let a = w.off + 64 + rng.below(w.len - span - 128);
        let a = if df { a + span - size as u64 } else { a };
        let reg = if input { 7 } else { 6 };
        st.gprs[reg] = (st.gprs[reg] & !amask) | a;
        st.gprs[1] = (st.gprs[1] & !amask) | count;
        st.gprs[2] = (st.gprs[2] & !0xffff) | port as u64;
        if !input {
            if w.seg != 3 || rng.chance(30) {
                legacy.push(SEG_PREFIX[w.seg as usize]);
            }
            if rng.chance(50) {
                segment = Segment::from_index(w.seg);
            }
            let lo = if df { a + size as u64 - span } else { a };
            let data: Vec<u8> = (0..span).map(|_| rng.next() as u8).collect();
            if w.mmio {
                dev_patch.push((w.gpa + (lo - w.off), data));
            } else {
                ram_patch.push((w.gpa + (lo - w.off), data));
            }
        }
        if w.mmio {
            first = Some(w.gpa + (a - w.off));
        }
        for i in (1..legacy.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            legacy.swap(i, j);
        }
        bytes = legacy;
        if mode.bits == 8 && rng.chance(20) {
            bytes.push(0x40);
        }
        bytes.push(if input { 0x6C } else { 0x6E } + (size != 1) as u8);
    }
    let _ = first;
    Some(KCase {
        group: if kind < 2 { "in/out" } else { "ins/outs" },
        name: format!(
            "{}{} port {port:#x} size {size} a{}",
            if rep { "rep " } else { "" },
            match (kind, input) {
                (2, true) => "ins",
                (2, false) => "outs",
                (_, true) => "in",
                (_, false) => "out",
            },
            asz * 8
        ),
        bytes,
        state: st,
        dev_patch,
        ram_patch,
        first_gpa: None,
        io: Some(IoInfo {
            port,
            input,
            size,
            address_size: asz,
            rep,
            string: kind == 2,
            segment,
        }),
        undefined: 0,
    })
}
