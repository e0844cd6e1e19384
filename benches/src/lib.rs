//! Benchmarks of soilstream (run with `cargo bench -p soilstream-benches`):
//!
//! - `spool`: criterion benchmarks of spool append+commit and drain
//!   throughput on the real filesystem;
//! - `sim_speed`: the capstone-sized simulated world, reporting simulated
//!   seconds per wall-clock second against the 30 s target.
//!
//! This library only holds what the benchmark binaries share.

/// Formats a rate with thousands separators, e.g. `12 345`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_groups_digits() {
        assert_eq!(super::thousands(0.0), "0");
        assert_eq!(super::thousands(999.0), "999");
        assert_eq!(super::thousands(1234567.4), "1 234 567");
    }
}
