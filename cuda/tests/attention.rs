//! `kernels/attention.ptx` and `kernels/attention_backward.ptx` (FlashAttention-2) against the
//! CPU attention and its gradients.

mod common;

use common::{bf16_exact, gpus, random, to_bf16, values};
use ditmoe_cuda::ops::attention::{
    flash_attention_backward, flash_attention_forward, AttentionShape,
};
use ditmoe_tensor::{DType, Tensor};
use half::bf16;

/// Random bf16-exact q, k, v of `heads` heads of `[tokens, d]`.
struct Case {
    shape: AttentionShape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Case {
    fn new(heads: usize, tokens: usize, d: usize, seed: u64) -> Case {
        let n = heads * tokens * d;
        Case {
            shape: AttentionShape {
                heads,
                tokens,
                head_dim: d,
            },
            q: bf16_exact(random(n, -2.0, 2.0, seed)),
            k: bf16_exact(random(n, -2.0, 2.0, seed + 1)),
            v: bf16_exact(random(n, -1.0, 1.0, seed + 2)),
        }
    }

    fn scale(&self) -> f64 {
        (self.shape.head_dim as f64).powf(-0.5)
    }

    /// `x` (one of this case's `[heads, tokens, d]` matrices) as an f64 CPU tensor.
    fn cpu(&self, x: &[f32]) -> Tensor {
        let AttentionShape {
            heads,
            tokens,
            head_dim,
        } = self.shape;
        Tensor::from_slice(x, &[heads, tokens, head_dim])
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    }
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    ditmoe_tensor::compare::max_abs_difference(a, b) as f32
}

#[test]
fn flash_forward_matches_the_cpu_attention() {
    // (heads, tokens, head dim): partial query and key tiles, one and several key tiles.
    // Head dims 24 and 72 are zero-padded to 32 and 80 inside the kernel.
    for (heads, tokens, d) in [
        (2, 37, 16),
        (1, 45, 24),
        (1, 130, 32),
        (1, 70, 64),
        (1, 33, 72),
        (1, 65, 128),
    ] {
        let case = Case::new(heads, tokens, d, 1);
        let (q, k, v) = (&case.q, &case.k, &case.v);
        let scale = case.scale();
        let (expected, expected_lse) = case
            .cpu(q)
            .flash_attention(&case.cpu(k), &case.cpu(v), scale)
            .unwrap();
        let (expected, expected_lse) = (values(&expected), values(&expected_lse));
        for gpu in gpus() {
            let got = flash_attention_forward(
                &gpu,
                &gpu.upload(&to_bf16(q)).unwrap(),
                &gpu.upload(&to_bf16(k)).unwrap(),
                &gpu.upload(&to_bf16(v)).unwrap(),
                case.shape,
                scale as f32,
            )
            .unwrap();
            let (out, lse) = (
                gpu.download(&got.out).unwrap(),
                gpu.download(&got.lse).unwrap(),
            );
            // P is rounded to bf16 before P·V (as in FlashAttention): ~3 significant digits.
            let worst = max_difference(&out, &expected);
            assert!(
                worst < 1e-2,
                "O differs by {worst} (T={tokens}, D={d}) on {}",
                gpu.name()
            );
            let worst = max_difference(&lse, &expected_lse);
            assert!(
                worst < 1e-4,
                "LSE differs by {worst} (T={tokens}, D={d}) on {}",
                gpu.name()
            );
        }
    }
}

#[test]
fn unsupported_head_dims_are_refused() {
    let gpu = ditmoe_cuda::Gpu::emulator();
    let x = gpu.zeros::<bf16>(24).unwrap();
    let shape = AttentionShape {
        heads: 1,
        tokens: 1,
        head_dim: 20,
    };
    let err = flash_attention_forward(&gpu, &x, &x, &x, shape, 1.0)
        .err()
        .unwrap();
    assert!(err.to_string().contains("head dims"), "{err}");
}

#[test]
fn flash_backward_matches_the_cpu_gradients() {
    // Every backward build: fused dK dV (16–72, 72 with padded columns), split dK and dV (128).
    for (heads, tokens, d) in [
        (2, 37, 16),
        (1, 45, 24),
        (1, 130, 32),
        (1, 70, 64),
        (1, 70, 72),
        (1, 67, 128),
    ] {
        let case = Case::new(heads, tokens, d, 11);
        let (q, k, v) = (&case.q, &case.k, &case.v);
        let d_out = random(heads * tokens * d, -1.0, 1.0, 14);
        let scale = case.scale();
        let (out, lse) = case
            .cpu(q)
            .flash_attention(&case.cpu(k), &case.cpu(v), scale)
            .unwrap();
        let expected = case
            .cpu(q)
            .flash_attention_backward(
                &case.cpu(k),
                &case.cpu(v),
                &out,
                &lse,
                &case.cpu(&d_out),
                scale,
            )
            .unwrap();
        for gpu in gpus() {
            let got = flash_attention_backward(
                &gpu,
                &gpu.upload(&to_bf16(q)).unwrap(),
                &gpu.upload(&to_bf16(k)).unwrap(),
                &gpu.upload(&to_bf16(v)).unwrap(),
                &gpu.upload(&values(&out)).unwrap(),
                &gpu.upload(&values(&lse)).unwrap(),
                &gpu.upload(&d_out).unwrap(),
                case.shape,
                scale as f32,
            )
            .unwrap();
            for (what, buffer, reference) in [
                ("dq", &got.q, &expected.q),
                ("dk", &got.k, &expected.k),
                ("dv", &got.v, &expected.v),
            ] {
                let (g, e) = (gpu.download(buffer).unwrap(), values(reference));
                let scale_of = e.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let worst = max_difference(&g, &e);
                // P, dS and dO pass through bf16 on the tensor cores.
                assert!(
                    worst < 3e-2 * scale_of,
                    "{what} differs by {worst} (scale {scale_of}, T={tokens}, D={d}) on {}",
                    gpu.name()
                );
            }
        }
    }
}
