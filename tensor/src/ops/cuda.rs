//! The CUDA path of the tensor ops: each function takes tensors on a GPU, launches the kernels
//! of `ditmoe_cuda` through their typed wrappers, and returns a tensor on the same GPU.
//!
//! Device tensors hold `f32` values (or `i64` indices, kept as `u32`). An op reads its operands
//! in place when their layout allows (broadcast and strided views for the elementwise ops,
//! transposed matrices for matmul) and makes a dense copy otherwise. Ops without a CUDA path
//! yet fail with `TensorError::NoCudaKernel`, naming the op.

use std::sync::Arc;

use ditmoe_cuda::ops::attention as gpu_attention;
use ditmoe_cuda::ops::elementwise::{self as ew, Binary, Broadcast, Unary};
use ditmoe_cuda::ops::gemm::{self, Gemm};
use ditmoe_cuda::ops::index as gpu_index;
use ditmoe_cuda::ops::norm as gpu_norm;
use ditmoe_cuda::ops::optim::{self as gpu_optim, AdamWStep};
use ditmoe_cuda::ops::routing as gpu_routing;
use ditmoe_cuda::ops::rows::{self as gpu_rows, RowReduce};
use ditmoe_cuda::ops::swiglu as gpu_swiglu;
use ditmoe_cuda::{precision, registry, Buffer, CudaError, Gpu};

use crate::error::{Result, TensorError};
use crate::layout::broadcast_shapes;
use crate::ops::binary::BinaryOp;
use crate::ops::grouped::GroupSizes;
use crate::ops::norm::{LayerNormGrads, LayerNormStats};
use crate::ops::optim::{AdamWHyper, AdamWUpdate};
use crate::ops::reduce::{rows_over, ReduceOp};
use crate::ops::unary::UnaryOp;
use crate::storage::{CudaData, CudaStorage};
use crate::{DType, Device, Tensor};

/// Wraps a kernel error with the op it came from.
fn failed(op: &'static str) -> impl Fn(CudaError) -> TensorError {
    move |e| TensorError::Cuda {
        op,
        message: e.to_string(),
    }
}

fn ordinal(t: &Tensor) -> usize {
    match t.device() {
        Device::Cuda(ordinal) => ordinal,
        Device::Cpu => unreachable!("the CUDA path is only entered for device tensors"),
    }
}

/// A new device tensor of `shape` holding `buffer`.
fn f32_tensor(gpu: &Arc<Gpu>, buffer: Buffer<f32>, shape: &[usize], ordinal: usize) -> Tensor {
    let storage = CudaStorage {
        gpu: Arc::clone(gpu),
        data: CudaData::F32(Arc::new(buffer)),
    };
    Tensor::from_cuda(storage, shape, ordinal)
}

fn u32_tensor(gpu: &Arc<Gpu>, buffer: Buffer<u32>, shape: &[usize], ordinal: usize) -> Tensor {
    let storage = CudaStorage {
        gpu: Arc::clone(gpu),
        data: CudaData::I64(Arc::new(buffer)),
    };
    Tensor::from_cuda(storage, shape, ordinal)
}

fn opened(ordinal: usize) -> Result<Arc<Gpu>> {
    registry::device(ordinal).map_err(|e| TensorError::DeviceUnavailable {
        device: Device::Cuda(ordinal),
        reason: e.to_string(),
    })
}

/// The dtypes a device tensor can hold.
const DEVICE_DTYPES: &str = "f32 or i64 on a GPU (convert with to_dtype first)";

/// Zeros of `shape` made on `cuda:ordinal` (a device memset).
pub(crate) fn zeros(shape: &[usize], dtype: DType, ordinal: usize) -> Result<Tensor> {
    let gpu = opened(ordinal)?;
    let (n, op) = (shape.iter().product(), "zeros");
    match dtype {
        DType::F32 => {
            let buffer = gpu.zeros::<f32>(n).map_err(failed(op))?;
            Ok(f32_tensor(&gpu, buffer, shape, ordinal))
        }
        DType::I64 => {
            let buffer = gpu.zeros::<u32>(n).map_err(failed(op))?;
            Ok(u32_tensor(&gpu, buffer, shape, ordinal))
        }
        found => Err(TensorError::UnsupportedDType {
            op,
            found,
            supported: DEVICE_DTYPES,
        }),
    }
}

/// Copies a CPU tensor to `cuda:ordinal`.
pub(crate) fn upload(t: &Tensor, ordinal: usize) -> Result<Tensor> {
    let gpu = opened(ordinal)?;
    let op = "to_device";
    match t.dtype() {
        DType::F32 => {
            let buffer = gpu.upload(&t.values::<f32>()?).map_err(failed(op))?;
            Ok(f32_tensor(&gpu, buffer, t.shape(), ordinal))
        }
        DType::I64 => {
            let indices = t
                .values::<i64>()?
                .iter()
                .map(|&i| u32::try_from(i))
                .collect::<std::result::Result<Vec<u32>, _>>()
                .map_err(|_| {
                    TensorError::invalid(op, "GPU index tensors hold values in 0..2^32")
                })?;
            let buffer = gpu.upload(&indices).map_err(failed(op))?;
            Ok(u32_tensor(&gpu, buffer, t.shape(), ordinal))
        }
        found => Err(TensorError::UnsupportedDType {
            op,
            found,
            supported: DEVICE_DTYPES,
        }),
    }
}

/// Copies a device tensor (any layout) to the CPU as a contiguous tensor.
pub(crate) fn download(t: &Tensor) -> Result<Tensor> {
    let storage = t.cuda_storage().expect("a device tensor");
    let op = "to_device";
    let whole = match &storage.data {
        CudaData::F32(b) => {
            let values = storage.gpu.download(b).map_err(failed(op))?;
            Tensor::from_vec(values, &[b.len()])?
        }
        CudaData::I64(b) => {
            let values = storage.gpu.download(b).map_err(failed(op))?;
            Tensor::from_vec(values.into_iter().map(i64::from).collect(), &[b.len()])?
        }
    };
    Ok(whole.with_layout(t.layout().clone()).contiguous())
}

/// A contiguous copy of a strided device tensor.
pub(crate) fn contiguous(t: &Tensor) -> Result<Tensor> {
    let storage = t.cuda_storage().expect("a device tensor");
    let layout = t.layout();
    let (shape, strides, offset) = (layout.shape(), layout.strides(), layout.offset());
    let op = "contiguous";
    Ok(match &storage.data {
        CudaData::F32(b) => {
            let copy =
                ew::copy_strided(&storage.gpu, b, shape, strides, offset).map_err(failed(op))?;
            f32_tensor(&storage.gpu, copy, shape, ordinal(t))
        }
        CudaData::I64(b) => {
            let copy =
                ew::copy_strided(&storage.gpu, b, shape, strides, offset).map_err(failed(op))?;
            u32_tensor(&storage.gpu, copy, shape, ordinal(t))
        }
    })
}

/// The GPU and the dense (contiguous, from element 0, nothing else in the buffer) `f32`
/// buffer of `t`: the storage itself, a view of it when `t` is a contiguous slice (a narrow
/// along the first dim, an expert's gradient in the grouped one), else a copy.
fn dense_f32(t: &Tensor, op: &'static str) -> Result<(Arc<Gpu>, Arc<Buffer<f32>>)> {
    let storage = t.cuda_storage().ok_or(TensorError::DeviceMismatch {
        op,
        expected: Device::Cuda(0),
        found: t.device(),
    })?;
    let CudaData::F32(buffer) = &storage.data else {
        return Err(TensorError::DType {
            op,
            expected: DType::F32,
            found: DType::I64,
        });
    };
    let layout = t.layout();
    if layout.is_contiguous() {
        if layout.offset() == 0 && buffer.len() == t.numel() {
            return Ok((Arc::clone(&storage.gpu), Arc::clone(buffer)));
        }
        let view = Buffer::view(buffer, layout.offset(), t.numel()).map_err(failed(op))?;
        return Ok((Arc::clone(&storage.gpu), Arc::new(view)));
    }
    dense_f32(&contiguous(t)?, op)
}

/// The dense `u32` buffer of a device index tensor.
fn dense_indices(t: &Tensor, op: &'static str) -> Result<Arc<Buffer<u32>>> {
    let t = if t.is_contiguous() && t.layout().offset() == 0 {
        t.clone()
    } else {
        contiguous(t)?
    };
    match t.cuda_storage().map(|s| &s.data) {
        Some(CudaData::I64(b)) if b.len() == t.numel() => Ok(Arc::clone(b)),
        _ => Err(TensorError::DType {
            op,
            expected: DType::I64,
            found: t.dtype(),
        }),
    }
}

fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(TensorError::DeviceMismatch {
            op,
            expected: a.device(),
            found: b.device(),
        });
    }
    Ok(())
}

fn gpu_unary(op: UnaryOp) -> Unary {
    match op {
        UnaryOp::Neg => Unary::Neg,
        UnaryOp::Exp => Unary::Exp,
        UnaryOp::Log => Unary::Log,
        UnaryOp::Sqrt => Unary::Sqrt,
        UnaryOp::Rsqrt => Unary::Rsqrt,
        UnaryOp::Tanh => Unary::Tanh,
        UnaryOp::Sigmoid => Unary::Sigmoid,
        UnaryOp::Relu => Unary::Relu,
        UnaryOp::Silu => Unary::Silu,
        UnaryOp::GeluTanh => Unary::GeluTanh,
        UnaryOp::Sin => Unary::Sin,
        UnaryOp::Cos => Unary::Cos,
        UnaryOp::Abs => Unary::Abs,
        UnaryOp::Powf(p) => Unary::Powf(p as f32),
        UnaryOp::AddScalar(s) => Unary::AddScalar(s as f32),
        UnaryOp::MulScalar(s) => Unary::MulScalar(s as f32),
    }
}

/// `f(x)`, or with `grad`, `grad · f'(x)`.
pub(crate) fn unary(x: &Tensor, op: UnaryOp, grad: Option<&Tensor>) -> Result<Tensor> {
    let name = "unary";
    let (gpu, xb) = dense_f32(x, name)?;
    let out = match grad {
        None => ew::unary(&gpu, gpu_unary(op), &xb),
        Some(g) => {
            same_device(name, x, g)?;
            g.check_shape(name, x.shape())?;
            let (_, gb) = dense_f32(g, name)?;
            ew::unary_backward(&gpu, gpu_unary(op), &xb, &gb)
        }
    }
    .map_err(failed(name))?;
    Ok(f32_tensor(&gpu, out, x.shape(), ordinal(x)))
}

/// A one-element CPU tensor (a scalar constant) copied to `device`, as PyTorch lets CPU
/// scalars meet CUDA tensors; any other tensor is returned as it is.
fn scalar_to(t: &Tensor, device: Device) -> Result<Tensor> {
    if !t.is_cuda() && t.numel() == 1 && device != Device::Cpu {
        t.to_device(device)
    } else {
        Ok(t.clone())
    }
}

/// The device all operands of an op share (CPU scalars aside).
fn common_device(tensors: &[&Tensor]) -> Device {
    tensors
        .iter()
        .map(|t| t.device())
        .find(|d| *d != Device::Cpu)
        .unwrap_or(Device::Cpu)
}

/// `a op b` with broadcasting; both operands are read in place, whatever their strides.
pub(crate) fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let name = "binary";
    let device = common_device(&[a, b]);
    let (a, b) = (&scalar_to(a, device)?, &scalar_to(b, device)?);
    same_device(name, a, b)?;
    let shape = broadcast_shapes(name, a.shape(), b.shape())?;
    let (la, lb) = (
        a.layout().broadcast_to(&shape)?,
        b.layout().broadcast_to(&shape)?,
    );
    let buffer = |t: &Tensor| match t.cuda_storage().map(|s| &s.data) {
        Some(CudaData::F32(buffer)) => Ok(Arc::clone(buffer)),
        _ => Err(TensorError::DType {
            op: name,
            expected: DType::F32,
            found: t.dtype(),
        }),
    };
    let (ab, bb) = (buffer(a)?, buffer(b)?);
    let gpu = &a.cuda_storage().expect("a device tensor").gpu;
    let layout = Broadcast {
        shape: shape.clone(),
        a_strides: la.strides().to_vec(),
        b_strides: lb.strides().to_vec(),
        a_offset: la.offset(),
        b_offset: lb.offset(),
    };
    let code = match op {
        BinaryOp::Add => Binary::Add,
        BinaryOp::Sub => Binary::Sub,
        BinaryOp::Mul => Binary::Mul,
        BinaryOp::Div => Binary::Div,
        BinaryOp::Maximum => Binary::Maximum,
        BinaryOp::Minimum => Binary::Minimum,
        BinaryOp::Gt => Binary::Gt,
        BinaryOp::Lt => Binary::Lt,
        BinaryOp::Eq => Binary::Eq,
    };
    let out = ew::binary(gpu, code, &ab, &bb, &layout).map_err(failed(name))?;
    Ok(f32_tensor(gpu, out, &shape, ordinal(a)))
}

/// An operand's layout broadcast to `shape`, as a kernel view.
fn broadcast_view<'a>(shape: &'a [usize], layout: &'a crate::layout::Layout) -> ew::View<'a> {
    ew::View {
        shape,
        strides: layout.strides(),
        offset: layout.offset(),
    }
}

/// `condition ? on_true : on_false` with broadcasting (condition non-zero; an `i64`
/// condition is not supported on the GPU).
pub(crate) fn where_cond(
    condition: &Tensor,
    on_true: &Tensor,
    on_false: &Tensor,
) -> Result<Tensor> {
    let op = "where_cond";
    let device = common_device(&[condition, on_true, on_false]);
    let (c, a, b) = (
        scalar_to(condition, device)?,
        scalar_to(on_true, device)?,
        scalar_to(on_false, device)?,
    );
    same_device(op, &a, &c)?;
    same_device(op, &a, &b)?;
    let shape = broadcast_shapes(op, c.shape(), a.shape())?;
    let shape = broadcast_shapes(op, &shape, b.shape())?;
    let operand = |t: &Tensor| -> Result<(Arc<Buffer<f32>>, crate::layout::Layout)> {
        match t.cuda_storage().map(|s| &s.data) {
            Some(CudaData::F32(buffer)) => {
                Ok((Arc::clone(buffer), t.layout().broadcast_to(&shape)?))
            }
            _ => Err(TensorError::DType {
                op,
                expected: DType::F32,
                found: t.dtype(),
            }),
        }
    };
    let ((cb, cl), (ab, al), (bb, bl)) = (operand(&c)?, operand(&a)?, operand(&b)?);
    let gpu = Arc::clone(&a.cuda_storage().expect("a device tensor").gpu);
    let out = ew::select(
        &gpu,
        (&cb, broadcast_view(&shape, &cl)),
        (&ab, broadcast_view(&shape, &al)),
        (&bb, broadcast_view(&shape, &bl)),
    )
    .map_err(failed(op))?;
    Ok(f32_tensor(&gpu, out, &shape, ordinal(&a)))
}

/// Whether `t` is the transpose (last two dims swapped) of a dense tensor: then a GEMM reads
/// it in place as a transposed operand.
fn is_dense_transpose(t: &Tensor) -> bool {
    let r = t.rank();
    let swapped = t.transpose(r - 2, r - 1).expect("rank >= 2");
    swapped.is_contiguous()
        && swapped.layout().offset() == 0
        && t.cuda_storage().is_some_and(|s| match &s.data {
            CudaData::F32(b) => b.len() == t.numel(),
            CudaData::I64(_) => false,
        })
}

/// A GEMM operand: its dense buffer and whether it is stored transposed.
fn gemm_operand(t: &Tensor) -> Result<(Arc<Buffer<f32>>, bool)> {
    if is_dense_transpose(t) && !t.is_contiguous() {
        let r = t.rank();
        let (_, buffer) = dense_f32(&t.transpose(r - 2, r - 1)?, "matmul")?;
        return Ok((buffer, true));
    }
    Ok((dense_f32(t, "matmul")?.1, false))
}

/// `[.., m, k] · [.., k, n]` with broadcast batch dimensions (shapes checked by the caller).
/// A rank-2 right operand multiplies every row of the left one in a single GEMM. On the bf16
/// tensor cores when this thread's `precision` allows it and the shape fits,
/// else on the f32 SIMT GEMM.
pub(crate) fn matmul(a: &Tensor, b: &Tensor, batch: &[usize]) -> Result<Tensor> {
    let name = "matmul";
    same_device(name, a, b)?;
    let (m, k) = (a.shape()[a.rank() - 2], a.shape()[a.rank() - 1]);
    let n = b.shape()[b.rank() - 1];
    let batch_count: usize = batch.iter().product();
    let gpu = Arc::clone(&a.cuda_storage().expect("a device tensor").gpu);
    let mut out_shape = batch.to_vec();
    out_shape.extend([m, n]);
    let (spec, ab, bb) = if b.rank() == 2 && a.rank() >= 2 && a.shape()[..a.rank() - 2] == *batch {
        // [batch.., m, k] · [k, n] is one [batch·m, k] · [k, n] product.
        let (bb, b_transposed) = gemm_operand(b)?;
        let (_, ab) = dense_f32(a, name)?;
        let spec = Gemm {
            b_transposed,
            ..Gemm::new(batch_count * m, n, k)
        };
        (spec, ab, bb)
    } else {
        let expand = |t: &Tensor, rows: usize, cols: usize| -> Result<Tensor> {
            let mut shape = batch.to_vec();
            shape.extend([rows, cols]);
            let t = t.broadcast_to(&shape)?;
            t.reshape(&[batch_count, rows, cols])
        };
        let (a3, b3) = (expand(a, m, k)?, expand(b, k, n)?);
        let (ab, a_transposed) = gemm_operand(&a3)?;
        let (bb, b_transposed) = gemm_operand(&b3)?;
        let spec = Gemm {
            batch: batch_count,
            a_transposed,
            b_transposed,
            ..Gemm::new(m, n, k)
        };
        (spec, ab, bb)
    };
    let out = gpu
        .zeros::<f32>(batch_count * m * n)
        .map_err(failed(name))?;
    if precision::current().tensor_core_matmul && spec.fits_tensor_cores() {
        // Mixed precision: bf16 operands on the tensor cores, f32 accumulation and result.
        let a16 = ew::to_bf16(&gpu, &ab).map_err(failed(name))?;
        let b16 = ew::to_bf16(&gpu, &bb).map_err(failed(name))?;
        gemm::gemm_bf16(&gpu, &spec, &a16, &b16, &out).map_err(failed(name))?;
    } else {
        gemm::gemm_f32(&gpu, &spec, &ab, &bb, &out).map_err(failed(name))?;
    }
    Ok(f32_tensor(&gpu, out, &out_shape, ordinal(a)))
}

/// `t` with dimension `dim` moved last (a view), and the permutation that undoes it.
fn dim_last(t: &Tensor, dim: usize) -> Result<(Tensor, Vec<usize>)> {
    let r = t.rank();
    let mut perm: Vec<usize> = (0..r).filter(|&d| d != dim).collect();
    perm.push(dim);
    let mut inverse = vec![0; r];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    Ok((t.permute(&perm)?, inverse))
}

/// Softmax along `dim`: the row kernel on `dim` moved last.
pub(crate) fn softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    x.layout().check_dim("softmax", dim)?;
    let (moved, inverse) = dim_last(x, dim)?;
    let cols = x.shape()[dim];
    let rows = x.numel() / cols.max(1);
    let (gpu, xb) = dense_f32(&moved, "softmax")?;
    let out = gpu_rows::softmax_rows(&gpu, &xb, rows, cols).map_err(failed("softmax"))?;
    f32_tensor(&gpu, out, moved.shape(), ordinal(x)).permute(&inverse)
}

/// Sum / mean / max over `dims` (all when empty): the reduced dimensions are moved last and
/// each remaining row reduced by the row kernel, as on the CPU.
pub(crate) fn reduce(x: &Tensor, op: ReduceOp, dims: &[usize], keepdim: bool) -> Result<Tensor> {
    let code = match op {
        ReduceOp::Sum => RowReduce::Sum,
        ReduceOp::Mean => RowReduce::Mean,
        ReduceOp::Max => RowReduce::Max,
        ReduceOp::Min | ReduceOp::Var { .. } => {
            return Err(TensorError::NoCudaKernel {
                op: "reduce (min, var)",
                device: x.device(),
            })
        }
    };
    let rows = rows_over(x, "reduce", dims)?;
    let shape = if keepdim {
        &rows.kept_shape
    } else {
        &rows.dropped_shape
    };
    if let Some(leading) = leading_dims(x, dims) {
        // The reduced dims lead (a bias gradient: a sum over the rows of [N, D]): reduce the
        // columns of [Π leading, Π rest] in place instead of transposing it first.
        let (gpu, xb) = dense_f32(x, "reduce")?;
        let reduced_rows: usize = x.shape()[..leading].iter().product();
        let cols = x.numel() / reduced_rows.max(1);
        let reduced = gpu_rows::reduce_columns(&gpu, code, &xb, reduced_rows, cols)
            .map_err(failed("reduce"))?;
        return Ok(f32_tensor(&gpu, reduced, shape, ordinal(x)));
    }
    let (gpu, xb) = dense_f32(&rows.permuted, "reduce")?;
    let reduced = reduce_rows_chunked(&gpu, code, code, &xb, rows.outer(), rows.inner)
        .map_err(failed("reduce"))?;
    Ok(f32_tensor(&gpu, reduced, shape, ordinal(x)))
}

/// Σ x² of a device tensor (`Tensor::sum_of_squares`): chunks of squares, then their sum.
pub(crate) fn sum_of_squares(x: &Tensor) -> Result<Tensor> {
    let op = "sum_of_squares";
    let (gpu, xb) = dense_f32(x, op)?;
    let total = reduce_rows_chunked(
        &gpu,
        RowReduce::SumOfSquares,
        RowReduce::Sum,
        &xb,
        1,
        x.numel(),
    )
    .map_err(failed(op))?;
    Ok(f32_tensor(&gpu, total, &[], ordinal(x)))
}

/// Each of `outer` rows of `inner` elements reduced by `first`. The row kernel gives each row
/// one warp, so a few long rows (a whole-tensor sum, say) would leave the GPU idle: long rows
/// are split into equal chunks reduced by `first`, whose results `then` combines — exact for
/// sum, mean (equal chunks) and max (`then` = `first`), and for squares then a sum.
fn reduce_rows_chunked(
    gpu: &Gpu,
    first: RowReduce,
    then: RowReduce,
    x: &Buffer<f32>,
    outer: usize,
    inner: usize,
) -> std::result::Result<Buffer<f32>, CudaError> {
    match long_row_chunk(outer, inner) {
        Some(chunk) => {
            let partial = gpu_rows::reduce_rows(gpu, first, x, outer * inner / chunk, chunk)?;
            gpu_rows::reduce_rows(gpu, then, &partial, outer, inner / chunk)
        }
        None => gpu_rows::reduce_rows(gpu, first, x, outer, inner),
    }
}

/// `Some(j)` when `dims` are exactly the first j < rank dims of a contiguous `x` (so the kept
/// dims are its columns).
fn leading_dims(x: &Tensor, dims: &[usize]) -> Option<usize> {
    let j = dims.len();
    let mut sorted = dims.to_vec();
    sorted.sort_unstable();
    let leading = j > 0 && j < x.rank() && sorted.iter().enumerate().all(|(i, &d)| i == d);
    (leading && x.is_contiguous()).then_some(j)
}

/// The chunk length to split rows of `inner` elements into when there are too few rows to fill
/// a GPU: the largest divisor of `inner` in 256..=4096, if any.
fn long_row_chunk(outer: usize, inner: usize) -> Option<usize> {
    const ENOUGH_ROWS: usize = 256;
    if outer >= ENOUGH_ROWS || inner <= 4096 {
        return None;
    }
    (256..=4096).rev().find(|chunk| inner % chunk == 0)
}

fn optional_dense(t: Option<&Tensor>, op: &'static str) -> Result<Option<Arc<Buffer<f32>>>> {
    t.map(|t| dense_f32(t, op).map(|(_, b)| b)).transpose()
}

/// Layer norm over the last dimension, with the statistics for the backward pass.
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, LayerNormStats)> {
    let op = "layer_norm";
    let cols = *x.shape().last().unwrap_or(&1);
    let rows = x.numel() / cols.max(1);
    let (gpu, xb) = dense_f32(x, op)?;
    let (w, b) = (optional_dense(weight, op)?, optional_dense(bias, op)?);
    let out = gpu_norm::layer_norm(
        &gpu,
        &xb,
        w.as_deref(),
        b.as_deref(),
        rows,
        cols,
        eps as f32,
    )
    .map_err(failed(op))?;
    let stats_shape = &x.shape()[..x.rank().saturating_sub(1)];
    let ordinal = ordinal(x);
    Ok((
        f32_tensor(&gpu, out.output, x.shape(), ordinal),
        LayerNormStats {
            mean: f32_tensor(&gpu, out.mean, stats_shape, ordinal),
            rstd: f32_tensor(&gpu, out.rstd, stats_shape, ordinal),
        },
    ))
}

/// The backward pass of [`layer_norm`].
pub(crate) fn layer_norm_backward(
    x: &Tensor,
    stats: &LayerNormStats,
    weight: Option<&Tensor>,
    has_bias: bool,
    grad_out: &Tensor,
) -> Result<LayerNormGrads> {
    let op = "layer_norm_backward";
    let cols = *x.shape().last().unwrap_or(&1);
    let rows = x.numel() / cols.max(1);
    let (gpu, xb) = dense_f32(x, op)?;
    let (_, dy) = dense_f32(grad_out, op)?;
    let (_, mean) = dense_f32(&stats.mean, op)?;
    let (_, rstd) = dense_f32(&stats.rstd, op)?;
    let saved = gpu_norm::LayerNormStats {
        mean: &mean,
        rstd: &rstd,
    };
    let w = optional_dense(weight, op)?;
    let grads =
        gpu_norm::layer_norm_backward(&gpu, &xb, saved, w.as_deref(), has_bias, &dy, rows, cols)
            .map_err(failed(op))?;
    let ordinal = ordinal(x);
    Ok(LayerNormGrads {
        input: f32_tensor(&gpu, grads.input, x.shape(), ordinal),
        weight: grads.weight.map(|w| f32_tensor(&gpu, w, &[cols], ordinal)),
        bias: grads.bias.map(|b| f32_tensor(&gpu, b, &[cols], ordinal)),
    })
}

/// Rows of `table` picked by `index` along dimension 0.
pub(crate) fn index_select_rows(table: &Tensor, index: &Tensor) -> Result<Tensor> {
    let op = "index_select";
    same_device(op, table, index)?;
    let rows = table.shape()[0];
    let cols = table.numel() / rows.max(1);
    let (gpu, tb) = dense_f32(table, op)?;
    let ib = dense_indices(index, op)?;
    let out = gpu_index::index_select_rows(&gpu, &tb, &ib, rows, cols).map_err(failed(op))?;
    let mut shape = index.shape().to_vec();
    shape.extend_from_slice(&table.shape()[1..]);
    Ok(f32_tensor(&gpu, out, &shape, ordinal(table)))
}

/// The `k` largest values along `dim` and their indices, in descending order.
pub(crate) fn topk(x: &Tensor, k: usize, dim: usize) -> Result<(Tensor, Tensor)> {
    let op = "topk";
    let (moved, inverse) = dim_last(x, dim)?;
    let cols = x.shape()[dim];
    let rows = x.numel() / cols.max(1);
    let (gpu, xb) = dense_f32(&moved, op)?;
    let (values, indices) = gpu_index::topk_rows(&gpu, &xb, rows, cols, k).map_err(failed(op))?;
    let mut shape = moved.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = k;
    let ordinal = ordinal(x);
    Ok((
        f32_tensor(&gpu, values, &shape, ordinal).permute(&inverse)?,
        u32_tensor(&gpu, indices, &shape, ordinal).permute(&inverse)?,
    ))
}

/// The strided view a device tensor is of its buffer.
fn view_of(t: &Tensor) -> ew::View<'_> {
    ew::View {
        shape: t.shape(),
        strides: t.layout().strides(),
        offset: t.layout().offset(),
    }
}

/// Copies each piece into its slice along `dim` of the contiguous `out`.
fn copy_pieces<T: ditmoe_cuda::Element>(
    gpu: &Gpu,
    out: &Buffer<T>,
    pieces: &[(&Tensor, Arc<Buffer<T>>)],
    dim: usize,
    out_strides: &[usize],
) -> Result<()> {
    let mut start = 0;
    for (t, buffer) in pieces {
        let to = ew::View {
            shape: t.shape(),
            strides: out_strides,
            offset: start * out_strides[dim],
        };
        ew::copy_into(gpu, out, to, buffer, view_of(t)).map_err(failed("concat"))?;
        start += t.shape()[dim];
    }
    Ok(())
}

/// The pieces of a concat, each as the buffer `pick` finds in its storage (a dtype error
/// otherwise), copied into one new buffer of `numel` elements.
fn concat_buffers<T: ditmoe_cuda::Element>(
    gpu: &Gpu,
    tensors: &[&Tensor],
    dim: usize,
    shape: &[usize],
    pick: fn(&CudaData) -> Option<Arc<Buffer<T>>>,
) -> Result<Buffer<T>> {
    let op = "concat";
    let expected = tensors[0].dtype();
    let pieces: Vec<_> = tensors
        .iter()
        .map(|t| {
            t.cuda_storage()
                .and_then(|s| pick(&s.data))
                .map(|b| (*t, b))
                .ok_or(TensorError::DType {
                    op,
                    expected,
                    found: t.dtype(),
                })
        })
        .collect::<Result<_>>()?;
    let out = gpu.zeros::<T>(shape.iter().product()).map_err(failed(op))?;
    copy_pieces(gpu, &out, &pieces, dim, &ew::contiguous_strides(shape))?;
    Ok(out)
}

/// Joins device tensors along `dim` into a new tensor of `shape`: each piece is copied, in
/// place of its strides, into its slice of the output.
pub(crate) fn concat(tensors: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
    let first = tensors[0];
    for t in tensors {
        same_device("concat", first, t)?;
    }
    let gpu = Arc::clone(&first.cuda_storage().expect("a device tensor").gpu);
    Ok(match first.dtype() {
        DType::I64 => {
            let pick = |d: &CudaData| match d {
                CudaData::I64(b) => Some(Arc::clone(b)),
                CudaData::F32(_) => None,
            };
            u32_tensor(
                &gpu,
                concat_buffers(&gpu, tensors, dim, shape, pick)?,
                shape,
                ordinal(first),
            )
        }
        _ => {
            let pick = |d: &CudaData| match d {
                CudaData::F32(b) => Some(Arc::clone(b)),
                CudaData::I64(_) => None,
            };
            f32_tensor(
                &gpu,
                concat_buffers(&gpu, tensors, dim, shape, pick)?,
                shape,
                ordinal(first),
            )
        }
    })
}

/// A copy of `table` with `source[i, :]` added to row `index[i]` (the scatter-add that is the
/// backward of an embedding lookup); out-of-range indices are skipped.
pub(crate) fn index_add_rows(table: &Tensor, index: &Tensor, source: &Tensor) -> Result<Tensor> {
    let op = "index_add";
    same_device(op, table, index)?;
    same_device(op, table, source)?;
    let rows = table.shape()[0];
    let cols = table.numel() / rows.max(1);
    let mut expected = index.shape().to_vec();
    expected.extend_from_slice(&table.shape()[1..]);
    source.check_shape(op, &expected)?;
    let copy = contiguous(table)?;
    let (gpu, out) = dense_f32(&copy, op)?;
    let ib = dense_indices(index, op)?;
    let (_, src) = dense_f32(source, op)?;
    gpu_index::index_add_rows(&gpu, &out, &ib, &src, rows, cols).map_err(failed(op))?;
    Ok(copy)
}

/// Whether a gather / scatter-add works along the last dimension with an index that spans every
/// other dimension — the case the row kernels take (out-of-range indices give NaN / are
/// skipped on the GPU, with no host round trip to check them).
pub(crate) fn gathers_last_dim(t: &Tensor, dim: usize, index: &Tensor) -> bool {
    let r = t.rank();
    r > 0 && dim == r - 1 && index.shape()[..r - 1] == t.shape()[..r - 1]
}

/// `out[.., j] = x[.., index[.., j]]` along the last dimension.
pub(crate) fn gather_last(x: &Tensor, index: &Tensor) -> Result<Tensor> {
    let op = "gather";
    same_device(op, x, index)?;
    let cols = *x.shape().last().expect("rank >= 1");
    let rows = x.numel() / cols.max(1);
    let (gpu, xb) = dense_f32(x, op)?;
    let ib = dense_indices(index, op)?;
    let out = gpu_index::gather_cols(&gpu, &xb, &ib, rows, cols).map_err(failed(op))?;
    Ok(f32_tensor(&gpu, out, index.shape(), ordinal(x)))
}

/// A copy of `x` with `source[.., j]` added at `[.., index[.., j]]` along the last dimension.
pub(crate) fn scatter_add_last(x: &Tensor, index: &Tensor, source: &Tensor) -> Result<Tensor> {
    let op = "scatter_add";
    same_device(op, x, index)?;
    same_device(op, x, source)?;
    let cols = *x.shape().last().expect("rank >= 1");
    let rows = x.numel() / cols.max(1);
    let copy = contiguous(x)?;
    let (gpu, out) = dense_f32(&copy, op)?;
    let ib = dense_indices(index, op)?;
    let (_, src) = dense_f32(source, op)?;
    gpu_index::scatter_add_cols(&gpu, &out, &ib, &src, rows, cols).map_err(failed(op))?;
    Ok(copy)
}

/// One fused AdamW step on the GPU (`adamw_f32`).
pub(crate) fn adamw(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    hyper: &AdamWHyper,
) -> Result<AdamWUpdate> {
    let op = "adamw_update";
    let (gpu, pb) = dense_f32(param, op)?;
    let (_, gb) = dense_f32(grad, op)?;
    let (_, mb) = dense_f32(m, op)?;
    let (_, vb) = dense_f32(v, op)?;
    let step = AdamWStep {
        lr: hyper.lr as f32,
        beta1: hyper.beta1 as f32,
        beta2: hyper.beta2 as f32,
        eps: hyper.eps as f32,
        weight_decay: hyper.weight_decay as f32,
        grad_scale: hyper.grad_scale as f32,
        step: u32::try_from(hyper.step).unwrap_or(u32::MAX),
    };
    let next = gpu_optim::adamw(&gpu, &step, &pb, &gb, &mb, &vb).map_err(failed(op))?;
    let (shape, ordinal) = (param.shape(), ordinal(param));
    Ok(AdamWUpdate {
        param: f32_tensor(&gpu, next.param, shape, ordinal),
        m: f32_tensor(&gpu, next.m, shape, ordinal),
        v: f32_tensor(&gpu, next.v, shape, ordinal),
    })
}

/// The dense device buffer of group sizes left on the GPU, if they were.
fn device_counts(sizes: &GroupSizes, op: &'static str) -> Result<Option<Arc<Buffer<u32>>>> {
    sizes
        .device_counts()
        .map(|counts| dense_indices(counts, op))
        .transpose()
}

/// The grouped GEMM's view of `sizes`: the device `counts` when they were left on the GPU
/// (the kernels build their schedule there), else the host sizes.
fn gemm_groups<'a>(
    sizes: &'a GroupSizes,
    counts: Option<&'a Buffer<u32>>,
) -> Result<gemm::Groups<'a>> {
    Ok(match counts {
        Some(counts) => gemm::Groups::Device {
            counts,
            rows: sizes.rows(),
        },
        None => gemm::Groups::Host(sizes.to_host()?),
    })
}

/// All groups of a grouped matmul in one tensor-core launch (`grouped_bf16_*`), when the GPU
/// multiplies in mixed precision and the shapes fit; `None` sends the caller to the per-group
/// loop.
pub(crate) fn grouped_matmul(
    x: &Tensor,
    group_sizes: &GroupSizes,
    weights: &Tensor,
    transpose_weights: bool,
) -> Result<Option<Tensor>> {
    let op = "grouped_matmul";
    same_device(op, x, weights)?;
    let (gpu, xb) = dense_f32(x, op)?;
    let inner = x.shape()[1];
    let out = weights.shape()[if transpose_weights { 1 } else { 2 }];
    // The weights' rows must be 16-byte chunks, as must x's.
    let weight_row = if transpose_weights { inner } else { out };
    if !precision::current().tensor_core_matmul || inner % 8 != 0 || weight_row % 8 != 0 {
        return Ok(None);
    }
    let (_, wb) = dense_f32(weights, op)?;
    let x16 = ew::to_bf16(&gpu, &xb).map_err(failed(op))?;
    let w16 = ew::to_bf16(&gpu, &wb).map_err(failed(op))?;
    let rows = x.shape()[0];
    let y = gpu.zeros::<f32>(rows * out).map_err(failed(op))?;
    let counts = device_counts(group_sizes, op)?;
    let groups = gemm_groups(group_sizes, counts.as_deref())?;
    gemm::grouped_gemm_bf16(&gpu, &x16, groups, &w16, transpose_weights, out, &y)
        .map_err(failed(op))?;
    Ok(Some(f32_tensor(&gpu, y, &[rows, out], ordinal(x))))
}

/// FlashAttention-2 forward on the tensor cores (bf16 inputs, f32 accumulation): the output and
/// the per-row log-sum-exp. Needs mixed precision on (it rounds Q, K, V and P to bf16) and a
/// head dimension the kernel is built for; there is no GPU backward yet (issue #7).
pub(crate) fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    head_dim: usize,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let op = "flash_attention";
    same_device(op, q, k)?;
    same_device(op, q, v)?;
    let (gpu, qb) = dense_f32(q, op)?;
    if !precision::current().tensor_core_matmul {
        return Err(TensorError::invalid(
            op,
            "the fused GPU kernel computes in bf16; turn mixed precision on \
             (ditmoe_cuda::precision) or compose attention from matmul and softmax",
        ));
    }
    let (_, kb) = dense_f32(k, op)?;
    let (_, vb) = dense_f32(v, op)?;
    let bf16 = |b: &Buffer<f32>| ew::to_bf16(&gpu, b).map_err(failed(op));
    let tokens = q.shape()[q.rank() - 2];
    let out = gpu_attention::flash_attention_forward(
        &gpu,
        &bf16(&qb)?,
        &bf16(&kb)?,
        &bf16(&vb)?,
        gpu_attention::AttentionShape {
            heads,
            tokens,
            head_dim,
        },
        scale as f32,
    )
    .map_err(failed(op))?;
    let ordinal = ordinal(q);
    Ok((
        f32_tensor(&gpu, out.out, q.shape(), ordinal),
        f32_tensor(&gpu, out.lse, &q.shape()[..q.rank() - 1], ordinal),
    ))
}

/// Whether the fused attention kernels (forward and backward) take `q` on its GPU.
pub(crate) fn fused_attention_available(q: &Tensor) -> bool {
    let d = q.shape().last().copied().unwrap_or(0) as u32;
    q.cuda_storage().is_some()
        && precision::current().tensor_core_matmul
        && ditmoe_cuda::kernels::attention::BACKWARD_HEAD_DIMS.contains(&d)
}

/// What the attention forward pass saved for its backward.
pub(crate) struct AttentionSaved<'a> {
    pub out: &'a Tensor,
    pub lse: &'a Tensor,
}

/// The FlashAttention-2 backward on the tensor cores: dQ, dK, dV.
pub(crate) fn flash_attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    saved: AttentionSaved,
    grad_out: &Tensor,
    head_dim: usize,
    scale: f64,
) -> Result<crate::ops::attention::AttentionGrads> {
    let op = "flash_attention_backward";
    for t in [k, v, saved.out, saved.lse, grad_out] {
        same_device(op, q, t)?;
    }
    if !fused_attention_available(q) {
        return Err(TensorError::invalid(
            op,
            format!(
                "the fused GPU kernels need mixed precision on and a head dim in {:?}; compose \
                 attention from matmul and softmax instead",
                ditmoe_cuda::kernels::attention::BACKWARD_HEAD_DIMS
            ),
        ));
    }
    let (gpu, qb) = dense_f32(q, op)?;
    let (_, kb) = dense_f32(k, op)?;
    let (_, vb) = dense_f32(v, op)?;
    let (_, ob) = dense_f32(saved.out, op)?;
    let (_, lb) = dense_f32(saved.lse, op)?;
    let (_, gb) = dense_f32(grad_out, op)?;
    let bf16 = |b: &Buffer<f32>| ew::to_bf16(&gpu, b).map_err(failed(op));
    let tokens = q.shape()[q.rank() - 2];
    let heads = q.numel() / (tokens * head_dim).max(1);
    let grads = gpu_attention::flash_attention_backward(
        &gpu,
        &bf16(&qb)?,
        &bf16(&kb)?,
        &bf16(&vb)?,
        &ob,
        &lb,
        &gb,
        gpu_attention::AttentionShape {
            heads,
            tokens,
            head_dim,
        },
        scale as f32,
    )
    .map_err(failed(op))?;
    let ordinal = ordinal(q);
    Ok(crate::ops::attention::AttentionGrads {
        q: f32_tensor(&gpu, grads.q, q.shape(), ordinal),
        k: f32_tensor(&gpu, grads.k, q.shape(), ordinal),
        v: f32_tensor(&gpu, grads.v, q.shape(), ordinal),
    })
}

/// All weight gradients of a grouped matmul in one tensor-core launch (mixed precision, shapes
/// that fit); `None` sends the caller to the per-group loop.
pub(crate) fn grouped_weight_grads(
    dy: &Tensor,
    x: &Tensor,
    group_sizes: &GroupSizes,
) -> Result<Option<Vec<Tensor>>> {
    let op = "grouped_weight_grads";
    same_device(op, dy, x)?;
    let (gpu, dyb) = dense_f32(dy, op)?;
    let (out, inner) = (dy.shape()[1], x.shape()[1]);
    if !precision::current().tensor_core_matmul || out % 8 != 0 || inner % 8 != 0 {
        return Ok(None);
    }
    let (_, xb) = dense_f32(x, op)?;
    let dy16 = ew::to_bf16(&gpu, &dyb).map_err(failed(op))?;
    let x16 = ew::to_bf16(&gpu, &xb).map_err(failed(op))?;
    let groups = group_sizes.len();
    let grads = gpu.zeros::<f32>(groups * out * inner).map_err(failed(op))?;
    let counts = device_counts(group_sizes, op)?;
    let row_groups = gemm_groups(group_sizes, counts.as_deref())?;
    gemm::grouped_weight_grad_bf16(&gpu, &dy16, &x16, row_groups, &grads).map_err(failed(op))?;
    let all = f32_tensor(&gpu, grads, &[groups, out, inner], ordinal(dy));
    (0..groups)
        .map(|g| all.narrow(0, g, 1)?.squeeze(0))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Token choice's `[N, k]` device picks as positions (`Tensor::token_choice_positions`).
pub(crate) fn token_choice_positions(picks: &Tensor, num_experts: usize) -> Result<Tensor> {
    let op = "token_choice_positions";
    let gpu = &picks.cuda_storage().expect("a device tensor").gpu;
    let buffer = dense_indices(picks, op)?;
    let k = picks.shape()[1];
    let positions =
        gpu_routing::token_choice_positions(gpu, &buffer, k, num_experts).map_err(failed(op))?;
    Ok(u32_tensor(gpu, positions, &[picks.numel()], ordinal(picks)))
}

/// Expert choice's `[G, C, E]` device picks as positions (`Tensor::expert_choice_positions`).
pub(crate) fn expert_choice_positions(picks: &Tensor, group_tokens: usize) -> Result<Tensor> {
    let op = "expert_choice_positions";
    let gpu = &picks.cuda_storage().expect("a device tensor").gpu;
    let buffer = dense_indices(picks, op)?;
    let &[groups, capacity, experts] = picks.shape() else {
        unreachable!("checked by the caller")
    };
    let shape = gpu_routing::ExpertChoiceShape {
        groups,
        group_tokens,
        capacity,
        experts,
    };
    let positions =
        gpu_routing::expert_choice_positions(gpu, &buffer, shape).map_err(failed(op))?;
    Ok(u32_tensor(gpu, positions, &[picks.numel()], ordinal(picks)))
}

/// Expert race's picks of device scores (`Tensor::expert_race_positions`).
pub(crate) fn expert_race_positions(scores: &Tensor, picks: usize) -> Result<Tensor> {
    let op = "expert_race_positions";
    let (gpu, buffer) = dense_f32(scores, op)?;
    let positions = gpu_routing::expert_race_positions(&gpu, &buffer, picks).map_err(failed(op))?;
    Ok(u32_tensor(&gpu, positions, &[picks], ordinal(scores)))
}

/// The expert-sorted order of device positions (`Tensor::dispatch_order`); nothing is
/// downloaded (the group sizes stay on the device too).
pub(crate) fn dispatch_order(
    positions: &Tensor,
    num_experts: usize,
) -> Result<crate::ops::routing::Dispatch> {
    let op = "dispatch_order";
    let gpu = &positions.cuda_storage().expect("a device tensor").gpu;
    let buffer = dense_indices(positions, op)?;
    let sorted = gpu_routing::dispatch_order(gpu, &buffer, num_experts).map_err(failed(op))?;
    let (n, ordinal) = (positions.numel(), ordinal(positions));
    let counts = u32_tensor(gpu, sorted.counts, &[num_experts], ordinal);
    Ok(crate::ops::routing::Dispatch {
        order: u32_tensor(gpu, sorted.order, &[n], ordinal),
        token_of: u32_tensor(gpu, sorted.token_of, &[n], ordinal),
        expert_of: u32_tensor(gpu, sorted.expert_of, &[n], ordinal),
        group_sizes: GroupSizes::on_device(counts, n),
    })
}

/// SwiGLU's gated product of two device tensors (`Tensor::swiglu`).
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let op = "swiglu";
    same_device(op, gate, up)?;
    let (gpu, g) = dense_f32(gate, op)?;
    let (_, u) = dense_f32(up, op)?;
    let out = gpu_swiglu::swiglu(&gpu, &g, &u).map_err(failed(op))?;
    Ok(f32_tensor(&gpu, out, gate.shape(), ordinal(gate)))
}

/// Its gradients (`Tensor::swiglu_backward`).
pub(crate) fn swiglu_backward(
    gate: &Tensor,
    up: &Tensor,
    grad_out: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let op = "swiglu_backward";
    same_device(op, gate, up)?;
    same_device(op, gate, grad_out)?;
    let (gpu, g) = dense_f32(gate, op)?;
    let (_, u) = dense_f32(up, op)?;
    let (_, dh) = dense_f32(grad_out, op)?;
    let (dgate, dup) = gpu_swiglu::swiglu_backward(&gpu, &g, &u, &dh).map_err(failed(op))?;
    let (shape, ordinal) = (gate.shape(), ordinal(gate));
    Ok((
        f32_tensor(&gpu, dgate, shape, ordinal),
        f32_tensor(&gpu, dup, shape, ordinal),
    ))
}

/// `start + weight · (end − start)` of two device tensors (`Tensor::lerp`).
pub(crate) fn lerp(start: &Tensor, end: &Tensor, weight: f64) -> Result<Tensor> {
    let op = "lerp";
    same_device(op, start, end)?;
    let (gpu, a) = dense_f32(start, op)?;
    let (_, b) = dense_f32(end, op)?;
    let out = ew::lerp(&gpu, &a, &b, weight as f32).map_err(failed(op))?;
    Ok(f32_tensor(&gpu, out, start.shape(), ordinal(start)))
}
