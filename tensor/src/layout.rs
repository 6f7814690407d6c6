//! Shape, strides and offset: how a tensor's logical indices map onto its flat storage.
//!
//! Element `[i0, i1, …]` lives at `offset + Σ i_d · strides[d]`. Every view (permute, narrow,
//! broadcast, …) is a new `Layout` over the same storage; a broadcast dimension has stride 0.

use crate::error::{Result, TensorError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major (C-order) strides for `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut step = 1;
    for d in (0..shape.len()).rev() {
        strides[d] = step;
        step *= shape[d];
    }
    strides
}

/// The shape two shapes broadcast to (NumPy rules: align right, sizes equal or 1).
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(TensorError::shape(
                    op,
                    format!("a shape broadcastable with {a:?}"),
                    b,
                ))
            }
        };
    }
    Ok(out)
}

/// Merges adjacent dimensions that are laid out back to back in every one of `strides` (one
/// stride vector per operand, all over `shape`), so loops run over fewer, longer dimensions.
/// Returns the merged shape and each operand's merged strides.
pub fn coalesce(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut merged_shape: Vec<usize> = Vec::new();
    let mut merged: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for d in 0..shape.len() {
        let joins_previous = !merged_shape.is_empty()
            && strides
                .iter()
                .zip(&merged)
                .all(|(s, m)| *m.last().unwrap() == s[d] * shape[d]);
        if joins_previous {
            *merged_shape.last_mut().unwrap() *= shape[d];
            for (s, m) in strides.iter().zip(merged.iter_mut()) {
                *m.last_mut().unwrap() = s[d];
            }
        } else {
            merged_shape.push(shape[d]);
            for (s, m) in strides.iter().zip(merged.iter_mut()) {
                m.push(s[d]);
            }
        }
    }
    (merged_shape, merged)
}

impl Layout {
    /// A contiguous row-major layout starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    pub fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        assert_eq!(
            shape.len(),
            strides.len(),
            "layout: shape and strides differ in rank"
        );
        Layout {
            shape,
            strides,
            offset,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the elements are laid out row-major without gaps (offset may be non-zero).
    pub fn is_contiguous(&self) -> bool {
        let mut step = 1;
        for d in (0..self.rank()).rev() {
            if self.shape[d] != 1 && self.strides[d] != step {
                return false;
            }
            step *= self.shape[d];
        }
        true
    }

    /// Checks `dim < rank`.
    pub fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim < self.rank() {
            Ok(())
        } else {
            Err(TensorError::DimOutOfRange {
                op,
                dim,
                rank: self.rank(),
            })
        }
    }

    /// The same elements in a new dimension order: output dim `i` is input dim `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let mut seen = vec![false; self.rank()];
        let valid = perm.len() == self.rank()
            && perm
                .iter()
                .all(|&p| p < self.rank() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(TensorError::invalid(
                "permute",
                format!(
                    "expected a permutation of 0..{}, found {perm:?}",
                    self.rank()
                ),
            ));
        }
        Ok(Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    /// Elements `start..start+len` of dimension `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        self.check_dim("narrow", dim)?;
        if start + len > self.shape[dim] {
            return Err(TensorError::invalid(
                "narrow",
                format!(
                    "expected start + len <= {} along dim {dim}, found {start} + {len}",
                    self.shape[dim]
                ),
            ));
        }
        let mut out = self.clone();
        out.shape[dim] = len;
        if len > 0 {
            out.offset += start * self.strides[dim];
        }
        Ok(out)
    }

    /// A view with `shape`, repeating size-1 (or missing leading) dimensions with stride 0.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Layout> {
        let error = || {
            TensorError::shape(
                "broadcast_to",
                format!("a shape broadcastable to {shape:?}"),
                &self.shape,
            )
        };
        if shape.len() < self.rank() {
            return Err(error());
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for d in 0..self.rank() {
            let (from, to) = (self.shape[d], shape[lead + d]);
            strides[lead + d] = match (from, to) {
                _ if from == to => self.strides[d],
                (1, _) => 0,
                _ => return Err(error()),
            };
        }
        Ok(Layout {
            shape: shape.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    /// A view with a new size-1 dimension at `dim` (`dim <= rank`).
    pub fn unsqueeze(&self, dim: usize) -> Result<Layout> {
        if dim > self.rank() {
            return Err(TensorError::DimOutOfRange {
                op: "unsqueeze",
                dim,
                rank: self.rank() + 1,
            });
        }
        let mut out = self.clone();
        let stride = if dim < self.rank() {
            self.strides[dim] * self.shape[dim]
        } else {
            1
        };
        out.shape.insert(dim, 1);
        out.strides.insert(dim, stride);
        Ok(out)
    }

    /// A view without dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: usize) -> Result<Layout> {
        self.check_dim("squeeze", dim)?;
        if self.shape[dim] != 1 {
            return Err(TensorError::shape(
                "squeeze",
                format!("size 1 at dim {dim}"),
                &self.shape,
            ));
        }
        let mut out = self.clone();
        out.shape.remove(dim);
        out.strides.remove(dim);
        Ok(out)
    }

    /// A view with `shape` if the elements can be re-indexed without a copy: contiguous
    /// layouts always can; otherwise `None` (the caller copies first).
    pub fn reshape(&self, shape: &[usize]) -> Option<Layout> {
        if self.is_contiguous() {
            Some(Layout {
                shape: shape.to_vec(),
                strides: contiguous_strides(shape),
                offset: self.offset,
            })
        } else {
            None
        }
    }

    /// The elements of `data` this layout views, in row-major logical order, copied one
    /// innermost row at a time.
    pub fn gather<T: Copy>(&self, data: &[T]) -> Vec<T> {
        let Some((&inner, outer_shape)) = self.shape().split_last() else {
            return vec![data[self.offset()]];
        };
        let rank = self.rank();
        let inner_stride = self.strides()[rank - 1];
        let outer = Layout::new(
            outer_shape.to_vec(),
            self.strides()[..rank - 1].to_vec(),
            self.offset(),
        );
        let mut out = Vec::with_capacity(self.numel());
        for start in outer.offsets().filter(|_| inner > 0) {
            if inner_stride == 1 {
                out.extend_from_slice(&data[start..start + inner]);
            } else {
                out.extend((0..inner).map(|i| data[start + i * inner_stride]));
            }
        }
        out
    }

    /// Storage offsets of all elements in row-major logical order.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets::new(self)
    }
}

/// Iterator over the storage offsets of a layout's elements, in row-major logical order.
/// The innermost dimension advances by adding its stride; only carries touch the index vector.
pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    index: Vec<usize>,
    next: Option<usize>,
}

impl<'a> StridedOffsets<'a> {
    fn new(layout: &'a Layout) -> Self {
        let next = (layout.numel() > 0).then_some(layout.offset);
        StridedOffsets {
            layout,
            index: vec![0; layout.rank()],
            next,
        }
    }
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let current = self.next?;
        let (shape, strides) = (&self.layout.shape, &self.layout.strides);
        let mut offset = current;
        let mut d = shape.len();
        self.next = loop {
            if d == 0 {
                break None;
            }
            d -= 1;
            self.index[d] += 1;
            offset += strides[d];
            if self.index[d] < shape[d] {
                break Some(offset);
            }
            offset -= strides[d] * shape[d];
            self.index[d] = 0;
        };
        Some(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_a_transposed_view() {
        let layout = Layout::contiguous(&[2, 3]).permute(&[1, 0]).unwrap();
        assert_eq!(layout.offsets().collect::<Vec<_>>(), vec![0, 3, 1, 4, 2, 5]);
        assert!(!layout.is_contiguous());
    }

    #[test]
    fn broadcast_gives_zero_strides() {
        let layout = Layout::contiguous(&[3, 1])
            .broadcast_to(&[2, 3, 4])
            .unwrap();
        assert_eq!(layout.strides(), &[0, 1, 0]);
        assert!(Layout::contiguous(&[3, 2]).broadcast_to(&[3, 4]).is_err());
    }

    #[test]
    fn broadcast_shapes_follows_numpy_rules() {
        assert_eq!(
            broadcast_shapes("t", &[4, 1, 3], &[5, 1]).unwrap(),
            vec![4, 5, 3]
        );
        assert!(broadcast_shapes("t", &[2, 3], &[4, 3]).is_err());
    }

    #[test]
    fn coalesce_merges_back_to_back_dims() {
        // A [2, 3, 4] contiguous tensor with a [3, 4] bias broadcast over it: the last two dims
        // merge for both; the first does not (bias stride 0).
        let (shape, strides) = coalesce(&[2, 3, 4], &[&[12, 4, 1], &[0, 4, 1]]);
        assert_eq!(shape, vec![2, 12]);
        assert_eq!(strides, vec![vec![12, 1], vec![0, 1]]);
    }

    #[test]
    fn narrow_and_empty() {
        let layout = Layout::contiguous(&[4, 5]).narrow(1, 2, 3).unwrap();
        assert_eq!(
            layout.offsets().take(4).collect::<Vec<_>>(),
            vec![2, 3, 4, 7]
        );
        assert_eq!(Layout::contiguous(&[0, 3]).offsets().count(), 0);
        assert!(Layout::contiguous(&[4]).narrow(0, 3, 2).is_err());
    }
}
