// SPDX-License-Identifier: Apache-2.0
//! A registry that throttles, as one in front of a fleet's boot storm does: at most `max`
//! requests are served at once (a connection with a request in flight; an idle kept-alive
//! one holds nothing); a request beyond them gets `429 Too Many Requests` and its connection
//! is closed. Its `Retry-After` is a reservation: each refused client is told to come back
//! when a slot should be free for it (`slot` per `max` clients, in order, at most
//! [`MAX_RETRY_AFTER`] ahead), so that clients honouring it arrive spread out rather than in
//! waves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The furthest a reservation reaches: a client is never told to wait longer.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The throttle's settings and state.
#[derive(Debug)]
pub(crate) struct Throttle {
    max: usize,
    slot: Duration,
    active: usize,
    next_free: Option<Instant>,
    refused: u64,
}

/// A connection's place: served (the guard frees the slot when dropped) or refused with
/// the seconds to wait.
pub(crate) enum Admission {
    /// Served; holds a slot until dropped.
    Served(Slot),
    /// To be answered 429 with `Retry-After` seconds.
    Refused(u64),
}

/// A held slot.
pub(crate) struct Slot(Option<Arc<Mutex<Option<Throttle>>>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            if let Some(t) = t.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                t.active = t.active.saturating_sub(1);
            }
        }
    }
}

impl Throttle {
    /// At most `max` connections at once; a slot is expected to turn over every `slot`.
    pub(crate) fn new(max: usize, slot: Duration) -> Self {
        Self {
            max: max.max(1),
            slot,
            active: 0,
            next_free: None,
            refused: 0,
        }
    }

    /// Connections refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused
    }
}

/// Admits a new connection under `throttle` (no throttle: always served).
pub(crate) fn admit(throttle: &Arc<Mutex<Option<Throttle>>>) -> Admission {
    let mut guard = throttle.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = guard.as_mut() else {
        return Admission::Served(Slot(None));
    };
    if t.active < t.max {
        t.active += 1;
        return Admission::Served(Slot(Some(Arc::clone(throttle))));
    }
    let now = Instant::now();
    let step = t.slot / t.max as u32;
    let at = (t.next_free.filter(|n| *n > now).unwrap_or(now) + step).min(now + MAX_RETRY_AFTER);
    t.next_free = Some(at);
    t.refused += 1;
    let wait = at.saturating_duration_since(now);
    Admission::Refused(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_up_to_max_then_spreads_the_refused_out() {
        let t = Arc::new(Mutex::new(Some(Throttle::new(2, Duration::from_secs(4)))));
        let a = admit(&t);
        let _b = admit(&t);
        assert!(matches!(a, Admission::Served(_)));
        let waits: Vec<u64> = (0..6)
            .map(|_| match admit(&t) {
                Admission::Refused(s) => s,
                Admission::Served(_) => panic!("served beyond max"),
            })
            .collect();
        // Two clients per 4 s slot: 2 s apart, in order.
        assert_eq!(waits, [2, 4, 6, 8, 10, 12]);
        drop(a);
        assert!(matches!(admit(&t), Admission::Served(_)));
        assert_eq!(t.lock().unwrap().as_ref().unwrap().refused(), 6);
    }

    #[test]
    fn without_a_throttle_everything_is_served() {
        let t = Arc::new(Mutex::new(None));
        assert!((0..100).all(|_| matches!(admit(&t), Admission::Served(_))));
    }
}
