//! toyvm on the real kernel: the example's own `run` (guest, devices and
//! the NVMM loop), which must check out every step. Skips without
//! `/dev/nvmm`; fails under `NVMM_VMTEST=1`. (`cargo xtask vmtest` also
//! runs the toyvm executable itself.)

// A real open of /dev/nvmm (then its ioctls), which miri cannot run.
#![cfg(not(miri))]
#![cfg(feature = "assist")]

use crate::kernel_support;

use crate::toyvm;

#[test]
fn toyvm_checks_out_on_nvmm() {
    let Some(nvmm) = kernel_support::open("toyvm_checks_out_on_nvmm") else {
        return;
    };
    match toyvm::run(&nvmm) {
        Ok(ok) => assert!(ok, "toyvm: some steps failed (see its output)"),
        Err(e) => panic!("toyvm: {e}"),
    }
}
