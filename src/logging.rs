//! Log output that never makes a request wait: formatted lines are appended
//! to one shared buffer (a short lock, no syscall, no wake-up of another
//! thread), and a flusher thread writes the buffer to stdout every
//! [`FLUSH_EVERY`] in one `write`. The buffer holds at most
//! [`BUFFERED_BYTES_MAX`]; past that, lines are dropped and counted
//! (`stockwire_log_lines_dropped_total`), never queued without bound.
//!
//! What is lost on a crash is at most the last [`FLUSH_EVERY`] of lines: the
//! audit trail is a record of what happened, nothing acknowledged depends on it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the flusher writes what was logged.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Lines waiting for the flusher, in bytes; beyond, new lines are dropped.
pub const BUFFERED_BYTES_MAX: usize = 8 << 20;

struct Shared {
    buffer: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    stop: AtomicBool,
}

/// The `MakeWriter` for the log subscriber (clone it freely).
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Stops the flusher after a last flush when dropped; keep it until exit.
pub struct FlushGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

/// Starts the flusher writing to `out` (stdout for the server).
pub fn batched(out: impl Write + Send + 'static) -> (BatchedWriter, FlushGuard) {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Vec::with_capacity(64 << 10)),
        dropped: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let for_flusher = shared.clone();
    let flusher = std::thread::Builder::new()
        .name("log-flusher".to_string())
        .spawn(move || flush_loop(&for_flusher, out))
        .ok();
    (
        BatchedWriter {
            shared: shared.clone(),
        },
        FlushGuard { shared, flusher },
    )
}

fn flush_loop(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::with_capacity(64 << 10);
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        {
            let mut buffer = shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *buffer, &mut spare);
        }
        if !spare.is_empty() {
            // A log that cannot be written is not a reason to stop serving.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
            // Give back a buffer that grew during a burst.
            spare.shrink_to(1 << 20);
        }
        if stopping {
            return;
        }
        std::thread::sleep(FLUSH_EVERY);
    }
}

impl BatchedWriter {
    /// Lines dropped because the buffer was full.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Write for BatchedWriter {
    /// The subscriber formats a whole line first and writes it in one call,
    /// so lines from two threads never interleave.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if buffer.len() + line.len() > BUFFERED_BYTES_MAX {
            drop(buffer);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            buffer.extend_from_slice(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedWriter {
    type Writer = BatchedWriter;

    fn make_writer(&'a self) -> BatchedWriter {
        self.clone()
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<Vec<u8>>>);

    impl Write for Collected {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_output_whole_and_in_order_per_thread() {
        let out = Collected::default();
        let (writer, guard) = batched(out.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        writer
                            .write_all(format!("t{t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4000);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..1000).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, expected);
        }
        assert_eq!(writer.dropped_lines(), 0);
    }

    #[test]
    fn a_full_buffer_drops_and_counts_lines() {
        // An output that blocks until released: the buffer fills behind it.
        let gate = Arc::new(Mutex::new(()));
        struct Gated(Arc<Mutex<()>>);
        impl Write for Gated {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                let _open = self.0.lock().unwrap();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let closed = gate.lock().unwrap();
        let (mut writer, guard) = batched(Gated(gate.clone()));
        let line = vec![b'x'; 1 << 16];
        // Enough for the flusher to take one buffer and block, then fill another.
        for _ in 0..(2 * BUFFERED_BYTES_MAX / line.len() + 4) {
            writer.write_all(&line).unwrap();
            std::thread::sleep(Duration::from_micros(50));
        }
        assert!(writer.dropped_lines() > 0);
        drop(closed);
        drop(guard);
    }
}
