//! `report.html`: one self-contained file (inline SVG, one style block, no
//! script, no external fonts or images).

use crate::charts::Chart;
use crate::format::{clock, count, duration, escape, maybe_duration};
use crate::model::{Report, Verdict};
use std::fmt::Write as _;

const STYLE: &str = "\
body{font-family:sans-serif;max-width:1000px;margin:0 auto;padding:16px;color:#222;line-height:1.4}\
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;width:100%;margin:8px 0;font-size:0.9em}\
th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}td.n{text-align:right}\
.banner{padding:12px 16px;border-radius:6px;font-size:1.1em}\
.banner strong{font-size:1.4em;margin-right:8px}\
.PASS{background:#6DB6FE}.FAIL{background:#FEB5DA}.UNKNOWN{background:#FFAA26}\
.ok{color:#1b7d1b;font-weight:bold}.bad{color:#c62828;font-weight:bold}.na{color:#777}\
figure{margin:16px 0}figure svg{width:100%;height:auto;border:1px solid #eee}\
figcaption{font-size:0.9em;color:#444;margin-top:4px}\
code{background:#f4f4f4;padding:1px 4px;border-radius:3px}\
ul.ex{margin:2px 0 8px 0;font-size:0.85em}";

fn mark(passed: Option<bool>) -> &'static str {
    match passed {
        Some(true) => "<span class=\"ok\">&#10004; shown</span>",
        Some(false) => "<span class=\"bad\">&#10008; not shown</span>",
        None => "<span class=\"na\">not exercised</span>",
    }
}

fn verdict_cell(v: Verdict) -> String {
    let class = match v {
        Verdict::Pass => "ok",
        Verdict::Fail => "bad",
        Verdict::Unknown => "na",
    };
    format!("<span class=\"{class}\">{}</span>", v.name())
}

/// Renders `report.html`.
pub fn render(report: &Report, charts: &[Chart], architecture: &str) -> String {
    let id = &report.identity;
    let mut out = String::new();
    let w = &mut out;
    let _ = write!(
        w,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Resilience report: {} seed {}</title><style>{STYLE}</style></head><body>\n",
        escape(&id.scenario),
        id.seed
    );
    let _ = writeln!(
        w,
        "<h1>Resilience report: {} (seed {}, {} world)</h1>",
        escape(&id.scenario),
        id.seed,
        id.world.name()
    );
    let _ = write!(
        w,
        "<div id=\"verdict\" class=\"banner {}\"><strong>{}</strong><ul>",
        report.verdict.name(),
        report.verdict.name()
    );
    for reason in report.verdict_reasons.iter().take(12) {
        let _ = write!(w, "<li>{}</li>", escape(reason));
    }
    if report.verdict_reasons.len() > 12 {
        let _ = write!(w, "<li>... and {} more</li>", report.verdict_reasons.len() - 12);
    }
    let _ = writeln!(w, "</ul></div>");
    let _ = write!(w, "<table id=\"identity\"><tbody>");
    for (k, v) in [
        ("scenario", format!("<code>{}</code>", escape(&id.scenario))),
        ("world", id.world.name().to_owned()),
        ("seed", id.seed.to_string()),
        ("planted bug", escape(id.planted_bug.as_deref().unwrap_or("none"))),
        ("time run", format!("{} from {}", duration(id.run_ms), id.epoch)),
        ("sampled every", duration(id.sample_interval_ms)),
        ("digest", format!("<code>{}</code>", id.digest)),
        ("reproduce", format!("<code>{}</code>", escape(&id.command))),
    ] {
        let _ = write!(w, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    let _ = writeln!(w, "</tbody></table>\n<p>{}</p>", escape(&id.description));

    let _ = writeln!(
        w,
        "<h2 id=\"demonstration\">The demonstration</h2><table><thead><tr><th>step</th><th></th><th>what this run measured</th><th>evidence</th></tr></thead><tbody>"
    );
    for s in &report.demo_steps {
        let _ = writeln!(
            w,
            "<tr><td>{}. {}</td><td>{}</td><td>{}</td><td><a href=\"#{}\">see</a></td></tr>",
            s.number,
            escape(&s.title),
            mark(s.passed),
            escape(&s.evidence),
            escape(&s.link)
        );
    }
    let _ = writeln!(w, "</tbody></table>");

    let _ = writeln!(
        w,
        "<h2 id=\"architecture\">Architecture</h2><figure id=\"chart-architecture\">{architecture}<figcaption>Every component and the seams between them.</figcaption></figure>"
    );

    let _ = writeln!(
        w,
        "<h2 id=\"faults\">Fault timeline</h2><table><thead><tr><th>#</th><th>fault</th><th>target</th><th>start</th><th>end</th><th>lasted</th><th>observed effect</th><th>happened</th><th>backlog built</th><th>gone after it healed</th></tr></thead><tbody>"
    );
    for f in &report.faults {
        let _ = writeln!(
            w,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            f.number,
            escape(&f.kind),
            escape(&f.target),
            clock(f.start_ms as i64),
            clock(f.end_ms as i64),
            duration(f.end_ms - f.start_ms),
            escape(&f.effect),
            if f.covered {
                "<span class=\"ok\">yes</span>"
            } else {
                "<span class=\"na\">no effect</span>"
            },
            if f.backlog_of.is_empty() {
                "-".to_owned()
            } else {
                format!("{} {}", count(f.backlog), escape(&f.backlog_of))
            },
            maybe_duration(f.drained_after_ms)
        );
    }
    if report.faults.is_empty() {
        let _ = writeln!(w, "<tr><td colspan=\"10\">none</td></tr>");
    }
    let _ = writeln!(w, "</tbody></table>");

    let _ = writeln!(
        w,
        "<h2 id=\"charts\">Charts</h2><p>Every chart shares one time axis (simulated time since the start); faults are the shaded bands.</p>"
    );
    for c in charts {
        let _ = writeln!(
            w,
            "<figure id=\"chart-{}\">{}<figcaption><strong>{}.</strong> {}</figcaption></figure>",
            c.id,
            c.svg,
            escape(&c.title),
            escape(&c.caption)
        );
    }

    let _ = writeln!(
        w,
        "<h2 id=\"ledger\">Ledger</h2><table><thead><tr><th></th><th>count</th><th>meaning</th></tr></thead><tbody>"
    );
    for r in &report.ledger {
        let _ = writeln!(
            w,
            "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(&r.name),
            count(r.count),
            escape(&r.note)
        );
    }
    let _ = writeln!(w, "</tbody></table>");

    let _ = writeln!(
        w,
        "<h2 id=\"invariants\">Invariants</h2><table><thead><tr><th>invariant</th><th>measured</th><th>bound</th><th>verdict</th></tr></thead><tbody>"
    );
    for r in &report.invariants {
        let _ = writeln!(
            w,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.name),
            escape(&r.measured),
            escape(&r.bound),
            verdict_cell(r.verdict)
        );
    }
    let _ = writeln!(w, "</tbody></table>");

    let _ = writeln!(w, "<h2 id=\"anomalies\">Anomalies</h2>");
    if report.anomalies.is_empty() {
        let _ = writeln!(w, "<p>None.</p>");
    } else {
        let _ = writeln!(w, "<ul>");
        for a in &report.anomalies {
            let _ = write!(
                w,
                "<li><strong>{}</strong> <code>{}</code>: {}{}<ul class=\"ex\">",
                escape(&a.checker),
                escape(&a.kind),
                count(a.count),
                if a.allowed { " (allowed)" } else { "" }
            );
            for e in &a.examples {
                let _ = write!(w, "<li><code>{}</code></li>", escape(e));
            }
            let _ = writeln!(w, "</ul></li>");
        }
        let _ = writeln!(w, "</ul>");
    }

    let _ = writeln!(
        w,
        "<h2 id=\"decisions\">Design decisions</h2><table><thead><tr><th>decision</th><th>evidence in this run</th></tr></thead><tbody>"
    );
    for d in &report.decisions {
        let _ = writeln!(
            w,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&d.decision),
            escape(&d.evidence)
        );
    }
    let _ = writeln!(w, "</tbody></table>");

    let r = &report.reflection;
    let _ = writeln!(w, "<h2 id=\"reflection\">Reflection</h2>");
    for (title, items) in [
        ("What went well", &r.went_well),
        ("What went wrong", &r.went_wrong),
        ("What the simulation does not model", &r.not_modelled),
        ("What a real deployment must add", &r.deployment_must_add),
    ] {
        let _ = write!(w, "<h3>{title}</h3><ul>");
        for item in items {
            let _ = write!(w, "<li>{}</li>", escape(item));
        }
        let _ = writeln!(w, "</ul>");
    }
    if let Some(clock) = &report.wall_clock {
        let _ = writeln!(
            w,
            "<h2 id=\"wall-clock\">Wall clock (not deterministic)</h2><table><tbody><tr><th>started at</th><td>{}</td></tr><tr><th>took</th><td>{}</td></tr>\
             <tr><th>time compression</th><td>{}x: every time above is on the script's axis</td></tr><tr><th>processes' logs</th><td><code>{}</code></td></tr></tbody></table>",
            escape(&clock.started_at),
            duration(clock.elapsed_ms),
            clock.time_compression,
            escape(&clock.work_dir)
        );
    }
    let _ = writeln!(w, "</body></html>");
    out
}
