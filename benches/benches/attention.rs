//! Fused (FlashAttention-2 style) vs naive attention on the CPU: time, forward and
//! forward + backward, at T = 256, 1024, 4096 (1 image, 4 heads, head dim 64), and the peak
//! heap memory of one call of each, printed before the timings.
//!
//! Run: `cargo bench -p ditmoe-benches --bench attention`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ditmoe_autograd::{no_grad, Var};
use ditmoe_nn::layers::naive_attention;
use ditmoe_tensor::memory::{self, CountingAllocator};
use ditmoe_tensor::{seeded_rng, DType, Tensor};
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Heap bytes allocated at the high-water mark of `f`, above what was live before it.
fn peak_bytes(f: impl FnOnce()) -> usize {
    let before = memory::live_bytes();
    memory::reset_peak();
    f();
    memory::peak_bytes() - before
}

const HEADS: usize = 4;
const HEAD_DIM: usize = 64;

fn qkv(t: usize) -> [Var; 3] {
    [1, 2, 3].map(|seed| {
        Var::parameter(
            Tensor::randn(
                &[1, HEADS, t, HEAD_DIM],
                0.0,
                1.0,
                DType::F32,
                &mut seeded_rng(seed),
            )
            .unwrap(),
        )
    })
}

type Kernel = fn(&Var, &Var, &Var, f64) -> ditmoe_tensor::Result<Var>;
const KERNELS: [(&str, Kernel); 2] = [("fused", Var::flash_attention), ("naive", naive_attention)];

fn step(kernel: Kernel, [q, k, v]: &[Var; 3], backward: bool) {
    let scale = (HEAD_DIM as f64).powf(-0.5);
    if backward {
        kernel(q, k, v, scale)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        [q, k, v].iter().for_each(|x| x.zero_grad());
    } else {
        no_grad(|| kernel(q, k, v, scale).unwrap());
    }
}

fn attention(c: &mut Criterion) {
    for t in [256, 1024, 4096] {
        let inputs = qkv(t);
        for (name, kernel) in KERNELS {
            for backward in [false, true] {
                let mib = peak_bytes(|| step(kernel, &inputs, backward)) as f64 / (1 << 20) as f64;
                println!(
                    "peak memory: attention {name} {} T={t}: {mib:.1} MiB",
                    if backward {
                        "forward+backward"
                    } else {
                        "forward"
                    }
                );
            }
        }
    }
    for backward in [false, true] {
        let mut group = c.benchmark_group(if backward {
            "attention_forward_backward"
        } else {
            "attention_forward"
        });
        for t in [256, 1024, 4096] {
            let inputs = qkv(t);
            // Standard count: forward 4·H·T²·d FLOPs, backward 2.5× forward.
            let flops = 4 * HEADS * t * t * HEAD_DIM;
            group.throughput(Throughput::Elements(
                if backward { flops * 7 / 2 } else { flops } as u64,
            ));
            for (name, kernel) in KERNELS {
                group.bench_function(BenchmarkId::new(name, t), |b| {
                    b.iter(|| step(kernel, &inputs, backward))
                });
            }
        }
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = attention }
criterion_main!(benches);
