//! `explain`: what the assist would do with an instruction, for the bytes a
//! VMM logs from a failing memory exit.
//!
//! ```text
//! cargo run -p nvmm-assist --example explain -- [--mode real|prot16|prot32|compat16|compat32|long] \
//!     [--vendor intel|amd] HEXBYTES [REG=VALUE...]
//! ```
//!
//! Prints the decoded instruction and its operands (with each memory
//! operand's offset, linear and guest-physical address), the exit the tool
//! hands to the real `assist_mem`/`assist_io`, every RAM, MMIO and port
//! access the assist makes, and then the register and flag changes, or the
//! exact reason the assist refuses (`#UD`, `#GP`, unsupported, ...). It
//! needs no hypervisor: the guest is simulated (see `explain.rs`).

mod explain;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", explain::USAGE);
        return;
    }
    let lines = explain::parse_args(&args).and_then(|request| explain::explain(&request));
    match lines {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
        }
        Err(err) => {
            eprintln!("explain: {err}\n{}", explain::USAGE);
            std::process::exit(2);
        }
    }
}
