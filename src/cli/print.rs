//! How the command line shows what the library reports while it works: notes and warnings on
//! stderr, a progress line redrawn at most ten times a second, summaries on stdout.

use std::io::Write;

use groklens::api::{Event, Throttle};

/// Prints events: everything, or with `quiet` only notes, warnings and summaries.
pub struct Printer {
    quiet: bool,
    throttle: Throttle,
    /// A progress line is on screen without its newline.
    drawing: bool,
}

impl Printer {
    /// A printer; `quiet` leaves out the progress line and the estimate.
    pub fn new(quiet: bool) -> Self {
        Printer {
            quiet,
            throttle: Throttle::default(),
            drawing: false,
        }
    }

    /// Ends the progress line, if one is drawn (before a summary, an error or a stop).
    pub fn end_line(&mut self) {
        if std::mem::take(&mut self.drawing) {
            eprintln!();
        }
    }

    /// Shows one event.
    pub fn on(&mut self, event: Event) {
        match event {
            Event::Note(n) => {
                self.end_line();
                eprintln!("{n}")
            }
            Event::Estimate(e) if !self.quiet => println!("{e}"),
            Event::Estimate(_) => {}
            Event::Eval {
                row,
                total,
                unit,
                rate,
            } => {
                if self.quiet || !self.throttle.due(row.epoch, total) {
                    return;
                }
                self.drawing = true;
                eprint!(
                    "\r{unit} {:>6}/{total} | train loss {:9.3e} acc {:6.2}% | test loss {:9.3e} acc {:6.2}% | {:7.1} {unit}s/s ",
                    row.epoch,
                    row.train_loss,
                    100.0 * row.train_acc,
                    row.test_loss,
                    100.0 * row.test_acc,
                    rate
                );
                let _ = std::io::stderr().flush();
            }
            Event::Trained(t) => {
                self.end_line();
                println!("{}", t.text());
                for w in &t.warnings {
                    eprintln!("warning: {w}");
                }
            }
            Event::Report(r) => println!("{}", r.text()),
        }
    }
}
