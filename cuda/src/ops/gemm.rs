//! Wrappers for the GEMM kernels: `kernels/gemm_bf16.ptx` (tensor cores) and
//! `kernels/gemm_f32.ptx` (SIMT fallback).
//!
//! Both compute `C = alpha · op(A) · op(B) + beta · C` over a batch of contiguous matrices:
//! A is `[batch, M, K]` row-major, or `[batch, K, M]` when `a_transposed`; B is `[batch, K, N]`,
//! or `[batch, N, K]` when `b_transposed` (the `x · Wᵀ` of a linear layer); C is `[batch, M, N]`.

use super::check_len;
use super::check_u32;
use crate::error::{CudaError, Result};
pub use crate::kernels::gemm::GemmTile;
use crate::kernels::gemm::{GemmLayout, TILE_M};
use crate::precision;
use crate::{Buffer, Gpu, LaunchConfig};
use std::sync::Arc;

/// The shape and scalars of a batched GEMM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_transposed: bool,
    pub b_transposed: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// `C = A · B` for one `[m, k] × [k, n]` product.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self {
            batch: 1,
            m,
            n,
            k,
            a_transposed: false,
            b_transposed: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// Leading dimensions (row lengths as stored) of A and B.
    fn leading(&self) -> (usize, usize) {
        let lda = if self.a_transposed { self.m } else { self.k };
        let ldb = if self.b_transposed { self.k } else { self.n };
        (lda, ldb)
    }

    fn check_buffers<T>(&self, a: &Buffer<T>, b: &Buffer<T>, c: &Buffer<f32>) -> Result<()> {
        check_len("gemm A", a, self.batch * self.m * self.k)?;
        check_len("gemm B", b, self.batch * self.k * self.n)?;
        check_len("gemm C", c, self.batch * self.m * self.n)
    }

    /// Whether the tensor-core kernel can take this shape: each operand's contiguous extent
    /// must be a multiple of 8 elements (its 16-byte cp.async chunks).
    pub fn fits_tensor_cores(&self) -> bool {
        let (lda, ldb) = self.leading();
        lda % 8 == 0 && ldb % 8 == 0
    }
}

/// Threads per block of the tensor-core kernels, and their M tile.
const BF16_THREADS: u32 = 256;
const BF16_TILE: usize = TILE_M as usize;
/// Pipeline stages of the tensor-core kernels.
const BF16_STAGES: u32 = 3;

/// The entry of `layout` for this thread's GEMM tile ([`precision`]) and its launch shape: `n`
/// columns over grid x, `row_tiles` × `batch` over y × z, and the pipeline's shared memory.
fn tensor_core_launch(
    layout: GemmLayout,
    n: usize,
    row_tiles: usize,
    batch: usize,
) -> Result<(String, LaunchConfig)> {
    let tile = precision::current().gemm_tile;
    let config = LaunchConfig {
        grid: (
            check_u32("column tiles", n.div_ceil(tile.n() as usize))?,
            check_u32("row tiles", row_tiles)?,
            check_u32("batch", batch)?,
        ),
        block: (BF16_THREADS, 1, 1),
        shared_bytes: BF16_STAGES * tile.stage_bytes(),
    };
    Ok((layout.entry(tile), config))
}
const F32_TILE: usize = 64;

/// `C = alpha · op(A) · op(B) + beta · C` on tensor cores (bf16 in, f32 accumulate and out).
pub fn gemm_bf16(
    gpu: &Gpu,
    spec: &Gemm,
    a: &Buffer<half::bf16>,
    b: &Buffer<half::bf16>,
    c: &Buffer<f32>,
) -> Result<()> {
    spec.check_buffers(a, b, c)?;
    if !spec.fits_tensor_cores() {
        return Err(CudaError::InvalidArgument(format!(
            "gemm_bf16 needs the contiguous extent of each operand to be a multiple of 8 \
             (M={}, N={}, K={}, A {}, B {}); use gemm_f32 for this shape",
            spec.m,
            spec.n,
            spec.k,
            if spec.a_transposed { "[K,M]" } else { "[M,K]" },
            if spec.b_transposed { "[N,K]" } else { "[K,N]" },
        )));
    }
    if spec.batch == 0 || spec.m == 0 || spec.n == 0 {
        return Ok(());
    }
    let (lda, ldb) = spec.leading();
    let layout = GemmLayout::new(spec.a_transposed, spec.b_transposed);
    let (entry, config) =
        tensor_core_launch(layout, spec.n, spec.m.div_ceil(BF16_TILE), spec.batch)?;
    gpu.launch(
        "gemm_bf16",
        &entry,
        config,
        &[
            c.into(),
            a.into(),
            b.into(),
            check_u32("M", spec.m)?.into(),
            check_u32("N", spec.n)?.into(),
            check_u32("K", spec.k)?.into(),
            check_u32("lda", lda)?.into(),
            check_u32("ldb", ldb)?.into(),
            check_u32("ldc", spec.n)?.into(),
            ((spec.m * spec.k) as u64).into(),
            ((spec.k * spec.n) as u64).into(),
            ((spec.m * spec.n) as u64).into(),
            spec.alpha.into(),
            spec.beta.into(),
        ],
    )
}

/// `C = alpha · op(A) · op(B) + beta · C` in f32 on the SIMT cores, any shape.
pub fn gemm_f32(
    gpu: &Gpu,
    spec: &Gemm,
    a: &Buffer<f32>,
    b: &Buffer<f32>,
    c: &Buffer<f32>,
) -> Result<()> {
    spec.check_buffers(a, b, c)?;
    if spec.batch == 0 || spec.m == 0 || spec.n == 0 {
        return Ok(());
    }
    let (lda, ldb) = spec.leading();
    let (a_stride_m, a_stride_k) = if spec.a_transposed {
        (1, lda)
    } else {
        (lda, 1)
    };
    let (b_stride_k, b_stride_n) = if spec.b_transposed {
        (1, ldb)
    } else {
        (ldb, 1)
    };
    let config = LaunchConfig {
        grid: (
            spec.n.div_ceil(F32_TILE) as u32,
            spec.m.div_ceil(F32_TILE) as u32,
            check_u32("batch", spec.batch)?,
        ),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    gpu.launch(
        "gemm_f32",
        "gemm_f32",
        config,
        &[
            c.into(),
            a.into(),
            b.into(),
            check_u32("M", spec.m)?.into(),
            check_u32("N", spec.n)?.into(),
            check_u32("K", spec.k)?.into(),
            check_u32("A stride", a_stride_m)?.into(),
            check_u32("A stride", a_stride_k)?.into(),
            check_u32("B stride", b_stride_k)?.into(),
            check_u32("B stride", b_stride_n)?.into(),
            check_u32("ldc", spec.n)?.into(),
            ((spec.m * spec.k) as u64).into(),
            ((spec.k * spec.n) as u64).into(),
            ((spec.m * spec.n) as u64).into(),
            spec.alpha.into(),
            spec.beta.into(),
        ],
    )
}

/// The row groups of a grouped GEMM: sizes known on the host, or only as a count per group on
/// the device (the MoE dispatch order's histogram), with the total number of rows.
#[derive(Debug, Clone, Copy)]
pub enum Groups<'a> {
    Host(&'a [usize]),
    Device {
        counts: &'a Buffer<u32>,
        rows: usize,
    },
}

impl Groups<'_> {
    pub fn len(&self) -> usize {
        match self {
            Groups::Host(sizes) => sizes.len(),
            Groups::Device { counts, .. } => counts.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// All rows, over every group.
    pub fn rows(&self) -> usize {
        match self {
            Groups::Host(sizes) => sizes.iter().sum(),
            Groups::Device { rows, .. } => *rows,
        }
    }
}

/// A grouped launch's tables: one (group, tile) pair per CTA of grid y, and the groups' row
/// offsets (prefix sums).
struct GroupTables {
    schedule: Arc<Buffer<u32>>,
    offsets: Arc<Buffer<u32>>,
    tiles: usize,
}

/// The tables of `groups`, with `tiles_per_group` tiles for each non-empty group, or
/// ceil(size / 128) row tiles when it is 0. Host sizes: built here and uploaded once per
/// distinct table. Device counts: built there by `grouped_gemm_schedule_u32` for the most
/// tiles any sizes could need; the CTAs past the last tile exit at once.
fn group_tables(gpu: &Gpu, groups: Groups, tiles_per_group: usize) -> Result<GroupTables> {
    match groups {
        Groups::Host(sizes) => {
            let mut offsets = vec![0u32; sizes.len() + 1];
            let mut schedule = Vec::new();
            for (g, &size) in sizes.iter().enumerate() {
                offsets[g + 1] = offsets[g] + check_u32("rows", size)?;
                let tiles = match (tiles_per_group, size) {
                    (_, 0) => 0,
                    (0, _) => size.div_ceil(BF16_TILE),
                    (fixed, _) => fixed,
                };
                for tile in 0..tiles {
                    schedule.extend([g as u32, tile as u32]);
                }
            }
            // The same routing gives the same tables (every step of expert choice).
            Ok(GroupTables {
                tiles: schedule.len() / 2,
                schedule: gpu.constant_table(&schedule)?,
                offsets: gpu.constant_table(&offsets)?,
            })
        }
        Groups::Device { counts, rows } => {
            let groups = counts.len();
            let capacity = if tiles_per_group == 0 {
                rows.div_ceil(BF16_TILE) + groups
            } else {
                groups * tiles_per_group
            };
            let schedule = gpu.zeros::<u32>(2 * capacity.max(1))?;
            let offsets = gpu.zeros::<u32>(groups + 1)?;
            gpu.launch(
                "routing",
                "grouped_gemm_schedule_u32",
                LaunchConfig {
                    shared_bytes: check_u32("schedule shared bytes", 4 * (groups + 1))?,
                    ..LaunchConfig::single_block(256)
                },
                &[
                    (&schedule).into(),
                    (&offsets).into(),
                    counts.into(),
                    check_u32("groups", groups)?.into(),
                    check_u32("tiles", capacity)?.into(),
                    check_u32("tiles per group", tiles_per_group)?.into(),
                ],
            )?;
            Ok(GroupTables {
                schedule: Arc::new(schedule),
                offsets: Arc::new(offsets),
                tiles: capacity,
            })
        }
    }
}

/// A grouped GEMM for mixture-of-experts layers: the rows of `x: [rows, K]` (tokens sorted by
/// expert) fall into consecutive `groups`, and group g is multiplied by `weights[g]`:
/// `[groups, N, K]` when `weights_transposed` (a linear layer's `x · Wᵀ`), else
/// `[groups, K, N]`. Writes `out: [rows, N]` (f32). One launch for every group, whatever the
/// sizes: the grid walks a (group, 128-row tile) schedule, so empty or small groups cost
/// nothing extra (dropless token choice).
pub fn grouped_gemm_bf16(
    gpu: &Gpu,
    x: &Buffer<half::bf16>,
    groups: Groups,
    weights: &Buffer<half::bf16>,
    weights_transposed: bool,
    n: usize,
    out: &Buffer<f32>,
) -> Result<()> {
    let rows = groups.rows();
    let k = x.len() / rows.max(1);
    check_len("grouped gemm input", x, rows * k)?;
    check_len("grouped gemm weights", weights, groups.len() * k * n)?;
    check_len("grouped gemm output", out, rows * n)?;
    let ldb = if weights_transposed { k } else { n };
    if k % 8 != 0 || ldb % 8 != 0 {
        return Err(CudaError::InvalidArgument(format!(
            "grouped_gemm_bf16 needs K ({k}) and the weights' row length ({ldb}) to be \
             multiples of 8"
        )));
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let tables = group_tables(gpu, groups, 0)?;
    let layout = GemmLayout::grouped(weights_transposed);
    let (entry, config) = tensor_core_launch(layout, n, tables.tiles, 1)?;
    gpu.launch(
        "gemm_bf16",
        &entry,
        config,
        &[
            out.into(),
            x.into(),
            weights.into(),
            check_u32("rows", rows)?.into(),
            check_u32("N", n)?.into(),
            check_u32("K", k)?.into(),
            check_u32("lda", k)?.into(),
            check_u32("ldb", ldb)?.into(),
            check_u32("ldc", n)?.into(),
            0u64.into(),
            ((k * n) as u64).into(),
            0u64.into(),
            1.0f32.into(),
            0.0f32.into(),
            tables.schedule.as_ref().into(),
            tables.offsets.as_ref().into(),
        ],
    )
}

/// The weight gradients of a grouped GEMM: `out[g] = dy_gᵀ · x_g` for the consecutive row
/// `groups` of `dy: [rows, M]` and `x: [rows, N]`, into `out: [groups, M, N]` (f32, zeroed by
/// the caller: empty groups get no CTA). One launch: the grid walks a (group, 128-row tile of
/// out[g]) schedule and each CTA's K loop covers only its group's rows.
pub fn grouped_weight_grad_bf16(
    gpu: &Gpu,
    dy: &Buffer<half::bf16>,
    x: &Buffer<half::bf16>,
    groups: Groups,
    out: &Buffer<f32>,
) -> Result<()> {
    let rows = groups.rows();
    let (m, n) = (dy.len() / rows.max(1), x.len() / rows.max(1));
    check_len("grouped weight gradient dy", dy, rows * m)?;
    check_len("grouped weight gradient x", x, rows * n)?;
    check_len("grouped weight gradient output", out, groups.len() * m * n)?;
    if m % 8 != 0 || n % 8 != 0 {
        return Err(CudaError::InvalidArgument(format!(
            "grouped_weight_grad_bf16 needs both row lengths ({m}, {n}) to be multiples of 8"
        )));
    }
    if rows == 0 || m == 0 || n == 0 {
        return Ok(());
    }
    let tables = group_tables(gpu, groups, m.div_ceil(BF16_TILE))?;
    let (entry, config) = tensor_core_launch(GemmLayout::DEPTH_GROUPED, n, tables.tiles, 1)?;
    gpu.launch(
        "gemm_bf16",
        &entry,
        config,
        &[
            out.into(),
            dy.into(),
            x.into(),
            check_u32("M", m)?.into(),
            check_u32("N", n)?.into(),
            0u32.into(),
            check_u32("lda", m)?.into(),
            check_u32("ldb", n)?.into(),
            check_u32("ldc", n)?.into(),
            0u64.into(),
            0u64.into(),
            ((m * n) as u64).into(),
            1.0f32.into(),
            0.0f32.into(),
            tables.schedule.as_ref().into(),
            tables.offsets.as_ref().into(),
        ],
    )
}
