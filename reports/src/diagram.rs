//! The architecture diagram: every component and the seams between them,
//! laid out by hand at fixed coordinates (byte-stable, no layout engine).

use crate::format::escape;
use std::fmt::Write as _;

struct Node {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    title: &'static str,
    lines: &'static [&'static str],
    fill: &'static str,
}

struct Edge {
    from: (u32, u32),
    to: (u32, u32),
    label: &'static str,
    label_at: (u32, u32),
}

const NODES: &[Node] = &[
    Node {
        x: 20,
        y: 40,
        w: 330,
        h: 170,
        title: "edge device (field gateway)",
        lines: &[],
        fill: "#f5f9ff",
    },
    Node {
        x: 35,
        y: 80,
        w: 90,
        h: 50,
        title: "probes",
        lines: &["moisture, temp,", "EC, battery"],
        fill: "#ffffff",
    },
    Node {
        x: 140,
        y: 80,
        w: 95,
        h: 50,
        title: "spool",
        lines: &["CRC frames,", "group fdatasync"],
        fill: "#ffffff",
    },
    Node {
        x: 250,
        y: 80,
        w: 90,
        h: 50,
        title: "forwarder",
        lines: &["history first,", "delete on ack"],
        fill: "#ffffff",
    },
    Node {
        x: 35,
        y: 150,
        w: 305,
        h: 45,
        title: "clock + identity (gateway, probe, seq)",
        lines: &["event time stamped at sampling"],
        fill: "#ffffff",
    },
    Node {
        x: 20,
        y: 250,
        w: 330,
        h: 60,
        title: "backfill (SD-card log)",
        lines: &["rate-limited, checkpointed, same identity and schema"],
        fill: "#f7fbef",
    },
    Node {
        x: 420,
        y: 110,
        w: 170,
        h: 70,
        title: "broker (Kafka protocol)",
        lines: &["soil-moisture-raw", "key = probe, ts = event time"],
        fill: "#eef1fb",
    },
    Node {
        x: 420,
        y: 250,
        w: 170,
        h: 60,
        title: "schema registry",
        lines: &["Avro, Confluent wire", "format, compatibility"],
        fill: "#f8f0fb",
    },
    Node {
        x: 650,
        y: 40,
        w: 150,
        h: 80,
        title: "qaqc",
        lines: &["dedup by identity,", "ISMN flags, windows", "per-sensor lateness"],
        fill: "#f3effa",
    },
    Node {
        x: 650,
        y: 170,
        w: 150,
        h: 70,
        title: "archive",
        lines: &["intent, Parquet files,", "commit marker"],
        fill: "#f8f2ee",
    },
    Node {
        x: 820,
        y: 170,
        w: 125,
        h: 70,
        title: "object store",
        lines: &["event_date=", "directories"],
        fill: "#ffffff",
    },
];

const EDGES: &[Edge] = &[
    Edge {
        from: (125, 105),
        to: (140, 105),
        label: "",
        label_at: (0, 0),
    },
    Edge {
        from: (235, 105),
        to: (250, 105),
        label: "Disk seam",
        label_at: (150, 75),
    },
    Edge {
        from: (340, 120),
        to: (420, 135),
        label: "Producer seam",
        label_at: (352, 116),
    },
    Edge {
        from: (350, 280),
        to: (420, 165),
        label: "Producer seam",
        label_at: (352, 236),
    },
    Edge {
        from: (505, 250),
        to: (505, 180),
        label: "RegistryClient seam",
        label_at: (510, 222),
    },
    Edge {
        from: (590, 125),
        to: (650, 85),
        label: "GroupConsumer",
        label_at: (594, 98),
    },
    Edge {
        from: (650, 105),
        to: (590, 145),
        label: "outputs",
        label_at: (606, 150),
    },
    Edge {
        from: (590, 165),
        to: (650, 200),
        label: "clean topic",
        label_at: (594, 196),
    },
    Edge {
        from: (800, 205),
        to: (820, 205),
        label: "ArchiveStore seam",
        label_at: (770, 262),
    },
];

/// The diagram as an `<svg>` element.
pub fn architecture() -> String {
    let (width, height) = (960, 340);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"svg-architecture\" class=\"chart\" viewBox=\"0 0 {width} {height}\" \
         width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\">\
         <title>Architecture of soilstream</title>\
         <defs><marker id=\"arrow-head\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">\
         <path d=\"M0 0L10 5L0 10z\" fill=\"#333333\"/></marker></defs>\
         <rect width=\"{width}\" height=\"{height}\" fill=\"#ffffff\"/>\
         <text x=\"20\" y=\"20\" font-size=\"13\" font-weight=\"bold\">Architecture: components and the seams between them</text>"
    );
    for n in NODES {
        let _ = write!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"6\" fill=\"{}\" stroke=\"#555555\"/>\
             <text x=\"{}\" y=\"{}\" font-weight=\"bold\">{}</text>",
            n.x,
            n.y,
            n.w,
            n.h,
            n.fill,
            n.x + 8,
            n.y + 16,
            escape(n.title)
        );
        for (i, line) in n.lines.iter().enumerate() {
            let _ = write!(
                out,
                "<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#333333\">{}</text>",
                n.x + 8,
                n.y + 30 + 12 * i as u32,
                escape(line)
            );
        }
    }
    for e in EDGES {
        let _ = write!(
            out,
            "<path d=\"M{} {}L{} {}\" stroke=\"#333333\" stroke-width=\"1.5\" marker-end=\"url(#arrow-head)\"/>",
            e.from.0, e.from.1, e.to.0, e.to.1
        );
        if !e.label.is_empty() {
            let _ = write!(
                out,
                "<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#1a4d8f\">{}</text>",
                e.label_at.0,
                e.label_at.1,
                escape(e.label)
            );
        }
    }
    let _ = write!(
        out,
        "<text x=\"20\" y=\"332\" font-size=\"10\" fill=\"#555555\">Every arrow crosses a seam (a trait): the same components run on \
         real processes (librdkafka, files, HTTP) and in the simulator (turmoil hosts, simulated disks, clocks and network).</text></svg>"
    );
    out
}
