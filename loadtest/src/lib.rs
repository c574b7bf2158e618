//! stockwire's load-test runner, as a library (the `loadtest` binary is a thin
//! CLI over it, and stockwire's integration tests drive it against a real server).
//!
//! ```text
//! scenario.rs  TOML scenarios: seed, load (open/closed loop), mix, restart
//! http.rs      one keep-alive HTTP/1.1 connection, blocking
//! run.rs       seed, drive, restart under load, read back and judge (the verdict)
//! report.rs    text, JSON, self-contained HTML with SVG charts
//! ```

pub mod http;
pub mod report;
pub mod run;
pub mod scenario;

pub use report::Report;
pub use run::{run, RunOptions};
pub use scenario::Scenario;
