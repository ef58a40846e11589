//! A socket on which the server must answer within a timeout: every read
//! and write has to make progress within `EMAIL_TIMEOUT` of the last one,
//! as Python's smtplib bounds each socket operation. A server that stalls
//! mid-transaction then fails the attempt after the timeout, instead of
//! holding the send (and its connection) until the soft time limit.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub struct Deadlined {
    inner: TcpStream,
    timeout: Duration,
    /// When a read or write last completed. The deadline is measured from
    /// it, so a connection idle in the pool starts afresh with its next
    /// command (always a write).
    progress: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Deadlined {
    pub fn new(inner: TcpStream, timeout: Duration) -> Self {
        let now = Instant::now();
        Deadlined {
            inner,
            timeout,
            progress: now,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }

    /// An operation's result, the deadline checked while it waits.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.progress = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = self.progress + self.timeout;
                if self.sleep.deadline() != deadline {
                    self.sleep.as_mut().reset(deadline);
                }
                match self.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from the SMTP server within {:?}", self.timeout),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for Deadlined {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.watch(cx, polled)
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

impl AsyncTokioStream for Deadlined {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}
