//! `soilstream spool inspect|verify` against real spool directories.

use soilstream::disk::{Disk, StdDisk};
use soilstream::model::Reading;
use soilstream::spool::{Spool, SpoolConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

fn reading(sensor: &str, seq: u64) -> Reading {
    Reading {
        gateway_id: "gw-cli".into(),
        sensor_id: sensor.into(),
        seq,
        event_time_ms: 1_700_000_000_000 + seq as i64 * 60_000,
        moisture_vwc: 0.3,
        soil_temp_c: Some(15.0),
        bulk_ec_ds_m: None,
        depth_cm: 20,
        battery_v: None,
        source_flag: None,
    }
}

/// A spool of 200 committed readings over two sensors, in small segments.
fn make_spool(dir: &Path) {
    let disk: Rc<dyn Disk> = Rc::new(StdDisk);
    let mut config = SpoolConfig::new(dir);
    config.segment_max_bytes = 4096;
    config.max_uncommitted_bytes = 4096;
    config.max_record_bytes = 1024;
    let (mut spool, _) = Spool::open(disk, config).unwrap();
    for _ in 0..10 {
        for sensor in ["probe-1", "probe-2"] {
            for _ in 0..10 {
                let seq = spool.next_seq(sensor).unwrap();
                spool.append(&reading(sensor, seq)).unwrap();
            }
        }
        spool.commit().unwrap();
    }
}

fn soilstream(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_soilstream"))
        .args(args)
        .env("SOILSTREAM_LOG", "error")
        .output()
        .expect("the binary runs")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn inspect_and_verify_a_clean_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    make_spool(&dir);
    let dir_arg = dir.to_str().unwrap();
    let out = soilstream(&["spool", "inspect", dir_arg, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["records"], 200);
    assert_eq!(json["sensors"]["probe-1"]["records"], 100);
    assert_eq!(json["sensors"]["probe-2"]["max_seq"], 100);
    let out = soilstream(&["spool", "inspect", dir_arg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("200 record(s)") && text.contains("probe-2:"),
        "{text}"
    );
    let out = soilstream(&["spool", "verify", dir_arg]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn verify_reports_bytes_flipped_in_the_middle_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    make_spool(&dir);
    let all = segments(&dir);
    let middle = &all[all.len() / 2];
    let mut bytes = std::fs::read(middle).unwrap();
    let at = bytes.len() / 2;
    for byte in &mut bytes[at..at + 8] {
        *byte = !*byte;
    }
    std::fs::write(middle, &bytes).unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = segments(&dir)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();

    let out = soilstream(&["spool", "verify", dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("corruption before the synced point"), "{stdout}");
    assert!(
        stderr.contains("will not be delivered") && stderr.contains("replace the storage"),
        "{stderr}"
    );
    let out = soilstream(&["spool", "verify", dir.to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verdict"], "damaged");
    assert!(json["damage"]["ranges_total"].as_u64().unwrap() >= 1);

    let after: Vec<(PathBuf, Vec<u8>)> = segments(&dir)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    assert_eq!(before, after, "verify is read-only");
}

#[test]
fn a_missing_directory_is_an_error() {
    let out = soilstream(&["spool", "verify", "/definitely/not/a/spool"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such directory"));
}
