//! Softmax and log-softmax along one dimension, computed stably by subtracting the row maximum.

use crate::dtype::FloatElement;
use crate::error::Result;
use crate::layout::Layout;
use crate::ops::reduce::{map_rows_to_rows, rows_over};
use crate::{with_float_type, Tensor};

/// Applies a row function along `dim` and restores the original dimension order.
fn along_dim<T: FloatElement>(
    t: &Tensor,
    op: &'static str,
    dim: usize,
    f: impl Fn(&[T], &mut [T]) + Sync + Send,
) -> Result<Tensor> {
    t.ensure_cpu(op)?;
    let rows = rows_over(t, op, &[dim])?;
    let values = rows.permuted.values::<T>()?;
    let out = map_rows_to_rows(&values, rows.inner, |_, row, out| f(row, out));
    let permuted = Tensor::from_storage(
        T::into_storage(out),
        Layout::contiguous(rows.permuted.shape()),
    );
    // rows_over moved `dim` last; move it back.
    let mut inverse: Vec<usize> = (0..t.rank() - 1).collect();
    inverse.insert(dim, t.rank() - 1);
    Ok(permuted.permute(&inverse)?.contiguous())
}

fn softmax_row<T: FloatElement>(row: &[T], out: &mut [T]) {
    let max = row.iter().copied().fold(T::neg_infinity(), T::max);
    let mut total = T::zero();
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v - max).exp();
        total += *o;
    }
    out.iter_mut().for_each(|o| *o /= total);
}

fn log_softmax_row<T: FloatElement>(row: &[T], out: &mut [T]) {
    let max = row.iter().copied().fold(T::neg_infinity(), T::max);
    let log_total = row.iter().map(|&v| (v - max).exp()).sum::<T>().ln() + max;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = v - log_total;
    }
}

impl Tensor {
    /// exp(x_i) / Σ_j exp(x_j) along `dim`.
    pub fn softmax(&self, dim: usize) -> Result<Tensor> {
        if self.is_cuda() {
            return crate::ops::cuda::softmax(self, dim);
        }
        with_float_type!(self.dtype(), "softmax", T => along_dim::<T>(self, "softmax", dim, softmax_row))
    }

    /// x_i − log Σ_j exp(x_j) along `dim`.
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor> {
        with_float_type!(self.dtype(), "log_softmax", T => along_dim::<T>(self, "log_softmax", dim, log_softmax_row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_strided, ravel, unravel};

    fn reference(t: &Tensor, dim: usize, log: bool) -> Vec<f64> {
        let v = t.to_vec_f64();
        let shape = t.shape();
        (0..v.len())
            .map(|i| {
                let mut index = unravel(i, shape);
                let total: f64 = (0..shape[dim])
                    .map(|j| {
                        index[dim] = j;
                        v[ravel(&index, shape)].exp()
                    })
                    .sum();
                if log {
                    v[i] - total.ln()
                } else {
                    v[i].exp() / total
                }
            })
            .collect()
    }

    #[test]
    fn softmax_and_log_softmax_match_reference_along_every_dim() {
        let t = random_strided(&[3, 4, 5], -3.0, 3.0, 11);
        for dim in 0..3 {
            assert_close(
                &t.softmax(dim).unwrap().to_vec_f64(),
                &reference(&t, dim, false),
                1e-12,
                "softmax",
            );
            assert_close(
                &t.log_softmax(dim).unwrap().to_vec_f64(),
                &reference(&t, dim, true),
                1e-12,
                "log_softmax",
            );
        }
    }

    #[test]
    fn softmax_is_stable_for_large_inputs() {
        let t = Tensor::from_vec(vec![1000.0f32, 1000.0], &[2]).unwrap();
        assert_eq!(
            t.softmax(0).unwrap().to_vec::<f32>().unwrap(),
            vec![0.5, 0.5]
        );
        assert!(t.softmax(1).is_err());
    }
}
