//! Results: printed as text, written as JSON, and as a self-contained HTML page
//! with two inline SVG charts (latency over time, latency distribution).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::scenario::{Mode, Scenario};

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: &str, passed: bool, detail: String) -> Check {
        Check {
            name: name.to_string(),
            passed,
            detail,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OpStats {
    pub op: String,
    pub requests: u64,
    pub per_second: f64,
    pub latency: Latency,
}

impl OpStats {
    pub fn of(op: &str, h: &Histogram<u64>, seconds: f64) -> OpStats {
        OpStats {
            op: op.to_string(),
            requests: h.len(),
            per_second: h.len() as f64 / seconds,
            latency: Latency::of(h),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: u64,
    pub requests: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub target: String,
    pub mode: Mode,
    pub rate_target: Option<u64>,
    pub concurrency: u64,
    pub warmup_seconds: f64,
    pub duration_seconds: f64,
    pub seed_seconds: f64,
    /// Requests scheduled in the measured window (after the warm-up).
    pub requests: u64,
    pub per_second: f64,
    pub latency: Latency,
    /// `(percentile, latency µs)` for the distribution chart.
    pub distribution: Vec<(f64, u64)>,
    pub ops: Vec<OpStats>,
    /// `"op status [code]"` -> count, in the measured window.
    pub outcomes: Vec<(String, u64)>,
    pub timeline: Vec<Second>,
    pub restarts: u64,
    pub verdict: Vec<Check>,
    pub passed: bool,
}

const PERCENTILES: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

impl Report {
    pub fn new(scenario: &Scenario, target: &str, seed_seconds: f64) -> Report {
        Report {
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            target: target.to_string(),
            mode: scenario.load.mode,
            rate_target: scenario.load.rate,
            concurrency: scenario.load.concurrency,
            warmup_seconds: scenario.load.warmup_seconds,
            duration_seconds: scenario.load.duration_seconds,
            seed_seconds,
            requests: 0,
            per_second: 0.0,
            latency: Latency::of(&Histogram::new(2).expect("histogram")),
            distribution: Vec::new(),
            ops: Vec::new(),
            outcomes: Vec::new(),
            timeline: Vec::new(),
            restarts: 0,
            verdict: Vec::new(),
            passed: false,
        }
    }

    pub fn set_latency(&mut self, h: &Histogram<u64>, seconds: f64) {
        self.requests = h.len();
        self.per_second = h.len() as f64 / seconds;
        self.latency = Latency::of(h);
        self.distribution = PERCENTILES
            .iter()
            .map(|p| (*p, h.value_at_percentile(*p)))
            .collect();
    }

    /// Count of outcomes whose key starts with `prefix` (e.g. `"reserve 201"`).
    pub fn count(&self, prefix: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn text(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut out = String::new();
        let rate = match self.rate_target {
            Some(rate) => format!("open loop at {rate}/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "scenario {}: {rate}, {} connections, {:.1} s after {} s warm-up (seeding took {:.1} s)",
            self.scenario,
            self.concurrency,
            self.duration_seconds,
            self.warmup_seconds,
            self.seed_seconds
        );
        let _ = writeln!(
            out,
            "throughput: {} requests, {:.0}/s",
            self.requests, self.per_second
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us)
        );
        for op in &self.ops {
            let _ = writeln!(
                out,
                "  {:<12} {:>9} ({:>8.0}/s)  p50 {:.3}  p99 {:.3}  max {:.3}",
                op.op,
                op.requests,
                op.per_second,
                ms(op.latency.p50_us),
                ms(op.latency.p99_us),
                ms(op.latency.max_us)
            );
        }
        let _ = writeln!(out, "outcomes:");
        for (key, count) in &self.outcomes {
            let _ = writeln!(out, "  {key:<48} {count}");
        }
        if self.restarts > 0 {
            let _ = writeln!(out, "server restarts under load: {}", self.restarts);
        }
        let _ = writeln!(
            out,
            "verdict: {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        for check in &self.verdict {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                if check.passed { "ok" } else { "FAIL" },
                check.name,
                check.detail
            );
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A self-contained page: no scripts, no external resources.
    pub fn html(&self) -> String {
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut checks = String::new();
        for check in &self.verdict {
            let _ = write!(
                checks,
                "<li class=\"{}\">{}: {}</li>",
                if check.passed { "ok" } else { "fail" },
                escape(&check.name),
                escape(&check.detail)
            );
        }
        let timeline = chart(
            "Latency over time (ms, per second of the run)",
            "second",
            &[
                (
                    "p50",
                    "#1f77b4",
                    self.timeline
                        .iter()
                        .map(|s| (s.second as f64, s.p50_us as f64 / 1000.0))
                        .collect(),
                ),
                (
                    "p99",
                    "#d62728",
                    self.timeline
                        .iter()
                        .map(|s| (s.second as f64, s.p99_us as f64 / 1000.0))
                        .collect(),
                ),
                (
                    "max",
                    "#7f7f7f",
                    self.timeline
                        .iter()
                        .map(|s| (s.second as f64, s.max_us as f64 / 1000.0))
                        .collect(),
                ),
            ],
            false,
        );
        // x = number of nines: -log10(1 - p/100), so p99.9 sits at 3.
        let nines = |p: f64| {
            if p >= 100.0 {
                5.5
            } else {
                -(1.0 - p / 100.0).log10()
            }
        };
        let distribution = chart(
            "Latency distribution (ms by percentile; x: 1 = p90, 2 = p99, 3 = p99.9)",
            "nines",
            &[(
                "latency",
                "#2ca02c",
                self.distribution
                    .iter()
                    .map(|(p, us)| (nines(*p), *us as f64 / 1000.0))
                    .collect(),
            )],
            true,
        );
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>stockwire load test: {name}</title>\
             <style>body{{font-family:sans-serif;margin:2em;max-width:60em}}pre{{background:#f4f4f4;padding:1em}}\
             .ok{{color:#080}}.fail{{color:#b00;font-weight:bold}}</style></head><body>\
             <h1>{name}: <span class=\"{class}\">{verdict}</span></h1><p>{description}</p>\
             <ul>{checks}</ul>{timeline}{distribution}<h2>Summary</h2><pre>{text}</pre></body></html>\n",
            name = escape(&self.scenario),
            class = if self.passed { "ok" } else { "fail" },
            verdict = if self.passed { "PASS" } else { "FAIL" },
            description = escape(&self.description),
            text = escape(&self.text()),
        )
    }
}

/// One line of a chart: name, colour, points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// An SVG line chart of `series`.
fn chart(title: &str, x_label: &str, series: &[Series], markers: bool) -> String {
    let (width, height, pad) = (720.0, 300.0, 50.0);
    let points = series.iter().flat_map(|(_, _, p)| p.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0_f64, f64::max);
    let y_max = points.map(|p| p.1).fold(0.001_f64, f64::max) * 1.1;
    let sx = |x: f64| pad + x / x_max * (width - 2.0 * pad);
    let sy = |y: f64| height - pad - y / y_max * (height - 2.0 * pad);
    let mut svg = format!(
        "<h2>{title}</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <line x1=\"{pad}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"black\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{y0}\" stroke=\"black\"/>\
         <text x=\"{xl}\" y=\"{yl}\" font-size=\"12\">{x_label}</text>\
         <text x=\"4\" y=\"{pad}\" font-size=\"12\">{y_max:.2} ms</text>\
         <text x=\"4\" y=\"{y0}\" font-size=\"12\">0</text>\
         <text x=\"{x1}\" y=\"{yl}\" font-size=\"12\" text-anchor=\"end\">{x_max:.1}</text>",
        y0 = height - pad,
        x1 = width - pad,
        xl = width / 2.0,
        yl = height - pad / 3.0,
    );
    for (index, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{colour}\">{name}</text>",
            path.join(" "),
            width - pad + 4.0,
            pad + 14.0 * index as f64
        );
        if markers {
            for (x, y) in points {
                let _ = write!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                    sx(*x),
                    sy(*y)
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}
