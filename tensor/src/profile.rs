//! Where the time of a training step goes: a wall-clock profiler by named section, on any
//! device.
//!
//! Code says what it is doing with [`section`] ("attention", "routing", …). The autograd
//! engine re-enters, while it runs a node's backward rule, the section that node was recorded
//! in ([`current_section`] at record time, [`BackwardSections`] at run time), so each section
//! gets a forward and a backward row. Time outside every section is charged to
//! [`UNSECTIONED`].
//!
//! When profiling is on ([`enable`]), every section boundary first waits for the GPUs this
//! process opened — kernels run asynchronously, and without the wait their time would land in
//! whichever later section first reads a result — then charges the wall time since the
//! previous boundary, and this thread's launches and host copies ([`ditmoe_cuda::Traffic`]),
//! to the innermost open section. The waits remove the overlap of host and device work, so a
//! profiled step is slower than a plain one: read the shares here, and step times from an
//! unprofiled run. Profiling is per thread (the one that trains); when it is off (the default) a
//! section costs one thread-local lookup.
//!
//! The same idea as PyTorch's `record_function` ranges read with synchronised timing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use ditmoe_cuda::{KernelTime, Traffic};

/// The label of time spent outside every section.
pub const UNSECTIONED: &str = "other";

/// Whether a section's time was spent computing values or gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pass {
    Forward,
    Backward,
}

/// What one (section, pass) cost over the profiled run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    pub time: Duration,
    /// Launches and host copies on the GPUs (zero on the CPU).
    pub traffic: Traffic,
}

/// What a profiled run recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// By (section, pass).
    pub sections: BTreeMap<(&'static str, Pass), Cost>,
    /// By kernel entry, summed over the GPUs (each launch timed alone).
    pub kernels: BTreeMap<String, KernelTime>,
}

/// The profiler's state on the thread that trains: the open sections and what each has cost.
struct Recorder {
    /// Open sections, innermost last, each with the pass it runs in.
    open: Vec<(&'static str, Pass)>,
    last_mark: Instant,
    last_traffic: Traffic,
    costs: BTreeMap<(&'static str, Pass), Cost>,
}

thread_local! {
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// What this thread has asked of the GPUs, after waiting for every opened GPU to finish its
/// work.
fn wait_for_devices() -> Traffic {
    for gpu in ditmoe_cuda::registry::opened() {
        // A failed wait (a broken device) shows up at the next real use of it; a profiler
        // must not turn it into a different error here.
        let _ = gpu.synchronize();
    }
    ditmoe_cuda::traffic::this_thread()
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            open: Vec::new(),
            last_traffic: wait_for_devices(),
            last_mark: Instant::now(),
            costs: BTreeMap::new(),
        }
    }

    /// Charges everything since the last boundary to the innermost open section.
    fn boundary(&mut self) {
        let traffic = wait_for_devices();
        let now = Instant::now();
        let key = self
            .open
            .last()
            .copied()
            .unwrap_or((UNSECTIONED, Pass::Forward));
        let cost = self.costs.entry(key).or_default();
        cost.time += now - self.last_mark;
        cost.traffic = cost.traffic + (traffic - self.last_traffic);
        self.last_mark = now;
        self.last_traffic = traffic;
    }
}

/// Starts profiling on this thread, discarding what an earlier run recorded; the kernels it
/// launches are also timed, each alone ([`ditmoe_cuda::kernel_timing`]).
pub fn enable() {
    ditmoe_cuda::kernel_timing::start();
    RECORDER.with(|r| *r.borrow_mut() = Some(Recorder::new()));
}

/// Stops profiling and returns what each (section, pass) and each kernel cost since
/// [`enable`], the time up to this call included.
pub fn finish() -> Profile {
    let Some(mut recorder) = RECORDER.with(|r| r.borrow_mut().take()) else {
        return Profile::default();
    };
    recorder.boundary();
    let kernels = ditmoe_cuda::kernel_timing::times().into_iter().collect();
    ditmoe_cuda::kernel_timing::stop();
    Profile {
        sections: recorder.costs,
        kernels,
    }
}

fn with_recorder(f: impl FnOnce(&mut Recorder)) {
    RECORDER.with(|r| {
        if let Some(recorder) = r.borrow_mut().as_mut() {
            f(recorder)
        }
    });
}

/// The innermost open section of this thread, if profiling is on (what an autograd node
/// records so that its backward rule is charged to the same section).
pub fn current_section() -> Option<&'static str> {
    RECORDER.with(|r| {
        r.borrow()
            .as_ref()
            .and_then(|recorder| recorder.open.last().map(|&(name, _)| name))
    })
}

/// An open section; closing it (dropping the guard) is a boundary.
#[must_use = "a section lasts as long as its guard"]
pub struct Section(bool);

/// Opens section `name` in the forward pass until the guard drops.
pub fn section(name: &'static str) -> Section {
    let mut opened = false;
    with_recorder(|recorder| {
        recorder.boundary();
        recorder.open.push((name, Pass::Forward));
        opened = true;
    });
    Section(opened)
}

impl Drop for Section {
    fn drop(&mut self) {
        if self.0 {
            with_recorder(|recorder| {
                recorder.boundary();
                recorder.open.pop();
            });
        }
    }
}

/// The sections of a backward sweep: the engine calls [`BackwardSections::enter`] with each
/// node's recorded section before running its rule; consecutive nodes of one section make no
/// boundary. Dropping it closes the last one.
pub struct BackwardSections {
    active: bool,
    current: Option<&'static str>,
}

impl BackwardSections {
    pub fn start() -> BackwardSections {
        let mut active = false;
        with_recorder(|recorder| {
            recorder.boundary();
            recorder.open.push((UNSECTIONED, Pass::Backward));
            active = true;
        });
        BackwardSections {
            active,
            current: None,
        }
    }

    /// Charges what follows to `section` (or [`UNSECTIONED`]) in the backward pass.
    pub fn enter(&mut self, section: Option<&'static str>) {
        if !self.active || self.current == section {
            return;
        }
        self.current = section;
        with_recorder(|recorder| {
            recorder.boundary();
            if let Some(top) = recorder.open.last_mut() {
                *top = (section.unwrap_or(UNSECTIONED), Pass::Backward);
            }
        });
    }
}

impl Drop for BackwardSections {
    fn drop(&mut self) {
        if self.active {
            with_recorder(|recorder| {
                recorder.boundary();
                recorder.open.pop();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(ms: u64) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(ms) {}
    }

    /// Lower bounds from the spins, upper bounds only from wall time measured around the same
    /// code (a section's time is inside its interval, and time is charged once), so a loaded
    /// machine cannot make it fail.
    #[test]
    fn time_goes_to_the_innermost_section_of_its_pass() {
        let run = Instant::now();
        enable();
        let forward = Instant::now();
        {
            let _outer = section("block");
            spin(20);
            {
                let _inner = section("attention");
                assert_eq!(current_section(), Some("attention"));
                spin(30);
            }
        }
        let forward = forward.elapsed();
        let backward = Instant::now();
        {
            let mut sweep = BackwardSections::start();
            sweep.enter(Some("attention"));
            spin(10);
            sweep.enter(None);
            spin(5);
        }
        let backward = backward.elapsed();
        let costs = finish().sections;
        let run = run.elapsed();
        let time = |name, pass| costs.get(&(name, pass)).map(|c| c.time).unwrap_or_default();
        let ms = Duration::from_millis;
        assert!(time("block", Pass::Forward) >= ms(20));
        assert!(time("attention", Pass::Forward) >= ms(30));
        assert!(
            time("block", Pass::Forward) + time("attention", Pass::Forward) <= forward,
            "the inner section's time leaked out"
        );
        assert!(time("attention", Pass::Backward) >= ms(10));
        assert!(time(UNSECTIONED, Pass::Backward) >= ms(5));
        assert!(
            time("attention", Pass::Backward) + time(UNSECTIONED, Pass::Backward) <= backward,
            "the unsectioned backward time leaked into the section before it"
        );
        assert!(costs.values().map(|c| c.time).sum::<Duration>() <= run);
        assert_eq!(current_section(), None, "off after finish");
    }

    #[test]
    fn gpu_launches_and_kernel_times_go_to_their_section() {
        use crate::{Device, Tensor};
        ditmoe_cuda::registry::device_or_emulator(0);
        let x = Tensor::from_slice(&[1.0f32, 4.0, 9.0], &[3])
            .unwrap()
            .to_device(Device::Cuda(0))
            .unwrap();
        enable();
        {
            let _s = section("exp");
            x.exp().unwrap();
        }
        let profile = finish();
        let exp = profile.sections[&("exp", Pass::Forward)];
        assert_eq!((exp.traffic.launches, exp.traffic.allocations), (1, 1));
        let timed: Vec<u64> = profile.kernels.values().map(|k| k.launches).collect();
        assert_eq!(timed, vec![1], "{:?}", profile.kernels);
    }

    #[test]
    fn sections_cost_nothing_and_record_nothing_when_off() {
        let _s = section("attention");
        assert_eq!(current_section(), None);
        assert_eq!(finish(), Profile::default());
    }
}
