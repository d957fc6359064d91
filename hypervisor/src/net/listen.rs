//! The listeners: which addresses `dbos run --listen` may name (loopback
//! only unless `--listen-any`), and the listening sockets the VMM binds
//! and owns (non-blocking; a port of 0 is chosen by the kernel, and
//! [`Listeners::addrs`] says which).

use super::NetError;
use dbos_abi::net::MAX_LISTENERS;
use std::net::{SocketAddr, TcpListener};

/// Checks the addresses to listen on: at least one, at most
/// [`MAX_LISTENERS`], and each a loopback address unless `any` (the
/// `--listen-any` flag) allows others.
pub fn check_addrs(addrs: &[SocketAddr], any: bool) -> Result<(), NetError> {
    if addrs.is_empty() {
        return Err(NetError::NoListener);
    }
    if addrs.len() > MAX_LISTENERS {
        return Err(NetError::TooManyListeners(addrs.len()));
    }
    if !any {
        if let Some(addr) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(NetError::NotLoopback(*addr));
        }
    }
    Ok(())
}

/// The bound listening sockets, in the order of `--listen`.
pub struct Listeners {
    pub sockets: Vec<mio::net::TcpListener>,
    addrs: Vec<SocketAddr>,
}

impl Listeners {
    /// Binds every address (non-blocking sockets).
    pub fn bind(addrs: &[SocketAddr]) -> Result<Listeners, NetError> {
        let mut sockets = Vec::new();
        let mut bound = Vec::new();
        for &addr in addrs {
            let err = |source| NetError::Bind { addr, source };
            let listener = TcpListener::bind(addr).map_err(err)?;
            listener.set_nonblocking(true).map_err(err)?;
            bound.push(listener.local_addr().map_err(err)?);
            sockets.push(mio::net::TcpListener::from_std(listener));
        }
        Ok(Listeners {
            sockets,
            addrs: bound,
        })
    }

    /// The bound addresses (with the ports the kernel chose for port 0).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// The line `dbos run` prints on stderr for each listener, which scripts
/// and tests parse: `dbos: listening on 127.0.0.1:45678 (listener 0)`.
pub fn listening_line(addr: SocketAddr, index: usize) -> String {
    format!("dbos: listening on {addr} (listener {index})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_unless_any() {
        assert!(check_addrs(&[a("127.0.0.1:0"), a("[::1]:80")], false).is_ok());
        let e = check_addrs(&[a("127.0.0.1:0"), a("0.0.0.0:6379")], false).unwrap_err();
        assert!(matches!(e, NetError::NotLoopback(x) if x == a("0.0.0.0:6379")));
        assert!(e.to_string().contains("0.0.0.0:6379"), "{e}");
        assert!(e.to_string().contains("--listen-any"), "{e}");
        assert!(check_addrs(&[a("0.0.0.0:6379")], true).is_ok());
        let many = vec![a("127.0.0.1:0"); MAX_LISTENERS + 1];
        assert!(matches!(
            check_addrs(&many, false),
            Err(NetError::TooManyListeners(9))
        ));
        assert!(matches!(check_addrs(&[], false), Err(NetError::NoListener)));
    }

    #[test]
    fn port_zero_is_bound_and_reported() {
        let l = Listeners::bind(&[a("127.0.0.1:0"), a("127.0.0.1:0")]).unwrap();
        assert_eq!(l.addrs().len(), 2);
        for addr in l.addrs() {
            assert_ne!(addr.port(), 0);
            assert!(std::net::TcpStream::connect(addr).is_ok());
        }
        assert_eq!(
            listening_line(a("127.0.0.1:45678"), 0),
            "dbos: listening on 127.0.0.1:45678 (listener 0)"
        );
    }
}
