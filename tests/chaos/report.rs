//! One line per fault test for the run's table: printed, and appended to `$CHAOS_REPORT` when set
//! (`scripts/chaos` prints that file as the table of the full run).

use std::io::Write;

#[derive(Debug, Default)]
pub struct Row {
    pub fault: String,
    pub jobs: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub overlaps: usize,
    pub recovery: String,
    pub notes: String,
    pub pass: bool,
}

pub const HEADER: &str = "| fault | jobs | lost | duplicates | overlaps | recovery | result | notes |\n|---|---:|---:|---:|---:|---|---|---|";

impl Row {
    pub fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            self.fault,
            self.jobs,
            self.lost,
            self.duplicates,
            self.overlaps,
            if self.recovery.is_empty() { "-" } else { &self.recovery },
            if self.pass { "pass" } else { "FAIL" },
            self.notes
        )
    }

    /// Prints the row and appends it to the run's report file.
    pub fn emit(&self) {
        let line = self.line();
        eprintln!("{HEADER}\n{line}");
        if let Ok(path) = std::env::var("CHAOS_REPORT") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("CHAOS_REPORT is writable");
            writeln!(f, "{line}").unwrap();
        }
    }
}

/// Seconds with one decimal, from µs.
pub fn secs(us: u128) -> String {
    format!("{:.1} s", us as f64 / 1e6)
}
