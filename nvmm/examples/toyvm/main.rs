//! toyvm: the NVMM run loop comes in the next commit; this commit adds the
//! guest program and the devices, proven on KVM by `tests/toyvm_kvm.rs`.
mod devices;
mod guest;
fn main() {
    eprintln!("toyvm: the NVMM run loop is not written yet");
    std::process::exit(2);
}
