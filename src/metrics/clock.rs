//! Call timing: the CPU's time-stamp counter where the kernel trusts it, else `CLOCK_MONOTONIC`.
//!
//! A call is timed with two clock reads. On this project's test machine (x86_64 VM, clock
//! source `tsc`) `clock_gettime(CLOCK_MONOTONIC)` through the vDSO takes about 32 ns and
//! `rdtsc` about 13 ns: the TSC saves about 40 ns per call, close to the 50 ns that p11gate's
//! whole forwarding path may add to a call. The TSC is used only when the kernel's clock source is
//! `tsc` (the kernel checked that it is invariant and synchronised across CPUs, and would have
//! switched away otherwise) and the process may read it ([`os::tsc_readable`]); everything
//! else uses `Instant` (`CLOCK_MONOTONIC`).
//!
//! Ticks become nanoseconds with a fixed-point factor measured once over a millisecond when
//! metrics start, and refined by the writer thread against `Instant` over the whole time since
//! (the histogram's buckets are a factor of two wide, so the first estimate is already ample).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Once;
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;

#[cfg(target_arch = "x86_64")]
use crate::ffi::os;

/// Whether [`now`] reads the TSC (decided once per process).
static USE_TSC: AtomicBool = AtomicBool::new(false);
/// Nanoseconds per TSC tick, as a 32.32 fixed-point number.
static NS_PER_TICK: AtomicU64 = AtomicU64::new(1 << 32);
/// The calibration's starting point, and the origin of `Instant`-based readings.
static BASE: OnceCell<(Instant, u64)> = OnceCell::new();

/// Decides the clock and calibrates it; the first call takes about a millisecond.
pub fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let tsc = tsc_trusted();
        let start = (Instant::now(), ticks_if(tsc));
        let _ = BASE.set(start);
        if tsc {
            // Spin rather than sleep: a sleep on a busy machine only lengthens the wait.
            while start.0.elapsed() < Duration::from_millis(1) {
                std::hint::spin_loop();
            }
            recalibrate_with(start);
            USE_TSC.store(true, Relaxed);
        }
        log::debug!(
            "metrics: calls timed with {}",
            if tsc { "the TSC" } else { "CLOCK_MONOTONIC" }
        );
    });
}

/// Whether the TSC is used.
pub fn uses_tsc() -> bool {
    USE_TSC.load(Relaxed)
}

/// A reading: TSC ticks, or nanoseconds since [`setup`].
#[inline(always)]
pub fn now() -> u64 {
    if USE_TSC.load(Relaxed) {
        ticks_if(true)
    } else {
        BASE.get()
            .map_or(0, |(origin, _)| origin.elapsed().as_nanos() as u64)
    }
}

/// Nanoseconds between two readings of [`now`].
#[inline(always)]
pub fn elapsed_ns(start: u64, end: u64) -> u64 {
    let d = end.saturating_sub(start);
    if USE_TSC.load(Relaxed) {
        ((d as u128 * NS_PER_TICK.load(Relaxed) as u128) >> 32) as u64
    } else {
        d
    }
}

/// Refines the tick length over the whole time since [`setup`] (the writer, at each write).
pub fn recalibrate() {
    if let (true, Some(start)) = (uses_tsc(), BASE.get()) {
        recalibrate_with(*start);
    }
}

fn recalibrate_with((instant, ticks): (Instant, u64)) {
    let ns = instant.elapsed().as_nanos();
    let d = ticks_if(true).saturating_sub(ticks) as u128;
    if d > 0 && ns > 0 {
        let factor = (ns << 32) / d;
        NS_PER_TICK.store(factor.min(u64::MAX as u128) as u64, Relaxed);
    }
}

#[inline(always)]
fn ticks_if(tsc: bool) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if tsc {
        return os::cpu_ticks();
    }
    let _ = tsc;
    0
}

#[cfg(target_arch = "x86_64")]
fn tsc_trusted() -> bool {
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    source.trim() == "tsc" && os::tsc_readable()
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc_trusted() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_measures_about_its_length() {
        setup();
        let start = now();
        std::thread::sleep(Duration::from_millis(20));
        let ns = elapsed_ns(start, now());
        // Only a floor: a busy machine may run the thread late, never early.
        assert!(ns >= 19_000_000, "{ns} ns for a 20 ms sleep");
        assert!(ns < 20_000_000_000, "{ns} ns for a 20 ms sleep");
    }
}
