//! A channel's shared status: what its publisher reports and the API, the
//! broadcaster and the runtime read (state, pause, pending, dead letters,
//! cursor, drift, last delivery and error). Lock-free but for the last error.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    Healthy,
    Degraded,
    Down,
}

/// What a channel's publisher shares with the API and the broadcaster.
pub struct ChannelStatus {
    pub id: Arc<str>,
    pub sink: &'static str,
    state: AtomicU8,
    paused: AtomicBool,
    pending: AtomicUsize,
    dlq_depth: AtomicU64,
    cursor_seq: AtomicU64,
    pub(super) drift: AtomicU64,
    /// A resync or dead-letter replay is being offered: one at a time per channel, so
    /// their SKU lists never pile up.
    refreshing: AtomicBool,
    /// Batches were parked since the dead letters were last replayed.
    pub(super) parked_since_replay: AtomicBool,
    last_delivery_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl ChannelStatus {
    pub fn new(id: Arc<str>, sink: &'static str) -> ChannelStatus {
        ChannelStatus {
            id,
            sink,
            state: AtomicU8::new(0),
            paused: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            dlq_depth: AtomicU64::new(0),
            cursor_seq: AtomicU64::new(0),
            drift: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            parked_since_replay: AtomicBool::new(false),
            last_delivery_ms: AtomicI64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn state(&self) -> ChannelState {
        match self.state.load(Ordering::Relaxed) {
            0 => ChannelState::Healthy,
            1 => ChannelState::Degraded,
            _ => ChannelState::Down,
        }
    }
    pub fn set_state(&self, state: ChannelState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
    /// `healthy | degraded | down | paused` (SPEC §2).
    pub fn state_name(&self) -> &'static str {
        if self.is_paused() {
            return "paused";
        }
        match self.state() {
            ChannelState::Healthy => "healthy",
            ChannelState::Degraded => "degraded",
            ChannelState::Down => "down",
        }
    }
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
    pub fn set_pending(&self, pending: usize) {
        self.pending.store(pending, Ordering::Relaxed);
    }
    pub fn dlq_depth(&self) -> u64 {
        self.dlq_depth.load(Ordering::Relaxed)
    }
    /// Batches were parked (or found parked at start-up).
    pub fn add_dlq_depth(&self, n: u64) {
        self.dlq_depth.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            self.parked_since_replay.store(true, Ordering::Relaxed);
        }
    }
    pub fn sub_dlq_depth(&self, n: u64) {
        let _ = self
            .dlq_depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(n))
            });
    }
    pub fn cursor(&self) -> u64 {
        self.cursor_seq.load(Ordering::Relaxed)
    }
    pub fn set_cursor(&self, seq: u64) {
        self.cursor_seq.store(seq, Ordering::Relaxed);
    }
    /// Claims the channel's one refresh; false when one is running already.
    pub fn start_refreshing(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }
    pub fn set_refreshing(&self, refreshing: bool) {
        self.refreshing.store(refreshing, Ordering::Release);
    }
    pub fn drift(&self) -> u64 {
        self.drift.load(Ordering::Relaxed)
    }
    pub fn last_delivery_ms(&self) -> i64 {
        self.last_delivery_ms.load(Ordering::Relaxed)
    }
    pub fn set_last_delivery(&self, at_ms: i64) {
        self.last_delivery_ms.store(at_ms, Ordering::Relaxed);
    }
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }
    pub fn set_last_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = error;
        }
    }
}
