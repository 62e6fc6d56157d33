//! Free loopback ports for instances.

use std::io;
use std::net::{Ipv4Addr, TcpListener};

/// A port the kernel considers free right now (bind to port 0, read it, let go).
/// Another process may take it before the instance binds it; the instance then fails
/// to start and is restarted on a new port.
pub(crate) fn pick() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Nothing listens on `port` (so a restarted instance can have its old port back).
pub(crate) fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}
