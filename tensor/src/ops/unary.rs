//! Elementwise functions of one tensor (and of a tensor and a scalar), with their derivatives.

use crate::dtype::FloatElement;
use crate::error::Result;
use crate::layout::Layout;
use crate::ops::binary::zip_map;
use crate::parallel::for_each_chunk_mut;
use crate::{with_float_type, Tensor};

/// √(2/π), the constant of the tanh approximation of GELU.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044_715;

/// An elementwise function `y = f(x)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Relu,
    /// x·σ(x) (Elfwing et al., 2017; a.k.a. swish).
    Silu,
    /// GELU with the tanh approximation (Hendrycks & Gimpel, 2016), as DiT's MLP uses.
    GeluTanh,
    Sin,
    Cos,
    Abs,
    /// x^p.
    Powf(f64),
    /// x + c.
    AddScalar(f64),
    /// x · c.
    MulScalar(f64),
}

/// σ(x) = 1 / (1 + e^−x).
pub(crate) fn sigmoid<T: FloatElement>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

fn c<T: FloatElement>(v: f64) -> T {
    T::from_f64(v)
}

impl UnaryOp {
    /// Every variant, the parametrised ones with a sample parameter (for tests and benchmarks).
    pub const EVERY: [UnaryOp; 16] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Silu,
        UnaryOp::GeluTanh,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Abs,
        UnaryOp::Powf(1.7),
        UnaryOp::AddScalar(0.5),
        UnaryOp::MulScalar(-3.0),
    ];

    /// f(x).
    pub fn apply<T: FloatElement>(self, x: T) -> T {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => x.sqrt().recip(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Relu => x.max(T::zero()),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::GeluTanh => {
                let u = c::<T>(SQRT_2_OVER_PI) * (x + c::<T>(GELU_CUBIC) * x * x * x);
                c::<T>(0.5) * x * (T::one() + u.tanh())
            }
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Powf(p) => x.powf(c(p)),
            UnaryOp::AddScalar(s) => x + c(s),
            UnaryOp::MulScalar(s) => x * c(s),
        }
    }

    /// f'(x).
    pub fn derivative<T: FloatElement>(self, x: T) -> T {
        let one = T::one();
        match self {
            UnaryOp::Neg => -one,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.recip(),
            UnaryOp::Sqrt => c::<T>(0.5) / x.sqrt(),
            UnaryOp::Rsqrt => c::<T>(-0.5) * x.powf(c(-1.5)),
            UnaryOp::Tanh => one - x.tanh() * x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x) * (one - sigmoid(x)),
            UnaryOp::Relu => {
                if x > T::zero() {
                    one
                } else {
                    T::zero()
                }
            }
            UnaryOp::Silu => {
                let s = sigmoid(x);
                s * (one + x * (one - s))
            }
            UnaryOp::GeluTanh => {
                let k = c::<T>(SQRT_2_OVER_PI);
                let a = c::<T>(GELU_CUBIC);
                let th = (k * (x + a * x * x * x)).tanh();
                let du = k * (one + c::<T>(3.0) * a * x * x);
                c::<T>(0.5) * (one + th) + c::<T>(0.5) * x * (one - th * th) * du
            }
            UnaryOp::Sin => x.cos(),
            UnaryOp::Cos => -x.sin(),
            UnaryOp::Abs => {
                if x > T::zero() {
                    one
                } else if x < T::zero() {
                    -one
                } else {
                    T::zero()
                }
            }
            UnaryOp::Powf(p) => c::<T>(p) * x.powf(c(p - 1.0)),
            UnaryOp::AddScalar(_) => one,
            UnaryOp::MulScalar(s) => c(s),
        }
    }
}

/// Applies `f` to every element of `x` (any layout) into a new contiguous tensor.
pub(crate) fn map_elements<T: FloatElement>(
    x: &Tensor,
    f: impl Fn(T) -> T + Sync + Send,
) -> Result<Tensor> {
    let input = x.values::<T>()?;
    let mut out = vec![T::zero(); input.len()];
    let chunk = crate::parallel::rows_per_chunk(out.len(), 1);
    for_each_chunk_mut(&mut out, chunk, input.len(), |i, out| {
        let start = i * chunk;
        for (o, &v) in out.iter_mut().zip(&input[start..]) {
            *o = f(v);
        }
    });
    Ok(Tensor::from_storage(
        T::into_storage(out),
        Layout::contiguous(x.shape()),
    ))
}

impl Tensor {
    /// y = op(x), elementwise.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        if self.is_cuda() {
            return crate::ops::cuda::unary(self, op, None);
        }
        // One monomorphised loop per op (the op a constant, so the body inlines and vectorises).
        macro_rules! per_op {
            ($T:ty: $($variant:ident),* ; $($param:ident),*) => {
                match op {
                    $(UnaryOp::$variant => map_elements::<$T>(self, |v| UnaryOp::$variant.apply(v)),)*
                    $(UnaryOp::$param(p) => map_elements::<$T>(self, move |v| UnaryOp::$param(p).apply(v)),)*
                }
            };
        }
        with_float_type!(self.dtype(), "unary", T => per_op!(T: Neg, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Relu, Silu, GeluTanh, Sin, Cos, Abs; Powf, AddScalar, MulScalar))
    }

    /// grad_out · op'(self): the gradient of a unary op with respect to its input, fused.
    pub fn unary_backward(&self, op: UnaryOp, grad_out: &Tensor) -> Result<Tensor> {
        grad_out.check_shape("unary_backward", self.shape())?;
        if self.is_cuda() {
            return crate::ops::cuda::unary(self, op, Some(grad_out));
        }
        with_float_type!(self.dtype(), "unary_backward", T => {
            grad_out.check_dtype("unary_backward", self.dtype())?;
            zip_map::<T>(self, grad_out, self.shape(), |x, g| g * op.derivative(x))
        })
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
