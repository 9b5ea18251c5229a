//! The CPU a run happens on, named in `cargo xtask ci`'s summary: the
//! assist's results depend on the CPU vendor (nvmm_assist::vendor), so a
//! green run says which vendor it covered.

/// The vendor id and model name, e.g. "AuthenticAMD AMD EPYC", from
/// /proc/cpuinfo where there is one, else from CPUID; "unknown CPU" if
/// neither answers.
pub fn describe() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| from_cpuinfo(&info))
        .or_else(from_cpuid)
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// The first processor's `vendor_id` and `model name` in cpuinfo text.
fn from_cpuinfo(info: &str) -> Option<String> {
    let field = |name: &str| {
        info.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let vendor = field("vendor_id")?;
    Some(match field("model name") {
        Some(model) if !model.is_empty() => format!("{vendor} {model}"),
        _ => vendor,
    })
}

#[cfg(target_arch = "x86_64")]
fn from_cpuid() -> Option<String> {
    use core::arch::x86_64::__cpuid;
    // `__cpuid` is a safe function from Rust 1.89 on; the blocks keep the
    // crate building with the workspace's minimum Rust (1.88).
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU; these leaves only read.
    let leaf0 = unsafe { __cpuid(0) };
    let mut vendor = Vec::with_capacity(12);
    for reg in [leaf0.ebx, leaf0.edx, leaf0.ecx] {
        vendor.extend(reg.to_le_bytes());
    }
    let vendor = String::from_utf8_lossy(&vendor).into_owned();
    #[allow(unused_unsafe)]
    // SAFETY: as above.
    let max_extended = unsafe { __cpuid(0x8000_0000) }.eax;
    if max_extended < 0x8000_0004 {
        return Some(vendor);
    }
    let mut brand = Vec::with_capacity(48);
    for leaf in 0x8000_0002..=0x8000_0004u32 {
        #[allow(unused_unsafe)]
        // SAFETY: as above; the leaf is within the reported maximum.
        let r = unsafe { __cpuid(leaf) };
        for reg in [r.eax, r.ebx, r.ecx, r.edx] {
            brand.extend(reg.to_le_bytes());
        }
    }
    let brand = String::from_utf8_lossy(&brand);
    let brand = brand.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    Some(format!("{vendor} {brand}"))
}

#[cfg(not(target_arch = "x86_64"))]
fn from_cpuid() -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_processor_of_cpuinfo() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\
                    model name\t: AMD EPYC 7763 64-Core Processor\n\n\
                    processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: other\n";
        assert_eq!(
            from_cpuinfo(info).as_deref(),
            Some("AuthenticAMD AMD EPYC 7763 64-Core Processor")
        );
        assert_eq!(
            from_cpuinfo("vendor_id : GenuineIntel\n").as_deref(),
            Some("GenuineIntel")
        );
        assert_eq!(from_cpuinfo("processor : 0\n"), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn cpuid_names_a_vendor() {
        let described = from_cpuid().unwrap();
        assert!(described.len() >= 12, "{described:?}");
    }
}
