//! Raw bindings to NetBSD's NVMM kernel interface (filled by `cargo xtask regen`).
#![no_std]
