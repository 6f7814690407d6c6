//! Expands the `kernels/gemm_bf16.ptx` template into one entry per operand layout and tile
//! shape.
//!
//! The template holds the kernel's structure (block coordinates, the cp.async pipeline, the
//! loop); what depends on the layouts and the tile — the tile loads, the ldmatrix addresses and
//! the fully unrolled fragment/mma and store sequences, whose register names must be spelled
//! out — is written here, one small function per section.

use super::codegen::{emit, mma, regs};

/// Bytes of the 128×32 bf16 tile of A at the start of each shared-memory stage (B follows).
const A_TILE_BYTES: u32 = 8192;
/// Rows of C per CTA (the M tile), for every tile shape.
pub const TILE_M: u32 = 128;

/// The CTA tile of C: 8 warps in a 2×4 grid, each a 64-row warp tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmTile {
    /// 128×128, warp tiles 64×32 (64 accumulators per thread; two CTAs fit an SM).
    #[default]
    Square,
    /// 128×256, warp tiles 64×64 (128 accumulators per thread; one CTA per SM): each
    /// ldmatrix of B and each barrier feed twice the mma, the CUTLASS choice for large GEMMs.
    Wide,
}

impl GemmTile {
    pub const ALL: [GemmTile; 2] = [GemmTile::Square, GemmTile::Wide];

    /// Columns of C per CTA.
    pub const fn n(self) -> u32 {
        match self {
            GemmTile::Square => 128,
            GemmTile::Wide => 256,
        }
    }
    /// Columns of each warp tile (4 warps across the CTA tile).
    const fn warp_n(self) -> u32 {
        self.n() / 4
    }
    /// n8 blocks of each warp tile: mma per m16 row block and k step.
    const fn n8_blocks(self) -> u32 {
        self.warp_n() / 8
    }
    /// Bytes of one pipeline stage: A's 128×32 tile, then B's 32×n tile.
    pub const fn stage_bytes(self) -> u32 {
        A_TILE_BYTES + 32 * self.n() * 2
    }
    fn suffix(self) -> &'static str {
        match self {
            GemmTile::Square => "",
            GemmTile::Wide => "_wide",
        }
    }
}

/// How one operand lies in memory, and the registers the template keeps its facts in.
struct Operand {
    /// Contiguous along K (A row-major [M,K], or B stored as [N,K]) rather than along M/N.
    k_contiguous: bool,
    /// Register holding the base address of this batch entry.
    base: &'static str,
    /// Register holding the first row (A) or column (B) of the CTA tile.
    tile_start: &'static str,
    /// Register holding M (for A) or N (for B).
    extent: &'static str,
    /// Register holding the leading dimension.
    leading: &'static str,
    /// Register that will hold each lane's ldmatrix offset.
    lane_offset: &'static str,
    /// Byte offset of this operand's tile inside a stage.
    stage_offset: u32,
    /// Rows along M (A) or N (B) of the CTA tile.
    tile_rows: u32,
    /// Rows along M or N of each warp tile.
    warp_rows: u32,
    is_a: bool,
}

impl Operand {
    /// Bytes of one row of the shared tile: 32 k (64 bytes) when contiguous along K, else the
    /// whole tile width along M/N.
    fn row_bytes(&self) -> u32 {
        if self.k_contiguous {
            64
        } else {
            2 * self.tile_rows
        }
    }
}

/// How the CTAs of an entry split the work beyond one matrix product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Grid z walks a batch of equally shaped products.
    Batched,
    /// The rows of A and C fall into groups of any size and group g multiplies B[g]: the
    /// forward and dX products of mixture-of-experts layers.
    Rows,
    /// The shared dimension K falls into groups: C[g] = A_g · B_g over group g's rows only (A
    /// stored transposed): the weight gradients of mixture-of-experts layers.
    Depth,
}

/// The operand layouts of one entry: `n` is the natural layout (A [M,K], B [K,N] row-major),
/// `t` the transposed one (A stored [K,M], B stored [N,K]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmLayout {
    pub a_transposed: bool,
    pub b_transposed: bool,
    pub grouping: Grouping,
}

impl GemmLayout {
    pub const ALL: [GemmLayout; 7] = [
        GemmLayout::new(false, false),
        GemmLayout::new(false, true),
        GemmLayout::new(true, false),
        GemmLayout::new(true, true),
        GemmLayout::grouped(false),
        GemmLayout::grouped(true),
        GemmLayout::DEPTH_GROUPED,
    ];

    /// The weight-gradient product of expert layers: A = dYᵀ (dY stored `[rows, M]`), B = X
    /// stored `[rows, N]`, C `[groups, M, N]`.
    pub const DEPTH_GROUPED: GemmLayout = GemmLayout {
        a_transposed: true,
        b_transposed: false,
        grouping: Grouping::Depth,
    };

    /// A batched GEMM with these operand layouts.
    pub const fn new(a_transposed: bool, b_transposed: bool) -> Self {
        Self {
            a_transposed,
            b_transposed,
            grouping: Grouping::Batched,
        }
    }

    /// A row-grouped GEMM: A row-major `[rows, K]`, B `[groups, K, N]` (or `[groups, N, K]`
    /// when `b_transposed`).
    pub const fn grouped(b_transposed: bool) -> Self {
        Self {
            a_transposed: false,
            b_transposed,
            grouping: Grouping::Rows,
        }
    }

    /// `gemm_bf16_nn`, …, `grouped_bf16_nt`, `grouped_depth_bf16_tn` (BLAS naming: the letter
    /// of A, then of B), with `_wide` for the 128×256 tile.
    pub fn entry(self, tile: GemmTile) -> String {
        let letter = |t: bool| if t { 't' } else { 'n' };
        let kind = match self.grouping {
            Grouping::Batched => "gemm",
            Grouping::Rows => "grouped",
            Grouping::Depth => "grouped_depth",
        };
        format!(
            "{kind}_bf16_{}{}{}",
            letter(self.a_transposed),
            letter(self.b_transposed),
            tile.suffix()
        )
    }

    fn operands(self, tile: GemmTile) -> [Operand; 2] {
        [
            Operand {
                k_contiguous: !self.a_transposed,
                base: "%rd0",
                tile_start: "%r6",
                extent: "%r8",
                leading: "%r11",
                lane_offset: "%r20",
                stage_offset: 0,
                tile_rows: TILE_M,
                warp_rows: 64,
                is_a: true,
            },
            Operand {
                k_contiguous: self.b_transposed,
                base: "%rd1",
                tile_start: "%r7",
                extent: "%r9",
                leading: "%r12",
                lane_offset: "%r21",
                stage_offset: A_TILE_BYTES,
                tile_rows: tile.n(),
                warp_rows: tile.warp_n(),
                is_a: false,
            },
        ]
    }
}

/// The parameters the grouped entries take after the batched ones.
fn extra_params(layout: GemmLayout) -> &'static str {
    if layout.grouping != Grouping::Batched {
        ",\n    .param .u64 schedule,\n    .param .u64 group_offsets"
    } else {
        ""
    }
}

/// This CTA's first row m0 (%r6), row count M (%r8) and base addresses of A, B, C (%rd0-2).
/// Batched: grid y is the row tile, grid z the batch entry. Row-grouped: grid y indexes the
/// schedule of (group, row tile) pairs; group g holds rows offsets[g]..offsets[g+1] of A and C
/// and multiplies B[g]. Depth-grouped: the schedule holds (group, row tile of C[g]) pairs and K
/// (%r10) is the size of group g, whose rows of A and B are offsets[g]..offsets[g+1].
fn block_origin(layout: GemmLayout) -> String {
    let mut out = String::new();
    match layout.grouping {
        Grouping::Batched => {
            emit!(out, "mov.u32 %r5, %ctaid.y;");
            emit!(
                out,
                "shl.b32 %r6, %r5, 7;                   // m0 = 128 * block row"
            );
            emit!(out, "ld.param.u32 %r8, [m];");
            emit!(out, "mov.u32 %r5, %ctaid.z;                 // batch entry");
            for (base, param, stride, shift) in [
                ("%rd0", "a", "batch_stride_a", 1),
                ("%rd1", "b", "batch_stride_b", 1),
                ("%rd2", "c", "batch_stride_c", 2),
            ] {
                offset_by_index(&mut out, base, param, stride, shift);
            }
        }
        Grouping::Rows => {
            group_of_tile(&mut out, "%r8"); // M = rows of the group
            offset_by_rows(&mut out, "%rd0", "a", "%r11", 1);
            offset_by_rows(&mut out, "%rd2", "c", "%r13", 2);
            offset_by_index(&mut out, "%rd1", "b", "batch_stride_b", 1);
        }
        Grouping::Depth => {
            emit!(out, "ld.param.u32 %r8, [m];");
            group_of_tile(&mut out, "%r10"); // K = rows of the group
            offset_by_rows(&mut out, "%rd0", "a", "%r11", 1);
            offset_by_rows(&mut out, "%rd1", "b", "%r12", 1);
            offset_by_index(&mut out, "%rd2", "c", "batch_stride_c", 2);
        }
    }
    out
}

/// Reads this CTA's (group, row tile) from the schedule: the group into %r5, m0 into %r6,
/// the group's first row into %r27 and its row count into `size`. A CTA past the last tile of
/// a device-built schedule (group 0xFFFFFFFF) exits.
fn group_of_tile(out: &mut String, size: &str) {
    emit!(out, "ld.param.u64 %rd14, [schedule];");
    emit!(out, "mov.u32 %r5, %ctaid.y;");
    emit!(out, "mul.wide.u32 %rd15, %r5, 8;");
    emit!(out, "add.u64 %rd14, %rd14, %rd15;");
    emit!(
        out,
        "ld.global.v2.u32 {{%r5, %r6}}, [%rd14];  // group, row tile"
    );
    emit!(out, "setp.eq.u32 %p0, %r5, 0xFFFFFFFF;");
    emit!(
        out,
        "@%p0 ret;                              // past the last tile of a device schedule"
    );
    emit!(out, "shl.b32 %r6, %r6, 7;                   // m0");
    emit!(out, "ld.param.u64 %rd14, [group_offsets];");
    emit!(out, "mul.wide.u32 %rd15, %r5, 4;");
    emit!(out, "add.u64 %rd14, %rd14, %rd15;");
    emit!(
        out,
        "ld.global.u32 %r27, [%rd14];           // first row of the group"
    );
    emit!(out, "ld.global.u32 {size}, [%rd14+4];");
    emit!(out, "sub.u32 {size}, {size}, %r27;");
}

/// `base` = parameter `param` advanced by %r27 rows of `leading` elements of 2^`shift` bytes.
fn offset_by_rows(out: &mut String, base: &str, param: &str, leading: &str, shift: u32) {
    emit!(out, "ld.param.u64 {base}, [{param}];");
    emit!(out, "mul.wide.u32 %rd14, %r27, {leading};");
    emit!(out, "shl.b64 %rd14, %rd14, {shift};");
    emit!(out, "add.u64 {base}, {base}, %rd14;");
}

/// `base` = parameter `param` advanced by %r5 (batch entry or group) times the element stride
/// parameter `stride`, elements of 2^`shift` bytes.
fn offset_by_index(out: &mut String, base: &str, param: &str, stride: &str, shift: u32) {
    emit!(out, "cvt.u64.u32 %rd15, %r5;");
    emit!(out, "ld.param.u64 {base}, [{param}];");
    emit!(out, "ld.param.u64 %rd14, [{stride}];");
    emit!(out, "mul.lo.u64 %rd14, %rd14, %rd15;");
    emit!(out, "shl.b64 %rd14, %rd14, {shift};");
    emit!(out, "add.u64 {base}, {base}, %rd14;");
}

fn zero_accumulators(tile: GemmTile) -> String {
    let mut out = String::new();
    for i in 0..accumulators(tile) {
        emit!(out, "mov.f32 %acc{i}, 0f00000000;");
    }
    out
}

/// Accumulators per thread: 4 m16 blocks × the n8 blocks of the warp tile × 4.
fn accumulators(tile: GemmTile) -> u32 {
    4 * tile.n8_blocks() * 4
}

/// Each lane's ldmatrix row address inside a stage, swizzled. Lanes 8q..8q+7 address the rows
/// of 8×8 matrix q; for A the matrices are (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7,
/// k 8-15), (rows 8-15, k 8-15) — the order of mma's A registers — and for B (n 0-7, k 0-7),
/// (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15): two n8 fragments.
fn lane_offsets(operands: &[Operand; 2]) -> String {
    let mut out = String::new();
    emit!(out, "and.b32 %r27, %r2, 7;");
    emit!(out, "shr.u32 %r28, %r2, 3;");
    emit!(out, "and.b32 %r28, %r28, 1;");
    emit!(out, "shr.u32 %r29, %r2, 4;");
    for op in operands {
        // Which lane bit selects the second 8 rows along M/N, and which the second 8 along K.
        let (select_mn, select_k) = if op.is_a {
            ("%r28", "%r29")
        } else {
            ("%r29", "%r28")
        };
        let warp = if op.is_a { "%r3" } else { "%r4" };
        emit!(
            out,
            "shl.b32 %r30, {warp}, {};",
            op.warp_rows.trailing_zeros()
        ); // first row of the warp tile along M/N
        if op.k_contiguous {
            // Tile [rows][32 k], 64-byte rows; chunk ^= (row >> 1) & 3.
            emit!(out, "shl.b32 %r31, {select_mn}, 3;");
            emit!(out, "add.u32 %r31, %r31, %r27;");
            emit!(out, "add.u32 %r31, %r31, %r30;");
            emit!(out, "shr.u32 %r32, %r31, 1;");
            emit!(out, "and.b32 %r32, %r32, 3;");
            emit!(out, "xor.b32 %r32, %r32, {select_k};");
            emit!(out, "shl.b32 %r32, %r32, 4;");
            emit!(out, "shl.b32 %r31, %r31, 6;");
        } else {
            // Tile [32 k][rows], rows of 2·rows bytes; chunk ^= row & 7.
            emit!(out, "shl.b32 %r31, {select_k}, 3;");
            emit!(out, "add.u32 %r31, %r31, %r27;");
            emit!(out, "shr.u32 %r32, %r30, 3;");
            emit!(out, "add.u32 %r32, %r32, {select_mn};");
            emit!(out, "and.b32 %r33, %r31, 7;");
            emit!(out, "xor.b32 %r32, %r32, %r33;");
            emit!(out, "shl.b32 %r32, %r32, 4;");
            emit!(
                out,
                "shl.b32 %r31, %r31, {};",
                op.row_bytes().trailing_zeros()
            );
        }
        emit!(out, "add.u32 {}, %r31, %r32;", op.lane_offset);
        if op.stage_offset > 0 {
            emit!(
                out,
                "add.u32 {0}, {0}, {1};",
                op.lane_offset,
                op.stage_offset
            );
        }
    }
    out
}

/// cp.async of K slice `%r16` into stage `%r17`: each operand tile is `4 · rows` chunks of 16
/// bytes, `rows / 64` per thread; chunks past the matrix edge are zero-filled (src-size 0).
fn load_slice(operands: &[Operand; 2], tile: GemmTile) -> String {
    let mut out = String::new();
    emit!(out, "mul.lo.u32 %r36, %r17, {};", tile.stage_bytes());
    emit!(out, "add.u32 %r36, %r36, %r14;");
    for op in operands {
        for j in 0..op.tile_rows / 64 {
            emit!(out, "add.u32 %r27, %r0, {};", 256 * j);
            if op.k_contiguous {
                emit!(out, "shr.u32 %r28, %r27, 2;"); // row along M/N
                emit!(out, "and.b32 %r29, %r27, 3;"); // chunk along K
                emit!(out, "add.u32 %r30, {}, %r28;", op.tile_start);
                emit!(out, "shl.b32 %r31, %r16, 5;");
                emit!(out, "shl.b32 %r32, %r29, 3;");
                emit!(out, "add.u32 %r31, %r31, %r32;");
                emit!(out, "mul.wide.u32 %rd3, %r30, {};", op.leading);
                emit!(out, "cvt.u64.u32 %rd4, %r31;");
                emit!(out, "shr.u32 %r33, %r28, 1;");
                emit!(out, "and.b32 %r33, %r33, 3;");
                emit!(out, "xor.b32 %r33, %r29, %r33;");
                emit!(out, "shl.b32 %r33, %r33, 4;");
                emit!(out, "shl.b32 %r34, %r28, 6;");
            } else {
                let chunks_per_row = op.tile_rows / 8;
                emit!(
                    out,
                    "shr.u32 %r28, %r27, {};",
                    chunks_per_row.trailing_zeros()
                ); // row along K
                emit!(out, "and.b32 %r29, %r27, {};", chunks_per_row - 1); // chunk along M/N
                emit!(out, "shl.b32 %r31, %r16, 5;");
                emit!(out, "add.u32 %r31, %r31, %r28;");
                emit!(out, "shl.b32 %r32, %r29, 3;");
                emit!(out, "add.u32 %r30, {}, %r32;", op.tile_start);
                emit!(out, "mul.wide.u32 %rd3, %r31, {};", op.leading);
                emit!(out, "cvt.u64.u32 %rd4, %r30;");
                emit!(out, "and.b32 %r33, %r28, 7;");
                emit!(out, "xor.b32 %r33, %r29, %r33;");
                emit!(out, "shl.b32 %r33, %r33, 4;");
                emit!(
                    out,
                    "shl.b32 %r34, %r28, {};",
                    op.row_bytes().trailing_zeros()
                );
            }
            // %r30: index along M/N, %r31: index along K; in range?
            emit!(out, "setp.lt.u32 %p1, %r30, {};", op.extent);
            emit!(out, "setp.lt.u32 %p2, %r31, %r10;");
            emit!(out, "and.pred %p1, %p1, %p2;");
            emit!(out, "add.u64 %rd3, %rd3, %rd4;");
            emit!(out, "shl.b64 %rd3, %rd3, 1;");
            emit!(out, "add.u64 %rd3, %rd3, {};", op.base);
            emit!(out, "@!%p1 mov.u64 %rd3, {};", op.base);
            emit!(out, "selp.u32 %r35, 16, 0, %p1;");
            emit!(out, "add.u32 %r33, %r33, %r34;");
            emit!(out, "add.u32 %r33, %r33, %r36;");
            if op.stage_offset > 0 {
                emit!(out, "add.u32 %r33, %r33, {};", op.stage_offset);
            }
            emit!(out, "cp.async.cg.shared.global [%r33], [%rd3], 16, %r35;");
        }
    }
    out
}

/// One ldmatrix.x4 of fragment `index` (A: m16 block i, B: n16 pair p) at k step `step`. The
/// swizzle makes some offsets XOR into the lane offset rather than add to it.
fn load_fragment(out: &mut String, op: &Operand, index: u32, step: u32, first_reg: u32) {
    let (xor, add) = if op.k_contiguous {
        // Next 16 k: chunk + 2 (XOR 32 bytes); next 16 rows: + 16 rows.
        (step * 32, index * 16 * op.row_bytes())
    } else {
        // Next 16 k: + 16 rows; next 16 along M/N: chunk + 2 (XOR 32 bytes).
        (index * 32, step * 16 * op.row_bytes())
    };
    emit!(out, "xor.b32 %r27, {}, {xor};", op.lane_offset);
    emit!(out, "add.u32 %r27, %r27, %r22;");
    if add > 0 {
        emit!(out, "add.u32 %r27, %r27, {add};");
    }
    let transpose = if op.k_contiguous { "" } else { ".trans" };
    let regs = if op.is_a { "%fa" } else { "%fb" };
    emit!(
        out,
        "ldmatrix.sync.aligned.m8n8.x4{transpose}.shared.b16 {{{regs}{}, {regs}{}, {regs}{}, {regs}{}}}, [%r27];",
        first_reg,
        first_reg + 1,
        first_reg + 2,
        first_reg + 3
    );
}

/// The two 16-wide k steps of a 32-wide slice: 4 A and n8/2 B ldmatrix, then 4·n8 mma each.
fn multiply_slice(operands: &[Operand; 2], tile: GemmTile) -> String {
    let mut out = String::new();
    let n8 = tile.n8_blocks();
    for step in 0..2 {
        for i in 0..4 {
            load_fragment(&mut out, &operands[0], i, step, 4 * i);
        }
        for p in 0..n8 / 2 {
            load_fragment(&mut out, &operands[1], p, step, 4 * p);
        }
        for i in 0..4 {
            for j in 0..n8 {
                let acc = 4 * (n8 * i + j);
                let a = 4 * i;
                let b = 2 * j;
                mma(
                    &mut out,
                    regs("acc", acc),
                    regs("fa", a),
                    [&format!("%fb{b}"), &format!("%fb{}", b + 1)],
                );
            }
        }
    }
    out
}

/// C = alpha · acc + beta · C for each of the lane's accumulators, inside the matrix only.
/// Accumulator 4(n8·i + j) + 2h + e sits at row 16i + 8h + g, column 8j + 2t + e of the warp
/// tile: the two of each (i, h, j) are neighbours, stored with one 8-byte `st.v2` when both
/// are inside and C's rows are 8-byte aligned (even ldc, `%p7`), else one by one.
fn store_accumulators(tile: GemmTile) -> String {
    let mut out = String::new();
    let n8 = tile.n8_blocks();
    for i in 0..4 {
        for h in 0..2 {
            emit!(out, "add.u32 %r27, %r25, {};", 16 * i + 8 * h);
            emit!(out, "setp.lt.u32 %p1, %r27, %r8;");
            emit!(out, "mul.wide.u32 %rd3, %r27, %r13;");
            for j in 0..n8 {
                let acc = 4 * (n8 * i + j) + 2 * h;
                emit!(out, "add.u32 %r28, %r26, {};", 8 * j);
                emit!(out, "add.u32 %r29, %r28, 1;");
                emit!(out, "setp.lt.u32 %p2, %r28, %r9;");
                emit!(out, "setp.lt.u32 %p5, %r29, %r9;");
                emit!(out, "and.pred %p2, %p2, %p1;          // first inside");
                emit!(out, "and.pred %p5, %p5, %p1;          // second inside");
                emit!(out, "and.pred %p4, %p5, %p7;          // both, as one v2");
                emit!(out, "not.pred %p0, %p4;");
                emit!(out, "and.pred %p3, %p2, %p0;          // first alone");
                emit!(out, "and.pred %p5, %p5, %p0;          // second alone");
                emit!(out, "cvt.u64.u32 %rd4, %r28;");
                emit!(out, "add.u64 %rd5, %rd3, %rd4;");
                emit!(out, "shl.b64 %rd5, %rd5, 2;");
                emit!(out, "add.u64 %rd5, %rd5, %rd2;");
                emit!(out, "mul.f32 %f0, %acc{acc}, %f2;");
                emit!(out, "mul.f32 %f1, %acc{}, %f2;", acc + 1);
                emit!(out, "and.pred %p2, %p4, %p6;");
                emit!(out, "@%p2 ld.global.v2.f32 {{%f4, %f5}}, [%rd5];");
                emit!(out, "@%p2 fma.rn.f32 %f0, %f4, %f3, %f0;");
                emit!(out, "@%p2 fma.rn.f32 %f1, %f5, %f3, %f1;");
                emit!(out, "@%p4 st.global.v2.f32 [%rd5], {{%f0, %f1}};");
                emit!(out, "and.pred %p0, %p3, %p6;");
                emit!(out, "@%p0 ld.global.f32 %f4, [%rd5];");
                emit!(out, "@%p0 fma.rn.f32 %f0, %f4, %f3, %f0;");
                emit!(out, "@%p3 st.global.f32 [%rd5], %f0;");
                emit!(out, "and.pred %p2, %p5, %p6;");
                emit!(out, "@%p2 ld.global.f32 %f5, [%rd5+4];");
                emit!(out, "@%p2 fma.rn.f32 %f1, %f5, %f3, %f1;");
                emit!(out, "@%p5 st.global.f32 [%rd5+4], %f1;");
            }
        }
    }
    out
}

/// The module text: the template expanded once per layout and tile, all entries in one module.
pub fn module(template: &str) -> String {
    let (header, body) = template
        .split_once(".visible .entry")
        .expect("the GEMM template has an entry");
    let mut module = header.to_string();
    for tile in GemmTile::ALL {
        for layout in GemmLayout::ALL {
            let operands = layout.operands(tile);
            let entry = format!(".visible .entry{body}")
                .replace("{{NAME}}", &layout.entry(tile))
                .replace("{{EXTRA_PARAMS}}", extra_params(layout))
                .replace("{{ACCUMULATORS}}", &accumulators(tile).to_string())
                .replace(
                    "{{B_FRAGMENT_REGISTERS}}",
                    &(2 * tile.n8_blocks()).to_string(),
                )
                .replace("{{TILE_N_SHIFT}}", &tile.n().trailing_zeros().to_string())
                .replace("{{STAGE_BYTES}}", &tile.stage_bytes().to_string())
                .replace(
                    "{{WARP_N_SHIFT}}",
                    &tile.warp_n().trailing_zeros().to_string(),
                )
                .replace("{{BLOCK_ORIGIN}}\n", &block_origin(layout))
                .replace("{{ZERO_ACCUMULATORS}}\n", &zero_accumulators(tile))
                .replace("{{LANE_OFFSETS}}\n", &lane_offsets(&operands))
                .replace("{{LOAD_SLICE}}\n", &load_slice(&operands, tile))
                .replace("{{MULTIPLY_SLICE}}\n", &multiply_slice(&operands, tile))
                .replace("{{STORE_ACCUMULATORS}}\n", &store_accumulators(tile));
            module.push_str(&entry);
            module.push('\n');
        }
    }
    module
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_expanded_into_an_entry_per_layout_and_tile() {
        let text = module(include_str!("../../kernels/gemm_bf16.ptx"));
        assert!(!text.contains("{{"), "an unexpanded placeholder remains");
        for tile in GemmTile::ALL {
            for layout in GemmLayout::ALL {
                assert!(text.contains(&format!(".visible .entry {}(", layout.entry(tile))));
            }
        }
        // Per k step: 4·4 mma (square), 4·8 (wide); two k steps per slice.
        assert_eq!(text.matches("mma.sync.aligned").count(), 7 * 2 * (16 + 32));
        // .trans loads: A in the three tX entries (4 per k step), B in the four xN ones (2 square,
        // 4 wide).
        assert_eq!(
            text.matches("ldmatrix.sync.aligned.m8n8.x4.trans").count(),
            2 * (3 * 2 * 4) + 4 * 2 * (2 + 4)
        );
        assert!(text.contains(".reg .f32 %acc<128>;"));
    }
}
