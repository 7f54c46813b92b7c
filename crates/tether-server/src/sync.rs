//! The one lock-poisoning policy of the server: a poisoned mutex is used as it is.
//!
//! A mutex is poisoned when a thread panicked while holding it. Every critical section in this
//! crate keeps its data valid between statements (counters, maps and queues updated in one
//! step each), so the data is usable; refusing it instead would turn one bug into every later
//! caller panicking, including `Drop` paths that run during unwinding, where a second panic
//! aborts the process. The first panic is already reported by the panic hook and logged here.

use std::sync::{Mutex, MutexGuard};

/// Lock `mutex`, recovering from poisoning (see the module docs).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| {
        tracing::error!("a lock was poisoned by an earlier panic; carrying on with its data");
        mutex.clear_poison();
        poisoned.into_inner()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            g.push(2);
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), [1, 2]);
        assert!(!m.is_poisoned(), "cleared, so the error is logged once");
    }
}
