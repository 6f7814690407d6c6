//! Wrappers for `kernels/index.ptx`: row selection and its scatter-add (embeddings), gather
//! and scatter-add along the last dimension, and top-k per row.

use super::rows::warp_per_row;
use super::{check_len, check_u32, ELEMENTWISE_BLOCK};
use crate::error::{CudaError, Result};
use crate::{Buffer, Gpu, LaunchConfig};

/// `out[i, :] = table[idx[i], :]` for a `[rows, cols]` table; an out-of-range index gives NaN.
pub fn index_select_rows(
    gpu: &Gpu,
    table: &Buffer<f32>,
    idx: &Buffer<u32>,
    rows: usize,
    cols: usize,
) -> Result<Buffer<f32>> {
    check_len("index_select table", table, rows * cols)?;
    let count = idx.len();
    let out = gpu.zeros::<f32>(count * cols)?;
    gpu.launch(
        "index",
        "index_select_rows_f32",
        LaunchConfig::linear(count * cols, ELEMENTWISE_BLOCK),
        &[
            (&out).into(),
            table.into(),
            idx.into(),
            check_u32("indices", count)?.into(),
            check_u32("rows", rows)?.into(),
            check_u32("cols", cols)?.into(),
        ],
    )?;
    Ok(out)
}

/// `table[idx[i], :] += src[i, :]` in place; out-of-range indices are skipped.
pub fn index_add_rows(
    gpu: &Gpu,
    table: &Buffer<f32>,
    idx: &Buffer<u32>,
    src: &Buffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    check_len("index_add table", table, rows * cols)?;
    let count = idx.len();
    check_len("index_add source", src, count * cols)?;
    gpu.launch(
        "index",
        "index_add_rows_f32",
        LaunchConfig::linear(count * cols, ELEMENTWISE_BLOCK),
        &[
            table.into(),
            idx.into(),
            src.into(),
            check_u32("indices", count)?.into(),
            check_u32("rows", rows)?.into(),
            check_u32("cols", cols)?.into(),
        ],
    )
}

/// `out[r, j] = x[r, idx[r, j]]` for `x: [rows, cols]`, `idx: [rows, k]`.
pub fn gather_cols(
    gpu: &Gpu,
    x: &Buffer<f32>,
    idx: &Buffer<u32>,
    rows: usize,
    cols: usize,
) -> Result<Buffer<f32>> {
    check_len("gather input", x, rows * cols)?;
    let k = idx.len() / rows.max(1);
    check_len("gather indices", idx, rows * k)?;
    let out = gpu.zeros::<f32>(rows * k)?;
    gpu.launch(
        "index",
        "gather_cols_f32",
        LaunchConfig::linear(rows * k, ELEMENTWISE_BLOCK),
        &[
            (&out).into(),
            x.into(),
            idx.into(),
            check_u32("rows", rows)?.into(),
            check_u32("cols", cols)?.into(),
            check_u32("k", k)?.into(),
        ],
    )?;
    Ok(out)
}

/// `out[r, idx[r, j]] += src[r, j]` in place, for `out: [rows, cols]`.
pub fn scatter_add_cols(
    gpu: &Gpu,
    out: &Buffer<f32>,
    idx: &Buffer<u32>,
    src: &Buffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    check_len("scatter_add output", out, rows * cols)?;
    let k = idx.len() / rows.max(1);
    check_len("scatter_add indices", idx, rows * k)?;
    check_len("scatter_add source", src, rows * k)?;
    gpu.launch(
        "index",
        "scatter_add_cols_f32",
        LaunchConfig::linear(rows * k, ELEMENTWISE_BLOCK),
        &[
            out.into(),
            idx.into(),
            src.into(),
            check_u32("rows", rows)?.into(),
            check_u32("cols", cols)?.into(),
            check_u32("k", k)?.into(),
        ],
    )
}

/// The `k` largest values of each row of `[rows, cols]` and their column indices, in
/// descending order (ties to the lower index).
pub fn topk_rows(
    gpu: &Gpu,
    x: &Buffer<f32>,
    rows: usize,
    cols: usize,
    k: usize,
) -> Result<(Buffer<f32>, Buffer<u32>)> {
    check_len("topk input", x, rows * cols)?;
    if k == 0 || k > cols {
        return Err(CudaError::InvalidArgument(format!(
            "topk: k = {k} must be between 1 and the row length {cols}"
        )));
    }
    let values = gpu.zeros::<f32>(rows * k)?;
    let indices = gpu.zeros::<u32>(rows * k)?;
    gpu.launch(
        "index",
        "topk_rows_f32",
        warp_per_row(rows),
        &[
            (&values).into(),
            (&indices).into(),
            x.into(),
            check_u32("rows", rows)?.into(),
            check_u32("cols", cols)?.into(),
            check_u32("k", k)?.into(),
        ],
    )?;
    Ok((values, indices))
}
