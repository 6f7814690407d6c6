//! The GPU handle: device buffers, the module cache and kernel launches, on one of two backends
//! that run the same PTX —
//! - **Driver**: a real NVIDIA GPU through the CUDA driver API (`cudarc`, loaded at run time);
//! - **Emulator**: our PTX interpreter on the CPU (`crate::emulator`), for machines without a GPU
//!   and for the checks the hardware does not make.
//!
//! Kernels are launched by module and entry name with a slice of [`Arg`]s; the typed wrappers in
//! `crate::ops` are the only callers, so each kernel's argument list is written down once.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{self as cu, PushKernelArg};

use crate::element::{from_bytes, to_bytes, Element};
use crate::emulator::{self, GlobalMemory, LaunchDims};
use crate::error::{CudaError, Result};
use crate::kernels;
use crate::kernels::gemm::GemmTile;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// One thread per element in 1-D blocks of `block` threads.
    pub fn linear(elements: usize, block: u32) -> Self {
        Self {
            grid: ((elements as u32).div_ceil(block).max(1), 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        }
    }

    /// One block of `threads` threads (a job one block does alone: a selection, a schedule).
    pub fn single_block(threads: u32) -> Self {
        Self {
            grid: (1, 1, 1),
            block: (threads, 1, 1),
            shared_bytes: 0,
        }
    }

    /// `rows` blocks of `block` threads: one block per row.
    pub fn per_row(rows: usize, block: u32) -> Self {
        Self {
            grid: (rows.max(1) as u32, 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        }
    }
}

/// One kernel argument.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Buffer(&'a RawBuffer),
    U32(u32),
    U64(u64),
    F32(f32),
}

impl<'a, T> From<&'a Buffer<T>> for Arg<'a> {
    fn from(buffer: &'a Buffer<T>) -> Self {
        Arg::Buffer(&buffer.raw)
    }
}

impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Arg::U32(v)
    }
}

impl From<f32> for Arg<'_> {
    fn from(v: f32) -> Self {
        Arg::F32(v)
    }
}

impl From<u64> for Arg<'_> {
    fn from(v: u64) -> Self {
        Arg::U64(v)
    }
}

/// Device memory without an element type.
#[derive(Debug)]
pub enum RawBuffer {
    Driver(cu::CudaSlice<u8>),
    Emulated {
        address: u64,
        bytes: usize,
        memory: Arc<Mutex<GlobalMemory>>,
    },
    /// `bytes` bytes from `byte_offset` of another buffer, which the view keeps alive: a
    /// contiguous slice of a tensor passed to a kernel without copying it.
    View {
        parent: Arc<dyn ViewedBuffer>,
        byte_offset: usize,
        bytes: usize,
    },
}

/// What a [`RawBuffer::View`] looks into: any typed buffer.
pub trait ViewedBuffer: std::fmt::Debug + Send + Sync {
    fn raw(&self) -> &RawBuffer;
}

impl<T: std::fmt::Debug + Send + Sync> ViewedBuffer for Buffer<T> {
    fn raw(&self) -> &RawBuffer {
        &self.raw
    }
}

impl RawBuffer {
    /// The allocation this memory lives in (never a view), and the byte range within it.
    fn resolve(&self) -> (&RawBuffer, usize, usize) {
        match self {
            RawBuffer::Driver(slice) => (self, 0, slice.len()),
            RawBuffer::Emulated { bytes, .. } => (self, 0, *bytes),
            RawBuffer::View {
                parent,
                byte_offset,
                bytes,
            } => {
                let (root, offset, _) = parent.raw().resolve();
                (root, offset + byte_offset, *bytes)
            }
        }
    }
}

impl Drop for RawBuffer {
    fn drop(&mut self) {
        if let RawBuffer::Emulated {
            address, memory, ..
        } = self
        {
            memory.lock().expect("emulator memory").free(*address);
        }
    }
}

/// A device buffer of `len` elements of `T`.
#[derive(Debug)]
pub struct Buffer<T> {
    raw: RawBuffer,
    len: usize,
    element: PhantomData<T>,
}

impl<T> Buffer<T> {
    /// The driver allocation behind this buffer (bytes), for calling other CUDA libraries
    /// (cuBLAS in the benchmarks) on it; `None` on the emulator.
    pub fn cuda_slice(&self) -> Option<&cu::CudaSlice<u8>> {
        match &self.raw {
            RawBuffer::Driver(slice) => Some(slice),
            RawBuffer::Emulated { .. } | RawBuffer::View { .. } => None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Element + std::fmt::Debug> Buffer<T> {
    /// Elements `offset..offset + len` of `parent` as a buffer of their own, without a copy
    /// (kernels read and write them in place; the view keeps `parent` alive).
    pub fn view(parent: &Arc<Buffer<T>>, offset: usize, len: usize) -> Result<Buffer<T>> {
        if offset + len > parent.len {
            return Err(CudaError::InvalidArgument(format!(
                "a view of elements {offset}..{} of a {}-element buffer",
                offset + len,
                parent.len
            )));
        }
        Ok(Buffer {
            raw: RawBuffer::View {
                parent: Arc::clone(parent) as Arc<dyn ViewedBuffer>,
                byte_offset: offset * T::BYTES,
                bytes: len * T::BYTES,
            },
            len,
            element: PhantomData,
        })
    }
}

enum Backend {
    Driver {
        context: Arc<cu::CudaContext>,
        stream: Arc<cu::CudaStream>,
        modules: Mutex<HashMap<String, Arc<cu::CudaModule>>>,
        /// Kernel handles by `module::entry`, looked up once.
        functions: Mutex<HashMap<String, cu::CudaFunction>>,
    },
    Emulator {
        memory: Arc<Mutex<GlobalMemory>>,
        modules: Mutex<HashMap<String, Arc<emulator::Module>>>,
    },
}

/// How much a [`Gpu`] has been asked to do since it was opened: what a profiler reads to tell
/// kernel work from host round trips.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Kernel launches.
    pub launches: u64,
    /// Copies from the host (each also allocates).
    pub uploads: u64,
    /// Copies to the host: each waits for every kernel launched before it.
    pub downloads: u64,
    /// Fresh zeroed buffers (an allocation and a device memset).
    pub allocations: u64,
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, earlier: Traffic) -> Traffic {
        Traffic {
            launches: self.launches - earlier.launches,
            uploads: self.uploads - earlier.uploads,
            downloads: self.downloads - earlier.downloads,
            allocations: self.allocations - earlier.allocations,
        }
    }
}

impl std::ops::Add for Traffic {
    type Output = Traffic;
    fn add(self, other: Traffic) -> Traffic {
        Traffic {
            launches: self.launches + other.launches,
            uploads: self.uploads + other.uploads,
            downloads: self.downloads + other.downloads,
            allocations: self.allocations + other.allocations,
        }
    }
}

/// The time of each kernel, by entry name, while kernel timing is on
/// ([`Gpu::time_kernels`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KernelTime {
    pub launches: u64,
    /// From before the launch to the end of the kernel (the GPU idle at both ends).
    pub time: std::time::Duration,
}

/// The running counts behind [`Traffic`].
#[derive(Default)]
struct TrafficCounters {
    launches: AtomicU64,
    uploads: AtomicU64,
    downloads: AtomicU64,
    allocations: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A GPU (or its emulation) that owns buffers and runs our kernels.
pub struct Gpu {
    backend: Backend,
    name: String,
    /// Whether f32 matrix products may run on the bf16 tensor cores (see
    /// [`Gpu::set_tensor_core_matmul`]).
    tensor_core_matmul: AtomicBool,
    /// Whether the tensor-core GEMMs use the 128×256 tile (see [`Gpu::set_gemm_tile`]).
    wide_gemm_tile: AtomicBool,
    traffic: TrafficCounters,
    /// `Some` while kernel timing is on.
    kernel_times: Mutex<Option<HashMap<String, KernelTime>>>,
    /// Read-only u32 tables uploaded once and reused, by content ([`Gpu::constant_table`]).
    tables: Mutex<HashMap<Vec<u32>, Arc<Buffer<u32>>>>,
}

/// How many distinct tables [`Gpu::constant_table`] keeps before it starts over (a training
/// step uses a few hundred shape/stride tables, the same ones every step).
const TABLES_KEPT: usize = 4096;

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.name)
    }
}

fn driver_error(call: &str) -> impl Fn(cu::DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver {
        call: call.to_string(),
        message: format!("{e:?}"),
    }
}

impl Gpu {
    /// Opens GPU `ordinal` through the NVIDIA driver. Without a driver the error says so:
    /// "no NVIDIA driver found …".
    pub fn new(ordinal: usize) -> Result<Gpu> {
        match crate::driver_status() {
            crate::DriverStatus::Missing(why) => return Err(CudaError::Unavailable(why)),
            crate::DriverStatus::Present { devices } if ordinal >= devices => {
                return Err(CudaError::Unavailable(format!(
                    "cuda:{ordinal} requested but the NVIDIA driver sees {devices} device(s)"
                )))
            }
            crate::DriverStatus::Present { .. } => {}
        }
        let context = cu::CudaContext::new(ordinal).map_err(driver_error("cuCtxCreate"))?;
        let name = context.name().unwrap_or_else(|_| "NVIDIA GPU".to_string());
        let (major, minor) = context
            .compute_capability()
            .map_err(driver_error("cuDeviceGetAttribute"))?;
        if major < 8 {
            return Err(CudaError::Unavailable(format!(
                "{name} has compute capability {major}.{minor}; our kernels need sm_80 or newer \
                 (bf16 tensor cores, cp.async)"
            )));
        }
        // Every kernel and copy of this Gpu goes to one stream, so stream order is all the
        // synchronisation there is; cudarc's per-buffer read/write events would only add work.
        // SAFETY: no buffer of this context is used from another stream.
        unsafe { context.disable_event_tracking() };
        let stream = context.default_stream();
        Ok(Gpu {
            backend: Backend::Driver {
                context,
                stream,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
            },
            name: format!("{name} (sm_{major}{minor})"),
            tensor_core_matmul: AtomicBool::new(true),
            wide_gemm_tile: AtomicBool::new(false),
            traffic: TrafficCounters::default(),
            kernel_times: Mutex::new(None),
            tables: Mutex::new(HashMap::new()),
        })
    }

    /// The PTX interpreter: same kernels, same launches, on the CPU.
    pub fn emulator() -> Gpu {
        Gpu {
            backend: Backend::Emulator {
                memory: Arc::new(Mutex::new(GlobalMemory::default())),
                modules: Mutex::new(HashMap::new()),
            },
            name: "PTX emulator (CPU)".to_string(),
            tensor_core_matmul: AtomicBool::new(true),
            wide_gemm_tile: AtomicBool::new(false),
            traffic: TrafficCounters::default(),
            kernel_times: Mutex::new(None),
            tables: Mutex::new(HashMap::new()),
        }
    }

    /// A human-readable name: the GPU model, or "PTX emulator (CPU)".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The driver stream kernels run on, for other CUDA libraries to share; `None` on the
    /// emulator.
    pub fn cuda_stream(&self) -> Option<Arc<cu::CudaStream>> {
        match &self.backend {
            Backend::Driver { stream, .. } => Some(Arc::clone(stream)),
            Backend::Emulator { .. } => None,
        }
    }

    /// Mixed precision for f32 matrix products: when on (the default), a product whose shape
    /// the tensor-core GEMM takes rounds its operands to bf16 and accumulates in f32 (as AMP
    /// does); when off, every product runs the f32 SIMT GEMM, exactly as the CPU would.
    pub fn set_tensor_core_matmul(&self, on: bool) {
        self.tensor_core_matmul.store(on, Ordering::Relaxed);
    }

    pub fn tensor_core_matmul(&self) -> bool {
        self.tensor_core_matmul.load(Ordering::Relaxed)
    }

    /// The CTA tile of the tensor-core GEMMs (plain, grouped and weight-gradient): 128×128 by
    /// default; 128×256 (`GemmTile::Wide`) is benchmarked alongside until a GPU measurement
    /// says which to use where.
    pub fn set_gemm_tile(&self, tile: GemmTile) {
        self.wide_gemm_tile
            .store(tile == GemmTile::Wide, Ordering::Relaxed);
    }

    pub fn gemm_tile(&self) -> GemmTile {
        if self.wide_gemm_tile.load(Ordering::Relaxed) {
            GemmTile::Wide
        } else {
            GemmTile::Square
        }
    }

    /// Launches and copies so far (see [`Traffic`]).
    pub fn traffic(&self) -> Traffic {
        let t = &self.traffic;
        Traffic {
            launches: t.launches.load(Ordering::Relaxed),
            uploads: t.uploads.load(Ordering::Relaxed),
            downloads: t.downloads.load(Ordering::Relaxed),
            allocations: t.allocations.load(Ordering::Relaxed),
        }
    }

    /// Starts (`true`) or stops timing each kernel: every launch then waits for the GPU before
    /// and after, so this is for profiling only. Starting clears earlier times.
    pub fn time_kernels(&self, on: bool) {
        *self.kernel_times.lock().expect("kernel times") = on.then(HashMap::new);
    }

    /// The time of each kernel since timing started, by entry name.
    pub fn kernel_times(&self) -> HashMap<String, KernelTime> {
        self.kernel_times
            .lock()
            .expect("kernel times")
            .clone()
            .unwrap_or_default()
    }

    pub fn is_emulator(&self) -> bool {
        matches!(self.backend, Backend::Emulator { .. })
    }

    fn alloc_raw(&self, bytes: &[u8]) -> Result<RawBuffer> {
        match &self.backend {
            Backend::Driver { stream, .. } => {
                // cuMemAlloc of zero bytes fails; keep one byte so empty buffers are valid.
                let data: &[u8] = if bytes.is_empty() { &[0] } else { bytes };
                let slice = stream
                    .memcpy_stod(data)
                    .map_err(driver_error("cuMemcpyHtoD"))?;
                Ok(RawBuffer::Driver(slice))
            }
            Backend::Emulator { memory, .. } => {
                let mut global = memory.lock().expect("emulator memory");
                let address = global.alloc(bytes.len());
                global.write(address, bytes).map_err(CudaError::Emulator)?;
                Ok(RawBuffer::Emulated {
                    address,
                    bytes: bytes.len(),
                    memory: Arc::clone(memory),
                })
            }
        }
    }

    /// Copies `values` into a new device buffer.
    pub fn upload<T: Element>(&self, values: &[T]) -> Result<Buffer<T>> {
        count(&self.traffic.uploads);
        Ok(Buffer {
            raw: self.alloc_raw(&to_bytes(values))?,
            len: values.len(),
            element: PhantomData,
        })
    }

    /// `values` in a device buffer that kernels only read (a shape/stride table): uploaded the
    /// first time, then the same buffer for the same values — no copy, no wait.
    pub fn constant_table(&self, values: &[u32]) -> Result<Arc<Buffer<u32>>> {
        let mut tables = self.tables.lock().expect("constant tables");
        if let Some(table) = tables.get(values) {
            return Ok(Arc::clone(table));
        }
        if tables.len() >= TABLES_KEPT {
            tables.clear();
        }
        let table = Arc::new(self.upload(values)?);
        tables.insert(values.to_vec(), Arc::clone(&table));
        Ok(table)
    }

    /// A new device buffer of `len` zeros. On a GPU this is a device
    /// memset, not a copy from the host: every op allocates its output this way.
    pub fn zeros<T: Element>(&self, len: usize) -> Result<Buffer<T>> {
        count(&self.traffic.allocations);
        let raw = match &self.backend {
            Backend::Driver { stream, .. } => {
                // cuMemAlloc of zero bytes fails; keep one byte so empty buffers are valid.
                let bytes = (len * T::BYTES).max(1);
                RawBuffer::Driver(
                    stream
                        .alloc_zeros::<u8>(bytes)
                        .map_err(driver_error("cuMemsetD8"))?,
                )
            }
            Backend::Emulator { .. } => self.alloc_raw(&vec![0u8; len * T::BYTES])?,
        };
        Ok(Buffer {
            raw,
            len,
            element: PhantomData,
        })
    }

    /// Copies a device buffer back to the host (waits for the kernels that write it).
    pub fn download<T: Element>(&self, buffer: &Buffer<T>) -> Result<Vec<T>> {
        count(&self.traffic.downloads);
        let (root, offset, len) = buffer.raw.resolve();
        let len = len.min(buffer.len * T::BYTES);
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = match (&self.backend, root) {
            (Backend::Driver { stream, .. }, RawBuffer::Driver(slice)) => stream
                .memcpy_dtov(&slice.slice(offset..offset + len))
                .map_err(driver_error("cuMemcpyDtoH"))?,
            (Backend::Emulator { memory, .. }, RawBuffer::Emulated { address, .. }) => {
                let global = memory.lock().expect("emulator memory");
                global
                    .read(address + offset as u64, len)
                    .map_err(CudaError::Emulator)?
                    .to_vec()
            }
            _ => {
                return Err(CudaError::InvalidArgument(
                    "a buffer of one GPU was used on another".into(),
                ))
            }
        };
        Ok(from_bytes(&bytes))
    }

    /// Waits for every launched kernel to finish.
    pub fn synchronize(&self) -> Result<()> {
        match &self.backend {
            Backend::Driver { stream, .. } => stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize")),
            Backend::Emulator { .. } => Ok(()),
        }
    }

    /// Launches `entry` of kernel module `module` (loaded and cached on first use).
    pub fn launch(
        &self,
        module: &str,
        entry: &str,
        config: LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
        if self.kernel_times.lock().expect("kernel times").is_none() {
            return self.launch_now(module, entry, config, args);
        }
        self.synchronize()?;
        let start = std::time::Instant::now();
        self.launch_now(module, entry, config, args)?;
        self.synchronize()?;
        let elapsed = start.elapsed();
        if let Some(times) = self.kernel_times.lock().expect("kernel times").as_mut() {
            let time = times.entry(entry.to_string()).or_default();
            time.launches += 1;
            time.time += elapsed;
        }
        Ok(())
    }

    fn launch_now(
        &self,
        module: &str,
        entry: &str,
        config: LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
        let unknown = || CudaError::UnknownKernel {
            module: module.to_string(),
            kernel: entry.to_string(),
        };
        let source = kernels::module_source(module).ok_or_else(unknown)?;
        count(&self.traffic.launches);
        match &self.backend {
            Backend::Driver {
                context,
                stream,
                modules,
                functions,
            } => {
                let key = format!("{module}::{entry}");
                let cached = functions.lock().expect("function cache").get(&key).cloned();
                let function = match cached {
                    Some(function) => function,
                    None => {
                        let mut cache = modules.lock().expect("module cache");
                        let loaded = match cache.get(module) {
                            Some(m) => Arc::clone(m),
                            None => {
                                let m = context
                                    .load_module(cudarc::nvrtc::Ptx::from_src(source))
                                    .map_err(driver_error("cuModuleLoadData"))?;
                                cache.insert(module.to_string(), Arc::clone(&m));
                                m
                            }
                        };
                        let function = loaded.load_function(entry).map_err(|_| unknown())?;
                        functions
                            .lock()
                            .expect("function cache")
                            .insert(key, function.clone());
                        function
                    }
                };
                if config.shared_bytes > 48 * 1024 {
                    function
                        .set_attribute(
                            cu::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                            config.shared_bytes as i32,
                        )
                        .map_err(driver_error("cuFuncSetAttribute"))?;
                }
                // Views are passed as windows of their allocation, made before the builder
                // borrows them.
                let mut windows = Vec::new();
                for arg in args {
                    if let Arg::Buffer(raw @ RawBuffer::View { .. }) = arg {
                        let (root, offset, bytes) = raw.resolve();
                        let RawBuffer::Driver(slice) = root else {
                            return Err(CudaError::InvalidArgument(
                                "an emulator buffer was passed to a GPU kernel".into(),
                            ));
                        };
                        windows.push(slice.slice(offset..offset + bytes));
                    }
                }
                let mut windows = windows.iter();
                let mut builder = stream.launch_builder(&function);
                for arg in args {
                    match arg {
                        Arg::Buffer(RawBuffer::Driver(slice)) => builder.arg(slice),
                        Arg::Buffer(RawBuffer::View { .. }) => {
                            builder.arg(windows.next().expect("one window per view"))
                        }
                        Arg::Buffer(RawBuffer::Emulated { .. }) => {
                            return Err(CudaError::InvalidArgument(
                                "an emulator buffer was passed to a GPU kernel".into(),
                            ))
                        }
                        Arg::U32(v) => builder.arg(v),
                        Arg::U64(v) => builder.arg(v),
                        Arg::F32(v) => builder.arg(v),
                    };
                }
                let cfg = cu::LaunchConfig {
                    grid_dim: config.grid,
                    block_dim: config.block,
                    shared_mem_bytes: config.shared_bytes,
                };
                // SAFETY: the typed wrappers in `crate::ops` pass exactly the parameters each
                // kernel declares, and size the grid to the buffers they pass.
                unsafe { builder.launch(cfg) }.map_err(driver_error(entry))?;
                Ok(())
            }
            Backend::Emulator { memory, modules } => {
                let parsed = {
                    let mut cache = modules.lock().expect("module cache");
                    match cache.get(module) {
                        Some(m) => Arc::clone(m),
                        None => {
                            let m = Arc::new(
                                emulator::parse_module(source).map_err(CudaError::Emulator)?,
                            );
                            cache.insert(module.to_string(), Arc::clone(&m));
                            m
                        }
                    }
                };
                let kernel = parsed.kernels.get(entry).ok_or_else(unknown)?;
                let params = emulator_params(kernel, args)?;
                let dims = LaunchDims {
                    grid: [config.grid.0, config.grid.1, config.grid.2],
                    block: [config.block.0, config.block.1, config.block.2],
                    dynamic_shared_bytes: config.shared_bytes,
                };
                let mut global = memory.lock().expect("emulator memory");
                emulator::launch(kernel, dims, &params, &mut global).map_err(CudaError::Emulator)
            }
        }
    }
}

/// The raw bits of each argument, checked against the kernel's declared parameter types.
fn emulator_params(kernel: &emulator::Kernel, args: &[Arg]) -> Result<Vec<u64>> {
    if args.len() != kernel.params.len() {
        return Err(CudaError::InvalidArgument(format!(
            "kernel {} takes {} arguments, {} given",
            kernel.name,
            kernel.params.len(),
            args.len()
        )));
    }
    args.iter()
        .zip(&kernel.params)
        .map(|(arg, (name, ty))| {
            let (bits, bytes) = match arg {
                Arg::Buffer(raw) => match raw.resolve() {
                    (RawBuffer::Emulated { address, .. }, offset, _) => {
                        (address + offset as u64, 8)
                    }
                    _ => {
                        return Err(CudaError::InvalidArgument(
                            "a GPU buffer was passed to the emulator".into(),
                        ))
                    }
                },
                Arg::U32(v) => (*v as u64, 4),
                Arg::U64(v) => (*v, 8),
                Arg::F32(v) => (v.to_bits() as u64, 4),
            };
            if bytes != ty.bytes() {
                return Err(CudaError::InvalidArgument(format!(
                    "kernel {}: parameter {name} is {ty:?} but a {bytes}-byte value was passed",
                    kernel.name
                )));
            }
            Ok(bits)
        })
        .collect()
}
