//! Fused scaled-dot-product attention, FlashAttention-2 style (Dao, 2023:
//! "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning").
//!
//! Forward: for each tile of `BR` query rows, stream the keys and values in tiles of `BC`,
//! keeping per row only a running maximum `m`, a running normaliser `l` and an unnormalised
//! output accumulator (the online softmax of Milakov & Gimelshein, 2018). The T×T score matrix
//! is never stored: memory is O(T·d). The per-row log-sum-exp `lse = m + ln l` is saved.
//! Backward: recompute each score tile, P = exp(S − lse), and with D = rowsum(dO ∘ O):
//! dV += Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − D), dQ += scale · dS K, dK += scale · dSᵀ Q.
//! The CPU kernel is `backend/cpu/attention.rs`; the GPU one (tensor cores, bf16) is
//! `ditmoe-cuda`'s `attention` kernels.

use crate::backend::on_device;
use crate::descriptors::AttentionGrads;
use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::Tensor;

/// Checks `q`, `k`, `v`: `[.., Tq, d]`, `[.., Tk, d]`, `[.., Tk, d]` of one dtype.
fn check_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    if q.rank() < 2 {
        return Err(TensorError::shape(
            "attention",
            "q of rank >= 2 ([.., T, d])",
            q.shape(),
        ));
    }
    let r = q.rank();
    let mut kv_shape = q.shape().to_vec();
    kv_shape[r - 2] = k.shape().get(r - 2).copied().unwrap_or(0);
    k.check_shape("attention (k)", &kv_shape)?;
    v.check_shape("attention (v)", &kv_shape)?;
    for t in [k, v] {
        t.check_dtype("attention", q.dtype())?;
    }
    Ok(())
}

impl Tensor {
    /// softmax(q·kᵀ·scale)·v over the last two dims of `[.., T, d]` inputs, fused (see the
    /// module docs). Returns the output and the per-row log-sum-exp `[.., Tq]`.
    pub fn flash_attention(&self, k: &Tensor, v: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
        check_attention(self, k, v)?;
        let ((out, lse), device) =
            Tensor::run_on_backend("flash_attention", &[self, k, v], |backend, x| {
                backend.flash_attention(&x[0], &x[1], &x[2], scale)
            })?;
        Ok((
            Tensor::from_backend(out, Layout::contiguous(self.shape()), device),
            Tensor::from_backend(
                lse,
                Layout::contiguous(&self.shape()[..self.rank() - 1]),
                device,
            ),
        ))
    }

    /// Whether [`Tensor::flash_attention`] and its backward can run for this `q` (`[.., T, d]`):
    /// always on the CPU; on a GPU when it multiplies in mixed precision and the kernels are
    /// built for `d` (self-attention).
    pub fn fused_attention_available(&self) -> bool {
        on_device(self.device(), |backend| {
            backend.fused_attention_available(&self.operand())
        })
    }

    /// Gradients of [`Tensor::flash_attention`] given its inputs, its saved output and
    /// log-sum-exp, and the output gradient; the scores are recomputed tile by tile.
    pub fn flash_attention_backward(
        &self,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        grad_out: &Tensor,
        scale: f64,
    ) -> Result<AttentionGrads> {
        check_attention(self, k, v)?;
        out.check_shape("flash_attention_backward (out)", self.shape())?;
        grad_out.check_shape("flash_attention_backward (grad)", self.shape())?;
        lse.check_shape(
            "flash_attention_backward (lse)",
            &self.shape()[..self.rank() - 1],
        )?;
        let inputs = [self, k, v, out, lse, grad_out];
        let ([dq, dk, dv], device) =
            Tensor::run_on_backend("flash_attention_backward", &inputs, |backend, x| {
                backend.flash_attention_backward(&x[0], &x[1], &x[2], &x[3], &x[4], &x[5], scale)
            })?;
        Ok(AttentionGrads {
            q: Tensor::from_backend(dq, Layout::contiguous(self.shape()), device),
            k: Tensor::from_backend(dk, Layout::contiguous(k.shape()), device),
            v: Tensor::from_backend(dv, Layout::contiguous(v.shape()), device),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_strided};

    /// Naive attention: materialise S = q·kᵀ·scale, softmax rows, multiply by v.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> (Tensor, Tensor) {
        let s = q
            .matmul(&k.t().unwrap())
            .unwrap()
            .mul_scalar(scale)
            .unwrap();
        let last = s.rank() - 1;
        let lse = s.exp().unwrap().sum(&[last], false).unwrap().log().unwrap();
        (s.softmax(last).unwrap().matmul(v).unwrap(), lse)
    }

    #[test]
    fn fused_forward_matches_naive_across_tile_edges() {
        for (t, tk, d) in [(1, 1, 4), (33, 70, 8), (100, 65, 16)] {
            let q = random_strided(&[2, 3, t, d], -2.0, 2.0, 1);
            let k = random_strided(&[2, 3, tk, d], -2.0, 2.0, 2);
            let v = random_strided(&[2, 3, tk, d], -2.0, 2.0, 3);
            let (o, lse) = q.flash_attention(&k, &v, 0.35).unwrap();
            let (o_ref, lse_ref) = naive(&q, &k, &v, 0.35);
            assert_close(&o.to_vec_f64(), &o_ref.to_vec_f64(), 1e-12, "out");
            assert_close(&lse.to_vec_f64(), &lse_ref.to_vec_f64(), 1e-12, "lse");
        }
    }

    #[test]
    fn mismatched_shapes_are_reported() {
        let q = Tensor::zeros(&[1, 4, 8], crate::DType::F32).unwrap();
        let k = Tensor::zeros(&[1, 5, 4], crate::DType::F32).unwrap();
        let err = q.flash_attention(&k, &k, 1.0).unwrap_err().to_string();
        assert!(
            err.contains("[1, 5, 8]") && err.contains("[1, 5, 4]"),
            "{err}"
        );
    }
}
