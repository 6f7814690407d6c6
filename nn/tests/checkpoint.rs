//! Checkpoints: a bit-exact round trip, and a clear error for each way a file can be wrong.

use ditmoe_nn::checkpoint::{load_model, read_tensors, save_model, write_tensors};
use ditmoe_nn::module::unstack_names;
use ditmoe_nn::{Dit, DitConfig, Module, MoePlacement};
use ditmoe_tensor::{DType, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ditmoe-ckpt-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn model() -> Dit {
    let base = DitConfig::dense(8, 2, 3, 16, 2, 2, 5);
    let config = base
        .clone()
        .with_moe(base.ditmoe_ffn(4, 2), MoePlacement::EveryOther);
    let model = Dit::new(config, 3).unwrap();
    model.randomize(0.1, 4).unwrap();
    model
}

fn error_of(path: &Path) -> String {
    load_model(path)
        .err()
        .expect("loading should fail")
        .to_string()
}

#[test]
fn save_then_load_is_bit_exact() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("model.safetensors");
    let original = model();
    save_model(&original, &path).unwrap();
    let loaded = load_model(&path).unwrap();
    assert_eq!(loaded.config, original.config);
    let (a, b) = (original.state_dict(), loaded.state_dict());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, tensor) in &a {
        assert_eq!(
            tensor.to_vec::<f32>().unwrap(),
            b[name].to_vec::<f32>().unwrap(),
            "{name}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "the temporary file was renamed away");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn stacked_experts_keep_their_pytorch_names() {
    let model = model();
    // Training view: one [E, out, in] parameter per projection of block 1's MoE.
    let params: std::collections::BTreeMap<String, Tensor> = model
        .named_parameters()
        .into_iter()
        .map(|(name, var)| (name, var.value()))
        .collect();
    let stacked = &params["blocks.1.moe.experts.*.up_proj.weight"];
    assert_eq!(stacked.shape()[0], 4);
    assert!(!params.contains_key("blocks.1.moe.experts.0.up_proj.weight"));
    // Checkpoint view: the slices under DiT-MoE's names, in its order.
    let state = model.state_dict();
    assert_eq!(
        state["blocks.1.moe.experts.3.up_proj.weight"]
            .to_vec::<f32>()
            .unwrap(),
        stacked.narrow(0, 3, 1).unwrap().to_vec::<f32>().unwrap()
    );
    let names: Vec<String> = model
        .checkpoint_tensors()
        .into_iter()
        .map(|t| t.name)
        .filter(|n| n.starts_with("blocks.1.moe.experts."))
        .take(4)
        .collect();
    assert_eq!(
        names,
        [
            "blocks.1.moe.experts.0.gate_proj.weight",
            "blocks.1.moe.experts.0.up_proj.weight",
            "blocks.1.moe.experts.0.down_proj.weight",
            "blocks.1.moe.experts.1.gate_proj.weight"
        ]
    );
    // Training names → checkpoint names → training names, behind a prefix (the optimizer's).
    let unstacked = unstack_names(&params);
    let parameters = state.keys().filter(|n| n.as_str() != "pos_embed");
    assert!(unstacked.keys().eq(parameters));
    let prefixed = unstacked
        .iter()
        .map(|(n, t)| (format!("m.{n}"), t.clone()))
        .collect();
    let restacked = model.stack_names(&prefixed).unwrap();
    assert_eq!(restacked.len(), params.len());
    assert_eq!(
        restacked["m.blocks.1.moe.experts.*.up_proj.weight"]
            .to_vec::<f32>()
            .unwrap(),
        stacked.to_vec::<f32>().unwrap()
    );
    let mut incomplete = unstacked;
    incomplete.remove("blocks.1.moe.experts.2.down_proj.weight");
    let err = model.stack_names(&incomplete).err().unwrap().to_string();
    assert!(
        err.contains("blocks.1.moe.experts.2.down_proj.weight"),
        "{err}"
    );
}

/// Writes the model's state dict edited by `edit`, with the model's config.
fn write_edited(path: &Path, edit: impl FnOnce(&mut std::collections::BTreeMap<String, Tensor>)) {
    let model = model();
    let mut state = model.state_dict();
    edit(&mut state);
    write_tensors(
        path,
        &state,
        HashMap::from([("config".to_string(), model.config.to_json())]),
    )
    .unwrap();
}

#[test]
fn tensor_level_problems_name_the_tensor() {
    let dir = temp_dir("tensors");
    let path = dir.join("edited.safetensors");
    write_edited(&path, |s| {
        s.remove("blocks.1.moe.gate.weight");
    });
    let err = error_of(&path);
    assert!(
        err.contains("missing tensor `blocks.1.moe.gate.weight`"),
        "{err}"
    );

    write_edited(&path, |s| {
        s.insert(
            "blocks.9.attn.qkv.weight".into(),
            Tensor::zeros(&[2], DType::F32).unwrap(),
        );
    });
    assert!(error_of(&path).contains("unexpected tensor `blocks.9.attn.qkv.weight`"));

    write_edited(&path, |s| {
        s.insert(
            "final_layer.linear.bias".into(),
            Tensor::zeros(&[7], DType::F32).unwrap(),
        );
    });
    let err = error_of(&path);
    assert!(
        err.contains("final_layer.linear.bias") && err.contains("expected shape [24], found [7]"),
        "{err}"
    );

    write_edited(&path, |s| {
        let t = s["pos_embed"].to_dtype(DType::F64).unwrap();
        s.insert("pos_embed".into(), t);
    });
    let err = error_of(&path);
    assert!(
        err.contains("pos_embed") && err.contains("expected dtype F32, found F64"),
        "{err}"
    );

    write_tensors(&path, &model().state_dict(), HashMap::new()).unwrap();
    assert!(error_of(&path).contains("no model config in the metadata"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn file_level_problems_are_reported_not_panicked() {
    let dir = temp_dir("files");
    let good = dir.join("good.safetensors");
    save_model(&model(), &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.join("bad.safetensors");

    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    let err = error_of(&bad);
    assert!(
        err.contains("bad.safetensors") && err.contains("not a valid safetensors file"),
        "truncated: {err}"
    );

    std::fs::write(&bad, b"\x05\x00\x00\x00\x00\x00\x00\x00{oops").unwrap();
    assert!(
        error_of(&bad).contains("not a valid safetensors file"),
        "corrupt header"
    );

    std::fs::write(&bad, &bytes[..4]).unwrap();
    assert!(
        error_of(&bad).contains("not a valid safetensors file"),
        "shorter than the length prefix"
    );

    // A header that lies: move the first tensor's offsets past the end of the data.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let start = header.find("\"data_offsets\":[").unwrap() + "\"data_offsets\":[".len();
    let end = start + header[start..].find(']').unwrap();
    let lie = format!("{}{}", "9".repeat(end - start - 2), ",9");
    let mut lying = bytes.clone();
    lying[8 + start..8 + end].copy_from_slice(lie.as_bytes());
    std::fs::write(&bad, &lying).unwrap();
    assert!(
        error_of(&bad).contains("not a valid safetensors file"),
        "lying offsets"
    );

    // Zero elements, so safetensors accepts it, but the strides need 2^80 (found by fuzzing:
    // fuzz/regressions/safetensors/zero-size-huge-strides.safetensors).
    let header =
        br#"{"a":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}}"#;
    let mut empty = (header.len() as u64).to_le_bytes().to_vec();
    empty.extend(header);
    std::fs::write(&bad, &empty).unwrap();
    let err = read_tensors(&bad).err().expect("huge strides").to_string();
    assert!(
        err.contains("tensor `a`") && err.contains("strides overflow"),
        "{err}"
    );

    let missing = dir.join("absent.safetensors");
    assert!(error_of(&missing).contains("absent.safetensors"));
    assert!(read_tensors(&missing).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}
