//! The report's charts, drawn once and used by both the Markdown (as
//! `charts/{file}.svg`) and the HTML (inline).

use crate::format::{clock, count, duration, escape};
use crate::model::{Completeness, Report, ScatterCell, Series};
use crate::svg::{PALETTE, Plot, WIDTH_PX, YScale, time_step_ms};
use std::fmt::Write as _;

/// One drawn chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    /// Anchor id (`chart-{id}` in the page).
    pub id: &'static str,
    /// File name under `charts/`.
    pub file: &'static str,
    /// Title.
    pub title: String,
    /// What to look for.
    pub caption: String,
    /// The `<svg>` element.
    pub svg: String,
}

const LIVE: &str = "#1f77b4";

/// One count of a throughput bin.
type BinValue = fn(&crate::model::ThroughputBin) -> u64;
const BACKFILL: &str = "#ff7f0e";

/// Every chart of `report`, in reading order.
pub fn charts(report: &Report) -> Vec<Chart> {
    let s = &report.series;
    vec![
        spool_depth(s),
        event_time(s),
        lag(report),
        throughput(s),
        completeness(s),
        backfill(s),
        revised_windows(s),
    ]
}

fn spool_depth(s: &Series) -> Chart {
    let max = s
        .spool_depth
        .iter()
        .map(|(_, d)| d.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let mut plot = Plot::new(
        "spool",
        "Spool depth per gateway",
        300,
        s.end_ms,
        YScale::Linear {
            max: (max as f64 * 1.1).max(10.0),
        },
    );
    plot.bands(&s.bands);
    plot.axes("readings spooled, not yet acknowledged (stacked)");
    let mut legend = Vec::new();
    let mut lower: Vec<(u64, f64)> = s.spool_depth.iter().map(|(t, _)| (*t, 0.0)).collect();
    for (g, name) in s.gateways.iter().enumerate() {
        let colour = PALETTE[g % PALETTE.len()];
        let upper: Vec<(u64, f64)> = s
            .spool_depth
            .iter()
            .zip(&lower)
            .map(|((t, d), (_, below))| (*t, below + d.get(g).copied().unwrap_or(0) as f64))
            .collect();
        plot.area(&lower, &upper, colour, name);
        legend.push((name.clone(), colour, false));
        lower = upper;
    }
    plot.legend(&legend);
    Chart {
        id: "spool",
        file: "spool-depth",
        title: "Spool depth per gateway".into(),
        caption: format!(
            "Readings each gateway holds on disk and the broker has not acknowledged. They rise while a fault \
             cuts a gateway off and fall back to zero once it heals: nothing is dropped, everything waits. \
             Largest, all gateways together: {}.",
            count(max)
        ),
        svg: plot.finish(),
    }
}

fn event_time(s: &Series) -> Chart {
    let mut plot = scatter_plot(
        "event-time",
        "Event time against broker append time",
        340,
        s,
        &s.event_vs_append,
        "event time (h:mm)",
    );
    plot.line(
        &[(0, 0.0), (s.end_ms, s.end_ms as f64)],
        "#999999",
        true,
        "event time = append time",
    );
    draw_cells(&mut plot, s, &s.event_vs_append, |c| {
        let colour = if c.series == 0 { LIVE } else { BACKFILL };
        let title = format!(
            "{} records appended {}..{}, event time {}..",
            count(c.count),
            clock(c.x_ms as i64),
            clock((c.x_ms + s.bin_ms) as i64),
            clock(c.y_ms)
        );
        (colour, title)
    });
    plot.legend(&[
        ("live".into(), LIVE, false),
        ("SD-card backfill".into(), BACKFILL, false),
        ("diagonal".into(), "#999999", true),
    ]);
    Chart {
        id: "event-time",
        file: "event-time",
        title: "Event time against broker append time".into(),
        caption: "Each cell holds records appended in that time bin (x) with event times in that range (y). \
                  In steady flow they sit on the diagonal. When the broker returns, a vertical column of old \
                  event times appears: the spooled history goes first, each reading stamped with the time it was \
                  measured; then the points rejoin the diagonal. The SD-card backfill draws a column reaching \
                  down into the day before."
            .into(),
        svg: plot.finish(),
    }
}

fn lag(report: &Report) -> Chart {
    let s = &report.series;
    let max_s = s.lag.iter().map(|b| b.max_ms).max().unwrap_or(1_000) as f64 / 1_000.0;
    let mut plot = Plot::new(
        "lag",
        "Delivery lag (append time minus event time)",
        300,
        s.end_ms,
        YScale::Log {
            min: 1.0,
            max: (max_s * 1.5).max(100.0),
        },
    );
    plot.log_in_seconds();
    plot.bands(&s.bands);
    plot.axes("lag, log scale");
    let mut legend = Vec::new();
    for (series, name, colour) in [(0u8, "live", LIVE), (1, "backfill", BACKFILL)] {
        let bins: Vec<_> = s.lag.iter().filter(|b| b.series == series).collect();
        if bins.is_empty() {
            continue;
        }
        let secs = |ms: u64| (ms as f64 / 1_000.0).max(1.0);
        let p50: Vec<(u64, f64)> = bins
            .iter()
            .map(|b| (b.at_ms + s.bin_ms / 2, secs(b.p50_ms)))
            .collect();
        let p95: Vec<(u64, f64)> = bins
            .iter()
            .map(|b| (b.at_ms + s.bin_ms / 2, secs(b.p95_ms)))
            .collect();
        let max: Vec<(u64, f64)> = bins
            .iter()
            .map(|b| (b.at_ms + s.bin_ms / 2, secs(b.max_ms)))
            .collect();
        let gap = s.bin_ms * 3 / 2;
        plot.line_with_gaps(&p50, gap, colour, false, &format!("{name} p50"));
        plot.line_with_gaps(&p95, gap, colour, true, &format!("{name} p95"));
        for (t, v) in &max {
            plot.cell(
                t.saturating_sub(s.bin_ms / 4),
                t + s.bin_ms / 4,
                *v,
                *v * 1.08,
                colour,
                &format!("{name} max {}", duration((*v * 1_000.0) as u64)),
            );
        }
        legend.push((format!("{name} p50"), colour, false));
        legend.push((format!("{name} p95"), colour, true));
    }
    plot.legend(&legend);
    let l = &report.lag_live;
    let b = &report.lag_backfill;
    Chart {
        id: "lag",
        file: "delivery-lag",
        title: "Delivery lag".into(),
        caption: format!(
            "Per time bin, the median and 95th percentile of how long readings took from measurement to the \
             broker (ticks: the largest). Live: p50 {}, p95 {}, p99 {}, max {} over {} readings; backfill: \
             p50 {}, max {} over {} rows. Append times are known to the sampling interval ({}).",
            duration(l.p50_ms),
            duration(l.p95_ms),
            duration(l.p99_ms),
            duration(l.max_ms),
            count(l.records),
            duration(b.p50_ms),
            duration(b.max_ms),
            count(b.records),
            duration(report.identity.sample_interval_ms)
        ),
        svg: plot.finish(),
    }
}

fn throughput(s: &Series) -> Chart {
    let max = s
        .throughput
        .iter()
        .map(|b| b.sampled.max(b.delivered).max(b.clean).max(b.archived))
        .max()
        .unwrap_or(0);
    let mut plot = Plot::new(
        "throughput",
        "Throughput: sampled, delivered, clean, archived",
        300,
        s.end_ms,
        YScale::Log {
            min: 1.0,
            max: (max as f64 * 1.5).max(10.0),
        },
    );
    plot.bands(&s.bands);
    plot.axes(&format!("records per {}, log scale", duration(s.bin_ms)));
    let mid = |t: u64| t + s.bin_ms / 2;
    let lines: [(&str, &str, BinValue); 4] = [
        ("sampled", "#2ca02c", |b| b.sampled),
        ("delivered (raw)", LIVE, |b| b.delivered),
        ("clean", "#9467bd", |b| b.clean),
        ("archived", "#8c564b", |b| b.archived),
    ];
    let mut legend = Vec::new();
    for (name, colour, value) in lines {
        let points: Vec<(u64, f64)> = s
            .throughput
            .iter()
            .map(|b| (mid(b.at_ms), (value(b) as f64).max(1.0)))
            .collect();
        if points.iter().all(|(_, v)| *v == 0.0) {
            continue;
        }
        plot.line(&points, colour, false, name);
        legend.push((name.to_owned(), colour, false));
    }
    plot.legend(&legend);
    Chart {
        id: "throughput",
        file: "throughput",
        title: "Throughput".into(),
        caption:
            "Readings sampled by the live probes, records appended to the raw topic (backfill and copies \
                  included), clean records qaqc wrote, and clean records the archive committed, per bin. \
                  Sampling never stops; delivery drops to the floor of the axis (zero) during an outage and \
                  bursts when it heals; the downstream stages follow."
                .into(),
        svg: plot.finish(),
    }
}

fn completeness(s: &Series) -> Chart {
    let rows = &s.completeness;
    let (first_hour, last_hour) = rows
        .iter()
        .flat_map(|r| r.hours.keys().copied())
        .fold((i64::MAX, i64::MIN), |(lo, hi), h| (lo.min(h), hi.max(h)));
    let (first_hour, last_hour) = if first_hour > last_hour {
        (0, 0)
    } else {
        (first_hour, last_hour)
    };
    let hours = (last_hour - first_hour + 1) as f64;
    let row_px = 9.0;
    let (left, top) = (180.0, 46.0);
    let plot_w = f64::from(WIDTH_PX) - left - 20.0;
    let height = (top + row_px * rows.len().max(1) as f64 + 40.0).ceil() as u32;
    let mut plot = Plot::new(
        "completeness",
        "Completeness per sensor per hour of event time",
        height,
        1,
        YScale::Linear { max: 1.0 },
    );
    let mut svg = String::new();
    let colour = |c: Completeness| match c {
        Completeness::Complete => "#4caf50",
        Completeness::AllowedLoss => "#9e9e9e",
        Completeness::ReportedLoss => "#ffb300",
        Completeness::Lost => "#e53935",
    };
    let cell_w = plot_w / hours;
    for (i, row) in rows.iter().enumerate() {
        let y = top + row_px * i as f64;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"8\" text-anchor=\"end\">{}</text>",
            left - 4.0,
            y + row_px - 1.5,
            escape(&row.sensor)
        );
        for (hour, class) in &row.hours {
            let x = left + (hour - first_hour) as f64 * cell_w;
            let _ = write!(
                svg,
                "<rect class=\"point\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} hour {}: {:?}</title></rect>",
                (cell_w - 0.5).max(0.5),
                row_px - 1.0,
                colour(*class),
                escape(&row.sensor),
                clock(hour * 3_600_000),
                class
            );
        }
    }
    let bottom = top + row_px * rows.len().max(1) as f64;
    let step_h = (time_step_ms((hours as u64) * 3_600_000) / 3_600_000).max(1) as i64;
    let mut h = first_hour.div_euclid(step_h) * step_h;
    while h <= last_hour + 1 {
        if h >= first_hour {
            let x = left + (h - first_hour) as f64 * cell_w;
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                bottom + 14.0,
                &clock(h * 3_600_000)[..clock(h * 3_600_000).len() - 3]
            );
        }
        h += step_h;
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555555\">event time since the start (h:mm)</text>",
        f64::from(WIDTH_PX) - 20.0,
        bottom + 30.0
    );
    if rows.is_empty() {
        plot.note("no readings");
    }
    plot.raw(&svg);
    plot.legend(&[
        ("all delivered".into(), colour(Completeness::Complete), false),
        (
            "allowed loss (counted)".into(),
            colour(Completeness::AllowedLoss),
            false,
        ),
        ("reported loss".into(), colour(Completeness::ReportedLoss), false),
        ("lost".into(), colour(Completeness::Lost), false),
    ]);
    Chart {
        id: "completeness",
        file: "completeness",
        title: "Completeness per sensor per hour".into(),
        caption: format!(
            "One row per sensor (live gateways and SD-card logs), one column per hour of event time: green when \
             every reading of the hour is in the raw topic, grey when some were lost where the design allows \
             it (not yet durable at a power cut, refused by a full spool), amber for losses the spool reported \
             (damage), red for any other loss.{}",
            if s.completeness_rows_omitted > 0 {
                format!(" {} more sensors are not drawn.", s.completeness_rows_omitted)
            } else {
                String::new()
            }
        ),
        svg: plot.finish(),
    }
}

fn backfill(s: &Series) -> Chart {
    let max = s.backfill_rows.max(s.backfill_progress.last().map_or(0, |p| p.1));
    let mut plot = Plot::new(
        "backfill",
        "SD-card backfill progress",
        260,
        s.end_ms,
        YScale::Linear {
            max: (max as f64 * 1.1).max(10.0),
        },
    );
    plot.bands(&s.bands);
    plot.axes("rows appended");
    if s.backfill_progress.is_empty() {
        plot.note("this scenario has no backfill");
    } else {
        let mut points = Vec::new();
        let mut last = 0.0;
        for (t, n) in &s.backfill_progress {
            points.push((*t, last));
            points.push((*t, *n as f64));
            last = *n as f64;
        }
        points.push((s.end_ms, last));
        plot.line(&points, BACKFILL, false, "rows appended");
        plot.line(
            &[(0, s.backfill_rows as f64), (s.end_ms, s.backfill_rows as f64)],
            "#555555",
            true,
            "rows on the cards",
        );
    }
    plot.legend(&[
        ("rows appended".into(), BACKFILL, false),
        ("rows on the cards".into(), "#555555", true),
    ]);
    Chart {
        id: "backfill",
        file: "backfill-progress",
        title: "Backfill progress".into(),
        caption: format!(
            "Rows of the SD-card logs appended to the raw topic so far, against the {} good rows the cards \
             hold. The slope is the backfill's rate limit: it queues behind live data.",
            count(s.backfill_rows)
        ),
        svg: plot.finish(),
    }
}

fn revised_windows(s: &Series) -> Chart {
    let mut plot = scatter_plot(
        "windows",
        "Windows corrected by late data",
        300,
        s,
        &s.revised_windows,
        "window start (h:mm)",
    );
    let total: u64 = s.revised_windows.iter().map(|c| c.count).sum();
    if s.revised_windows.is_empty() {
        plot.note("no window was revised in this run");
    }
    draw_cells(&mut plot, s, &s.revised_windows, |c| {
        let title = format!(
            "{} revisions appended {}.. of windows starting {}..",
            count(c.count),
            clock(c.x_ms as i64),
            clock(c.y_ms)
        );
        ("#9467bd", title)
    });
    plot.legend(&[("window revision".into(), "#9467bd", false)]);
    Chart {
        id: "windows",
        file: "corrected-windows",
        title: "Windows corrected by late data".into(),
        caption: format!(
            "Window aggregates written again (revision 2 and up) because late readings arrived for them: x is \
             when the revision was appended, y the window's start. {} revisions in all. Cells far below the \
             diagonal are old windows corrected by a backfill or a spool's history.",
            count(total)
        ),
        svg: plot.finish(),
    }
}

/// A binned scatter on the shared time axis (x: append time), its y axis the
/// times `cells` span (and at least the run), with the fault bands and axes.
fn scatter_plot(
    id: &str,
    title: &str,
    height_px: u32,
    s: &Series,
    cells: &[ScatterCell],
    y_label: &str,
) -> Plot {
    let (min_ms, max_ms) = cells.iter().fold((0_i64, s.end_ms as i64), |(lo, hi), c| {
        (lo.min(c.y_ms), hi.max(c.y_ms + s.event_bin_ms as i64))
    });
    let mut plot = Plot::new(id, title, height_px, s.end_ms, YScale::Time { min_ms, max_ms });
    plot.bands(&s.bands);
    plot.axes(y_label);
    plot
}

/// Draws each cell of a binned scatter, `style` giving its colour and title.
fn draw_cells(
    plot: &mut Plot,
    s: &Series,
    cells: &[ScatterCell],
    style: impl Fn(&ScatterCell) -> (&'static str, String),
) {
    for c in cells {
        let (colour, title) = style(c);
        plot.cell(
            c.x_ms,
            c.x_ms + s.bin_ms,
            c.y_ms as f64,
            (c.y_ms + s.event_bin_ms as i64) as f64,
            colour,
            &title,
        );
    }
}
