//! A small SVG plotter: one time axis shared by every chart, fault bands,
//! lines, binned cells and legends, written with fixed number formats.
//!
//! Hand-written rather than `plotters`: the charts need faults as shaded
//! bands with lane labels, binned scatters and a heatmap on the same axis,
//! and byte-identical output for the same data; a few hundred lines of
//! `write!` do that with no dependency and full control of every byte.
//! Text is left to the browser's own fonts (no font crate).

use crate::format::{clock, escape};
use crate::model::Band;
use std::fmt::Write as _;

/// Width of every chart, px (scaled to the page by a `viewBox`).
pub const WIDTH_PX: u32 = 960;
const LEFT_PX: f64 = 70.0;
const RIGHT_PX: f64 = 20.0;
const TOP_PX: f64 = 46.0;
const BOTTOM_PX: f64 = 34.0;

/// Colours of the data series, in order.
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

/// The band colour of a fault family (after Jepsen's nemesis palette).
pub fn band_colour(family: &str) -> &'static str {
    match family {
        "broker" => "#A0B1E9",
        "network" => "#E9DCA0",
        "power" => "#E9A4A0",
        "disk" => "#99F2E2",
        "clock" => "#A0E9E3",
        "backfill" => "#D1E8A0",
        "service" => "#E0C0E9",
        "input" => "#F2C499",
        _ => "#CCCCCC",
    }
}

/// The vertical scale of a chart.
#[derive(Debug, Clone, Copy)]
pub enum YScale {
    /// 0 to `max`.
    Linear {
        /// Top of the axis.
        max: f64,
    },
    /// `min` to `max`, logarithmic (both > 0).
    Log {
        /// Bottom of the axis.
        min: f64,
        /// Top of the axis.
        max: f64,
    },
    /// Times (ms since the start) from `min_ms` to `max_ms`.
    Time {
        /// Bottom.
        min_ms: i64,
        /// Top.
        max_ms: i64,
    },
}

/// One chart being drawn.
pub struct Plot {
    log_unit_seconds: bool,
    height_px: f64,
    end_ms: u64,
    y: YScale,
    out: String,
}

impl Plot {
    /// A chart titled `title`, `height_px` high, over `[0, end_ms]`.
    pub fn new(id: &str, title: &str, height_px: u32, end_ms: u64, y: YScale) -> Self {
        let mut out = String::new();
        let _ = write!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"svg-{id}\" class=\"chart\" viewBox=\"0 0 {WIDTH_PX} {height_px}\" \
             width=\"{WIDTH_PX}\" height=\"{height_px}\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\">\
             <title>{}</title><rect width=\"{WIDTH_PX}\" height=\"{height_px}\" fill=\"#ffffff\"/>\
             <text x=\"{LEFT_PX}\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{}</text>",
            escape(title),
            escape(title)
        );
        Self {
            log_unit_seconds: false,
            height_px: f64::from(height_px),
            end_ms: end_ms.max(1),
            y,
            out,
        }
    }

    fn plot_width(&self) -> f64 {
        f64::from(WIDTH_PX) - LEFT_PX - RIGHT_PX
    }

    fn plot_height(&self) -> f64 {
        self.height_px - TOP_PX - BOTTOM_PX
    }

    /// The x of a time, px.
    pub fn x(&self, ms: u64) -> f64 {
        LEFT_PX + (ms.min(self.end_ms) as f64 / self.end_ms as f64) * self.plot_width()
    }

    /// The y of a value, px (clamped to the plot).
    pub fn y(&self, value: f64) -> f64 {
        let fraction = match self.y {
            YScale::Linear { max } => value / max.max(1e-9),
            YScale::Log { min, max } => (value.max(min).ln() - min.ln()) / (max.ln() - min.ln()).max(1e-9),
            YScale::Time { min_ms, max_ms } => (value - min_ms as f64) / ((max_ms - min_ms).max(1) as f64),
        };
        TOP_PX + (1.0 - fraction.clamp(0.0, 1.0)) * self.plot_height()
    }

    /// Faults as shaded bands over the plot, labelled in the lane above it.
    pub fn bands(&mut self, bands: &[Band]) {
        for (i, band) in bands.iter().enumerate() {
            let x0 = self.x(band.start_ms);
            let x1 = self.x(band.end_ms).max(x0 + 2.0);
            let _ = write!(
                self.out,
                "<rect class=\"band\" x=\"{x0:.1}\" y=\"{TOP_PX}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" fill-opacity=\"0.45\"><title>{}</title></rect>",
                x1 - x0,
                self.plot_height(),
                band_colour(&band.family),
                escape(&band.label)
            );
            let label_y = TOP_PX - 6.0 - 10.0 * (i % 2) as f64;
            let _ = write!(
                self.out,
                "<text x=\"{x0:.1}\" y=\"{label_y:.1}\" font-size=\"10\" fill=\"#444444\">{}</text>",
                escape(&band.label)
            );
        }
    }

    /// The axes: time along x (shared by every chart), `y_label` up.
    pub fn axes(&mut self, y_label: &str) {
        let (top, bottom) = (TOP_PX, TOP_PX + self.plot_height());
        let (left, right) = (LEFT_PX, LEFT_PX + self.plot_width());
        let _ = write!(
            self.out,
            "<path d=\"M{left} {top}V{bottom:.1}H{right:.1}\" fill=\"none\" stroke=\"#333333\"/>"
        );
        let step = time_step_ms(self.end_ms);
        let mut t = 0;
        while t <= self.end_ms {
            let x = self.x(t);
            let _ = write!(
                self.out,
                "<path d=\"M{x:.1} {bottom:.1}v4\" stroke=\"#333333\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                bottom + 15.0,
                short_clock(t as i64)
            );
            t += step;
        }
        let _ = write!(
            self.out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555555\">simulated time since the start (h:mm)</text>",
            right,
            bottom + 29.0
        );
        for (value, label) in self.y_ticks() {
            let y = self.y(value);
            let _ = write!(
                self.out,
                "<path d=\"M{left} {y:.1}h-4\" stroke=\"#333333\"/><path d=\"M{left} {y:.1}H{right:.1}\" stroke=\"#eeeeee\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left - 6.0,
                y + 4.0,
                escape(&label)
            );
        }
        let _ = write!(
            self.out,
            "<text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\" fill=\"#555555\">{}</text>",
            top + self.plot_height() / 2.0,
            escape(y_label)
        );
    }

    fn y_ticks(&self) -> Vec<(f64, String)> {
        match self.y {
            YScale::Linear { max } => {
                let step = nice(max / 5.0);
                (0..=((max / step).floor() as u64))
                    .map(|i| {
                        let v = i as f64 * step;
                        (v, short_number(v))
                    })
                    .collect()
            }
            YScale::Log { min, max } => LOG_TICKS
                .iter()
                .copied()
                .filter(|v| *v >= min && *v <= max * 1.0001)
                .map(|v| (v, self.log_label(v)))
                .collect(),
            YScale::Time { min_ms, max_ms } => {
                let step = time_step_ms((max_ms - min_ms).max(1) as u64) as i64;
                let mut t = min_ms.div_euclid(step) * step;
                let mut ticks = Vec::new();
                while t <= max_ms {
                    if t >= min_ms {
                        ticks.push((t as f64, short_clock(t)));
                    }
                    t += step;
                }
                ticks
            }
        }
    }

    fn log_label(&self, v: f64) -> String {
        if self.log_unit_seconds {
            short_seconds(v)
        } else {
            short_number(v)
        }
    }

    /// Labels a log axis in seconds (`10 s`, `1 h`) rather than counts.
    pub fn log_in_seconds(&mut self) {
        self.log_unit_seconds = true;
    }

    /// A polyline through `points` (time ms, value).
    pub fn line(&mut self, points: &[(u64, f64)], colour: &str, dashed: bool, name: &str) {
        self.line_with_gaps(points, u64::MAX, colour, dashed, name);
    }

    /// A polyline through `points`, broken where two points are more than
    /// `max_gap_ms` apart (no data there, nothing drawn).
    pub fn line_with_gaps(
        &mut self,
        points: &[(u64, f64)],
        max_gap_ms: u64,
        colour: &str,
        dashed: bool,
        name: &str,
    ) {
        if points.is_empty() {
            return;
        }
        let mut d = String::new();
        let mut last_t: Option<u64> = None;
        for (t, v) in points {
            let jump = last_t.is_none_or(|last| t.saturating_sub(last) > max_gap_ms);
            let _ = write!(
                d,
                "{}{:.1} {:.1}",
                if jump { "M" } else { "L" },
                self.x(*t),
                self.y(*v)
            );
            last_t = Some(*t);
        }
        let _ = write!(
            self.out,
            "<path class=\"series\" d=\"{d}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"{}><title>{}</title></path>",
            if dashed { " stroke-dasharray=\"5 3\"" } else { "" },
            escape(name)
        );
    }

    /// A filled area between two lines over the same times (stacked areas).
    pub fn area(&mut self, lower: &[(u64, f64)], upper: &[(u64, f64)], colour: &str, name: &str) {
        if upper.is_empty() {
            return;
        }
        let mut d = String::new();
        for (i, (t, v)) in upper.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1} {:.1}",
                if i == 0 { "M" } else { "L" },
                self.x(*t),
                self.y(*v)
            );
        }
        for (t, v) in lower.iter().rev() {
            let _ = write!(d, "L{:.1} {:.1}", self.x(*t), self.y(*v));
        }
        let _ = write!(
            self.out,
            "<path class=\"series\" d=\"{d}Z\" fill=\"{colour}\" fill-opacity=\"0.75\" stroke=\"{colour}\" stroke-width=\"0.5\"><title>{}</title></path>",
            escape(name)
        );
    }

    /// A filled cell from `(t0, v0)` to `(t1, v1)`.
    pub fn cell(&mut self, t0: u64, t1: u64, v0: f64, v1: f64, colour: &str, title: &str) {
        let (x0, x1) = (self.x(t0), self.x(t1).max(self.x(t0) + 1.5));
        let (ya, yb) = (self.y(v0), self.y(v1));
        let (y0, y1) = (ya.min(yb), ya.max(yb).max(ya.min(yb) + 1.5));
        let _ = write!(
            self.out,
            "<rect class=\"point\" x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\" fill-opacity=\"0.8\"><title>{}</title></rect>",
            x1 - x0,
            y1 - y0,
            escape(title)
        );
    }

    /// A vertical marker at `t` labelled `label`.
    pub fn marker(&mut self, t: u64, label: &str) {
        let x = self.x(t);
        let _ = write!(
            self.out,
            "<path d=\"M{x:.1} {TOP_PX}v{:.1}\" stroke=\"#555555\" stroke-dasharray=\"2 2\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#555555\">{}</text>",
            self.plot_height(),
            x + 3.0,
            TOP_PX + 12.0,
            escape(label)
        );
    }

    /// A legend at the top right: (name, colour, dashed).
    pub fn legend(&mut self, items: &[(String, &str, bool)]) {
        let mut x = f64::from(WIDTH_PX) - RIGHT_PX;
        for (name, colour, dashed) in items.iter().rev() {
            let width = 26.0 + 6.2 * name.chars().count() as f64;
            x -= width;
            let _ = write!(
                self.out,
                "<path d=\"M{x:.1} 12h16\" stroke=\"{colour}\" stroke-width=\"3\"{}/><text x=\"{:.1}\" y=\"16\">{}</text>",
                if *dashed { " stroke-dasharray=\"4 2\"" } else { "" },
                x + 20.0,
                escape(name)
            );
        }
    }

    /// A note in the plot's top-left corner (for an empty chart).
    pub fn note(&mut self, text: &str) {
        let _ = write!(
            self.out,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#777777\">{}</text>",
            LEFT_PX + 10.0,
            TOP_PX + 20.0,
            escape(text)
        );
    }

    /// Appends raw SVG (for charts with their own layout).
    pub fn raw(&mut self, svg: &str) {
        self.out.push_str(svg);
    }

    /// The finished `<svg>` element.
    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>");
        self.out
    }
}

/// Ticks of a logarithmic axis: counts and seconds that read well.
const LOG_TICKS: [f64; 13] = [
    1.0,
    10.0,
    60.0,
    100.0,
    600.0,
    1_000.0,
    3_600.0,
    10_000.0,
    21_600.0,
    86_400.0,
    100_000.0,
    604_800.0,
    1_000_000.0,
];

/// A round step for about five ticks over `span`: 1, 2 or 5 × 10^k.
pub fn nice(span: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(span.log10().floor());
    let fraction = span / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    (nice * magnitude).max(1.0)
}

/// A tick step for a time span: at most about twelve ticks.
pub fn time_step_ms(span_ms: u64) -> u64 {
    const STEPS_MS: [u64; 11] = [
        60_000,
        300_000,
        600_000,
        1_800_000,
        3_600_000,
        7_200_000,
        10_800_000,
        21_600_000,
        43_200_000,
        86_400_000,
        172_800_000,
    ];
    STEPS_MS
        .iter()
        .copied()
        .find(|s| span_ms / s <= 12)
        .unwrap_or(604_800_000)
}

fn short_clock(ms: i64) -> String {
    let full = clock(ms);
    // h:mm:ss -> h:mm
    full[..full.len() - 3].to_owned()
}

fn short_number(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1_000.0)
    } else {
        format!("{v:.0}")
    }
}

fn short_seconds(s: f64) -> String {
    if s >= 86_400.0 {
        format!("{:.0} d", s / 86_400.0)
    } else if s >= 3_600.0 {
        format!("{:.0} h", s / 3_600.0)
    } else if s >= 60.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_scales() {
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(1_500.0), 2_000.0);
        assert_eq!(time_step_ms(4 * 3_600_000), 1_800_000);
        assert_eq!(time_step_ms(30 * 3_600_000), 10_800_000);
        let plot = Plot::new("t", "T", 300, 1_000, YScale::Linear { max: 10.0 });
        assert_eq!(plot.x(0), LEFT_PX);
        assert_eq!(plot.x(2_000), plot.x(1_000));
        assert!(plot.y(10.0) < plot.y(0.0));
        assert_eq!(short_clock(5_400_000), "1:30");
        assert_eq!(short_clock(-3_600_000), "-1:00");
    }
}
