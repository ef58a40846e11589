//! A socket on which the server must answer within a timeout: a read or
//! write that waits has to make progress within `EMAIL_TIMEOUT`,
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
    /// Since when the pending read or write has waited (None while they
    /// complete). The deadline runs from it, so time a connection spent
    /// idle in the pool never counts against its next command.
    waiting: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
}

impl Deadlined {
    pub fn new(inner: TcpStream, timeout: Duration) -> Self {
        Deadlined {
            inner,
            timeout,
            waiting: None,
            sleep: Box::pin(tokio::time::sleep(timeout)),
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
                self.waiting = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = *self.waiting.get_or_insert_with(Instant::now) + self.timeout;
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
