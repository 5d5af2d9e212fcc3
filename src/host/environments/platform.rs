//! [`HostPlatform`]: what a connector operation gets as its platform —
//! one environment's commands, the host's logger, and a progress display.

use std::sync::{Arc, Mutex};

use abi_stable::std_types::{RResult, RStr, RString};

use super::Environment;
use crate::abi::{level, CommandRequest, Platform};

/// The platform a connector operation runs with: one environment's commands,
/// the host's logger, and a progress display.
#[derive(Clone)]
pub struct HostPlatform {
    environment: Arc<Environment>,
    progress: Arc<Mutex<Option<indicatif::ProgressBar>>>,
}

impl HostPlatform {
    pub fn new(environment: &Environment) -> Self {
        Self {
            environment: Arc::new(environment.clone()),
            progress: Arc::new(Mutex::new(None)),
        }
    }
}

impl Drop for HostPlatform {
    fn drop(&mut self) {
        if Arc::strong_count(&self.progress) == 1 {
            if let Ok(mut bar) = self.progress.lock() {
                if let Some(bar) = bar.take() {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

impl Platform for HostPlatform {
    fn run(&self, request: RStr<'_>) -> RResult<RString, RString> {
        let result = serde_json::from_str::<CommandRequest>(request.as_str())
            .map_err(|e| format!("bad command request: {e}"))
            .and_then(|req| self.environment.run(&req).map_err(|e| e.to_string()))
            .and_then(|out| serde_json::to_string(&out).map_err(|e| e.to_string()));
        match result {
            Ok(text) => RResult::ROk(text.into()),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>) {
        let target = format!("connector::{}", target.as_str());
        log::logger().log(
            &log::Record::builder()
                .level(level::to_log(level))
                .target(&target)
                .args(format_args!("{}", message.as_str()))
                .build(),
        );
    }

    fn progress(&self, done: u64, total: u64, unit: RStr<'_>) {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            log::debug!("progress: {done}/{total} {}", unit.as_str());
            return;
        }
        let Ok(mut guard) = self.progress.lock() else {
            return;
        };
        let bar = guard.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(total);
            let template = if unit.as_str() == "bytes" {
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            } else {
                "{bar:40} {pos}/{len} {msg}"
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        bar.set_length(total);
        bar.set_position(done);
        if done >= total && total > 0 {
            bar.finish_and_clear();
            *guard = None;
        }
    }
}
