//! `nanoclass studio`: flags, then [`nanoclass_studio::serve`] on a tokio runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Args;

/// Flags of `nanoclass studio`.
#[derive(Args, Debug)]
pub struct StudioArgs {
    /// Data folder: one sub-folder per task, each with its ImageFolder dataset (`data/`) and
    /// its trained runs (`runs/<n>/`). Created when missing.
    #[arg(long, default_value = "studio-data")]
    data: PathBuf,
    /// Device camera shown and captured by the page: `v4l2:///dev/video0`,
    /// `file:///folder?fps=10` (images, looping) or a video file. Can also be chosen on the page.
    #[arg(long, value_name = "URI")]
    source: Option<String>,
    /// Address to listen on. Anything but a loopback address requires an access token; the
    /// studio then answers at any name or address the browser uses (the token guards it).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Access token required on every request (default: none on loopback, a random one
    /// otherwise, printed in the URL).
    #[arg(long)]
    token: Option<String>,
    /// Without a token the studio answers only at localhost and loopback addresses, so that
    /// other web sites cannot reach it by DNS rebinding: this allows one more name (or address,
    /// with an optional :port) that reaches it, such as a reverse proxy's or one in /etc/hosts.
    /// Repeatable.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_host: Vec<String>,
    /// Largest upload or frame accepted, in MiB (larger requests get 413).
    #[arg(long, default_value_t = 25)]
    max_upload_mb: usize,
    /// Weights of the instant preview's EfficientNet-Lite0 backbone (a registry name or a file).
    #[arg(long, default_value = "efficientnet_lite0")]
    instant_weights: String,
    /// Turn off the instant preview (live scores from a model refitted on every capture).
    #[arg(long)]
    no_instant: bool,
    /// Inference engine of the live view, the instant preview and frozen training's features:
    /// ort (ONNX Runtime), burn, or auto (ort when its library loads).
    #[arg(long, default_value_t = nanoclass::infer::engine::EngineChoice::from_env())]
    engine: nanoclass::infer::engine::EngineChoice,
}

/// Runs the studio until the process is stopped.
pub fn run(a: StudioArgs) -> Result<ExitCode> {
    if a.max_upload_mb == 0 {
        return Err(anyhow!("--max-upload-mb must be at least 1"));
    }
    // The studio's live views, instant preview and training read the engine from
    // $NANOCLASS_ENGINE (`EngineChoice::from_env`); the flag sets it for this process.
    // SAFETY: no other thread exists yet (the async runtime and rayon's pool start below), so
    // nothing reads the environment concurrently.
    unsafe { std::env::set_var(nanoclass::infer::engine::ENGINE_ENV, a.engine.name()) };
    let mut config = nanoclass_studio::StudioConfig::new(a.data);
    config.source = a.source;
    config.token = a.token;
    config.allowed_hosts = a.allowed_host;
    config.max_upload_bytes = a.max_upload_mb.saturating_mul(1024 * 1024);
    config.instant_weights = (!a.no_instant).then_some(a.instant_weights);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(nanoclass_studio::serve(nanoclass_studio::ServeOptions {
            host: a.host,
            port: a.port,
            config,
        }))
        .map_err(|e| anyhow!(e))?;
    Ok(ExitCode::SUCCESS)
}
