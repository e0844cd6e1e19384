//! `report.md`: reads well on a code host; the charts are linked as
//! `charts/*.svg`.

use crate::charts::Chart;
use crate::format::{cell, clock, count, duration, maybe_duration};
use crate::model::{Report, Verdict};
use std::fmt::Write as _;

fn mark(passed: Option<bool>) -> &'static str {
    match passed {
        Some(true) => "✅",
        Some(false) => "❌",
        None => "➖ not exercised",
    }
}

fn verdict_mark(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "✅ PASS",
        Verdict::Unknown => "⚠️ UNKNOWN",
        Verdict::Fail => "❌ FAIL",
    }
}

/// Where a report-internal link points in the Markdown copy.
fn target(link: &str, charts: &[Chart]) -> String {
    match link.strip_prefix("chart-") {
        Some(id) => charts
            .iter()
            .find(|c| c.id == id)
            .map_or_else(|| "#charts".to_owned(), |c| format!("charts/{}.svg", c.file)),
        None => match link {
            "faults" => "#fault-timeline".to_owned(),
            "ledger" => "#ledger".to_owned(),
            other => format!("#{other}"),
        },
    }
}

/// Renders `report.md`.
pub fn render(report: &Report, charts: &[Chart]) -> String {
    let id = &report.identity;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# Resilience report: {} (seed {}, {} world)\n",
        id.scenario,
        id.seed,
        id.world.name()
    );
    let _ = writeln!(w, "> **{}**\n>", verdict_mark(report.verdict));
    for reason in report.verdict_reasons.iter().take(12) {
        let _ = writeln!(w, "> - {}", reason.replace('\n', " "));
    }
    if report.verdict_reasons.len() > 12 {
        let _ = writeln!(w, "> - ... and {} more", report.verdict_reasons.len() - 12);
    }
    let _ = writeln!(w, "\n| run | |\n|---|---|");
    let _ = writeln!(w, "| scenario | `{}` |", id.scenario);
    let _ = writeln!(w, "| world | {} |", id.world.name());
    let _ = writeln!(w, "| seed | {} |", id.seed);
    let _ = writeln!(
        w,
        "| planted bug | {} |",
        id.planted_bug.as_deref().unwrap_or("none")
    );
    let _ = writeln!(w, "| time run | {} from {} |", duration(id.run_ms), id.epoch);
    let _ = writeln!(w, "| sampled every | {} |", duration(id.sample_interval_ms));
    let _ = writeln!(w, "| digest | `{}` |", id.digest);
    let _ = writeln!(w, "| reproduce | `{}` |\n", id.command);
    let _ = writeln!(w, "{}\n", id.description.replace('\n', " "));

    let _ = writeln!(w, "## The demonstration\n");
    let _ = writeln!(
        w,
        "| step | | what this run measured | evidence |\n|---|---|---|---|"
    );
    for s in &report.demo_steps {
        let _ = writeln!(
            w,
            "| {}. {} | {} | {} | [see]({}) |",
            s.number,
            cell(&s.title),
            mark(s.passed),
            cell(&s.evidence),
            target(&s.link, charts)
        );
    }

    let _ = writeln!(
        w,
        "\n## Architecture\n\n![Architecture](charts/architecture.svg)\n"
    );

    let _ = writeln!(w, "## Fault timeline\n");
    let _ = writeln!(
        w,
        "| # | fault | target | start | end | lasted | observed effect | happened | backlog built | gone after it healed |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for f in &report.faults {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f.number,
            f.kind,
            cell(&f.target),
            clock(f.start_ms as i64),
            clock(f.end_ms as i64),
            duration(f.end_ms - f.start_ms),
            cell(&f.effect),
            if f.covered { "✅ yes" } else { "⚠️ no effect" },
            if f.backlog_of.is_empty() {
                "-".to_owned()
            } else {
                format!("{} {}", count(f.backlog), f.backlog_of)
            },
            maybe_duration(f.drained_after_ms)
        );
    }
    if report.faults.is_empty() {
        let _ = writeln!(w, "| - | none | | | | | | | | |");
    }

    let _ = writeln!(w, "\n## Charts\n");
    let _ = writeln!(
        w,
        "Every chart shares one time axis (simulated time since the start); faults are the shaded bands.\n"
    );
    for c in charts {
        let _ = writeln!(
            w,
            "### {}\n\n![{}](charts/{}.svg)\n\n{}\n",
            c.title, c.title, c.file, c.caption
        );
    }

    let _ = writeln!(w, "## Ledger\n\n| | count | meaning |\n|---|---:|---|");
    for r in &report.ledger {
        let _ = writeln!(
            w,
            "| {} | {} | {} |",
            cell(&r.name),
            count(r.count),
            cell(&r.note)
        );
    }

    let _ = writeln!(
        w,
        "\n## Invariants\n\n| invariant | measured | bound | verdict |\n|---|---|---|---|"
    );
    for r in &report.invariants {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            cell(&r.name),
            cell(&r.measured),
            cell(&r.bound),
            verdict_mark(r.verdict)
        );
    }

    let _ = writeln!(w, "\n## Anomalies\n");
    if report.anomalies.is_empty() {
        let _ = writeln!(w, "None.");
    }
    for a in &report.anomalies {
        let _ = writeln!(
            w,
            "- **{}** `{}`: {}{}",
            a.checker,
            a.kind,
            count(a.count),
            if a.allowed { " (allowed)" } else { "" }
        );
        for e in &a.examples {
            let _ = writeln!(w, "  - `{}`", e.replace('`', "'").replace('\n', " "));
        }
    }

    let _ = writeln!(
        w,
        "\n## Design decisions\n\n| decision | evidence in this run |\n|---|---|"
    );
    for d in &report.decisions {
        let _ = writeln!(w, "| {} | {} |", cell(&d.decision), cell(&d.evidence));
    }

    let r = &report.reflection;
    let _ = writeln!(w, "\n## Reflection\n");
    for (title, items) in [
        ("What went well", &r.went_well),
        ("What went wrong", &r.went_wrong),
        ("What the simulation does not model", &r.not_modelled),
        ("What a real deployment must add", &r.deployment_must_add),
    ] {
        let _ = writeln!(w, "**{title}**\n");
        for item in items {
            let _ = writeln!(w, "- {item}");
        }
        let _ = writeln!(w);
    }
    if let Some(clock) = &report.wall_clock {
        let _ = writeln!(
            w,
            "## Wall clock (not deterministic)\n\n| | |\n|---|---|\n| started at | {} |\n| took | {} |\n\
             | time compression | {}x: every time above is on the script's axis |\n| processes' logs | `{}` |\n",
            clock.started_at,
            duration(clock.elapsed_ms),
            clock.time_compression,
            clock.work_dir
        );
    }
    let _ = writeln!(
        w,
        "---\n\nThe same data as `run.json`; the same report, self-contained, as `report.html`."
    );
    out
}
