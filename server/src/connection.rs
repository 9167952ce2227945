//! The server's TCP connections: `TCP_NODELAY`, and on Linux an ACK for every segment read.
//!
//! A call whose request arrives in several small segments (a client-streaming Append:
//! headers, then its options, then each event) from a client that leaves Nagle's algorithm
//! on (the `kurrentdb` crate's connector does) stalls: the client holds each segment until
//! the last one is acknowledged, and Linux delays that acknowledgement by up to 40 ms when it
//! has nothing to send back. One event appended at a time then runs at 25 appends a second.
//! Asking for a quick ACK after each read (`TCP_QUICKACK`, which Linux clears again by
//! itself, hence after each read) takes the stall away; it costs one `setsockopt` per read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection.
pub struct Connection(TcpStream);

impl Connection {
    /// Sets the socket options of an accepted stream.
    pub fn accept(stream: TcpStream) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        let connection = Connection(stream);
        connection.quick_ack();
        Ok(connection)
    }

    #[cfg(target_os = "linux")]
    fn quick_ack(&self) {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt(2) on this connection's open socket, with a pointer to a live
        // c_int and its size. A failure only leaves delayed ACKs on, so it is ignored.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                std::ptr::from_ref(&on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn quick_ack(&self) {}
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.0).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.quick_ack();
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}
