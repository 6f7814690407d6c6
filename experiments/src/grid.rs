//! Sample grids as PNG: one row per class, each row labelled with its class index in a tiny
//! built-in 3×5 pixel font (drawn at 2× scale in a left margin).

use anyhow::{Context, Result};
use ditmoe_tensor::Tensor;
use std::path::Path;

/// 3×5 glyphs of the digits 0–9, one row of 3 bits per line, top to bottom.
const DIGITS: [[u8; 5]; 10] = [
    [0b111, 0b101, 0b101, 0b101, 0b111],
    [0b010, 0b110, 0b010, 0b010, 0b111],
    [0b111, 0b001, 0b111, 0b100, 0b111],
    [0b111, 0b001, 0b111, 0b001, 0b111],
    [0b101, 0b101, 0b111, 0b001, 0b001],
    [0b111, 0b100, 0b111, 0b001, 0b111],
    [0b111, 0b100, 0b111, 0b101, 0b111],
    [0b111, 0b001, 0b010, 0b010, 0b010],
    [0b111, 0b101, 0b111, 0b101, 0b111],
    [0b111, 0b101, 0b111, 0b001, 0b111],
];
const SCALE: usize = 2;
const PAD: usize = 2;

/// Writes `images` (`[rows·cols, C, H, W]`, values in [−1, 1], C = 1 or 3, row-major by class)
/// as a grid with `rows` rows; `labels[r]` is drawn left of row r. The file is written
/// atomically, and an existing `path` that is not a regular file refused (see
/// [`ditmoe_nn::files`]).
pub fn write_grid(path: &Path, images: &Tensor, rows: usize, labels: &[usize]) -> Result<()> {
    let &[n, c, h, w] = images.shape() else {
        anyhow::bail!(
            "sample grid: expected [N, C, H, W] images, found {:?}",
            images.shape()
        )
    };
    let cols = n.div_ceil(rows.max(1));
    let margin = 4 * SCALE * 3 + 2 * PAD;
    let (width, height) = (margin + cols * (w + PAD) + PAD, rows * (h + PAD) + PAD);
    let mut rgb = vec![255u8; width * height * 3];
    let values = images.to_vec_f64();
    for i in 0..n {
        let (r, col) = (i / cols, i % cols);
        let (x0, y0) = (margin + PAD + col * (w + PAD), PAD + r * (h + PAD));
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    let v = values[((i * c + ch.min(c - 1)) * h + y) * w + x];
                    rgb[((y0 + y) * width + x0 + x) * 3 + ch] =
                        ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                }
            }
        }
    }
    for (r, label) in labels.iter().enumerate().take(rows) {
        let text = label.to_string();
        let y0 = PAD + r * (h + PAD) + (h.saturating_sub(5 * SCALE)) / 2;
        for (k, digit) in text.bytes().enumerate() {
            let glyph = DIGITS[(digit - b'0') as usize];
            for (gy, bits) in glyph.iter().enumerate() {
                for gx in 0..3 {
                    if bits >> (2 - gx) & 1 == 1 {
                        for (dy, dx) in (0..SCALE).flat_map(|a| (0..SCALE).map(move |b| (a, b))) {
                            let (x, y) = (PAD + (k * 4 + gx) * SCALE + dx, y0 + gy * SCALE + dy);
                            if x < margin && y < height {
                                rgb[(y * width + x) * 3..(y * width + x) * 3 + 3].fill(0);
                            }
                        }
                    }
                }
            }
        }
    }
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(&rgb))
        .with_context(|| path.display().to_string())?;
    ditmoe_nn::files::write_atomically(path, &png_bytes).with_context(|| path.display().to_string())
}
