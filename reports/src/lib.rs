//! The resilience report of a run.
//!
//! A judged run (a [`RunResult`] of any world and the scenario it played)
//! becomes one [`Report`] ([`build_report`]); [`write_report`] renders it
//! into a directory:
//!
//! ```text
//! DIR/report.md        reads well on a code host; links charts/*.svg
//! DIR/report.html      one self-contained file: inline SVG, one style block, no script
//! DIR/run.json         the machine-readable result (the same model)
//! DIR/charts/*.svg     the charts and the architecture diagram
//! ```
//!
//! A simulated run gives byte-identical files for the same seed: nothing
//! here reads a clock, every map is sorted and every number has a fixed
//! format. A real run's wall-clock fields live in [`Report::wall_clock`]
//! only (a marked section of each file).

pub mod build;
pub mod charts;
pub mod diagram;
pub mod format;
pub mod html;
pub mod markdown;
pub mod model;
pub mod svg;

pub use build::{RunContext, build_report};
pub use model::{Report, Verdict, WallClock, WorldKind};
pub use soilstream_scenarios::runner::RunResult;

use std::path::{Path, PathBuf};

/// A report that could not be written, with the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the report file {path}: {source} (check that the directory is writable)")]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// The rendered files of a report: (path relative to the report
/// directory, contents), in a fixed order.
pub fn render(report: &Report) -> Vec<(String, String)> {
    let charts = charts::charts(report);
    let architecture = diagram::architecture();
    let mut files = vec![
        ("report.md".to_owned(), markdown::render(report, &charts)),
        (
            "report.html".to_owned(),
            html::render(report, &charts, &architecture),
        ),
        (
            "run.json".to_owned(),
            serde_json::to_string_pretty(report).expect("the report model serializes") + "\n",
        ),
        ("charts/architecture.svg".to_owned(), architecture.clone() + "\n"),
    ];
    for c in &charts {
        files.push((format!("charts/{}.svg", c.file), c.svg.clone() + "\n"));
    }
    files
}

/// Writes `report` into `dir` (created if missing); returns the paths
/// written.
pub fn write_report(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let mut written = Vec::new();
    for (name, contents) in render(report) {
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| WriteError {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, contents).map_err(|source| WriteError {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}
