//! `funkrec serve` (also `funkrec` with no subcommand): the HTTP service until a signal.

use super::runtime;
use crate::config::Settings;
use crate::fdlimit;
use crate::malloc;
use crate::startup::Application;
use crate::telemetry;
use std::path::PathBuf;

/// `funkrec serve [--config FILE]` (also: `funkrec` with no subcommand).
pub fn run(config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(config_file.as_deref())?;
    telemetry::init(&settings.log.level, settings.log.json);
    malloc::tune();
    fdlimit::raise_and_log();
    runtime()?.block_on(async {
        let app = Application::build(settings).await?;
        app.run_until_stopped().await
    })
}
