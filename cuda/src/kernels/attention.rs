//! Expands the `kernels/attention.ptx` template (FlashAttention-2 forward) for one head
//! dimension D: the tile loads, the ldmatrix addresses and the unrolled mma / online-softmax
//! sequences, whose register names must be spelled out.

use super::codegen::{emit, mma, regs};

/// Query rows and keys per tile.
const TILE: u32 = 64;

/// The head dimensions the kernel is built for.
pub const HEAD_DIMS: [u32; 6] = [16, 24, 32, 64, 72, 128];

/// The entry of head dimension `d`.
pub fn entry(d: u32) -> String {
    format!("flash_forward_d{d}")
}

/// D rounded up to the k16 step of the tensor cores: a head dim that is a multiple of 8 but not
/// of 16 (24 in the tiny presets, 72 in DiT-XL) is zero-padded in shared memory and registers.
fn padded(d: u32) -> u32 {
    d.div_ceil(16) * 16
}

/// Bytes of one shared row: the padded D in bf16 plus 16 bytes (so the 8 rows an ldmatrix
/// reads start in different banks).
fn stride(d: u32) -> u32 {
    padded(d) * 2 + 16
}

/// cp.async of rows `%r9 .. %r9 + 64` of the [T, D] matrix at `base` into the shared tile at
/// byte `offset`: 8·D chunks of 16 bytes, D/16 per thread; rows past T are zero-filled.
fn load_tile(d: u32, base: &str, offset: u32) -> String {
    let mut out = String::new();
    // Chunks of 16 bytes per shared row (padded D) and per global row (D).
    let (shared_chunks, global_chunks) = (padded(d) / 8, d / 8);
    for j in 0..padded(d) / 16 {
        emit!(out, "add.u32 %r10, %r0, {};", 128 * j);
        emit!(out, "div.u32 %r11, %r10, {shared_chunks};");
        emit!(out, "rem.u32 %r12, %r10, {shared_chunks};");
        emit!(out, "add.u32 %r13, %r9, %r11;");
        emit!(out, "setp.lt.u32 %p1, %r13, %r7;");
        if global_chunks < shared_chunks {
            emit!(out, "setp.lt.u32 %p7, %r12, {global_chunks};");
            emit!(out, "and.pred %p1, %p1, %p7;");
        }
        emit!(out, "mul.wide.u32 %rd8, %r13, {d};");
        emit!(out, "shl.b32 %r14, %r12, 3;");
        emit!(out, "cvt.u64.u32 %rd9, %r14;");
        emit!(out, "add.u64 %rd8, %rd8, %rd9;");
        emit!(out, "shl.b64 %rd8, %rd8, 1;");
        emit!(out, "add.u64 %rd8, %rd8, {base};");
        emit!(out, "@!%p1 mov.u64 %rd8, {base};");
        emit!(out, "selp.u32 %r15, 16, 0, %p1;");
        emit!(out, "mul.lo.u32 %r16, %r11, {};", stride(d));
        emit!(out, "shl.b32 %r17, %r12, 4;");
        emit!(out, "add.u32 %r16, %r16, %r17;");
        emit!(out, "add.u32 %r16, %r16, %r8;");
        if offset > 0 {
            emit!(out, "add.u32 %r16, %r16, {offset};");
        }
        emit!(out, "cp.async.cg.shared.global [%r16], [%rd8], 16, %r15;");
    }
    out
}

/// A fragments (registers `%{prefix}0..`) of the 64-row shared tile at `offset`: this warp's 16
/// rows, every k16 step of D; lane l addresses row 16·warp + l % 16, columns 8·(l / 16).
fn a_fragments(d: u32, prefix: &str, offset: u32) -> String {
    let mut out = String::new();
    emit!(out, "shl.b32 %r18, %r1, 4;");
    emit!(out, "and.b32 %r19, %r2, 15;");
    emit!(out, "add.u32 %r18, %r18, %r19;");
    emit!(out, "mul.lo.u32 %r18, %r18, {};", stride(d));
    emit!(out, "shr.u32 %r19, %r2, 4;");
    emit!(out, "shl.b32 %r19, %r19, 4;");
    emit!(out, "add.u32 %r18, %r18, %r19;");
    emit!(out, "add.u32 %r18, %r18, %r8;");
    for kc in 0..padded(d) / 16 {
        emit!(out, "add.u32 %r19, %r18, {};", offset + kc * 32);
        emit!(
            out,
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{%{prefix}{}, %{prefix}{}, %{prefix}{}, %{prefix}{}}}, [%r19];",
            4 * kc,
            4 * kc + 1,
            4 * kc + 2,
            4 * kc + 3
        );
    }
    out
}

/// `%{acc}` (16 rows × 64 columns, tile j in `%{acc}4j..4j+3`) += `%{a}` (16 × D A fragments) ·
/// Tᵀ, for the 64-row shared tile T at `offset` read as the K-contiguous B operand: lanes
/// address rows (l % 8) + 8·(l / 16), columns 8·((l / 8) % 2).
fn product_transposed_tile(d: u32, acc: &str, a: &str, offset: u32) -> String {
    let mut out = String::new();
    emit!(out, "and.b32 %r20, %r2, 7;");
    emit!(out, "shr.u32 %r21, %r2, 4;");
    emit!(out, "shl.b32 %r21, %r21, 3;");
    emit!(out, "add.u32 %r20, %r20, %r21;");
    emit!(out, "mul.lo.u32 %r20, %r20, {};", stride(d));
    emit!(out, "shr.u32 %r21, %r2, 3;");
    emit!(out, "and.b32 %r21, %r21, 1;");
    emit!(out, "shl.b32 %r21, %r21, 4;");
    emit!(out, "add.u32 %r20, %r20, %r21;");
    emit!(out, "add.u32 %r20, %r20, %r8;");
    for p in 0..4 {
        for kc in 0..padded(d) / 16 {
            emit!(
                out,
                "add.u32 %r21, %r20, {};",
                offset + p * 16 * stride(d) + kc * 32
            );
            emit!(
                out,
                "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{%kb0, %kb1, %kb2, %kb3}}, [%r21];"
            );
            mma(
                &mut out,
                regs(acc, 8 * p),
                regs(a, 4 * kc),
                ["%kb0", "%kb1"],
            );
            mma(
                &mut out,
                regs(acc, 8 * p + 4),
                regs(a, 4 * kc),
                ["%kb2", "%kb3"],
            );
        }
    }
    out
}

/// `%{acc}` (16 rows × D) += `%{a}` (16 × 64 A fragments, as packed from a 16 × 64 tile of
/// C fragments) · T, for the 64-row shared tile T at `offset` read as the N-contiguous B
/// operand (ldmatrix.trans): lanes address rows (l % 8) + 8·((l / 8) % 2), columns 8·(l / 16).
fn product_tile(d: u32, acc: &str, a: &str, offset: u32) -> String {
    let mut out = String::new();
    emit!(out, "and.b32 %r24, %r2, 7;");
    emit!(out, "shr.u32 %r25, %r2, 3;");
    emit!(out, "and.b32 %r25, %r25, 1;");
    emit!(out, "shl.b32 %r25, %r25, 3;");
    emit!(out, "add.u32 %r24, %r24, %r25;");
    emit!(out, "mul.lo.u32 %r24, %r24, {};", stride(d));
    emit!(out, "shr.u32 %r25, %r2, 4;");
    emit!(out, "shl.b32 %r25, %r25, 4;");
    emit!(out, "add.u32 %r24, %r24, %r25;");
    emit!(out, "add.u32 %r24, %r24, %r8;");
    for c in 0..4 {
        for dp in 0..padded(d) / 16 {
            emit!(
                out,
                "add.u32 %r25, %r24, {};",
                offset + c * 16 * stride(d) + dp * 32
            );
            emit!(
                out,
                "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{%kb0, %kb1, %kb2, %kb3}}, [%r25];"
            );
            mma(
                &mut out,
                regs(acc, 8 * dp),
                regs(a, 4 * c),
                ["%kb0", "%kb1"],
            );
            mma(
                &mut out,
                regs(acc, 8 * dp + 4),
                regs(a, 4 * c),
                ["%kb2", "%kb3"],
            );
        }
    }
    out
}

/// `%{prefix}0..31` = 0.
fn zero(prefix: &str, count: u32) -> String {
    (0..count)
        .map(|i| format!("    mov.f32 %{prefix}{i}, 0f00000000;\n"))
        .collect()
}

/// Packs a 16 × 64 tile of C fragments (`%{from}`) into bf16 A fragments (`%{to}`): two n8
/// tiles (columns 16c..16c+15) are one k16 A fragment.
fn pack_a(from: &str, to: &str) -> String {
    let mut out = String::new();
    for c in 0..4 {
        let s = 8 * c;
        for (reg, hi, lo) in [(0, 1, 0), (1, 3, 2), (2, 5, 4), (3, 7, 6)] {
            emit!(
                out,
                "cvt.rn.bf16x2.f32 %{to}{}, %{from}{}, %{from}{};",
                4 * c + reg,
                s + hi,
                s + lo
            );
        }
    }
    out
}

/// The online softmax of one tile: mask, scale, running max, rescale l and O, P = ex2(S − m),
/// and P packed into bf16 A fragments (%pa).
fn softmax(d: u32) -> String {
    let mut out = String::new();
    for j in 0..8 {
        for e in 0..4 {
            let s = format!("%s{}", 4 * j + e);
            emit!(out, "add.u32 %r23, %r9, {};", j * 8 + (e & 1));
            emit!(out, "add.u32 %r23, %r23, %r4;");
            emit!(out, "setp.ge.u32 %p2, %r23, %r7;");
            emit!(out, "mul.f32 {s}, {s}, %f0;");
            emit!(out, "@%p2 mov.f32 {s}, 0fFF800000;");
        }
    }
    // Row maxima of this lane's values, then across the 4 lanes that share each row.
    emit!(out, "max.f32 %f5, %s0, %s1;");
    emit!(out, "max.f32 %f6, %s2, %s3;");
    for j in 1..8 {
        emit!(out, "max.f32 %f5, %f5, %s{};", 4 * j);
        emit!(out, "max.f32 %f5, %f5, %s{};", 4 * j + 1);
        emit!(out, "max.f32 %f6, %f6, %s{};", 4 * j + 2);
        emit!(out, "max.f32 %f6, %f6, %s{};", 4 * j + 3);
    }
    for lane_mask in [1, 2] {
        emit!(out, "shfl.sync.bfly.b32 %f7, %f5, {lane_mask}, 31, -1;");
        emit!(out, "max.f32 %f5, %f5, %f7;");
        emit!(out, "shfl.sync.bfly.b32 %f7, %f6, {lane_mask}, 31, -1;");
        emit!(out, "max.f32 %f6, %f6, %f7;");
    }
    emit!(out, "max.f32 %f5, %f5, %f1;                // new m, row g");
    emit!(
        out,
        "max.f32 %f6, %f6, %f2;                // new m, row g + 8"
    );
    emit!(out, "sub.f32 %f7, %f1, %f5;");
    emit!(
        out,
        "ex2.approx.f32 %f7, %f7;               // rescale of row g"
    );
    emit!(out, "sub.f32 %f8, %f2, %f6;");
    emit!(
        out,
        "ex2.approx.f32 %f8, %f8;               // rescale of row g + 8"
    );
    emit!(out, "mov.f32 %f1, %f5;");
    emit!(out, "mov.f32 %f2, %f6;");
    emit!(out, "mul.f32 %f3, %f3, %f7;");
    emit!(out, "mul.f32 %f4, %f4, %f8;");
    for j in 0..8 {
        for e in 0..4 {
            let s = format!("%s{}", 4 * j + e);
            let (m, l) = if e < 2 {
                ("%f5", "%f3")
            } else {
                ("%f6", "%f4")
            };
            emit!(out, "sub.f32 {s}, {s}, {m};");
            emit!(out, "ex2.approx.f32 {s}, {s};");
            emit!(out, "add.f32 {l}, {l}, {s};");
        }
    }
    for jd in 0..padded(d) / 8 {
        for e in 0..4 {
            let alpha = if e < 2 { "%f7" } else { "%f8" };
            emit!(out, "mul.f32 %acc{0}, %acc{0}, {alpha};", 4 * jd + e);
        }
    }
    out.push_str(&pack_a("s", "pa"));
    out
}

/// This warp's rows (`%r5` + 16·warp + g, and + 8) in `%r26`, `%r27`, with `%p3`, `%p4` saying
/// which are below T.
fn own_rows() -> String {
    let mut out = String::new();
    emit!(out, "shl.b32 %r26, %r1, 4;");
    emit!(out, "add.u32 %r26, %r26, %r5;");
    emit!(out, "add.u32 %r26, %r26, %r3;                // row g");
    emit!(out, "add.u32 %r27, %r26, 8;                 // row g + 8");
    emit!(out, "setp.lt.u32 %p3, %r26, %r7;");
    emit!(out, "setp.lt.u32 %p4, %r27, %r7;");
    out
}

/// Stores the 16 × D accumulators `%{acc}` of this warp's rows (see [`own_rows`]) below T into
/// the f32 [T, D] matrix at `base`, each row multiplied first by its factor if given.
fn store_rows(d: u32, acc: &str, base: &str, factors: Option<[&str; 2]>) -> String {
    let mut out = own_rows();
    for (half, (row, pred, first)) in [("%r26", "%p3", 0), ("%r27", "%p4", 2)]
        .into_iter()
        .enumerate()
    {
        emit!(out, "mul.wide.u32 %rd10, {row}, {d};");
        for jd in 0..d / 8 {
            let (a, b) = (4 * jd + first, 4 * jd + first + 1);
            if let Some(factors) = factors {
                let factor = factors[half];
                emit!(out, "mul.f32 %{acc}{a}, %{acc}{a}, {factor};");
                emit!(out, "mul.f32 %{acc}{b}, %{acc}{b}, {factor};");
            }
            emit!(out, "add.u32 %r28, %r4, {};", jd * 8);
            emit!(out, "cvt.u64.u32 %rd11, %r28;");
            emit!(out, "add.u64 %rd11, %rd11, %rd10;");
            emit!(out, "shl.b64 %rd11, %rd11, 2;");
            emit!(out, "add.u64 %rd11, %rd11, {base};");
            emit!(
                out,
                "@{pred} st.global.v2.f32 [%rd11], {{%{acc}{a}, %{acc}{b}}};"
            );
        }
    }
    out
}

/// O /= l, stores O and the log-sum-exp of the rows below T.
fn finish(d: u32) -> String {
    let mut out = String::new();
    for lane_mask in [1, 2] {
        emit!(out, "shfl.sync.bfly.b32 %f7, %f3, {lane_mask}, 31, -1;");
        emit!(out, "add.f32 %f3, %f3, %f7;");
        emit!(out, "shfl.sync.bfly.b32 %f7, %f4, {lane_mask}, 31, -1;");
        emit!(out, "add.f32 %f4, %f4, %f7;");
    }
    emit!(out, "rcp.rn.f32 %f9, %f3;");
    emit!(out, "rcp.rn.f32 %f10, %f4;");
    out.push_str(&store_rows(d, "acc", "%rd3", Some(["%f9", "%f10"])));
    // The log-sum-exp (natural log), written by the first lane of each row's quad.
    emit!(out, "setp.eq.u32 %p5, %r4, 0;");
    for (row, pred, m, l) in [("%r26", "%p3", "%f1", "%f3"), ("%r27", "%p4", "%f2", "%f4")] {
        emit!(out, "lg2.approx.f32 %f11, {l};");
        emit!(out, "add.f32 %f11, %f11, {m};");
        emit!(out, "mul.f32 %f11, %f11, 0f3F317218;");
        emit!(out, "and.pred %p6, %p5, {pred};");
        emit!(out, "mul.wide.u32 %rd12, {row}, 4;");
        emit!(out, "add.u64 %rd12, %rd12, %rd4;");
        emit!(out, "@%p6 st.global.f32 [%rd12], %f11;");
    }
    out
}

/// The head dimensions the backward kernels are built for.
pub const BACKWARD_HEAD_DIMS: [u32; 6] = [16, 24, 32, 64, 72, 128];

/// From this head dimension on, the dK and dV accumulators with the K and V fragments no
/// longer fit one thread's 255 registers (ptxas spilled at D = 128; D = 72 fits with 254):
/// dK and dV get a kernel each, both recomputing Pᵀ — more tensor-core work, no spills.
const SPLIT_KEY_GRADS_FROM: u32 = 128;

/// Which key-side gradients a key-tile kernel accumulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyGrads {
    Both,
    KeysOnly,
    ValuesOnly,
}

impl KeyGrads {
    fn keys(self) -> bool {
        self != KeyGrads::ValuesOnly
    }
    fn values(self) -> bool {
        self != KeyGrads::KeysOnly
    }
}

/// The key-tile kernels of head dimension `d` with what each computes: one for dK and dV, or
/// one for each from [`SPLIT_KEY_GRADS_FROM`] on.
fn key_kernels(d: u32) -> Vec<(String, KeyGrads)> {
    if d < SPLIT_KEY_GRADS_FROM {
        vec![(format!("flash_backward_dkdv_d{d}"), KeyGrads::Both)]
    } else {
        vec![
            (format!("flash_backward_dk_d{d}"), KeyGrads::KeysOnly),
            (format!("flash_backward_dv_d{d}"), KeyGrads::ValuesOnly),
        ]
    }
}

/// The entries of the backward pass at head dimension `d`: the key-tile kernels (dK and dV,
/// together or one each; all take the same parameters) and the dQ kernel.
pub fn backward_entries(d: u32) -> (Vec<String>, String) {
    (
        key_kernels(d).into_iter().map(|(name, _)| name).collect(),
        format!("flash_backward_dq_d{d}"),
    )
}

/// Registers, shared tiles and the index/base-address setup both backward kernels share.
fn backward_declarations() -> String {
    let mut out = String::new();
    for decl in [
        ".reg .pred %p<8>;".to_string(),
        ".reg .b32 %r<40>;".to_string(),
        ".reg .b64 %rd<16>;".to_string(),
        ".reg .f32 %f<16>;".to_string(),
        ".reg .f32 %s<32>;".to_string(),
        ".reg .f32 %dp<32>;".to_string(),
        ".reg .b32 %pa<16>;".to_string(),
        ".reg .b32 %kb<4>;".to_string(),
    ] {
        emit!(out, "{decl}");
    }
    out
}

/// Thread coordinates, T, the scale (`%f0` with log2 e folded in, `%f15` plain) and this
/// head's base addresses: q `%rd0`, k `%rd1`, v `%rd2`, dO `%rd13` (bf16); the first output
/// `%rd3` and, for dK dV, dV `%rd7` (f32); log-sum-exp `%rd4` and Δ `%rd14` (f32 per row).
fn backward_setup(d: u32, outputs: &[&str]) -> String {
    let mut out = String::new();
    for line in [
        "mov.u32 %r0, %tid.x;",
        "shr.u32 %r1, %r0, 5;",
        "and.b32 %r2, %r0, 31;",
        "shr.u32 %r3, %r2, 2;",
        "and.b32 %r4, %r2, 3;",
        "shl.b32 %r4, %r4, 1;",
        "mov.u32 %r5, %ctaid.x;",
        "shl.b32 %r5, %r5, 6;                   // first row (query or key) of the CTA",
        "ld.param.u32 %r7, [t];",
        "ld.param.f32 %f15, [scale];",
        "mul.f32 %f0, %f15, 0f3FB8AA3B;",
        "mov.u32 %r8, tiles;",
        "mov.u32 %r6, %ctaid.y;",
        "mul.wide.u32 %rd5, %r6, %r7;",
    ] {
        emit!(out, "{line}");
    }
    emit!(out, "mul.lo.u64 %rd6, %rd5, {d};");
    emit!(out, "shl.b64 %rd9, %rd6, 1;");
    for (reg, param) in [
        ("%rd0", "q"),
        ("%rd1", "k"),
        ("%rd2", "v"),
        ("%rd13", "d_out"),
    ] {
        emit!(out, "ld.param.u64 {reg}, [{param}];");
        emit!(out, "add.u64 {reg}, {reg}, %rd9;");
    }
    emit!(out, "shl.b64 %rd9, %rd6, 2;");
    for (reg, param) in ["%rd3", "%rd7"].iter().zip(outputs) {
        emit!(out, "ld.param.u64 {reg}, [{param}];");
        emit!(out, "add.u64 {reg}, {reg}, %rd9;");
    }
    emit!(out, "shl.b64 %rd9, %rd5, 2;");
    for (reg, param) in [("%rd4", "lse"), ("%rd14", "delta")] {
        emit!(out, "ld.param.u64 {reg}, [{param}];");
        emit!(out, "add.u64 {reg}, {reg}, %rd9;");
    }
    out
}

/// The per-row log-sum-exp (log2 units) and Δ of this warp's query rows: `%f1`, `%f2` and
/// `%f3`, `%f4` (zero past T).
fn row_stats() -> String {
    let mut out = own_rows();
    for (row, pred, lse, delta) in [("%r26", "%p3", "%f1", "%f3"), ("%r27", "%p4", "%f2", "%f4")] {
        emit!(out, "mov.f32 {lse}, 0f00000000;");
        emit!(out, "mov.f32 {delta}, 0f00000000;");
        emit!(out, "mul.wide.u32 %rd10, {row}, 4;");
        emit!(out, "add.u64 %rd11, %rd4, %rd10;");
        emit!(out, "@{pred} ld.global.f32 {lse}, [%rd11];");
        emit!(out, "add.u64 %rd11, %rd14, %rd10;");
        emit!(out, "@{pred} ld.global.f32 {delta}, [%rd11];");
        emit!(out, "mul.f32 {lse}, {lse}, 0f3FB8AA3B;");
    }
    out
}

/// One K, V tile of the dQ kernel: S, P (keys past T masked), dP = dO·Vᵀ, dS = P ∘ (dP − Δ),
/// dQ += dS·K.
fn dq_tile(d: u32) -> String {
    let mut out = zero("s", 32) + &product_transposed_tile(d, "s", "qa", 0);
    for j in 0..8 {
        for e in 0..4 {
            let (s, lse) = (
                format!("%s{}", 4 * j + e),
                if e < 2 { "%f1" } else { "%f2" },
            );
            emit!(out, "add.u32 %r23, %r9, {};", j * 8 + (e & 1));
            emit!(out, "add.u32 %r23, %r23, %r4;");
            emit!(out, "setp.ge.u32 %p2, %r23, %r7;");
            emit!(out, "mul.f32 {s}, {s}, %f0;");
            emit!(out, "sub.f32 {s}, {s}, {lse};");
            emit!(out, "@%p2 mov.f32 {s}, 0fFF800000;");
            emit!(out, "ex2.approx.f32 {s}, {s};");
        }
    }
    out += &zero("dp", 32);
    out += &product_transposed_tile(d, "dp", "da", TILE * stride(d));
    for i in 0..32 {
        let delta = if i % 4 < 2 { "%f3" } else { "%f4" };
        emit!(out, "sub.f32 %dp{i}, %dp{i}, {delta};");
        emit!(out, "mul.f32 %s{i}, %s{i}, %dp{i};");
    }
    out += &pack_a("s", "pa");
    out + &product_tile(d, "acc", "pa", 0)
}

/// Bytes from the start of `tiles` to the query row statistics of a key-tile kernel: after
/// the Q and dO tiles, 64 log-sum-exps then 64 Δs (f32).
fn query_stats_offset(d: u32) -> u32 {
    2 * TILE * stride(d)
}

/// cp.async of the log-sum-exp (threads 0..63) and Δ (threads 64..127) of the tile's 64
/// queries (`%r9..`; zero-filled past T) into the stage's shared memory. Read from there, the
/// 16 per-lane values of each table cost a shared load each instead of a global load and its
/// 64-bit address (which made D = 128 spill).
fn load_query_stats(d: u32) -> String {
    let mut out = String::new();
    let offset = query_stats_offset(d);
    for line in [
        "and.b32 %r34, %r0, 63;".to_string(),
        "add.u32 %r34, %r9, %r34;".to_string(),
        "setp.lt.u32 %p5, %r34, %r7;".to_string(),
        "setp.lt.u32 %p6, %r0, 64;".to_string(),
        "mul.wide.u32 %rd10, %r34, 4;".to_string(),
        "add.u64 %rd11, %rd14, %rd10;".to_string(),
        "@%p6 add.u64 %rd11, %rd4, %rd10;".to_string(),
        "@!%p5 mov.u64 %rd11, %rd4;".to_string(),
        "selp.u32 %r37, 4, 0, %p5;".to_string(),
        "shl.b32 %r35, %r0, 2;".to_string(),
        "add.u32 %r35, %r35, %r8;".to_string(),
        format!("add.u32 %r35, %r35, {offset};"),
        "cp.async.ca.shared.global [%r35], [%rd11], 4, %r37;".to_string(),
    ] {
        emit!(out, "{line}");
    }
    out
}

/// Points `%r33` at this lane's first column (query 2·(lane % 4)) of the stage's row
/// statistics.
fn query_stats_pointer(d: u32) -> String {
    let mut out = String::new();
    emit!(out, "shl.b32 %r33, %r4, 2;");
    emit!(out, "add.u32 %r33, %r33, %r8;");
    emit!(out, "add.u32 %r33, %r33, {};", query_stats_offset(d));
    out
}

/// Bytes of one stage of streamed tiles: Q, dO and the row statistics (key-tile kernels), or
/// K and V (dQ kernel), whichever is larger.
fn backward_stage_bytes(d: u32) -> u32 {
    query_stats_offset(d) + 2 * TILE * 4
}

/// Dynamic shared memory of the backward kernels of head dimension `d`: two stages.
pub fn backward_shared_bytes(d: u32) -> u32 {
    2 * backward_stage_bytes(d)
}

/// The loop over the streamed tiles (rows `%r9` = 0, 64, … < T) of a backward kernel, two
/// stages deep: while `tile` multiplies the tile in the stage at `%r8`, `load` fetches the next
/// one into the other stage (`%r38`); each tile then swaps the two. `label` names the loop,
/// `done` is where it exits.
fn streamed_loop(d: u32, label: &str, done: &str, load: &str, tile: &str) -> String {
    let stage = backward_stage_bytes(d);
    format!(
        "    mov.u32 %r9, 0;
    add.u32 %r38, %r8, {stage};           // the other stage
    bar.sync 0;                            // the first tiles are in registers
{load}    cp.async.commit_group;                 // the first streamed tile
{label}:
    setp.ge.u32 %p0, %r9, %r7;
    @%p0 bra {done};
    add.u32 %r9, %r9, 64;                  // the next tile, into the other stage (free: every
    mov.u32 %r39, %r8;                     // warp left it at the last barrier)
    mov.u32 %r8, %r38;
    setp.ge.u32 %p0, %r9, %r7;
    @%p0 bra {label}_FETCHED;
{load}{label}_FETCHED:
    cp.async.commit_group;                 // (empty after the last tile)
    mov.u32 %r8, %r39;
    sub.u32 %r9, %r9, 64;
    cp.async.wait_group 1;                 // this tile landed
    bar.sync 0;
{tile}    bar.sync 0;                            // every warp is done with this stage
    mov.u32 %r8, %r38;                     // swap the stages
    mov.u32 %r38, %r39;
    add.u32 %r9, %r9, 64;
    bra {label};
"
    )
}

/// One Q, dO tile of a key-tile kernel (rows are this CTA's keys, columns the tile's queries):
/// Pᵀ (queries past T masked), dV += Pᵀ·dO, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ − Δ), dK += dSᵀ·Q —
/// only the dV or only the dK part when `grads` says so.
fn dkdv_tile(d: u32, grads: KeyGrads) -> String {
    let mut out = zero("s", 32) + &product_transposed_tile(d, "s", "ka", 0);
    // Each lane's 16 query columns: j·8 + 2·(lane % 4) + e; rows e and e + 2 of a tile share one.
    // Its log-sum-exp and Δ come from the tile's row statistics in shared memory (see
    // [`load_query_stats`]; `%r33` addresses this lane's first column).
    let column = |out: &mut String, j: u32, e: u32, table: u32, into: &str| {
        emit!(out, "add.u32 %r23, %r9, {};", j * 8 + e);
        emit!(out, "add.u32 %r23, %r23, %r4;");
        emit!(out, "setp.ge.u32 %p2, %r23, %r7;");
        emit!(
            out,
            "ld.shared.f32 {into}, [%r33+{}];",
            table + 4 * (j * 8 + e)
        );
    };
    for j in 0..8 {
        for e in 0..2 {
            column(&mut out, j, e, 0, "%f5");
            emit!(out, "mul.f32 %f5, %f5, 0f3FB8AA3B;");
            for row in [e, e + 2] {
                let s = format!("%s{}", 4 * j + row);
                emit!(out, "mul.f32 {s}, {s}, %f0;");
                emit!(out, "sub.f32 {s}, {s}, %f5;");
                emit!(out, "@%p2 mov.f32 {s}, 0fFF800000;");
                emit!(out, "ex2.approx.f32 {s}, {s};");
            }
        }
    }
    if grads.values() {
        out += &pack_a("s", "pa");
        out += &product_tile(d, "accv", "pa", TILE * stride(d));
    }
    if !grads.keys() {
        return out;
    }
    out += &zero("dp", 32);
    out += &product_transposed_tile(d, "dp", "va", TILE * stride(d));
    for j in 0..8 {
        for e in 0..2 {
            column(&mut out, j, e, 4 * TILE, "%f6");
            for row in [e, e + 2] {
                let i = 4 * j + row;
                emit!(out, "sub.f32 %dp{i}, %dp{i}, %f6;");
                emit!(out, "mul.f32 %s{i}, %s{i}, %dp{i};");
            }
        }
    }
    out += &pack_a("s", "pa");
    out + &product_tile(d, "acck", "pa", 0)
}

/// The backward module: the key-tile kernel(s) and the dQ kernel per head dimension in
/// [`BACKWARD_HEAD_DIMS`].
pub fn backward_module(template: &str) -> String {
    let (header, entries) = template
        .split_once(".visible .entry")
        .expect("the backward template has entries");
    let (key_entry, query_entry) = entries
        .split_once(".visible .entry")
        .expect("the backward template has a key-tile and a query-tile entry");
    let mut module = header.to_string();
    for d in BACKWARD_HEAD_DIMS {
        let t1 = TILE * stride(d);
        let load_kv = load_tile(d, "%rd1", 0) + &load_tile(d, "%rd2", t1);
        let load_qdo = load_tile(d, "%rd0", 0) + &load_tile(d, "%rd13", t1);
        let shared = |text: &str| {
            text.replace("{{DECLARATIONS}}\n", &backward_declarations())
                .replace("{{A_REGS}}", &(padded(d) / 4).to_string())
                .replace("{{ACC_REGS}}", &(padded(d) / 2).to_string())
                .replace("{{LOAD_KV}}\n", &load_kv)
                .replace("{{LOAD_QDO}}\n", &load_qdo)
        };
        for (name, grads) in key_kernels(d) {
            let mut fragments = a_fragments(d, "ka", 0);
            let (mut zeros, mut finish) = (String::new(), String::new());
            if grads.keys() {
                fragments += &a_fragments(d, "va", t1);
                zeros += &zero("acck", padded(d) / 2);
                finish += &store_rows(d, "acck", "%rd3", Some(["%f15", "%f15"]));
            }
            if grads.values() {
                zeros += &zero("accv", padded(d) / 2);
                finish += &store_rows(d, "accv", "%rd7", None);
            }
            let text = shared(&format!(".visible .entry{key_entry}"))
                .replace("{{DKDV_NAME}}", &name)
                .replace("{{SETUP}}\n", &backward_setup(d, &["dk", "dv"]))
                .replace("{{KV_FRAGMENTS}}\n", &fragments)
                .replace("{{ZERO_DKDV}}\n", &zeros)
                .replace(
                    "{{Q_LOOP}}\n",
                    &streamed_loop(
                        d,
                        "Q_LOOP",
                        "DKDV_FINISH",
                        &(load_qdo.clone() + &load_query_stats(d)),
                        &(query_stats_pointer(d) + &dkdv_tile(d, grads)),
                    ),
                )
                .replace("{{DKDV_FINISH}}\n", &finish);
            module.push_str(&text);
        }
        let (_, dq) = backward_entries(d);
        let text = shared(&format!(".visible .entry{query_entry}"))
            .replace("{{DQ_NAME}}", &dq)
            .replace("{{SETUP}}\n", &backward_setup(d, &["dq"]))
            .replace(
                "{{QDO_FRAGMENTS}}\n",
                &(a_fragments(d, "qa", 0) + &a_fragments(d, "da", t1)),
            )
            .replace("{{ZERO_DQ}}\n", &zero("acc", padded(d) / 2))
            .replace("{{ROW_STATS}}\n", &row_stats())
            .replace(
                "{{KV_LOOP}}\n",
                &streamed_loop(d, "KV_LOOP", "DQ_FINISH", &load_kv, &dq_tile(d)),
            )
            .replace(
                "{{DQ_FINISH}}\n",
                &store_rows(d, "acc", "%rd3", Some(["%f15", "%f15"])),
            );
        module.push_str(&text);
        module.push('\n');
    }
    module
}

/// The module: one entry per head dimension in [`HEAD_DIMS`].
pub fn module(template: &str) -> String {
    let (header, body) = template
        .split_once(".visible .entry")
        .expect("the attention template has an entry");
    let mut module = header.to_string();
    for d in HEAD_DIMS {
        let entry = format!(".visible .entry{body}")
            .replace("{{NAME}}", &entry(d))
            .replace("{{D}}", &d.to_string())
            .replace("{{ACC_REGS}}", &(padded(d) / 2).to_string())
            .replace("{{Q_REGS}}", &(padded(d) / 4).to_string())
            .replace("{{SHARED_BYTES}}", &(2 * TILE * stride(d)).to_string())
            .replace("{{LOAD_Q}}\n", &load_tile(d, "%rd0", 0))
            .replace("{{Q_FRAGMENTS}}\n", &a_fragments(d, "qa", 0))
            .replace("{{ZERO_ACC}}\n", &zero("acc", padded(d) / 2))
            .replace("{{LOAD_K}}\n", &load_tile(d, "%rd1", 0))
            .replace("{{LOAD_V}}\n", &load_tile(d, "%rd2", TILE * stride(d)))
            .replace(
                "{{SCORES}}\n",
                &(zero("s", 32) + &product_transposed_tile(d, "s", "qa", 0)),
            )
            .replace("{{SOFTMAX}}\n", &softmax(d))
            .replace("{{PV}}\n", &product_tile(d, "acc", "pa", TILE * stride(d)))
            .replace("{{FINISH}}\n", &finish(d));
        module.push_str(&entry);
        module.push('\n');
    }
    module
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded_for_every_head_dim() {
        let text = module(include_str!("../../kernels/attention.ptx"));
        let body = text.split_once(".visible").unwrap().1;
        assert!(!body.contains("{{"), "an unexpanded placeholder remains");
        for d in HEAD_DIMS {
            assert!(text.contains(&format!(".visible .entry {}(", entry(d))));
        }
        // Per head dim: S = 4 pairs × Dp/16 steps × 2, O = 4 × Dp/16 × 2 mma (Dp: padded D).
        let expected: u32 = HEAD_DIMS.iter().map(|&d| padded(d)).sum();
        assert_eq!(text.matches("mma.sync.aligned").count() as u32, expected);
    }
}
