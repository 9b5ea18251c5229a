//! `cargo xtask regen`: regenerates `nvmm-sys/src/x86_64/bindings.rs` from the
//! NetBSD NVMM headers with bindgen's library API. The committed file is
//! exactly what this writes; nothing is edited by hand afterwards.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bindgen::callbacks::{IntKind, ItemInfo, ItemKind, MacroParsingBehavior, ParseCallbacks};

use crate::fail;
use crate::util::{Result, apt_install, workspace_root, write_atomically};
use crate::zig;

/// The generated file, relative to the workspace root.
pub const BINDINGS_PATH: &str = "nvmm-sys/src/x86_64/bindings.rs";

/// The headers the bindings come from, relative to an include directory.
const HEADERS: [&str; 3] = [
    "dev/nvmm/nvmm.h",
    "dev/nvmm/nvmm_ioctl.h",
    "dev/nvmm/x86/nvmm_x86.h",
];

/// bindgen's version, recorded in the provenance header (pinned in Cargo.toml).
const BINDGEN_VERSION: &str = "0.73.2";

/// Clang's target: the NetBSD/amd64 ABI, whatever the host is.
const CLANG_TARGET: &str = "x86_64-unknown-netbsd";

/// Prefix of the helper variables through which clang evaluates the macros
/// that bindgen cannot (they expand to `_IOWR(...)`, `__BIT(...)`); the
/// prefix is stripped again, so the Rust constants keep the header names.
const EVAL_PREFIX: &str = "nvmm_rs_eval_";

/// What `regen` was asked to do.
pub struct Options {
    /// A NetBSD sysroot (or an include directory) instead of ziglang's headers.
    pub sysroot: Option<PathBuf>,
    /// Compare with the committed file instead of writing it.
    pub check: bool,
}

/// Where the headers come from.
struct HeaderSource {
    include_dirs: Vec<PathBuf>,
    description: String,
}

/// One of the three headers, read from the sysroot.
struct Header {
    name: &'static str,
    text: String,
}

pub fn run(options: &Options) -> Result<()> {
    let source = header_source(options.sysroot.as_deref())?;
    let headers = read_headers(&source.include_dirs)?;
    let generated = generate(&source, &headers)?;
    let path = workspace_root().join(BINDINGS_PATH);
    if options.check {
        let committed = std::fs::read_to_string(&path)
            .map_err(|err| fail!("cannot read {}: {err}", path.display()))?;
        if committed == generated {
            println!("regen --check: {BINDINGS_PATH} is up to date");
            return Ok(());
        }
        return Err(fail!(
            "{BINDINGS_PATH} differs from what regen generates ({}); run `cargo xtask regen` and commit the result",
            diff_summary(&committed, &generated)
        ));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|err| fail!("cannot create {}: {err}", dir.display()))?;
    }
    write_atomically(&path, generated.as_bytes())?;
    println!(
        "regen: wrote {BINDINGS_PATH} ({} lines)",
        generated.lines().count()
    );
    Ok(())
}

fn header_source(sysroot: Option<&Path>) -> Result<HeaderSource> {
    let Some(sysroot) = sysroot else {
        let ziglang = zig::ensure()?;
        return Ok(HeaderSource {
            include_dirs: ziglang.netbsd_include_dirs(),
            description: format!(
                "the `ziglang` PyPI package, version {}, lib/libc/include/{{x86_64-netbsd-none,generic-netbsd}}",
                zig::ZIGLANG_VERSION
            ),
        });
    };
    if !sysroot.is_dir() {
        return Err(fail!("--sysroot {}: no such directory", sysroot.display()));
    }
    // Accept the root of a NetBSD sysroot or its include directory.
    for (include, description) in [
        (
            sysroot.join("usr/include"),
            "a NetBSD sysroot given with --sysroot (usr/include)",
        ),
        (
            sysroot.to_path_buf(),
            "an include directory given with --sysroot",
        ),
    ] {
        if include.join(HEADERS[0]).is_file() {
            return Ok(HeaderSource {
                include_dirs: vec![include],
                description: description.into(),
            });
        }
    }
    Err(fail!(
        "--sysroot {}: no NVMM headers (expected usr/include/{} in a NetBSD/amd64 sysroot, \
         such as an extracted base.tgz and comp.tgz); omit --sysroot to use the ziglang package",
        sysroot.display(),
        HEADERS[0]
    ))
}

fn read_headers(include_dirs: &[PathBuf]) -> Result<Vec<Header>> {
    HEADERS
        .iter()
        .map(|name| {
            let path = include_dirs
                .iter()
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
                .ok_or_else(|| fail!("the sysroot has no {name} (searched {include_dirs:?})"))?;
            let text = std::fs::read_to_string(&path)
                .map_err(|err| fail!("cannot read {}: {err}", path.display()))?;
            Ok(Header { name, text })
        })
        .collect()
}

/// The `$NetBSD: ... $` RCS id on a header's first lines.
fn netbsd_id(header: &Header) -> Result<&str> {
    let start = header
        .text
        .find("$NetBSD:")
        .ok_or_else(|| fail!("{} has no $NetBSD$ id", header.name))?;
    let len = header.text[start + 1..]
        .find('$')
        .ok_or_else(|| fail!("{} has an unterminated $NetBSD$ id", header.name))?;
    Ok(&header.text[start..start + len + 2])
}

/// The header's licence comment (the block that starts with "Copyright").
fn copyright_notice(header: &Header) -> Result<&str> {
    let start = header
        .text
        .find("/*\n * Copyright")
        .ok_or_else(|| fail!("{} has no copyright notice", header.name))?;
    let len = header.text[start..]
        .find("*/")
        .ok_or_else(|| fail!("{} has an unterminated copyright notice", header.name))?;
    Ok(&header.text[start..start + len + 2])
}

/// An object-like `NVMM_*` macro of the headers (outside `#ifdef _KERNEL`).
struct Constant {
    name: String,
    /// Whether its value is a plain integer literal, which bindgen's own macro
    /// evaluator handles. Anything else (`_IOWR('N', 10, struct ...)`,
    /// `__BIT(0)`, or a reference to a macro defined further down, such as
    /// `NVMM_VCPU_CONF_CPUID`) is evaluated by clang instead.
    literal: bool,
}

/// The object-like `NVMM_*` macros a userland program sees.
fn constants(headers: &[Header]) -> Vec<Constant> {
    let mut found = Vec::new();
    for header in headers {
        // Conditionals enclosing the current line: true for `#ifdef _KERNEL`
        // and for the `#else` of `#ifndef _KERNEL`.
        let mut kernel_only: Vec<(bool, bool)> = Vec::new();
        let joined = header.text.replace("\\\n", " ");
        for line in joined.lines() {
            let Some(directive) = line.trim_start().strip_prefix('#') else {
                continue;
            };
            let directive = directive.trim_start();
            let word_len = directive
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(directive.len());
            let (word, rest) = directive.split_at(word_len);
            let rest = rest.trim();
            match word {
                "ifdef" => kernel_only.push((rest == "_KERNEL", rest == "_KERNEL")),
                "ifndef" => kernel_only.push((false, rest == "_KERNEL")),
                "if" => kernel_only.push((false, false)),
                "else" => {
                    if let Some((kernel, true)) = kernel_only.last_mut() {
                        *kernel = !*kernel;
                    }
                }
                "endif" => {
                    kernel_only.pop();
                }
                "define" if !kernel_only.iter().any(|(kernel, _)| *kernel) => {
                    let name_len = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    let (name, body) = rest.split_at(name_len);
                    // `#define F(x)` is function-like: not a constant.
                    if name.starts_with("NVMM_") && !body.starts_with('(') {
                        found.push(Constant {
                            name: name.to_owned(),
                            literal: is_integer_literal(body),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    found
}

/// `0x1F`, `42`, `0xFFFFFFFFFFFFFFFEULL`: digits with an optional suffix.
fn is_integer_literal(body: &str) -> bool {
    let body = body.trim().trim_end_matches(['U', 'u', 'L', 'l']);
    let digits = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X"));
    match digits {
        Some(hex) => !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()),
        None => !body.is_empty() && body.chars().all(|c| c.is_ascii_digit()),
    }
}

/// The type of each constant, by name: the type of the field or argument it
/// is used with in the headers. A constant without a rule stops regen, so a
/// header update cannot silently add an untyped constant.
fn constant_type(name: &str) -> Option<(&'static str, IntKind)> {
    const USIZE: IntKind = IntKind::Custom {
        name: "usize",
        is_signed: false,
    };
    let rules: [(&str, &str, IntKind); 15] = [
        // ioctl(2) requests are `unsigned long` on NetBSD.
        ("NVMM_IOC_", "unsigned long", IntKind::ULong),
        // nvmm_cap_md::vcpu_conf_support is uint64_t.
        ("NVMM_CAP_ARCH_", "uint64_t", IntKind::U64),
        // nvmm_x86_exit::reason is uint64_t.
        ("NVMM_VCPU_EXIT_", "uint64_t", IntKind::U64),
        // nvmm_comm_page::state_{wanted,cached,commit} are uint64_t.
        ("NVMM_X64_STATE_", "uint64_t", IntKind::U64),
        // The `op` of the configure ioctls is uint64_t.
        ("NVMM_MACH_CONF_", "uint64_t", IntKind::U64),
        ("NVMM_VCPU_CONF_", "uint64_t", IntKind::U64),
        // nvmm_x86_event::type is u_int.
        ("NVMM_VCPU_EVENT_", "unsigned int", IntKind::U32),
        // nvmm_capability::version is uint32_t.
        ("NVMM_KERN_VERSION", "uint32_t", IntKind::U32),
        // nvmm_ioc_ctl::op is int.
        ("NVMM_CTL_", "int", IntKind::Int),
        // Indices into the state arrays (segs, gprs, crs, drs, msrs) and their lengths.
        ("NVMM_X64_SEG_", "size_t", USIZE),
        ("NVMM_X64_GPR_", "size_t", USIZE),
        ("NVMM_X64_CR_", "size_t", USIZE),
        ("NVMM_X64_DR_", "size_t", USIZE),
        ("NVMM_X64_MSR_", "size_t", USIZE),
        ("NVMM_X64_N", "size_t", USIZE),
    ];
    rules
        .into_iter()
        .find(|(prefix, _, _)| name.starts_with(prefix))
        .map(|(_, c_type, kind)| (c_type, kind))
}

/// bindgen callbacks: constant types, the helper-variable renaming, and a
/// record of constants that have no type rule.
#[derive(Debug, Default)]
struct Callbacks {
    /// Macros that clang evaluates through helper variables instead.
    evaluated: BTreeSet<String>,
    untyped: Rc<RefCell<BTreeSet<String>>>,
}

impl ParseCallbacks for Callbacks {
    fn will_parse_macro(&self, name: &str) -> MacroParsingBehavior {
        if self.evaluated.contains(name) {
            MacroParsingBehavior::Ignore
        } else {
            MacroParsingBehavior::Default
        }
    }

    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        let kind = constant_type(name).map(|(_, kind)| kind);
        if kind.is_none() && name.starts_with("NVMM_") {
            self.untyped.borrow_mut().insert(name.to_owned());
        }
        kind
    }

    fn item_name(&self, item: ItemInfo<'_>) -> Option<String> {
        match item.kind {
            ItemKind::Var => item.name.strip_prefix(EVAL_PREFIX).map(str::to_owned),
            _ => None,
        }
    }
}

/// The translation unit bindgen parses: the three headers, plus one `static
/// const` per macro that only clang can evaluate.
fn wrapper_header(evaluated: &[String]) -> Result<String> {
    let mut text = String::new();
    for header in HEADERS {
        text.push_str(&format!("#include <{header}>\n"));
    }
    for name in evaluated {
        let (c_type, _) = constant_type(name).ok_or_else(|| {
            fail!("regen: no type rule for the constant {name} (add one in xtask/src/regen.rs)")
        })?;
        text.push_str(&format!(
            "static const {c_type} {EVAL_PREFIX}{name} = {name};\n"
        ));
    }
    Ok(text)
}

/// Clang arguments, in the order given; recorded in the provenance header.
fn clang_args() -> Vec<String> {
    vec![
        format!("--target={CLANG_TARGET}"),
        // Only the NetBSD headers (and clang's own builtin headers), never the host's.
        "-nostdlibinc".to_owned(),
    ]
}

fn ensure_libclang() -> Result<()> {
    if clang_sys::is_loaded() || clang_sys::load().is_ok() {
        return Ok(());
    }
    if apt_install(&["libclang-dev"])? && clang_sys::load().is_ok() {
        return Ok(());
    }
    Err(fail!(
        "libclang not found (bindgen needs it): install libclang-dev (Debian/Ubuntu), \
         clang-devel (Fedora) or llvm (NetBSD pkgsrc), or set LIBCLANG_PATH to its directory"
    ))
}

fn generate(source: &HeaderSource, headers: &[Header]) -> Result<String> {
    ensure_libclang()?;
    let constants = constants(headers);
    let evaluated: Vec<String> = constants
        .iter()
        .filter(|c| !c.literal)
        .map(|c| c.name.clone())
        .collect();
    let wrapper = wrapper_header(&evaluated)?;
    let untyped = Rc::new(RefCell::new(BTreeSet::new()));
    let callbacks = Callbacks {
        evaluated: evaluated.iter().cloned().collect(),
        untyped: Rc::clone(&untyped),
    };
    let rust_target =
        bindgen::RustTarget::stable(85, 0).map_err(|err| fail!("bindgen rust target: {err}"))?;

    let mut builder = bindgen::Builder::default()
        .header_contents("nvmm_rs_wrapper.h", &wrapper)
        .clang_args(clang_args())
        .rust_target(rust_target)
        .rust_edition(bindgen::RustEdition::Edition2024)
        .formatter(bindgen::Formatter::Prettyplease)
        .disable_header_comment()
        .allowlist_type("nvmm_.*")
        .allowlist_var("NVMM_.*")
        .allowlist_var(format!("{EVAL_PREFIX}.*"))
        .layout_tests(true)
        .use_core()
        .ctypes_prefix("core::ffi")
        .derive_default(true)
        .derive_debug(true)
        .impl_debug(true)
        .derive_copy(true)
        .generate_comments(true)
        .sort_semantically(true)
        .parse_callbacks(Box::new(callbacks));
    for dir in &source.include_dirs {
        builder = builder.clang_arg(format!("-isystem{}", dir.display()));
    }
    let bindings = builder
        .generate()
        .map_err(|err| {
            let err = err.to_string();
            fail!(
                "bindgen failed on the NVMM headers: {}",
                err.lines().next().unwrap_or("").trim()
            )
        })?
        .to_string();

    let untyped = untyped.borrow();
    if !untyped.is_empty() {
        return Err(fail!(
            "regen: no type rule for the constants {} (add them in xtask/src/regen.rs)",
            untyped.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    // Every constant of the headers must have come through, one way or the other.
    for constant in &constants {
        if !bindings.contains(&format!("pub const {}:", constant.name)) {
            return Err(fail!(
                "regen: the bindings lack the constant {}",
                constant.name
            ));
        }
    }

    let mut out = provenance(source, headers, &evaluated)?;
    out.push('\n');
    out.push_str(&bindings);
    Ok(out)
}

/// The comment block at the top of the generated file.
fn provenance(source: &HeaderSource, headers: &[Header], evaluated: &[String]) -> Result<String> {
    let mut lines = vec![
        "Generated by `cargo xtask regen` (xtask/src/regen.rs). Do not edit by hand;".to_owned(),
        "`cargo xtask regen --check` (run by `cargo xtask ci`) verifies this file.".to_owned(),
        String::new(),
        "Headers:".to_owned(),
    ];
    for header in headers {
        lines.push(format!("  {:<26} {}", header.name, netbsd_id(header)?));
    }
    lines.push(format!("Source of the headers: {}", source.description));
    lines.push(format!(
        "Generator: bindgen {BINDGEN_VERSION} (library API), libclang from the host"
    ));
    lines.push(format!(
        "Clang arguments: {} -isystem<include dirs above>",
        clang_args().join(" ")
    ));
    lines.extend(
        [
            "bindgen options: allowlist_type(\"nvmm_.*\"), allowlist_var(\"NVMM_.*\"), layout_tests(true),",
            "  use_core, ctypes_prefix(\"core::ffi\"), derive_default, derive_debug, impl_debug, derive_copy,",
            "  generate_comments, sort_semantically, rust_target 1.85, edition 2024, prettyplease formatting;",
            "  integer macro types from their use in the headers (see constant_type in regen.rs).",
            "Evaluated by clang through `static const` helper variables (their values are",
            "expressions, some calling function-like macros, which bindgen cannot expand):",
        ]
        .map(str::to_owned),
    );
    for chunk in evaluated.chunks(3) {
        lines.push(format!("  {}", chunk.join(", ")));
    }
    lines.push(String::new());
    lines.push("The headers carry this notice, which applies to the definitions below:".to_owned());
    lines.push(String::new());

    let notices: BTreeSet<&str> = headers
        .iter()
        .map(copyright_notice)
        .collect::<Result<_>>()?;
    let mut out: String = lines
        .iter()
        .map(|line| {
            if line.is_empty() {
                "//\n".to_owned()
            } else {
                format!("// {line}\n")
            }
        })
        .collect();
    for notice in notices {
        for line in notice.lines() {
            out.push_str(&format!("// {line}\n").replace("// \n", "//\n"));
        }
    }
    Ok(out)
}

/// "N lines differ, first at line L" plus both versions of that line.
fn diff_summary(committed: &str, generated: &str) -> String {
    let old: Vec<&str> = committed.lines().collect();
    let new: Vec<&str> = generated.lines().collect();
    let differing = (0..old.len().max(new.len()))
        .filter(|&i| old.get(i) != new.get(i))
        .collect::<Vec<_>>();
    let Some(&first) = differing.first() else {
        return "only line endings differ".to_owned();
    };
    format!(
        "{} of {} lines differ, first at line {}: committed {:?}, generated {:?}",
        differing.len(),
        new.len(),
        first + 1,
        old.get(first).copied().unwrap_or("<end of file>"),
        new.get(first).copied().unwrap_or("<end of file>")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str) -> Header {
        Header {
            name: "dev/nvmm/test.h",
            text: text.to_owned(),
        }
    }

    #[test]
    fn constants_skip_kernel_only_and_function_like_macros() {
        let text = "\
/*\t$NetBSD: test.h,v 1.2 2021/03/26 15:59:53 someone Exp $\t*/
#define NVMM_A\t\t0x10ULL
#define NVMM_B\t\t(NVMM_A + 1)
#define NVMM_IOC_X\t_IOW('N', 1, struct x)
#define NVMM_F(op)\t(op - 1)
#define NVMM_MULTI\t\\
\t(NVMM_A | NVMM_B)
#ifdef _KERNEL
#define NVMM_KERNEL_ONLY\t2
#else
#define NVMM_USER_ONLY\t3
#endif
#ifndef _KERNEL
#define NVMM_ALSO_USER\t4
#endif
#define OTHER\t5
";
        let found: Vec<(String, bool)> = constants(&[header(text)])
            .into_iter()
            .map(|c| (c.name, c.literal))
            .collect();
        let expected = [
            ("NVMM_A", true),
            ("NVMM_B", false),
            ("NVMM_IOC_X", false),
            ("NVMM_MULTI", false),
            ("NVMM_USER_ONLY", true),
            ("NVMM_ALSO_USER", true),
        ];
        assert_eq!(found, expected.map(|(n, l)| (n.to_owned(), l)));
        assert_eq!(
            netbsd_id(&header(text)).unwrap(),
            "$NetBSD: test.h,v 1.2 2021/03/26 15:59:53 someone Exp $"
        );
    }

    #[test]
    fn integer_literals() {
        for yes in ["0", "42", "0x1F", "0xFFFFFFFFFFFFFFFEULL", " 7U "] {
            assert!(is_integer_literal(yes), "{yes}");
        }
        for no in ["", "0x", "(1)", "NVMM_A", "__BIT(0)", "1 + 2", "0xZZ"] {
            assert!(!is_integer_literal(no), "{no}");
        }
    }

    #[test]
    fn every_header_constant_family_has_a_type() {
        for name in [
            "NVMM_IOC_VCPU_RUN",
            "NVMM_VCPU_EXIT_IO",
            "NVMM_X64_GPR_RIP",
            "NVMM_X64_NSEG",
            "NVMM_KERN_VERSION",
        ] {
            assert!(constant_type(name).is_some(), "{name}");
        }
        assert!(constant_type("NVMM_SOMETHING_NEW").is_none());
        assert_eq!(
            constant_type("NVMM_IOC_CTL").map(|(c, _)| c),
            Some("unsigned long")
        );
    }

    #[test]
    fn diff_summary_names_the_first_difference() {
        let summary = diff_summary("a\nb\nc\n", "a\nB\nc\nd\n");
        assert!(
            summary.starts_with("2 of 4 lines differ, first at line 2"),
            "{summary}"
        );
        assert!(
            summary.contains(r#"committed "b", generated "B""#),
            "{summary}"
        );
    }

    #[test]
    fn a_sysroot_without_nvmm_headers_is_refused() {
        let dir = std::env::temp_dir().join(format!("xtask-empty-sysroot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = header_source(Some(&dir)).err().unwrap();
        assert!(err.0.contains("no NVMM headers"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            header_source(Some(&dir))
                .err()
                .unwrap()
                .0
                .contains("no such directory")
        );
    }
}
