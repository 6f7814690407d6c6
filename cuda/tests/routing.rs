//! The MoE routing kernels against host references on random routings: positions from token-
//! and expert-choice picks, and the stable dispatch order with its group sizes.

mod common;

use common::gpus;
use ditmoe_cuda::ops::routing::{
    dispatch_order, expert_choice_positions, token_choice_positions, ExpertChoiceShape,
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
