//! `shapes10`, the built-in dataset: ten classes of geometric figures, generated in code and
//! determined entirely by (seed, index).
//!
//! The class fixes only the figure — disk, ring, square, frame, triangle, plus, cross,
//! diamond, horizontal stripes, vertical stripes. Position, size, stroke thickness and both
//! colours are drawn at random, so a model must learn the shape (not a colour) to follow the
//! label, while 32×32 pixels keep it learnable in minutes on a CPU.

use super::Dataset;
use ditmoe_tensor::seeded_rng;
use rand::Rng;

pub const CLASS_NAMES: [&str; 10] = [
    "disk",
    "ring",
    "square",
    "frame",
    "triangle",
    "plus",
    "cross",
    "diamond",
    "h-stripes",
    "v-stripes",
];

pub struct Shapes {
    pub seed: u64,
    pub size: usize,
    pub count: usize,
}

impl Shapes {
    /// `count` images of `size`×`size` (16, 32 or 64 recommended).
    pub fn new(seed: u64, size: usize, count: usize) -> Self {
        Shapes { seed, size, count }
    }
}

/// Whether pixel offset (dx, dy) from the centre is inside figure `class` of radius r and
/// stroke half-width th.
fn inside(class: usize, dx: f64, dy: f64, r: f64, th: f64) -> bool {
    let (ax, ay) = (dx.abs(), dy.abs());
    let box_dist = ax.max(ay);
    match class {
        0 => dx.hypot(dy) <= r,
        1 => (dx.hypot(dy) - r).abs() <= th,
        2 => box_dist <= r,
        3 => (box_dist - r).abs() <= th,
        4 => dy.abs() <= r && ax <= (dy + r) / 2.0,
        5 => (ax <= th && ay <= r) || (ay <= th && ax <= r),
        6 => box_dist <= r && ((dx - dy).abs() <= th * 1.4 || (dx + dy).abs() <= th * 1.4),
        7 => ax + ay <= r,
        8 => box_dist <= r && ((dy + r) / (r / 2.0)).floor() as i64 % 2 == 0,
        _ => box_dist <= r && ((dx + r) / (r / 2.0)).floor() as i64 % 2 == 0,
    }
}

impl Dataset for Shapes {
    fn len(&self) -> usize {
        self.count
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn image_shape(&self) -> (usize, usize, usize) {
        (3, self.size, self.size)
    }
    fn class_name(&self, class: usize) -> String {
        CLASS_NAMES[class].to_string()
    }
    fn name(&self) -> String {
        format!("shapes10 ({}×{}, seed {})", self.size, self.size, self.seed)
    }

    fn get(&self, index: usize) -> (Vec<f32>, usize) {
        let class = index % 10;
        let rng = &mut seeded_rng(self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let s = self.size as f64 / 32.0;
        let r = rng.random_range(5.0..11.0) * s;
        // Strokes stay at least 1.5 px wide at small sizes, so thin figures remain visible.
        let th = (rng.random_range(1.0..2.2) * s).max(1.5);
        let margin = (r + th + 1.0).min(self.size as f64 / 2.0 - 0.5);
        let far = (self.size as f64 - margin).max(margin + 1e-6);
        let (cx, cy) = (rng.random_range(margin..far), rng.random_range(margin..far));
        let background: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.0..0.35));
        let foreground: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.55..1.0));
        let n = self.size;
        let mut image = vec![0.0f32; 3 * n * n];
        for y in 0..n {
            for x in 0..n {
                let on = inside(class, x as f64 + 0.5 - cx, y as f64 + 0.5 - cy, r, th);
                for ch in 0..3 {
                    let value = if on { foreground[ch] } else { background[ch] };
                    image[(ch * n + y) * n + x] = (2.0 * value - 1.0) as f32;
                }
            }
        }
        (image, class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_by_seed_and_index() {
        let a = Shapes::new(1, 32, 100);
        assert_eq!(a.get(17), Shapes::new(1, 32, 100).get(17));
        assert_ne!(a.get(17).0, Shapes::new(2, 32, 100).get(17).0);
        assert_ne!(a.get(17).0, a.get(27).0, "same class, different figure");
        assert_eq!(a.get(17).1, 7);
    }

    #[test]
    fn every_class_draws_a_figure_of_reasonable_size() {
        let data = Shapes::new(3, 32, 1000);
        for index in 0..100 {
            let (image, class) = data.get(index);
            let (c, h, w) = data.image_shape();
            assert_eq!(image.len(), c * h * w);
            assert!(image.iter().all(|v| (-1.0..=1.0).contains(v)));
            // Count foreground pixels through the first channel's brightest value.
            let max = image[..h * w].iter().cloned().fold(f32::MIN, f32::max);
            let on = image[..h * w].iter().filter(|&&v| v == max).count();
            assert!(
                (8..600).contains(&on),
                "class {class}: {on} foreground pixels"
            );
        }
    }
}
