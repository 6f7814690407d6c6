//! Elementwise functions of two broadcast inputs. Each input's gradient is summed back over the
//! dimensions broadcasting expanded (`sum_to_shape`).

use crate::Var;
use ditmoe_tensor::{BinaryOp, Result, Tensor};

/// Gradients of max(a, b) (`take_a_where` = `Gt`) or min(a, b) (`Lt`): each goes to the input
/// that was selected; ties split it evenly.
fn selection_grads(
    a: &Tensor,
    b: &Tensor,
    g: &Tensor,
    take_a_where: BinaryOp,
    take_b_where: BinaryOp,
) -> Result<(Tensor, Tensor)> {
    let half_ties = a.binary(BinaryOp::Eq, b)?.mul_scalar(0.5)?;
    let to_a = a.binary(take_a_where, b)?.add(&half_ties)?;
    let to_b = a.binary(take_b_where, b)?.add(&half_ties)?;
    Ok((g.mul(&to_a)?, g.mul(&to_b)?))
}

impl Var {
    /// y = op(a, b) with broadcasting.
    pub fn binary(&self, op: BinaryOp, other: &Var) -> Result<Var> {
        let value = self.value().binary(op, &other.value())?;
        let (a, b) = (self.value(), other.value());
        Ok(Var::from_op("binary", value, &[self, other], move |g| {
            let (ga, gb) = match op {
                BinaryOp::Add => (g.clone(), g.clone()),
                BinaryOp::Sub => (g.clone(), g.neg()?),
                BinaryOp::Mul => (g.mul(&b)?, g.mul(&a)?),
                // d(a/b)/db = −a/b² = −(a/b)/b
                BinaryOp::Div => (g.div(&b)?, g.mul(&a)?.div(&b.mul(&b)?)?.neg()?),
                BinaryOp::Maximum => selection_grads(&a, &b, g, BinaryOp::Gt, BinaryOp::Lt)?,
                BinaryOp::Minimum => selection_grads(&a, &b, g, BinaryOp::Lt, BinaryOp::Gt)?,
                BinaryOp::Gt | BinaryOp::Lt | BinaryOp::Eq => (g.zeros_like()?, g.zeros_like()?),
            };
            Ok(vec![
                Some(ga.sum_to_shape(a.shape())?),
                Some(gb.sum_to_shape(b.shape())?),
            ])
        }))
    }

    pub fn add(&self, other: &Var) -> Result<Var> {
        self.binary(BinaryOp::Add, other)
    }
    pub fn sub(&self, other: &Var) -> Result<Var> {
        self.binary(BinaryOp::Sub, other)
    }
    pub fn mul(&self, other: &Var) -> Result<Var> {
        self.binary(BinaryOp::Mul, other)
    }
    pub fn div(&self, other: &Var) -> Result<Var> {
        self.binary(BinaryOp::Div, other)
    }
    pub fn maximum(&self, other: &Var) -> Result<Var> {
        self.binary(BinaryOp::Maximum, other)
    }
    pub fn minimum(&self, other: &Var) -> Result<Var> {
        self.binary(BinaryOp::Minimum, other)
    }
}
