//! The `main` every berth service binary (and berthd) shares: load the configuration, set up
//! logs and traces, serve until signalled, flush traces, and turn any failure into one line on
//! stderr and a non-zero exit status.

use std::process::ExitCode;

use crate::config::{Config, ConfigArgs};
use crate::server::{self, Hosted};
use crate::telemetry;

/// Runs the services that `hosted` builds from the configuration, as process `process`.
pub fn main(
    process: &str,
    args: &ConfigArgs,
    hosted: impl FnOnce(&Config) -> anyhow::Result<Vec<Hosted>>,
) -> ExitCode {
    match run(process, args, hosted) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{process}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    process: &str,
    args: &ConfigArgs,
    hosted: impl FnOnce(&Config) -> anyhow::Result<Vec<Hosted>>,
) -> anyhow::Result<()> {
    let config = Config::load(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let telemetry = {
        let _guard = runtime.enter();
        telemetry::init(process, &config.log, config.otlp.endpoint.as_deref())?
    };
    let result = runtime.block_on(async {
        let hosted = hosted(&config)?;
        server::serve(&config, hosted).await?;
        anyhow::Ok(())
    });
    drop(runtime);
    telemetry.shutdown();
    result
}
