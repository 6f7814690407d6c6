//! The GPU handle: typed buffers and kernel launches on a [`Runtime`] — a real NVIDIA GPU
//! through the driver (`crate::driver`) or our PTX interpreter on the CPU
//! (`crate::emulator::runtime`) — with what is the same for both around it: each request
//! counted ([`crate::traffic`]), launches timed while a profiler asks
//! ([`crate::kernel_timing`]), and read-only tables uploaded once ([`Gpu::constant_table`]).
//!
//! Kernels are launched by module and entry name with a slice of [`Arg`]s; the typed wrappers in
//! `crate::ops` are the only callers, so each kernel's argument list is written down once.
//! How they multiply (tensor cores or not, the GEMM tile) is the caller's scoped
//! [`crate::precision`], not the GPU's.

use std::sync::Arc;

use cudarc::driver as cu;

use crate::buffer::{Buffer, Region};
use crate::constant_tables::ConstantTables;
use crate::driver::DriverRuntime;
use crate::element::{from_bytes, to_bytes, Element};
use crate::emulator::runtime::EmulatorRuntime;
use crate::error::{CudaError, Result};
use crate::kernel_timing;
use crate::kernels;
use crate::launch::{Arg, LaunchConfig};
use crate::runtime::{KernelEntry, Runtime};
use crate::traffic::{self, Request};

/// A GPU (or its emulation) that owns buffers and runs our kernels.
pub struct Gpu {
    runtime: Box<dyn Runtime>,
    tables: ConstantTables,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.name())
    }
}

impl Gpu {
    /// Opens GPU `ordinal` through the NVIDIA driver. Without a driver the error says so:
    /// "no NVIDIA driver found …".
    pub fn new(ordinal: usize) -> Result<Gpu> {
        Ok(Gpu::on(Box::new(DriverRuntime::open(ordinal)?)))
    }

    /// The PTX interpreter: same kernels, same launches, on the CPU.
    pub fn emulator() -> Gpu {
        Gpu::on(Box::new(EmulatorRuntime::default()))
    }

    /// A GPU on `runtime`.
    pub fn on(runtime: Box<dyn Runtime>) -> Gpu {
        Gpu {
            runtime,
            tables: ConstantTables::default(),
        }
    }

    /// A human-readable name: the GPU model, or "PTX emulator (CPU)".
    pub fn name(&self) -> &str {
        self.runtime.name()
    }

    /// The driver stream kernels run on, for other CUDA libraries to share; `None` on the
    /// emulator.
    pub fn cuda_stream(&self) -> Option<Arc<cu::CudaStream>> {
        self.runtime.cuda_stream()
    }

    /// Copies `values` into a new device buffer.
    pub fn upload<T: Element>(&self, values: &[T]) -> Result<Buffer<T>> {
        traffic::count(Request::Upload);
        let allocation = self.runtime.upload(&to_bytes(values))?;
        Ok(Buffer::new(allocation, values.len()))
    }

    /// `values` in a device buffer that kernels only read (a shape/stride table): uploaded the
    /// first time, then the same buffer for the same values — no copy, no wait.
    pub fn constant_table(&self, values: &[u32]) -> Result<Arc<Buffer<u32>>> {
        self.tables.get_or_upload(values, || self.upload(values))
    }

    /// A new device buffer of `len` zeros. On a GPU this is a device
    /// memset, not a copy from the host: every op allocates its output this way.
    pub fn zeros<T: Element>(&self, len: usize) -> Result<Buffer<T>> {
        traffic::count(Request::Allocation);
        Ok(Buffer::new(self.runtime.zeros(len * T::BYTES)?, len))
    }

    /// Copies a device buffer back to the host (waits for the kernels that write it).
    pub fn download<T: Element>(&self, buffer: &Buffer<T>) -> Result<Vec<T>> {
        traffic::count(Request::Download);
        let region = buffer.raw.region();
        let region = Region {
            bytes: region.bytes.min(buffer.len() * T::BYTES),
            ..region
        };
        if region.bytes == 0 {
            return Ok(Vec::new());
        }
        Ok(from_bytes(&self.runtime.download(region)?))
    }

    /// Waits for every launched kernel to finish.
    pub fn synchronize(&self) -> Result<()> {
        self.runtime.synchronize()
    }

    /// Launches `entry` of kernel module `module` (loaded and cached on first use); timed
    /// alone while this thread times kernels.
    pub fn launch(
        &self,
        module: &str,
        entry: &str,
        config: LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
        let ptx = kernels::module_source(module).ok_or_else(|| CudaError::UnknownKernel {
            module: module.to_string(),
            kernel: entry.to_string(),
        })?;
        let kernel = KernelEntry {
            module,
            name: entry,
            ptx,
        };
        traffic::count(Request::Launch);
        if !kernel_timing::is_on() {
            return self.runtime.launch(kernel, config, args);
        }
        self.synchronize()?;
        let start = std::time::Instant::now();
        self.runtime.launch(kernel, config, args)?;
        self.synchronize()?;
        kernel_timing::record(entry, start.elapsed());
        Ok(())
    }
}
