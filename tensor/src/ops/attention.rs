//! Fused scaled-dot-product attention on the CPU, FlashAttention-2 style (Dao, 2023:
//! "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning").
//!
//! Forward: for each tile of `BR` query rows, stream the keys and values in tiles of `BC`,
//! keeping per row only a running maximum `m`, a running normaliser `l` and an unnormalised
//! output accumulator (the online softmax of Milakov & Gimelshein, 2018). The T×T score matrix
//! is never stored: memory is O(T·d). The per-row log-sum-exp `lse = m + ln l` is saved.
//! Backward: recompute each score tile, P = exp(S − lse), and with D = rowsum(dO ∘ O):
//! dV += Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − D), dQ += scale · dS K, dK += scale · dSᵀ Q.
//! Work is split over (batch, head) pairs, so every dQ row is owned by one thread (no atomics).

use crate::dtype::FloatElement;
use crate::error::{Result, TensorError};
use crate::parallel::pool;
use crate::{with_float_type, Tensor};
use rayon::prelude::*;

/// Query rows per tile.
const BR: usize = 32;
/// Key/value rows per tile.
const BC: usize = 64;

/// The gradients of attention with respect to its three inputs.
#[derive(Debug, Clone)]
pub struct AttentionGrads {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
}

/// Dot product with eight independent partial sums, so the compiler can keep them in SIMD
/// lanes (a single running sum would serialise every addition).
fn dot<T: FloatElement>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::zero(); 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: T = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(&x, &y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().copied().sum::<T>() + tail
}

fn axpy<T: FloatElement>(alpha: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// Checks q [.., Tq, d], k and v [.., Tk, d] with equal leading dims; returns (groups, Tq, Tk, d).
fn attention_dims(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(usize, usize, usize, usize)> {
    if q.rank() < 2 {
        return Err(TensorError::shape(
            "attention",
            "q of rank >= 2 ([.., T, d])",
            q.shape(),
        ));
    }
    let r = q.rank();
    let (tq, d) = (q.shape()[r - 2], q.shape()[r - 1]);
    let mut kv_shape = q.shape().to_vec();
    kv_shape[r - 2] = k.shape().get(r - 2).copied().unwrap_or(0);
    k.check_shape("attention (k)", &kv_shape)?;
    v.check_shape("attention (v)", &kv_shape)?;
    for t in [k, v] {
        t.check_dtype("attention", q.dtype())?;
    }
    let groups = q.shape()[..r - 2].iter().product();
    Ok((groups, tq, kv_shape[r - 2], d))
}

fn forward_one_head<T: FloatElement>(
    q: &[T],
    k: &[T],
    v: &[T],
    (tq, tk, d): (usize, usize, usize),
    scale: T,
    o: &mut [T],
    lse: &mut [T],
) {
    let mut scores = [T::zero(); BC];
    for i0 in (0..tq).step_by(BR) {
        let rows = BR.min(tq - i0);
        let mut m = vec![T::neg_infinity(); rows];
        let mut l = vec![T::zero(); rows];
        let acc = &mut o[i0 * d..(i0 + rows) * d];
        acc.iter_mut().for_each(|a| *a = T::zero());
        for j0 in (0..tk).step_by(BC) {
            let cols = BC.min(tk - j0);
            for r in 0..rows {
                let q_row = &q[(i0 + r) * d..(i0 + r + 1) * d];
                let s = &mut scores[..cols];
                for (c, s) in s.iter_mut().enumerate() {
                    *s = scale * dot(q_row, &k[(j0 + c) * d..(j0 + c + 1) * d]);
                }
                let m_new = s.iter().copied().fold(m[r], T::max);
                let rescale = (m[r] - m_new).exp();
                let acc_row = &mut acc[r * d..(r + 1) * d];
                acc_row.iter_mut().for_each(|a| *a *= rescale);
                let mut row_sum = T::zero();
                for (c, &s) in s.iter().enumerate() {
                    let p = (s - m_new).exp();
                    row_sum += p;
                    axpy(p, &v[(j0 + c) * d..(j0 + c + 1) * d], acc_row);
                }
                l[r] = rescale * l[r] + row_sum;
                m[r] = m_new;
            }
        }
        for r in 0..rows {
            let inv = l[r].recip();
            acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= inv);
            lse[i0 + r] = m[r] + l[r].ln();
        }
    }
}

/// One head's inputs and saved forward results, as the backward pass reads them.
struct HeadSlices<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    o: &'a [T],
    lse: &'a [T],
    d_o: &'a [T],
}

fn backward_one_head<T: FloatElement>(
    HeadSlices {
        q,
        k,
        v,
        o,
        lse,
        d_o,
    }: HeadSlices<T>,
    (tq, tk, d): (usize, usize, usize),
    scale: T,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let delta: Vec<T> = (0..tq)
        .map(|i| dot(&d_o[i * d..(i + 1) * d], &o[i * d..(i + 1) * d]))
        .collect();
    dq.iter_mut()
        .chain(dk.iter_mut())
        .chain(dv.iter_mut())
        .for_each(|x| *x = T::zero());
    for j0 in (0..tk).step_by(BC) {
        let cols = BC.min(tk - j0);
        for i0 in (0..tq).step_by(BR) {
            let rows = BR.min(tq - i0);
            for r in 0..rows {
                let i = i0 + r;
                let (q_row, do_row) = (&q[i * d..(i + 1) * d], &d_o[i * d..(i + 1) * d]);
                for c in 0..cols {
                    let j = j0 + c;
                    let (k_row, v_row) = (&k[j * d..(j + 1) * d], &v[j * d..(j + 1) * d]);
                    let p = (scale * dot(q_row, k_row) - lse[i]).exp();
                    axpy(p, do_row, &mut dv[j * d..(j + 1) * d]);
                    let ds = p * (dot(do_row, v_row) - delta[i]);
                    axpy(scale * ds, k_row, &mut dq[i * d..(i + 1) * d]);
                    axpy(scale * ds, q_row, &mut dk[j * d..(j + 1) * d]);
                }
            }
        }
    }
}

impl Tensor {
    /// softmax(q·kᵀ·scale)·v over the last two dims of `[.., T, d]` inputs, fused (see the
    /// module docs). Returns the output and the per-row log-sum-exp `[.., Tq]`.
    pub fn flash_attention(&self, k: &Tensor, v: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
        let (groups, tq, tk, d) = attention_dims(self, k, v)?;
        if self.is_cuda() {
            if tq != tk {
                return Err(TensorError::invalid(
                    "flash_attention",
                    "on a GPU, self-attention (as many keys as queries)",
                ));
            }
            return crate::ops::cuda::flash_attention(self, k, v, groups, d, scale);
        }
        let lse_shape = &self.shape()[..self.rank() - 1];
        with_float_type!(self.dtype(), "flash_attention", T => {
            let (q, k, v) = (self.values::<T>()?, k.values::<T>()?, v.values::<T>()?);
            let mut o = vec![T::zero(); groups * tq * d];
            let mut lse = vec![T::zero(); groups * tq];
            let scale = T::from_f64(scale);
            if tq * d > 0 {
                pool().install(|| {
                    o.par_chunks_mut(tq * d).zip(lse.par_chunks_mut(tq)).enumerate().for_each(|(g, (o, lse))| {
                        let (qs, ks) = (g * tq * d, g * tk * d);
                        forward_one_head(&q[qs..qs + tq * d], &k[ks..ks + tk * d], &v[ks..ks + tk * d], (tq, tk, d), scale, o, lse);
                    })
                });
            }
            Ok((Tensor::from_vec(o, self.shape())?, Tensor::from_vec(lse, lse_shape)?))
        })
    }

    /// Whether [`Tensor::flash_attention`] and its backward can run for this `q` (`[.., T, d]`):
    /// always on the CPU; on a GPU when it multiplies in mixed precision and the kernels are
    /// built for `d` (self-attention).
    pub fn fused_attention_available(&self) -> bool {
        !self.is_cuda() || crate::ops::cuda::fused_attention_available(self)
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
        let (groups, tq, tk, d) = attention_dims(self, k, v)?;
        out.check_shape("flash_attention_backward (out)", self.shape())?;
        grad_out.check_shape("flash_attention_backward (grad)", self.shape())?;
        lse.check_shape(
            "flash_attention_backward (lse)",
            &self.shape()[..self.rank() - 1],
        )?;
        if self.is_cuda() {
            let saved = crate::ops::cuda::AttentionSaved { out, lse };
            return crate::ops::cuda::flash_attention_backward(
                self, k, v, saved, grad_out, d, scale,
            );
        }
        with_float_type!(self.dtype(), "flash_attention_backward", T => {
            let (q, kv, vv) = (self.values::<T>()?, k.values::<T>()?, v.values::<T>()?);
            let (o, lse, d_o) = (out.values::<T>()?, lse.values::<T>()?, grad_out.values::<T>()?);
            let mut dq = vec![T::zero(); groups * tq * d];
            let mut dk = vec![T::zero(); groups * tk * d];
            let mut dv = vec![T::zero(); groups * tk * d];
            let scale = T::from_f64(scale);
            if tq * d > 0 && tk > 0 {
                pool().install(|| {
                    dq.par_chunks_mut(tq * d)
                        .zip(dk.par_chunks_mut(tk * d).zip(dv.par_chunks_mut(tk * d)))
                        .enumerate()
                        .for_each(|(g, (dq, (dk, dv)))| {
                            let (qs, ks, ls) = (g * tq * d, g * tk * d, g * tq);
                            let inputs = HeadSlices { q: &q[qs..qs + tq * d], k: &kv[ks..ks + tk * d], v: &vv[ks..ks + tk * d], o: &o[qs..qs + tq * d], lse: &lse[ls..ls + tq], d_o: &d_o[qs..qs + tq * d] };
                            backward_one_head(inputs, (tq, tk, d), scale, dq, dk, dv);
                        })
                });
            }
            Ok(AttentionGrads { q: Tensor::from_vec(dq, self.shape())?, k: Tensor::from_vec(dk, k.shape())?, v: Tensor::from_vec(dv, v.shape())? })
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
