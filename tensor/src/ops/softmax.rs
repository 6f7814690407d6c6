//! Softmax and log-softmax along one dimension, computed stably by subtracting the row maximum.

use crate::error::Result;
use crate::Tensor;

impl Tensor {
    /// exp(x_i) / Σ_j exp(x_j) along `dim`.
    pub fn softmax(&self, dim: usize) -> Result<Tensor> {
        self.layout().check_dim("softmax", dim)?;
        let ((storage, layout), device) =
            Tensor::run_on_backend("softmax", &[self], |backend, x| backend.softmax(&x[0], dim))?;
        Ok(Tensor::from_backend(storage, layout, device))
    }

    /// x_i − log Σ_j exp(x_j) along `dim`.
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor> {
        self.layout().check_dim("log_softmax", dim)?;
        Tensor::compute("log_softmax", &[self], self.shape(), |backend, x| {
            backend.log_softmax(&x[0], dim)
        })
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
