//! Just enough ELF parsing to tell a NetBSD/amd64 executable apart: the ELF
//! header (64-bit, little-endian, x86-64, executable or PIE) and the
//! `NetBSD` ident note (`.note.netbsd.ident`, found through the PT_NOTE
//! program headers). NetBSD binaries leave the OS/ABI byte at 0 (System V),
//! so the note is what identifies them.

use crate::fail;
use crate::util::Result;

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_NOTE: u32 = 4;
const PT_INTERP: u32 = 3;
/// `NT_NETBSD_IDENT`: the note carrying `__NetBSD_Version__`.
const NT_NETBSD_IDENT: u32 = 1;

/// What the ELF headers say about a NetBSD executable.
#[derive(Debug, PartialEq, Eq)]
pub struct NetbsdElf {
    /// `__NetBSD_Version__` from the ident note, e.g. 1001000000 for 10.1.
    pub os_version: u32,
    /// The program interpreter, `/libexec/ld.elf_so` for dynamic executables.
    pub interpreter: Option<String>,
}

impl NetbsdElf {
    /// "10.1" from 1001000000 (the version is MMmmrrpp00).
    pub fn version_string(&self) -> String {
        format!(
            "{}.{}",
            self.os_version / 100_000_000,
            self.os_version / 1_000_000 % 100
        )
    }
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        data.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(data: &[u8], at: usize) -> Option<usize> {
    let value = u64::from_le_bytes(data.get(at..at.checked_add(8)?)?.try_into().ok()?);
    usize::try_from(value).ok()
}

/// Checks that `data` is an x86-64 NetBSD executable and returns its note.
pub fn parse_netbsd(data: &[u8]) -> Result<NetbsdElf> {
    let truncated = || fail!("truncated ELF file");
    if data.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(fail!("not an ELF file"));
    }
    if data.get(4) != Some(&ELFCLASS64) || data.get(5) != Some(&ELFDATA2LSB) {
        return Err(fail!("not a 64-bit little-endian ELF file"));
    }
    let e_type = u16_at(data, 16).ok_or_else(truncated)?;
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(fail!("ELF type {e_type} is not an executable"));
    }
    let machine = u16_at(data, 18).ok_or_else(truncated)?;
    if machine != EM_X86_64 {
        return Err(fail!("ELF machine {machine} is not x86-64"));
    }
    let phoff = u64_at(data, 32).ok_or_else(truncated)?;
    let phentsize = usize::from(u16_at(data, 54).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(data, 56).ok_or_else(truncated)?);

    let mut os_version = None;
    let mut interpreter = None;
    for index in 0..phnum {
        let header = index
            .checked_mul(phentsize)
            .and_then(|off| off.checked_add(phoff))
            .ok_or_else(truncated)?;
        let p_type = u32_at(data, header).ok_or_else(truncated)?;
        let offset = u64_at(data, header + 8).ok_or_else(truncated)?;
        let size = u64_at(data, header + 32).ok_or_else(truncated)?;
        let end = offset.checked_add(size).ok_or_else(truncated)?;
        let segment = data.get(offset..end).ok_or_else(truncated)?;
        match p_type {
            PT_NOTE => {
                if let Some(version) = netbsd_ident(segment) {
                    os_version = Some(version);
                }
            }
            PT_INTERP => {
                let path = segment.split(|&b| b == 0).next().unwrap_or_default();
                interpreter = Some(String::from_utf8_lossy(path).into_owned());
            }
            _ => {}
        }
    }
    let os_version =
        os_version.ok_or_else(|| fail!("no NetBSD ident note (.note.netbsd.ident)"))?;
    Ok(NetbsdElf {
        os_version,
        interpreter,
    })
}

/// Walks the notes of a PT_NOTE segment for owner "NetBSD", type 1.
fn netbsd_ident(mut notes: &[u8]) -> Option<u32> {
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = usize::try_from(u32_at(notes, 0)?).ok()?;
        let descsz = usize::try_from(u32_at(notes, 4)?).ok()?;
        let kind = u32_at(notes, 8)?;
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = 12usize.checked_add(align4(namesz)?)?;
        let desc_end = desc_start.checked_add(descsz)?;
        let name = notes.get(12..name_end)?;
        let desc = notes.get(desc_start..desc_end)?;
        if kind == NT_NETBSD_IDENT && name == b"NetBSD\0" && descsz == 4 {
            return u32_at(desc, 0);
        }
        notes = notes.get(desc_start.checked_add(align4(descsz)?)?..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 executable image with the given notes and interpreter.
    fn image(machine: u16, note: &[u8], interp: &[u8]) -> Vec<u8> {
        let mut data = vec![0u8; 64 + 2 * 56];
        data[..4].copy_from_slice(b"\x7fELF");
        data[4] = ELFCLASS64;
        data[5] = ELFDATA2LSB;
        data[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        data[18..20].copy_from_slice(&machine.to_le_bytes());
        data[32..40].copy_from_slice(&64u64.to_le_bytes());
        data[54..56].copy_from_slice(&56u16.to_le_bytes());
        data[56..58].copy_from_slice(&2u16.to_le_bytes());
        let put_segment = |index: usize, p_type: u32, contents: &[u8], data: &mut Vec<u8>| {
            let offset = data.len() as u64;
            data.extend_from_slice(contents);
            let header = 64 + index * 56;
            data[header..header + 4].copy_from_slice(&p_type.to_le_bytes());
            data[header + 8..header + 16].copy_from_slice(&offset.to_le_bytes());
            data[header + 32..header + 40].copy_from_slice(&(contents.len() as u64).to_le_bytes());
        };
        put_segment(0, PT_INTERP, interp, &mut data);
        put_segment(1, PT_NOTE, note, &mut data);
        data
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(name);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(desc);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    #[test]
    fn recognises_a_netbsd_executable_after_other_notes() {
        let mut notes = note(b"PaX\0", 3, &[0; 4]);
        notes.extend(note(
            b"NetBSD\0",
            NT_NETBSD_IDENT,
            &1_001_000_000u32.to_le_bytes(),
        ));
        let parsed = parse_netbsd(&image(EM_X86_64, &notes, b"/libexec/ld.elf_so\0")).unwrap();
        assert_eq!(parsed.os_version, 1_001_000_000);
        assert_eq!(parsed.version_string(), "10.1");
        assert_eq!(parsed.interpreter.as_deref(), Some("/libexec/ld.elf_so"));
    }

    #[test]
    fn rejects_linux_and_foreign_binaries() {
        let gnu = note(b"GNU\0", 1, &[0; 16]);
        let err =
            parse_netbsd(&image(EM_X86_64, &gnu, b"/lib64/ld-linux-x86-64.so.2\0")).unwrap_err();
        assert!(err.0.contains("NetBSD ident"), "{err}");
        let netbsd = note(b"NetBSD\0", NT_NETBSD_IDENT, &1u32.to_le_bytes());
        assert!(
            parse_netbsd(&image(183, &netbsd, b""))
                .unwrap_err()
                .0
                .contains("x86-64")
        );
        assert!(parse_netbsd(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn truncated_or_hostile_headers_are_errors_not_panics() {
        let netbsd = note(b"NetBSD\0", NT_NETBSD_IDENT, &1u32.to_le_bytes());
        let full = image(EM_X86_64, &netbsd, b"");
        for len in 0..full.len() {
            let _ = parse_netbsd(&full[..len]);
        }
        let mut huge = full.clone();
        huge[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_netbsd(&huge).is_err());
    }

    #[test]
    fn the_host_test_binary_is_not_netbsd() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(exe).unwrap();
        assert!(parse_netbsd(&data).is_err() || cfg!(target_os = "netbsd"));
    }
}
