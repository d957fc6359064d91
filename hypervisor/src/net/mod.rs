//! The network: the VMM side of the network queue pair (`dbos_abi::net`).
//!
//! With `dbos run --listen ADDR:PORT` the VMM binds listening sockets
//! ([`listen`]) and starts one poller thread ([`poller`]) that serves
//! every network queue pair the guest registers, in guest RAM, with the
//! NVMe queue pair's shape and doorbell protocol ([`queue`]): it accepts
//! clients into the connection table ([`conn`]), moves bytes between the
//! sockets and guest buffers with `recv`/`send` straight into and out of
//! guest memory ([`guest`], the only code that touches guest RAM through
//! pointers), and posts completions. The guest never names a host address
//! and cannot open a connection; every entry is validated and a bad one
//! completes with an error status.
//!
//! [`Network`] is the running service (created by the VM next to the
//! disk, stopped with it); [`NetService`] answers the network hypercalls
//! (`NetInfo`, `NetCreateQueue`, `NetDoorbell`, `NetDestroyQueue`,
//! `NetStats`); a VM without `--listen` answers them as a VM without a
//! network (no listeners, `-ENODEV`).

pub mod conn;
pub mod guest;
pub mod listen;
pub mod poller;
pub mod queue;
#[cfg(test)]
mod tests;

use crate::hypercall::{HypercallError, Outcome, Request};
use crate::memory::GuestRam;
use dbos_abi::net::{NetInfoArgs, NetQueueArgs, NetStatsArgs, QueueIdArgs, MAX_LISTENERS};
use dbos_abi::nvme::ConfigError;
use dbos_abi::QueuePairConfig;
use dbos_nvme::host::InterruptSender;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// The default of `--net-poll-spin`: as the disk's.
pub const DEFAULT_POLL_SPIN: Duration = Duration::from_micros(200);

/// How the network is set up (`dbos run --listen ... --net-poll-spin ...
/// --max-connections ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Addresses to listen on, in order (listener 0, 1, ...).
    pub listen: Vec<SocketAddr>,
    /// Allow addresses other than loopback ones (`--listen-any`).
    pub listen_any: bool,
    /// How long the poller keeps polling without progress before it parks.
    pub poll_spin: Duration,
    /// Most connections open at once (1..=65536); clients beyond it are
    /// accepted and closed at once.
    pub max_connections: u32,
}

impl NetConfig {
    /// Listening on `listen` with the defaults.
    pub fn new(listen: Vec<SocketAddr>) -> NetConfig {
        NetConfig {
            listen,
            listen_any: false,
            poll_spin: DEFAULT_POLL_SPIN,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no address to listen on")]
    NoListener,
    #[error("{0} addresses to listen on; at most {MAX_LISTENERS} are allowed")]
    TooManyListeners(usize),
    #[error(
        "--listen {0}: not a loopback address; give --listen-any to accept clients from \
         other hosts"
    )]
    NotLoopback(SocketAddr),
    #[error("--max-connections {0}: give 1 to {max}", max = conn::MAX_SLOTS)]
    MaxConnections(u32),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the network poller: {0}")]
    Io(#[from] std::io::Error),
}

/// A queue pair the network refused or could not find.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("invalid network queue pair: {0}")]
    Config(ConfigError),
    #[error("no network queue pair {0}")]
    NoSuchQueue(u64),
    #[error("the network poller has stopped")]
    Stopped,
}

impl QueueError {
    /// The errno the guest gets (`NetQueueArgs`, `QueueIdArgs` docs).
    pub fn errno(&self) -> i32 {
        match self {
            QueueError::Config(ConfigError::OutsideMemory { .. }) => libc::EFAULT,
            QueueError::Config(ConfigError::TooManyQueues(_)) => libc::ENOSPC,
            QueueError::Config(_) => libc::EINVAL,
            QueueError::NoSuchQueue(_) => libc::ENOENT,
            QueueError::Stopped => libc::EIO,
        }
    }
}

/// The network's counters (what `NetStats` reports, and how often the
/// poller parked).
#[derive(Default)]
pub struct Stats {
    pub commands: AtomicU64,
    pub completions: AtomicU64,
    pub wakeups: AtomicU64,
    pub doorbells: AtomicU64,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub invalid: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub interrupts: AtomicU64,
    /// Times the poller blocked (it is blocked when this is one more than
    /// `wakeups`).
    pub parks: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> NetStatsArgs {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStatsArgs {
            commands: r(&self.commands),
            completions: r(&self.completions),
            wakeups: r(&self.wakeups),
            doorbells: r(&self.doorbells),
            accepted: r(&self.accepted),
            refused: r(&self.refused),
            invalid: r(&self.invalid),
            bytes_received: r(&self.bytes_received),
            bytes_sent: r(&self.bytes_sent),
            interrupts: r(&self.interrupts),
        }
    }
}

/// A running network: the listeners and the poller thread.
pub struct Network {
    addrs: Vec<SocketAddr>,
    max_connections: u32,
    shared: Arc<poller::Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Network {
    /// Checks the configuration, binds the listeners and starts the
    /// poller over `ram`; `interrupts`: how completion interrupts are sent
    /// (`None`: queue pairs asking for them are refused).
    pub fn start(
        config: &NetConfig,
        ram: &Arc<GuestRam>,
        interrupts: Option<InterruptSender>,
    ) -> Result<Network, NetError> {
        listen::check_addrs(&config.listen, config.listen_any)?;
        if config.max_connections == 0 || config.max_connections as usize > conn::MAX_SLOTS {
            return Err(NetError::MaxConnections(config.max_connections));
        }
        let listeners = listen::Listeners::bind(&config.listen)?;
        let addrs = listeners.addrs().to_vec();
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), poller::WAKER)?;
        let shared = Arc::new(poller::Shared {
            stats: Stats::default(),
            control: Mutex::new(Some(Vec::new())),
            control_pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            rung: AtomicBool::new(false),
            waker,
        });
        let poller = poller::Poller::new(
            ram.clone(),
            poll,
            listeners.sockets,
            config.max_connections as usize,
            shared.clone(),
            config.poll_spin,
            interrupts,
        )?;
        let thread = std::thread::Builder::new()
            .name("net-poller".into())
            .spawn(move || poller.run())?;
        log::debug!("network started: listening on {addrs:?}");
        Ok(Network {
            addrs,
            max_connections: config.max_connections,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The bound listener addresses, in the order of `--listen`.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// What `NetInfo` reports.
    pub fn info(&self) -> NetInfoArgs {
        let mut info = NetInfoArgs {
            listeners: self.addrs.len() as u32,
            max_connections: self.max_connections,
            ports: [0; MAX_LISTENERS],
        };
        for (port, addr) in info.ports.iter_mut().zip(&self.addrs) {
            *port = addr.port();
        }
        info
    }

    fn request<T>(
        &self,
        msg: impl FnOnce(mpsc::Sender<T>) -> poller::Control,
    ) -> Result<T, QueueError> {
        let (tx, rx) = mpsc::channel();
        {
            let mut control = self
                .shared
                .control
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            control.as_mut().ok_or(QueueError::Stopped)?.push(msg(tx));
        }
        self.shared.control_pending.store(true, Ordering::SeqCst);
        self.wake();
        rx.recv().map_err(|_| QueueError::Stopped)
    }

    fn wake(&self) {
        if let Err(e) = self.shared.waker.wake() {
            log::error!("net: waking the poller failed: {e}");
        }
    }

    /// Registers a queue pair; returns its id.
    pub fn add_queue(&self, config: QueuePairConfig) -> Result<u16, QueueError> {
        self.request(|tx| poller::Control::Add(config, tx))?
            .map_err(QueueError::Config)
    }

    /// Gives a queue pair back: its connections are closed, and when this
    /// returns the poller no longer touches its memory.
    pub fn remove_queue(&self, id: u64) -> Result<(), QueueError> {
        self.request(|tx| poller::Control::Remove(id, tx))?
            .map_err(|()| QueueError::NoSuchQueue(id))
    }

    /// The real doorbell: wakes the poller if it is parked.
    pub fn ring(&self) {
        self.shared.stats.doorbells.fetch_add(1, Ordering::Relaxed);
        self.shared.rung.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStatsArgs {
        self.shared.stats.snapshot()
    }

    /// Times the poller blocked so far.
    pub fn parks(&self) -> u64 {
        self.shared.stats.parks.load(Ordering::Relaxed)
    }

    /// Stops the poller (closing every connection) and returns the
    /// counters; `None` if it was stopped already.
    pub fn stop(&self) -> Option<NetStatsArgs> {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        if thread.join().is_err() {
            log::error!("net: the poller thread panicked");
        }
        Some(self.stats())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The network's hypercalls. A VM without a network answers with no
/// listeners, `-ENODEV` and zero counters.
pub struct NetService<'a> {
    pub net: Option<&'a Network>,
}

impl NetService<'_> {
    /// [`Hypercall::NetInfo`](dbos_abi::Hypercall::NetInfo).
    pub fn info(&self, req: &Request<'_>, _: NetInfoArgs) -> Result<Outcome, HypercallError> {
        req.write_back(&self.net.map_or(NetInfoArgs::default(), Network::info))
    }

    /// [`Hypercall::NetCreateQueue`](dbos_abi::Hypercall::NetCreateQueue).
    pub fn create_queue(
        &self,
        req: &Request<'_>,
        mut args: NetQueueArgs,
    ) -> Result<Outcome, HypercallError> {
        args.status = match self.net {
            None => -i64::from(libc::ENODEV),
            Some(net) => match net.add_queue(args.queue) {
                Ok(id) => i64::from(id),
                Err(e) => {
                    log::warn!("vCPU {}: {e}", req.vcpu);
                    -i64::from(e.errno())
                }
            },
        };
        req.write_back(&args)
    }

    /// [`Hypercall::NetDestroyQueue`](dbos_abi::Hypercall::NetDestroyQueue).
    pub fn destroy_queue(
        &self,
        req: &Request<'_>,
        mut args: QueueIdArgs,
    ) -> Result<Outcome, HypercallError> {
        args.status = match self.net {
            None => -i64::from(libc::ENODEV),
            Some(net) => match net.remove_queue(args.queue) {
                Ok(()) => 0,
                Err(e) => {
                    log::debug!("vCPU {}: {e}", req.vcpu);
                    -i64::from(e.errno())
                }
            },
        };
        req.write_back(&args)
    }

    /// [`Hypercall::NetDoorbell`](dbos_abi::Hypercall::NetDoorbell): its
    /// block is empty and never read.
    pub fn doorbell(&self) -> Outcome {
        if let Some(net) = self.net {
            net.ring();
        }
        Outcome::Continue
    }

    /// [`Hypercall::NetStats`](dbos_abi::Hypercall::NetStats).
    pub fn stats(&self, req: &Request<'_>, _: NetStatsArgs) -> Result<Outcome, HypercallError> {
        req.write_back(&self.net.map_or(NetStatsArgs::default(), Network::stats))
    }
}
