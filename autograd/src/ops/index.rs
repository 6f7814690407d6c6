//! Index operations and their adjoint pairs: gather ↔ scatter_add, index_select ↔ index_add;
//! top-k sends its gradient back to the selected positions; where/masked_fill route it by mask.
//! Index and mask tensors are plain `Tensor`s: they get no gradient.

use crate::Var;
use ditmoe_tensor::{Result, Tensor};

/// A zero tensor shaped like `v`, made only if and when a backward rule runs.
fn zeros_like_later(v: &Var) -> impl FnOnce() -> Result<Tensor> {
    let value = v.value();
    let (shape, dtype, device) = (v.shape().to_vec(), value.dtype(), value.device());
    move || Tensor::zeros_on(&shape, dtype, device)
}

impl Var {
    pub fn index_select(&self, dim: usize, index: &Tensor) -> Result<Var> {
        let value = self.value().index_select(dim, index)?;
        let (zeros, index) = (zeros_like_later(self), index.clone());
        Ok(Var::from_op("index_select", value, &[self], move |g| {
            Ok(vec![Some(zeros()?.index_add(dim, &index, g)?)])
        }))
    }

    pub fn index_add(&self, dim: usize, index: &Tensor, source: &Var) -> Result<Var> {
        let value = self.value().index_add(dim, index, &source.value())?;
        let index = index.clone();
        Ok(Var::from_op(
            "index_add",
            value,
            &[self, source],
            move |g| Ok(vec![Some(g.clone()), Some(g.index_select(dim, &index)?)]),
        ))
    }

    pub fn gather(&self, dim: usize, index: &Tensor) -> Result<Var> {
        let value = self.value().gather(dim, index)?;
        let (zeros, index) = (zeros_like_later(self), index.clone());
        Ok(Var::from_op("gather", value, &[self], move |g| {
            Ok(vec![Some(zeros()?.scatter_add(dim, &index, g)?)])
        }))
    }

    pub fn scatter_add(&self, dim: usize, index: &Tensor, source: &Var) -> Result<Var> {
        let value = self.value().scatter_add(dim, index, &source.value())?;
        let index = index.clone();
        Ok(Var::from_op(
            "scatter_add",
            value,
            &[self, source],
            move |g| Ok(vec![Some(g.clone()), Some(g.gather(dim, &index)?)]),
        ))
    }

    /// The `k` largest (or smallest) values along `dim` and their (non-differentiable) indices.
    pub fn topk(&self, k: usize, dim: usize, largest: bool) -> Result<(Var, Tensor)> {
        let (values, indices) = self.value().topk(k, dim, largest)?;
        let (zeros, saved) = (zeros_like_later(self), indices.clone());
        let var = Var::from_op("topk", values, &[self], move |g| {
            Ok(vec![Some(zeros()?.scatter_add(dim, &saved, g)?)])
        });
        Ok((var, indices))
    }

    /// `condition != 0 ? on_true : on_false`, broadcasting all three.
    pub fn where_cond(condition: &Tensor, on_true: &Var, on_false: &Var) -> Result<Var> {
        let value = Tensor::where_cond(condition, &on_true.value(), &on_false.value())?;
        let condition = condition.clone();
        let (true_shape, false_shape) = (on_true.shape().to_vec(), on_false.shape().to_vec());
        Ok(Var::from_op(
            "where_cond",
            value,
            &[on_true, on_false],
            move |g| {
                let zeros = g.zeros_like()?;
                let to_true =
                    Tensor::where_cond(&condition, g, &zeros)?.sum_to_shape(&true_shape)?;
                let to_false =
                    Tensor::where_cond(&condition, &zeros, g)?.sum_to_shape(&false_shape)?;
                Ok(vec![Some(to_true), Some(to_false)])
            },
        ))
    }

    /// `value` wherever `mask` is non-zero; the gradient there is 0.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Var> {
        let out = self.value().masked_fill(mask, value)?;
        let mask = mask.clone();
        Ok(Var::from_op("masked_fill", out, &[self], move |g| {
            Ok(vec![Some(g.masked_fill(&mask, 0.0)?)])
        }))
    }
}
