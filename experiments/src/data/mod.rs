//! Training data: the built-in synthetic dataset and loaders for real datasets on disk.
//! Every dataset yields images in [−1, 1], channel-first, and integer class labels.

pub mod files;
pub mod shapes;

use ditmoe_tensor::{Result, SeededRng, Tensor};
use rand::Rng;

/// A labelled image dataset.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn num_classes(&self) -> usize;
    /// (channels, height, width).
    fn image_shape(&self) -> (usize, usize, usize);
    /// Image `index` (C·H·W values in [−1, 1], channel-first) and its label.
    fn get(&self, index: usize) -> (Vec<f32>, usize);
    /// A short name for reports.
    fn name(&self) -> String;
    /// The name of class `class` (its index unless the dataset knows better).
    fn class_name(&self, class: usize) -> String {
        class.to_string()
    }
}

/// Stacks `indices` into a batch `[B, C, H, W]` and labels `[B]` (i64), mirroring each image
/// left-right with probability ½ when `flip` is set.
pub fn batch(
    data: &dyn Dataset,
    indices: &[usize],
    flip: bool,
    rng: &mut SeededRng,
) -> Result<(Tensor, Tensor)> {
    let (c, h, w) = data.image_shape();
    let mut pixels = Vec::with_capacity(indices.len() * c * h * w);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        let (mut image, label) = data.get(i);
        if flip && rng.random_bool(0.5) {
            for row in image.chunks_mut(w) {
                row.reverse();
            }
        }
        pixels.extend(image);
        labels.push(label as i64);
    }
    Ok((
        Tensor::from_vec(pixels, &[indices.len(), c, h, w])?,
        Tensor::from_vec(labels, &[indices.len()])?,
    ))
}
