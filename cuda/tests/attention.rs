//! `kernels/attention.ptx` (FlashAttention-2 forward) against the CPU attention.

mod common;

use common::{bf16_exact, gpus, random, to_bf16, values};
use ditmoe_cuda::ops::attention::{
    flash_attention_backward, flash_attention_forward, AttentionShape,
};
use ditmoe_tensor::{DType, Tensor};
use half::bf16;

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
        let n = heads * tokens * d;
        let (q, k, v) = (
            bf16_exact(random(n, -2.0, 2.0, 1)),
            bf16_exact(random(n, -2.0, 2.0, 2)),
            bf16_exact(random(n, -1.0, 1.0, 3)),
        );
        let scale = (d as f64).powf(-0.5);
        let t = |x: &[f32]| {
            Tensor::from_slice(x, &[heads, tokens, d])
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
        };
        let (expected, expected_lse) = t(&q).flash_attention(&t(&k), &t(&v), scale).unwrap();
        let (expected, expected_lse) = (values(&expected), values(&expected_lse));
        for gpu in gpus() {
            let got = flash_attention_forward(
                &gpu,
                &gpu.upload(&to_bf16(&q)).unwrap(),
                &gpu.upload(&to_bf16(&k)).unwrap(),
                &gpu.upload(&to_bf16(&v)).unwrap(),
                AttentionShape {
                    heads,
                    tokens,
                    head_dim: d,
                },
                scale as f32,
            )
            .unwrap();
            let (out, lse) = (
                gpu.download(&got.out).unwrap(),
                gpu.download(&got.lse).unwrap(),
            );
            // P is rounded to bf16 before P·V (as in FlashAttention): ~3 significant digits.
            let worst = out
                .iter()
                .zip(&expected)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst < 1e-2,
                "O differs by {worst} (T={tokens}, D={d}) on {}",
                gpu.name()
            );
            let worst = lse
                .iter()
                .zip(&expected_lse)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
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
        let n = heads * tokens * d;
        let (q, k, v) = (
            bf16_exact(random(n, -2.0, 2.0, 11)),
            bf16_exact(random(n, -2.0, 2.0, 12)),
            bf16_exact(random(n, -1.0, 1.0, 13)),
        );
        let d_out = random(n, -1.0, 1.0, 14);
        let scale = (d as f64).powf(-0.5);
        let t = |x: &[f32]| {
            Tensor::from_slice(x, &[heads, tokens, d])
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
        };
        let (out, lse) = t(&q).flash_attention(&t(&k), &t(&v), scale).unwrap();
        let expected = t(&q)
            .flash_attention_backward(&t(&k), &t(&v), &out, &lse, &t(&d_out), scale)
            .unwrap();
        for gpu in gpus() {
            let shape = AttentionShape {
                heads,
                tokens,
                head_dim: d,
            };
            let got = flash_attention_backward(
                &gpu,
                &gpu.upload(&to_bf16(&q)).unwrap(),
                &gpu.upload(&to_bf16(&k)).unwrap(),
                &gpu.upload(&to_bf16(&v)).unwrap(),
                &gpu.upload(&values(&out)).unwrap(),
                &gpu.upload(&values(&lse)).unwrap(),
                &gpu.upload(&d_out).unwrap(),
                shape,
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
                let worst = g
                    .iter()
                    .zip(&e)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
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
