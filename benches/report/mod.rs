//! What every benchmark shares: named figures printed as a table and written as JSON to
//! `target/bench/GROUP.json` (merged with what other benchmarks of the group wrote, so a
//! figure keeps its name however the benchmarks are split), percentiles, arguments.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Named figures of one group.
pub struct Report {
    group: String,
    figures: BTreeMap<String, f64>,
}

impl Report {
    pub fn new(group: &str) -> Report {
        Report {
            group: group.to_owned(),
            figures: BTreeMap::new(),
        }
    }

    /// Prints one row (`what`, the value, its target) and records the figure as `key`.
    pub fn add(&mut self, key: &str, what: &str, value: f64, unit: &str, target: &str) {
        let shown = if value >= 100.0 || value.fract() == 0.0 {
            format!("{value:.0} {unit}")
        } else {
            format!("{value:.2} {unit}")
        };
        println!("  {what:<72} {shown:>14}  {target}");
        self.figures.insert(key.into(), value);
    }

    /// Records a figure without printing it.
    pub fn record(&mut self, key: &str, value: f64) {
        self.figures.insert(key.into(), value);
    }

    fn path(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/bench")
            .join(format!("{}.json", self.group))
    }

    /// Writes the figures, keeping the group's figures other benchmarks wrote.
    pub fn write(&self) {
        let path = self.path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut all: BTreeMap<String, f64> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        all.extend(self.figures.clone());
        std::fs::write(&path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
        println!("figures written to target/bench/{}.json", self.group);
    }
}

/// The `p` quantile (0..=1) of sorted samples (NaN when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The value after `--name` on the command line, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time this process has used (user + system), in seconds.
pub fn cpu_seconds() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(usage.user_time()) + t(usage.system_time())
}

/// The number of cores, for the header line.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}
