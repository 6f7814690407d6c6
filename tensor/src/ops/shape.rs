//! Joining and splitting: concat, stack (copies), split and chunk (views).

use crate::error::{Result, TensorError};
use crate::Tensor;

impl Tensor {
    /// Joins tensors along an existing dimension `dim`; all other sizes must agree.
    pub fn concat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| {
            TensorError::invalid("concat", "expected at least one tensor, found none")
        })?;
        first.layout().check_dim("concat", dim)?;
        for t in tensors {
            t.check_dtype("concat", first.dtype())?;
            let compatible = t.rank() == first.rank()
                && (0..t.rank()).all(|d| d == dim || t.shape()[d] == first.shape()[d]);
            if !compatible {
                return Err(TensorError::shape(
                    "concat",
                    format!("{:?} except along dim {dim}", first.shape()),
                    t.shape(),
                ));
            }
        }
        let mut shape = first.shape().to_vec();
        shape[dim] = tensors.iter().map(|t| t.shape()[dim]).sum();
        Tensor::compute("concat", tensors, &shape, |backend, x| {
            backend.concat(x, dim, &shape)
        })
    }

    /// Joins equally shaped tensors along a new dimension `dim`.
    pub fn stack(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let expanded = tensors
            .iter()
            .map(|t| t.unsqueeze(dim))
            .collect::<Result<Vec<_>>>()?;
        if let Some(first) = tensors.first() {
            for t in tensors {
                t.check_shape("stack", first.shape())?;
            }
        }
        Tensor::concat(&expanded.iter().collect::<Vec<_>>(), dim)
    }

    /// Views of consecutive pieces of `dim` with the given sizes (which must sum to its size).
    pub fn split(&self, sizes: &[usize], dim: usize) -> Result<Vec<Tensor>> {
        split_starts(self.dim(dim)?, sizes)?
            .into_iter()
            .zip(sizes)
            .map(|(start, &len)| self.narrow(dim, start, len))
            .collect()
    }

    /// `chunks` views of `dim`, equal-sized except a smaller last one (as PyTorch's `chunk`).
    pub fn chunk(&self, chunks: usize, dim: usize) -> Result<Vec<Tensor>> {
        self.split(&chunk_sizes(self.dim(dim)?, chunks)?, dim)
    }
}

/// Where each piece starts when a dimension of `total` is split into `sizes`; an error unless
/// the sizes sum to `total`. Shared by `Tensor::split` and its autograd twin.
pub fn split_starts(total: usize, sizes: &[usize]) -> Result<Vec<usize>> {
    if sizes.iter().sum::<usize>() != total {
        return Err(TensorError::invalid(
            "split",
            format!("expected sizes summing to {total}, found {sizes:?}"),
        ));
    }
    Ok(sizes
        .iter()
        .scan(0, |start, &len| {
            *start += len;
            Some(*start - len)
        })
        .collect())
}

/// The piece sizes of `chunk`: `chunks` pieces of ⌈total / chunks⌉, the last one smaller.
pub fn chunk_sizes(total: usize, chunks: usize) -> Result<Vec<usize>> {
    if chunks == 0 {
        return Err(TensorError::invalid(
            "chunk",
            "expected at least one chunk, found 0",
        ));
    }
    let size = total.div_ceil(chunks).max(1);
    Ok((0..total)
        .step_by(size)
        .map(|s| size.min(total - s))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::random_strided;

    #[test]
    fn concat_then_split_round_trips() {
        let a = random_strided(&[2, 3, 4], -1.0, 1.0, 1);
        let b = random_strided(&[2, 1, 4], -1.0, 1.0, 2);
        let c = Tensor::concat(&[&a, &b], 1).unwrap();
        assert_eq!(c.shape(), &[2, 4, 4]);
        let parts = c.split(&[3, 1], 1).unwrap();
        assert_eq!(parts[0].to_vec_f64(), a.to_vec_f64());
        assert_eq!(parts[1].to_vec_f64(), b.to_vec_f64());
        assert!(Tensor::concat(&[&a, &b], 2).is_err());
        assert!(c.split(&[3, 2], 1).is_err());
    }

    #[test]
    fn stack_and_chunk() {
        let a = random_strided(&[2, 3], -1.0, 1.0, 3);
        let b = random_strided(&[2, 3], -1.0, 1.0, 4);
        let s = Tensor::stack(&[&a, &b], 1).unwrap();
        assert_eq!(s.shape(), &[2, 2, 3]);
        assert_eq!(s.narrow(1, 1, 1).unwrap().to_vec_f64(), b.to_vec_f64());
        let chunks = random_strided(&[7, 2], 0.0, 1.0, 5).chunk(3, 0).unwrap();
        assert_eq!(
            chunks.iter().map(|c| c.shape()[0]).collect::<Vec<_>>(),
            vec![3, 3, 1]
        );
    }
}
