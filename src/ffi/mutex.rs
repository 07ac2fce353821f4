//! The mutex callbacks p11gate gives its upstreams (`CK_C_INITIALIZE_ARGS.CreateMutex` etc.)
//! when the application did not supply its own.
//!
//! Why not let the upstream use OS locking: after `fork()` only the forking thread exists in
//! the child, so a lock that another thread of the parent held inside the upstream stays locked
//! forever, and the child deadlocks in its first call (SoftHSMv2 does exactly this). These
//! mutexes remember the fork generation they were locked in: in a child, a lock taken before
//! the fork belongs to a thread that does not exist there, and it is treated as free. The
//! parent's generation never changes, so its locks work as usual.
//!
//! A mutex is a 32-bit futex word: `generation << 2 | state`, where state is 0 (unlocked),
//! 1 (locked) or 2 (locked, maybe with waiters); the classic three-state futex mutex.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, Ordering};

use pkcs11_sys::*;

use crate::ffi::os::{futex_wait, futex_wake};
use crate::runtime::fork_generation;

const STATE: u32 = 3;

/// This process's fork generation, in the upper 30 bits of a mutex word.
#[inline]
fn generation_bits() -> u32 {
    fork_generation() << 2
}

fn lock(word: &AtomicU32) {
    let g = generation_bits();
    if word
        .compare_exchange(0, g | 1, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        return;
    }
    loop {
        let current = word.load(Ordering::Relaxed);
        let held_here = current & STATE != 0 && current & !STATE == g;
        if !held_here {
            // Free, or held by a thread of the parent that does not exist in this process.
            if word
                .compare_exchange(current, g | 2, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
            continue;
        }
        if current & STATE == 1
            && word
                .compare_exchange(current, g | 2, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        futex_wait(word, g | 2, None);
    }
}

fn unlock(word: &AtomicU32) {
    if word.swap(0, Ordering::Release) & STATE == 2 {
        futex_wake(word, 1);
    }
}

/// `CK_CREATEMUTEX`.
///
/// # Safety
/// `pp_mutex` is NULL or points to a writable pointer (PKCS#11 2.40 §5.4).
pub unsafe extern "C" fn create_mutex(pp_mutex: CK_VOID_PTR_PTR) -> CK_RV {
    if pp_mutex.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let mutex = Box::into_raw(Box::new(AtomicU32::new(0)));
    // SAFETY: pp_mutex is non-NULL and writable per the contract above.
    unsafe { *pp_mutex = mutex.cast::<c_void>() };
    CKR_OK
}

/// `CK_DESTROYMUTEX`.
///
/// # Safety
/// `mutex` is NULL or a pointer `create_mutex` returned and not yet destroyed.
pub unsafe extern "C" fn destroy_mutex(mutex: CK_VOID_PTR) -> CK_RV {
    if mutex.is_null() {
        return CKR_MUTEX_BAD;
    }
    // SAFETY: it came from Box::into_raw in create_mutex and is destroyed once.
    drop(unsafe { Box::from_raw(mutex.cast::<AtomicU32>()) });
    CKR_OK
}

/// `CK_LOCKMUTEX`.
///
/// # Safety
/// `mutex` is NULL or a live pointer from `create_mutex`.
pub unsafe extern "C" fn lock_mutex(mutex: CK_VOID_PTR) -> CK_RV {
    // SAFETY: NULL or a live AtomicU32 from create_mutex, per the contract above.
    match unsafe { mutex.cast::<AtomicU32>().as_ref() } {
        Some(word) => {
            lock(word);
            CKR_OK
        }
        None => CKR_MUTEX_BAD,
    }
}

/// `CK_UNLOCKMUTEX`.
///
/// # Safety
/// `mutex` is NULL or a live pointer from `create_mutex`.
pub unsafe extern "C" fn unlock_mutex(mutex: CK_VOID_PTR) -> CK_RV {
    // SAFETY: NULL or a live AtomicU32 from create_mutex, per the contract above.
    match unsafe { mutex.cast::<AtomicU32>().as_ref() } {
        Some(word) if word.load(Ordering::Relaxed) & STATE != 0 => {
            unlock(word);
            CKR_OK
        }
        Some(_) => CKR_MUTEX_NOT_LOCKED,
        None => CKR_MUTEX_BAD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn excludes_and_wakes() {
        let word = Arc::new(AtomicU32::new(0));
        let counter = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (word, counter) = (word.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        lock(&word);
                        // A non-atomic read-modify-write under the lock.
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                        unlock(&word);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), 80_000);
        assert_eq!(word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_lock_from_an_earlier_fork_generation_is_free() {
        let stale = (fork_generation().wrapping_sub(1) << 2) | 2;
        let word = AtomicU32::new(stale);
        lock(&word);
        assert_eq!(word.load(Ordering::Relaxed) & !STATE, generation_bits());
        unlock(&word);
        assert_eq!(word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn callbacks_check_their_arguments() {
        let mut m: *mut c_void = std::ptr::null_mut();
        // SAFETY: `m` is a live local; the mutex is used and destroyed once below.
        unsafe {
            assert_eq!(create_mutex(&mut m), CKR_OK);
            assert_eq!(unlock_mutex(m), CKR_MUTEX_NOT_LOCKED);
            assert_eq!(lock_mutex(m), CKR_OK);
            assert_eq!(unlock_mutex(m), CKR_OK);
            assert_eq!(destroy_mutex(m), CKR_OK);
            assert_eq!(lock_mutex(std::ptr::null_mut()), CKR_MUTEX_BAD);
            assert_eq!(create_mutex(std::ptr::null_mut()), CKR_ARGUMENTS_BAD);
        }
    }
}
