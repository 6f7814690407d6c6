//! Elementwise functions: ∂y/∂x = f'(x), computed by the fused `unary_backward` kernel.

use crate::Var;
use ditmoe_tensor::{Result, UnaryOp};

impl Var {
    /// y = op(x) elementwise; saves x.
    pub fn unary(&self, op: UnaryOp) -> Result<Var> {
        let value = self.value().unary(op)?;
        let x = self.value();
        Ok(Var::from_op("unary", value, &[self], move |g| {
            Ok(vec![Some(x.unary_backward(op, g)?)])
        }))
    }

    pub fn neg(&self) -> Result<Var> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Var> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Var> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Var> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Var> {
        self.unary(UnaryOp::Rsqrt)
    }
    pub fn tanh(&self) -> Result<Var> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn sigmoid(&self) -> Result<Var> {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn relu(&self) -> Result<Var> {
        self.unary(UnaryOp::Relu)
    }
    pub fn silu(&self) -> Result<Var> {
        self.unary(UnaryOp::Silu)
    }
    pub fn gelu_tanh(&self) -> Result<Var> {
        self.unary(UnaryOp::GeluTanh)
    }
    pub fn sin(&self) -> Result<Var> {
        self.unary(UnaryOp::Sin)
    }
    pub fn cos(&self) -> Result<Var> {
        self.unary(UnaryOp::Cos)
    }
    pub fn abs(&self) -> Result<Var> {
        self.unary(UnaryOp::Abs)
    }
    pub fn powf(&self, exponent: f64) -> Result<Var> {
        self.unary(UnaryOp::Powf(exponent))
    }
    pub fn add_scalar(&self, value: f64) -> Result<Var> {
        self.unary(UnaryOp::AddScalar(value))
    }
    pub fn sub_scalar(&self, value: f64) -> Result<Var> {
        self.unary(UnaryOp::AddScalar(-value))
    }
    pub fn mul_scalar(&self, value: f64) -> Result<Var> {
        self.unary(UnaryOp::MulScalar(value))
    }
    pub fn div_scalar(&self, value: f64) -> Result<Var> {
        self.unary(UnaryOp::MulScalar(1.0 / value))
    }
}
