//! The `wspush` daemon binary. See `wspush --help`.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = wspush::daemon::Args::parse();
    if let Err(e) = wspush::daemon::run(args) {
        log::error!("{e}");
        std::process::exit(1);
    }
}
