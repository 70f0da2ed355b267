//! Lines a command prints while it changes things. A closed stdout (`| head`) must never
//! stop a command between two changes, so every such line goes through here, never through
//! `println!`, which panics (exit 101) on a closed stdout.

/// Where a command's lines of progress go: stdout (the human lines of a run without `-o`),
/// or stderr (when stdout carries the one document `-o` asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    Stdout,
    Stderr,
}

impl Progress {
    /// Stderr when `-o` was given (`MutateArgs::output_asked`), else stdout.
    pub(crate) fn for_output(asked: Option<crate::kube::Output>) -> Progress {
        if asked.is_some() {
            Progress::Stderr
        } else {
            Progress::Stdout
        }
    }

    /// One line; a write that fails is ignored (see [`say`]).
    pub(crate) fn say(self, line: std::fmt::Arguments) {
        match self {
            Progress::Stdout => say(line),
            Progress::Stderr => tell(line),
        }
    }
}

/// A line on stdout after (or between) changes: a stdout that closed (`| head`) is ignored
/// (EPIPE: Rust ignores SIGPIPE), so that `certs renew --apply` never stops between writing
/// the bundle and applying it, a `join` never stops between clusters, and a command that did
/// its work exits 0. Every command that prints while it changes things prints through here
/// (or [`tell`]), never with `println!`, which panics (exit 101) on a closed stdout.
pub(crate) fn say(line: std::fmt::Arguments) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// [`say`] on stderr (progress and warnings), a failed write ignored the same way.
pub(crate) fn tell(line: std::fmt::Arguments) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
