//! The seam between the ops and the devices (after candle's `BackendStorage`).
//!
//! A [`Backend`] computes on storage seen through a layout ([`Operand`]) and returns new
//! storage; it never sees a [`Tensor`](crate::Tensor). The public op methods in `ops/` check
//! shapes and dtypes, prepare views and wrap the storage that comes back; they never name a
//! device. [`on_device`] is the one place that maps a device to its backend. An op a backend
//! lacks falls to the trait's default method, which fails with `NoCudaKernel` naming the op —
//! it never runs another backend's code.
//!
//! Adding an op: a method here (with the default), the CPU kernel in `cpu/`, the GPU launch
//! in `cuda.rs` if there is one, and the public method in `ops/` that calls it.

pub mod cpu;
pub(crate) mod cuda;

use std::borrow::Cow;

use crate::descriptors::{AdamWHyper, BinaryOp, GroupSizes, ReduceOp, UnaryOp};
use crate::dtype::{DType, Element};
use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::storage::Storage;
use crate::Device;

/// What a backend reads: a storage seen through a layout (any view of it).
#[derive(Debug, Clone)]
pub(crate) struct Operand<'a> {
    storage: &'a Storage,
    layout: Cow<'a, Layout>,
}

impl<'a> Operand<'a> {
    pub fn new(storage: &'a Storage, layout: &'a Layout) -> Operand<'a> {
        Operand {
            storage,
            layout: Cow::Borrowed(layout),
        }
    }

    /// A view through a layout the caller made.
    pub fn owned(storage: &'a Storage, layout: Layout) -> Operand<'a> {
        Operand {
            storage,
            layout: Cow::Owned(layout),
        }
    }

    pub fn storage(&self) -> &'a Storage {
        self.storage
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// The same storage through another layout (a view).
    pub fn with_layout(&self, layout: Layout) -> Operand<'a> {
        Operand {
            storage: self.storage,
            layout: Cow::Owned(layout),
        }
    }
    pub fn permute(&self, perm: &[usize]) -> Result<Operand<'a>> {
        Ok(self.with_layout(self.layout.permute(perm)?))
    }
    pub fn transpose(&self, dim0: usize, dim1: usize) -> Result<Operand<'a>> {
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(dim0, dim1);
        self.permute(&perm)
    }
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Operand<'a>> {
        Ok(self.with_layout(self.layout.broadcast_to(shape)?))
    }

    /// The elements in row-major logical order, borrowed when the layout is contiguous; fails
    /// unless the storage is host memory of type `T`.
    pub fn values<T: Element>(&self) -> Result<Cow<'a, [T]>> {
        let data = T::slice(self.storage).ok_or(TensorError::DType {
            op: "values",
            expected: T::DTYPE,
            found: self.dtype(),
        })?;
        if self.is_contiguous() {
            let start = self.layout.offset();
            Ok(Cow::Borrowed(&data[start..start + self.numel()]))
        } else {
            Ok(Cow::Owned(self.layout.gather(data)))
        }
    }
}

impl Operand<'_> {
    /// The elements of a host view converted to `f64`, whatever the dtype.
    pub fn gathered_f64(&self) -> Vec<f64> {
        self.layout
            .offsets()
            .map(|i| self.storage.get_f64(i))
            .collect()
    }

    /// The elements of a host view in row-major order, as new contiguous storage.
    pub fn gathered(&self) -> Storage {
        let layout = self.layout();
        match self.storage {
            Storage::F32(v) => Storage::F32(layout.gather(v)),
            Storage::F64(v) => Storage::F64(layout.gather(v)),
            Storage::BF16(v) => Storage::BF16(layout.gather(v)),
            Storage::F16(v) => Storage::F16(layout.gather(v)),
            Storage::I64(v) => Storage::I64(layout.gather(v)),
            Storage::Cuda(_) => unreachable!("device storage is gathered by its backend"),
        }
    }
}

/// Host `storage` seen through `layout`, as plain contiguous storage: the storage itself when
/// the layout is its whole buffer in row-major order (no copy), else a gathered copy.
pub(crate) fn contiguous_storage(storage: Storage, layout: Layout) -> Storage {
    if layout.is_contiguous() && layout.offset() == 0 && storage.len() == layout.numel() {
        storage
    } else {
        Operand::owned(&storage, layout).gathered()
    }
}

/// `x` with the (checked, distinct) `dims` moved last, in that order — every dim when
/// `dims` is empty — as `outer` rows of `inner` elements: how every backend reduces.
pub(crate) fn reduced_dims_last<'a>(
    x: &Operand<'a>,
    dims: &[usize],
) -> Result<(Operand<'a>, usize, usize)> {
    let all: Vec<usize> = (0..x.rank()).collect();
    let dims = if dims.is_empty() { &all[..] } else { dims };
    let mut perm: Vec<usize> = (0..x.rank()).filter(|d| !dims.contains(d)).collect();
    perm.extend_from_slice(dims);
    let inner: usize = dims.iter().map(|&d| x.shape()[d]).product();
    let outer = perm[..x.rank() - dims.len()]
        .iter()
        .map(|&d| x.shape()[d])
        .product();
    Ok((x.permute(&perm)?, outer, inner))
}

/// A result that is a view of new storage (a kernel that writes a permuted order).
pub(crate) type Strided = (Storage, Layout);

/// What the MoE dispatch returns: the sorted pairs and the pairs per expert (left on the
/// device when the backend computed them there).
pub(crate) struct DispatchStorage {
    pub order: Storage,
    pub token_of: Storage,
    pub expert_of: Storage,
    pub group_sizes: GroupCounts,
}

/// Pairs per expert: on the host, or `[E]` counts in the backend's memory.
pub(crate) enum GroupCounts {
    Host(Vec<usize>),
    Device(Storage),
}

/// One parameter's part of [`Backend::optimizer_step`]: its buffer and, each optional, its
/// AdamW state with this step's gradient and its EMA shadow — all of one length, contiguous.
pub(crate) struct ParamStep<'a> {
    pub param: &'a mut Storage,
    pub adam: Option<AdamState<'a>>,
    pub ema: Option<&'a mut Storage>,
}

/// A parameter's gradient (flattened to one dimension) and its two AdamW moments.
pub(crate) struct AdamState<'a> {
    pub grad: Operand<'a>,
    pub m: &'a mut Storage,
    pub v: &'a mut Storage,
}

/// The operations a device provides. Every operand is on this backend's device; shapes and
/// dtypes were checked by the caller, and the results are contiguous unless the method says
/// otherwise. A method a backend does not implement fails with `NoCudaKernel` naming the op.
pub(crate) trait Backend {
    /// The device this backend computes on.
    fn device(&self) -> Device;

    /// The error of an op this backend lacks.
    fn missing(&self, op: &'static str) -> TensorError {
        TensorError::NoCudaKernel {
            op,
            device: self.device(),
        }
    }

    // Memory.
    /// A contiguous copy of a view.
    fn contiguous(&self, x: &Operand) -> Result<Storage>;
    /// Zeros of `shape`.
    fn zeros(&self, _shape: &[usize], _dtype: DType) -> Result<Storage> {
        Err(self.missing("zeros"))
    }
    /// A host view copied into this device's memory (contiguous).
    fn upload(&self, _host: &Operand) -> Result<Storage> {
        Err(self.missing("to_device"))
    }
    /// A view of this device's memory copied to the host (contiguous).
    fn download(&self, _x: &Operand) -> Result<Storage> {
        Err(self.missing("to_device"))
    }
    /// Every element converted to `dtype`.
    fn to_dtype(&self, _x: &Operand, _dtype: DType) -> Result<Storage> {
        Err(self.missing("to_dtype"))
    }
    /// Operands joined along `dim` into a tensor of `shape`.
    fn concat(&self, _pieces: &[Operand], _dim: usize, _shape: &[usize]) -> Result<Storage> {
        Err(self.missing("concat"))
    }

    // Elementwise.
    fn unary(&self, _x: &Operand, _op: UnaryOp) -> Result<Storage> {
        Err(self.missing("unary"))
    }
    /// `grad · op'(x)`.
    fn unary_backward(&self, _x: &Operand, _op: UnaryOp, _grad: &Operand) -> Result<Storage> {
        Err(self.missing("unary_backward"))
    }
    /// `a op b` of two operands of one (broadcast) shape.
    fn binary(&self, _a: &Operand, _b: &Operand, _op: BinaryOp) -> Result<Storage> {
        Err(self.missing("binary"))
    }
    /// `start + weight · (end − start)`.
    fn lerp(&self, _start: &Operand, _end: &Operand, _weight: f64) -> Result<Storage> {
        Err(self.missing("lerp"))
    }
    /// `condition != 0 ? on_true : on_false`, the three of one (broadcast) shape.
    fn where_cond(
        &self,
        _condition: &Operand,
        _on_true: &Operand,
        _on_false: &Operand,
    ) -> Result<Storage> {
        Err(self.missing("where_cond"))
    }
    /// SwiGLU's `silu(gate) · up`.
    fn swiglu(&self, _gate: &Operand, _up: &Operand) -> Result<Storage> {
        Err(self.missing("swiglu"))
    }
    /// Its gradients (d gate, d up).
    fn swiglu_backward(
        &self,
        _gate: &Operand,
        _up: &Operand,
        _grad: &Operand,
    ) -> Result<(Storage, Storage)> {
        Err(self.missing("swiglu_backward"))
    }

    // Products.
    /// `[.., m, k] · [.., k, n]` with the batch dims `batch` broadcast.
    fn matmul(&self, _a: &Operand, _b: &Operand, _batch: &[usize]) -> Result<Storage> {
        Err(self.missing("matmul"))
    }
    /// All groups of a grouped matmul in one launch, or `None` when this backend has no such
    /// kernel for these shapes (the caller then multiplies group by group).
    fn grouped_matmul(
        &self,
        _x: &Operand,
        _groups: &GroupSizes,
        _weights: &Operand,
        _transpose_weights: bool,
    ) -> Result<Option<Storage>> {
        Ok(None)
    }
    /// All weight gradients `[G, out, in]` of a grouped matmul in one launch, or `None`.
    fn grouped_weight_grads(
        &self,
        _dy: &Operand,
        _x: &Operand,
        _groups: &GroupSizes,
    ) -> Result<Option<Storage>> {
        Ok(None)
    }
    /// Attention of `q`, `k`, `v` (`[.., tokens, head_dim]`, the leading dims one head
    /// each): the output and the row log-sum-exp.
    fn flash_attention(
        &self,
        _q: &Operand,
        _k: &Operand,
        _v: &Operand,
        _scale: f64,
    ) -> Result<(Storage, Storage)> {
        Err(self.missing("flash_attention"))
    }
    /// Whether [`Backend::flash_attention`] and its backward take `q`.
    fn fused_attention_available(&self, _q: &Operand) -> bool {
        false
    }
    /// dQ, dK, dV from the saved output and log-sum-exp.
    #[allow(clippy::too_many_arguments)]
    fn flash_attention_backward(
        &self,
        _q: &Operand,
        _k: &Operand,
        _v: &Operand,
        _out: &Operand,
        _lse: &Operand,
        _grad: &Operand,
        _scale: f64,
    ) -> Result<[Storage; 3]> {
        Err(self.missing("flash_attention_backward"))
    }

    // Reductions and rows.
    /// `op` over the distinct, checked `dims` (every dim when empty); the result has the
    /// reduced dims removed (its layout is the caller's to choose).
    fn reduce(&self, _x: &Operand, _op: ReduceOp, _dims: &[usize]) -> Result<Storage> {
        Err(self.missing("reduce"))
    }
    /// The i64 index of the largest element along `dim` (the first on ties), dim removed.
    fn argmax(&self, _x: &Operand, _dim: usize) -> Result<Storage> {
        Err(self.missing("argmax"))
    }
    /// Softmax along `dim`; the result may be a permuted view.
    fn softmax(&self, _x: &Operand, _dim: usize) -> Result<Strided> {
        Err(self.missing("softmax"))
    }
    fn log_softmax(&self, _x: &Operand, _dim: usize) -> Result<Storage> {
        Err(self.missing("log_softmax"))
    }
    /// Layer norm over the last dim: output, per-row mean and 1/σ.
    fn layer_norm(
        &self,
        _x: &Operand,
        _weight: Option<&Operand>,
        _bias: Option<&Operand>,
        _eps: f64,
    ) -> Result<[Storage; 3]> {
        Err(self.missing("layer_norm"))
    }
    /// dx, dweight (with a weight), dbias (with `has_bias`).
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        _x: &Operand,
        _mean: &Operand,
        _rstd: &Operand,
        _weight: Option<&Operand>,
        _has_bias: bool,
        _grad: &Operand,
    ) -> Result<(Storage, Option<Storage>, Option<Storage>)> {
        Err(self.missing("layer_norm_backward"))
    }

    // Indexing.
    fn index_select(&self, _x: &Operand, _dim: usize, _index: &Operand) -> Result<Storage> {
        Err(self.missing("index_select"))
    }
    fn index_add(
        &self,
        _x: &Operand,
        _dim: usize,
        _index: &Operand,
        _source: &Operand,
    ) -> Result<Storage> {
        Err(self.missing("index_add"))
    }
    fn gather(&self, _x: &Operand, _dim: usize, _index: &Operand) -> Result<Storage> {
        Err(self.missing("gather"))
    }
    fn scatter_add(
        &self,
        _x: &Operand,
        _dim: usize,
        _index: &Operand,
        _source: &Operand,
    ) -> Result<Storage> {
        Err(self.missing("scatter_add"))
    }
    /// The `k` largest (or smallest) along `dim`, sorted, and their i64 indices; each may be
    /// a permuted view.
    fn topk(
        &self,
        _x: &Operand,
        _k: usize,
        _dim: usize,
        _largest: bool,
    ) -> Result<(Strided, Strided)> {
        Err(self.missing("topk"))
    }

    /// One-hot rows (`f64`) of i64 classes.
    fn one_hot(&self, _x: &Operand, _num_classes: usize) -> Result<Storage> {
        Err(self.missing("one_hot"))
    }

    // Optimizer.
    /// One AdamW step: the new parameter and moments.
    fn adamw(
        &self,
        _param: &Operand,
        _grad: &Operand,
        _m: &Operand,
        _v: &Operand,
        _hyper: &AdamWHyper,
    ) -> Result<[Storage; 3]> {
        Err(self.missing("adamw_update"))
    }

    /// One optimizer step of many parameters, in place: AdamW where a parameter has a
    /// gradient (`adam`), then the EMA `ema ← ema + ema_weight·(param − ema)` where it has a
    /// shadow. The default composes [`Backend::adamw`] and [`Backend::lerp`] and swaps the new
    /// buffers in; the CPU overrides it with one pass over all parameters together.
    fn optimizer_step(
        &self,
        params: &mut [ParamStep],
        hyper: &AdamWHyper,
        ema_weight: f64,
    ) -> Result<()> {
        for step in params.iter_mut() {
            let layout = Layout::contiguous(&[step.param.len()]);
            if let Some(adam) = &mut step.adam {
                let whole = |s| Operand::new(s, &layout);
                let [param, m, v] = self.adamw(
                    &whole(step.param),
                    &adam.grad,
                    &whole(adam.m),
                    &whole(adam.v),
                    hyper,
                )?;
                (*step.param, *adam.m, *adam.v) = (param, m, v);
            }
            if let Some(ema) = &mut step.ema {
                let whole = |s| Operand::new(s, &layout);
                **ema = self.lerp(&whole(ema), &whole(step.param), ema_weight)?;
            }
        }
        Ok(())
    }

    // MoE routing.
    fn token_choice_positions(&self, _picks: &Operand, _num_experts: usize) -> Result<Storage> {
        Err(self.missing("token_choice_positions"))
    }
    fn expert_choice_positions(&self, _picks: &Operand, _group_tokens: usize) -> Result<Storage> {
        Err(self.missing("expert_choice_positions"))
    }
    fn expert_race_positions(&self, _scores: &Operand, _picks: usize) -> Result<Storage> {
        Err(self.missing("expert_race_positions"))
    }
    fn dispatch_order(&self, _positions: &Operand, _num_experts: usize) -> Result<DispatchStorage> {
        Err(self.missing("dispatch_order"))
    }
}

/// Runs `f` with the backend of `device`: the one `match` on the device in the tensor crate.
pub(crate) fn on_device<R>(device: Device, f: impl FnOnce(&dyn Backend) -> R) -> R {
    match device {
        Device::Cpu => f(&cpu::CpuBackend),
        Device::Cuda(ordinal) => f(&cuda::CudaBackend { ordinal }),
    }
}
