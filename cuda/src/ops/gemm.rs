//! Wrappers for the GEMM kernels: `kernels/gemm_bf16.ptx` (tensor cores) and
//! `kernels/gemm_f32.ptx` (SIMT fallback).
//!
//! Both compute `C = alpha · op(A) · op(B) + beta · C` over a batch of contiguous matrices:
//! A is `[batch, M, K]` row-major, or `[batch, K, M]` when `a_transposed`; B is `[batch, K, N]`,
//! or `[batch, N, K]` when `b_transposed` (the `x · Wᵀ` of a linear layer); C is `[batch, M, N]`.

use super::check_len;
use super::check_u32;
use crate::error::{CudaError, Result};
use crate::gpu::{Buffer, Gpu, LaunchConfig};
use crate::kernels::gemm::GemmLayout;

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

/// Threads per block and tile of the tensor-core kernel.
const BF16_TILE: usize = 128;
const BF16_THREADS: u32 = 256;
/// Three pipeline stages of a 128×32 A tile and a 32×128 B tile, in bf16.
const BF16_SHARED_BYTES: u32 = 3 * 2 * 128 * 32 * 2;
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
    let config = LaunchConfig {
        grid: (
            spec.n.div_ceil(BF16_TILE) as u32,
            spec.m.div_ceil(BF16_TILE) as u32,
            check_u32("batch", spec.batch)?,
        ),
        block: (BF16_THREADS, 1, 1),
        shared_bytes: BF16_SHARED_BYTES,
    };
    gpu.launch(
        "gemm_bf16",
        &layout.entry(),
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

/// A grouped GEMM for mixture-of-experts layers: the rows of `x: [rows, K]` (tokens sorted by
/// expert) fall into consecutive groups of `group_sizes`, and group g is multiplied by
/// `weights[g]`: `[groups, N, K]` when `weights_transposed` (a linear layer's `x · Wᵀ`), else
/// `[groups, K, N]`. Writes `out: [rows, N]` (f32). One launch for every group, whatever the
/// sizes: the grid walks a (group, 128-row tile) schedule built here from the sizes, so empty
/// or small groups cost nothing extra (dropless token choice).
pub fn grouped_gemm_bf16(
    gpu: &Gpu,
    x: &Buffer<half::bf16>,
    group_sizes: &[usize],
    weights: &Buffer<half::bf16>,
    weights_transposed: bool,
    n: usize,
    out: &Buffer<f32>,
) -> Result<()> {
    let rows: usize = group_sizes.iter().sum();
    let groups = group_sizes.len();
    let k = x.len() / rows.max(1);
    check_len("grouped gemm input", x, rows * k)?;
    check_len("grouped gemm weights", weights, groups * k * n)?;
    check_len("grouped gemm output", out, rows * n)?;
    let ldb = if weights_transposed { k } else { n };
    if k % 8 != 0 || ldb % 8 != 0 {
        return Err(CudaError::InvalidArgument(format!(
            "grouped_gemm_bf16 needs K ({k}) and the weights' row length ({ldb}) to be \
             multiples of 8"
        )));
    }
    let (schedule, offsets) = group_schedule(group_sizes, |size| size.div_ceil(BF16_TILE))?;
    if schedule.is_empty() || n == 0 {
        return Ok(());
    }
    // The same routing gives the same tables (every step of expert choice): upload once.
    let schedule_buffer = gpu.constant_table(&schedule)?;
    let offsets_buffer = gpu.constant_table(&offsets)?;
    let layout = GemmLayout::grouped(weights_transposed);
    let config = LaunchConfig {
        grid: (
            n.div_ceil(BF16_TILE) as u32,
            check_u32("row tiles", schedule.len() / 2)?,
            1,
        ),
        block: (BF16_THREADS, 1, 1),
        shared_bytes: BF16_SHARED_BYTES,
    };
    gpu.launch(
        "gemm_bf16",
        &layout.entry(),
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
            schedule_buffer.as_ref().into(),
            offsets_buffer.as_ref().into(),
        ],
    )
}

/// The (group, 128-row tile) schedule and the prefix-summed row offsets of `group_sizes`,
/// for `tiles_of(size)` row tiles per group (groups with no tile are left out).
fn group_schedule(
    group_sizes: &[usize],
    tiles_of: impl Fn(usize) -> usize,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut offsets = vec![0u32; group_sizes.len() + 1];
    let mut schedule = Vec::new();
    for (g, &size) in group_sizes.iter().enumerate() {
        offsets[g + 1] = offsets[g] + check_u32("rows", size)?;
        for tile in 0..tiles_of(size) {
            schedule.extend([g as u32, tile as u32]);
        }
    }
    Ok((schedule, offsets))
}

/// The weight gradients of a grouped GEMM: `out[g] = dy_gᵀ · x_g` for the consecutive row groups
/// of `dy: [rows, M]` and `x: [rows, N]`, into `out: [groups, M, N]` (f32, zeroed by the
/// caller: empty groups get no CTA). One launch: the grid walks a (group, 128-row tile of
/// out[g]) schedule and each CTA's K loop covers only its group's rows.
pub fn grouped_weight_grad_bf16(
    gpu: &Gpu,
    dy: &Buffer<half::bf16>,
    x: &Buffer<half::bf16>,
    group_sizes: &[usize],
    out: &Buffer<f32>,
) -> Result<()> {
    let rows: usize = group_sizes.iter().sum();
    let groups = group_sizes.len();
    let (m, n) = (dy.len() / rows.max(1), x.len() / rows.max(1));
    check_len("grouped weight gradient dy", dy, rows * m)?;
    check_len("grouped weight gradient x", x, rows * n)?;
    check_len("grouped weight gradient output", out, groups * m * n)?;
    if m % 8 != 0 || n % 8 != 0 {
        return Err(CudaError::InvalidArgument(format!(
            "grouped_weight_grad_bf16 needs both row lengths ({m}, {n}) to be multiples of 8"
        )));
    }
    let tiles = m.div_ceil(BF16_TILE);
    let (schedule, offsets) =
        group_schedule(group_sizes, |size| if size == 0 { 0 } else { tiles })?;
    if schedule.is_empty() || n == 0 {
        return Ok(());
    }
    // The same routing gives the same tables (every step of expert choice): upload once.
    let schedule_buffer = gpu.constant_table(&schedule)?;
    let offsets_buffer = gpu.constant_table(&offsets)?;
    let config = LaunchConfig {
        grid: (
            n.div_ceil(BF16_TILE) as u32,
            check_u32("tiles", schedule.len() / 2)?,
            1,
        ),
        block: (BF16_THREADS, 1, 1),
        shared_bytes: BF16_SHARED_BYTES,
    };
    gpu.launch(
        "gemm_bf16",
        &GemmLayout::DEPTH_GROUPED.entry(),
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
            schedule_buffer.as_ref().into(),
            offsets_buffer.as_ref().into(),
        ],
    )
}
