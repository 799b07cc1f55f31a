//! A blocking client of the control socket, for the CLI and tests.

use crate::protocol::{Reply, Request};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to leaseholdd at {path}: {error} (is the daemon running? is --socket right? are you root or in the socket's group?)")]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("talking to leaseholdd at {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("leaseholdd at {path} closed the connection without answering")]
    Closed { path: PathBuf },
    #[error("leaseholdd at {path} sent a reply that is not valid JSON: {reason}")]
    BadReply { path: PathBuf, reason: String },
}

/// One connection; requests are answered in order.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connect; every later call fails if the daemon does not answer within
    /// `timeout` (None waits for ever).
    pub fn connect(path: &Path, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|error| ClientError::Connect {
            path: path.to_path_buf(),
            error,
        })?;
        let io = |error| ClientError::Io {
            path: path.to_path_buf(),
            error,
        };
        stream.set_read_timeout(timeout).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Send one request and wait for its reply.
    pub fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let line = serde_json::to_string(request).map_err(|e| ClientError::BadReply {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        self.call_raw(&line)
    }

    /// Send one raw line (tests use this for malformed input).
    pub fn call_raw(&mut self, line: &str) -> Result<Reply, ClientError> {
        let io = |error| ClientError::Io {
            path: self.path.clone(),
            error,
        };
        let written = self
            .writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"));
        if let Err(e) = written {
            // The daemon may have answered and closed before reading (a
            // refused peer): its answer is still there to read.
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(io(e));
            }
        }
        let mut answer = String::new();
        let read = self
            .reader
            .read_line(&mut answer)
            .map_err(|error| ClientError::Io {
                path: self.path.clone(),
                error,
            })?;
        if read == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(&answer).map_err(|e| ClientError::BadReply {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }
}
