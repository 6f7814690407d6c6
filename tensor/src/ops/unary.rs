//! Elementwise functions of one tensor (and of a tensor and a scalar), with their derivatives.

pub use crate::descriptors::UnaryOp;

use crate::error::Result;
use crate::Tensor;

impl Tensor {
    /// y = op(x), elementwise.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        Tensor::compute("unary", &[self], self.shape(), |backend, x| {
            backend.unary(&x[0], op)
        })
    }

    /// grad_out · op'(self): the gradient of a unary op with respect to its input, fused.
    pub fn unary_backward(&self, op: UnaryOp, grad_out: &Tensor) -> Result<Tensor> {
        grad_out.check_shape("unary_backward", self.shape())?;
        grad_out.check_dtype("unary_backward", self.dtype())?;
        Tensor::compute(
            "unary_backward",
            &[self, grad_out],
            self.shape(),
            |backend, x| backend.unary_backward(&x[0], op, &x[1]),
        )
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Rsqrt)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluTanh)
    }
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    pub fn powf(&self, exponent: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(exponent))
    }
    pub fn add_scalar(&self, value: f64) -> Result<Tensor> {
        self.unary(UnaryOp::AddScalar(value))
    }
    pub fn mul_scalar(&self, value: f64) -> Result<Tensor> {
        self.unary(UnaryOp::MulScalar(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_strided};
    use crate::UnaryMath;

    /// Naive reference: the scalar formula written out once more with std's f64 functions.
    fn reference(op: UnaryOp, x: f64) -> f64 {
        let sig = 1.0 / (1.0 + (-x).exp());
        match op {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sig,
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::Silu => x * sig,
            UnaryOp::GeluTanh => {
                0.5 * x
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
            }
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Powf(p) => x.powf(p),
            UnaryOp::AddScalar(s) => x + s,
            UnaryOp::MulScalar(s) => x * s,
        }
    }

    #[test]
    fn every_unary_op_matches_the_scalar_reference_on_strided_input() {
        for op in UnaryOp::EVERY {
            // Positive inputs keep log/sqrt/powf in their domain.
            let x = random_strided(&[3, 5, 4], 0.1, 2.0, 7)
                .abs()
                .unwrap()
                .add_scalar(0.05)
                .unwrap();
            let x = x.permute(&[2, 0, 1]).unwrap();
            let y = x.unary(op).unwrap();
            let expected: Vec<f64> = x.to_vec_f64().iter().map(|&v| reference(op, v)).collect();
            assert_close(&y.to_vec_f64(), &expected, 1e-5, &format!("{op:?}"));
        }
    }

    #[test]
    fn derivatives_match_central_differences() {
        for op in UnaryOp::EVERY {
            for &x in &[0.3f64, 1.1, 2.5] {
                let h = 1e-6;
                let numeric = (reference(op, x + h) - reference(op, x - h)) / (2.0 * h);
                let analytic = op.derivative(x);
                assert!(
                    (numeric - analytic).abs() < 1e-6 * (1.0 + numeric.abs()),
                    "{op:?} at {x}: {numeric} vs {analytic}"
                );
            }
        }
    }

    #[test]
    fn integer_tensors_are_rejected() {
        let t = Tensor::from_vec(vec![1i64, 2], &[2]).unwrap();
        let err = t.exp().unwrap_err().to_string();
        assert!(err.contains("I64") && err.contains("f32 or f64"), "{err}");
    }
}
