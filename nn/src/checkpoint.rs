//! Checkpoints in the safetensors format (Hugging Face): an 8-byte header length, a JSON header
//! mapping each name to dtype, shape and byte offsets, then the raw little-endian data. Names
//! are PyTorch's, so a DiT / DiT-MoE state dict saved with `safetensors.torch.save_file` loads
//! here and ours loads there. The model config rides along as JSON in the metadata (`config`).
//!
//! Files are read whole into memory (not memory-mapped, so a file cut short underneath is an
//! error, not a SIGBUS) and tensors converted from those bytes. Files are streamed, a tensor at a
//! time, to a temporary sibling and renamed into place, so an interrupted save never leaves a
//! half-written checkpoint under the real name.

use crate::accounting::{check_memory, machine_memory, memory_estimate, Workload};
use crate::config::DitConfig;
use crate::dit::Dit;
use crate::module::Module;
use ditmoe_tensor::{with_element_type, DType, Tensor};
use half::{bf16, f16};
use safetensors::tensor::{Dtype as StDtype, TensorView, View};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Why a checkpoint could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file ({reason})")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}` has dtype {found}, which ditmoe cannot hold (expected F32, F64, BF16, F16 or I64)")]
    UnsupportedDType {
        path: PathBuf,
        name: String,
        found: String,
    },
    #[error("{path}: no model config in the metadata (expected a `config` entry holding JSON)")]
    MissingConfig { path: PathBuf },
    #[error("{path}: bad model config: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Mismatch { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, CheckpointError>;

/// The tensors of a safetensors file, by name, with the file's metadata.
pub struct TensorFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

fn corrupt(path: &Path, reason: impl ToString) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn to_tensor(path: &Path, name: &str, view: &TensorView) -> Result<Tensor> {
    let bytes = view.data();
    let shape = view.shape();
    // safetensors checks the element count, which one zero-size dimension makes 0 whatever
    // the others; the strides, products from the right, must fit too.
    if shape
        .iter()
        .rev()
        .try_fold(1usize, |count, &size| count.checked_mul(size))
        .is_none()
    {
        return Err(corrupt(
            path,
            format!("tensor `{name}` has shape {shape:?}, whose strides overflow"),
        ));
    }
    fn decode<T: ditmoe_tensor::Element, const N: usize>(
        bytes: &[u8],
        shape: &[usize],
        from: fn([u8; N]) -> T,
    ) -> Tensor {
        let values = bytes
            .chunks_exact(N)
            .map(|c| from(c.try_into().unwrap()))
            .collect();
        Tensor::from_vec(values, shape).expect("safetensors checked the byte count")
    }
    Ok(match view.dtype() {
        StDtype::F32 => decode::<f32, 4>(bytes, shape, f32::from_le_bytes),
        StDtype::F64 => decode::<f64, 8>(bytes, shape, f64::from_le_bytes),
        StDtype::I64 => decode::<i64, 8>(bytes, shape, i64::from_le_bytes),
        StDtype::BF16 => decode::<bf16, 2>(bytes, shape, bf16::from_le_bytes),
        StDtype::F16 => decode::<f16, 2>(bytes, shape, f16::from_le_bytes),
        other => {
            return Err(CheckpointError::UnsupportedDType {
                path: path.to_path_buf(),
                name: name.to_string(),
                found: format!("{other:?}"),
            })
        }
    })
}

/// Reads every tensor of a safetensors file.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<TensorFile> {
    let path = path.as_ref();
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).map_err(io)?.is_dir() {
        return Err(corrupt(
            path,
            "expected a safetensors file, found a directory",
        ));
    }
    // Read whole rather than memory-mapped: a file cut short by another process while it is
    // read is then a parse error, not a SIGBUS.
    let bytes = std::fs::read(path).map_err(io)?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(path, e))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        tensors.insert(name.clone(), to_tensor(path, &name, &view)?);
    }
    Ok(TensorFile {
        tensors,
        metadata: header.metadata().clone().unwrap_or_default(),
    })
}

fn st_dtype(dtype: DType) -> StDtype {
    match dtype {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        DType::I64 => StDtype::I64,
    }
}

fn le_bytes(t: &Tensor) -> Vec<u8> {
    with_element_type!(t.dtype(), T => t.values::<T>().expect("dtype matches").iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Writes `tensors` (and `metadata`) to `path` atomically (see [`crate::files`]: an existing
/// `path` that is not a regular file is refused, a symlink written through).
pub fn write_tensors(
    path: impl AsRef<Path>,
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Device tensors are copied to the host first.
    let on_host: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(ditmoe_tensor::Device::Cpu)?)))
        .collect::<std::result::Result<_, ditmoe_tensor::TensorError>>()
        .map_err(|e| CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: format!("copying a tensor from the GPU failed: {e}"),
        })?;
    let views = on_host.iter().map(|(n, t)| (n, LittleEndian(t)));
    crate::files::write_atomically_with(path, |temporary| {
        safetensors::tensor::serialize_to_file(views, Some(metadata), temporary)
            .map_err(std::io::Error::other)
    })
    .map_err(io)
}

/// A host tensor as the safetensors writer sees it: its little-endian bytes are made when the
/// writer reaches it, so a file is streamed to disk one tensor at a time rather than assembled
/// whole in memory first (a DiT-MoE-S/4 checkpoint is 3.2 GB: fresh pages cost more than the
/// write).
struct LittleEndian<'a>(&'a Tensor);

impl View for LittleEndian<'_> {
    fn dtype(&self) -> StDtype {
        st_dtype(self.0.dtype())
    }
    fn shape(&self) -> &[usize] {
        self.0.shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(le_bytes(self.0))
    }
    fn data_len(&self) -> usize {
        self.0.numel() * self.0.dtype().size_in_bytes()
    }
}

/// Saves a model's state dict with its config in the metadata.
pub fn save_model(model: &Dit, path: impl AsRef<Path>) -> Result<()> {
    let metadata = HashMap::from([
        ("config".to_string(), model.config.to_json()),
        ("format".to_string(), "pt".to_string()),
    ]);
    write_tensors(path, &model.state_dict(), metadata)
}

/// Builds the model its metadata describes and loads every tensor into it. Fails, naming the
/// tensor, on a missing or unexpected tensor, a shape or a dtype mismatch; refuses, before
/// building anything, a config that fails validation or needs more memory than this machine
/// has (see [`load_model_within`]).
pub fn load_model(path: impl AsRef<Path>) -> Result<Dit> {
    load_model_within(path, machine_memory())
}

/// [`load_model`] with the memory the model must fit in (`None`: only the absolute size caps
/// of [`check_memory`] apply).
pub fn load_model_within(path: impl AsRef<Path>, memory_bytes: Option<f64>) -> Result<Dit> {
    let path = path.as_ref();
    let file = read_tensors(path)?;
    let config_json =
        file.metadata
            .get("config")
            .ok_or_else(|| CheckpointError::MissingConfig {
                path: path.to_path_buf(),
            })?;
    let bad_config = |reason| CheckpointError::BadConfig {
        path: path.to_path_buf(),
        reason,
    };
    let config = DitConfig::from_json(config_json).map_err(bad_config)?;
    let estimate = memory_estimate(&config, Workload::Inference { batch: 1 });
    check_memory(&estimate, "model weights", memory_bytes).map_err(bad_config)?;
    let model = Dit::new(config, 0).map_err(|e| bad_config(e.to_string()))?;
    model
        .load_state_dict(&file.tensors)
        .map_err(|e| CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(model)
}
