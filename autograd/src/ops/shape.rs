//! Joining and splitting. concat's gradient is the split of the output gradient; split and
//! chunk are built from `narrow`, so they need no rule of their own.

use crate::Var;
use ditmoe_tensor::ops::shape::{chunk_sizes, split_starts};
use ditmoe_tensor::{Result, Tensor, TensorError};

impl Var {
    pub fn concat(vars: &[&Var], dim: usize) -> Result<Var> {
        let values: Vec<Tensor> = vars.iter().map(|v| v.value()).collect();
        let value = Tensor::concat(&values.iter().collect::<Vec<_>>(), dim)?;
        let sizes: Vec<usize> = vars.iter().map(|v| v.shape()[dim]).collect();
        Ok(Var::from_op("concat", value, vars, move |g| {
            Ok(g.split(&sizes, dim)?.into_iter().map(Some).collect())
        }))
    }

    pub fn stack(vars: &[&Var], dim: usize) -> Result<Var> {
        if let Some(first) = vars.first() {
            for v in vars {
                if v.shape() != first.shape() {
                    return Err(TensorError::shape(
                        "stack",
                        format!("{:?}", first.shape()),
                        v.shape(),
                    ));
                }
            }
        }
        let expanded = vars
            .iter()
            .map(|v| v.unsqueeze(dim))
            .collect::<Result<Vec<_>>>()?;
        Var::concat(&expanded.iter().collect::<Vec<_>>(), dim)
    }

    pub fn split(&self, sizes: &[usize], dim: usize) -> Result<Vec<Var>> {
        split_starts(self.value().dim(dim)?, sizes)?
            .into_iter()
            .zip(sizes)
            .map(|(start, &len)| self.narrow(dim, start, len))
            .collect()
    }

    pub fn chunk(&self, chunks: usize, dim: usize) -> Result<Vec<Var>> {
        self.split(&chunk_sizes(self.value().dim(dim)?, chunks)?, dim)
    }
}
