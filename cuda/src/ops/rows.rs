//! Wrappers for `kernels/rows.ptx`: reductions and softmax over the last dimension of a
//! row-major `[rows, cols]` matrix, one warp per row; and reductions over its first dimension,
//! one thread per column.

use super::{check_len, check_u32};
use crate::error::Result;
use crate::op::ReduceOp;
use crate::{Buffer, Gpu, LaunchConfig};

/// Rows per 256-thread block (one warp each).
pub(crate) const ROWS_PER_BLOCK: usize = 8;

/// The launch of a warp-per-row kernel over `rows` rows.
pub(crate) fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig::per_row(rows.div_ceil(ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK as u32)
}

/// `out[r] = op(x[r, :])`, a buffer of `rows` values.
pub fn reduce_rows(
    gpu: &Gpu,
    op: ReduceOp,
    x: &Buffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<Buffer<f32>> {
    check_len("reduce_rows input", x, rows * cols)?;
    let code = op.ptx_code().ok_or_else(|| {
        crate::error::CudaError::InvalidArgument(format!(
            "reduce_rows: no kernel for {}",
            op.name()
        ))
    })?;
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
            code.into(),
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

/// Rows each thread of the first column-reduction pass adds up.
const COLUMN_CHUNK_ROWS: usize = 64;

/// `out[c] = op(x[:, c])` for a row-major `[rows, cols]` matrix (sum, max or mean over the first
/// dimension), read in place: chunks of rows first, then the chunks' results.
pub fn reduce_columns(
    gpu: &Gpu,
    op: ReduceOp,
    x: &Buffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<Buffer<f32>> {
    check_len("reduce_columns input", x, rows * cols)?;
    if !matches!(op, ReduceOp::Sum | ReduceOp::Max | ReduceOp::Mean) {
        return Err(crate::error::CudaError::InvalidArgument(format!(
            "reduce_columns: expected sum, max or mean, found {}",
            op.name()
        )));
    }
    let max = u32::from(op == ReduceOp::Max);
    let mean_scale = if op == ReduceOp::Mean && rows > 0 {
        1.0 / rows as f32
    } else {
        1.0
    };
    let pass = |input: &Buffer<f32>, rows: usize, chunk_rows: usize, scale: f32| {
        let chunks = rows.div_ceil(chunk_rows).max(1);
        let out = gpu.zeros::<f32>(chunks * cols)?;
        gpu.launch(
            "rows",
            "reduce_columns_f32",
            LaunchConfig {
                grid: (
                    check_u32("column blocks", cols.div_ceil(256).max(1))?,
                    check_u32("row chunks", chunks)?,
                    1,
                ),
                block: (256, 1, 1),
                shared_bytes: 0,
            },
            &[
                (&out).into(),
                input.into(),
                check_u32("rows", rows)?.into(),
                check_u32("cols", cols)?.into(),
                check_u32("chunk rows", chunk_rows)?.into(),
                max.into(),
                scale.into(),
            ],
        )?;
        Ok::<_, crate::error::CudaError>((out, chunks))
    };
    if rows <= COLUMN_CHUNK_ROWS {
        return Ok(pass(x, rows, COLUMN_CHUNK_ROWS, mean_scale)?.0);
    }
    let (partial, chunks) = pass(x, rows, COLUMN_CHUNK_ROWS, 1.0)?;
    Ok(pass(&partial, chunks, chunks, mean_scale)?.0)
}
