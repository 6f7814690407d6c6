//! What runs the PTX: the seam between [`Gpu`](crate::Gpu) and the two things that can —
//! an NVIDIA GPU through the driver (`crate::driver`) and the PTX interpreter
//! (`crate::emulator::runtime`). A runtime allocates, copies, loads modules and launches;
//! everything else (counting, timing, the constant tables) is the `Gpu`'s, the same for both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver as cu;

use crate::buffer::{Allocation, Region};
use crate::error::{CudaError, Result};
use crate::launch::{Arg, LaunchConfig};

/// A kernel to launch: its entry name, the module it is in and that module's PTX.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry<'a> {
    pub module: &'a str,
    pub name: &'a str,
    pub ptx: &'a str,
}

impl KernelEntry<'_> {
    /// The error of an entry the module does not have.
    pub fn unknown(&self) -> CudaError {
        CudaError::UnknownKernel {
            module: self.module.to_string(),
            kernel: self.name.to_string(),
        }
    }
}

/// Device memory, copies and launches on one device. Every kernel and copy of a runtime is
/// in order (one stream), so a download sees every launch made before it.
pub trait Runtime: Send + Sync {
    /// A human-readable name: the GPU model, or "PTX emulator (CPU)".
    fn name(&self) -> &str;

    /// A new allocation holding a copy of `bytes`.
    fn upload(&self, bytes: &[u8]) -> Result<Box<dyn Allocation>>;

    /// A new allocation of `bytes` zero bytes, set on the device (no copy from the host).
    fn zeros(&self, bytes: usize) -> Result<Box<dyn Allocation>>;

    /// A copy of `region`, once the kernels launched before have finished.
    fn download(&self, region: Region) -> Result<Vec<u8>>;

    /// Launches `kernel` (its module loaded and cached on first use) with `args`, exactly the
    /// parameters it declares.
    fn launch(&self, kernel: KernelEntry, config: LaunchConfig, args: &[Arg]) -> Result<()>;

    /// Waits for every launched kernel to finish.
    fn synchronize(&self) -> Result<()>;

    /// The driver stream kernels run on, for other CUDA libraries to share; `None` on the
    /// emulator.
    fn cuda_stream(&self) -> Option<Arc<cu::CudaStream>> {
        None
    }
}

/// Loaded modules (or kernel handles) by name, each loaded once.
pub(crate) struct Cache<V>(Mutex<HashMap<String, V>>);

impl<V: Clone> Cache<V> {
    pub(crate) fn new() -> Cache<V> {
        Cache(Mutex::new(HashMap::new()))
    }

    /// The value cached under `key`, made by `load` the first time.
    pub(crate) fn get_or_load(&self, key: &str, load: impl FnOnce() -> Result<V>) -> Result<V> {
        let mut cache = self.0.lock().expect("module cache");
        if let Some(value) = cache.get(key) {
            return Ok(value.clone());
        }
        let value = load()?;
        cache.insert(key.to_string(), value.clone());
        Ok(value)
    }
}
