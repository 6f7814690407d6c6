//! Fused scaled-dot-product attention on the CPU, FlashAttention-2 style (Dao, 2023) — the
//! algorithm is described in `ops/attention.rs`. Work is split over (batch, head) pairs, so
//! every dQ row is owned by one thread (no atomics).

use crate::backend::Operand;
use crate::dtype::FloatElement;
use crate::error::Result;
use crate::parallel::pool;
use crate::storage::Storage;
use crate::with_float_type;
use rayon::prelude::*;

/// Query rows per tile.
const BR: usize = 32;
/// Key/value rows per tile.
const BC: usize = 64;

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

/// (query/key groups, Tq, Tk, d) of checked `[.., T, d]` operands.
fn dims(q: &Operand, k: &Operand) -> (usize, usize, usize, usize) {
    let r = q.rank();
    let groups = q.shape()[..r - 2].iter().product();
    (groups, q.shape()[r - 2], k.shape()[r - 2], q.shape()[r - 1])
}

pub(super) fn flash_attention(
    q: &Operand,
    k: &Operand,
    v: &Operand,
    scale: f64,
) -> Result<(Storage, Storage)> {
    let (groups, tq, tk, d) = dims(q, k);
    with_float_type!(q.dtype(), "flash_attention", T => {
        let (q, k, v) = (q.values::<T>()?, k.values::<T>()?, v.values::<T>()?);
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
        Ok((T::into_storage(o), T::into_storage(lse)))
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn flash_attention_backward(
    q: &Operand,
    k: &Operand,
    v: &Operand,
    out: &Operand,
    lse: &Operand,
    grad: &Operand,
    scale: f64,
) -> Result<[Storage; 3]> {
    let (groups, tq, tk, d) = dims(q, k);
    with_float_type!(q.dtype(), "flash_attention_backward", T => {
        let (q, kv, vv) = (q.values::<T>()?, k.values::<T>()?, v.values::<T>()?);
        let (o, lse, d_o) = (out.values::<T>()?, lse.values::<T>()?, grad.values::<T>()?);
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
        Ok([T::into_storage(dq), T::into_storage(dk), T::into_storage(dv)])
    })
}
