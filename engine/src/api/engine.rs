//! The running engine: starting the shards, declaring peers, stats and shutdown.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_utils::CachePadded;

use crate::api::builder::EngineBuilder;
use crate::config::{Config, PeerConfig};
use crate::error::Error;
use crate::metrics::{PeerStats, SharedCounters, Stats};
use crate::outbox::store::RecoveryReport;
use crate::proto::id::MessageId;
use crate::route::confirm::Confirm;
use crate::route::handler::Handler;
use crate::route::peer::Peer;
use crate::route::router::{Router, ShardFailure};
use crate::route::{Command, Mailbox, Registry};
use crate::security::tls::TlsContext;
use crate::{outbox, proto, route, shard, sys};

/// A running node: its shards, listener and peers. Dropping it stops the shards at once;
/// [`Engine::shutdown_graceful`] drains first.
pub struct Engine {
    router: Arc<Router>,
    /// One per shard, published by the shard every turn.
    counters: Vec<Arc<CachePadded<SharedCounters>>>,
    recovery: RecoveryReport,
    threads: Vec<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
    /// Held while the engine runs, so only one engine at a time uses an outbox directory.
    /// Released when the shards have stopped, even if `Peer` handles outlive the engine (they
    /// refuse to publish once it stops).
    outbox_lock: Option<std::fs::File>,
}

impl Engine {
    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// Starts an engine from a full [`Config`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`], [`Error::Unsupported`] if the kernel lacks io_uring features,
    /// or [`Error::Io`] if the listener cannot bind.
    pub fn start(config: Config, handler: impl Handler) -> Result<Engine, Error> {
        Engine::start_shared(config, Arc::new(handler))
    }

    pub(crate) fn start_shared(config: Config, handler: Arc<dyn Handler>) -> Result<Engine, Error> {
        config.validate()?;
        // Certificates and keys are read before anything binds or opens: a bad file is a
        // configuration error that names it.
        let tls = match &config.tls {
            Some(tls) => Some(Arc::new(
                TlsContext::load(tls).map_err(Error::InvalidConfig)?,
            )),
            None => None,
        };
        let config = Arc::new(config);
        let mailboxes = (0..config.shards)
            .map(|_| Mailbox::new().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::io("creating shard eventfd", e))?;
        let (listeners, local_addr) = match config.listen {
            Some(addr) => {
                let (fds, bound) = sys::socket::bind_reuseport(addr, config.shards)
                    .map_err(|e| Error::io(format!("binding listener on {addr}"), e))?;
                (fds.into_iter().map(Some).collect(), Some(bound))
            }
            None => ((0..config.shards).map(|_| None).collect::<Vec<_>>(), None),
        };
        let opened = match &config.outbox_dir {
            Some(dir) => Some(outbox::directory::open(dir, &config)?),
            None => None,
        };
        let (outbox_lock, mut stores, recovery) = match opened {
            Some(o) => (Some(o.lock), o.shards, o.report),
            None => (None, Vec::new(), RecoveryReport::default()),
        };
        let counters: Vec<_> = (0..config.shards)
            .map(|_| Arc::new(CachePadded::new(SharedCounters::default())))
            .collect();
        let config_shards = config.shards;
        let router = Arc::new(Router {
            config,
            mailboxes,
            registry: Registry::default(),
            closing: AtomicBool::new(false),
            outboxes: stores.iter().map(|s| Arc::clone(&s.outbox)).collect(),
            failures: (0..config_shards)
                .map(|_| ShardFailure::default())
                .collect(),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        stores.reverse();
        for (index, listener) in listeners.into_iter().enumerate() {
            let init = shard::Init {
                id: route::ShardId(index),
                router: Arc::clone(&router),
                counters: Arc::clone(&counters[index]),
                handler: Arc::clone(&handler),
                listener,
                ready: ready_tx.clone(),
                durable: stores.pop(),
                tls: tls.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("ringwire-{}-{index}", router.config.node_id))
                .spawn(move || shard::run(init))
                .map_err(|e| Error::io("spawning shard thread", e))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut engine = Engine {
            router,
            counters,
            recovery,
            threads,
            local_addr,
            outbox_lock,
        };
        for _ in 0..engine.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    engine.stop(None);
                    return Err(err);
                }
                Err(_) => {
                    engine.stop(None);
                    return Err(Error::Unsupported(
                        "a shard thread died while starting".into(),
                    ));
                }
            }
        }
        Ok(engine)
    }

    /// Declares a peer and keeps a connection to it: dials its endpoints in order, redials
    /// with backoff whenever the connection drops, and resumes its sessions.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a bad node id or an endpoint that did not resolve, and
    /// [`Error::ShuttingDown`].
    pub fn connect(&self, config: PeerConfig) -> Result<Peer, Error> {
        if !config.unresolved.is_empty() || config.endpoints.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "peer {:?} has no resolvable endpoint (unresolved: {:?})",
                config.node_id, config.unresolved
            )));
        }
        if config.node_id.is_empty() || config.node_id.len() > proto::frame::NODE_ID_LEN_MAX {
            return Err(Error::InvalidConfig(
                "peer node_id must be 1 to 255 bytes".into(),
            ));
        }
        if config.node_id == self.router.config.node_id {
            return Err(Error::InvalidConfig(
                "a node cannot connect to itself".into(),
            ));
        }
        if self
            .router
            .closing
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::ShuttingDown);
        }
        let peer = self.router.peer(&config.node_id);
        peer.shared.mailbox.send(Command::Connect {
            peer: Arc::clone(&peer.shared),
            config,
        });
        Ok(peer)
    }

    /// Registers `source` on the shard that owns `near`, where it is polled once per loop turn
    /// and publishes through a [`ShardCtx`](crate::ShardCtx): straight into the sessions of the
    /// peers that shard owns, without the cross-thread queue. See [`Source`](crate::Source).
    ///
    /// # Errors
    ///
    /// [`Error::ShuttingDown`].
    pub fn add_source(&self, near: &Peer, source: impl crate::Source) -> Result<(), Error> {
        if self
            .router
            .closing
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::ShuttingDown);
        }
        near.shared
            .mailbox
            .send(Command::AddSource(Box::new(source)));
        Ok(())
    }

    /// A handle to `node_id`, whether or not it is connected; messages published to a peer
    /// that has not connected yet wait for it.
    pub fn peer(&self, node_id: &str) -> Peer {
        self.router.peer(node_id)
    }

    /// A handle to `node_id` if the engine knows it already (the application declared it with
    /// [`Engine::peer`] or [`Engine::connect`], or it dialed in), without creating it.
    ///
    /// # Errors
    ///
    /// [`Error::PeerNotFound`] for a node id the engine has never heard of: declare it with
    /// [`Engine::connect`] (or [`Engine::peer`]) first.
    pub fn known_peer(&self, node_id: &str) -> Result<Peer, Error> {
        self.router
            .known_peer(node_id)
            .ok_or_else(|| Error::PeerNotFound {
                node_id: node_id.to_owned(),
            })
    }

    /// Queues `payload` for `peer`; see [`Peer::publish`].
    ///
    /// # Errors
    ///
    /// As [`Peer::publish`].
    pub fn publish(&self, peer: &Peer, payload: Bytes) -> Result<MessageId, Error> {
        peer.publish(payload)
    }

    /// Queues `payload` and returns a future that resolves once `peer` acknowledges it; see
    /// [`Confirm`] for cancel safety.
    pub fn publish_confirmed(&self, peer: &Peer, payload: Bytes) -> Confirm {
        peer.publish_confirmed(payload)
    }

    /// A snapshot of the counters, summed over the shards, and of every peer.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for counters in &self.counters {
            counters.add_to(&mut stats);
        }
        use std::sync::atomic::Ordering::Relaxed;
        let mut peers: Vec<PeerStats> = self
            .router
            .registry
            .all()
            .iter()
            .map(|p| PeerStats {
                node_id: p.node_id.to_string(),
                connected: p.published.connected.load(Relaxed),
                rtt: match p.published.srtt_ns.load(Relaxed) {
                    0 => None,
                    ns => Some(Duration::from_nanos(ns)),
                },
                seq_acked: p.published.seq_acked.load(Relaxed),
                seq_delivered: p.published.seq_delivered.load(Relaxed),
                queued: p.queue.len(),
            })
            .collect();
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        stats.peers = peers;
        stats.shards_failed = self
            .router
            .failures
            .iter()
            .filter(|f| f.is_failed())
            .count() as u64;
        stats
    }

    /// What the outbox recovery found at start (all zero without an outbox). Damaged records
    /// are counted in `lost`, also published as the `outbox_lost` counter.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The address the listener is bound to (with the real port when `listen` used port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.router.config.node_id
    }

    /// Stops accepting messages, waits up to `timeout` for every peer to acknowledge what it
    /// was sent, then closes every connection with CLOSE and stops the shards.
    ///
    /// # Errors
    ///
    /// [`Error::DrainTimeout`] with the number of messages still unacknowledged; the engine is
    /// stopped either way.
    pub fn shutdown_graceful(mut self, timeout: Duration) -> Result<(), Error> {
        self.stop(Some(Instant::now() + timeout));
        let unacked: u64 = self
            .router
            .registry
            .all()
            .iter()
            .map(|p| {
                p.queue.pushed().saturating_sub(
                    p.published
                        .seq_acked
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .sum();
        if unacked > 0 {
            Err(Error::DrainTimeout { unacked })
        } else {
            Ok(())
        }
    }

    fn stop(&mut self, drain_until: Option<Instant>) {
        self.router
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for mailbox in &self.router.mailboxes {
            mailbox.send(Command::Shutdown { drain_until });
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.outbox_lock = None;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop(None);
        }
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("node_id", &self.router.config.node_id)
            .field("local_addr", &self.local_addr)
            .field("shards", &self.router.config.shards)
            .finish()
    }
}
