//! The counters: one series per (function, slot), each with call counts per result and a latency
//! histogram, kept per thread and summed by the writer.
//!
//! A thread owns a [`Block`] of counters: only that thread writes it (a relaxed load and store
//! per counter: no locked instruction, no cache line shared with another writing thread), and
//! the writer thread reads it. A block is handed to another thread only when its owner exits,
//! so counts survive their thread and memory is bounded by the most threads that ever called
//! at once. A block's counters come in pages of [`PAGE`] series, allocated the first time the
//! thread uses a series of that page (once per thread and page: the steady state allocates
//! nothing).
//!
//! Series numbers are handed out on first sight of a (function, slot) pair, through a
//! fixed-size open-addressing table whose entries never change once filled; looking one up
//! is a hash and, normally, one probe. Results are a fixed set of return values worth telling
//! apart, plus "other". Latency buckets are powers of two from 1 µs to 2^24 µs (16.8 s), plus
//! +Inf: a bucket index is one `leading_zeros`.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use pkcs11_sys::*;

/// Return values counted under their own name; any other is counted as "other".
pub const NAMED_RESULTS: [CK_RV; 31] = [
    CKR_OK,
    CKR_GENERAL_ERROR,
    CKR_FUNCTION_FAILED,
    CKR_ARGUMENTS_BAD,
    CKR_DEVICE_ERROR,
    CKR_DEVICE_MEMORY,
    CKR_DEVICE_REMOVED,
    CKR_HOST_MEMORY,
    CKR_TOKEN_NOT_PRESENT,
    CKR_SLOT_ID_INVALID,
    CKR_SESSION_HANDLE_INVALID,
    CKR_SESSION_CLOSED,
    CKR_SESSION_COUNT,
    CKR_KEY_HANDLE_INVALID,
    CKR_OBJECT_HANDLE_INVALID,
    CKR_KEY_TYPE_INCONSISTENT,
    CKR_KEY_FUNCTION_NOT_PERMITTED,
    CKR_MECHANISM_INVALID,
    CKR_MECHANISM_PARAM_INVALID,
    CKR_PIN_INCORRECT,
    CKR_PIN_LOCKED,
    CKR_USER_NOT_LOGGED_IN,
    CKR_USER_ALREADY_LOGGED_IN,
    CKR_OPERATION_ACTIVE,
    CKR_OPERATION_NOT_INITIALIZED,
    CKR_BUFFER_TOO_SMALL,
    CKR_DATA_LEN_RANGE,
    CKR_ENCRYPTED_DATA_INVALID,
    CKR_SIGNATURE_INVALID,
    CKR_FUNCTION_NOT_SUPPORTED,
    CKR_CRYPTOKI_NOT_INITIALIZED,
];
/// Result slots per series: the named ones and "other".
pub const RESULTS: usize = NAMED_RESULTS.len() + 1;
/// The "other" result.
pub const OTHER_RESULT: usize = RESULTS - 1;
/// Histogram buckets: `le` = 2^i µs for i in 0..=24, then +Inf.
pub const BUCKETS: usize = 26;
/// Series per page of a block.
pub const PAGE: usize = 16;
const PAGES: usize = 16;
/// Series a process can tell apart; the last one, [`OVERFLOW`], takes every pair beyond.
pub const MAX_SERIES: usize = PAGE * PAGES;
/// The series of (function, slot) pairs that came after all others were taken.
pub const OVERFLOW: usize = MAX_SERIES - 1;
/// Entries of the lookup table (a power of two, well above `MAX_SERIES`).
const TABLE: usize = 1024;
const TABLE_BITS: u32 = TABLE.trailing_zeros();

/// The index of a return value among [`NAMED_RESULTS`] (or [`OTHER_RESULT`]).
#[inline(always)]
pub fn result_index(rv: CK_RV) -> usize {
    if rv == CKR_OK {
        0
    } else {
        error_index(rv)
    }
}

#[inline(never)]
fn error_index(rv: CK_RV) -> usize {
    NAMED_RESULTS
        .iter()
        .position(|&r| r == rv)
        .unwrap_or(OTHER_RESULT)
}

/// The bucket of a duration: the smallest i with `ns <= 2^i µs`, or the +Inf bucket.
#[inline(always)]
pub fn bucket(ns: u64) -> usize {
    // ns <= 1000 * 2^i  <=>  (ns - 1) / 1000 < 2^i (for ns >= 1; ns = 0 goes to bucket 0).
    let q = ns.saturating_sub(1) / 1000;
    ((u64::BITS - q.leading_zeros()) as usize).min(BUCKETS - 1)
}

/// The upper bound of finite bucket `i`, in microseconds.
pub fn bucket_le_us(i: usize) -> u64 {
    1 << i
}

/// One series' counters in one block.
#[derive(Debug, Default)]
pub struct Cell {
    pub results: [AtomicU64; RESULTS],
    /// Calls per bucket (not cumulative).
    pub buckets: [AtomicU64; BUCKETS],
    pub sum_ns: AtomicU64,
}

/// A page of series, aligned so that no two threads' pages share a cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Page {
    cells: [Cell; PAGE],
}

/// One thread's counters (see the module docs).
#[derive(Debug, Default)]
pub struct Block {
    pages: [OnceCell<Box<Page>>; PAGES],
}

/// Adds to a counter that only the calling thread writes: no locked instruction needed.
#[inline(always)]
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Block {
    /// Counts one call of `series`; only the block's owner calls this.
    #[inline(always)]
    pub fn count(&self, series: usize, result: usize, ns: u64) {
        let page = self.pages[series / PAGE].get_or_init(Box::default);
        let cell = &page.cells[series % PAGE];
        add(&cell.results[result], 1);
        add(&cell.buckets[bucket(ns)], 1);
        add(&cell.sum_ns, ns);
    }

    fn cell(&self, series: usize) -> Option<&Cell> {
        self.pages[series / PAGE]
            .get()
            .map(|p| &p.cells[series % PAGE])
    }
}

/// What a series counts: a function, and the slot its call named (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesKey {
    pub function: &'static str,
    pub slot: Option<CK_SLOT_ID>,
}

/// One filled entry of the lookup table: immutable once `state` is set.
#[derive(Debug, Default)]
struct Entry {
    /// The function name's address (names are string literals, one per exported function).
    name: AtomicUsize,
    slot: AtomicU64,
    /// 0: empty; else 1 + (series << 1 | has_slot).
    state: AtomicU32,
}

/// The series of one process's metrics and every block that counts them.
#[derive(Debug)]
pub struct Counters {
    table: Box<[Entry]>,
    /// Series number -> key (the lookup table's filling is serialised by this lock).
    keys: Mutex<Vec<SeriesKey>>,
    blocks: Mutex<Vec<&'static Block>>,
    /// Blocks whose thread exited, for the next new thread.
    free: Mutex<Vec<&'static Block>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            table: (0..TABLE).map(|_| Entry::default()).collect(),
            keys: Mutex::new(Vec::new()),
            blocks: Mutex::new(Vec::new()),
            free: Mutex::new(Vec::new()),
        }
    }
}

/// The totals of one series over all blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// `None` for [`OVERFLOW`].
    pub key: Option<SeriesKey>,
    pub results: [u64; RESULTS],
    pub buckets: [u64; BUCKETS],
    pub sum_ns: u64,
}

impl Totals {
    pub fn calls(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

fn hash(name: usize, slot: Option<CK_SLOT_ID>) -> usize {
    let s = slot.map_or(0x5bd1_e995, |s| s.rotate_left(29) ^ 1);
    let h = (name as u64 ^ s).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> (u64::BITS - TABLE_BITS)) as usize
}

impl Counters {
    /// The series of `(function, slot)`, numbered on first sight.
    #[inline]
    pub fn series(&self, function: &'static str, slot: Option<CK_SLOT_ID>) -> usize {
        let name = function.as_ptr() as usize;
        let mut i = hash(name, slot);
        for _ in 0..TABLE {
            let e = &self.table[i];
            let state = e.state.load(Acquire);
            if state == 0 {
                return self.add_series(function, slot);
            }
            let (series, has_slot) = ((state - 1) >> 1, (state - 1) & 1 == 1);
            if e.name.load(Relaxed) == name
                && has_slot == slot.is_some()
                && e.slot.load(Relaxed) == slot.unwrap_or(0)
            {
                return series as usize;
            }
            i = (i + 1) % TABLE;
        }
        OVERFLOW
    }

    #[cold]
    #[inline(never)]
    fn add_series(&self, function: &'static str, slot: Option<CK_SLOT_ID>) -> usize {
        let mut keys = self.keys.lock();
        let name = function.as_ptr() as usize;
        let mut i = hash(name, slot);
        // Another thread may have added it since; entries are filled only under `keys`.
        for _ in 0..TABLE {
            let e = &self.table[i];
            let state = e.state.load(Acquire);
            if state == 0 {
                break;
            }
            let (series, has_slot) = ((state - 1) >> 1, (state - 1) & 1 == 1);
            if e.name.load(Relaxed) == name
                && has_slot == slot.is_some()
                && e.slot.load(Relaxed) == slot.unwrap_or(0)
            {
                return series as usize;
            }
            i = (i + 1) % TABLE;
        }
        // Same name, other literal: the same function (one series per function and slot).
        let series = keys
            .iter()
            .position(|k| k.function == function && k.slot == slot)
            .unwrap_or_else(|| {
                if keys.len() < OVERFLOW {
                    keys.push(SeriesKey { function, slot });
                    keys.len() - 1
                } else {
                    OVERFLOW
                }
            });
        // Keep a quarter of the table empty so that lookups stay short and always end.
        let filled = self
            .table
            .iter()
            .filter(|e| e.state.load(Relaxed) != 0)
            .count();
        if filled < TABLE * 3 / 4 && self.table[i].state.load(Relaxed) == 0 {
            let e = &self.table[i];
            e.name.store(name, Relaxed);
            e.slot.store(slot.unwrap_or(0), Relaxed);
            e.state
                .store(1 + ((series as u32) << 1 | slot.is_some() as u32), Release);
        }
        series
    }

    /// A block for a thread that has none: one another thread left, or a new one.
    #[cold]
    pub fn claim(&self) -> &'static Block {
        if let Some(b) = self.free.lock().pop() {
            return b;
        }
        let b: &'static Block = Box::leak(Box::default());
        self.blocks.lock().push(b);
        b
    }

    /// Takes back the block of a thread that exits.
    pub fn give_back(&self, block: &'static Block) {
        self.free.lock().push(block);
    }

    /// Every series' totals, in series order (the overflow series last, if it counted).
    pub fn totals(&self) -> Vec<Totals> {
        let keys = self.keys.lock().clone();
        let blocks = self.blocks.lock().clone();
        let mut out: Vec<Totals> = keys
            .iter()
            .map(|k| Some(*k))
            .chain(std::iter::once(None))
            .map(|key| Totals {
                key,
                results: [0; RESULTS],
                buckets: [0; BUCKETS],
                sum_ns: 0,
            })
            .collect();
        for b in &blocks {
            for (series, t) in out.iter_mut().enumerate() {
                let index = if t.key.is_some() { series } else { OVERFLOW };
                let Some(c) = b.cell(index) else { continue };
                for (sum, v) in t.results.iter_mut().zip(&c.results) {
                    *sum += v.load(Relaxed);
                }
                for (sum, v) in t.buckets.iter_mut().zip(&c.buckets) {
                    *sum += v.load(Relaxed);
                }
                t.sum_ns += c.sum_ns.load(Relaxed);
            }
        }
        if out.last().is_some_and(|t| t.calls() == 0) {
            out.pop();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_microseconds_inclusive() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1_000), 0);
        assert_eq!(bucket(1_001), 1);
        assert_eq!(bucket(2_000), 1);
        assert_eq!(bucket(2_001), 2);
        assert_eq!(bucket(1_000 * (1 << 24)), 24);
        assert_eq!(bucket(1_000 * (1 << 24) + 1), BUCKETS - 1);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_le_us(24), 16_777_216);
    }

    #[test]
    fn results_are_named_or_other() {
        assert_eq!(result_index(CKR_OK), 0);
        assert_eq!(
            NAMED_RESULTS[result_index(CKR_KEY_HANDLE_INVALID)],
            CKR_KEY_HANDLE_INVALID
        );
        assert_eq!(result_index(CKR_NEXT_OTP), OTHER_RESULT);
        assert_eq!(result_index(CKR_VENDOR_DEFINED | 7), OTHER_RESULT);
    }

    #[test]
    fn series_are_per_function_and_slot_and_counts_add_up_over_blocks() {
        let c = Counters::default();
        let enc = c.series("C_Encrypt", Some(3));
        assert_eq!(c.series("C_Encrypt", Some(3)), enc);
        let other_slot = c.series("C_Encrypt", Some(4));
        let none = c.series("C_Encrypt", None);
        let slot_zero = c.series("C_Encrypt", Some(0));
        assert_eq!(
            [enc, other_slot, none, slot_zero],
            [0, 1, 2, 3],
            "four distinct series"
        );
        let (a, b) = (c.claim(), c.claim());
        a.count(enc, 0, 1_500);
        b.count(enc, 0, 3_000);
        b.count(enc, result_index(CKR_KEY_HANDLE_INVALID), 10);
        let t = c.totals();
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[0].key,
            Some(SeriesKey {
                function: "C_Encrypt",
                slot: Some(3)
            })
        );
        assert_eq!(t[0].results[0], 2);
        assert_eq!(t[0].results[result_index(CKR_KEY_HANDLE_INVALID)], 1);
        assert_eq!(
            (t[0].buckets[0], t[0].buckets[1], t[0].buckets[2]),
            (1, 1, 1)
        );
        assert_eq!(t[0].sum_ns, 4_510);
        assert_eq!(t[0].calls(), 3);
        assert_eq!(t[1].calls(), 0);
        // A thread's block, given back, goes to the next thread with its counts.
        c.give_back(a);
        assert!(std::ptr::eq(c.claim(), a));
    }

    #[test]
    fn pairs_beyond_the_limit_share_the_overflow_series() {
        let c = Counters::default();
        for slot in 0..OVERFLOW as u64 {
            assert_eq!(c.series("C_GetSlotInfo", Some(slot)), slot as usize);
        }
        assert_eq!(c.series("C_GetSlotInfo", Some(100_000)), OVERFLOW);
        assert_eq!(c.series("C_GetSlotInfo", Some(100_001)), OVERFLOW);
        assert_eq!(c.series("C_GetSlotInfo", Some(7)), 7);
        let b = c.claim();
        b.count(OVERFLOW, 0, 1);
        let t = c.totals();
        assert_eq!(t.len(), MAX_SERIES);
        assert_eq!(t[OVERFLOW].key, None);
        assert_eq!(t[OVERFLOW].calls(), 1);
    }
}
