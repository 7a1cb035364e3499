//! Command-line conventions shared by the binaries: one clear line, exit status 2; logs
//! on stderr as text or JSON.

/// Parses `P` from the process arguments. Help and version print as usual; any other
/// error prints one line naming the problem and exits with status 2.
pub fn parse_or_exit<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(p) => p,
        Err(e) => exit_usage(&e),
    }
}

/// Prints `err` as one line and exits 2 (or prints help / version and exits 0).
pub fn exit_usage(err: &clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    eprintln!("{}", one_line(&err.render().to_string()));
    std::process::exit(2);
}

/// Prints a validation problem as one `error:` line and exits 2.
pub fn exit_invalid(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2);
}

/// Joins the first paragraph of clap's message into one line (clap lists missing
/// arguments on separate lines; a person should see them all in one).
pub fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_the_first_paragraph() {
        let s = "error: the following required arguments were not provided:\n  --etcd <URL>\n  --id <ID>\n\nUsage: x\n";
        assert_eq!(
            super::one_line(s),
            "error: the following required arguments were not provided: --etcd <URL> --id <ID>"
        );
    }
}

/// How a binary writes its logs (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people: `time level span{fields}: message fields`, coloured on a
    /// terminal.
    #[default]
    Text,
    /// One JSON object per line for log pipelines: `timestamp`, `level`, `target`,
    /// the event's fields (`message` among them) at the top, and `span` / `spans` with
    /// the fields of the spans it happened in.
    Json,
}

/// Sets up logging on stderr in `format`; the filter is `RUST_LOG`, else `default`
/// (`info`, `warn`, ...).
pub fn init_logging(format: LogFormat, default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
