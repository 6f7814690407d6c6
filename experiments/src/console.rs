//! The command line's only way to the terminal. `println!` and `eprintln!` panic when a write
//! fails (`ditmoe sample … | true`, `> /dev/full`); these never do:
//!
//! - stdout: a closed pipe ends the output quietly; any other failure (a full disk) is one
//!   error the command returns, so `ditmoe` exits 1 saying so.
//! - stderr: progress and notes must never stop a run, and a failure there cannot be reported
//!   there, so a closed pipe is ignored and any other failure is remembered: the process then
//!   exits 1 at the end ([`stderr_failed`]).
//!
//! [`keep_standard_streams_open`] makes sure a closed descriptor (`2>&-`) is not reused by the
//! next file the run opens, which would send progress lines into a metrics log.

use std::io::{ErrorKind, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

static STDERR_FAILED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stdout. A closed pipe (`ditmoe zoo | head`) ends the output quietly.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// Writes `line` and a newline to stdout, as [`print`].
pub fn println(line: &str) -> anyhow::Result<()> {
    print(&format!("{line}\n"))
}

/// Writes `line` and a newline to stderr; never fails (see the module docs).
pub fn eprintln(line: &str) {
    eprint(&format!("{line}\n"));
}

/// Writes `text` to stderr; never fails (see the module docs).
pub fn eprint(text: &str) {
    let mut stderr = std::io::stderr().lock();
    if let Err(e) = stderr.write_all(text.as_bytes()) {
        if e.kind() != ErrorKind::BrokenPipe {
            STDERR_FAILED.store(true, Ordering::Relaxed);
        }
    }
}

/// Parses the command line, printing clap's help, version or usage error through [`print`]
/// and [`eprint`]: on failure, the exit code to return — clap's own (0 after help or
/// version, 2 for a usage error), or 1 when that text could not be written (`> /dev/full`).
pub fn parse_args<P: clap::Parser>() -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| {
        let text = e.render().to_string();
        let written = if e.use_stderr() {
            eprint(&text);
            !stderr_failed()
        } else {
            print(&text).is_ok()
        };
        if written {
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        } else {
            ExitCode::FAILURE
        }
    })
}

/// Whether a write to stderr failed other than by a closed pipe.
pub fn stderr_failed() -> bool {
    STDERR_FAILED.load(Ordering::Relaxed)
}

/// Opens `/dev/null` on each of stdin, stdout and stderr that is closed, so that the
/// descriptors 0–2 keep meaning what every library assumes. Call it first thing in `main`.
pub fn keep_standard_streams_open() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only queries a descriptor; open returns the lowest free descriptor,
        // which is `fd` when it is the one closed (lower ones were handled before it).
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
}
