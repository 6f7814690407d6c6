//! The CPU backend: every op, multi-threaded on the one `rayon` pool, generic over `f32` and
//! `f64` (`with_float_type!`); the kernels live one family per file.

mod attention;
mod copy;
mod elementwise;
mod index;
mod matmul;
mod optim;
mod routing;
mod rows;

pub use elementwise::{BinaryMath, UnaryMath};
pub use rows::ReduceMath;

use crate::backend::{Backend, DispatchStorage, Operand, ParamStep, Strided};
use crate::descriptors::{AdamWHyper, BinaryOp, GroupSizes, ReduceOp, UnaryOp};
use crate::dtype::DType;
use crate::error::Result;
use crate::layout::Layout;
use crate::storage::Storage;
use crate::Device;

/// The host's backend.
pub(crate) struct CpuBackend;

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn contiguous(&self, x: &Operand) -> Result<Storage> {
        Ok(x.gathered())
    }
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Storage> {
        Ok(Storage::from_fn(dtype, shape.iter().product(), |_| 0.0))
    }
    fn to_dtype(&self, x: &Operand, dtype: DType) -> Result<Storage> {
        Ok(copy::to_dtype(x, dtype))
    }
    fn concat(&self, pieces: &[Operand], dim: usize, shape: &[usize]) -> Result<Storage> {
        copy::concat(pieces, dim, shape)
    }

    fn unary(&self, x: &Operand, op: UnaryOp) -> Result<Storage> {
        elementwise::unary(x, op)
    }
    fn unary_backward(&self, x: &Operand, op: UnaryOp, grad: &Operand) -> Result<Storage> {
        elementwise::unary_backward(x, op, grad)
    }
    fn binary(&self, a: &Operand, b: &Operand, op: BinaryOp) -> Result<Storage> {
        elementwise::binary(a, b, op)
    }
    fn lerp(&self, start: &Operand, end: &Operand, weight: f64) -> Result<Storage> {
        elementwise::lerp(start, end, weight)
    }
    fn where_cond(
        &self,
        condition: &Operand,
        on_true: &Operand,
        on_false: &Operand,
    ) -> Result<Storage> {
        elementwise::where_cond(condition, on_true, on_false)
    }
    fn swiglu(&self, gate: &Operand, up: &Operand) -> Result<Storage> {
        elementwise::swiglu(gate, up)
    }
    fn swiglu_backward(
        &self,
        gate: &Operand,
        up: &Operand,
        grad: &Operand,
    ) -> Result<(Storage, Storage)> {
        elementwise::swiglu_backward(gate, up, grad)
    }

    fn matmul(&self, a: &Operand, b: &Operand, batch: &[usize]) -> Result<Storage> {
        matmul::matmul(a, b, batch)
    }
    fn grouped_matmul(
        &self,
        x: &Operand,
        groups: &GroupSizes,
        weights: &Operand,
        transpose_weights: bool,
    ) -> Result<Option<Storage>> {
        matmul::grouped_matmul(x, groups, weights, transpose_weights).map(Some)
    }
    fn grouped_weight_grads(
        &self,
        dy: &Operand,
        x: &Operand,
        groups: &GroupSizes,
    ) -> Result<Option<Storage>> {
        matmul::grouped_weight_grads(dy, x, groups).map(Some)
    }
    fn flash_attention(
        &self,
        q: &Operand,
        k: &Operand,
        v: &Operand,
        scale: f64,
    ) -> Result<(Storage, Storage)> {
        attention::flash_attention(q, k, v, scale)
    }
    fn fused_attention_available(&self, _q: &Operand) -> bool {
        true
    }
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
        attention::flash_attention_backward(q, k, v, out, lse, grad, scale)
    }

    fn reduce(&self, x: &Operand, op: ReduceOp, dims: &[usize]) -> Result<Storage> {
        rows::reduce(x, op, dims)
    }
    fn argmax(&self, x: &Operand, dim: usize) -> Result<Storage> {
        rows::argmax(x, dim)
    }
    fn softmax(&self, x: &Operand, dim: usize) -> Result<Strided> {
        Ok((rows::softmax(x, dim)?, Layout::contiguous(x.shape())))
    }
    fn log_softmax(&self, x: &Operand, dim: usize) -> Result<Storage> {
        rows::log_softmax(x, dim)
    }
    fn layer_norm(
        &self,
        x: &Operand,
        weight: Option<&Operand>,
        bias: Option<&Operand>,
        eps: f64,
    ) -> Result<[Storage; 3]> {
        rows::layer_norm(x, weight, bias, eps)
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
        rows::layer_norm_backward(x, (mean, rstd), weight, has_bias, grad)
    }

    fn index_select(&self, x: &Operand, dim: usize, index: &Operand) -> Result<Storage> {
        index::index_select(x, dim, index)
    }
    fn index_add(
        &self,
        x: &Operand,
        dim: usize,
        index: &Operand,
        source: &Operand,
    ) -> Result<Storage> {
        index::index_add(x, dim, index, source)
    }
    fn gather(&self, x: &Operand, dim: usize, index: &Operand) -> Result<Storage> {
        index::gather(x, dim, index)
    }
    fn scatter_add(
        &self,
        x: &Operand,
        dim: usize,
        index: &Operand,
        source: &Operand,
    ) -> Result<Storage> {
        index::scatter_add(x, dim, index, source)
    }
    fn topk(&self, x: &Operand, k: usize, dim: usize, largest: bool) -> Result<(Strided, Strided)> {
        index::topk(x, k, dim, largest)
    }
    fn one_hot(&self, x: &Operand, num_classes: usize) -> Result<Storage> {
        index::one_hot(x, num_classes)
    }

    fn adamw(
        &self,
        param: &Operand,
        grad: &Operand,
        m: &Operand,
        v: &Operand,
        hyper: &AdamWHyper,
    ) -> Result<[Storage; 3]> {
        optim::adamw(param, grad, m, v, hyper)
    }
    fn optimizer_step(
        &self,
        params: &mut [ParamStep],
        hyper: &AdamWHyper,
        ema_weight: f64,
    ) -> Result<()> {
        optim::optimizer_step(params, hyper, ema_weight)
    }

    fn token_choice_positions(&self, picks: &Operand, num_experts: usize) -> Result<Storage> {
        routing::token_choice_positions(picks, num_experts)
    }
    fn expert_choice_positions(&self, picks: &Operand, group_tokens: usize) -> Result<Storage> {
        routing::expert_choice_positions(picks, group_tokens)
    }
    fn expert_race_positions(&self, scores: &Operand, picks: usize) -> Result<Storage> {
        routing::expert_race_positions(scores, picks)
    }
    fn dispatch_order(&self, positions: &Operand, num_experts: usize) -> Result<DispatchStorage> {
        routing::dispatch_order(positions, num_experts)
    }
}
