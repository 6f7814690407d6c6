//! The MoE routing kernels against host references on random routings: positions from token-
//! and expert-choice picks, expert race's selection over the whole grid, and the stable
//! dispatch order with its group sizes.

mod common;

use common::gpus;
use ditmoe_cuda::ops::routing::{
    dispatch_order, expert_choice_positions, expert_race_positions, token_choice_positions,
    ExpertChoiceShape,
};
use rand::{Rng, SeedableRng};

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn token_and_expert_choice_picks_become_grid_positions() {
    let mut r = rng(1);
    let (tokens, k, experts) = (300, 2, 8);
    let picks: Vec<u32> = (0..tokens * k)
        .map(|_| r.random_range(0..experts as u32))
        .collect();
    let expected: Vec<u32> = picks
        .iter()
        .enumerate()
        .map(|(s, &e)| (s / k * experts) as u32 + e)
        .collect();
    let shape = ExpertChoiceShape {
        groups: 3,
        group_tokens: 50,
        capacity: 12,
        experts,
    };
    let ec_picks: Vec<u32> = (0..3 * 12 * experts)
        .map(|_| r.random_range(0..50))
        .collect();
    let mut ec_expected = vec![];
    for g in 0..3 {
        for e in 0..experts {
            for rank in 0..12 {
                let token = g * 50 + ec_picks[(g * 12 + rank) * experts + e] as usize;
                ec_expected.push((token * experts + e) as u32);
            }
        }
    }
    for gpu in gpus() {
        let got = token_choice_positions(&gpu, &gpu.upload(&picks).unwrap(), k, experts).unwrap();
        assert_eq!(gpu.download(&got).unwrap(), expected, "{}", gpu.name());
        let got = expert_choice_positions(&gpu, &gpu.upload(&ec_picks).unwrap(), shape).unwrap();
        assert_eq!(gpu.download(&got).unwrap(), ec_expected, "{}", gpu.name());
        let odd = gpu.upload(&[0u32; 5]).unwrap();
        assert!(token_choice_positions(&gpu, &odd, 2, experts).is_err());
        assert!(expert_choice_positions(&gpu, &odd, shape).is_err());
    }
}

/// The host reference: slots stably sorted by expert, and pairs per expert.
fn sorted_by_expert(positions: &[u32], experts: usize) -> (Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..positions.len() as u32).collect();
    order.sort_by_key(|&s| positions[s as usize] as usize % experts);
    let mut counts = vec![0u32; experts];
    positions
        .iter()
        .for_each(|&p| counts[p as usize % experts] += 1);
    (order, counts)
}

#[test]
fn dispatch_order_is_a_stable_sort_by_expert_with_its_group_sizes() {
    let mut r = rng(2);
    // 700 pairs span three 256-pair chunks; expert 5 gets none, expert 0 most (skewed).
    let experts = 8;
    let skewed: Vec<u32> = (0..700)
        .map(|_| {
            let token = r.random_range(0..400u32);
            let e = match r.random_range(0..10) {
                0..=4 => 0,
                x => [1, 2, 3, 4, 6, 7][x - 4],
            };
            token * experts + e
        })
        .collect();
    let one_expert: Vec<u32> = (0..37).collect();
    for gpu in gpus() {
        for (positions, experts) in [(&skewed, 8usize), (&one_expert, 1), (&vec![], 4)] {
            let (order, counts) = sorted_by_expert(positions, experts);
            let buffer = gpu.upload(positions).unwrap();
            let got = dispatch_order(&gpu, &buffer, experts).unwrap();
            let what = format!(
                "{} pairs, {experts} experts, {}",
                positions.len(),
                gpu.name()
            );
            assert_eq!(gpu.download(&got.order).unwrap(), order, "{what}");
            assert_eq!(gpu.download(&got.counts).unwrap(), counts, "{what}");
            let tokens: Vec<u32> = order
                .iter()
                .map(|&s| positions[s as usize] / experts as u32)
                .collect();
            let owners: Vec<u32> = order
                .iter()
                .map(|&s| positions[s as usize] % experts as u32)
                .collect();
            assert_eq!(gpu.download(&got.token_of).unwrap(), tokens, "{what}");
            assert_eq!(gpu.download(&got.expert_of).unwrap(), owners, "{what}");
        }
        assert!(dispatch_order(&gpu, &gpu.upload(&[1u32]).unwrap(), 0).is_err());
    }
}

/// The host reference of expert race: the `picks` highest scores (ties, -0 = +0 included, to
/// the lower position), in grid order.
fn race_reference(scores: &[f32], picks: usize) -> Vec<u32> {
    let mut ranked: Vec<u32> = (0..scores.len() as u32).collect();
    ranked.sort_by(|&a, &b| {
        let (x, y) = (scores[a as usize], scores[b as usize]);
        y.partial_cmp(&x).expect("no NaN").then(a.cmp(&b))
    });
    let mut chosen = ranked[..picks].to_vec();
    chosen.sort();
    chosen
}

#[test]
fn expert_race_keeps_the_best_scores_of_the_grid_with_ties_to_the_lower_position() {
    let mut r = rng(3);
    // 2500 scores (three 1024-position chunks) of few distinct values, so the K-th score is
    // tied many times and the tie rule decides; negatives and both zeros flip the key's bits.
    let tied: Vec<f32> = (0..2500)
        .map(|_| [-1.5f32, -0.0, 0.0, 0.25, 0.25, 3.0][r.random_range(0..6)])
        .collect();
    // Distinct scores that share their high bytes, so every radix pass decides.
    let close: Vec<f32> = (0..1500)
        .map(|i| 1.0 + (i as f32 * 7919.0 % 1500.0) * f32::EPSILON)
        .collect();
    let uniform = common::random(700, -4.0, 4.0, 4);
    for gpu in gpus() {
        for (scores, picks) in [
            (&tied, 1),
            (&tied, 777),
            (&tied, 1600),
            (&tied, 2500),
            (&close, 600),
            (&uniform, 350),
            (&uniform, 0),
        ] {
            let got = expert_race_positions(&gpu, &gpu.upload(scores).unwrap(), picks).unwrap();
            assert_eq!(
                gpu.download(&got).unwrap(),
                race_reference(scores, picks),
                "{} scores, {picks} picks, {}",
                scores.len(),
                gpu.name()
            );
        }
        let small = gpu.upload(&[1.0f32; 4]).unwrap();
        assert!(expert_race_positions(&gpu, &small, 5).is_err());
    }
}
