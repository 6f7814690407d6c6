//! The training step's optimizer over DiT-MoE-S/4-8E2A's 199 M parameters (issue #16), each
//! against a memory-bound floor in the same run:
//! - `optimizer_step`: the in-place fused AdamW + EMA update of every parameter, against a plain
//!   parallel pass that reads the same five arrays once (parameter, gradient, two moments, EMA
//!   shadow) and one that also writes the four the update writes;
//! - the gradient's global norm (`sum_of_squares` of every gradient, as the trainer computes
//!   it) against a parallel pass that reads the gradients once.
//!
//! Run: `cargo bench -p ditmoe-benches --bench optimizer` (`DITMOE_THREADS` sets the thread
//! count). It holds about 4 GB: five f32 copies of 199 M parameters.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ditmoe_tensor::ops::optim::{AdamWMoments, ParamUpdate};
use ditmoe_tensor::{AdamWHyper, DType, Tensor};
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Duration;

/// The parameter shapes of DiT-MoE-S/4-8E2A (D = 384, 12 blocks, 8 SwiGLU experts of width
/// 1536 stacked per block, a shared expert of width 768, adaLN-Zero), biases included: 199 M.
fn dit_moe_s4_shapes() -> Vec<Vec<usize>> {
    let (d, experts, width, shared) = (384, 8, 1536, 768);
    let mut shapes = vec![vec![d, 3 * 4 * 4], vec![d], vec![10 + 1, d]];
    shapes.extend([vec![d, 256], vec![d], vec![d, d], vec![d]]); // timestep MLP
    for _ in 0..12 {
        shapes.extend([vec![3 * d, d], vec![3 * d], vec![d, d], vec![d]]); // attention
        shapes.extend([vec![6 * d, d], vec![6 * d], vec![experts, d]]); // adaLN, router
        shapes.extend([vec![experts, width, d], vec![experts, width, d]]); // w1, w3
        shapes.push(vec![experts, d, width]); // w2
        shapes.extend([vec![shared, d], vec![shared, d], vec![d, shared]]);
    }
    shapes.extend([
        vec![2 * d, d],
        vec![2 * d],
        vec![4 * 4 * 6, d],
        vec![4 * 4 * 6],
    ]);
    shapes
}

/// One parameter with its gradient, moments and EMA shadow.
struct State {
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    ema: Tensor,
}

fn states() -> Vec<State> {
    let full = |shape: &[usize], value| Tensor::full(shape, value, DType::F32).unwrap();
    dit_moe_s4_shapes()
        .iter()
        .map(|shape| State {
            param: full(shape, 0.02),
            grad: full(shape, 1e-3),
            m: full(shape, 1e-4),
            v: full(shape, 1e-6),
            ema: full(shape, 0.02),
        })
        .collect()
}

fn f32s(t: &Tensor) -> &[f32] {
    match t.storage() {
        ditmoe_tensor::Storage::F32(values) => values,
        _ => unreachable!("the states are f32 on the host"),
    }
}

/// Σ over 16 interleaved lanes of a slice (vectorisable), so the pass runs at memory speed.
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    for chunk in values.chunks_exact(16) {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum()
}

/// 64 Ki-element pieces of every array, the unit of the parallel floor passes.
const PIECE: usize = 1 << 16;

fn optimizer(c: &mut Criterion) {
    let mut states = states();
    let elements: usize = states.iter().map(|s| s.param.numel()).sum();
    println!(
        "optimizer bench: {elements} parameters, {} tensors",
        states.len()
    );
    let mut group = c.benchmark_group("optimizer_dit_moe_s4_199M");
    group.throughput(Throughput::Elements(elements as u64));
    let mut step = 0;
    group.bench_function("optimizer_step/ditmoe", |b| {
        b.iter(|| {
            step += 1;
            let hyper = AdamWHyper {
                lr: 1e-4,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                grad_scale: 0.5,
                step,
            };
            let mut updates: Vec<ParamUpdate> = states
                .iter_mut()
                .map(|s| ParamUpdate {
                    param: &mut s.param,
                    adam: Some(AdamWMoments {
                        grad: &s.grad,
                        m: &mut s.m,
                        v: &mut s.v,
                    }),
                    ema: Some(&mut s.ema),
                })
                .collect();
            Tensor::optimizer_step(&mut updates, &hyper, 0.9999).unwrap()
        })
    });
    let pieces = |arrays: fn(&State) -> Vec<&Tensor>| -> Vec<&[f32]> {
        states
            .iter()
            .flat_map(|s| arrays(s).into_iter().flat_map(|t| f32s(t).chunks(PIECE)))
            .collect()
    };
    let everything = pieces(|s| vec![&s.param, &s.grad, &s.m, &s.v, &s.ema]);
    let pool = ditmoe_tensor::parallel::pool();
    group.bench_function("optimizer_step/read_the_five_arrays_once", |b| {
        b.iter(|| pool.install(|| everything.par_iter().map(|p| lane_sum(p)).sum::<f32>()))
    });
    group.bench_function("optimizer_step/read_five_write_four", |b| {
        let mut copies: Vec<Vec<f32>> = everything.iter().map(|p| p.to_vec()).collect();
        b.iter(|| {
            pool.install(|| {
                // The grad pieces are only read, as in the update; the rest read and written.
                copies.par_iter_mut().enumerate().for_each(|(i, piece)| {
                    if i % 5 == 1 {
                        black_box(lane_sum(piece));
                    } else {
                        piece.iter_mut().for_each(|v| *v = *v * 0.5 + 1.0);
                    }
                })
            })
        })
    });
    let grads: Vec<&Tensor> = states.iter().map(|s| &s.grad).collect();
    group.bench_function("grad_norm/sum_of_squares", |b| {
        b.iter(|| {
            grads
                .iter()
                .map(|g| g.sum_of_squares().unwrap().item().unwrap())
                .sum::<f64>()
        })
    });
    let grad_pieces = pieces(|s| vec![&s.grad]);
    group.bench_function("grad_norm/read_the_gradients_once", |b| {
        b.iter(|| pool.install(|| grad_pieces.par_iter().map(|p| lane_sum(p)).sum::<f32>()))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! { name = benches; config = config(); targets = optimizer }
criterion_main!(benches);
