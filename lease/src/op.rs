//! Operations as step machines.
//!
//! Each protocol operation (join, renew, acquire, ...) is written as an
//! `async fn` over a [`Port`], and wrapped in an [`Operation`]. No runtime is
//! involved: `Operation::step` polls the future once with a no-op waker; the
//! future stops at its next I/O or wait, which `step` returns to the caller
//! as a [`Step`]. The caller performs the I/O (or lets time pass) and calls
//! `step` again with the outcome and the current time. [`run`] is the
//! blocking driver for a real [`Disk`] and [`Clock`]; the simulator drives
//! many operations at once, interleaving them at every I/O.

use crate::clock::Clock;
use crate::disk::{Disk, DiskError};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// An I/O the operation needs done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    Read {
        offset_bytes: u64,
        length_bytes: u64,
    },
    Write {
        offset_bytes: u64,
        data: Vec<u8>,
    },
}

/// What an operation wants next.
#[derive(Debug)]
pub enum Step<T> {
    Io(Io),
    /// Call `step` again once the clock reads at least this.
    WaitUntil(u64),
    Done(T),
}

/// The outcome of the last [`Io`]: the bytes read, or nothing for a write.
pub type IoOutcome = Result<Option<Vec<u8>>, DiskError>;

enum Request {
    Io(Io),
    Wait(u64),
}

#[derive(Default)]
struct Exchange {
    now_ms: u64,
    request: Option<Request>,
    outcome: Option<IoOutcome>,
}

/// The operation's side of the exchange with its driver.
#[derive(Clone, Default)]
pub(crate) struct Port(Arc<Mutex<Exchange>>);

impl Port {
    fn lock(&self) -> MutexGuard<'_, Exchange> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The time the driver passed to the current step.
    pub(crate) fn now_ms(&self) -> u64 {
        self.lock().now_ms
    }

    pub(crate) async fn read(
        &self,
        offset_bytes: u64,
        length_bytes: u64,
    ) -> Result<Vec<u8>, DiskError> {
        let outcome = Suspend::new(
            self,
            Request::Io(Io::Read {
                offset_bytes,
                length_bytes,
            }),
        )
        .await;
        match outcome {
            Some(Ok(Some(bytes))) => {
                assert_eq!(
                    bytes.len() as u64,
                    length_bytes,
                    "driver returned a short read"
                );
                Ok(bytes)
            }
            Some(Err(e)) => Err(e),
            other => panic!(
                "driver answered a read with {:?}",
                other.map(|o| o.map(|b| b.map(|v| v.len())))
            ),
        }
    }

    pub(crate) async fn write(&self, offset_bytes: u64, data: Vec<u8>) -> Result<(), DiskError> {
        let outcome = Suspend::new(self, Request::Io(Io::Write { offset_bytes, data })).await;
        match outcome {
            Some(Ok(None)) => Ok(()),
            Some(Err(e)) => Err(e),
            other => panic!(
                "driver answered a write with {:?}",
                other.map(|o| o.map(|b| b.map(|v| v.len())))
            ),
        }
    }

    pub(crate) async fn sleep_until(&self, deadline_ms: u64) {
        if deadline_ms > self.now_ms() {
            Suspend::new(self, Request::Wait(deadline_ms)).await;
        }
    }
}

/// A future that hands one request to the driver and completes on the next
/// poll with the driver's answer.
struct Suspend {
    port: Port,
    request: Option<Request>,
}

impl Suspend {
    fn new(port: &Port, request: Request) -> Suspend {
        Suspend {
            port: port.clone(),
            request: Some(request),
        }
    }
}

impl Future for Suspend {
    type Output = Option<IoOutcome>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut exchange = this.port.lock();
        match this.request.take() {
            Some(request) => {
                exchange.request = Some(request);
                Poll::Pending
            }
            None => Poll::Ready(exchange.outcome.take()),
        }
    }
}

enum Awaiting {
    Start,
    Io,
    Wait(u64),
    Finished,
}

/// A protocol operation in progress; see the module docs.
pub struct Operation<T> {
    future: Pin<Box<dyn Future<Output = T> + Send>>,
    port: Port,
    awaiting: Awaiting,
}

impl<T> Operation<T> {
    pub(crate) fn new<F, Fut>(body: F) -> Operation<T>
    where
        F: FnOnce(Port) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let port = Port::default();
        Operation {
            future: Box::pin(body(port.clone())),
            port,
            awaiting: Awaiting::Start,
        }
    }

    /// Advance the operation. `outcome` must be the result of the `Io` the
    /// previous step returned, and `None` otherwise. A step before a
    /// `WaitUntil` deadline returns the same deadline and does nothing else.
    pub fn step(&mut self, now_ms: u64, outcome: Option<IoOutcome>) -> Step<T> {
        match self.awaiting {
            Awaiting::Finished => panic!("step after the operation finished"),
            Awaiting::Wait(deadline_ms) if now_ms < deadline_ms => {
                assert!(
                    outcome.is_none(),
                    "an I/O outcome passed to a waiting operation"
                );
                return Step::WaitUntil(deadline_ms);
            }
            Awaiting::Io => assert!(
                outcome.is_some(),
                "the outcome of the requested I/O is missing"
            ),
            Awaiting::Start | Awaiting::Wait(_) => {
                assert!(
                    outcome.is_none(),
                    "an I/O outcome passed to an operation that asked for none"
                )
            }
        }
        {
            let mut exchange = self.port.lock();
            exchange.now_ms = now_ms;
            exchange.outcome = outcome;
            exchange.request = None;
        }
        let mut context = Context::from_waker(Waker::noop());
        match self.future.as_mut().poll(&mut context) {
            Poll::Ready(value) => {
                self.awaiting = Awaiting::Finished;
                Step::Done(value)
            }
            Poll::Pending => match self.port.lock().request.take() {
                Some(Request::Io(io)) => {
                    self.awaiting = Awaiting::Io;
                    Step::Io(io)
                }
                Some(Request::Wait(deadline_ms)) => {
                    self.awaiting = Awaiting::Wait(deadline_ms);
                    Step::WaitUntil(deadline_ms)
                }
                None => panic!("operation suspended without asking for I/O or time"),
            },
        }
    }
}

/// Perform one I/O on a disk.
pub fn perform(disk: &dyn Disk, io: Io) -> IoOutcome {
    match io {
        Io::Read {
            offset_bytes,
            length_bytes,
        } => {
            let length = usize::try_from(length_bytes).map_err(|_| DiskError::OutOfRange {
                device: disk.name().to_string(),
                offset_bytes,
                length_bytes,
                size_bytes: disk.size_bytes(),
            })?;
            let mut buffer = vec![0; length];
            disk.read(offset_bytes, &mut buffer)?;
            Ok(Some(buffer))
        }
        Io::Write { offset_bytes, data } => {
            disk.write(offset_bytes, &data)?;
            Ok(None)
        }
    }
}

/// Run an operation to completion against a real disk and clock.
pub fn run<T>(mut operation: Operation<T>, disk: &dyn Disk, clock: &dyn Clock) -> T {
    let mut outcome = None;
    loop {
        match operation.step(clock.now_ms(), outcome.take()) {
            Step::Done(value) => return value,
            Step::WaitUntil(deadline_ms) => clock.sleep_until_ms(deadline_ms),
            Step::Io(io) => outcome = Some(perform(disk, io)),
        }
    }
}
