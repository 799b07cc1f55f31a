//! Standard output that ends quietly when its reader goes away: `leasehold
//! dump DEVICE | head` stops at the closed pipe with status 0, as ripgrep
//! does, instead of panicking in `println!`.

use std::io::Write;

/// Write one line to standard output. A closed pipe ends the process with
/// status 0 (the reader has all it wanted); any other write error ends it
/// with status 1 and one message.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"));
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("leasehold: error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that ends quietly on a closed pipe (see [`line`]).
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
