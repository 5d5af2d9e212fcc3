//! How the demo shows its steps: each as it starts (a spinner on a
//! terminal), then with the time it took; notes indented beneath.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// The steps shown so far.
pub struct Steps {
    n: usize,
    tty: bool,
    current: Option<(String, Instant, Option<indicatif::ProgressBar>)>,
}

impl Steps {
    pub fn new() -> Self {
        Self {
            n: 0,
            tty: std::io::stdout().is_terminal(),
            current: None,
        }
    }

    /// A step begins.
    pub fn start(&mut self, what: &str) {
        self.n += 1;
        let line = format!("{:>2}. {what}", self.n);
        let bar = if self.tty {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar.set_message(line.clone());
            bar.enable_steady_tick(Duration::from_millis(100));
            Some(bar)
        } else {
            print!("{line:<90}");
            let _ = std::io::stdout().flush();
            None
        };
        self.current = Some((line, Instant::now(), bar));
    }

    /// The step begun last is done.
    pub fn done(&mut self) {
        if let Some((line, started, bar)) = self.current.take() {
            let took = started.elapsed().as_secs_f64();
            match bar {
                Some(bar) => {
                    bar.finish_and_clear();
                    println!("{line:<90} {took:>7.2}s");
                }
                None => println!(" {took:>7.2}s"),
            }
        }
    }

    /// The step begun last failed: its line ends, without a time.
    pub fn failed(&mut self) {
        if let Some((line, _, bar)) = self.current.take() {
            match bar {
                Some(bar) => {
                    bar.finish_and_clear();
                    println!("{line:<90}  failed");
                }
                None => println!("  failed"),
            }
        }
    }

    /// A line beneath the steps.
    pub fn note(&mut self, text: &str) {
        println!("    {text}");
    }
}
