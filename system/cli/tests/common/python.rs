//! Confluent's Python client (`confluent-kafka` with its Avro and Schema
//! Registry extras) as an outside client: finding the interpreter and
//! failing, never skipping, when it lacks the packages.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming the Python interpreter (default `python3`).
pub const PYTHON_ENV: &str = "SOILSTREAM_PYTHON";

/// The interpreter: `$SOILSTREAM_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".to_owned())
}

/// `system/cli/tests`.
pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The repository's `schemas/` directory.
pub fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

/// Fails with an install hint unless the interpreter has confluent-kafka
/// with its Avro and Schema Registry extras.
pub fn require_confluent_kafka(python: &str) {
    let probe = Command::new(python)
        .args([
            "-c",
            "import confluent_kafka, fastavro; \
             from confluent_kafka.schema_registry.avro import AvroSerializer; \
             print(confluent_kafka.version()[0])",
        ])
        .output();
    let requirements = tests_dir().join("python/requirements.txt");
    match probe {
        Ok(output) if output.status.success() => {
            eprintln!(
                "using {python} with confluent-kafka {}",
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(output) => panic!(
            "`{python}` lacks confluent-kafka with its avro and schemaregistry extras:\n{}\n\
             Install them with `{python} -m pip install -r {}`, or point {PYTHON_ENV} at an \
             interpreter that has them.",
            String::from_utf8_lossy(&output.stderr).trim(),
            requirements.display()
        ),
        Err(error) => panic!(
            "cannot run `{python}` ({error}). Install Python 3 and `python3 -m pip install -r {}`, \
             or set {PYTHON_ENV} to an interpreter that has confluent-kafka.",
            requirements.display()
        ),
    }
}
