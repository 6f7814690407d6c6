//! The CUDA backend: each method launches the kernels of `ditmoe_cuda` through their typed
//! wrappers on device storage and returns new device storage.
//!
//! Device storage holds `f32` values (or `i64` indices, kept as `u32`). An op reads its
//! operands in place when their layout allows (broadcast and strided views for the elementwise
//! ops, transposed matrices for matmul) and makes a dense copy otherwise. The ops it lacks fall
//! to the [`Backend`] defaults (`TensorError::NoCudaKernel`, naming the op).

use std::sync::Arc;

use ditmoe_cuda::ops::attention as gpu_attention;
use ditmoe_cuda::ops::elementwise::{self as ew, Broadcast};
use ditmoe_cuda::ops::gemm::{self, Gemm};
use ditmoe_cuda::ops::index as gpu_index;
use ditmoe_cuda::ops::norm as gpu_norm;
use ditmoe_cuda::ops::optim::{self as gpu_optim, AdamWStep};
use ditmoe_cuda::ops::routing as gpu_routing;
use ditmoe_cuda::ops::rows as gpu_rows;
use ditmoe_cuda::ops::swiglu as gpu_swiglu;
use ditmoe_cuda::{precision, registry, Buffer, CudaError, Gpu};

use crate::backend::{
    contiguous_storage, reduced_dims_last, Backend, DispatchStorage, GroupCounts, Operand, Strided,
};
use crate::descriptors::{AdamWHyper, BinaryOp, GroupSizes, ReduceOp, UnaryOp};
use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::storage::{CudaData, CudaStorage, Storage};
use crate::{DType, Device};

/// The backend of GPU `ordinal`.
pub(crate) struct CudaBackend {
    pub ordinal: usize,
}

/// Wraps a kernel error with the op it came from.
fn failed(op: &'static str) -> impl Fn(CudaError) -> TensorError {
    move |e| TensorError::Cuda {
        op,
        message: e.to_string(),
    }
}

/// New device storage holding `buffer`.
fn f32_storage(gpu: &Arc<Gpu>, buffer: Buffer<f32>) -> Storage {
    Storage::Cuda(CudaStorage {
        gpu: Arc::clone(gpu),
        data: CudaData::F32(Arc::new(buffer)),
    })
}

fn u32_storage(gpu: &Arc<Gpu>, buffer: Buffer<u32>) -> Storage {
    Storage::Cuda(CudaStorage {
        gpu: Arc::clone(gpu),
        data: CudaData::I64(Arc::new(buffer)),
    })
}

/// The device storage of an operand (every operand reaching this backend has one).
fn cuda_storage<'a>(x: &Operand<'a>) -> &'a CudaStorage {
    match x.storage() {
        Storage::Cuda(c) => c,
        _ => unreachable!("the CUDA backend is only given device storage"),
    }
}

/// The dtypes a device tensor can hold.
const DEVICE_DTYPES: &str = "f32 or i64 on a GPU (convert with to_dtype first)";

/// The dense (contiguous, from element 0, nothing else in the buffer) `f32` buffer of `x`:
/// the storage itself, a view of it when `x` is a contiguous slice (a narrow along the first
/// dim, an expert's gradient in the grouped one), else a copy.
fn dense_f32(x: &Operand, op: &'static str) -> Result<(Arc<Gpu>, Arc<Buffer<f32>>)> {
    let storage = cuda_storage(x);
    let CudaData::F32(buffer) = &storage.data else {
        return Err(TensorError::DType {
            op,
            expected: DType::F32,
            found: DType::I64,
        });
    };
    let layout = x.layout();
    if layout.is_contiguous() {
        if layout.offset() == 0 && buffer.len() == x.numel() {
            return Ok((Arc::clone(&storage.gpu), Arc::clone(buffer)));
        }
        let view = Buffer::view(buffer, layout.offset(), x.numel()).map_err(failed(op))?;
        return Ok((Arc::clone(&storage.gpu), Arc::new(view)));
    }
    let copy = strided_copy(x)?;
    let dense = Operand::owned(&copy, Layout::contiguous(x.shape()));
    dense_f32(&dense, op)
}

/// The dense `u32` buffer of a device index operand.
fn dense_indices(x: &Operand, op: &'static str) -> Result<Arc<Buffer<u32>>> {
    let copy;
    let dense = if x.is_contiguous() && x.layout().offset() == 0 {
        x.storage()
    } else {
        copy = strided_copy(x)?;
        &copy
    };
    match dense {
        Storage::Cuda(CudaStorage {
            data: CudaData::I64(b),
            ..
        }) if b.len() == x.numel() => Ok(Arc::clone(b)),
        _ => Err(TensorError::DType {
            op,
            expected: DType::I64,
            found: x.dtype(),
        }),
    }
}

/// A contiguous copy of a strided device view.
fn strided_copy(x: &Operand) -> Result<Storage> {
    let storage = cuda_storage(x);
    let layout = x.layout();
    let (shape, strides, offset) = (layout.shape(), layout.strides(), layout.offset());
    let op = "contiguous";
    Ok(match &storage.data {
        CudaData::F32(b) => f32_storage(
            &storage.gpu,
            ew::copy_strided(&storage.gpu, b, shape, strides, offset).map_err(failed(op))?,
        ),
        CudaData::I64(b) => u32_storage(
            &storage.gpu,
            ew::copy_strided(&storage.gpu, b, shape, strides, offset).map_err(failed(op))?,
        ),
    })
}

/// The `f32` buffer behind a (broadcast, strided) operand, read in place.
fn strided_f32(x: &Operand, op: &'static str) -> Result<Arc<Buffer<f32>>> {
    match &cuda_storage(x).data {
        CudaData::F32(buffer) => Ok(Arc::clone(buffer)),
        CudaData::I64(_) => Err(TensorError::DType {
            op,
            expected: DType::F32,
            found: DType::I64,
        }),
    }
}

/// An operand's layout as a kernel view.
fn view_of<'a>(x: &'a Operand) -> ew::View<'a> {
    ew::View {
        shape: x.shape(),
        strides: x.layout().strides(),
        offset: x.layout().offset(),
    }
}

/// Whether `x` is the transpose (last two dims swapped) of a dense tensor: then a GEMM reads
/// it in place as a transposed operand.
fn is_dense_transpose(x: &Operand) -> bool {
    let r = x.rank();
    let swapped = x.transpose(r - 2, r - 1).expect("rank >= 2");
    swapped.is_contiguous()
        && swapped.layout().offset() == 0
        && match &cuda_storage(x).data {
            CudaData::F32(b) => b.len() == x.numel(),
            CudaData::I64(_) => false,
        }
}

/// A GEMM operand: its dense buffer and whether it is stored transposed.
fn gemm_operand(x: &Operand) -> Result<(Arc<Buffer<f32>>, bool)> {
    if is_dense_transpose(x) && !x.is_contiguous() {
        let r = x.rank();
        let (_, buffer) = dense_f32(&x.transpose(r - 2, r - 1)?, "matmul")?;
        return Ok((buffer, true));
    }
    Ok((dense_f32(x, "matmul")?.1, false))
}

/// `x` with dimension `dim` moved last (a view), and the permutation that undoes it.
fn dim_last<'a>(x: &Operand<'a>, dim: usize) -> Result<(Operand<'a>, Vec<usize>)> {
    let r = x.rank();
    let mut perm: Vec<usize> = (0..r).filter(|&d| d != dim).collect();
    perm.push(dim);
    let mut inverse = vec![0; r];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    Ok((x.permute(&perm)?, inverse))
}

/// Each of `outer` rows of `inner` elements reduced by `op`. The row kernel gives each row
/// one warp, so a few long rows (a whole-tensor sum, say) would leave the GPU idle: long rows
/// are split into equal chunks reduced by `op`, whose results `op.combine_chunks()` combines —
/// exact for sum, mean (equal chunks) and max, and for squares then a sum.
fn reduce_rows_chunked(
    gpu: &Gpu,
    op: ReduceOp,
    x: &Buffer<f32>,
    outer: usize,
    inner: usize,
) -> std::result::Result<Buffer<f32>, CudaError> {
    match long_row_chunk(outer, inner) {
        Some(chunk) => {
            let partial = gpu_rows::reduce_rows(gpu, op, x, outer * inner / chunk, chunk)?;
            gpu_rows::reduce_rows(gpu, op.combine_chunks(), &partial, outer, inner / chunk)
        }
        None => gpu_rows::reduce_rows(gpu, op, x, outer, inner),
    }
}

/// `Some(j)` when `dims` are exactly the first j < rank dims of a contiguous `x` (so the kept
/// dims are its columns).
fn leading_dims(x: &Operand, dims: &[usize]) -> Option<usize> {
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
    (256..=4096)
        .rev()
        .find(|chunk| inner.is_multiple_of(*chunk))
}

fn optional_dense(x: Option<&Operand>, op: &'static str) -> Result<Option<Arc<Buffer<f32>>>> {
    x.map(|x| dense_f32(x, op).map(|(_, b)| b)).transpose()
}

/// The dense device buffer of group sizes left on the GPU, if they were.
fn device_counts(sizes: &GroupSizes, op: &'static str) -> Result<Option<Arc<Buffer<u32>>>> {
    sizes
        .device_operand()
        .map(|counts| dense_indices(&counts, op))
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

/// Copies each piece into its slice along `dim` of the contiguous `out`.
fn copy_pieces<T: ditmoe_cuda::Element>(
    gpu: &Gpu,
    out: &Buffer<T>,
    pieces: &[(&Operand, Arc<Buffer<T>>)],
    dim: usize,
    out_strides: &[usize],
) -> Result<()> {
    let mut start = 0;
    for (x, buffer) in pieces {
        let to = ew::View {
            shape: x.shape(),
            strides: out_strides,
            offset: start * out_strides[dim],
        };
        ew::copy_into(gpu, out, to, buffer, view_of(x)).map_err(failed("concat"))?;
        start += x.shape()[dim];
    }
    Ok(())
}

/// The pieces of a concat, each as the buffer `pick` finds in its storage (a dtype error
/// otherwise), copied into one new buffer of `shape`.
fn concat_buffers<T: ditmoe_cuda::Element>(
    gpu: &Gpu,
    pieces: &[Operand],
    dim: usize,
    shape: &[usize],
    pick: fn(&CudaData) -> Option<Arc<Buffer<T>>>,
) -> Result<Buffer<T>> {
    let op = "concat";
    let expected = pieces[0].dtype();
    let buffers: Vec<_> = pieces
        .iter()
        .map(|x| {
            pick(&cuda_storage(x).data)
                .map(|b| (x, b))
                .ok_or(TensorError::DType {
                    op,
                    expected,
                    found: x.dtype(),
                })
        })
        .collect::<Result<_>>()?;
    let out = gpu.zeros::<T>(shape.iter().product()).map_err(failed(op))?;
    copy_pieces(gpu, &out, &buffers, dim, &ew::contiguous_strides(shape))?;
    Ok(out)
}

impl CudaBackend {
    fn gpu(&self) -> Result<Arc<Gpu>> {
        registry::device(self.ordinal).map_err(|e| TensorError::DeviceUnavailable {
            device: self.device(),
            reason: e.to_string(),
        })
    }

    /// `f(x)`, or with `grad`, `grad · f'(x)`.
    fn unary_launch(&self, x: &Operand, op: UnaryOp, grad: Option<&Operand>) -> Result<Storage> {
        let name = "unary";
        let (gpu, xb) = dense_f32(x, name)?;
        let out = match grad {
            None => ew::unary(&gpu, op, &xb),
            Some(g) => {
                let (_, gb) = dense_f32(g, name)?;
                ew::unary_backward(&gpu, op, &xb, &gb)
            }
        }
        .map_err(failed(name))?;
        Ok(f32_storage(&gpu, out))
    }
}

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    fn contiguous(&self, x: &Operand) -> Result<Storage> {
        strided_copy(x)
    }

    /// Zeros made on the device (a memset).
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Storage> {
        let gpu = self.gpu()?;
        let (n, op) = (shape.iter().product(), "zeros");
        match dtype {
            DType::F32 => Ok(f32_storage(&gpu, gpu.zeros::<f32>(n).map_err(failed(op))?)),
            DType::I64 => Ok(u32_storage(&gpu, gpu.zeros::<u32>(n).map_err(failed(op))?)),
            found => Err(TensorError::UnsupportedDType {
                op,
                found,
                supported: DEVICE_DTYPES,
            }),
        }
    }

    fn upload(&self, host: &Operand) -> Result<Storage> {
        let gpu = self.gpu()?;
        let op = "to_device";
        match host.dtype() {
            DType::F32 => {
                let buffer = gpu.upload(&host.values::<f32>()?).map_err(failed(op))?;
                Ok(f32_storage(&gpu, buffer))
            }
            DType::I64 => {
                let indices = host
                    .values::<i64>()?
                    .iter()
                    .map(|&i| u32::try_from(i))
                    .collect::<std::result::Result<Vec<u32>, _>>()
                    .map_err(|_| {
                        TensorError::invalid(op, "GPU index tensors hold values in 0..2^32")
                    })?;
                let buffer = gpu.upload(&indices).map_err(failed(op))?;
                Ok(u32_storage(&gpu, buffer))
            }
            found => Err(TensorError::UnsupportedDType {
                op,
                found,
                supported: DEVICE_DTYPES,
            }),
        }
    }

    /// The whole buffer comes down, then the view is gathered on the host (unless it is the
    /// whole buffer).
    fn download(&self, x: &Operand) -> Result<Storage> {
        let storage = cuda_storage(x);
        let op = "to_device";
        let whole = match &storage.data {
            CudaData::F32(b) => Storage::F32(storage.gpu.download(b).map_err(failed(op))?),
            CudaData::I64(b) => Storage::I64(
                storage
                    .gpu
                    .download(b)
                    .map_err(failed(op))?
                    .into_iter()
                    .map(i64::from)
                    .collect(),
            ),
        };
        Ok(contiguous_storage(whole, x.layout().clone()))
    }

    /// Each piece is copied, in place of its strides, into its slice of the output.
    fn concat(&self, pieces: &[Operand], dim: usize, shape: &[usize]) -> Result<Storage> {
        let gpu = Arc::clone(&cuda_storage(&pieces[0]).gpu);
        Ok(match pieces[0].dtype() {
            DType::I64 => {
                let pick = |d: &CudaData| match d {
                    CudaData::I64(b) => Some(Arc::clone(b)),
                    CudaData::F32(_) => None,
                };
                u32_storage(&gpu, concat_buffers(&gpu, pieces, dim, shape, pick)?)
            }
            _ => {
                let pick = |d: &CudaData| match d {
                    CudaData::F32(b) => Some(Arc::clone(b)),
                    CudaData::I64(_) => None,
                };
                f32_storage(&gpu, concat_buffers(&gpu, pieces, dim, shape, pick)?)
            }
        })
    }

    fn unary(&self, x: &Operand, op: UnaryOp) -> Result<Storage> {
        self.unary_launch(x, op, None)
    }

    fn unary_backward(&self, x: &Operand, op: UnaryOp, grad: &Operand) -> Result<Storage> {
        self.unary_launch(x, op, Some(grad))
    }

    /// Both operands are read in place, whatever their strides.
    fn binary(&self, a: &Operand, b: &Operand, op: BinaryOp) -> Result<Storage> {
        let name = "binary";
        let (ab, bb) = (strided_f32(a, name)?, strided_f32(b, name)?);
        let gpu = &cuda_storage(a).gpu;
        let layout = Broadcast {
            shape: a.shape().to_vec(),
            a_strides: a.layout().strides().to_vec(),
            b_strides: b.layout().strides().to_vec(),
            a_offset: a.layout().offset(),
            b_offset: b.layout().offset(),
        };
        let out = ew::binary(gpu, op, &ab, &bb, &layout).map_err(failed(name))?;
        Ok(f32_storage(gpu, out))
    }

    fn lerp(&self, start: &Operand, end: &Operand, weight: f64) -> Result<Storage> {
        let op = "lerp";
        let (gpu, a) = dense_f32(start, op)?;
        let (_, b) = dense_f32(end, op)?;
        let out = ew::lerp(&gpu, &a, &b, weight as f32).map_err(failed(op))?;
        Ok(f32_storage(&gpu, out))
    }

    /// An `i64` condition is not supported on the GPU.
    fn where_cond(
        &self,
        condition: &Operand,
        on_true: &Operand,
        on_false: &Operand,
    ) -> Result<Storage> {
        let op = "where_cond";
        let (cb, ab, bb) = (
            strided_f32(condition, op)?,
            strided_f32(on_true, op)?,
            strided_f32(on_false, op)?,
        );
        let gpu = &cuda_storage(on_true).gpu;
        let out = ew::select(
            gpu,
            (&cb, view_of(condition)),
            (&ab, view_of(on_true)),
            (&bb, view_of(on_false)),
        )
        .map_err(failed(op))?;
        Ok(f32_storage(gpu, out))
    }

    fn swiglu(&self, gate: &Operand, up: &Operand) -> Result<Storage> {
        let op = "swiglu";
        let (gpu, g) = dense_f32(gate, op)?;
        let (_, u) = dense_f32(up, op)?;
        let out = gpu_swiglu::swiglu(&gpu, &g, &u).map_err(failed(op))?;
        Ok(f32_storage(&gpu, out))
    }

    fn swiglu_backward(
        &self,
        gate: &Operand,
        up: &Operand,
        grad: &Operand,
    ) -> Result<(Storage, Storage)> {
        let op = "swiglu_backward";
        let (gpu, g) = dense_f32(gate, op)?;
        let (_, u) = dense_f32(up, op)?;
        let (_, dh) = dense_f32(grad, op)?;
        let (dgate, dup) = gpu_swiglu::swiglu_backward(&gpu, &g, &u, &dh).map_err(failed(op))?;
        Ok((f32_storage(&gpu, dgate), f32_storage(&gpu, dup)))
    }

    /// A rank-2 right operand multiplies every row of the left one in a single GEMM. On the
    /// bf16 tensor cores when this thread's `precision` allows it and the shape fits, else on
    /// the f32 SIMT GEMM.
    fn matmul(&self, a: &Operand, b: &Operand, batch: &[usize]) -> Result<Storage> {
        let name = "matmul";
        let (m, k) = (a.shape()[a.rank() - 2], a.shape()[a.rank() - 1]);
        let n = b.shape()[b.rank() - 1];
        let batch_count: usize = batch.iter().product();
        let gpu = Arc::clone(&cuda_storage(a).gpu);
        let (spec, ab, bb) =
            if b.rank() == 2 && a.rank() >= 2 && a.shape()[..a.rank() - 2] == *batch {
                // [batch.., m, k] · [k, n] is one [batch·m, k] · [k, n] product.
                let (bb, b_transposed) = gemm_operand(b)?;
                let (_, ab) = dense_f32(a, name)?;
                let spec = Gemm {
                    b_transposed,
                    ..Gemm::new(batch_count * m, n, k)
                };
                (spec, ab, bb)
            } else {
                // Each operand as [batch, rows, cols]: a view when the broadcast allows, else a copy.
                let (mut a_copy, mut b_copy) = (None, None);
                let expand = |x: &Operand<'_>,
                              rows: usize,
                              cols: usize,
                              copy: &mut Option<Storage>|
                 -> Result<(Arc<Buffer<f32>>, bool)> {
                    let mut shape = batch.to_vec();
                    shape.extend([rows, cols]);
                    let wide = x.broadcast_to(&shape)?;
                    let shape3 = [batch_count, rows, cols];
                    match wide.layout().reshape(&shape3) {
                        Some(layout) => gemm_operand(&wide.with_layout(layout)),
                        None => {
                            let dense = copy.insert(strided_copy(&wide)?);
                            gemm_operand(&Operand::owned(dense, Layout::contiguous(&shape3)))
                        }
                    }
                };
                let (ab, a_transposed) = expand(a, m, k, &mut a_copy)?;
                let (bb, b_transposed) = expand(b, k, n, &mut b_copy)?;
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
        Ok(f32_storage(&gpu, out))
    }

    /// All groups in one tensor-core launch (`grouped_bf16_*`) when the GPU multiplies in
    /// mixed precision and the shapes fit.
    fn grouped_matmul(
        &self,
        x: &Operand,
        groups: &GroupSizes,
        weights: &Operand,
        transpose_weights: bool,
    ) -> Result<Option<Storage>> {
        let op = "grouped_matmul";
        let (gpu, xb) = dense_f32(x, op)?;
        let inner = x.shape()[1];
        let out = weights.shape()[if transpose_weights { 1 } else { 2 }];
        // The weights' rows must be 16-byte chunks, as must x's.
        let weight_row = if transpose_weights { inner } else { out };
        if !precision::current().tensor_core_matmul
            || !inner.is_multiple_of(8)
            || weight_row % 8 != 0
        {
            return Ok(None);
        }
        let (_, wb) = dense_f32(weights, op)?;
        let x16 = ew::to_bf16(&gpu, &xb).map_err(failed(op))?;
        let w16 = ew::to_bf16(&gpu, &wb).map_err(failed(op))?;
        let rows = x.shape()[0];
        let y = gpu.zeros::<f32>(rows * out).map_err(failed(op))?;
        let counts = device_counts(groups, op)?;
        let schedule = gemm_groups(groups, counts.as_deref())?;
        gemm::grouped_gemm_bf16(&gpu, &x16, schedule, &w16, transpose_weights, out, &y)
            .map_err(failed(op))?;
        Ok(Some(f32_storage(&gpu, y)))
    }

    /// All weight gradients in one tensor-core launch (mixed precision, shapes that fit).
    fn grouped_weight_grads(
        &self,
        dy: &Operand,
        x: &Operand,
        groups: &GroupSizes,
    ) -> Result<Option<Storage>> {
        let op = "grouped_weight_grads";
        let (gpu, dyb) = dense_f32(dy, op)?;
        let (out, inner) = (dy.shape()[1], x.shape()[1]);
        if !precision::current().tensor_core_matmul || out % 8 != 0 || inner % 8 != 0 {
            return Ok(None);
        }
        let (_, xb) = dense_f32(x, op)?;
        let dy16 = ew::to_bf16(&gpu, &dyb).map_err(failed(op))?;
        let x16 = ew::to_bf16(&gpu, &xb).map_err(failed(op))?;
        let grads = gpu
            .zeros::<f32>(groups.len() * out * inner)
            .map_err(failed(op))?;
        let counts = device_counts(groups, op)?;
        let row_groups = gemm_groups(groups, counts.as_deref())?;
        gemm::grouped_weight_grad_bf16(&gpu, &dy16, &x16, row_groups, &grads)
            .map_err(failed(op))?;
        Ok(Some(f32_storage(&gpu, grads)))
    }

    /// FlashAttention-2 forward on the tensor cores (bf16 inputs, f32 accumulation). Needs
    /// mixed precision on (it rounds Q, K, V and P to bf16), self-attention and a head
    /// dimension the kernel is built for.
    fn flash_attention(
        &self,
        q: &Operand,
        k: &Operand,
        v: &Operand,
        scale: f64,
    ) -> Result<(Storage, Storage)> {
        let op = "flash_attention";
        let (tokens, head_dim) = (q.shape()[q.rank() - 2], q.shape()[q.rank() - 1]);
        let heads = q.numel() / (tokens * head_dim).max(1);
        if k.shape()[k.rank() - 2] != tokens {
            return Err(TensorError::invalid(
                op,
                "on a GPU, self-attention (as many keys as queries)",
            ));
        }
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
        Ok((f32_storage(&gpu, out.out), f32_storage(&gpu, out.lse)))
    }

    fn fused_attention_available(&self, q: &Operand) -> bool {
        let d = q.shape().last().copied().unwrap_or(0) as u32;
        precision::current().tensor_core_matmul
            && ditmoe_cuda::kernels::attention::BACKWARD_HEAD_DIMS.contains(&d)
    }

    /// The FlashAttention-2 backward on the tensor cores.
    fn flash_attention_backward(
        &self,
        q: &Operand,
        k: &Operand,
        v: &Operand,
        out: &Operand,
        lse: &Operand,
        grad: &Operand,
        scale: f64,
    ) -> Result<[Storage; 3]> {
        let op = "flash_attention_backward";
        if !self.fused_attention_available(q) {
            return Err(TensorError::invalid(
                op,
                format!(
                    "the fused GPU kernels need mixed precision on and a head dim in {:?}; \
                     compose attention from matmul and softmax instead",
                    ditmoe_cuda::kernels::attention::BACKWARD_HEAD_DIMS
                ),
            ));
        }
        let (gpu, qb) = dense_f32(q, op)?;
        let (_, kb) = dense_f32(k, op)?;
        let (_, vb) = dense_f32(v, op)?;
        let (_, ob) = dense_f32(out, op)?;
        let (_, lb) = dense_f32(lse, op)?;
        let (_, gb) = dense_f32(grad, op)?;
        let bf16 = |b: &Buffer<f32>| ew::to_bf16(&gpu, b).map_err(failed(op));
        let (tokens, head_dim) = (q.shape()[q.rank() - 2], q.shape()[q.rank() - 1]);
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
        Ok([
            f32_storage(&gpu, grads.q),
            f32_storage(&gpu, grads.k),
            f32_storage(&gpu, grads.v),
        ])
    }

    /// Sum / mean / max / Σx²: the reduced dimensions are moved last and each remaining row
    /// reduced by the row kernel, as on the CPU; reduced leading dims (a bias gradient: a sum
    /// over the rows of [N, D]) are reduced as columns in place instead.
    fn reduce(&self, x: &Operand, op: ReduceOp, dims: &[usize]) -> Result<Storage> {
        if op.ptx_code().is_none() {
            return Err(self.missing("reduce (min, var)"));
        }
        let name = op.name();
        if let Some(leading) = leading_dims(x, dims).filter(|_| op != ReduceOp::SumOfSquares) {
            let (gpu, xb) = dense_f32(x, name)?;
            let reduced_rows: usize = x.shape()[..leading].iter().product();
            let cols = x.numel() / reduced_rows.max(1);
            let reduced = gpu_rows::reduce_columns(&gpu, op, &xb, reduced_rows, cols)
                .map_err(failed(name))?;
            return Ok(f32_storage(&gpu, reduced));
        }
        let (rows, outer, inner) = reduced_dims_last(x, dims)?;
        let (gpu, xb) = dense_f32(&rows, name)?;
        let reduced = reduce_rows_chunked(&gpu, op, &xb, outer, inner).map_err(failed(name))?;
        Ok(f32_storage(&gpu, reduced))
    }

    /// The row kernel on `dim` moved last; the result is that permuted view.
    fn softmax(&self, x: &Operand, dim: usize) -> Result<Strided> {
        let (moved, inverse) = dim_last(x, dim)?;
        let cols = x.shape()[dim];
        let rows = x.numel() / cols.max(1);
        let (gpu, xb) = dense_f32(&moved, "softmax")?;
        let out = gpu_rows::softmax_rows(&gpu, &xb, rows, cols).map_err(failed("softmax"))?;
        let layout = Layout::contiguous(moved.shape()).permute(&inverse)?;
        Ok((f32_storage(&gpu, out), layout))
    }

    fn layer_norm(
        &self,
        x: &Operand,
        weight: Option<&Operand>,
        bias: Option<&Operand>,
        eps: f64,
    ) -> Result<[Storage; 3]> {
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
        Ok([
            f32_storage(&gpu, out.output),
            f32_storage(&gpu, out.mean),
            f32_storage(&gpu, out.rstd),
        ])
    }

    fn layer_norm_backward(
        &self,
        x: &Operand,
        mean: &Operand,
        rstd: &Operand,
        weight: Option<&Operand>,
        has_bias: bool,
        grad: &Operand,
    ) -> Result<(Storage, Option<Storage>, Option<Storage>)> {
        let op = "layer_norm_backward";
        let cols = *x.shape().last().unwrap_or(&1);
        let rows = x.numel() / cols.max(1);
        let (gpu, xb) = dense_f32(x, op)?;
        let (_, dy) = dense_f32(grad, op)?;
        let (_, mean) = dense_f32(mean, op)?;
        let (_, rstd) = dense_f32(rstd, op)?;
        let saved = gpu_norm::LayerNormStats {
            mean: &mean,
            rstd: &rstd,
        };
        let w = optional_dense(weight, op)?;
        let grads = gpu_norm::layer_norm_backward(
            &gpu,
            &xb,
            saved,
            w.as_deref(),
            has_bias,
            &dy,
            rows,
            cols,
        )
        .map_err(failed(op))?;
        Ok((
            f32_storage(&gpu, grads.input),
            grads.weight.map(|w| f32_storage(&gpu, w)),
            grads.bias.map(|b| f32_storage(&gpu, b)),
        ))
    }

    /// Rows along dim 0 only; out-of-range indices give NaN rows (no host round trip to
    /// check them).
    fn index_select(&self, x: &Operand, dim: usize, index: &Operand) -> Result<Storage> {
        let op = "index_select";
        if dim != 0 {
            return Err(self.missing("index_select (off dim 0)"));
        }
        let rows = x.shape()[0];
        let cols = x.numel() / rows.max(1);
        let (gpu, tb) = dense_f32(x, op)?;
        let ib = dense_indices(index, op)?;
        let out = gpu_index::index_select_rows(&gpu, &tb, &ib, rows, cols).map_err(failed(op))?;
        Ok(f32_storage(&gpu, out))
    }

    /// Rows along dim 0 only (the backward of an embedding lookup); out-of-range indices are
    /// skipped.
    fn index_add(
        &self,
        x: &Operand,
        dim: usize,
        index: &Operand,
        source: &Operand,
    ) -> Result<Storage> {
        let op = "index_add";
        if dim != 0 {
            return Err(self.missing("index_add (off dim 0)"));
        }
        let rows = x.shape()[0];
        let cols = x.numel() / rows.max(1);
        added_into_copy(x, index, source, op, |gpu, out, index, source| {
            gpu_index::index_add_rows(gpu, out, index, source, rows, cols)
        })
    }

    /// Along the last dimension with an index spanning every other dimension only
    /// (out-of-range indices give NaN).
    fn gather(&self, x: &Operand, dim: usize, index: &Operand) -> Result<Storage> {
        let op = "gather";
        if !gathers_last_dim(x, dim, index) {
            return Err(self.missing("gather (off the last dim)"));
        }
        let cols = *x.shape().last().expect("rank >= 1");
        let rows = x.numel() / cols.max(1);
        let (gpu, xb) = dense_f32(x, op)?;
        let ib = dense_indices(index, op)?;
        let out = gpu_index::gather_cols(&gpu, &xb, &ib, rows, cols).map_err(failed(op))?;
        Ok(f32_storage(&gpu, out))
    }

    /// Along the last dimension as [`Backend::gather`] (out-of-range indices are skipped).
    fn scatter_add(
        &self,
        x: &Operand,
        dim: usize,
        index: &Operand,
        source: &Operand,
    ) -> Result<Storage> {
        let op = "scatter_add";
        if !gathers_last_dim(x, dim, index) {
            return Err(self.missing("scatter_add (off the last dim)"));
        }
        let cols = *x.shape().last().expect("rank >= 1");
        let rows = x.numel() / cols.max(1);
        added_into_copy(x, index, source, op, |gpu, out, index, source| {
            gpu_index::scatter_add_cols(gpu, out, index, source, rows, cols)
        })
    }

    /// The largest only, in descending order; the results are views with `dim` back in place.
    fn topk(&self, x: &Operand, k: usize, dim: usize, largest: bool) -> Result<(Strided, Strided)> {
        let op = "topk";
        if !largest {
            return Err(self.missing("topk (smallest)"));
        }
        let (moved, inverse) = dim_last(x, dim)?;
        let cols = x.shape()[dim];
        let rows = x.numel() / cols.max(1);
        let (gpu, xb) = dense_f32(&moved, op)?;
        let (values, indices) =
            gpu_index::topk_rows(&gpu, &xb, rows, cols, k).map_err(failed(op))?;
        let mut shape = moved.shape().to_vec();
        *shape.last_mut().expect("rank >= 1") = k;
        let layout = Layout::contiguous(&shape).permute(&inverse)?;
        Ok((
            (f32_storage(&gpu, values), layout.clone()),
            (u32_storage(&gpu, indices), layout),
        ))
    }

    /// One fused kernel (`adamw_f32`).
    fn adamw(
        &self,
        param: &Operand,
        grad: &Operand,
        m: &Operand,
        v: &Operand,
        hyper: &AdamWHyper,
    ) -> Result<[Storage; 3]> {
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
        Ok([
            f32_storage(&gpu, next.param),
            f32_storage(&gpu, next.m),
            f32_storage(&gpu, next.v),
        ])
    }

    fn token_choice_positions(&self, picks: &Operand, num_experts: usize) -> Result<Storage> {
        let op = "token_choice_positions";
        let gpu = &cuda_storage(picks).gpu;
        let buffer = dense_indices(picks, op)?;
        let k = picks.shape()[1];
        let positions = gpu_routing::token_choice_positions(gpu, &buffer, k, num_experts)
            .map_err(failed(op))?;
        Ok(u32_storage(gpu, positions))
    }

    fn expert_choice_positions(&self, picks: &Operand, group_tokens: usize) -> Result<Storage> {
        let op = "expert_choice_positions";
        let gpu = &cuda_storage(picks).gpu;
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
        Ok(u32_storage(gpu, positions))
    }

    fn expert_race_positions(&self, scores: &Operand, picks: usize) -> Result<Storage> {
        let op = "expert_race_positions";
        let (gpu, buffer) = dense_f32(scores, op)?;
        let positions =
            gpu_routing::expert_race_positions(&gpu, &buffer, picks).map_err(failed(op))?;
        Ok(u32_storage(&gpu, positions))
    }

    /// Nothing is downloaded: the group sizes stay on the device too.
    fn dispatch_order(&self, positions: &Operand, num_experts: usize) -> Result<DispatchStorage> {
        let op = "dispatch_order";
        let gpu = &cuda_storage(positions).gpu;
        let buffer = dense_indices(positions, op)?;
        let sorted = gpu_routing::dispatch_order(gpu, &buffer, num_experts).map_err(failed(op))?;
        Ok(DispatchStorage {
            order: u32_storage(gpu, sorted.order),
            token_of: u32_storage(gpu, sorted.token_of),
            expert_of: u32_storage(gpu, sorted.expert_of),
            group_sizes: GroupCounts::Device(u32_storage(gpu, sorted.counts)),
        })
    }
}

/// A dense copy of `x` with `source` added in at `index` by `add` (a scatter-add kernel).
fn added_into_copy(
    x: &Operand,
    index: &Operand,
    source: &Operand,
    op: &'static str,
    add: impl FnOnce(
        &Gpu,
        &Buffer<f32>,
        &Buffer<u32>,
        &Buffer<f32>,
    ) -> std::result::Result<(), CudaError>,
) -> Result<Storage> {
    let copy = strided_copy(x)?;
    let (gpu, out) = dense_f32(&Operand::owned(&copy, Layout::contiguous(x.shape())), op)?;
    let ib = dense_indices(index, op)?;
    let (_, src) = dense_f32(source, op)?;
    add(&gpu, &out, &ib, &src).map_err(failed(op))?;
    Ok(copy)
}

/// Whether a gather / scatter-add works along the last dimension with an index that spans every
/// other dimension — the case the column kernels take.
fn gathers_last_dim(x: &Operand, dim: usize, index: &Operand) -> bool {
    let r = x.rank();
    r > 0 && dim == r - 1 && index.shape()[..r - 1] == x.shape()[..r - 1]
}
