//! The output policy of one command, and the only place that writes lines
//! to stdout and stderr.
//!
//! stdout carries results (the `--dry` report, `--json` objects, the version
//! line); stderr carries everything said to a person (notes, verbose lines,
//! errors). One place decides whether a progress bar is drawn (only on a
//! terminal, never with `--quiet` or `--json`), so the modes do not each
//! guess.
//!
//! Every line is written [`visible`]: much of what sqlrsync prints comes
//! from a server (MESSAGE, ABORT reasons, HTTP bodies, close reasons,
//! replica paths and version ids) or from files and arguments, and none
//! of it may reach the terminal as escape sequences. The texts are made
//! visible where they are taken in as well (so `--json` carries the same
//! form); this is the net under every other path.

use std::io::IsTerminal;

use crate::wire::visible;

/// Output policy of one command. `Printer::default()` is the policy before
/// the flags are known: everything shown, nothing verbose.
#[derive(Debug, Clone, Copy, Default)]
pub struct Printer {
    /// No progress and no summary.
    pub quiet: bool,
    /// Results go to stdout as one JSON object; humans' lines go nowhere.
    pub json: bool,
    /// `-v` count.
    pub verbose: u8,
}

impl Printer {
    /// True when a progress bar may be drawn on stderr.
    pub fn progress(&self) -> bool {
        !self.quiet && !self.json && std::io::stderr().is_terminal()
    }

    /// A result line on stdout, whatever the policy (the caller asked for
    /// it: `--dry`, `--version`).
    pub fn stdout(&self, line: &str) {
        println!("{}", visible(line));
    }

    /// The one JSON object of `--json`, on stdout.
    pub fn json(&self, value: &serde_json::Value) {
        println!("{value}");
    }

    /// A line on stderr, whatever the policy: errors, and the helper's own
    /// lines when `-vv` asked for them live.
    pub fn stderr(&self, line: &str) {
        eprintln!("{}", visible(line));
    }

    /// Prints a human line on stderr unless quiet or JSON.
    pub fn note(&self, line: &str) {
        if !self.quiet && !self.json {
            eprintln!("{}", visible(line));
        }
    }

    /// Prints a line only with `-v`.
    pub fn verbose(&self, line: &str) {
        if self.verbose > 0 && !self.json {
            eprintln!("{}", visible(line));
        }
    }
}

/// A progress bar of pages on stderr, or None when [`Printer::progress`]
/// says no bar may be drawn. Shows pages done of total, the bytes on the
/// wire (the message), the rate and the ETA.
pub fn page_bar(printer: &Printer) -> Option<indicatif::ProgressBar> {
    if !printer.progress() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(0),
        indicatif::ProgressDrawTarget::stderr_with_hz(8),
    );
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{bar:30}] {pos}/{len} pages, {msg} on the wire, {per_sec}, ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    Some(bar)
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes() {
        assert_eq!(super::human_bytes(10), "10 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(100 * 1024 * 1024), "100.0 MiB");
    }
}
