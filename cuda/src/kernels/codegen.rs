//! The few helpers the PTX template expanders share: writing an indented instruction line and
//! spelling out one tensor-core `mma` with its register lists.

/// Appends one formatted line of PTX, indented like the templates.
macro_rules! emit {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = write!($out, "    ");
        let _ = writeln!($out, $($arg)*);
    }};
}
pub(crate) use emit;

/// Four consecutive registers `%{prefix}{first}..{first+3}` (an mma A fragment or C tile).
pub(crate) fn regs(prefix: &str, first: u32) -> [String; 4] {
    [0, 1, 2, 3].map(|i| format!("%{prefix}{}", first + i))
}

/// `d += a · b` on the tensor cores: `mma.sync.m16n8k16`, bf16 inputs, f32 accumulators (the
/// fragment layouts of the PTX ISA, section "Matrix Fragments for mma.m16n8k16").
pub(crate) fn mma(out: &mut String, d: [String; 4], a: [String; 4], b: [&str; 2]) {
    emit!(
        out,
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{}, {}, {}, {}}}, {{{}, {}, {}, {}}}, {{{}, {}}}, {{{}, {}, {}, {}}};",
        d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3], b[0], b[1], d[0], d[1], d[2], d[3]
    );
}
