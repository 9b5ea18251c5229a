//! The model's host (HVA) and guest (GPA) mappings, following nvmm.c
//! `nvmm_hva_map`, `nvmm_hva_unmap`, `nvmm_gpa_map`, `nvmm_gpa_unmap`.
//! **Model, not NetBSD.**

use std::alloc::Layout;

use crate::nvmm_sys as sys;
use crate::sys::PAGE_SIZE;

use super::{GPA_END, MAX_HMAPPINGS, MachineModel, ModelState};

fn aligned(x: u64) -> bool {
    x.is_multiple_of(PAGE_SIZE as u64)
}

/// nvmm.c `nvmm_hmapping_validate`: alignment, hva != 0, no overflow
/// (`hva_end <= hva`, so size 0 too), and a range either wholly inside an
/// existing host mapping (accepted as is) or disjoint from all of them.
fn hmapping_validate(m: &MachineModel, hva: usize, size: usize) -> Result<(), i32> {
    if !aligned(hva as u64) || !aligned(size as u64) || hva == 0 {
        return Err(libc::EINVAL);
    }
    let hva_end = hva.wrapping_add(size);
    if hva_end <= hva {
        return Err(libc::EINVAL);
    }
    for &(h, s) in &m.hmaps {
        let hmap_end = h + s;
        if hva >= h && hva_end <= hmap_end {
            break;
        }
        let overlap = (hva >= h && hva < hmap_end)
            || (hva_end > h && hva_end <= hmap_end)
            || (hva <= h && hva_end >= hmap_end);
        if overlap {
            return Err(libc::EEXIST);
        }
    }
    Ok(())
}

/// nvmm.c `nvmm_hva_map`: validate, allocate a slot (ENOBUFS after
/// NVMM_MAX_HMAPPINGS), then map a fresh zeroed object over the user range
/// (`UVM_FLAG_FIXED|UVM_FLAG_UNMAP`): whatever the process had there is
/// replaced by zeroes.
///
/// The model stands for the replacement by zeroing the range. It gets an
/// address only, so it needs a pointer with provenance to write: for
/// memory it allocated itself (`map_anonymous`, which `Machine::hva_map`
/// uses) it derives one from that allocation; for caller-owned memory
/// (`Machine::hva_map_raw` of memory from elsewhere) it takes the exposed
/// provenance of the address: such callers must expose it
/// (`ptr.expose_provenance()`), which miri's strict-provenance mode does
/// not support.
pub fn hva_map(st: &mut ModelState, machid: u32, a: &sys::nvmm_ioc_hva_map) -> Result<(), i32> {
    let m = st
        .machines
        .get_mut(machid as usize)
        .and_then(|m| m.as_mut())
        .ok_or(libc::ENOENT)?;
    hmapping_validate(m, a.hva, a.size)?;
    if m.hmaps.len() >= MAX_HMAPPINGS {
        return Err(libc::ENOBUFS);
    }
    m.hmaps.push((a.hva, a.size));
    let own = st.anon.values().find(|(p, len)| {
        let start = p.0.as_ptr().addr();
        a.hva >= start && a.hva - start <= *len && a.size <= *len - (a.hva - start)
    });
    let range = match own {
        Some((p, _)) => p.0.as_ptr().with_addr(a.hva),
        None => std::ptr::with_exposed_provenance_mut::<u8>(a.hva),
    };
    // SAFETY: the crate's contract for HVA_MAP is that the range is a
    // mapping of this process that nothing references (the kernel replaces
    // it); the pointer has the provenance of the allocation holding it.
    unsafe { range.write_bytes(0, a.size) };
    Ok(())
}

/// nvmm.c `nvmm_hva_unmap` / `nvmm_hmapping_free`: the exact (hva, size)
/// or ENOENT; the range is unmapped from the process. The kernel does not
/// look at guest mappings that still use it.
pub fn hva_unmap(st: &mut ModelState, machid: u32, a: &sys::nvmm_ioc_hva_unmap) -> Result<(), i32> {
    let m = st
        .machines
        .get_mut(machid as usize)
        .and_then(|m| m.as_mut())
        .ok_or(libc::ENOENT)?;
    let i = m
        .hmaps
        .iter()
        .position(|&(h, s)| h == a.hva && s == a.size)
        .ok_or(libc::ENOENT)?;
    m.hmaps.remove(i);
    if st.anon.get(&a.hva).is_some_and(|e| e.1 == a.size)
        && let Some((p, size)) = st.anon.remove(&a.hva)
    {
        // SAFETY: a block the model allocated in map_anonymous with this
        // size (freed through its own pointer, keeping its provenance); the
        // "process" loses it here as with the kernel's unmap.
        unsafe {
            std::alloc::dealloc(
                p.0.as_ptr(),
                Layout::from_size_align_unchecked(size, PAGE_SIZE),
            )
        };
    }
    Ok(())
}

/// Removes `start..end` from every guest mapping, splitting the ones that
/// straddle a bound (what `uvm_map` with `UVM_FLAG_UNMAP` and `uvm_unmap`
/// do to the machine's vmspace).
fn carve(gmaps: &mut Vec<(u64, u64, usize, i32)>, start: u64, end: u64) {
    let mut out = Vec::with_capacity(gmaps.len() + 1);
    for &(g, s, h, p) in gmaps.iter() {
        let g_end = g + s;
        if g_end <= start || end <= g {
            out.push((g, s, h, p));
            continue;
        }
        if g < start {
            out.push((g, start - g, h, p));
        }
        if end < g_end {
            out.push((end, g_end - end, h + (end - g) as usize, p));
        }
    }
    *gmaps = out;
}

/// nvmm.c `nvmm_gpa_map`: prot bits, overflow (`gpa_end <= gpa`, so size
/// 0 too), alignment, hva != 0, `gpa < gpa_end_limit`, `gpa_end > limit`
/// (an area may end exactly at the limit), the host range inside one host
/// mapping; then `UVM_FLAG_FIXED|UVM_FLAG_UNMAP` replaces whatever was
/// mapped at those guest addresses.
pub fn gpa_map(m: &mut MachineModel, a: &sys::nvmm_ioc_gpa_map) -> Result<(), i32> {
    if a.prot & !0x7 != 0 {
        return Err(libc::EINVAL);
    }
    let gpa_end = a.gpa.wrapping_add(a.size as u64);
    if gpa_end <= a.gpa {
        return Err(libc::EINVAL);
    }
    if !aligned(a.gpa) || !aligned(a.size as u64) || !aligned(a.hva as u64) {
        return Err(libc::EINVAL);
    }
    if a.hva == 0 || a.gpa >= GPA_END || gpa_end > GPA_END {
        return Err(libc::EINVAL);
    }
    let inside = m
        .hmaps
        .iter()
        .any(|&(h, s)| a.hva >= h && a.hva + a.size <= h + s);
    if !inside {
        return Err(libc::EINVAL);
    }
    carve(&mut m.gmaps, a.gpa, gpa_end);
    m.gmaps.push((a.gpa, a.size as u64, a.hva, a.prot));
    Ok(())
}

/// nvmm.c `nvmm_gpa_unmap`: overflow (size 0 is EINVAL), alignment,
/// `gpa < limit`, and `gpa_end >= limit` is EINVAL (so an area ending
/// exactly at the limit can be mapped but not unmapped); then whatever is
/// mapped in the range goes, even parts of larger mappings.
pub fn gpa_unmap(m: &mut MachineModel, a: &sys::nvmm_ioc_gpa_unmap) -> Result<(), i32> {
    let gpa_end = a.gpa.wrapping_add(a.size as u64);
    if gpa_end <= a.gpa {
        return Err(libc::EINVAL);
    }
    if !aligned(a.gpa) || !aligned(a.size as u64) {
        return Err(libc::EINVAL);
    }
    if a.gpa >= GPA_END || gpa_end >= GPA_END {
        return Err(libc::EINVAL);
    }
    carve(&mut m.gmaps, a.gpa, gpa_end);
    Ok(())
}
