//! tracing subscriber setup: human output on a terminal, no timestamps or colour under journald
//! (`JOURNAL_STREAM`), optional JSON. `RUST_LOG` overrides `-v`/`-q`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

fn default_level(verbose: u8, quiet: u8) -> &'static str {
    match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    }
}

pub fn init(verbose: u8, quiet: u8, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level(verbose, quiet)));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Auto if journald => builder.without_time().with_ansi(false).with_target(false).try_init(),
        LogFormat::Auto | LogFormat::Human => {
            builder.with_ansi(std::io::stderr().is_terminal()).with_target(false).try_init()
        }
    };
    // A subscriber may already be installed (tests); that is fine.
    drop(result);
}

#[cfg(test)]
mod tests {
    use super::default_level;

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(default_level(0, 0), "info");
        assert_eq!(default_level(1, 0), "debug");
        assert_eq!(default_level(3, 0), "trace");
        assert_eq!(default_level(0, 1), "warn");
        assert_eq!(default_level(0, 2), "error");
    }
}
