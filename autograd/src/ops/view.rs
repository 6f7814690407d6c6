//! Views: the gradient of a re-indexing is the inverse re-indexing of the gradient.
//! reshape ↔ reshape back, permute ↔ inverse permutation, broadcast ↔ sum, narrow ↔ zero-pad.

use crate::Var;
use ditmoe_tensor::{Result, Tensor};

impl Var {
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let value = self.value().reshape(shape)?;
        let original = self.shape().to_vec();
        Ok(Var::from_op("reshape", value, &[self], move |g| {
            Ok(vec![Some(g.reshape(&original)?)])
        }))
    }

    pub fn flatten(&self) -> Result<Var> {
        self.reshape(&[self.value().numel()])
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let value = self.value().permute(perm)?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(Var::from_op("permute", value, &[self], move |g| {
            Ok(vec![Some(g.permute(&inverse)?)])
        }))
    }

    pub fn transpose(&self, dim0: usize, dim1: usize) -> Result<Var> {
        self.value().layout().check_dim("transpose", dim0)?;
        self.value().layout().check_dim("transpose", dim1)?;
        let mut perm: Vec<usize> = (0..self.shape().len()).collect();
        perm.swap(dim0, dim1);
        self.permute(&perm)
    }

    /// Swaps the last two dimensions.
    pub fn t(&self) -> Result<Var> {
        let rank = self.shape().len();
        if rank < 2 {
            return Err(ditmoe_tensor::TensorError::shape(
                "t",
                "rank >= 2",
                self.shape(),
            ));
        }
        self.transpose(rank - 2, rank - 1)
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Var> {
        let value = self.value().narrow(dim, start, len)?;
        let (shape, dtype, device) = (self.shape().to_vec(), value.dtype(), value.device());
        Ok(Var::from_op("narrow", value, &[self], move |g| {
            let pad = |size: usize| {
                let mut s = shape.clone();
                s[dim] = size;
                Tensor::zeros_on(&s, dtype, device)
            };
            let (before, after) = (pad(start)?, pad(shape[dim] - start - len)?);
            Ok(vec![Some(Tensor::concat(&[&before, g, &after], dim)?)])
        }))
    }

    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Var> {
        let value = self.value().broadcast_to(shape)?;
        let original = self.shape().to_vec();
        Ok(Var::from_op("broadcast_to", value, &[self], move |g| {
            Ok(vec![Some(g.sum_to_shape(&original)?)])
        }))
    }

    pub fn unsqueeze(&self, dim: usize) -> Result<Var> {
        let value = self.value().unsqueeze(dim)?;
        Ok(Var::from_op("unsqueeze", value, &[self], move |g| {
            Ok(vec![Some(g.squeeze(dim)?)])
        }))
    }

    pub fn squeeze(&self, dim: usize) -> Result<Var> {
        let value = self.value().squeeze(dim)?;
        Ok(Var::from_op("squeeze", value, &[self], move |g| {
            Ok(vec![Some(g.unsqueeze(dim)?)])
        }))
    }

    /// A contiguous copy (identity for gradients).
    pub fn contiguous(&self) -> Result<Var> {
        let value = self.value().contiguous();
        Ok(Var::from_op("contiguous", value, &[self], |g| {
            Ok(vec![Some(g.clone())])
        }))
    }
}
