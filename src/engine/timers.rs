//! When to look at a record again: `(at_ms, id)` in time order behind one
//! short lock. Reservations keep their expiry deadlines here, transfers their
//! overdue deadlines and step retries; a loop takes what is due.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
pub struct Timers {
    due: Mutex<BTreeSet<(i64, Arc<str>)>>,
}

impl Timers {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<(i64, Arc<str>)>> {
        self.due
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn schedule(&self, at_ms: i64, id: Arc<str>) {
        self.lock().insert((at_ms, id));
    }

    pub fn unschedule(&self, at_ms: i64, id: &str) {
        self.lock().remove(&(at_ms, Arc::from(id)));
    }

    /// Up to `max` ids due at or before `now_ms`, earliest first, removed.
    pub fn take_due(&self, now_ms: i64, max: usize) -> Vec<Arc<str>> {
        let mut timers = self.lock();
        let mut due = Vec::new();
        while due.len() < max {
            match timers.first() {
                Some((at, _)) if *at <= now_ms => {
                    if let Some((_, id)) = timers.pop_first() {
                        due.push(id);
                    }
                }
                _ => break,
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_ids_come_out_once_in_time_order_up_to_the_limit() {
        let timers = Timers::default();
        timers.schedule(30, Arc::from("c"));
        timers.schedule(10, Arc::from("a"));
        timers.schedule(20, Arc::from("b"));
        timers.schedule(40, Arc::from("d"));
        timers.unschedule(20, "b");
        assert!(timers.take_due(5, 10).is_empty());
        assert_eq!(timers.take_due(30, 1), [Arc::from("a")]);
        assert_eq!(timers.take_due(30, 10), [Arc::from("c")]);
        assert!(timers.take_due(39, 10).is_empty());
        assert_eq!(timers.take_due(i64::MAX, 10), [Arc::from("d")]);
    }
}
