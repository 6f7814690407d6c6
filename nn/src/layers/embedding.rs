//! Lookup tables: `Embedding`, and DiT's `LabelEmbedder` with classifier-free-guidance dropout.

use crate::init;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{DType, Result, SeededRng, Tensor};
use rand::Rng;

/// `weight[i]` for each index i.
pub struct Embedding {
    pub weight: Var,
}

impl Embedding {
    /// N(0, 0.02) rows, as DiT initialises its label table.
    pub fn new(count: usize, dim: usize, rng: &mut SeededRng) -> Result<Self> {
        Ok(Embedding {
            weight: Var::parameter(init::normal(&[count, dim], 0.02, rng)?),
        })
    }

    /// `[..] i64 → [.., dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Var> {
        let rows = self.weight.index_select(0, &ids.flatten()?)?;
        rows.reshape(&[ids.shape(), &[self.weight.shape()[1]]].concat())
    }
}

impl Module for Embedding {
    fn visit(&self, v: &mut Visitor) {
        v.param("weight", &self.weight);
    }
}

/// Class-label embedding with an extra "null" row (index `num_classes`) used for
/// classifier-free guidance; in training each label is replaced by null with probability
/// `dropout_prob` (Ho & Salimans, 2022).
pub struct LabelEmbedder {
    pub embedding_table: Embedding,
    pub num_classes: usize,
    pub dropout_prob: f64,
}

impl LabelEmbedder {
    pub fn new(
        num_classes: usize,
        dim: usize,
        dropout_prob: f64,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        let rows = num_classes + usize::from(dropout_prob > 0.0);
        Ok(LabelEmbedder {
            embedding_table: Embedding::new(rows, dim, rng)?,
            num_classes,
            dropout_prob,
        })
    }

    /// Embeds `labels` (i64); with `dropout_rng` (training) some become the null class. Which
    /// ones is drawn on the host (so every device makes the same draws) without reading the
    /// labels: a dropped label's row is swapped for the null row by a 0/1 mask,
    /// `emb·(1 − m) + null·m`, exact for m ∈ {0, 1}, so the labels never leave their device.
    pub fn forward(&self, labels: &Tensor, dropout_rng: Option<&mut SeededRng>) -> Result<Var> {
        labels.check_dtype("label embedder", DType::I64)?;
        let embedded = self.embedding_table.forward(labels)?;
        let Some(rng) = dropout_rng.filter(|_| self.dropout_prob > 0.0) else {
            return Ok(embedded);
        };
        let n = labels.numel();
        let dropped: Vec<f32> = (0..n)
            .map(|_| f32::from(u8::from(rng.random_bool(self.dropout_prob))))
            .collect();
        let device = labels.device();
        let dtype = self.embedding_table.weight.value().dtype();
        let mask = Tensor::from_vec(dropped, &[n, 1])?.to_dtype(dtype)?;
        let kept = mask.mul_scalar(-1.0)?.add_scalar(1.0)?;
        let null_id = Tensor::from_vec(vec![self.num_classes as i64], &[1])?.to_device(device)?;
        let null = self.embedding_table.forward(&null_id)?;
        let (mask, kept) = (
            Var::constant(mask.to_device(device)?),
            Var::constant(kept.to_device(device)?),
        );
        embedded
            .reshape(&[n, self.embedding_table.weight.shape()[1]])?
            .mul(&kept)?
            .add(&null.mul(&mask)?)?
            .reshape(embedded.shape())
    }
}

impl Module for LabelEmbedder {
    fn visit(&self, v: &mut Visitor) {
        v.child("embedding_table", &self.embedding_table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ditmoe_tensor::seeded_rng;

    #[test]
    fn label_dropout_swaps_the_drawn_labels_for_the_null_row() {
        let embedder = LabelEmbedder::new(5, 4, 0.5, &mut seeded_rng(1)).unwrap();
        let labels = Tensor::from_vec(vec![0i64, 1, 2, 3, 4, 0, 1, 2], &[2, 4]).unwrap();
        let out = embedder.forward(&labels, Some(&mut seeded_rng(7))).unwrap();
        assert_eq!(out.shape(), &[2, 4, 4]);
        // The reference: the same draws replace labels by the null class (5) before the lookup.
        let mut rng = seeded_rng(7);
        let replaced: Vec<i64> = labels
            .to_vec::<i64>()
            .unwrap()
            .into_iter()
            .map(|y| if rng.random_bool(0.5) { 5 } else { y })
            .collect();
        assert!(replaced.contains(&5) && replaced.iter().any(|&y| y != 5));
        let expected = embedder
            .forward(&Tensor::from_vec(replaced, &[2, 4]).unwrap(), None)
            .unwrap();
        assert_eq!(out.value().to_vec_f64(), expected.value().to_vec_f64());
        // Without a generator (sampling) nothing is dropped.
        let plain = embedder.forward(&labels, None).unwrap();
        let direct = embedder.embedding_table.forward(&labels).unwrap();
        assert_eq!(plain.value().to_vec_f64(), direct.value().to_vec_f64());
    }
}
