//! Safe interface to NetBSD's NVMM (filled by its own issue).
