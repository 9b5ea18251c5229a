//! NetBSD's ioctl request encoding (`sys/ioccom.h`), as `const fn`s.
//!
//! A request word holds the direction in bits 29..=31, the argument length in
//! bits 16..=28, the group (a letter, `'N'` for NVMM) in bits 8..=15 and the
//! command number in bits 0..=7. The generated `NVMM_IOC_*` constants were
//! computed by clang from the headers' `_IOR`/`_IOW`/`_IOWR` macros; the tests
//! recompute each one here from the size of its argument structure.

use core::ffi::c_ulong;

/// `IOCPARM_MASK`: the argument length field is 13 bits wide.
pub const IOCPARM_MASK: c_ulong = 0x1fff;
/// `IOCPARM_SHIFT`: where the argument length field starts.
pub const IOCPARM_SHIFT: u32 = 16;
/// `IOCGROUP_SHIFT`: where the group field starts.
pub const IOCGROUP_SHIFT: u32 = 8;
/// `IOC_VOID`: no argument.
pub const IOC_VOID: c_ulong = 0x2000_0000;
/// `IOC_OUT`: the kernel copies the argument out to the caller.
pub const IOC_OUT: c_ulong = 0x4000_0000;
/// `IOC_IN`: the kernel copies the argument in from the caller.
pub const IOC_IN: c_ulong = 0x8000_0000;
/// `IOC_INOUT`: copied in, then back out.
pub const IOC_INOUT: c_ulong = IOC_IN | IOC_OUT;
/// `IOC_DIRMASK`: the direction bits.
pub const IOC_DIRMASK: c_ulong = 0xe000_0000;

/// `_IOC(inout, group, num, len)`. Like the C macro, a length wider than the
/// 13-bit field is truncated to it.
#[must_use]
pub const fn ioc(inout: c_ulong, group: u8, num: u8, len: usize) -> c_ulong {
    // `len as c_ulong` cannot lose bits: c_ulong is as wide as usize on LP64.
    inout
        | ((len as c_ulong & IOCPARM_MASK) << IOCPARM_SHIFT)
        | ((group as c_ulong) << IOCGROUP_SHIFT)
        | num as c_ulong
}

/// `_IO(group, num)`: a request without an argument.
#[must_use]
pub const fn io(group: u8, num: u8) -> c_ulong {
    ioc(IOC_VOID, group, num, 0)
}

/// `_IOR(group, num, T)`: the kernel writes a `T`.
#[must_use]
pub const fn ior<T>(group: u8, num: u8) -> c_ulong {
    ioc(IOC_OUT, group, num, size_of::<T>())
}

/// `_IOW(group, num, T)`: the kernel reads a `T`.
#[must_use]
pub const fn iow<T>(group: u8, num: u8) -> c_ulong {
    ioc(IOC_IN, group, num, size_of::<T>())
}

/// `_IOWR(group, num, T)`: the kernel reads and writes back a `T`.
#[must_use]
pub const fn iowr<T>(group: u8, num: u8) -> c_ulong {
    ioc(IOC_INOUT, group, num, size_of::<T>())
}

/// `IOCPARM_LEN(request)`: the argument length encoded in a request.
#[must_use]
pub const fn iocparm_len(request: c_ulong) -> usize {
    ((request >> IOCPARM_SHIFT) & IOCPARM_MASK) as usize
}

/// `IOCGROUP(request)`: the group letter of a request.
#[must_use]
pub const fn iocgroup(request: c_ulong) -> u8 {
    ((request >> IOCGROUP_SHIFT) & 0xff) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_where_sys_ioccom_h_puts_them() {
        assert_eq!(ioc(IOC_INOUT, b'N', 10, 0x48), 0xC048_4E0A);
        assert_eq!(io(b'x', 1), 0x2000_7801);
        assert_eq!(iocparm_len(0xC048_4E0A), 0x48);
        assert_eq!(iocgroup(0xC048_4E0A), b'N');
    }

    #[test]
    fn oversized_lengths_are_truncated_like_the_c_macro() {
        assert_eq!(
            ioc(IOC_IN, b'N', 0, 0x2001),
            IOC_IN | (1 << 16) | (0x4E << 8)
        );
    }
}
