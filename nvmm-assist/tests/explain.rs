//! The `explain` example's logic (examples/explain/explain.rs, included
//! here as is) on a few instructions and refusals: the lines it prints.

#[allow(dead_code)]
#[path = "../examples/explain/explain.rs"]
mod example;

fn run(args: &str) -> Vec<String> {
    let args: Vec<&str> = args.split_whitespace().collect();
    let request = example::parse_args(&args).expect("arguments parse");
    example::explain(&request).expect("settings apply")
}

/// Asserts that every line of `expected` is printed, in this order.
#[track_caller]
fn assert_lines(output: &[String], expected: &[&str]) {
    let mut rest = output.iter();
    for want in expected {
        assert!(
            rest.any(|line| line == want),
            "missing (or out of order) {want:?} in:\n{}",
            output.join("\n")
        );
    }
}

#[test]
fn mov_to_mmio_in_long_mode() {
    let out = run("48 89 08 rax=0x1000 rcx=0x1122334455667788");
    assert_lines(
        &out,
        &[
            "mode: 64-bit mode",
            "bytes: 48 89 08",
            "instruction: mov, 3 bytes, operand size 8, address size 8",
            "operand 0: qword ptr ds:[rax]",
            "  offset 0x1000 -> linear 0x1000 -> GPA 0x1000",
            "operand 1: rcx",
            "exit: memory write, GPA 0x1000",
            "access: mmio write 8 bytes at GPA 0x1000: 88 77 66 55 44 33 22 11",
            "result: done",
            "change: rip: 0x0 -> 0x3",
        ],
    );
    // Nothing else changed: RAX and RCX keep their values.
    assert_eq!(out.iter().filter(|l| l.starts_with("change:")).count(), 1);
}

#[test]
fn real_mode_read_through_a_segment() {
    let out = run("--mode real 8b 47 02 rbx=0x10 ds=0x1000 data=0xbeef");
    assert_lines(
        &out,
        &[
            "mode: real mode",
            "instruction: mov, 3 bytes, operand size 2, address size 2",
            "operand 0: ax",
            "operand 1: word ptr ds:[bx+0x2]",
            "  offset 0x12 -> linear 0x10012 -> GPA 0x10012",
            "access: mmio read 2 bytes at GPA 0x10012: ef be",
            "result: done",
            "change: rax: 0x0 -> 0xbeef",
            "change: rip: 0x0 -> 0x3",
        ],
    );
}

#[test]
fn locked_add_sets_flags() {
    let out = run("f0 01 08 rax=0x2000 rcx=1 data=0xffffffff");
    assert_lines(
        &out,
        &[
            "instruction: add, 3 bytes, operand size 4, address size 8, lock",
            "access: mmio read 4 bytes at GPA 0x2000: ff ff ff ff",
            "access: mmio write 4 bytes at GPA 0x2000: 00 00 00 00",
            "result: done",
            "change: rflags: 0x2 -> 0x57 (CF 0->1, PF 0->1, AF 0->1, ZF 0->1)",
        ],
    );
}

#[test]
fn rep_movs_walks_the_page_tables() {
    let out = run("--mode compat32 f3 a4 rcx=2 rsi=0x1000 rdi=0x2000");
    assert_lines(
        &out,
        &[
            "mode: compatibility mode, 32-bit code",
            "instruction: movs, 2 bytes, operand size 1, address size 4, rep",
            "operand 0: byte ptr es:[edi]",
            "operand 1: byte ptr ds:[esi]",
            "access: ram read 8 bytes at GPA 0x1000000000000 (page table): 27 10 00 00 00 00 01 00",
            "access: mmio read 1 byte at GPA 0x1000: 00",
            "access: mmio write 1 byte at GPA 0x2000: 00",
            "access: mmio read 1 byte at GPA 0x1001: 00",
            "access: mmio write 1 byte at GPA 0x2001: 00",
            "result: done",
            "change: rcx: 0x2 -> 0x0",
            "change: rsi: 0x1000 -> 0x1002",
            "change: rdi: 0x2000 -> 0x2002",
        ],
    );
}

#[test]
fn port_output() {
    let out = run("--vendor amd 66 ef rdx=0x3f8 rax=0x4241");
    assert_lines(
        &out,
        &[
            "instruction: out, 2 bytes, operand size 2, address size 8",
            "operand 0: dx",
            "operand 1: ax",
            "exit: I/O, port 0x3f8, out, 2 bytes",
            "access: port out 2 bytes at 0x3f8: 41 42",
            "result: done",
        ],
    );
    assert!(out[1].starts_with("vendor: amd"), "{out:?}");
}

/// `--vendor` reaches the assist: a zero-count `rep stosq` with 32-bit
/// addressing clears the upper halves of RCX and RDI on Intel and writes
/// nothing on AMD (`nvmm_assist::vendor`, row 1).
#[test]
fn vendor_selects_the_zero_count_rep_rule() {
    let args = "67 f3 48 ab rcx=0xf7beb5ab00000000 rdi=0x1234567800002000";
    let intel = run(&format!("--vendor intel {args}"));
    assert_lines(
        &intel,
        &[
            "vendor: intel",
            "result: done",
            "change: rcx: 0xf7beb5ab00000000 -> 0x0",
            "change: rdi: 0x1234567800002000 -> 0x2000",
            "change: rip: 0x0 -> 0x4",
        ],
    );
    let amd = run(&format!("--vendor amd {args}"));
    assert_lines(
        &amd,
        &["vendor: amd", "result: done", "change: rip: 0x0 -> 0x4"],
    );
    assert!(
        !amd.iter()
            .any(|l| l.starts_with("change: rcx") || l.starts_with("change: rdi")),
        "{amd:?}"
    );
}

#[test]
fn lock_on_a_load_is_undefined_opcode() {
    let out = run("f0 8b 00");
    assert_lines(
        &out,
        &[
            "decode: invalid",
            "result: refused: #UD (invalid opcode): the VMM injects it",
            "changes: none",
        ],
    );
    assert!(!out.iter().any(|l| l.starts_with("access:")), "{out:?}");
}

#[test]
fn segment_limit_violation_is_general_protection() {
    let out = run("--mode prot32 8b 00 rax=0x1000 ds.limit=0xfff");
    assert_lines(
        &out,
        &[
            "mode: 32-bit protected mode",
            "  offset 0x1000: #GP(0x0) (general protection): the VMM injects it",
            "result: refused: #GP(0x0) (general protection): the VMM injects it",
            "changes: none",
        ],
    );
    assert!(!out.iter().any(|l| l.starts_with("access:")), "{out:?}");
}

#[test]
fn non_canonical_stack_access_is_stack_fault() {
    let out = run("ff 34 24 rsp=0x800000000000");
    assert_lines(
        &out,
        &[
            "instruction: push, 3 bytes, operand size 8, address size 8",
            "result: refused: #SS(0x0) (stack-segment fault): the VMM injects it",
            "changes: none",
        ],
    );
}

#[test]
fn cpuid_is_unsupported() {
    let out = run("0f a2");
    assert_lines(
        &out,
        &[
            "decode: unsupported",
            "result: refused: unsupported: a valid instruction the assist does not emulate (0f a2)",
            "changes: none",
        ],
    );
}

#[test]
fn exit_gpa_at_another_page_offset_is_inconsistent() {
    let out = run("48 89 08 rax=0x1000 gpa=0x2008");
    assert_lines(
        &out,
        &[
            "exit: memory write, GPA 0x2008",
            "result: refused: inconsistent exit: the exit's GPA or access cannot come from this instruction",
            "changes: none",
        ],
    );
}

#[test]
fn bad_arguments_are_refused() {
    for (args, what) in [
        (&["--mode", "v86", "90"][..], "--mode"),
        (&["--vendor", "via", "90"][..], "--vendor"),
        (&["rax=1"][..], "no instruction bytes"),
        (&["123"][..], "odd number"),
        (&["00112233445566778899aabbccddeeff"][..], "at most 15"),
        (&["90", "rax=zz"][..], "bad value"),
    ] {
        let err = example::parse_args(args).expect_err(what);
        assert!(err.contains(what), "{args:?}: {err}");
    }
    let request = example::parse_args(&["90", "foo=1"]).unwrap();
    assert!(
        example::explain(&request)
            .unwrap_err()
            .contains("unknown register")
    );
    let request = example::parse_args(&["90", "ds.limit=0x100000000"]).unwrap();
    assert!(example::explain(&request).unwrap_err().contains("too wide"));
}

#[test]
fn long_rep_batches_are_shortened() {
    let out = run("f3 48 a5 rcx=0xffffffffffffffff rsi=0x1000 rdi=0x3000");
    // One batch: 512 qwords up to the page end, each a read and a write,
    // after four page-table reads.
    assert_lines(
        &out,
        &[
            "access: mmio read 8 bytes at GPA 0x1000: 00 00 00 00 00 00 00 00",
            "access: ... 1008 more ...",
            "access: mmio write 8 bytes at GPA 0x3ff8: 00 00 00 00 00 00 00 00",
            "result: resume (a bounded batch; the guest re-executes the rest)",
            "change: rcx: 0xffffffffffffffff -> 0xfffffffffffffdff",
            "change: rsi: 0x1000 -> 0x2000",
            "change: rflags: 0x2 -> 0x10002 (RF 0->1)",
        ],
    );
    assert_eq!(out.iter().filter(|l| l.starts_with("access:")).count(), 21);
}
