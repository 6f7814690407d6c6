//! SwiGLU's gated product `h = SiLU(g) ⊙ u` (Shazeer, 2020, "GLU Variants Improve
//! Transformer"), the middle of DiT-MoE's expert FFN, fused: one pass forward and one pass for
//! both gradients, where SiLU, a product and their backward passes take five.

use crate::error::Result;
use crate::layout::Layout;
use crate::Tensor;

impl Tensor {
    /// `SiLU(self) ⊙ up` for a gate `self` and an up projection of the same shape and dtype.
    pub fn swiglu(&self, up: &Tensor) -> Result<Tensor> {
        up.check_shape("swiglu", self.shape())?;
        up.check_dtype("swiglu", self.dtype())?;
        Tensor::compute("swiglu", &[self, up], self.shape(), |backend, x| {
            backend.swiglu(&x[0], &x[1])
        })
    }

    /// The gradients `(d gate, d up)` of [`Tensor::swiglu`] for the gradient of its output.
    pub fn swiglu_backward(&self, up: &Tensor, grad_out: &Tensor) -> Result<(Tensor, Tensor)> {
        let op = "swiglu_backward";
        for t in [up, grad_out] {
            t.check_shape(op, self.shape())?;
            t.check_dtype(op, self.dtype())?;
        }
        let ((dgate, dup), device) =
            Tensor::run_on_backend(op, &[self, up, grad_out], |backend, x| {
                backend.swiglu_backward(&x[0], &x[1], &x[2])
            })?;
        let layout = Layout::contiguous(self.shape());
        Ok((
            Tensor::from_backend(dgate, layout.clone(), device),
            Tensor::from_backend(dup, layout, device),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{assert_close, random_strided};

    #[test]
    fn swiglu_matches_silu_times_up_and_its_derivatives() {
        // Strided (non-contiguous) operands, as a transpose or slice would give.
        let shape = [3, 5, 7];
        let (g, u, dh) = (
            random_strided(&shape, -4.0, 4.0, 1),
            random_strided(&shape, -2.0, 2.0, 2),
            random_strided(&shape, -1.0, 1.0, 3),
        );
        let (gv, uv, dv) = (g.to_vec_f64(), u.to_vec_f64(), dh.to_vec_f64());
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let expected: Vec<f64> = (0..gv.len()).map(|i| gv[i] * sig(gv[i]) * uv[i]).collect();
        assert_close(&g.swiglu(&u).unwrap().to_vec_f64(), &expected, 1e-12, "h");
        // d/dg [g σ(g) u] = u (σ(g) + g σ(g)(1 − σ(g))); d/du = g σ(g).
        let dgate: Vec<f64> = (0..gv.len())
            .map(|i| {
                let s = sig(gv[i]);
                dv[i] * uv[i] * (s + gv[i] * s * (1.0 - s))
            })
            .collect();
        let dup: Vec<f64> = (0..gv.len()).map(|i| dv[i] * gv[i] * sig(gv[i])).collect();
        let (dg, du) = g.swiglu_backward(&u, &dh).unwrap();
        assert_close(&dg.to_vec_f64(), &dgate, 1e-12, "d gate");
        assert_close(&du.to_vec_f64(), &dup, 1e-12, "d up");
        assert!(g.swiglu(&u.narrow(0, 0, 2).unwrap()).is_err());
        assert!(g.swiglu_backward(&u, &dh.narrow(1, 0, 4).unwrap()).is_err());
    }
}
