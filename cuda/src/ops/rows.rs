//! Wrappers for `kernels/rows.ptx`: reductions and softmax over the last dimension of a
//! row-major `[rows, cols]` matrix, one warp per row.

use super::{check_len, check_u32};
use crate::error::Result;
use crate::gpu::{Buffer, Gpu, LaunchConfig};

/// Rows per 256-thread block (one warp each).
pub(crate) const ROWS_PER_BLOCK: usize = 8;

/// The launch of a warp-per-row kernel over `rows` rows.
pub(crate) fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig::per_row(rows.div_ceil(ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK as u32)
}

/// What a row reduction computes; the discriminants are the kernel's op codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowReduce {
    Sum = 0,
    Max = 1,
    Mean = 2,
    /// Σ x², a gradient's squared norm in one pass.
    SumOfSquares = 3,
}

/// `out[r] = op(x[r, :])`, a buffer of `rows` values.
pub fn reduce_rows(
    gpu: &Gpu,
    op: RowReduce,
    x: &Buffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<Buffer<f32>> {
    check_len("reduce_rows input", x, rows * cols)?;
    let out = gpu.zeros::<f32>(rows)?;
    gpu.launch(
        "rows",
        "reduce_rows_f32",
        warp_per_row(rows),
        &[
            (&out).into(),
            x.into(),
            check_u32("rows", rows)?.into(),
            check_u32("cols", cols)?.into(),
            (op as u32).into(),
        ],
    )?;
    Ok(out)
}

/// Softmax of every row.
pub fn softmax_rows(gpu: &Gpu, x: &Buffer<f32>, rows: usize, cols: usize) -> Result<Buffer<f32>> {
    check_len("softmax input", x, rows * cols)?;
    let out = gpu.zeros::<f32>(rows * cols)?;
    gpu.launch(
        "rows",
        "softmax_rows_f32",
        warp_per_row(rows),
        &[
            (&out).into(),
            x.into(),
            check_u32("rows", rows)?.into(),
            check_u32("cols", cols)?.into(),
        ],
    )?;
    Ok(out)
}

/// The gradient of [`softmax_rows`] from its output `y` and the output gradient `dy`.
pub fn softmax_backward_rows(
    gpu: &Gpu,
    y: &Buffer<f32>,
    dy: &Buffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<Buffer<f32>> {
    check_len("softmax output", y, rows * cols)?;
    check_len("softmax output gradient", dy, rows * cols)?;
    let dx = gpu.zeros::<f32>(rows * cols)?;
    gpu.launch(
        "rows",
        "softmax_backward_rows_f32",
        warp_per_row(rows),
        &[
            (&dx).into(),
            y.into(),
            dy.into(),
            check_u32("rows", rows)?.into(),
            check_u32("cols", cols)?.into(),
        ],
    )?;
    Ok(dx)
}
