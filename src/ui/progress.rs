//! What the user sees while a sync runs: a progress bar on stderr (only on a
//! terminal, never with `--quiet` or `--json`), server messages, and the
//! helper's lines in `-vv` mode.
//!
//! The bar counts pages as the stream parser sees them: pages carried of the
//! pages the origin announced, bytes on the wire, rate and ETA. A sync that
//! changes little ends far below the total, which is the point.

use super::printer::{Printer, human_bytes};
use crate::link::{Observer, Stats};

/// The progress display of one sync.
pub struct Progress {
    /// Output policy (quiet/json/verbose).
    printer: Printer,
    /// The bar, when stderr is a terminal.
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(printer: Printer) -> Progress {
        Progress {
            printer,
            bar: super::printer::page_bar(&printer),
        }
    }

    /// Removes the bar before the summary line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn progress(&self, stats: &Stats) {
        let Some(bar) = &self.bar else { return };
        let total = Stats::get(&stats.page_count);
        if total > 0 && bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(Stats::get(&stats.pages).min(total.max(1)));
        let wire = Stats::get(&stats.wire_out) + Stats::get(&stats.wire_in);
        bar.set_message(human_bytes(wire));
    }

    fn message(&self, text: &str) {
        let line = format!("server: {}", crate::wire::one_line(text));
        match &self.bar {
            Some(b) => b.suspend(|| self.printer.note(&line)),
            None => self.printer.note(&line),
        }
    }

    fn messages_not_shown(&self, n: u64) {
        let line = format!("server: {n} more messages not shown");
        match &self.bar {
            Some(b) => b.suspend(|| self.printer.note(&line)),
            None => self.printer.note(&line),
        }
    }

    fn helper_line(&self, line: &str) {
        let line = format!("sqlite3_rsync: {line}");
        match &self.bar {
            Some(b) => b.suspend(|| self.printer.stderr(&line)),
            None => self.printer.stderr(&line),
        }
    }
}
